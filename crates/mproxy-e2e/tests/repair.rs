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
