//! Bridge TCP and UDP (unicast or multicast) inputs to downstream UDP
//!
//! Every datagram received on a `--udp-listen-addr` is sent as-is to every
//! `--udp-downstream-addr`. Every `--tcp-connect-addr` upstream is dialled
//! by its own thread; its byte stream is cut into datagrams (raw chunks by
//! default, whole lines with `--framing lines`) and sent the same way. A
//! lost upstream is redialled with exponential backoff and jitter,
//! resolving its name again each time, so a feed provider's DNS change or
//! restart needs no manual action.
//!
//! ```no_run
//! use mproxy_proxy::{Config, Proxy};
//! use mproxy_common::cli::Shutdown;
//!
//! let mut config = Config::new(vec!["127.0.0.1:9921".parse()?]);
//! config.udp_listen = vec!["0.0.0.0:9920".parse()?];
//! config.tcp_connect = vec!["feed.example.org:4001".parse()?];
//! let summary = Proxy::bind(config)?.run(&Shutdown::new())?;
//! eprintln!("{summary}");
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

mod tcp;
mod udp;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use mproxy_common::cli::{parse_max_datagram, CommonArgs, Shutdown};
use mproxy_common::io::Tee;
use mproxy_common::mpx::new_session_id;
use mproxy_common::net::bind_receiver;
use mproxy_common::pack::Framing;
use mproxy_common::stats::{human_bytes, Counter};
use mproxy_common::{Endpoint, Fanout, SocketOptions};

pub use tcp::UpstreamStats;

/// Default datagram payload limit for TCP input (fits a 1500-byte MTU)
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Command line of `mproxy-proxy`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mproxy-proxy",
    version,
    about = "Forward TCP, UDP or multicast inputs to downstream UDP addresses",
    after_help = "EXAMPLES:\n  \
        mproxy-proxy --udp-listen-addr 0.0.0.0:9920 --udp-downstream-addr '[::1]:9921' --udp-downstream-addr localhost:9922\n  \
        mproxy-proxy --tcp-connect-addr ais.example.org:4001 --framing lines --udp-downstream-addr 239.255.0.1:9922"
)]
pub struct Cli {
    /// UDP address to receive on, unicast or multicast (joined); repeatable
    #[arg(long = "udp-listen-addr", value_name = "HOST:PORT")]
    pub udp_listen_addr: Vec<Endpoint>,

    /// UDP destination, unicast or multicast; repeatable, each gets every datagram
    #[arg(long = "udp-downstream-addr", value_name = "HOST:PORT")]
    pub udp_downstream_addr: Vec<Endpoint>,

    /// TCP upstream to connect to and forward; repeatable. Reconnects with
    /// exponential backoff and jitter, resolving the name again each time
    #[arg(long = "tcp-connect-addr", value_name = "HOST:PORT")]
    pub tcp_connect_addr: Vec<Endpoint>,

    /// Copy forwarded data to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// How TCP input is cut into datagrams: 'bytes' (raw chunks, as the
    /// original) or 'lines' (a datagram never carries half a line unless
    /// the line exceeds --max-datagram)
    #[arg(long, value_name = "bytes|lines", default_value = "bytes")]
    pub framing: Framing,

    /// Largest datagram payload made from TCP input
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_DATAGRAM,
          value_parser = parse_max_datagram)]
    pub max_datagram: usize,

    /// Frame raw inputs with mpx (each TCP connection and each UDP listener
    /// becomes its own stream of this proxy's session); datagrams that
    /// already are mpx frames are always forwarded untouched
    #[arg(long)]
    pub mpx: bool,

    /// Longest wait between reconnect attempts, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub reconnect_max: u64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// Validated settings of a proxy
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP inputs
    pub udp_listen: Vec<Endpoint>,
    /// UDP destinations
    pub downstream: Vec<Endpoint>,
    /// TCP upstreams
    pub tcp_connect: Vec<Endpoint>,
    /// Copy forwarded data to stdout
    pub tee: bool,
    /// Framing of TCP input
    pub framing: Framing,
    /// Largest datagram made from TCP input
    pub max_datagram: usize,
    /// First reconnect delay
    pub reconnect_min: Duration,
    /// Longest reconnect delay
    pub reconnect_max: Duration,
    /// Frame raw inputs with mpx
    pub mpx: bool,
    /// Multicast and buffer options
    pub socket: SocketOptions,
}

impl Config {
    /// Defaults for forwarding to `downstream` (no inputs yet)
    pub fn new(downstream: Vec<Endpoint>) -> Self {
        Self {
            udp_listen: Vec::new(),
            downstream,
            tcp_connect: Vec::new(),
            tee: false,
            framing: Framing::Bytes,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            mpx: false,
            socket: SocketOptions::default(),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;

    fn try_from(cli: Cli) -> anyhow::Result<Self> {
        cli.common.validate()?;
        if cli.udp_listen_addr.is_empty() && cli.tcp_connect_addr.is_empty() {
            bail!("no input: give at least one --udp-listen-addr or --tcp-connect-addr");
        }
        if cli.udp_downstream_addr.is_empty() && !cli.tee {
            bail!("no output: give at least one --udp-downstream-addr (or --tee)");
        }
        if cli.reconnect_max == 0 {
            bail!("--reconnect-max must be at least 1 second");
        }
        Ok(Self {
            udp_listen: cli.udp_listen_addr,
            downstream: cli.udp_downstream_addr,
            tcp_connect: cli.tcp_connect_addr,
            tee: cli.tee,
            framing: cli.framing,
            max_datagram: cli.max_datagram,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(cli.reconnect_max),
            mpx: cli.mpx,
            socket: cli.common.socket_options(),
        })
    }
}

/// Counters of one UDP input
#[derive(Debug, Default)]
pub struct UdpInputStats {
    /// Datagrams received
    pub datagrams: Counter,
    /// Payload bytes received
    pub bytes: Counter,
    /// Datagrams cut short by the receive buffer
    pub truncated: Counter,
    /// Datagrams the kernel dropped (receive queue full)
    pub kernel_drops: Counter,
    /// Receive errors
    pub recv_errors: Counter,
}

/// Shared by the forwarding threads
pub(crate) struct Shared {
    pub(crate) fanout: Fanout,
    pub(crate) tee: Tee,
    /// mpx session of this proxy, when framing raw inputs
    pub(crate) session: Option<u64>,
    next_stream: AtomicU32,
}

impl Shared {
    /// `(session, fresh stream id)` for a new mpx stream, if framing is on
    pub(crate) fn new_stream(&self) -> Option<(u64, u32)> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.session.map(|s| (s, id))
    }

    pub(crate) fn forward(&self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        self.tee.write(payload);
        self.fanout.send(payload);
    }
}

/// A proxy with its sockets bound, ready to run
pub struct Proxy {
    config: Config,
    shared: Arc<Shared>,
    udp: Vec<udp::Input>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .finish()
    }
}

/// What a finished run did
#[derive(Debug, Default)]
pub struct Summary {
    /// Per UDP input: (spec, counters)
    pub udp_inputs: Vec<(String, Arc<UdpInputStats>)>,
    /// Per TCP upstream
    pub tcp_upstreams: Vec<Arc<UpstreamStats>>,
    /// Per destination, as one line
    pub destinations: String,
    /// Wall time
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ran {:.2}s", self.elapsed.as_secs_f64())?;
        for (spec, s) in &self.udp_inputs {
            write!(
                f,
                "; udp {spec}: {} datagrams, {}, {} truncated, {} kernel drops, {} recv errors",
                s.datagrams.get(),
                human_bytes(s.bytes.get()),
                s.truncated.get(),
                s.kernel_drops.get(),
                s.recv_errors.get()
            )?;
        }
        for s in &self.tcp_upstreams {
            write!(f, "; {s}")?;
        }
        if !self.destinations.is_empty() {
            write!(f, "; {}", self.destinations)?;
        }
        Ok(())
    }
}

impl Proxy {
    /// Resolve and bind everything the config names
    ///
    /// # Errors
    /// Unresolvable addresses, ports in use, unknown interfaces; each error
    /// names the flag and address.
    pub fn bind(config: Config) -> anyhow::Result<Self> {
        let fanout =
            Fanout::new(&config.downstream, &config.socket).context("--udp-downstream-addr")?;
        let mut udp = Vec::new();
        for ep in &config.udp_listen {
            let addr: SocketAddr = ep.resolve().context("--udp-listen-addr")?;
            let sock = bind_receiver(addr, &config.socket)
                .with_context(|| format!("--udp-listen-addr {ep}"))?;
            tracing::info!(listen = %ep, "listening for UDP");
            udp.push(udp::Input::new(ep.to_string(), sock));
        }
        // Fail fast on upstream names that can never resolve (typos);
        // transient DNS failures later are retried.
        for ep in &config.tcp_connect {
            if let Err(e) = ep.resolve() {
                bail!("--tcp-connect-addr: {e}");
            }
        }
        let session = config.mpx.then(new_session_id);
        if let Some(s) = session {
            tracing::info!(
                session = format_args!("{s:016x}"),
                "mpx framing of raw inputs on"
            );
        }
        let shared = Arc::new(Shared {
            fanout,
            tee: Tee::new(config.tee),
            session,
            next_stream: AtomicU32::new(1),
        });
        Ok(Self {
            config,
            shared,
            udp,
        })
    }

    /// Forward until shutdown, then stop every thread and summarize
    ///
    /// # Errors
    /// Only if a thread cannot be started or the poller fails.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        let start = Instant::now();
        let mut handles = Vec::new();
        let mut tcp_stats = Vec::new();
        for (i, ep) in self.config.tcp_connect.iter().enumerate() {
            let stats = Arc::new(UpstreamStats::new(ep.to_string()));
            tcp_stats.push(Arc::clone(&stats));
            let upstream = tcp::Upstream {
                endpoint: ep.clone(),
                framing: self.config.framing,
                max_datagram: self.config.max_datagram,
                reconnect_min: self.config.reconnect_min,
                reconnect_max: self.config.reconnect_max,
                shared: Arc::clone(&self.shared),
                stats,
                shutdown: shutdown.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("tcp-{i}"))
                .spawn(move || upstream.run())
                .context("starting TCP upstream thread")?;
            handles.push(h);
        }
        let udp_inputs: Vec<_> = self
            .udp
            .iter()
            .map(|u| (u.spec.clone(), Arc::clone(&u.stats)))
            .collect();
        let result = if self.udp.is_empty() {
            while mproxy_common::io::sleep_unless(shutdown, Duration::from_millis(200)) {}
            Ok(())
        } else {
            udp::run(self.udp, &self.shared, shutdown)
        };
        shutdown.trigger();
        for h in handles {
            let _ = h.join();
        }
        result?;
        Ok(Summary {
            udp_inputs,
            tcp_upstreams: tcp_stats,
            destinations: self.shared.fanout.summary(),
            elapsed: start.elapsed(),
        })
    }
}
