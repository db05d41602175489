//! An mpx client behind mproxy-proxy: the receivers' control frames (NACK,
//! WINDOW) travel back through the proxy, so repair and flow control work
//! end to end. Each test in its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
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
        let dir = TempDir::new();
        let input = dir.join("in");
        let output = dir.join("out");
        random_file(&input, 4 << 20, 81);
        let len = std::fs::metadata(&input).unwrap().len();
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9512",
                "--accept",
                "mpx",
                "--nack",
                "on",
                "--path",
                s(&output),
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
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--framing",
                "bytes",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9510",
                "--rate",
                "50mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        let complete = reached_len(&output, len, Duration::from_secs(30));
        let rec = relay.stop();
        let log = stop(server);
        let px = stop(proxy);
        eprintln!(
            "relay: dropped {} of {}, {} replies returned, {} dropped\nclient: {summary}\nserver: {}\nproxy: {}",
            rec.dropped,
            rec.received,
            rec.returned,
            rec.returns_dropped,
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(complete, "output incomplete: {log}");
        assert!(std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap());
        assert!(rec.dropped > 0 && rec.returned > 0, "{rec:?}");
        assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        let repaired = count_before(log.lines().last().unwrap_or(""), " repaired");
        assert!(repaired.is_some_and(|n| n > 0), "nothing repaired: {log}");
        assert!(
            count_before(&summary, " NACKs").is_some_and(|n| n > 0),
            "{summary}"
        );
        assert!(count_before(&px, " NACKs").is_some_and(|n| n > 0), "{px}");
        assert!(px.contains(" 0 not control, 0 send errors"), "{px}");
    });
}

/// An unpaced client behind the proxy hears the server's windows: its
/// summary counts them and no receiver timed out (without the relay it
/// would take the link as one-way after 200 ms and blast)
#[test]
fn windows_through_the_proxy_reach_the_client() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        let output = dir.join("out");
        random_file(&input, 16 << 20, 82);
        let len = std::fs::metadata(&input).unwrap().len();
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9521", "--path", s(&output)],
            &[9521],
        );
        let proxy = start_proxy("127.0.0.1:9520", "127.0.0.1:9521", &[]);
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--framing",
                "bytes",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9520",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        let complete = reached_len(&output, len, Duration::from_secs(30));
        let log = stop(server);
        let px = stop(proxy);
        eprintln!(
            "client: {summary}\nserver: {}\nproxy: {}",
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(complete, "output incomplete: {log}");
        assert!(std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap());
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
        let dir = TempDir::new();
        let input = dir.join("in");
        let output = dir.join("out");
        random_file(&input, 4 << 20, 83);
        let len = std::fs::metadata(&input).unwrap().len();
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9531", "--path", s(&output)],
            &[9531],
        );
        let proxy = start_proxy("239.255.7.10:9530", "127.0.0.1:9531", &["--iface", "lo"]);
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--framing",
                "bytes",
                "--path",
                s(&input),
                "--server-addr",
                "239.255.7.10:9530",
                "--iface",
                "lo",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        let complete = reached_len(&output, len, Duration::from_secs(30));
        let log = stop(server);
        let px = stop(proxy);
        eprintln!(
            "client: {summary}\nserver: {}\nproxy: {}",
            log.lines().last().unwrap_or(""),
            px.lines().last().unwrap_or("")
        );
        assert!(complete, "output incomplete: {log}");
        assert!(std::fs::read(&output).unwrap() == std::fs::read(&input).unwrap());
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
        let dir = TempDir::new();
        let input = dir.join("in");
        let output = dir.join("out");
        random_file(&input, 1 << 20, 84);
        let len = std::fs::metadata(&input).unwrap().len();
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9541", "--path", s(&output)],
            &[9541],
        );
        let proxy = start_proxy(
            "127.0.0.1:9540",
            "127.0.0.1:9541",
            &["--relay-control", "off"],
        );
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--framing",
                "bytes",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9540",
                "--rate",
                "50mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        let complete = reached_len(&output, len, Duration::from_secs(30));
        let log = stop(server);
        let px = stop(proxy);
        assert!(complete, "output incomplete: {log}");
        assert!(
            count_before(&summary, " windows, held back") == Some(0),
            "{summary}"
        );
        assert!(!px.contains("control relayed upstream"), "{px}");
    });
}
