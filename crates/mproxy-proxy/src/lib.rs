//! Bridge TCP, TLS and UDP (unicast or multicast) inputs to downstream UDP
//!
//! Every datagram received on a `--udp-listen-addr` is sent as-is to every
//! `--udp-downstream-addr`. Every `--tcp-connect-addr` upstream is dialled
//! by its own thread; its byte stream is cut into datagrams (whole lines by
//! default, raw chunks cut anywhere with `--framing bytes`, as 0.1.x did)
//! and sent the same way. A lost upstream is redialled with exponential
//! backoff and jitter, resolving its name again each time, so a feed
//! provider's DNS change or restart needs no manual action. A name that
//! does not resolve at start-up is treated the same way (a warning, then
//! retries): a DNS outage at boot must not kill the service. Only a
//! malformed address is bad input (exit 2).
//!
//! ## TLS upstreams
//!
//! `tls://host:port` (or `--tls` for every upstream written without a
//! scheme) reads the feed over TLS 1.2/1.3 with rustls and the *ring*
//! provider. The server is verified against Mozilla's roots
//! (webpki-roots), or only against `--ca-file` when given, for the
//! upstream's host name; an IP literal must be one of the certificate's IP
//! addresses. `--sni` sets another name, `--client-cert`/`--client-key`
//! answer servers that require client certificates (mTLS),
//! `--pin-sha256` trusts a self-signed server by the SHA-256 of its
//! certificate or public key, and `--insecure-skip-verify` turns
//! verification off (with a warning). All
//! files are read at start-up: a missing or malformed one is bad input.
//! Certificate problems (unknown CA, expired, wrong name) and rejections
//! are logged with the upstream and rustls's reason, counted by cause and
//! retried with the same backoff: never fatal, since a feed provider may
//! fix its certificate at any time.
//!
//! ## Dead and silent upstreams
//!
//! Upstream sockets use TCP keepalive (`--tcp-keepalive`, 30 s by default),
//! so a peer that vanished without closing is noticed in about a minute.
//! `--idle-timeout SECS` goes further: a connection that delivered no data
//! for that long (a stuck feed behind a live TCP session) is dropped and
//! redialled, and counted as an idle reconnect.
//!
//! ## Lines and datagrams
//!
//! With `--framing lines` a datagram carries as many *whole* lines as fit
//! in the payload limit; only a line longer than the limit is split, into
//! pieces of that size, and each split is counted. So the limit is both the
//! largest datagram and the longest line kept whole: `--max-line N` is the
//! lines-mode name of `--max-datagram N` (it implies `--framing lines` and
//! cannot be combined with `--max-datagram`). With `--mpx` the 24-byte
//! frame header comes off that limit.
//!
//! ## mpx senders behind the proxy
//!
//! mpx receivers send their control frames (NACK repair requests,
//! flow-control WINDOWs, path FEEDBACK) to the source address of the frames
//! they receive, which behind the proxy is the proxy's downstream socket.
//! With `--relay-control on` (the default) the proxy remembers, for each
//! mpx session whose DATA, HEARTBEAT or FEC frames it forwards from a
//! `--udp-listen-addr`, the sender's address and the listen socket they
//! arrived on (at most [`MAX_SESSIONS`] sessions; the least recently seen
//! are evicted and counted). It reads its downstream sockets and sends each
//! valid control frame of a known session back to that sender, from that
//! listen socket, so the sender hears it from the address it sends to and
//! gets flow control and NACK repair end to end. A FEEDBACK report
//! describes one path, so it is sent back only while the session has come
//! from a single source address for at least a second (a multipath sender
//! striping through one proxy gets none, and keeps its static weights).
//! Everything else that arrives downstream (raw datagrams, invalid frames,
//! sender frame types, unknown sessions, control frames for the proxy's
//! own `--mpx` session, which keeps no repair buffer) is counted in
//! [`ControlStats`] and dropped: the proxy never sends anything to an
//! address it did not learn from a sender's own frames. Raw datagrams pass
//! exactly as before. The UDP loop polls the downstream sockets beside its
//! inputs and reads them after every turn.
//!
//! ```no_run
//! use mproxy_proxy::{Config, Proxy};
//! use mproxy_common::cli::Shutdown;
//!
//! let mut config = Config::new(vec!["127.0.0.1:9921".parse()?]);
//! config.udp_listen = vec!["0.0.0.0:9920".parse()?];
//! config.tcp_connect = vec![
//!     "feed.example.org:4001".parse()?,
//!     "tls://secure-feed.example.org:4443".parse()?,
//! ];
//! config.tls.ca_file = Some("/etc/feeds/ca.pem".into());
//! let summary = Proxy::bind(config)?.run(&Shutdown::new())?;
//! eprintln!("{summary}");
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod control;
mod keepalive;
mod tcp;
mod tls;
mod udp;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use mproxy_common::cli::{parse_max_datagram, CommonArgs, Shutdown};
use mproxy_common::io::Tee;
use mproxy_common::mpx::new_session_id;
use mproxy_common::net::bind_batch_receiver;
use mproxy_common::pack::Framing;
use mproxy_common::stats::human_bytes;
use mproxy_common::{Endpoint, Fanout, SocketOptions};

pub use control::{ControlStats, MAX_SESSIONS};
pub use tcp::UpstreamStats;
pub use tls::{TlsFailure, TlsOptions};
pub use upstream::{Transport, UpstreamAddr, UpstreamAddrError};

/// Default datagram payload limit for TCP input (fits a 1500-byte MTU)
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Default TCP keepalive idle time of upstream connections
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Command line of `mproxy-proxy`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mproxy-proxy",
    version,
    about = "Forward TCP, TLS, UDP or multicast inputs to downstream UDP addresses",
    after_help = "EXAMPLES:\n  \
        mproxy-proxy --udp-listen-addr 0.0.0.0:9920 --udp-downstream-addr '[::1]:9921' --udp-downstream-addr localhost:9922\n  \
        mproxy-proxy --tcp-connect-addr ais.example.org:4001 --framing lines --udp-downstream-addr 239.255.0.1:9922\n  \
        mproxy-proxy --tcp-connect-addr tls://feed.example.org:4443 --ca-file feed-ca.pem --idle-timeout 60 --udp-downstream-addr 239.255.0.1:9922\n  \
        mproxy-proxy --tls --tcp-connect-addr 192.0.2.10:4443 --client-cert me.pem --client-key me.key --sni feed.example.org --udp-downstream-addr 127.0.0.1:9921\n\n\
        TLS failures (unknown CA, expired or wrong-name certificates, rejection by the server) are\n\
        logged, counted by cause in the summary and retried with backoff; they are never fatal."
)]
pub struct Cli {
    /// UDP address to receive on, unicast or multicast (joined); repeatable
    #[arg(long = "udp-listen-addr", visible_aliases = ["listen", "listen-addr"], value_name = "HOST:PORT")]
    pub udp_listen_addr: Vec<Endpoint>,

    /// UDP destination, unicast or multicast; repeatable, each gets every datagram
    #[arg(
        long = "udp-downstream-addr",
        visible_alias = "to",
        value_name = "HOST:PORT"
    )]
    pub udp_downstream_addr: Vec<Endpoint>,

    /// TCP upstream to connect to and forward: HOST:PORT or tcp://HOST:PORT
    /// for plain TCP, tls://HOST:PORT for TLS; repeatable. Reconnects with
    /// exponential backoff and jitter, resolving the name again each time
    #[arg(long = "tcp-connect-addr", value_name = "[tls://]HOST:PORT")]
    pub tcp_connect_addr: Vec<UpstreamAddr>,

    /// Copy forwarded data to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// How TCP input is cut into datagrams: 'lines' (a datagram never
    /// carries half a line unless the line exceeds --max-datagram) or
    /// 'bytes' (raw chunks cut anywhere, as 0.1.x did) [default: lines]
    #[arg(long, value_name = "lines|bytes")]
    pub framing: Option<Framing>,

    /// Largest datagram payload made from TCP input [default: 1472]
    #[arg(long, value_name = "BYTES", value_parser = parse_max_datagram)]
    pub max_datagram: Option<usize>,

    /// Longest line kept whole with --framing lines (implied); longer lines
    /// are split and counted. The same limit as --max-datagram under its
    /// lines-mode name: a datagram carries whole lines up to this many
    /// bytes. Not combinable with --max-datagram
    #[arg(long, value_name = "BYTES", value_parser = parse_max_datagram,
          conflicts_with = "max_datagram")]
    pub max_line: Option<usize>,

    /// Frame raw inputs with mpx (each TCP connection and each UDP listener
    /// becomes its own stream of this proxy's session); datagrams that
    /// already are mpx frames are always forwarded untouched
    #[arg(long)]
    pub mpx: bool,

    /// Send the control frames that mpx receivers address to this proxy
    /// (NACK repair requests, flow-control WINDOWs, path FEEDBACK) back to
    /// the mpx sender whose frames it forwarded, from the listen address
    /// that sender used; other datagrams arriving downstream are counted
    /// and dropped, never forwarded
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = mproxy_common::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub relay_control: bool,

    /// Longest wait between reconnect attempts, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub reconnect_max: u64,

    /// Drop and redial an upstream that delivered no data for this many
    /// seconds (counted as an idle reconnect) [default: never]
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: Option<u64>,

    /// TCP keepalive on upstream connections: first probe after SECS
    /// without traffic, then every SECS/3; dead after 3 unanswered probes
    /// (0: off)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_KEEPALIVE.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub tcp_keepalive: u64,

    /// Use TLS for every --tcp-connect-addr written without a scheme
    /// (an explicit tcp:// stays plaintext)
    #[arg(long, help_heading = "TLS upstreams")]
    pub tls: bool,

    /// PEM file of the CA certificate(s) to trust for TLS upstreams,
    /// instead of the built-in Mozilla roots
    #[arg(long, value_name = "PEM", help_heading = "TLS upstreams")]
    pub ca_file: Option<PathBuf>,

    /// PEM certificate (chain) for servers that require client
    /// authentication (mTLS); needs --client-key
    #[arg(long, value_name = "PEM", help_heading = "TLS upstreams")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PEM", help_heading = "TLS upstreams")]
    pub client_key: Option<PathBuf>,

    /// Server name sent (SNI) and verified for TLS upstreams [default: the
    /// upstream's host; an IP address is checked against the
    /// certificate's IP addresses]
    #[arg(long, value_name = "NAME", help_heading = "TLS upstreams")]
    pub sni: Option<String>,

    /// DANGEROUS: accept any server certificate (encrypted but not
    /// authenticated: anyone on the path can impersonate the feed)
    #[arg(long, help_heading = "TLS upstreams")]
    pub insecure_skip_verify: bool,

    /// Trust the TLS upstream whose certificate, or whose public key, has
    /// this SHA-256 (64 hex digits, colons allowed, or base64): for
    /// self-signed feeds. Repeatable, any one may match. Without --ca-file
    /// the pin replaces the CA, name and date checks; with it, both apply
    #[arg(
        long = "pin-sha256",
        value_name = "HASH",
        help_heading = "TLS upstreams"
    )]
    pub pin_sha256: Vec<mproxy_common::tls::Pin>,

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
    /// TCP and TLS upstreams
    pub tcp_connect: Vec<UpstreamAddr>,
    /// Settings of the TLS upstreams
    pub tls: TlsOptions,
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
    /// Redial an upstream silent for this long
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time of upstream sockets (`None`: off)
    pub keepalive: Option<Duration>,
    /// Frame raw inputs with mpx
    pub mpx: bool,
    /// Relay receivers' control frames back to the mpx senders of UDP inputs
    pub relay_control: bool,
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
            tls: TlsOptions::default(),
            tee: false,
            framing: Framing::Lines,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            idle_timeout: None,
            keepalive: Some(DEFAULT_KEEPALIVE),
            mpx: false,
            relay_control: true,
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
        if cli.tcp_connect_addr.is_empty() {
            if let Some(f) = cli.framing {
                bail!(
                    "--framing {f} applies to TCP inputs (--tcp-connect-addr); UDP datagrams are forwarded as they are"
                );
            }
            if let Some(n) = cli.max_line {
                bail!("--max-line {n} applies to TCP inputs (--tcp-connect-addr); UDP datagrams are forwarded as they are");
            }
        }
        let (framing, max_datagram) = match (cli.max_line, cli.framing) {
            (Some(n), Some(Framing::Bytes)) => bail!(
                "--max-line {n} needs --framing lines (with bytes framing the limit is --max-datagram)"
            ),
            (Some(n), _) => (Framing::Lines, n),
            (None, f) => (
                f.unwrap_or(Framing::Lines),
                cli.max_datagram.unwrap_or(DEFAULT_MAX_DATAGRAM),
            ),
        };
        if cli.mpx && max_datagram <= mproxy_common::wire::HEADER_LEN {
            bail!(
                "--max-datagram {max_datagram} leaves no room for data with --mpx: the header alone is {} bytes (at least {})",
                mproxy_common::wire::HEADER_LEN,
                mproxy_common::wire::HEADER_LEN + 1
            );
        }
        let default = if cli.tls {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let tcp_connect: Vec<UpstreamAddr> = cli
            .tcp_connect_addr
            .into_iter()
            .map(|a| a.with_default_transport(default))
            .collect();
        let tls = TlsOptions {
            ca_file: cli.ca_file,
            client_cert: cli.client_cert,
            client_key: cli.client_key,
            sni: cli.sni,
            insecure_skip_verify: cli.insecure_skip_verify,
            pins: cli.pin_sha256,
        };
        tls.validate()?;
        if !tcp_connect.iter().any(UpstreamAddr::is_tls) {
            let set = tls.flags_set();
            if cli.tls || !set.is_empty() {
                let flags = if cli.tls { vec!["--tls"] } else { set };
                bail!(
                    "{} only applies to TLS upstreams: give --tcp-connect-addr tls://HOST:PORT{}",
                    flags.join(", "),
                    if cli.tls { "" } else { " or --tls" }
                );
            }
        }
        Ok(Self {
            udp_listen: cli.udp_listen_addr,
            downstream: cli.udp_downstream_addr,
            tcp_connect,
            tls,
            tee: cli.tee,
            framing,
            max_datagram,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(cli.reconnect_max),
            idle_timeout: cli.idle_timeout.map(Duration::from_secs),
            keepalive: (cli.tcp_keepalive > 0).then(|| Duration::from_secs(cli.tcp_keepalive)),
            mpx: cli.mpx,
            relay_control: cli.relay_control,
            socket: cli.common.socket_options(),
        })
    }
}

/// Counters of one UDP input: the receive counters every receiver shares
/// (truncated datagrams are counted and dropped, never forwarded cut short)
pub type UdpInputStats = mproxy_common::net::RecvStats;

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

    /// Forward several datagrams (none empty), one sendmmsg per destination
    pub(crate) fn forward_many(&self, payloads: &[&[u8]]) {
        if self.tee.enabled() {
            for p in payloads {
                self.tee.write(p);
            }
        }
        self.fanout.send_many(payloads);
    }
}

/// A proxy with its sockets bound, ready to run
pub struct Proxy {
    config: Config,
    shared: Arc<Shared>,
    udp: Vec<udp::Input>,
    /// Per `config.tcp_connect` entry: its TLS settings, if it is TLS
    tls: Vec<Option<tcp::TlsTarget>>,
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
    /// The control relay's counters (`None`: off, or no UDP input)
    pub control: Option<Arc<ControlStats>>,
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
                s.errors.get()
            )?;
        }
        for s in &self.tcp_upstreams {
            write!(f, "; {s}")?;
        }
        if !self.destinations.is_empty() {
            write!(f, "; {}", self.destinations)?;
        }
        if let Some(c) = &self.control {
            write!(f, "; {c}")?;
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
            if let Some((spec, _, _)) = fanout.stats().find(|(_, dest, _)| loops_back(addr, *dest))
            {
                bail!(
                    "--udp-downstream-addr {spec} sends back to --udp-listen-addr {ep}: \
                     every datagram would be forwarded again, forever"
                );
            }
            let (sock, gro) = bind_batch_receiver(addr, &config.socket)
                .with_context(|| format!("--udp-listen-addr {ep}"))?;
            tracing::info!(listen = %ep, gro, "listening for UDP");
            udp.push(udp::Input::new(ep.to_string(), sock, gro));
        }
        // An upstream name that does not resolve now is not bad input: DNS
        // may be down at boot. Its thread warns and retries with backoff,
        // resolving again each time, like an unreachable upstream.
        let tls = tls_targets(&config)?;
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
            tls,
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
        for (i, (up, tls)) in self.config.tcp_connect.iter().zip(&self.tls).enumerate() {
            let stats = Arc::new(UpstreamStats::new(up.to_string(), up.is_tls()));
            tcp_stats.push(Arc::clone(&stats));
            let upstream = tcp::Upstream {
                addr: up.clone(),
                tls: tls.clone(),
                framing: self.config.framing,
                max_datagram: self.config.max_datagram,
                reconnect_min: self.config.reconnect_min,
                reconnect_max: self.config.reconnect_max,
                idle_timeout: self.config.idle_timeout,
                keepalive: self.config.keepalive,
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
        let control = (self.config.relay_control && !self.udp.is_empty())
            .then(|| Arc::new(ControlStats::default()));
        let result = if self.udp.is_empty() {
            while mproxy_common::io::sleep_unless(shutdown, Duration::from_millis(200)) {}
            Ok(())
        } else {
            let relay = control
                .as_ref()
                .map(|c| udp::Relay::new(Arc::clone(c), self.shared.session));
            udp::run(self.udp, &self.shared, relay, shutdown)
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
            control,
            elapsed: start.elapsed(),
        })
    }
}

/// Load the TLS files and derive each TLS upstream's server name
fn tls_targets(config: &Config) -> anyhow::Result<Vec<Option<tcp::TlsTarget>>> {
    if !config.tcp_connect.iter().any(UpstreamAddr::is_tls) {
        return Ok(vec![None; config.tcp_connect.len()]);
    }
    let client = tls::client_config(&config.tls)?;
    if config.tls.insecure_skip_verify {
        tracing::warn!(
            "--insecure-skip-verify: TLS server certificates are NOT verified; \
             anyone on the path can impersonate the upstreams and forge their feeds"
        );
    }
    config
        .tcp_connect
        .iter()
        .map(|up| {
            if !up.is_tls() {
                return Ok(None);
            }
            let server_name = tls::server_name(config.tls.sni.as_deref(), up.endpoint())?;
            Ok(Some(tcp::TlsTarget {
                config: Arc::clone(&client),
                server_name,
                insecure: config.tls.insecure_skip_verify,
                client_cert: config.tls.client_cert.is_some(),
            }))
        })
        .collect()
}

/// Whether datagrams sent to `dest` arrive at a socket listening on `listen`
/// (the same address, or a wildcard listener's port on a loopback address)
fn loops_back(listen: SocketAddr, dest: SocketAddr) -> bool {
    listen == dest
        || (listen.port() == dest.port()
            && listen.ip().is_unspecified()
            && dest.ip().is_loopback()
            && listen.is_ipv4() == dest.is_ipv4())
}
