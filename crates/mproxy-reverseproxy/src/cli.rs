//! Command line of `mproxy-reverseproxy`

use clap::Parser;
use mproxy_common::cli::{parse_max_datagram, CommonArgs};
use mproxy_common::pack::Framing;
use mproxy_common::Endpoint;
use std::path::PathBuf;

use crate::config::{ClientQueue, ListenAddr, SlowClient};
use crate::tls::DEFAULT_HANDSHAKE_TIMEOUT_SECS;

/// Default group: an administratively scoped IPv4 group (RFC 2365)
///
/// `239.0.0.0/8` is the "organization-local" range meant for private use,
/// and with the default TTL of 1 the traffic stays on the local link. The
/// original tool defaulted to `[ff02::1]:9918`, the IPv6 *all-nodes*
/// group: every host on the link must accept and process datagrams sent
/// there, so a busy feed would have loaded every machine on the segment.
pub const DEFAULT_GROUP: &str = "239.255.77.18:9918";

/// Default datagram payload limit: fits a 1500-byte Ethernet MTU over IPv4
/// without IP fragmentation (1500 - 20 - 8)
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// Default per-client queue: 8 MiB (about the 4096 datagrams of 1472
/// bytes of earlier versions; held once per TCP output, not per client)
pub const DEFAULT_CLIENT_QUEUE: ClientQueue = ClientQueue::Bytes(8 << 20);

/// Default connection limit per TCP listener
pub const DEFAULT_MAX_CLIENTS: usize = 256;

/// Default `--stall-timeout`, in seconds
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 60;

/// Which datagrams of the group the outputs accept (`--accept`)
///
/// Applies where payloads are delivered: TCP outputs, and UDP outputs with
/// `--udp-output-strip`. A plain UDP output forwards every datagram as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Accept {
    /// Raw payloads and mpx frames, told apart by the mpx magic; frames are
    /// reassembled per stream and their headers stripped
    #[default]
    Auto,
    /// Everything is a raw payload (for binary raw feeds, which start with
    /// the mpx magic once in 65536 datagrams)
    Raw,
    /// Only mpx frames; raw datagrams are dropped and counted
    Mpx,
}

const EXAMPLES: &str = "\
EXAMPLES:
  # TCP feed in, any number of TCP readers out (same host: --loop stays on)
  mproxy-reverseproxy --tcp-listen-addr 0.0.0.0:9000 --tcp-output-addr 0.0.0.0:9100

  # UDP in on two ports, out to a TCP listener and a UDP collector
  mproxy-reverseproxy --udp-listen-addr 0.0.0.0:9920 --udp-listen-addr 0.0.0.0:9921 \\
      --tcp-output-addr 0.0.0.0:9100 --udp-output-addr 10.0.0.5:9930

  # two hosts: inputs on A, outputs on B, joined by the group on eth0
  A$ mproxy-reverseproxy --iface eth0 --tcp-listen-addr 0.0.0.0:9000
  B$ mproxy-reverseproxy --iface eth0 --tcp-output-addr 0.0.0.0:9100

  # mpx: every input connection is its own stream; TCP readers get each
  # stream's bytes in order, a downstream mproxy-server one file per stream
  mproxy-reverseproxy --mpx --framing lines --tcp-listen-addr 0.0.0.0:9000 \\
      --tcp-output-addr 0.0.0.0:9100 --udp-output-addr 10.0.0.5:9930
  mproxy-server --listen-addr 10.0.0.5:9930 --path 'out/{session}-{stream}.log'

  # TLS: readers must present a certificate from clients-ca.pem; a reader
  # that falls behind is disconnected instead of getting gaps
  mproxy-reverseproxy --udp-listen-addr 0.0.0.0:9920 --tcp-output-addr tls://0.0.0.0:9443 \\
      --tls-cert server.pem --tls-key server.key --tls-client-ca clients-ca.pem \\
      --slow-client disconnect --client-queue 1MiB
  openssl s_client -connect host:9443 -cert reader.pem -key reader.key -quiet

Inputs send to the group with multicast loopback on (--loop on, the
default), so outputs on the same host receive them; --loop off only makes
sense when the outputs run on other hosts. Logs go to stderr; stdout only
carries data (--tee).";

/// Command line of `mproxy-reverseproxy`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "mproxy-reverseproxy",
    version,
    about = "Feed TCP and UDP inputs into a multicast group, and fan the group out to TCP clients and UDP outputs",
    long_about = "Feed TCP and UDP inputs into a multicast group, and fan the group out to \
                  TCP clients and UDP outputs. One thread (one event loop) per listener, \
                  whatever the number of clients; every address flag may be repeated.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// UDP address to receive on (unicast, or a multicast group to join);
    /// every datagram is sent to the group. Repeatable
    #[arg(long = "udp-listen-addr", visible_aliases = ["listen", "listen-addr"], value_name = "HOST:PORT")]
    pub udp_listen_addr: Vec<Endpoint>,

    /// TCP address to accept connections on; each connection's bytes are
    /// cut into datagrams (see --framing, --max-datagram) and sent to the
    /// group. Written tls://HOST:PORT, the listener speaks TLS (see
    /// --tls-cert). Repeatable
    #[arg(long = "tcp-listen-addr", value_name = "[tls://]HOST:PORT")]
    pub tcp_listen_addr: Vec<ListenAddr>,

    /// The multicast group that joins inputs to outputs. The default is an
    /// administratively scoped IPv4 group (RFC 2365), not the original's
    /// `[ff02::1]:9918`: that is the IPv6 all-nodes group, which every host
    /// on the link must accept. IPv6 groups such as `[ff15::77:18]:9918` work
    /// too
    #[arg(long = "multicast-addr", value_name = "GROUP:PORT", default_value = DEFAULT_GROUP)]
    pub multicast_addr: Endpoint,

    /// TCP address to accept readers on; every connected client receives
    /// the payloads of the group's datagrams, concatenated (mpx frames are
    /// reassembled in order per stream and their headers stripped, see
    /// --accept). Written tls://HOST:PORT, the listener speaks TLS (see
    /// --tls-cert). One event loop serves every client, non-blocking, so
    /// a slow client or handshake never holds up the group or the other
    /// clients. Repeatable
    #[arg(long = "tcp-output-addr", value_name = "[tls://]HOST:PORT")]
    pub tcp_output_addr: Vec<ListenAddr>,

    /// UDP address to forward every datagram of the group to, as is (mpx
    /// frames included, so a downstream mproxy-server can reassemble them).
    /// Repeatable
    #[arg(
        long = "udp-output-addr",
        visible_alias = "to",
        value_name = "HOST:PORT"
    )]
    pub udp_output_addr: Vec<Endpoint>,

    /// Send the --udp-output-addr destinations the reassembled payloads
    /// instead of the frames: one datagram per in-order mpx payload, raw
    /// datagrams as they are (see --accept)
    #[arg(long)]
    pub udp_output_strip: bool,

    /// How TCP input is cut into datagrams: `bytes` (chunks of up to
    /// --max-datagram, cut anywhere) or `lines` (whole lines per datagram)
    #[arg(long, value_name = "lines|bytes", default_value = "bytes")]
    pub framing: Framing,

    /// Largest datagram payload made from TCP input (UDP input is relayed
    /// as received). With --mpx the limit includes the 24-byte frame header
    /// and also applies to raw UDP input: a raw datagram larger than
    /// --max-datagram minus 24 is split over several frames (counted)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_DATAGRAM,
          value_parser = parse_max_datagram)]
    pub max_datagram: usize,

    /// Frame the inputs with mpx: every --tcp-listen-addr connection, and
    /// the raw datagrams of every --udp-listen-addr, becomes its own stream
    /// of this process's session (sequence numbers, checksums, heartbeats
    /// while idle, FIN at the end). UDP datagrams that already are mpx
    /// frames are forwarded untouched. Default: raw payloads, compatible
    /// with mproxy 0.1.x
    #[arg(long)]
    pub mpx: bool,

    /// Which datagrams the TCP outputs (and UDP outputs with
    /// --udp-output-strip) accept: 'auto' takes raw payloads and mpx frames
    /// (told apart by the mpx magic), 'raw' treats everything as raw (for
    /// binary raw feeds), 'mpx' drops raw datagrams (counted)
    #[arg(long, value_name = "auto|raw|mpx", default_value = "auto")]
    pub accept: Accept,

    /// mpx: most frames a stream may hold while waiting for a missing one
    #[arg(long, value_name = "FRAMES", default_value_t = 1024)]
    pub reorder_window: usize,

    /// mpx: how long to wait for a missing frame before counting it lost
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub reorder_timeout: u64,

    /// mpx: most streams each output tracks at once
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_streams: usize,

    /// How far a TCP output client may fall behind, in bytes (4MiB,
    /// 512KiB); a bare number N is the old datagram count, read as N
    /// datagrams of --max-datagram bytes. Clients share one copy of the
    /// payloads, so a TCP output holds at most one queue's worth however
    /// many clients it has. When a client is further behind, --slow-client
    /// decides, and what it missed is counted [default: 8MiB]
    #[arg(long, value_name = "SIZE|N", default_value_t = DEFAULT_CLIENT_QUEUE,
          hide_default_value = true)]
    pub client_queue: ClientQueue,

    /// What happens to a TCP output client whose queue (--client-queue) is
    /// full: 'drop' drops datagrams for it only (it stays connected, with a
    /// gap), 'disconnect' closes its connection at once. Either way the
    /// group and the other clients never wait for it, and what it missed is
    /// counted per client, logged when it leaves and in the summary
    #[arg(long, value_name = "drop|disconnect", default_value = "drop")]
    pub slow_client: SlowClient,

    /// PEM certificate chain of the tls:// listeners (server certificate
    /// first)
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// PEM file of CA certificates: the tls:// listeners then require
    /// every client to present a certificate issued by one of them (mutual
    /// TLS); clients without one are refused
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a client of a tls:// listener may take to finish its TLS
    /// handshake before it is disconnected (counted)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub tls_handshake_timeout: u64,

    /// Connections per TCP listener (input or output). When all are taken
    /// a newcomer evicts the connection that has made the least progress
    /// (a TLS handshake, a client that takes no data or never took any, a
    /// half-closed client; an input that never sent a byte); if every one
    /// is taking (or sending) data, the newcomer is closed. Counted
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS,
          value_parser = parse_count)]
    pub max_clients: usize,

    /// TLS handshakes running at once per tls:// listener; a newcomer
    /// beyond them evicts the oldest handshake (counted) [default: a
    /// quarter of --max-clients, 8 to 64]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_handshakes: Option<usize>,

    /// Seconds a TCP output client may take no data at all while data
    /// waits for it before it is closed (counted)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STALL_TIMEOUT_SECS)]
    pub stall_timeout: u64,

    /// Copy everything the inputs send to the group to stdout (with --mpx:
    /// the payloads of the data frames, without headers)
    #[arg(short, long)]
    pub tee: bool,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
}

/// Parse a count from 1 to 1,048,576
fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1 << 20).contains(n))
        .ok_or_else(|| format!("invalid count '{s}' (expected 1 to 1048576)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_defaults() {
        let cli = Cli::try_parse_from(["x", "--tcp-output-addr", "127.0.0.1:9100"]).unwrap();
        assert_eq!(cli.multicast_addr.to_string(), DEFAULT_GROUP);
        assert_eq!(cli.framing, Framing::Bytes);
        assert_eq!(cli.max_datagram, 1472);
        assert_eq!(cli.client_queue, ClientQueue::Bytes(8 << 20));
        assert_eq!(cli.max_handshakes, None);
        assert_eq!(cli.stall_timeout, 60);
        assert_eq!(cli.max_clients, 256);
        assert_eq!(cli.slow_client, SlowClient::Drop);
        assert_eq!(cli.tls_handshake_timeout, 10);
        assert!(cli.tls_cert.is_none() && cli.tls_key.is_none() && cli.tls_client_ca.is_none());
        assert!(cli.common.multicast_loop);
        assert!(!cli.tee);
        assert!(!cli.mpx && !cli.udp_output_strip);
        assert_eq!(cli.accept, Accept::Auto);
        assert_eq!(
            (cli.reorder_window, cli.reorder_timeout, cli.max_streams),
            (1024, 200, 1024)
        );
    }

    #[test]
    fn test_client_queue_forms() {
        let q = |s: &str| {
            Cli::try_parse_from(["x", "--client-queue", s])
                .unwrap()
                .client_queue
        };
        assert_eq!(q("4MiB"), ClientQueue::Bytes(4 << 20));
        assert_eq!(q("64k"), ClientQueue::Bytes(64 << 10));
        assert_eq!(q("100B"), ClientQueue::Bytes(100));
        assert_eq!(q("1024"), ClientQueue::Datagrams(1024));
        assert_eq!(q("1024").bytes(1472), 1024 * 1472);
        assert_eq!(q("4MiB").bytes(60_000), 4 << 20);
        assert_eq!(q("1024").to_string(), "1024");
        assert_eq!(q("1k").to_string(), "1024B");
    }

    #[test]
    fn test_cli_repeatable() {
        let cli = Cli::try_parse_from([
            "x",
            "--udp-listen-addr",
            "127.0.0.1:1",
            "--udp-listen-addr",
            "127.0.0.1:2",
            "--tcp-listen-addr",
            "127.0.0.1:3",
            "--tcp-listen-addr",
            "[::1]:4",
            "--tcp-output-addr",
            "127.0.0.1:5",
            "--tcp-output-addr",
            "127.0.0.1:6",
            "--udp-output-addr",
            "127.0.0.1:7",
            "--udp-output-addr",
            "127.0.0.1:8",
            "--framing",
            "lines",
            "-t",
        ])
        .unwrap();
        assert_eq!(cli.udp_listen_addr.len(), 2);
        assert_eq!(cli.tcp_listen_addr.len(), 2);
        assert_eq!(cli.tcp_output_addr.len(), 2);
        assert_eq!(cli.udp_output_addr.len(), 2);
        assert_eq!(cli.framing, Framing::Lines);
        assert!(cli.tee);
    }

    #[test]
    fn test_cli_rejects() {
        for args in [
            &["x", "--tcp-listen-addr", "nonsense"][..],
            &["x", "--max-datagram", "0"],
            &["x", "--max-datagram", "70000"],
            &["x", "--client-queue", "0"],
            &["x", "--client-queue", "2GiB"],
            &["x", "--client-queue", "4 apples"],
            &["x", "--max-handshakes", "0"],
            &["x", "--max-clients", "x"],
            &["x", "--framing", "words"],
            &["x", "--accept", "mixed"],
            &["x", "--reorder-window", "-1"],
            &["x", "--slow-client", "block"],
            &["x", "--tcp-output-addr", "ssl://127.0.0.1:1"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
