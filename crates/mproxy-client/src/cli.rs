//! The command line and the validated settings of a client

use std::time::Duration;

use clap::Parser;
use mproxy_common::cli::{parse_max_datagram, CommonArgs};
use mproxy_common::mpx::auth::{Keyring, Suite};
use mproxy_common::mpx::{
    Confirm, FecConfig, FlowConfig, Mode, DEFAULT_FEC_BLOCK, DEFAULT_FEC_MAX_DELAY,
    FEC_STREAM_BYTES,
};
use mproxy_common::pack::Framing;
use mproxy_common::rate::Rate;
use mproxy_common::wire::{symbol_len_for, FEC_MAX_BLOCK, HEADER_LEN};
use mproxy_common::{PathSpec, SocketOptions};

use crate::Error;

/// Default datagram payload limit: fits a 1500-byte Ethernet MTU over IPv4
/// without IP fragmentation (1500 - 20 - 8)
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Largest datagram `--max-datagram auto` picks: big datagrams cost fewer
/// system calls per byte, but a lost one costs its whole size to repair.
/// On loopback (a 64 KiB MTU) 32 KiB moved 3.6 Gbit/s and 60,000 bytes
/// 3.7-3.9 in one noisy sweep (1472: 3.0-3.3), so the cap costs little
pub const AUTO_MAX_DATAGRAM: usize = 32 * 1024;

/// `--max-datagram`: a size, or the path's MTU
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDatagram {
    /// This many bytes of UDP payload
    Bytes(usize),
    /// The smallest path MTU payload over the destinations, at most
    /// [`AUTO_MAX_DATAGRAM`]
    Auto,
}

fn parse_max_datagram_arg(s: &str) -> Result<MaxDatagram, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(MaxDatagram::Auto);
    }
    parse_max_datagram(s).map(MaxDatagram::Bytes)
}

/// Return a configuration error from the enclosing function
macro_rules! bad {
    ($($t:tt)*) => {
        return Err(Error::Config(format!($($t)*)))
    };
}

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
    #[arg(
        long,
        visible_alias = "input",
        value_name = "FILE|-",
        default_value = "-"
    )]
    pub path: String,

    /// Downstream UDP server, unicast or multicast (HOST:PORT, [V6]:PORT,
    /// [V6%IFACE]:PORT); repeatable. With --mode stripe a path may carry a
    /// weight and a rate: 'HOST:PORT|2' or 'HOST:PORT|2|50mbit'
    #[arg(
        long = "server-addr",
        visible_alias = "to",
        value_name = "HOST:PORT[|W[|RATE]]"
    )]
    pub server_addr: Vec<PathSpec>,

    /// fanout: every server gets a full copy; stripe: frames are spread
    /// over the servers (paths) by weight and reassembled by one receiver;
    /// redundant: every frame goes over every path, the receiver keeps the
    /// first copy. stripe and redundant imply --mpx
    #[arg(long, value_name = "fanout|stripe|redundant", default_value = "fanout")]
    pub mode: Mode,

    /// Copy the input to stdout
    #[arg(short, long)]
    pub tee: bool,

    /// Largest datagram payload: BYTES, or 'auto': the path MTU of each
    /// destination (the route's interface MTU less the IP and UDP headers;
    /// for a group, the interface sends go out on), at most 32 KiB, the
    /// smallest over the destinations. [default: auto with --mpx; 1472
    /// for raw payloads, which mproxy 0.1.x receivers' 8 KiB buffers take]
    #[arg(long, value_name = "BYTES|auto", value_parser = parse_max_datagram_arg)]
    pub max_datagram: Option<MaxDatagram>,

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

    /// mpx: after the end of input, wait at most this many milliseconds
    /// for the receivers to confirm the end (answering their repair
    /// requests meanwhile); the client exits as soon as they have. With no
    /// receiver answering (one-way), it waits until no repair request
    /// came for 300 ms
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub linger: u64,

    /// mpx: which receivers must confirm the end before the client exits:
    /// 'all' that were heard from, 'any' one of them, or 'none'. When
    /// the rule is not met the client exits with code 3 and names each
    /// receiver that did not confirm, with the byte it confirmed up to
    #[arg(long, value_name = "all|any|none", default_value = "all")]
    pub confirm: Confirm,

    /// mpx: a receiver silent this many seconds is given up: no longer
    /// waited for (flow control, the end), logged with the byte offset it
    /// confirmed; a stalled receiver gets its repairs until then
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub receiver_timeout: u64,

    /// mpx: pace to the slowest receiver that advertises a window (WINDOW
    /// frames); receivers silent for --receiver-timeout are no longer
    /// waited for, and with no receiver answering at all the client sends
    /// at --rate
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
    pub max_datagram: MaxDatagram,
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
    /// How receivers' windows are tracked (timeouts, lag, table size)
    pub flow: FlowConfig,
    /// Hold the stream to the slowest receiver's window
    pub flow_control: bool,
    /// Which receivers must confirm the end
    pub confirm: Confirm,
    /// mpx keys (`--key-file`) and the suite they seal with (`None`: unkeyed)
    pub keys: Option<(Keyring, Suite)>,
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
            max_datagram: MaxDatagram::Bytes(DEFAULT_MAX_DATAGRAM),
            framing: Framing::Lines,
            rate: None,
            mpx_stream: None,
            stats_interval: None,
            repair_buffer: 16 << 20,
            linger: Duration::from_secs(30),
            flow: FlowConfig {
                receiver_timeout: Duration::from_secs(10),
                ..FlowConfig::default()
            },
            flow_control: true,
            confirm: Confirm::All,
            keys: None,
            fec: None,
            socket: SocketOptions::default(),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = Error;

    fn try_from(cli: Cli) -> Result<Self, Error> {
        cli.common
            .validate()
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        if let Some(src) = cli.common.sources.first() {
            bad!(
                "--source {src} selects senders when joining a group; the client only sends \
                 (give it to the receivers: mproxy-server, or the proxy/reverseproxy inputs)"
            );
        }
        if cli.server_addr.is_empty() && !cli.tee {
            bad!("nothing to do: give at least one --server-addr (or --tee)");
        }
        if cli.path.is_empty() {
            bad!("--path must not be empty (use '-' for stdin)");
        }
        let multipath = cli.mode != Mode::Fanout;
        if multipath && cli.server_addr.is_empty() {
            bad!("--mode {:?} needs at least one --server-addr", cli.mode);
        }
        if !multipath
            && cli
                .server_addr
                .iter()
                .any(|p| p.weight != 1 || p.rate.is_some())
        {
            bad!("path weights and rates ('|W|RATE') need --mode stripe");
        }
        let framed = cli.mpx || multipath;
        let max_datagram = cli.max_datagram.unwrap_or(if framed {
            MaxDatagram::Auto
        } else {
            MaxDatagram::Bytes(DEFAULT_MAX_DATAGRAM)
        });
        if let (true, MaxDatagram::Bytes(n)) = (framed, max_datagram) {
            if n <= HEADER_LEN {
                bad!(
                    "--max-datagram {n} leaves no room for data with --mpx: the header alone is {HEADER_LEN} bytes (at least {})",
                    HEADER_LEN + 1
                );
            }
        }
        let keys = cli
            .common
            .keys()
            .map_err(|e| Error::Config(e.to_string()))?;
        if keys.is_some() && !cli.mpx && !multipath {
            bad!("--key-file needs --mpx (raw datagrams carry no authentication)");
        }
        if cli.stream_id.is_some() && !cli.mpx && !multipath {
            bad!("--stream-id needs --mpx (raw datagrams carry no stream id)");
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
                bad!("{flag} needs --fec PERCENT");
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
                bad!("--fec needs --mpx (repair frames are mpx frames)");
            }
            // receivers keep a whole block (and its repair symbols) per stream
            // auto resolves at most to AUTO_MAX_DATAGRAM: check the largest
            let largest = match max_datagram {
                MaxDatagram::Bytes(n) => n,
                MaxDatagram::Auto => AUTO_MAX_DATAGRAM,
            };
            let symbol = symbol_len_for(largest.saturating_sub(HEADER_LEN));
            let block_bytes = (f.block_frames + f.repair_count(f.block_frames)) * symbol;
            if block_bytes > FEC_STREAM_BYTES {
                bad!(
                    "--fec-block {} with --max-datagram {}: a block needs {} bytes at the receiver, more than its {} per stream; use a smaller block",
                    f.block_frames,
                    largest,
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
            max_datagram,
            framing: cli.framing,
            rate: cli.rate,
            // striping and redundancy only make sense with sequence numbers
            mpx_stream: (cli.mpx || multipath).then_some(cli.stream_id.unwrap_or(1)),
            stats_interval: (cli.stats_interval > 0)
                .then(|| Duration::from_secs(cli.stats_interval)),
            repair_buffer: cli.repair_buffer,
            linger: Duration::from_millis(cli.linger),
            flow_control: cli.flow_control,
            confirm: cli.confirm,
            keys,
            flow: FlowConfig {
                max_lag: cli.max_lag,
                receiver_timeout: Duration::from_secs(cli.receiver_timeout),
                ..FlowConfig::default()
            },
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
