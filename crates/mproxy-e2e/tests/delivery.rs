//! Honest delivery: a stalled receiver is waited for and ends byte-exact,
//! a silently black-holed striped path costs a stall, not data, and the
//! client's exit code and summary agree with the server's. Each test in
//! its own namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproxy_e2e::{reached_len, start_server, stop, wait_exit};
use mproxy_testsupport::{
    bin, in_netns, random_file, spawn, wait_until, ChildGuard, Link, PeerHost, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The only file a template wrote under `dir`
fn only_file(dir: &Path) -> Option<PathBuf> {
    let files: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    (files.len() == 1).then(|| files[0].path())
}

fn signal(child: &ChildGuard, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig}");
}

fn client(args: &[&str]) -> ChildGuard {
    spawn(
        Command::new(bin("mproxy-client"))
            .args(args)
            .stdout(Stdio::null()),
    )
}

/// A number in `text` just before `marker`
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let (head, _) = text.split_once(marker)?;
    head.rsplit(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// The receiver is stopped (SIGSTOP) for 5 s in the middle of a paced
/// transfer: the client holds the stream (flow control), keeps its
/// repair data, and once the receiver runs again everything arrives;
/// both ends report no loss and the client exits 0
#[test]
fn stalled_receiver_for_5s_ends_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 24 << 20, 12);
        let len = std::fs::metadata(&input).unwrap().len();
        let out = dir.join("out");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9600",
                "--accept",
                "mpx",
                "--path",
                s(&out.join("{session}-{stream}.log")),
            ],
            &[9600],
        );
        let c = client(&[
            "--mpx",
            "--framing",
            "bytes",
            "--rate",
            "200mbit",
            "--path",
            s(&input),
            "--server-addr",
            "127.0.0.1:9600",
        ]);
        wait_until(Duration::from_secs(30), "the transfer under way", || {
            only_file(&out)
                .and_then(|f| std::fs::metadata(f).ok())
                .is_some_and(|m| m.len() > 2 << 20)
        });
        signal(&server, "-STOP");
        std::thread::sleep(Duration::from_secs(5));
        signal(&server, "-CONT");
        let (code, log) = wait_exit(c);
        let f = only_file(&out).unwrap();
        let done = reached_len(&f, len, Duration::from_secs(20));
        let server_log = stop(server);
        eprintln!("client: {log}\nserver: {server_log}");
        assert!(done, "output incomplete");
        assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(&input).unwrap());
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("1 of 1 receivers confirmed the end"), "{log}");
        assert!(log.contains(" 0 unrecoverable"), "{log}");
        assert!(server_log.contains(" 0 gaps (0 lost)"), "{server_log}");
    });
}

/// A receiver that never comes back: the client gives it up after
/// --receiver-timeout, names the byte it confirmed, and exits 3
#[test]
fn receiver_that_dies_is_reported_with_its_offset_and_exit_3() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 16 << 20, 13);
        let out = dir.join("out");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9610",
                "--accept",
                "mpx",
                "--path",
                s(&out.join("{session}-{stream}.log")),
            ],
            &[9610],
        );
        let c = client(&[
            "--mpx",
            "--framing",
            "bytes",
            "--rate",
            "200mbit",
            "--receiver-timeout",
            "2",
            "--path",
            s(&input),
            "--server-addr",
            "127.0.0.1:9610",
        ]);
        wait_until(Duration::from_secs(30), "the transfer under way", || {
            only_file(&out)
                .and_then(|f| std::fs::metadata(f).ok())
                .is_some_and(|m| m.len() > 1 << 20)
        });
        signal(&server, "-STOP");
        let (code, log) = wait_exit(c);
        signal(&server, "-KILL");
        drop(server);
        eprintln!("client: {log}");
        assert_eq!(code, Some(3), "{log}");
        assert!(log.contains("0 of 1 receivers confirmed the end"), "{log}");
        let confirmed = number_before(&log, " (frame").expect("a confirmed byte offset");
        let written = std::fs::metadata(only_file(&out).unwrap()).unwrap().len();
        // the server confirms what it delivered: it wrote at least that
        assert!(
            written >= confirmed,
            "wrote {written}, confirmed {confirmed}"
        );
        assert!(log.contains("given up"), "{log}");
    });
}

/// One of three striped paths is black-holed mid-transfer (its link stays
/// up, everything sent on it vanishes): the frames in flight on it are
/// re-sent on the others, the output is byte-exact and the client's
/// summary agrees with the server's (nothing lost)
#[test]
#[ignore = "needs path failure detected within a few RTTs (issue 15); today ~1 s, past the receiver's gap timeout"]
fn black_holed_striped_path_costs_a_stall_not_data() {
    in_netns(|ns| {
        let host = PeerHost::new(ns);
        let links: Vec<Link> = (1..=3).map(|n| host.link(ns, n, Some("40mbit"))).collect();
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 12 << 20, 14);
        let len = std::fs::metadata(&input).unwrap().len();
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        // path 3's neighbour entry is pinned, so the black hole below stays
        // silent (no ARP failure turning into a local send error)
        let show = host.run("ip", &["-o", "link", "show", "dev", &links[2].peer_dev]);
        let mac = show
            .split_once("link/ether ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .expect("the peer's MAC address")
            .to_string();
        ns.run(
            "ip",
            &[
                "neigh",
                "replace",
                &links[2].peer_addr.to_string(),
                "lladdr",
                &mac,
                "dev",
                &links[2].local_dev,
                "nud",
                "permanent",
            ],
        );
        let mut cmd = host.command(bin("mproxy-server"));
        cmd.args([
            "--path",
            s(&out.join("{session}-{stream}.log")),
            "--accept",
            "mpx",
            "--reorder-timeout",
            "300",
        ]);
        for l in &links {
            cmd.args(["--listen-addr", &format!("{}:9000", l.peer_addr)]);
        }
        let server = spawn(cmd.stdout(Stdio::null()));
        wait_until(Duration::from_secs(30), "server listening", || {
            host.run("ss", &["-H", "-uln", "sport = :9000"])
                .lines()
                .count()
                == 3
        });
        let mut args = vec![
            "--mode".to_string(),
            "stripe".into(),
            "--framing".into(),
            "bytes".into(),
            "--path".into(),
            s(&input).into(),
        ];
        for l in &links {
            args.push("--server-addr".into());
            args.push(format!("{}:9000|1|30mbit", l.peer_addr));
        }
        let c = spawn(
            Command::new(bin("mproxy-client"))
                .args(&args)
                .stdout(Stdio::null()),
        );
        wait_until(Duration::from_secs(30), "the transfer under way", || {
            only_file(&out)
                .and_then(|f| std::fs::metadata(f).ok())
                .is_some_and(|m| m.len() > 2 << 20)
        });
        // black hole: the peer drops everything for path 3's address (it no
        // longer has it), the link stays up (tc actions are not available)
        host.run(
            "ip",
            &[
                "addr",
                "del",
                &format!("{}/24", links[2].peer_addr),
                "dev",
                &links[2].peer_dev,
            ],
        );
        let cut = Instant::now();
        let (code, log) = wait_exit(c);
        let took = cut.elapsed();
        let f = only_file(&out).unwrap();
        let done = reached_len(&f, len, Duration::from_secs(20));
        let server_log = stop(server);
        eprintln!("after the cut {took:?}\nclient: {log}\nserver: {server_log}");
        // whatever happened, both ends tell the same loss
        let server_lost = number_before(&server_log, " lost)").unwrap_or(0);
        let client_lost = number_before(&log, " frames lost").unwrap_or(0);
        assert_eq!(
            client_lost, server_lost,
            "client: {log}\nserver: {server_log}"
        );
        assert_eq!(code == Some(0), server_lost == 0, "{log}");
        assert!(done, "output incomplete");
        assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(&input).unwrap());
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains(" 0 unrecoverable"), "{log}");
        assert!(log.contains("1 of 1 receivers confirmed the end"), "{log}");
        assert!(server_log.contains(" 0 gaps (0 lost)"), "{server_log}");
    });
}
