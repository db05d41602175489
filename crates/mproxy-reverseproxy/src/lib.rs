//! Feed TCP and UDP inputs into a multicast group, and fan the group out to
//! TCP clients and UDP outputs
//!
//! ```text
//!  --udp-listen-addr ─┐                         ┌─ --tcp-output-addr ─┬─ client
//!  --udp-listen-addr ─┼──▶ --multicast-addr ──▶─┤  (one event loop)   └─ client
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
//! ## TCP outputs
//!
//! A TCP output is one thread running one event loop (mio) for its socket
//! on the group, its listener and every client: non-blocking writes, no
//! thread per client, so the number of threads does not depend on the
//! number of clients (one per listener or output, plus the main thread).
//! Every payload is copied once into a log shared by the output's clients
//! (chunks of 256 KiB); a client is a position in it and is written with
//! `writev` straight from the chunks, as much as its socket takes per
//! turn. A client that does not keep up never delays the group or the
//! other clients: its socket is simply not written until it is writable
//! again. How far behind it may fall is `--client-queue` (bytes, 8 MiB by
//! default; a bare number is the old datagram count, times
//! `--max-datagram`), and what happens beyond is `--slow-client`: `drop`
//! (the default) skips the oldest datagrams for it only, `disconnect`
//! closes its connection. Either way what it missed is counted per client
//! ([`stats::ClientStats::drops`]), logged when it leaves and listed in the
//! summary. A client that takes no data at all for `--stall-timeout` (60
//! s) while data waits is closed (counted).
//!
//! Memory is bounded in bytes, per output, whatever the clients do: the
//! log holds what the client furthest behind still needs, at most one
//! `--client-queue` plus one datagram and two chunks (and up to 1 MiB of
//! emptied chunks kept for reuse); beyond that a plain client costs about
//! 1 KiB of state, a TLS client its rustls session plus at most 64 KiB of
//! records while its socket is full. Freed memory is handed back to the
//! OS (malloc_trim) once megabytes have been freed, at most once a second.
//! The kernel's socket buffers come on top.
//!
//! ## Slots
//!
//! The connections per TCP listener are capped (`--max-clients`, 256), and
//! on a `tls://` listener so are the handshakes running at once
//! (`--max-handshakes`, a quarter of `--max-clients`, 8 to 64). A newcomer
//! that would go over either does not find the door shut while someone
//! who has made less progress holds a slot: that one is closed instead
//! (evicted, counted, logged), in this order: the oldest TLS handshake; an
//! output client whose socket has taken nothing the longest while data
//! waits; the oldest connection that never took (output) or sent (input)
//! a byte; the oldest half-closed output client; last, among output
//! clients that all take data, the one that has taken the fewest bytes.
//! A TCP output therefore never refuses a newcomer (a reader that has
//! just connected cannot be told from one that will never read until its
//! socket buffers fill); a TCP input refuses one (counted as rejected)
//! only when every connection has sent data. So idle connections,
//! slowloris handshakes and half-closed clients cannot lock readers out;
//! on an idle group every reader has taken nothing yet, and slots turn
//! over first in, first out. A client that resets is dropped at once; one
//! that half-closes (`ncat < /dev/null` does) stays while it may still
//! read, until a write fails, it stalls or it is evicted.
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
//! else: every session is driven non-blocking by its listener's event
//! loop, and whatever rustls has to send (a TLS 1.2 server's
//! ChangeCipherSpec and Finished too) is written as soon as it has it, data
//! or not. One not finished after `--tls-handshake-timeout` seconds (10)
//! is closed, and at most `--max-handshakes` run at once (see Slots).
//! Failed handshakes are counted per listener ("TLS failures") and logged
//! rate-limited.
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
//! Every receive socket (UDP inputs, each output's socket on the group)
//! asks for a 64 MiB receive buffer unless `--rcvbuf` says otherwise, as
//! much of it as the kernel grants without complaint (forced with
//! CAP_NET_ADMIN, else up to `net.core.rmem_max`): an unpaced burst then
//! waits in the kernel while the thread that receives it waits for a CPU,
//! instead of overflowing 8 MiB. It costs memory only while datagrams wait.
//!
//! Runtime faults (send and receive errors, resets, full queues, truncated
//! datagrams, kernel receive-queue overflows) are counted in [`Stats`] and
//! logged at most once per 5 s each, never fatal. What cannot start is an
//! [`Error`], grouped by fault: bad settings or files, an address this host
//! cannot bind ([`Error::is_bad_input`], exit 2), or a fault of the OS.
//!
//! One thread per listener or output, each waking at least every 100 ms to
//! notice a shutdown request; [`ReverseProxy::run`] waits for it, stops the
//! threads and logs one summary line per component. At start the soft
//! limit on open files is raised (up to the hard limit) to what the
//! `--max-clients` of every TCP listener need.
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
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
// the only unsafe code: getrlimit, setrlimit and malloc_trim in `os`
#![deny(unsafe_code)]

mod cli;
mod config;
mod error;
mod input;
#[allow(unsafe_code)]
mod os;
mod output;
mod poller;
mod reassembly;
mod recv;
mod slots;
pub mod stats;
mod tls;
mod types;

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mproxy_common::cli::Shutdown;

pub use crate::cli::{
    Accept, Cli, DEFAULT_CLIENT_QUEUE, DEFAULT_GROUP, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_DATAGRAM,
    DEFAULT_STALL_TIMEOUT_SECS,
};
pub use crate::config::{Addr, ClientQueue, Config, ListenAddr, SlowClient, MAX_CLIENT_QUEUE};
pub use crate::error::Error;
use crate::input::{GroupTx, TcpInput, UdpInput};
use crate::output::{TcpOutput, UdpOutput};
pub use crate::stats::Stats;
pub use crate::tls::{TlsServerOptions, DEFAULT_HANDSHAKE_TIMEOUT_SECS};

/// The body of one component thread
type Job = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// Descriptors a process needs besides its clients' (sockets, poll
/// instances, stdio)
const SPARE_FDS: u64 = 64;

/// A running reverse proxy: every socket bound, one thread per component
#[derive(Debug)]
pub struct ReverseProxy {
    shutdown: Shutdown,
    stats: Arc<Stats>,
    threads: Vec<(String, JoinHandle<io::Result<()>>)>,
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
    /// An invalid [`Config`] ([`Error::Config`]), a TLS certificate, key or
    /// CA file that cannot be used ([`Error::TlsFile`]), a socket that
    /// cannot be set up ([`Error::Bind`]), all naming the flag; or the OS
    /// refusing a thread or poll instance ([`Error::Os`]).
    pub fn start(config: Config, shutdown: Shutdown) -> Result<Self, Error> {
        config.validate()?;
        raise_nofile(&config);
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
                .map_err(|e| Error::os(format!("starting a thread for {name}"), e))?;
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
    /// A component thread that failed on its own ([`Error::Component`]: its
    /// poll instance broke, which a working kernel never does) or panicked
    /// ([`Error::Panicked`]); the other components are stopped first.
    pub fn run(mut self) -> Result<Arc<Stats>, Error> {
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
    fn join_all(&mut self) -> Option<Error> {
        let mut failure = None;
        for (component, handle) in self.threads.drain(..) {
            let err = match handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => Error::Component { component, source },
                Err(_) => Error::Panicked { component },
            };
            tracing::error!("{}", one_line(&err));
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

/// An error and its sources on one line, "a: b: c"
fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Raise the soft limit on open files to what every TCP listener's
/// `--max-clients` needs; warn if the hard limit is lower
fn raise_nofile(config: &Config) {
    let listeners = (config.tcp_inputs.len() + config.tcp_outputs.len()) as u64;
    let needed = listeners * config.max_clients as u64 + SPARE_FDS;
    match os::raise_nofile(needed) {
        Some(limit) if limit < needed => tracing::warn!(
            "the limit on open files is {limit}, below the {needed} that --max-clients \
             {} on {listeners} TCP listeners needs: accepts will fail before that \
             (raise it with ulimit -n)",
            config.max_clients
        ),
        Some(_) => {}
        None => tracing::debug!("cannot read the limit on open files"),
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
