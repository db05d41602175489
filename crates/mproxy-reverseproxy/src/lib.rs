//! Feed TCP and UDP inputs into a multicast group, and fan the group out to
//! TCP clients and UDP outputs
//!
//! ```text
//!  --udp-listen-addr ─┐                         ┌─ --tcp-output-addr ─┬─ client
//!  --udp-listen-addr ─┼──▶ --multicast-addr ──▶─┤   (hub + writers)   └─ client
//!  --tcp-listen-addr ─┘     (one sending        └─ --udp-output-addr ──▶ host:port
//!                            socket)
//! ```
//!
//! Every input sends what it receives to the group: UDP datagrams as they
//! are, TCP streams cut into datagrams by a [`Packer`](mproxy_common::pack::Packer)
//! (`--framing bytes` by default, at most `--max-datagram` bytes each; a
//! connection that reaches EOF is closed and nothing empty is ever sent).
//! Every output has its own receive socket on the group, so inputs and
//! outputs may run in different processes or on different hosts; in one
//! process they meet through the kernel like any other group members. That
//! is why the sending socket keeps multicast loopback on (`--loop on`, the
//! default): without it, outputs on this host would not see this host's
//! inputs.
//!
//! A TCP output serves each client from its own writer thread and bounded
//! queue (`--client-queue`); a client that does not keep up never delays
//! the group or the other clients. What happens to it is `--slow-client`:
//! `drop` (the default) drops datagrams for it only, `disconnect` closes
//! its connection the moment its queue is full. Either way what it missed
//! is counted per client ([`stats::ClientStats::drops`]), logged when it
//! leaves and listed in the summary. The
//! number of clients per listener is capped (`--max-clients`). Memory is
//! therefore bounded: payloads are shared between the queues, so at most
//! `--client-queue` × `--max-clients` datagrams per TCP output are held (6
//! MB per client queue at the defaults and 1472-byte datagrams, far less
//! when clients keep up). A client that resets is dropped at once; one
//! that closes normally is dropped at the next datagram written to it,
//! because until then it may only have half-closed (`ncat < /dev/null`
//! does) and still be reading.
//!
//! ## TLS
//!
//! A `--tcp-output-addr` or `--tcp-listen-addr` written `tls://HOST:PORT`
//! (the scheme syntax of `mproxy-proxy --tcp-connect-addr`; `tcp://` and no
//! scheme mean plain TCP) speaks TLS 1.2/1.3 (rustls with *ring*) with the
//! certificate chain of `--tls-cert` and the key of `--tls-key`. With
//! `--tls-client-ca` every client must present a certificate issued by one
//! of that file's CAs; clients without one are refused. Every file is read
//! before anything is bound: a missing or malformed one is exit 2 with one
//! line naming the flag and the file. A handshake never blocks anyone
//! else: an output client's runs in its own writer thread, an input's in
//! the input's non-blocking poll loop; one not finished after
//! `--tls-handshake-timeout` seconds (10) is closed. Failed handshakes are
//! counted per listener ("TLS failures") and logged rate-limited.
//!
//! ## mpx
//!
//! With `--mpx` the inputs frame what they send with the mpx header of
//! [`mproxy_common::wire`]: the process picks one random session id at
//! start, and every accepted TCP connection becomes its own stream (ids
//! from 1 up, never one that is still in use), cut by `--framing` into
//! frames of at most `--max-datagram` bytes *including* the 24-byte
//! header. An idle stream sends a heartbeat every second; a connection
//! that ends (EOF, reset or shutdown) sends FIN and then three closing
//! heartbeats over about 150 ms, so receivers learn the end even if the
//! FIN frame is lost. Every UDP listener is a stream too: each raw datagram
//! becomes one frame (`--framing bytes`; a datagram larger than
//! `--max-datagram` - 24 is split over several, and counted), while a
//! datagram that already is an mpx frame is forwarded untouched.
//!
//! The outputs take both kinds whatever the inputs do (`--accept auto`, the
//! default; `raw` and `mpx` restrict it). A TCP output reassembles every
//! stream with an [`mproxy_common::mpx::Receiver`] (`--reorder-window`,
//! `--reorder-timeout`, `--max-streams`) and hands its clients the payloads
//! in order, without headers; streams are interleaved frame by frame, so
//! with `--framing lines` a client sees whole lines of each. A UDP output
//! forwards frames untouched, so a downstream `mproxy-server` can sort the
//! streams out (`--path 'out/{session}-{stream}.log'`); with
//! `--udp-output-strip` it sends the reassembled payloads instead, one
//! datagram per frame. Every output logs each stream's close with its
//! counters (bytes, gaps, lost, duplicates) and sums them in the summary.
//!
//! Runtime faults (send and receive errors, resets, full queues, truncated
//! datagrams, kernel receive-queue overflows) are counted in [`Stats`] and
//! logged at most once per 5 s each, never fatal.
//!
//! One thread per listener or output, each waking at least every 100 ms to
//! notice a shutdown request; [`ReverseProxy::run`] waits for it, stops the
//! threads and logs one summary line per component.
//!
//! The default group is `239.255.77.18:9918`, an administratively scoped
//! IPv4 group (RFC 2365). The original tool used `[ff02::1]:9918`, the IPv6
//! all-nodes group that every host on the link must accept.
//!
//! ```no_run
//! use mproxy_common::cli::Shutdown;
//! use mproxy_reverseproxy::{Config, ReverseProxy};
//!
//! let config = Config {
//!     tcp_inputs: vec!["127.0.0.1:9000".parse()?],
//!     // "tls://127.0.0.1:9443" with `tls: TlsServerOptions { cert, key, .. }`
//!     tcp_outputs: vec!["127.0.0.1:9100".parse()?],
//!     ..Config::default()
//! };
//! let shutdown = Shutdown::new();
//! let proxy = ReverseProxy::start(config, shutdown.clone())?;
//! let stats = proxy.stats();
//! // ... later, from any thread: shutdown.trigger();
//! # shutdown.trigger();
//! proxy.run()?;
//! eprintln!("{:?}", stats.summary_lines());
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

mod cli;
mod config;
mod input;
mod output;
mod poller;
mod reassembly;
pub mod stats;
mod tls;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mproxy_common::cli::Shutdown;

pub use crate::cli::{
    Accept, Cli, DEFAULT_CLIENT_QUEUE, DEFAULT_GROUP, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_DATAGRAM,
};
pub use crate::config::{Addr, Config, ListenAddr, SlowClient};
use crate::input::{GroupTx, TcpInput, UdpInput};
use crate::output::{TcpOutput, UdpOutput};
pub use crate::stats::Stats;
pub use crate::tls::{TlsServerOptions, DEFAULT_HANDSHAKE_TIMEOUT_SECS};

/// The body of one component thread
type Job = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// A running reverse proxy: every socket bound, one thread per component
#[derive(Debug)]
pub struct ReverseProxy {
    shutdown: Shutdown,
    stats: Arc<Stats>,
    threads: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
    started: Instant,
}

impl ReverseProxy {
    /// Bind every socket, then start one thread per component
    ///
    /// All binding happens before the first thread starts, so a port in
    /// use or a group that cannot be joined fails here, naming the flag and
    /// address. The threads run until `shutdown` is set.
    ///
    /// # Errors
    /// An invalid [`Config`], a TLS certificate, key or CA file that cannot
    /// be used (one line naming the flag and the file), or a socket that
    /// cannot be set up.
    pub fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        config.validate()?;
        // every file is read before anything is bound
        let tls = if config.has_tls() {
            Some(tls::server_config(&config.tls)?)
        } else {
            None
        };
        let tls_for = |a: &Addr| if a.tls { tls.clone() } else { None };
        let mut stats = Stats::default();
        let mut jobs: Vec<(String, Job)> = Vec::new();
        if config.has_inputs() {
            let group = Arc::new(GroupTx::open(&config)?);
            for addr in &config.udp_inputs {
                let c = UdpInput::bind(addr, &config, Arc::clone(&group), shutdown.clone())?;
                stats.udp_inputs.push(Arc::clone(c.stats()));
                jobs.push((format!("udp input {addr}"), Box::new(move || c.run())));
            }
            for addr in &config.tcp_inputs {
                let c = TcpInput::bind(
                    addr,
                    &config,
                    tls_for(addr),
                    Arc::clone(&group),
                    shutdown.clone(),
                )?;
                stats.tcp_inputs.push(Arc::clone(c.stats()));
                jobs.push((format!("tcp input {addr}"), Box::new(move || c.run())));
            }
        }
        for addr in &config.tcp_outputs {
            let c = TcpOutput::bind(addr, &config, tls_for(addr), shutdown.clone())?;
            stats.tcp_outputs.push(Arc::clone(c.stats()));
            jobs.push((format!("tcp output {addr}"), Box::new(move || c.run())));
        }
        for addr in &config.udp_outputs {
            let c = UdpOutput::bind(addr, &config, shutdown.clone())?;
            stats.udp_outputs.push(Arc::clone(c.stats()));
            jobs.push((format!("udp output {addr}"), Box::new(move || c.run())));
        }

        let mut proxy = Self {
            shutdown,
            stats: Arc::new(stats),
            threads: Vec::with_capacity(jobs.len()),
            started: Instant::now(),
        };
        for (name, job) in jobs {
            let handle = std::thread::Builder::new()
                .name(thread_name(&name))
                .spawn(job)
                .with_context(|| format!("starting a thread for {name}"))?;
            // on error, dropping `proxy` stops the threads already started
            proxy.threads.push((name, handle));
        }
        tracing::info!(
            group = %config.group,
            mpx = config.mpx,
            "started: {} udp inputs, {} tcp inputs, {} tcp outputs, {} udp outputs",
            config.udp_inputs.len(),
            config.tcp_inputs.len(),
            config.tcp_outputs.len(),
            config.udp_outputs.len()
        );
        Ok(proxy)
    }

    /// The counters of every component, live
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The shutdown flag the threads watch; set it to stop them
    pub fn shutdown_flag(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Wait until shutdown is requested, stop every thread, and log one
    /// summary line per component (and per connected client) on stderr
    ///
    /// Returns the final counters.
    ///
    /// # Errors
    /// A component thread that failed on its own (its poll instance broke,
    /// which a working kernel never does); the other components are
    /// stopped first.
    pub fn run(mut self) -> anyhow::Result<Arc<Stats>> {
        while !self.shutdown.is_set() {
            if self.threads.iter().any(|(_, h)| h.is_finished()) {
                break; // a component gave up: stop the rest
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.shutdown.trigger();
        let failure = self.join_all();
        let elapsed = self.started.elapsed();
        tracing::info!("summary after {:.1} s:", elapsed.as_secs_f64());
        for line in self.stats.summary_lines() {
            tracing::info!("{line}");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Arc::clone(&self.stats)),
        }
    }

    /// Join every thread; the first failure, if any
    fn join_all(&mut self) -> Option<anyhow::Error> {
        let mut failure = None;
        for (name, handle) in self.threads.drain(..) {
            let err = match handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.context(name),
                Err(_) => anyhow::anyhow!("{name}: thread panicked"),
            };
            tracing::error!("{err:#}");
            failure.get_or_insert(err);
        }
        failure
    }
}

impl Drop for ReverseProxy {
    /// Stop and join the threads if [`ReverseProxy::run`] was never called
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown.trigger();
            let _ = self.join_all();
        }
    }
}

/// Thread names are cut to 15 bytes by Linux; keep the informative end
fn thread_name(name: &str) -> String {
    let short = name
        .replace("input ", "in ")
        .replace("output ", "out ")
        .replace(' ', "");
    short.chars().take(15).collect()
}
