//! Stream a file, device or stdin to UDP servers, unicast or multicast
//!
//! The client reads its input, packs it into datagrams (whole lines by
//! default, see [`mproxy_common::pack`]) and sends every datagram to every
//! `--server-addr`. Payloads are raw bytes, wire-compatible with the
//! original `mproxy-client` 0.1.x: any UDP receiver (socat, the original
//! `mproxy-server`, netcat) gets the input back by concatenating them.
//!
//! ```no_run
//! use mproxy_client::{Client, Config};
//! use mproxy_common::cli::Shutdown;
//!
//! let config = Config {
//!     servers: vec!["127.0.0.1:9920".parse()?],
//!     ..Config::new("telemetry.csv")
//! };
//! let summary = Client::new(config)?.run(&Shutdown::new())?;
//! eprintln!("{summary}");
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

mod multipath;

pub use multipath::Mode;
use multipath::Multipath;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use mproxy_common::cli::{parse_max_datagram, CommonArgs, Shutdown};
use mproxy_common::io::{wait_readable, Tee};
use mproxy_common::mpx::{
    new_session_id, Encoder, FecConfig, FecEncoderStats, FlowConfig, FlowControl, FlowEvent,
    FlowStats, SenderStats, DEFAULT_FEC_BLOCK, DEFAULT_FEC_MAX_DELAY, FEC_STREAM_BYTES,
};
use mproxy_common::net::DatagramBatch;
use mproxy_common::pack::Framing;
use mproxy_common::rate::{Pacer, Rate};
use mproxy_common::stats::{human_bytes, human_rate};
use mproxy_common::wire::{classify, Datagram, FrameType, Repr};
use mproxy_common::wire::{symbol_len_for, FEC_MAX_BLOCK, HEADER_LEN};
use mproxy_common::{Endpoint, Fanout, PathSpec, SocketOptions};

/// Default datagram payload limit: fits a 1500-byte Ethernet MTU over IPv4
/// without IP fragmentation (1500 - 20 - 8)
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Heartbeat interval of an idle mpx stream
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// After the end of input, stop lingering once no repair request came for this long
const LINGER_QUIET: Duration = Duration::from_millis(300);
/// Most NACK / WINDOW frames taken per poll of the sockets
pub(crate) const MAX_CONTROL: usize = 64;
/// While flow control holds the stream back, look for windows this often
const FLOW_POLL: Duration = Duration::from_micros(200);
/// ...and poke receivers with a heartbeat this often
const FLOW_POKE: Duration = Duration::from_millis(50);
/// Longest wait for input before checking timers and signals
const POLL_TICK: Duration = Duration::from_millis(200);

/// Command line of `mproxy-client`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mproxy-client",
    version,
    about = "Stream a file, device or stdin to UDP servers, unicast or multicast",
    after_help = "EXAMPLES:\n  \
        mproxy-client --path ais.nmea --server-addr 127.0.0.1:9920 --server-addr '[::1]:9921'\n  \
        tail -F sensors.csv | mproxy-client --path - --server-addr 239.255.0.1:9922 --ttl 4 --tee\n  \
        mproxy-client --path big.bin --framing bytes --rate 200mbit --server-addr 127.0.0.1:9920"
)]
pub struct Cli {
    /// Input: a file, a device (e.g. /dev/ttyUSB0), a FIFO, or '-' for stdin
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub path: String,

    /// Downstream UDP server, unicast or multicast (HOST:PORT, [V6]:PORT,
    /// [V6%IFACE]:PORT); repeatable. With --mode stripe a path may carry a
    /// weight and a rate: 'HOST:PORT|2' or 'HOST:PORT|2|50mbit'
    #[arg(long = "server-addr", value_name = "HOST:PORT[|W[|RATE]]")]
    pub server_addr: Vec<PathSpec>,

    /// fanout: every server gets a full copy; stripe: frames are spread
    /// over the servers (paths) by weight and reassembled by one receiver;
    /// redundant: every frame goes over every path, the receiver keeps the
    /// first copy. stripe and redundant imply --mpx
    #[arg(long, value_name = "MODE", default_value = "fanout")]
    pub mode: Mode,

    /// Copy the input to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// Largest datagram payload in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_DATAGRAM,
          value_parser = parse_max_datagram)]
    pub max_datagram: usize,

    /// How input is cut into datagrams: 'lines' keeps lines whole (a line is
    /// split only if longer than --max-datagram), 'bytes' cuts anywhere
    #[arg(long, value_name = "lines|bytes", default_value = "lines")]
    pub framing: Framing,

    /// Frame the stream with the mpx header (session, stream id, sequence
    /// numbers, checksum) so receivers can multiplex, reorder and count
    /// losses; default is raw payloads, compatible with mproxy 0.1.x
    #[arg(long)]
    pub mpx: bool,

    /// mpx stream id of this input (with --mpx or --mode stripe|redundant)
    /// [default: 1]
    #[arg(long, value_name = "N")]
    pub stream_id: Option<u32>,

    /// Pace sending to this rate per destination, e.g. 100mbit, 2MiB, 50000
    /// (bytes/s) [default: as fast as the input and sockets allow]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,

    /// mpx: bytes of recent frames kept to re-send what receivers report
    /// missing (NACK); 0 turns repair off
    #[arg(long, value_name = "BYTES", default_value = "16MiB",
          value_parser = mproxy_common::cli::parse_size_or_zero)]
    pub repair_buffer: usize,

    /// mpx: after the end of input, keep answering repair requests until
    /// none came for 300 ms, for at most this many milliseconds
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub linger: u64,

    /// mpx: pace to the slowest receiver that advertises a window (WINDOW
    /// frames); receivers silent for 2 s are no longer waited for, and
    /// with no receiver answering at all the client sends at --rate
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = mproxy_common::cli::parse_on_off, action = clap::ArgAction::Set)]
    pub flow_control: bool,

    /// mpx flow control: stop waiting for a receiver this many frames
    /// behind the most advanced one (it is cut off, counted and logged;
    /// its losses show as gaps on its side) [default: wait for the slowest]
    #[arg(long, value_name = "FRAMES")]
    pub max_lag: Option<u32>,
    /// mpx: forward error correction for links without a return path: add
    /// repair frames worth PERCENT of the data frames (1-100), so receivers
    /// rebuild up to that many lost frames per block without asking;
    /// 0 turns it off
    #[arg(long, value_name = "PERCENT", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=100))]
    pub fec: u16,

    /// mpx: data frames per FEC block (1-1024). Bigger blocks survive
    /// random loss far better at the same overhead (10 % over 5 % loss:
    /// 256 frames fail 0.1 % of the time, 20 frames 9 %) [default: 256]
    #[arg(long, value_name = "FRAMES", value_parser = parse_fec_block)]
    pub fec_block: Option<usize>,

    /// mpx: close a partial FEC block once its first frame is this many
    /// milliseconds old (slow streams, end of a burst). Receivers must wait
    /// longer than this for a missing frame: keep it well below the
    /// server's --reorder-timeout (default 200 ms) [default: 50]
    #[arg(long, value_name = "MS")]
    pub fec_delay: Option<u64>,

    /// Log per-destination / per-path counters every N seconds (0: only
    /// in the final summary)
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_interval: u64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// Validated settings of a client
#[derive(Debug, Clone)]
pub struct Config {
    /// Input path, '-' for stdin
    pub path: String,
    /// Destinations (paths, with weights and rates for stripe mode)
    pub servers: Vec<PathSpec>,
    /// How several destinations are used
    pub mode: Mode,
    /// Copy input to stdout
    pub tee: bool,
    /// Largest datagram payload
    pub max_datagram: usize,
    /// How input is cut into datagrams
    pub framing: Framing,
    /// Optional pacing rate
    pub rate: Option<Rate>,
    /// mpx framing: `Some(stream id)`; `None` for raw payloads
    pub mpx_stream: Option<u32>,
    /// Periodic counter logging
    pub stats_interval: Option<Duration>,
    /// mpx repair buffer in bytes (0: no repair)
    pub repair_buffer: usize,
    /// Longest wait for repair requests after the end of input
    pub linger: Duration,
    /// mpx flow control (None: off)
    pub flow: Option<FlowConfig>,
    /// mpx forward error correction (`None`: off)
    pub fec: Option<FecConfig>,
    /// Multicast and buffer options
    pub socket: SocketOptions,
}

impl Config {
    /// Defaults for reading `path` (no destinations yet)
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            servers: Vec::new(),
            mode: Mode::Fanout,
            tee: false,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            framing: Framing::Lines,
            rate: None,
            mpx_stream: None,
            stats_interval: None,
            repair_buffer: 16 << 20,
            linger: Duration::from_secs(2),
            flow: Some(FlowConfig::default()),
            fec: None,
            socket: SocketOptions::default(),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;

    fn try_from(cli: Cli) -> anyhow::Result<Self> {
        cli.common.validate()?;
        if let Some(src) = cli.common.sources.first() {
            bail!(
                "--source {src} selects senders when joining a group; the client only sends \
                 (give it to the receivers: mproxy-server, or the proxy/reverseproxy inputs)"
            );
        }
        if cli.server_addr.is_empty() && !cli.tee {
            bail!("nothing to do: give at least one --server-addr (or --tee)");
        }
        if cli.path.is_empty() {
            bail!("--path must not be empty (use '-' for stdin)");
        }
        let multipath = cli.mode != Mode::Fanout;
        if multipath && cli.server_addr.is_empty() {
            bail!("--mode {:?} needs at least one --server-addr", cli.mode);
        }
        if !multipath
            && cli
                .server_addr
                .iter()
                .any(|p| p.weight != 1 || p.rate.is_some())
        {
            bail!("path weights and rates ('|W|RATE') need --mode stripe");
        }
        if (cli.mpx || multipath) && cli.max_datagram <= HEADER_LEN {
            bail!(
                "--max-datagram {} leaves no room for data with --mpx: the header alone is {HEADER_LEN} bytes (at least {})",
                cli.max_datagram,
                HEADER_LEN + 1
            );
        }
        if cli.stream_id.is_some() && !cli.mpx && !multipath {
            bail!("--stream-id needs --mpx (raw datagrams carry no stream id)");
        }
        if cli.fec == 0 {
            if let Some(flag) = [
                cli.fec_block.map(|_| "--fec-block"),
                cli.fec_delay.map(|_| "--fec-delay"),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                bail!("{flag} needs --fec PERCENT");
            }
        }
        let fec = (cli.fec > 0).then_some(FecConfig {
            overhead_percent: cli.fec,
            block_frames: cli.fec_block.unwrap_or(DEFAULT_FEC_BLOCK),
            max_delay: cli
                .fec_delay
                .map_or(DEFAULT_FEC_MAX_DELAY, Duration::from_millis),
        });
        if let Some(f) = &fec {
            if !cli.mpx && !multipath {
                bail!("--fec needs --mpx (repair frames are mpx frames)");
            }
            // receivers keep a whole block (and its repair symbols) per stream
            let symbol = symbol_len_for(cli.max_datagram.saturating_sub(HEADER_LEN));
            let block_bytes = (f.block_frames + f.repair_count(f.block_frames)) * symbol;
            if block_bytes > FEC_STREAM_BYTES {
                bail!(
                    "--fec-block {} with --max-datagram {}: a block needs {} bytes at the receiver, more than its {} per stream; use a smaller block",
                    f.block_frames,
                    cli.max_datagram,
                    block_bytes,
                    FEC_STREAM_BYTES
                );
            }
        }
        Ok(Self {
            path: cli.path,
            servers: cli.server_addr,
            mode: cli.mode,
            tee: cli.tee,
            max_datagram: cli.max_datagram,
            framing: cli.framing,
            rate: cli.rate,
            // striping and redundancy only make sense with sequence numbers
            mpx_stream: (cli.mpx || multipath).then_some(cli.stream_id.unwrap_or(1)),
            stats_interval: (cli.stats_interval > 0)
                .then(|| Duration::from_secs(cli.stats_interval)),
            repair_buffer: cli.repair_buffer,
            linger: Duration::from_millis(cli.linger),
            flow: cli.flow_control.then(|| FlowConfig {
                max_lag: cli.max_lag,
                ..FlowConfig::default()
            }),
            fec,
            socket: cli.common.socket_options(),
        })
    }
}

fn parse_fec_block(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=FEC_MAX_BLOCK).contains(&n) => Ok(n),
        _ => Err(format!("expected 1..={FEC_MAX_BLOCK} frames, got '{s}'")),
    }
}

enum Input {
    Stdin,
    File(File),
}

impl Input {
    fn fd(&self) -> RawFd {
        match self {
            Self::Stdin => io::stdin().as_raw_fd(),
            Self::File(f) => f.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Stdin => io::stdin().lock().read(buf),
            Self::File(f) => f.read(buf),
        }
    }
}

/// What a finished run did
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Bytes read from the input
    pub bytes_read: u64,
    /// Datagrams produced (each sent to every destination)
    pub datagrams: u64,
    /// Lines longer than the datagram limit that had to be split
    pub split_lines: u64,
    /// Failed sends over all destinations
    pub send_errors: u64,
    /// Per-destination counters, one entry per destination
    pub destinations: String,
    /// mpx session id, if framing was on
    pub session: Option<u64>,
    /// mpx sender counters (repairs included), if framing was on
    pub mpx: Option<SenderStats>,
    /// Flow-control counters, if it was on
    pub flow: Option<FlowStats>,
    /// Time spent held back by receivers' windows
    pub flow_wait: Duration,
    /// FEC counters, if FEC was on
    pub fec: Option<FecEncoderStats>,
    /// Wall time of the run
    pub elapsed: Duration,
    /// True if the run ended on a shutdown request rather than EOF
    pub interrupted: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read {} in {:.2}s ({}), {} datagrams{}{}, {} lines split, {} send errors{}{}",
            if self.interrupted {
                "interrupted"
            } else {
                "done"
            },
            human_bytes(self.bytes_read),
            self.elapsed.as_secs_f64(),
            human_rate(self.bytes_read, self.elapsed),
            self.datagrams,
            match (self.session, self.mpx) {
                (Some(s), Some(m)) => format!(
                    " (mpx session {s:016x}; {} NACKs, {} frames re-sent, {} unrecoverable{})",
                    m.nacks,
                    m.retransmitted,
                    m.unrecoverable,
                    self.flow
                        .map(|fl| format!(
                            "; flow control: {} windows, held back {:.2}s, {} receivers timed out, {} cut off",
                            fl.windows,
                            self.flow_wait.as_secs_f64(),
                            fl.timed_out,
                            fl.cut
                        ))
                        .unwrap_or_default()
                ),
                (Some(s), None) => format!(" (mpx session {s:016x})"),
                _ => String::new(),
            },
            match (self.fec, self.mpx) {
                (Some(f), Some(m)) => format!(
                    " (FEC: {} blocks, {} repair frames, {:.1} % of {} data frames)",
                    f.blocks,
                    f.repair_frames,
                    100.0 * f.repair_frames as f64 / m.frames.max(1) as f64,
                    m.frames
                ),
                _ => String::new(),
            },
            self.split_lines,
            self.send_errors,
            if self.destinations.is_empty() {
                ""
            } else {
                "; "
            },
            self.destinations
        )
    }
}

/// Answer the NACKs and take in the windows that arrived; true if there
/// was a NACK
fn serve_control(
    tx: &mut Tx,
    encoder: &mut Encoder,
    flow: &mut Option<FlowControl>,
    session: u64,
    buf: &mut [u8],
    max_payload: usize,
) -> bool {
    let now = Instant::now();
    let mut nacked = false;
    for c in tx.take_control(session, buf) {
        match c.frame_type {
            FrameType::Nack => {
                nacked = true;
                encoder.handle_nack(now, &c.payload, |d| tx.emit(d));
            }
            FrameType::Window => {
                if let Some(fc) = flow.as_mut() {
                    fc.on_window(now, c.from, c.seq, &c.payload, max_payload);
                }
            }
            _ => {}
        }
    }
    if let Some(fc) = flow.as_mut() {
        while let Some(ev) = fc.poll_event() {
            match ev {
                FlowEvent::Joined(a) => {
                    tracing::info!(receiver = %a, "flow control: receiver joined")
                }
                FlowEvent::TimedOut(a) => tracing::warn!(
                    receiver = %a,
                    "flow control: receiver silent for 2 s, no longer waited for"
                ),
                FlowEvent::Cut { addr, lag } => tracing::warn!(
                    receiver = %addr,
                    lag,
                    "flow control: receiver lags more than --max-lag frames, cut off"
                ),
            }
        }
    }
    nacked
}

/// A receiver's NACK or WINDOW frame for our session
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) from: SocketAddr,
    pub(crate) frame_type: FrameType,
    pub(crate) seq: u32,
    pub(crate) payload: Vec<u8>,
}

impl Control {
    /// The frame `r` (payload `p`) from `from`, if it is a NACK or WINDOW
    /// frame of `session`
    pub(crate) fn from_frame(from: SocketAddr, r: &Repr, p: &[u8], session: u64) -> Option<Self> {
        (matches!(r.frame_type, FrameType::Nack | FrameType::Window) && r.session == session).then(
            || Self {
                from,
                frame_type: r.frame_type,
                seq: r.seq,
                payload: p.to_vec(),
            },
        )
    }
}

/// Where datagrams go
enum Out {
    /// Every destination gets every datagram
    Fanout(Option<Fanout>),
    /// Paths chosen per frame by the scheduler
    Multi(Box<Multipath>),
}

impl Out {
    fn summary(&self) -> String {
        match self {
            Self::Fanout(Some(f)) => f.summary(),
            Self::Fanout(None) => String::new(),
            Self::Multi(m) => m.summary(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::Fanout(_) => None,
            Self::Multi(m) => m.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant, encoder: &mut Encoder) {
        if let (Self::Multi(m), Encoder::Mpx(sender)) = (self, encoder) {
            m.handle_timeout(now, sender);
        }
    }
}

/// Credit a pacer may bank: 4 datagrams, or 1 ms of the rate if more. A
/// sleep overshoots by tens of microseconds; with a bucket of only 4
/// datagrams the credit earned meanwhile was capped away, and the client
/// reached 58% of a 1500mbit --rate (872 Mbit/s, 128 MiB, loopback)
fn pacer_burst(rate: Rate, max_datagram: usize) -> usize {
    let per_ms = usize::try_from(rate.bytes_per_sec() / 1000).unwrap_or(usize::MAX);
    (4 * max_datagram).max(per_ms)
}

/// Pacing waits shorter than this are not slept but carried as debt by the
/// pacer, so sleep granularity does not cap the rate
pub(crate) const MIN_SLEEP: Duration = Duration::from_micros(250);

/// Datagrams handed to the kernel per system call when input is faster
/// than the socket
const BATCH: usize = 64;

/// The sending side of a run: destinations, pacing, batching, counters
struct Tx {
    out: Out,
    pacer: Option<Pacer>,
    batch: DatagramBatch,
    datagrams: u64,
    /// Pacing sleeps end early on a shutdown request
    shutdown: Shutdown,
}

impl Tx {
    /// NACK and WINDOW frames for `session` that arrived on our sockets
    fn take_control(&mut self, session: u64, buf: &mut [u8]) -> Vec<Control> {
        match &mut self.out {
            Out::Fanout(Some(f)) => {
                let mut got = Vec::new();
                while got.len() < MAX_CONTROL {
                    let Some((n, from)) = f.recv_control(buf) else {
                        break;
                    };
                    if let Datagram::Mpx(r, p) = classify(&buf[..n]) {
                        got.extend(Control::from_frame(from, &r, p, session));
                    }
                }
                got
            }
            Out::Fanout(None) => Vec::new(),
            Out::Multi(m) => {
                m.poll_feedback();
                m.take_control()
            }
        }
    }

    /// Queue one datagram; sends when the batch is full or pacing says wait
    fn emit(&mut self, d: &[u8]) {
        self.datagrams += 1;
        if let Out::Multi(m) = &mut self.out {
            m.send(d);
            return;
        }
        if let Some(p) = self.pacer.as_mut() {
            let wait = p.delay(Instant::now(), d.len());
            // once shutdown is requested, what was already read goes out
            // unpaced (reads are capped to ~50 ms of the rate, see run)
            if wait >= MIN_SLEEP && !self.shutdown.is_set() {
                self.flush();
                mproxy_common::io::sleep_unless(&self.shutdown, wait);
            }
        }
        self.batch.push(d);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Send what is queued (called after each input read, so a line read
    /// from stdin goes out at once)
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Out::Fanout(Some(f)) = &self.out {
            f.send_many(&self.batch.frames());
        }
        self.batch.clear();
    }
}

/// A client with its input open and its sockets bound
pub struct Client {
    config: Config,
    input: Input,
    fanout: Option<Fanout>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish()
    }
}

impl Client {
    /// Open the input, resolve the destinations and bind the sockets
    ///
    /// # Errors
    /// A missing or unreadable input, an unresolvable destination, or a
    /// socket that cannot be set up; each names the culprit.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let input = if config.path == "-" {
            Input::Stdin
        } else {
            let path = PathBuf::from(&config.path);
            let file = File::open(&path).with_context(|| format!("--path {}", path.display()))?;
            if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                bail!("--path {}: is a directory", path.display());
            }
            Input::File(file)
        };
        let fanout = if config.servers.is_empty() || config.mode != Mode::Fanout {
            None
        } else {
            let endpoints: Vec<Endpoint> =
                config.servers.iter().map(|p| p.endpoint.clone()).collect();
            Some(Fanout::new(&endpoints, &config.socket).context("--server-addr")?)
        };
        if config.mode != Mode::Fanout {
            // resolve now so a bad path is a start-up error
            for p in &config.servers {
                p.endpoint
                    .resolve()
                    .with_context(|| format!("--server-addr {p}"))?;
            }
        }
        Ok(Self {
            config,
            input,
            fanout,
        })
    }

    /// Stream the input until EOF (or shutdown), then flush and summarize
    ///
    /// # Errors
    /// A read error on the input. Send errors are counted, not returned.
    pub fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        let start = Instant::now();
        let mut summary = Summary::default();
        let session = self.config.mpx_stream.map(|id| (new_session_id(), id));
        summary.session = session.map(|(s, _)| s);
        if let Some((s, id)) = session {
            tracing::info!(session = format_args!("{s:016x}"), stream = id, mode = ?self.config.mode, "mpx framing on");
        }
        let mut encoder = Encoder::new(
            session,
            self.config.framing,
            self.config.max_datagram,
            HEARTBEAT_INTERVAL,
        );
        encoder.enable_repair(self.config.repair_buffer);
        encoder.enable_fec(self.config.fec, |_| {});
        if let (Some(f), Some(_)) = (self.config.fec, session) {
            tracing::info!(
                overhead_percent = f.overhead_percent,
                block_frames = f.block_frames,
                "FEC on"
            );
        }
        let repairing = session.is_some() && self.config.repair_buffer > 0;
        let mut control = vec![0u8; 2048];
        let max_payload = self.config.max_datagram.saturating_sub(HEADER_LEN).max(1);
        let mut flow = match (&self.config.flow, encoder.next_seq()) {
            (Some(cfg), Some(first)) => Some(FlowControl::new(cfg.clone(), first)),
            _ => None,
        };
        let mut flow_wait = Duration::ZERO;
        let mut last_poke = start;
        let out = match (self.config.mode, session) {
            (Mode::Fanout, _) | (_, None) => Out::Fanout(self.fanout.take()),
            (mode, Some((s, _))) => {
                let m = Multipath::new(
                    mode,
                    &self.config.servers,
                    &self.config.socket,
                    self.config.rate,
                    s,
                    start,
                    shutdown.clone(),
                )?;
                if let Encoder::Mpx(sender) = &mut encoder {
                    sender.set_epoch(m.epoch_for(start));
                }
                Out::Multi(Box::new(m))
            }
        };
        // fanout paces the whole stream; stripe paces per path (scheduler)
        let pacer = match out {
            Out::Fanout(_) => self
                .config
                .rate
                .map(|r| Pacer::new(r, pacer_burst(r, self.config.max_datagram))),
            Out::Multi(_) => None,
        };
        let mut tx = Tx {
            out,
            pacer,
            batch: DatagramBatch::default(),
            datagrams: 0,
            shutdown: shutdown.clone(),
        };
        let tee = Tee::new(self.config.tee);
        let mut buf = vec![0u8; 64 * 1024];
        let fd = self.input.fd();
        let mut bytes_read = 0u64;
        let mut interrupted = false;
        let mut next_stats = self.config.stats_interval.map(|d| start + d);
        loop {
            if shutdown.is_set() {
                interrupted = true;
                break;
            }
            if let (Some(at), Some(every)) = (next_stats, self.config.stats_interval) {
                if Instant::now() >= at {
                    tracing::info!(
                        "{:.1}s, {}: {}",
                        start.elapsed().as_secs_f64(),
                        human_bytes(bytes_read),
                        tx.out.summary()
                    );
                    next_stats = Some(at + every);
                }
            }
            if let (Some(fc), Some(next), Some((s, _))) =
                (flow.as_mut(), encoder.next_seq(), session)
            {
                if !fc.allows(Instant::now(), next) {
                    // held back by the slowest receiver's window
                    let t = Instant::now();
                    tx.flush();
                    std::thread::sleep(FLOW_POLL);
                    serve_control(
                        &mut tx,
                        &mut encoder,
                        &mut flow,
                        s,
                        &mut control,
                        max_payload,
                    );
                    let now = Instant::now();
                    if now.saturating_duration_since(last_poke) >= FLOW_POKE {
                        // a lost WINDOW frame must not stall us: receivers
                        // answer a heartbeat with their window
                        encoder.probe(now, |d| tx.emit(d));
                        last_poke = now;
                    }
                    if encoder.poll_timeout().is_some_and(|at| at <= now) {
                        encoder.handle_timeout(now, |d| tx.emit(d));
                    }
                    tx.out.handle_timeout(now, &mut encoder);
                    tx.flush();
                    flow_wait += t.elapsed();
                    continue;
                }
            }
            let next_timer = [encoder.poll_timeout(), tx.out.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let wait = next_timer
                .map_or(POLL_TICK, |t| t.saturating_duration_since(Instant::now()))
                .min(POLL_TICK);
            let readable = wait_readable(fd, wait)
                .with_context(|| format!("waiting for --path {}", self.config.path))?;
            if !readable {
                let now = Instant::now();
                encoder.handle_timeout(now, |d| tx.emit(d));
                tx.out.handle_timeout(now, &mut encoder);
                tx.flush();
                continue;
            }
            // With --rate, read at most ~50 ms of it at a time, so
            // signals and --stats-interval are seen promptly during a slow
            // replay; and no more than the flow-control window allows.
            let paced_cap = self.config.rate.map_or(buf.len(), |r| {
                usize::try_from(r.bytes_per_sec() / 20)
                    .unwrap_or(usize::MAX)
                    .clamp(self.config.max_datagram.min(buf.len()), buf.len())
            });
            let cap = match (flow.as_mut(), encoder.next_seq()) {
                (Some(fc), Some(next)) => fc.limit(Instant::now()).map_or(buf.len(), |limit| {
                    (limit.wrapping_sub(next) as usize)
                        .saturating_mul(max_payload)
                        .clamp(max_payload.min(buf.len()), buf.len())
                }),
                _ => buf.len(),
            }
            .min(paced_cap);
            let n = match self.input.read(&mut buf[..cap]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading --path {}", self.config.path))
                }
            };
            bytes_read += n as u64;
            tee.write(&buf[..n]);
            encoder.push(Instant::now(), &buf[..n], |d| tx.emit(d));
            if let Some((s, _)) = session {
                serve_control(
                    &mut tx,
                    &mut encoder,
                    &mut flow,
                    s,
                    &mut control,
                    max_payload,
                );
            }
            if next_timer.is_some_and(|t| t <= Instant::now()) {
                let now = Instant::now();
                encoder.handle_timeout(now, |d| tx.emit(d));
                tx.out.handle_timeout(now, &mut encoder);
            }
            tx.flush();
        }
        encoder.finish(Instant::now(), |d| tx.emit(d));
        tx.flush();
        // the transfer time: up to the last data frame, not the closing heartbeats
        summary.elapsed = start.elapsed();
        // mpx: the closing heartbeats (a few tens of milliseconds), then
        // repairs until receivers stop asking (bounded by --linger)
        let end = Instant::now();
        let mut last_nack = end;
        loop {
            let now = Instant::now();
            if let Some((s, _)) = session {
                if serve_control(
                    &mut tx,
                    &mut encoder,
                    &mut flow,
                    s,
                    &mut control,
                    max_payload,
                ) {
                    last_nack = now;
                }
            }
            encoder.handle_timeout(now, |d| tx.emit(d));
            tx.flush();
            let heartbeats_done = encoder.poll_timeout().is_none();
            let quiet = !repairing || now.saturating_duration_since(last_nack) >= LINGER_QUIET;
            if (heartbeats_done && quiet)
                || now.saturating_duration_since(end) >= self.config.linger
                || shutdown.is_set()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Encoder::Mpx(sender) = &encoder {
            summary.mpx = Some(sender.stats());
        }
        summary.flow = flow.as_ref().map(FlowControl::stats);
        summary.flow_wait = flow_wait;
        summary.fec = encoder.fec_stats();
        summary.datagrams = tx.datagrams;
        summary.bytes_read = bytes_read;
        summary.interrupted = interrupted;
        summary.split_lines = encoder.split_lines();
        match &mut tx.out {
            Out::Fanout(Some(f)) => {
                summary.send_errors = f.total_errors();
                summary.destinations = f.summary();
            }
            Out::Fanout(None) => {}
            Out::Multi(m) => {
                m.poll_feedback();
                summary.send_errors = m.send_errors();
                summary.destinations = m.summary();
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn test_pacer_burst_is_four_datagrams_or_a_millisecond() {
        let slow: Rate = "2kB".parse().unwrap();
        assert_eq!(pacer_burst(slow, 1472), 4 * 1472);
        let fast: Rate = "1500mbit".parse().unwrap();
        assert_eq!(pacer_burst(fast, 1472), 187_500);
    }
}
