//! Lose nothing: NACK repair end to end over multicast, each test in its
//! own network namespace

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mproxy_e2e::{reached_len, run_ok, start_server, stop};
use mproxy_testsupport::{in_netns, random_file, LossyRelay, RelayConfig, TempDir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The only file a `{session}-{stream}.log` template wrote under `dir`
fn only_file(dir: &Path) -> Option<PathBuf> {
    let files: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    (files.len() == 1).then(|| files[0].path())
}

/// The summary's "N NACKs sent" figure, 0 when the server sent none
fn nacks_sent(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split_once(" NACKs sent").map(|(head, _)| head))
        .filter_map(|head| head.rsplit(' ').next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// The summary's "N repaired" figure (frames a re-send filled in)
fn repaired(log: &str) -> u64 {
    let line = log.lines().last().unwrap_or("");
    line.split_once(" repaired")
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no repaired count in {line}"))
}

/// IPv4 multicast to three receivers, one of them behind a seeded relay
/// that loses 10% each way (its NACKs included): all three write the file
/// byte-exact. The lossy one asks for repairs through the relay; the
/// sender re-sends to the group, so the clean two see the repairs as
/// duplicates, and they themselves never need to ask.
#[test]
fn multicast_to_three_receivers_one_behind_10_percent_loss_all_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 4 << 20, 71);
        let len = std::fs::metadata(&input).unwrap().len();
        let group = "239.255.7.7:9400";
        let outs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| dir.join(n)).collect();
        let template = |i: usize| outs[i].join("{session}-{stream}.log");
        let servers: Vec<_> = (0..2)
            .map(|i| {
                start_server(
                    &[
                        "--listen-addr",
                        group,
                        "--iface",
                        "lo",
                        "--accept",
                        "mpx",
                        "--path",
                        s(&template(i)),
                    ],
                    &[9400],
                )
            })
            .collect();
        let lossy = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9401",
                "--accept",
                "mpx",
                "--path",
                s(&template(2)),
            ],
            &[9401],
        );
        let relay = LossyRelay::start(
            group.parse().unwrap(),
            "127.0.0.1:9401".parse().unwrap(),
            RelayConfig {
                seed: 7,
                drop: 0.10,
                return_path: true,
                return_drop: 0.10,
                ..RelayConfig::default()
            },
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
                group,
                "--iface",
                "lo",
                "--rate",
                "50mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        assert!(summary.contains(", 0 send errors"), "{summary}");
        let complete: Vec<bool> = outs
            .iter()
            .map(|o| {
                let mut done = false;
                mproxy_testsupport::wait_until(Duration::from_secs(30), "an output file", || {
                    only_file(o).is_some()
                });
                if let Some(f) = only_file(o) {
                    done = reached_len(&f, len, Duration::from_secs(30));
                }
                done
            })
            .collect();
        let rec = relay.stop();
        let logs: Vec<String> = servers.into_iter().chain([lossy]).map(stop).collect();
        eprintln!(
            "relay: dropped {} of {} datagrams, {} replies returned, {} dropped\nclient: {summary}",
            rec.dropped, rec.received, rec.returned, rec.returns_dropped
        );
        for (i, log) in logs.iter().enumerate() {
            eprintln!("server {i}: {}", log.lines().last().unwrap_or(""));
        }
        assert!(complete.iter().all(|c| *c), "{complete:?}\n{logs:?}");
        let want = std::fs::read(&input).unwrap();
        for o in &outs {
            let got = std::fs::read(only_file(o).unwrap()).unwrap();
            assert!(got == want, "{} differs", o.display());
        }
        assert!(rec.dropped > 0 && rec.returned > 0, "{rec:?}");
        assert!(nacks_sent(&logs[2]) > 0, "{}", logs[2]);
        assert!(repaired(&logs[2]) > 0, "{}", logs[2]);
        for log in &logs {
            assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        }
    });
}

/// Flow control end to end: an unpaced client and a server whose output
/// is a pipe read slowly (~10 MB/s, a receiver busy writing): the client
/// is held back by the server's windows and the data arrives byte-exact;
/// nothing overflows.
#[test]
fn unpaced_client_is_held_to_a_slow_writer_byte_exact() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 16 << 20, 72);
        let want = std::fs::read(&input).unwrap();
        let before = mproxy_testsupport::udp_bound_count(9402);
        let mut server = mproxy_testsupport::spawn(
            Command::new(mproxy_testsupport::bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9402", "--path", "-"])
                .stdout(Stdio::piped()),
        );
        mproxy_testsupport::wait_for_udp_bound_more(9402, before, mproxy_e2e::TIMEOUT);
        let mut out = server.child_mut().stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 << 10];
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while got.len() < (16 << 20) && std::time::Instant::now() < deadline {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        });
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--framing",
                "bytes",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9402",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        let got = reader.join().unwrap();
        let log = stop(server);
        eprintln!(
            "client: {summary}\nserver: {}",
            log.lines().last().unwrap_or("")
        );
        assert!(got == want, "{} of {} bytes", got.len(), want.len());
        assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        let held: f64 = summary
            .split("held back ")
            .nth(1)
            .and_then(|t| t.split('s').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no flow-control figures in {summary}"));
        assert!(held > 0.0, "the client was never held back: {summary}");
    });
}

/// One of two receivers of a group is killed mid-transfer: the client
/// notices (no window for 2 s), stops waiting for it, and the other
/// receiver still gets everything
#[test]
fn killed_receiver_is_dropped_and_the_other_is_served() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 24 << 20, 73);
        let len = std::fs::metadata(&input).unwrap().len();
        let group = "239.255.7.8:9403";
        let outs: Vec<PathBuf> = ["a", "b"].iter().map(|n| dir.join(n)).collect();
        let mut servers: Vec<_> = outs
            .iter()
            .map(|o| {
                start_server(
                    &[
                        "--listen-addr",
                        group,
                        "--iface",
                        "lo",
                        "--path",
                        s(&o.join("{session}-{stream}.log")),
                    ],
                    &[9403],
                )
            })
            .collect();
        let mut client = mproxy_testsupport::spawn(
            std::process::Command::new(mproxy_testsupport::bin("mproxy-client"))
                .args([
                    "--mpx",
                    "--framing",
                    "bytes",
                    "--rate",
                    "40mbit",
                    "--iface",
                    "lo",
                    "--server-addr",
                    group,
                    "--path",
                    s(&input),
                ])
                .stdout(std::process::Stdio::null()),
        );
        // kill b once it has some of the stream
        mproxy_testsupport::wait_until(Duration::from_secs(30), "b receiving", || {
            only_file(&outs[1])
                .and_then(|f| std::fs::metadata(f).ok())
                .is_some_and(|m| m.len() > 1 << 20)
        });
        let killed = servers.pop().unwrap();
        drop(killed);
        let status = client
            .wait_timeout(Duration::from_secs(60))
            .expect("the client did not finish");
        let summary = client.stderr_text();
        // the killed receiver never confirmed the end: exit code 3, and
        // the summary says where it stopped
        assert_eq!(status.code(), Some(3), "{summary}");
        assert!(
            summary.contains("1 of 2 receivers confirmed the end")
                && summary.contains("given up")
                && summary.contains("confirmed up to byte"),
            "{summary}"
        );
        let a = only_file(&outs[0]).unwrap();
        assert!(reached_len(&a, len, Duration::from_secs(10)), "{summary}");
        let log = stop(servers.pop().unwrap());
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&input).unwrap());
        assert!(log.contains(" 0 gaps (0 lost)"), "{log}");
        assert!(
            summary.contains("no longer waited for") && summary.contains("1 receivers timed out"),
            "{summary}"
        );
    });
}
