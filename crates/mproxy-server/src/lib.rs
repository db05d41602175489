//! Receive UDP datagrams (unicast or multicast) and log them to a file
//!
//! Every `--listen-addr` socket is polled by one thread, so datagrams from
//! all of them are appended to the one output file whole and never
//! interleaved. Output is buffered and flushed whenever the sockets run dry,
//! so a live feed reaches the file within one poll round while a burst is
//! written in large blocks. Truncated datagrams (MSG_TRUNC), kernel
//! receive-queue overflows (SO_RXQ_OVFL) and write failures are counted and
//! reported; nothing is dropped silently.
//!
//! ```no_run
//! use mproxy_server::{Config, Server};
//! use mproxy_common::cli::Shutdown;
//!
//! let mut config = Config::new(vec!["127.0.0.1:9920".parse()?]);
//! config.path = Some("received.log".into());
//! let summary = Server::bind(config)?.run(&Shutdown::new())?;
//! eprintln!("{summary}");
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use mproxy_common::cli::{CommonArgs, Shutdown};
use mproxy_common::net::{bind_receiver, kernel_drops, recv_meta, RECV_BUF_LEN};
use mproxy_common::stats::{human_bytes, LogLimiter};
use mproxy_common::{Endpoint, SocketOptions};

/// Command line of `mproxy-server`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mproxy-server",
    version,
    about = "Listen for UDP datagrams (unicast or multicast) and log them to a file",
    after_help = "EXAMPLES:\n  \
        mproxy-server --path ais.log --listen-addr 0.0.0.0:9920 --listen-addr '[::]:9921'\n  \
        mproxy-server --path - --listen-addr 239.255.0.1:9922 --iface eth0\n  \
        mproxy-server --tee --listen-addr 232.1.1.1:5000 --source 192.0.2.10"
)]
pub struct Cli {
    /// Output file, appended to ('-' for stdout); datagrams are written
    /// whole, in arrival order, never interleaved
    #[arg(long, value_name = "FILE|-")]
    pub path: Option<String>,

    /// UDP address to listen on, unicast or multicast (a multicast address
    /// is joined); repeatable, all feed the one output
    #[arg(long = "listen-addr", value_name = "HOST:PORT", required = true)]
    pub listen_addr: Vec<Endpoint>,

    /// Copy received data to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// Log counters every N seconds (0: only at exit)
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// Validated settings of a server
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on
    pub listen: Vec<Endpoint>,
    /// Output file ('-' for stdout), `None` for no file
    pub path: Option<PathBuf>,
    /// Copy received data to stdout
    pub tee: bool,
    /// Periodic counter logging, `None` for only at exit
    pub stats_interval: Option<Duration>,
    /// Multicast and buffer options
    pub socket: SocketOptions,
}

impl Config {
    /// Defaults for listening on `listen`, writing nowhere yet
    pub fn new(listen: Vec<Endpoint>) -> Self {
        Self {
            listen,
            path: None,
            tee: false,
            stats_interval: None,
            socket: SocketOptions::default(),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;

    fn try_from(cli: Cli) -> anyhow::Result<Self> {
        cli.common.validate()?;
        if cli.path.is_none() && !cli.tee {
            bail!("nothing to do: give --path FILE (or '-') and/or --tee");
        }
        Ok(Self {
            listen: cli.listen_addr,
            path: cli.path.map(PathBuf::from),
            tee: cli.tee,
            stats_interval: (cli.stats_interval > 0)
                .then(|| Duration::from_secs(cli.stats_interval)),
            socket: cli.common.socket_options(),
        })
    }
}

/// Counters of one listening socket
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    /// The address as given
    pub spec: String,
    /// Datagrams received
    pub datagrams: u64,
    /// Payload bytes received (after truncation)
    pub bytes: u64,
    /// Datagrams larger than the receive buffer (cut short)
    pub truncated: u64,
    /// Datagrams the kernel dropped because the receive queue was full
    pub kernel_drops: u64,
    /// Receive errors other than "no data yet"
    pub recv_errors: u64,
}

/// What a finished run did
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per listening socket
    pub listeners: Vec<ListenerStats>,
    /// Failed writes to the output file (their data is lost and counted here)
    pub write_errors: u64,
    /// Bytes that could not be written
    pub bytes_lost_to_write_errors: u64,
    /// Wall time of the run
    pub elapsed: Duration,
}

impl Summary {
    /// Total datagrams received
    pub fn datagrams(&self) -> u64 {
        self.listeners.iter().map(|l| l.datagrams).sum()
    }

    /// Total payload bytes received
    pub fn bytes(&self) -> u64 {
        self.listeners.iter().map(|l| l.bytes).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} datagrams ({}) in {:.2}s, {} write errors",
            self.datagrams(),
            human_bytes(self.bytes()),
            self.elapsed.as_secs_f64(),
            self.write_errors
        )?;
        for l in &self.listeners {
            write!(
                f,
                "; {}: {} datagrams, {} bytes, {} truncated, {} kernel drops, {} recv errors",
                l.spec, l.datagrams, l.bytes, l.truncated, l.kernel_drops, l.recv_errors
            )?;
        }
        Ok(())
    }
}

enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Stdout(w) => w,
            Self::File(w) => w,
        }
    }
}

struct Listener {
    sock: UdpSocket,
    addr: SocketAddr,
    stats: ListenerStats,
    last_drops: u32,
}

/// A server with its sockets bound and its output open
pub struct Server {
    config: Config,
    listeners: Vec<Listener>,
    output: Option<Output>,
    tee: Option<BufWriter<io::Stdout>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish()
    }
}

const OUT_BUF: usize = 1 << 20;

impl Server {
    /// Open the output and bind every listening socket
    ///
    /// # Errors
    /// An unwritable output path, an address that does not resolve, or a
    /// socket that cannot be bound or joined (port in use, unknown
    /// interface); each names the culprit.
    pub fn bind(config: Config) -> anyhow::Result<Self> {
        let output = match &config.path {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Output::Stdout(BufWriter::with_capacity(
                OUT_BUF,
                io::stdout(),
            ))),
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("--path {}", p.display()))?;
                Some(Output::File(BufWriter::with_capacity(OUT_BUF, f)))
            }
        };
        let mut listeners = Vec::with_capacity(config.listen.len());
        for ep in &config.listen {
            let addr = ep.resolve().context("--listen-addr")?;
            let sock = bind_receiver(addr, &config.socket)
                .with_context(|| format!("--listen-addr {ep}"))?;
            let addr = sock.local_addr().unwrap_or(addr);
            tracing::info!(listen = %ep, %addr, "listening");
            listeners.push(Listener {
                sock,
                addr,
                stats: ListenerStats {
                    spec: ep.to_string(),
                    ..ListenerStats::default()
                },
                last_drops: 0,
            });
        }
        let tee = config
            .tee
            .then(|| BufWriter::with_capacity(OUT_BUF, io::stdout()));
        Ok(Self {
            config,
            listeners,
            output,
            tee,
        })
    }

    /// Local addresses of the listening sockets, in `--listen-addr` order
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Receive and write until shutdown, then flush and summarize
    ///
    /// # Errors
    /// Only if the poller itself fails; socket and write errors are counted.
    pub fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        let start = Instant::now();
        let mut poll = Poll::new().context("creating poller")?;
        for (i, l) in self.listeners.iter().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&l.sock.as_raw_fd()),
                    Token(i),
                    Interest::READABLE,
                )
                .context("registering socket with poller")?;
        }
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let mut write_errors = 0u64;
        let mut bytes_lost = 0u64;
        let write_log = LogLimiter::default();
        let recv_log = LogLimiter::default();
        let mut next_stats = self.config.stats_interval.map(|d| start + d);
        loop {
            let stopping = shutdown.is_set();
            if !stopping {
                match poll.poll(&mut events, Some(Duration::from_millis(200))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("polling sockets"),
                }
            }
            // Drain every socket on each round: cheap, and on shutdown it
            // collects what is already queued before we exit.
            for l in &mut self.listeners {
                loop {
                    let meta = match recv_meta(&l.sock, &mut buf) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            l.stats.recv_errors += 1;
                            if let Some(n) = recv_log.allow() {
                                tracing::warn!(listen = %l.stats.spec, suppressed = n, "receive failed: {e}");
                            }
                            break;
                        }
                    };
                    l.stats.datagrams += 1;
                    l.stats.bytes += meta.len as u64;
                    if meta.truncated() {
                        l.stats.truncated += 1;
                        if let Some(n) = recv_log.allow() {
                            tracing::warn!(
                                listen = %l.stats.spec, from = %meta.from, suppressed = n,
                                "datagram of {} bytes truncated to {}", meta.wire_len, meta.len
                            );
                        }
                    }
                    if let Some(d) = meta.kernel_drops {
                        if d != l.last_drops {
                            let delta = d.wrapping_sub(l.last_drops);
                            l.stats.kernel_drops += u64::from(delta);
                            l.last_drops = d;
                            if let Some(n) = recv_log.allow() {
                                tracing::warn!(
                                    listen = %l.stats.spec, suppressed = n,
                                    "kernel dropped {delta} datagrams (receive queue full); try a larger --rcvbuf"
                                );
                            }
                        }
                    }
                    let data = &buf[..meta.len];
                    if let Some(out) = self.output.as_mut() {
                        if let Err(e) = out.writer().write_all(data) {
                            write_errors += 1;
                            bytes_lost += data.len() as u64;
                            if let Some(n) = write_log.allow() {
                                tracing::warn!(suppressed = n, "writing output failed: {e}");
                            }
                        }
                    }
                    if let Some(t) = self.tee.as_mut() {
                        if let Err(e) = t.write_all(data) {
                            tracing::warn!("--tee: stdout failed ({e}); no longer copying");
                            self.tee = None;
                        }
                    }
                }
            }
            if let Some(out) = self.output.as_mut() {
                if let Err(e) = out.writer().flush() {
                    write_errors += 1;
                    if let Some(n) = write_log.allow() {
                        tracing::warn!(suppressed = n, "flushing output failed: {e}");
                    }
                }
            }
            if let Some(t) = self.tee.as_mut() {
                if t.flush().is_err() {
                    self.tee = None;
                }
            }
            if let Some(at) = next_stats {
                if Instant::now() >= at {
                    tracing::info!("{}", self.summary(start, write_errors, bytes_lost));
                    next_stats = self.config.stats_interval.map(|d| at + d);
                }
            }
            if stopping {
                break;
            }
        }
        Ok(self.summary(start, write_errors, bytes_lost))
    }

    fn summary(&self, start: Instant, write_errors: u64, bytes_lost: u64) -> Summary {
        Summary {
            listeners: self
                .listeners
                .iter()
                .map(|l| {
                    let mut stats = l.stats.clone();
                    if let Some(d) = kernel_drops(&l.sock) {
                        stats.kernel_drops = stats.kernel_drops.max(u64::from(d));
                    }
                    stats
                })
                .collect(),
            write_errors,
            bytes_lost_to_write_errors: bytes_lost,
            elapsed: start.elapsed(),
        }
    }
}
