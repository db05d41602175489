//! Receive UDP datagrams (unicast or multicast) and log them to a file
//!
//! Every `--listen-addr` socket is polled by one thread, so datagrams from
//! all of them are appended to the one output file whole and never
//! interleaved. Output is buffered and flushed whenever the sockets run dry,
//! so a live feed reaches the file within one poll round while a burst is
//! written in large blocks. Truncated datagrams (MSG_TRUNC: dropped, never
//! written cut short), kernel receive-queue overflows (SO_RXQ_OVFL,
//! SO_MEMINFO) and write failures are counted and reported; nothing is
//! dropped silently. Each socket is read up to a budget per turn
//! ([`mproxy_common::net::Drain`]), so a flooded one cannot starve the
//! others or the timers.
//!
//! Outputs keep records whole: a write that fails part-way is cut back to
//! the last whole record, and what could not be written is dropped and
//! counted (never written late). A `--path` template writes one file per
//! stream, sender or period, opened lazily and bounded by the descriptor
//! limit; files deleted or moved while written are recreated, SIGHUP
//! reopens them, `--rotate-size`/`--rotate-interval` rotate them between
//! records, and `--record-prefix` stamps each line with its sender and
//! receive time.
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
#![forbid(unsafe_code)]

mod output;

pub use output::OutputStats;
use output::{Budget, OutputConfig, RotatePolicy, Sink};

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use mproxy_common::cli::{CommonArgs, ReopenSignal, Shutdown, StatsSignal};
use mproxy_common::mpx::{
    CloseReason, Event, FeedbackTracker, PathKey, Receiver, ReceiverConfig, ReceiverStats,
    StreamStats, REPORT_LEN,
};
use mproxy_common::net::{
    bind_batch_receiver, recv_buffer_size, Drain, Drained, RecvBatch, RecvSnapshot, RecvStats,
    RECV_BUF_LEN,
};
use mproxy_common::stats::human_bytes;
use mproxy_common::wire::{classify, Datagram, FrameType};
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
        mproxy-server --tee --listen-addr 232.1.1.1:5000 --source 192.0.2.10\n  \
        mproxy-server --path 'logs/{source}/{date}.log' --record-prefix '{time} ' --listen-addr 0.0.0.0:9920\n  \
        mproxy-server --path feed.log --rotate-size 100MiB --listen-addr 0.0.0.0:9920\n\n\
        SIGNALS: SIGINT/SIGTERM flush and exit 0; SIGUSR1 logs the counters; SIGHUP reopens\n\
        every output (after logrotate renamed it) and logs the counters.\n\
        EXIT CODES: 0 done, 2 bad input, 1 a fault after start-up, including stdout\n\
        closed by its reader (`--path - | head`), after the summary."
)]
pub struct Cli {
    /// Output file, appended to ('-' for stdout); datagrams are written
    /// whole, never interleaved, and a write that fails is cut back to the
    /// last whole one. A template writes one file per stream, sender or
    /// day: {session} {stream} (mpx; raw datagrams are session 'raw',
    /// stream 0), {source} {port} (the sender), {date} and %Y %m %d %H %M
    /// %S %j (UTC; the file changes when they do), e.g.
    /// 'out/{session}-{stream}.log'. Files open lazily (a stream without
    /// data makes none) and close when idle for 30 s. A file deleted or
    /// moved while written is recreated (with a warning); SIGHUP reopens
    /// every file
    #[arg(long, visible_alias = "output", value_name = "FILE|-|TEMPLATE")]
    pub path: Option<String>,

    /// Rotate a file before a record would make it larger than SIZE (e.g.
    /// 100k, 64MiB): it is renamed FILE.N (N one more than the highest
    /// there) and a new FILE begins; records are never split
    #[arg(long, value_name = "SIZE", value_parser = mproxy_common::cli::parse_size)]
    pub rotate_size: Option<usize>,

    /// Rotate every DURATION (30s, 15m, 1h, 1d), on multiples of it since
    /// 1970 UTC (1h: on the hour), as --rotate-size does; empty files stay
    #[arg(long, value_name = "DURATION", value_parser = output::parse_interval)]
    pub rotate_interval: Option<Duration>,

    /// Put TEXT before every line written (records are taken as whole
    /// lines; a missing final newline is added): {time} (receive time,
    /// RFC 3339 UTC, microseconds), {source} {port} (the sender), {session}
    /// {stream}, {date} and %-fields, e.g. '{time} {source}:{port} '
    #[arg(long, value_name = "TEXT")]
    pub record_prefix: Option<String>,

    /// UDP address to listen on, unicast or multicast (a multicast address
    /// is joined); repeatable, all feed the one output
    #[arg(long = "listen-addr", visible_aliases = ["listen", "udp-listen-addr"], value_name = "HOST:PORT", required = true)]
    pub listen_addr: Vec<Endpoint>,

    /// Copy received data to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// Log counters every N seconds (0: only at exit and on SIGUSR1)
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    /// Which datagrams to accept: 'auto' takes both raw payloads and mpx
    /// frames (told apart by the mpx magic), 'raw' treats everything as
    /// raw (for binary raw streams), 'mpx' drops raw datagrams (counted)
    #[arg(long, value_name = "auto|raw|mpx", default_value = "auto")]
    pub accept: Accept,

    /// mpx: most frames a stream may hold while waiting for a missing one
    #[arg(long, value_name = "FRAMES", default_value_t = 1024)]
    pub reorder_window: usize,

    /// mpx: how long to wait for a missing frame before counting it lost
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub reorder_timeout: u64,

    /// mpx: most streams tracked at once (their files share the
    /// open-file bound: at most 1024, and what the descriptor limit allows)
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_streams: usize,

    /// mpx: ask senders to re-send missing frames (NACK) before the
    /// reorder timeout gives them up; senders without a repair buffer
    /// ignore the requests
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = mproxy_common::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub nack: bool,

    /// mpx: report per-path reception (frames, bytes, echoed probe time)
    /// to senders on unicast listen addresses, at most 10 reports/s per
    /// path and sender, so multipath senders can detect dead paths
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = mproxy_common::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub feedback: bool,

    /// mpx: flow control: advertise each stream's window (what the reorder
    /// window and the socket's receive buffer can hold) to its sender, so
    /// an unpaced sender never overruns this receiver
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = mproxy_common::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub flow_control: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// Which datagrams a server accepts
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Accept {
    /// Raw payloads and mpx frames
    #[default]
    Auto,
    /// Everything is a raw payload
    Raw,
    /// Only mpx frames; raw datagrams are dropped and counted
    Mpx,
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
    /// Rotate files before they pass this size
    pub rotate_size: Option<u64>,
    /// Rotate files at every multiple of this interval
    pub rotate_interval: Option<Duration>,
    /// Template put before every line written
    pub record_prefix: Option<String>,
    /// Periodic counter logging, `None` for only at exit
    pub stats_interval: Option<Duration>,
    /// Which datagrams to accept
    pub accept: Accept,
    /// mpx reassembly settings
    pub mpx: ReceiverConfig,
    /// Send path feedback to mpx senders on unicast listeners
    pub feedback: bool,
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
            rotate_size: None,
            rotate_interval: None,
            record_prefix: None,
            stats_interval: None,
            accept: Accept::Auto,
            mpx: ReceiverConfig::default(),
            feedback: true,
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
        if cli.tee && cli.path.as_deref().is_some_and(|p| p == "-") {
            bail!("--tee with --path - would write everything to stdout twice: use one of them");
        }
        if !(1..=65536).contains(&cli.reorder_window) {
            bail!(
                "--reorder-window {} out of range (1 to 65536 frames)",
                cli.reorder_window
            );
        }
        if !(1..=60_000).contains(&cli.reorder_timeout) {
            bail!(
                "--reorder-timeout {} out of range (1 to 60000 ms)",
                cli.reorder_timeout
            );
        }
        if !(1..=65536).contains(&cli.max_streams) {
            bail!(
                "--max-streams {} out of range (1 to 65536)",
                cli.max_streams
            );
        }
        if let Some(p) = &cli.path {
            let t = output::Template::parse(p, output::Usage::Path)
                .map_err(|e| anyhow::anyhow!("--path {p}: {e}"))?;
            if t.uses_stream() && cli.accept == Accept::Raw {
                bail!("--path {p}: {{session}} and {{stream}} need mpx (--accept auto or mpx)");
            }
        }
        let rotating = cli.rotate_size.is_some() || cli.rotate_interval.is_some();
        if rotating && cli.path.as_deref().is_none_or(|p| p == "-") {
            bail!("--rotate-size and --rotate-interval rotate files: give --path FILE");
        }
        if let Some(p) = &cli.record_prefix {
            output::Template::parse(p, output::Usage::Prefix)
                .map_err(|e| anyhow::anyhow!("--record-prefix {p}: {e}"))?;
        }
        Ok(Self {
            listen: cli.listen_addr,
            path: cli.path.map(PathBuf::from),
            tee: cli.tee,
            rotate_size: cli.rotate_size.map(|n| n as u64),
            rotate_interval: cli.rotate_interval,
            record_prefix: cli.record_prefix,
            stats_interval: (cli.stats_interval > 0)
                .then(|| Duration::from_secs(cli.stats_interval)),
            accept: cli.accept,
            mpx: ReceiverConfig {
                reorder_window: cli.reorder_window,
                reorder_timeout: Duration::from_millis(cli.reorder_timeout),
                max_streams: cli.max_streams,
                nack: cli.nack,
                window: cli.flow_control,
                ..ReceiverConfig::default()
            },
            feedback: cli.feedback,
            socket: cli.common.socket_options(),
        })
    }
}

/// Counters of one listening socket
#[derive(Debug, Clone, Default)]
pub struct ListenerStats {
    /// The address as given
    pub spec: String,
    /// What the socket received: datagrams and bytes as sent, truncated
    /// ones (dropped, never written cut short), kernel drops, receive
    /// errors (see [`mproxy_common::net::RecvStats`])
    pub recv: RecvSnapshot,
    /// The socket took coalesced (GRO) buffers: its kernel drops count
    /// buffers, each at least one datagram
    pub gro: bool,
}

/// What a finished run did
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per listening socket
    pub listeners: Vec<ListenerStats>,
    /// Failed writes to the output (their data is lost and counted here)
    pub write_errors: u64,
    /// Bytes that could not be written
    pub bytes_lost_to_write_errors: u64,
    /// Output counters: records lost, files recreated, rotated, reopened
    pub output: OutputStats,
    /// The run stopped because the output's reader went away (EPIPE on
    /// stdout): `main` exits 1 after the summary
    pub output_closed: bool,
    /// mpx: receiver-wide counters
    pub mpx: ReceiverStats,
    /// mpx: counters summed over every stream that closed
    pub mpx_streams: StreamStats,
    /// Raw datagrams dropped because `--accept mpx`
    pub raw_dropped: u64,
    /// Feedback reports sent to mpx senders
    pub feedback_sent: u64,
    /// Feedback reports that could not be sent
    pub feedback_errors: u64,
    /// NACKs that could not be sent
    pub nack_errors: u64,
    /// Wall time of the run
    pub elapsed: Duration,
}

impl Summary {
    /// Total datagrams received
    pub fn datagrams(&self) -> u64 {
        self.listeners.iter().map(|l| l.recv.datagrams).sum()
    }

    /// Total payload bytes received
    pub fn bytes(&self) -> u64 {
        self.listeners.iter().map(|l| l.recv.bytes).sum()
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
        let o = &self.output;
        if o.records_lost + o.bytes_lost > 0 {
            write!(
                f,
                " ({} records, {} bytes lost)",
                o.records_lost, o.bytes_lost
            )?;
        }
        if o.recreated + o.reopened + o.rotations + o.rotate_errors > 0 {
            write!(
                f,
                "; outputs: {} recreated, {} reopened, {} rotations ({} failed)",
                o.recreated, o.reopened, o.rotations, o.rotate_errors
            )?;
        }
        if self.output_closed {
            write!(f, "; stopped: output closed by its reader")?;
        }
        for l in &self.listeners {
            write!(f, "; {}: {}", l.spec, l.recv)?;
            if l.gro && l.recv.kernel_drops > 0 {
                write!(
                    f,
                    " (GRO: coalesced buffers, at least as many datagrams; \
                     --accept raw or --offload off counts each)"
                )?;
            }
        }
        let m = &self.mpx;
        if m.frames + m.truncated + m.unknown_version + m.checksum_errors > 0 {
            write!(
                f,
                "; mpx: {} frames, {} streams, {}; invalid: {} truncated, {} unknown version, \
                 {} bad checksum, {} unknown type, {} out of range; {} streams refused, {} evicted; \
                 {} frames after their stream closed, {} of refused streams",
                m.frames,
                m.streams_opened,
                self.mpx_streams,
                m.truncated,
                m.unknown_version,
                m.checksum_errors,
                m.unknown_type,
                m.out_of_range,
                m.streams_rejected,
                m.streams_evicted,
                m.after_close,
                m.rejected_frames
            )?;
        }
        if m.nacks_sent + m.nacks_suppressed + self.nack_errors > 0 {
            write!(
                f,
                "; {} NACKs sent ({} failed), {} held back for another receiver's",
                m.nacks_sent, self.nack_errors, m.nacks_suppressed
            )?;
        }
        if m.fec_frames + m.fec_invalid > 0 {
            write!(
                f,
                "; FEC: {} frames ({} invalid), {} blocks, {} frames rebuilt in {} blocks, {} blocks unrecoverable",
                m.fec_frames,
                m.fec_invalid,
                m.fec_blocks,
                m.fec_repaired,
                m.fec_recovered_blocks,
                m.fec_unrecoverable_blocks
            )?;
            if m.fec_dropped_symbols > 0 {
                write!(
                    f,
                    " ({} symbols dropped: memory limit)",
                    m.fec_dropped_symbols
                )?;
            }
        }
        if self.feedback_sent + self.feedback_errors > 0 {
            write!(
                f,
                "; {} feedback reports sent ({} failed)",
                self.feedback_sent, self.feedback_errors
            )?;
        }
        if self.raw_dropped > 0 {
            write!(
                f,
                "; {} raw datagrams dropped (--accept mpx)",
                self.raw_dropped
            )?;
        }
        if m.raw_lookalike > 0 {
            write!(
                f,
                "; {} raw datagrams that began like an mpx frame (written as raw)",
                m.raw_lookalike
            )?;
        }
        Ok(())
    }
}

struct Listener {
    sock: UdpSocket,
    addr: SocketAddr,
    spec: String,
    gro: bool,
    stats: RecvStats,
    drain: Drain,
}

impl Listener {
    /// Hand what the socket holds to `core`, up to the drain's budget;
    /// true if more may be queued
    fn drain(&mut self, index: usize, batch: &mut RecvBatch, core: &mut Core) -> bool {
        // feedback only goes back over unicast paths; multicast receivers stay silent
        let listener = (!self.addr.ip().is_multicast()).then_some(index);
        let drained = self.drain.run(&self.sock, batch, &self.stats, |datagrams| {
            let now = Instant::now();
            for d in datagrams {
                core.handle(now, d.from, index, listener, d.data);
            }
        });
        drained == Drained::More
    }

    /// The counters, kernel drops brought up to date (SO_MEMINFO)
    fn stats(&mut self) -> ListenerStats {
        self.drain.sync_kernel_drops(&self.sock, &self.stats);
        ListenerStats {
            spec: self.spec.clone(),
            recv: self.stats.snapshot(),
            gro: self.gro,
        }
    }
}

/// Everything a datagram goes through after it is received
struct Core {
    accept: Accept,
    receiver: Receiver,
    /// Per-path reception reports (only for unicast listeners)
    feedback: Option<FeedbackTracker>,
    feedback_sent: u64,
    feedback_errors: u64,
    nack_errors: u64,
    sink: Sink,
    closed_totals: StreamStats,
    raw_dropped: u64,
    /// Budget of per-stream log lines ("stream opened", "stream closed")
    stream_log: Budget,
}

impl Core {
    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        index: usize,
        listener: Option<usize>,
        data: &[u8],
    ) {
        match self.accept {
            Accept::Raw => self.sink.write_raw(from, data),
            Accept::Auto | Accept::Mpx => {
                let datagram = classify(data);
                if let (Datagram::Mpx(repr, payload), Some(fb), Some(l)) =
                    (&datagram, self.feedback.as_mut(), listener)
                {
                    fb.on_frame(now, PathKey { listener: l, from }, repr, payload);
                }
                if let Some(raw) = self
                    .receiver
                    .handle_classified_on(now, from, index, datagram)
                {
                    if self.accept == Accept::Mpx {
                        self.raw_dropped += 1;
                    } else {
                        self.sink.write_raw(from, raw);
                    }
                }
                self.drain_events();
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.receiver.poll_event() {
            match ev {
                Event::Data { key, payload } => {
                    self.sink.write_stream(key, &payload);
                    self.receiver.recycle(payload);
                }
                Event::Opened {
                    key,
                    from,
                    first_seq,
                } => {
                    self.sink.open_stream(key, from);
                    if let Some(n) = self.stream_log.allow() {
                        tracing::info!(stream = %key, %from, first_seq, suppressed = n, "stream opened");
                    }
                }
                Event::Gap { key, first, count } => {
                    tracing::debug!(stream = %key, first, count, "gap skipped");
                }
                Event::Closed { key, reason, stats } => {
                    if reason == CloseReason::Fin && stats.lost == 0 {
                        if let Some(n) = self.stream_log.allow() {
                            tracing::info!(stream = %key, ?reason, suppressed = n, "stream closed: {stats}");
                        }
                    } else if let Some(n) = self.stream_log.allow() {
                        // closed without its FIN, or with frames missing
                        tracing::warn!(
                            stream = %key,
                            ?reason,
                            frames_missing = stats.lost,
                            bytes_missing = ?stats.bytes_lost,
                            last_seq = ?stats.last_seq,
                            end = ?stats.end,
                            suppressed = n,
                            "stream closed: {stats}"
                        );
                    }
                    self.closed_totals.add(&stats);
                    self.sink.close_stream(key);
                }
            }
        }
    }
}

/// A server with its sockets bound and its output open
pub struct Server {
    config: Config,
    listeners: Vec<Listener>,
    core: Core,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// Open the output and bind every listening socket
    ///
    /// # Errors
    /// An unwritable output path, an address that does not resolve, or a
    /// socket that cannot be bound or joined (port in use, unknown
    /// interface); each names the culprit.
    pub fn bind(config: Config) -> anyhow::Result<Self> {
        let per_file = config.path.as_deref().is_some_and(output::is_template);
        let sink = Sink::open(&OutputConfig {
            path: config.path.clone(),
            tee: config.tee,
            rotate: RotatePolicy {
                size: config.rotate_size,
                interval: config.rotate_interval.map(|d| d.as_secs().max(1)),
            },
            prefix: config.record_prefix.clone(),
            max_open: output::open_file_bound(
                per_file,
                config.mpx.max_streams,
                config.listen.len(),
            )?,
        })?;
        let mut listeners = Vec::with_capacity(config.listen.len());
        // Raw mode has no sequence numbers: the kernel's drop counter is
        // its only loss signal, and the kernel counts a dropped GRO buffer
        // once however many datagrams it held (Linux 6.18: after a 2 s
        // stop, 33,677 datagrams lost and 4,142 counted). Without GRO it
        // counts each datagram exactly, at about twice the receive CPU on
        // loopback (see docs/ARCHITECTURE.md, Sockets).
        let mut socket = config.socket.clone();
        if config.accept == Accept::Raw {
            socket.offload = false;
        }
        for ep in &config.listen {
            let addr = ep.resolve().context("--listen-addr")?;
            let (sock, gro) = bind_batch_receiver(addr, &socket)
                .with_context(|| format!("--listen-addr {ep}"))?;
            let addr = sock.local_addr().unwrap_or(addr);
            tracing::info!(listen = %ep, %addr, gro, "listening");
            listeners.push(Listener {
                sock,
                addr,
                spec: ep.to_string(),
                gro,
                stats: RecvStats::default(),
                drain: Drain::new(ep.to_string()).with_gro(gro),
            });
        }
        // Advertise no more than the smallest receive buffer holds, at
        // ~2.5 KiB of kernel budget per full-size datagram, or a window's
        // burst would overflow the kernel queue.
        let mut mpx = config.mpx.clone();
        // auto: a raw datagram that merely begins with the magic is written
        mpx.invalid_as_raw = config.accept == Accept::Auto;
        if mpx.window && mpx.window_frames == 0 {
            let budget = listeners
                .iter()
                .filter_map(|l| recv_buffer_size(&l.sock).ok())
                .min()
                .unwrap_or(0);
            mpx.window_frames = (budget / KERNEL_BYTES_PER_DATAGRAM).max(16);
            tracing::debug!(
                frames = mpx.window_frames.min(mpx.reorder_window),
                "flow-control window"
            );
        }
        let core = Core {
            accept: config.accept,
            receiver: Receiver::new(mpx),
            feedback: (config.feedback && config.accept != Accept::Raw)
                .then(|| FeedbackTracker::new(FEEDBACK_INTERVAL, 4096)),
            feedback_sent: 0,
            feedback_errors: 0,
            nack_errors: 0,
            sink,
            closed_totals: StreamStats::default(),
            raw_dropped: 0,
            stream_log: Budget::new(STREAM_LOG_BURST, STREAM_LOG_PER_SEC),
        };
        Ok(Self {
            config,
            listeners,
            core,
        })
    }

    /// Local addresses of the listening sockets, in `--listen-addr` order
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Receive and write until shutdown, then flush and summarize
    ///
    /// On shutdown, datagrams already queued in the kernel are still
    /// written, mpx streams deliver what they hold (missing frames are
    /// counted as lost) and all outputs are flushed.
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
        let stats_signal = StatsSignal::install();
        let reopen_signal = ReopenSignal::install();
        let mut events = Events::with_capacity(64);
        let mut batch = RecvBatch::new(BATCH, RECV_BUF_LEN);
        let mut report = vec![0u8; REPORT_LEN];
        let mut next_stats = self.config.stats_interval.map(|d| start + d);
        // a socket left with datagrams queued when its budget ran out
        let mut more = false;
        // when shutdown was noticed: what is queued by then is still
        // written, for at most STOP_DRAIN (a flood never lets the sockets
        // run dry)
        let mut stop_at: Option<Instant> = None;
        loop {
            let stopping = shutdown.is_set() || self.core.sink.is_closed();
            if !stopping {
                let feedback_due = self
                    .core
                    .feedback
                    .as_ref()
                    .and_then(FeedbackTracker::poll_timeout);
                let timeout = [self.core.receiver.poll_timeout(), feedback_due]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(POLL_TICK, |t| t.saturating_duration_since(Instant::now()))
                    .min(if more { Duration::ZERO } else { POLL_TICK });
                match poll.poll(&mut events, Some(timeout)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("polling sockets"),
                }
            }
            // Drain every socket on each round, each up to its budget, so
            // a flooded one cannot starve the others or the timers
            more = false;
            for (i, l) in self.listeners.iter_mut().enumerate() {
                more |= l.drain(i, &mut batch, &mut self.core);
            }
            let now = Instant::now();
            self.send_feedback(now, &mut report);
            if self.core.receiver.poll_timeout().is_some_and(|t| t <= now) {
                self.core.receiver.handle_timeout(now);
                self.core.drain_events();
            }
            self.send_nacks();
            let stop_at = stopping.then(|| *stop_at.get_or_insert(now));
            let finishing = stop_at.is_some_and(|at| !more || now >= at + STOP_DRAIN);
            if finishing {
                self.core.receiver.close_all();
                self.core.drain_events();
            }
            self.core.sink.flush();
            self.core.sink.tick(now);
            if reopen_signal.as_ref().is_some_and(ReopenSignal::take) {
                let n = self.core.sink.reopen();
                tracing::info!("SIGHUP: reopened {n} output files");
                self.log_stats(start);
            }
            let periodic = next_stats.is_some_and(|at| now >= at);
            if periodic || stats_signal.as_ref().is_some_and(StatsSignal::take) {
                self.log_stats(start);
                next_stats = self.config.stats_interval.map(|d| now + d);
            }
            if finishing {
                break;
            }
        }
        self.core.sink.finish();
        Ok(self.summary(start))
    }

    /// Send queued NACKs from the socket their stream arrived on; on a
    /// multicast listener also to the group, so the other receivers can
    /// hold back their own request for the same frames
    fn send_nacks(&mut self) {
        while let Some(t) = self.core.receiver.poll_transmit() {
            let Some(l) = self.listeners.get(t.listener) else {
                continue;
            };
            if l.sock.send_to(&t.bytes, t.to).is_err() {
                self.core.nack_errors += 1;
            }
            if t.frame_type == FrameType::Nack
                && l.addr.ip().is_multicast()
                && l.sock.send_to(&t.bytes, l.addr).is_err()
            {
                self.core.nack_errors += 1;
            }
        }
    }

    /// Send the feedback reports that are due, from the socket the
    /// reported frames arrived on
    fn send_feedback(&mut self, now: Instant, buf: &mut [u8]) {
        let Some(fb) = self.core.feedback.as_mut() else {
            return;
        };
        while let Some((path, len)) = fb.poll_transmit(now, buf) {
            let Some(l) = self.listeners.get(path.listener) else {
                continue;
            };
            // no more back than arrived from there (no reflection)
            if !self.core.receiver.allow_reply(path.from, len) {
                continue;
            }
            match l.sock.send_to(&buf[..len], path.from) {
                Ok(_) => self.core.feedback_sent += 1,
                Err(_) => self.core.feedback_errors += 1,
            }
        }
    }

    fn log_stats(&mut self, start: Instant) {
        tracing::info!("{}", self.summary(start));
        let suppressed = self.core.stream_log.take_pending();
        if suppressed > 0 {
            tracing::info!("{suppressed} per-stream log lines held back since the last one");
        }
        let (open, bound) = self.core.sink.open_files();
        if bound > 0 {
            tracing::debug!(open, bound, "output files open");
        }
        for (key, stats) in self.core.receiver.stream_stats() {
            tracing::info!(stream = %key, "live stream: {stats}");
        }
    }

    fn summary(&mut self, start: Instant) -> Summary {
        Summary {
            listeners: self.listeners.iter_mut().map(Listener::stats).collect(),
            write_errors: self.core.sink.stats().write_errors,
            bytes_lost_to_write_errors: self.core.sink.stats().bytes_lost,
            output: self.core.sink.stats(),
            output_closed: self.core.sink.is_closed(),
            mpx: self.core.receiver.stats(),
            mpx_streams: self.core.closed_totals,
            raw_dropped: self.core.raw_dropped,
            feedback_sent: self.core.feedback_sent,
            feedback_errors: self.core.feedback_errors,
            nack_errors: self.core.nack_errors,
            elapsed: start.elapsed(),
        }
    }
}

/// Kernel receive-buffer budget one full-size datagram takes (payload
/// plus sk_buff bookkeeping), to size the flow-control window
const KERNEL_BYTES_PER_DATAGRAM: usize = 2560;
/// Smallest spacing of feedback reports per path and sender
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// Per-stream log lines ("stream opened"/"closed") logged at once, then
/// per second; the rest are counted and reported with the next one
const STREAM_LOG_BURST: u32 = 50;
/// See [`STREAM_LOG_BURST`]
const STREAM_LOG_PER_SEC: u32 = 10;
/// Longest wait in the poll loop before timers and signals are checked
const POLL_TICK: Duration = Duration::from_millis(200);
/// Longest the server goes on writing what is queued after a shutdown
/// request (until then, until the sockets run dry)
const STOP_DRAIN: Duration = Duration::from_secs(1);

/// Datagrams received per system call
const BATCH: usize = 32;
