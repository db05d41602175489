//! An mpx client behind mproxy-proxy: the receivers' control frames (NACK,
//! WINDOW) travel back through the proxy, so repair and flow control work
//! end to end. Each test in its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mproxy_e2e::{reached_len, run_ok, start, start_server, stop, TIMEOUT};
use mproxy_testsupport::{
    in_netns, random_file, wait_for_udp_bound, LossyRelay, RelayConfig, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The number just before `label` in `text` (its last occurrence)
fn count_before(text: &str, label: &str) -> Option<u64> {
    text.rsplit_once(label)
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
}

/// A random input file and the path the server writes to
struct Files {
    _dir: TempDir,
    input: PathBuf,
    output: PathBuf,
    len: u64,
}

fn files(size: usize, seed: u64) -> Files {
    let dir = TempDir::new();
    let input = dir.join("in");
    let output = dir.join("out");
    random_file(&input, size, seed);
    let len = std::fs::metadata(&input).unwrap().len();
    Files {
        _dir: dir,
        input,
        output,
        len,
    }
}

/// Run `mproxy-client --mpx --framing bytes` on `input` to `to` (extra
/// args appended); its summary
fn mpx_client(input: &Path, to: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--mpx",
        "--framing",
        "bytes",
        "--path",
        s(input),
        "--server-addr",
        to,
    ];
    args.extend_from_slice(extra);
    let client = run_ok("mproxy-client", &args);
    String::from_utf8_lossy(&client.stderr).into_owned()
}

/// Wait for the whole output, stop server and proxy: whether the output is
/// complete and byte-exact, the server's and the proxy's logs
fn finish(
    f: &Files,
    server: mproxy_testsupport::ChildGuard,
    proxy: mproxy_testsupport::ChildGuard,
) -> (bool, String, String) {
    let complete = reached_len(&f.output, f.len, Duration::from_secs(30));
    let log = stop(server);
    let px = stop(proxy);
    let exact = complete && std::fs::read(&f.output).unwrap() == std::fs::read(&f.input).unwrap();
    (exact, log, px)
}

/// Start a proxy from `listen` to `downstream` (extra `args` appended) and
/// wait until its listen port is bound
fn start_proxy(listen: &str, downstream: &str, args: &[&str]) -> mproxy_testsupport::ChildGuard {
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let mut all = vec![
        "--udp-listen-addr",
        listen,
        "--udp-downstream-addr",
        downstream,
    ];
    all.extend_from_slice(args);
    let proxy = start("mproxy-proxy", &all);
    wait_for_udp_bound(port, TIMEOUT);
    proxy
}

/// client -> proxy -> seeded relay losing 10% (and 5% of the NACKs on the
/// way back) -> server with NACKs on: the server's NACKs reach the client
/// through the proxy, its re-sends fill every gap, and the file arrives
/// byte-exact with repaired frames counted
#[test]
fn nacks_through_the_proxy_repair_every_loss() {
    in_netns(|_| {
        let f = files(4 << 20, 81);
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9512",
                "--accept",
                "mpx",
                "--nack",
                "on",
                "--path",
                s(&f.output),
            ],
            &[9512],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9511".parse().unwrap(),
            "127.0.0.1:9512".parse().unwrap(),
            RelayConfig {
                seed: 81,
                drop: 0.10,
                return_path: true,
                return_drop: 0.05,
                ..RelayConfig::default()
            },
        );
        let proxy = start_proxy("127.0.0.1:9510", "127.0.0.1:9511", &[]);
        let summary = mpx_client(&f.input, "127.0.0.1:9510", &["--rate", "50mbit"]);
        let rec = relay.stop();
        let (exact, log, px) = finish(&f, server, proxy);
        eprintln!(
            "relay: dropped {} of {}, {} replies returned, {} dropped\nclient: {summary}\nserver: {}\nproxy: {}",
            rec.dropped,
            rec.received,
            rec.returned,
            rec.returns_dropped,
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(exact, "output incomplete or different: {log}");
        assert!(rec.dropped > 0 && rec.returned > 0, "{rec:?}");
        assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        let repaired = count_before(log.lines().last().unwrap_or(""), " repaired");
        assert!(repaired.is_some_and(|n| n > 0), "nothing repaired: {log}");
        assert!(
            count_before(&summary, " NACKs").is_some_and(|n| n > 0),
            "{summary}"
        );
        assert!(count_before(&px, " NACKs").is_some_and(|n| n > 0), "{px}");
        assert!(
            px.contains(" 0 not control, 0 over credit, 0 send errors"),
            "{px}"
        );
    });
}

/// An unpaced client behind the proxy hears the server's windows: its
/// summary counts them and no receiver timed out (without the relay it
/// would take the link as one-way after 200 ms and blast)
#[test]
fn windows_through_the_proxy_reach_the_client() {
    in_netns(|_| {
        let f = files(16 << 20, 82);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9521", "--path", s(&f.output)],
            &[9521],
        );
        let proxy = start_proxy("127.0.0.1:9520", "127.0.0.1:9521", &[]);
        let summary = mpx_client(&f.input, "127.0.0.1:9520", &[]);
        let (exact, log, px) = finish(&f, server, proxy);
        eprintln!(
            "client: {summary}\nserver: {}\nproxy: {}",
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(exact, "output incomplete or different: {log}");
        assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        assert!(
            count_before(&summary, " windows, held back").is_some_and(|n| n > 0),
            "no windows reached the client: {summary}"
        );
        assert!(summary.contains(" 0 receivers timed out"), "{summary}");
        assert!(count_before(&px, " windows").is_some_and(|n| n > 0), "{px}");
    });
}

/// The proxy listens on a multicast group: the client's frames arrive on
/// the group-bound socket, and the windows sent back from it still reach
/// the client (the kernel picks a unicast source address for a socket
/// bound to a group)
#[test]
fn windows_reach_a_client_that_sends_to_the_proxys_group() {
    in_netns(|_| {
        let f = files(4 << 20, 83);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9531", "--path", s(&f.output)],
            &[9531],
        );
        let proxy = start_proxy("239.255.7.10:9530", "127.0.0.1:9531", &["--iface", "lo"]);
        let summary = mpx_client(&f.input, "239.255.7.10:9530", &["--iface", "lo"]);
        let (exact, log, px) = finish(&f, server, proxy);
        eprintln!(
            "client: {summary}\nserver: {}\nproxy: {}",
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(exact, "output incomplete or different: {log}");
        assert!(
            count_before(&summary, " windows, held back").is_some_and(|n| n > 0),
            "no windows reached the client: {summary}"
        );
        assert!(summary.contains(" 0 receivers timed out"), "{summary}");
    });
}

/// `--relay-control off` restores plain forwarding: nothing goes back, and
/// the client, hearing no window, takes the link as one-way
#[test]
fn relay_control_off_sends_nothing_back() {
    in_netns(|_| {
        let f = files(1 << 20, 84);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9541", "--path", s(&f.output)],
            &[9541],
        );
        let proxy = start_proxy(
            "127.0.0.1:9540",
            "127.0.0.1:9541",
            &["--relay-control", "off"],
        );
        let summary = mpx_client(&f.input, "127.0.0.1:9540", &["--rate", "50mbit"]);
        let (exact, log, px) = finish(&f, server, proxy);
        assert!(exact, "output incomplete or different: {log}");
        assert!(
            count_before(&summary, " windows, held back") == Some(0),
            "{summary}"
        );
        assert!(!px.contains("control relayed upstream"), "{px}");
    });
}

/// CRC32C (Castagnoli, reflected), bitwise: enough for a few test frames
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A version-1 mpx frame (docs/PROTOCOL.md §2, §6)
fn mpx_frame(frame_type: u8, session: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xA7, 0x4D, 0x10 | frame_type, 0, 0, 0, 0, 0];
    f.extend_from_slice(&session.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(payload);
    let c = crc32c(&f);
    f[4..8].copy_from_slice(&c.to_be_bytes());
    f
}

/// What arrives on the proxy's downstream socket goes back upstream only
/// if it is a valid control frame of a session the proxy forwarded, and
/// only to that session's sender; raw datagrams, sender frames, damaged
/// frames and unknown sessions are counted and dropped (no reflection)
#[test]
fn only_known_sessions_control_frames_go_back_and_the_rest_is_counted() {
    use std::net::UdpSocket;
    in_netns(|_| {
        let downstream = UdpSocket::bind("127.0.0.1:9551").unwrap();
        downstream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let proxy = start_proxy("127.0.0.1:9550", "127.0.0.1:9551", &[]);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let session = 0x5e55_1011_u64;
        // 88 bytes: enough credit for the one 40-byte window sent back
        // (a route never reflects more bytes than its source sent)
        let data = mpx_frame(1, session, &[b'x'; 64]);
        sender.send_to(&data, "127.0.0.1:9550").unwrap();
        let mut buf = [0u8; 2048];
        let (n, proxy_out) = downstream.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &data[..], "the frame was not forwarded as is");
        let window = mpx_frame(7, session, &[0u8; 16]);
        let mut damaged = window.clone();
        damaged[30] ^= 0xff;
        for junk in [
            b"raw bytes".to_vec(),
            mpx_frame(1, session, b"a sender frame type"),
            damaged,
            mpx_frame(7, session + 1, &[0u8; 16]),
            window.clone(),
        ] {
            downstream.send_to(&junk, proxy_out).unwrap();
        }
        // the valid window, sent last, is the first thing the sender gets
        let (n, from) = sender.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &window[..]);
        assert_eq!(
            from,
            "127.0.0.1:9550".parse().unwrap(),
            "not from where it sent"
        );
        let px = stop(proxy);
        sender.set_nonblocking(true).unwrap();
        assert!(sender.recv_from(&mut buf).is_err(), "more came back");
        assert!(
            px.contains(
                "control relayed upstream: 0 NACKs, 1 windows, 0 feedback; dropped: \
                 1 unknown session, 0 ambiguous feedback, 0 own session, 3 not control, \
                 0 over credit, 0 send errors; 1 sessions learned, 0 evicted"
            ),
            "{px}"
        );
    });
}
