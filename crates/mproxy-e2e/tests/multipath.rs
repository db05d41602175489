//! Multipath aggregation across a second host reached over several
//! rate-limited veth links (tc tbf), each test in its own namespaces

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mproxy_e2e::{reached_len, run_ok, stop};
use mproxy_testsupport::{bin, in_netns, line_file, spawn, wait_until, Link, PeerHost, TempDir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The only file written under `dir`
fn single_output(dir: &Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Start mproxy-server on the peer host, listening on every link
fn server_on(host: &PeerHost, links: &[Link], out_dir: &Path) -> mproxy_testsupport::ChildGuard {
    let mut cmd = host.command(bin("mproxy-server"));
    let template = out_dir.join("{session}-{stream}.log");
    cmd.args([
        "--path",
        s(&template),
        "--accept",
        "mpx",
        "--reorder-timeout",
        "300",
    ]);
    for l in links {
        cmd.args(["--listen-addr", &format!("{}:9000", l.peer_addr)]);
    }
    let guard = spawn(cmd.stdout(Stdio::null()));
    let listening = || {
        host.run("ss", &["-H", "-uln", "sport = :9000"])
            .lines()
            .count()
            == links.len()
    };
    wait_until(
        Duration::from_secs(30),
        "server listening on every link",
        listening,
    );
    guard
}

fn path_args(links: &[Link], weights: &[u32]) -> Vec<String> {
    links
        .iter()
        .zip(weights)
        .flat_map(|(l, w)| {
            [
                "--server-addr".to_string(),
                format!("{}:9000|{w}", l.peer_addr),
            ]
        })
        .collect()
}

/// "path N ...: <state>, F frames" of the client's summary
fn path_frames(summary: &str, n: usize) -> u64 {
    let line = summary
        .split("; ")
        .find(|p| p.trim_start().starts_with(&format!("path {n} ")))
        .unwrap_or_else(|| panic!("no path {n} in {summary}"));
    line.split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn stripe_over_three_shaped_links_is_byte_exact() {
    in_netns(|ns| {
        let host = PeerHost::new(ns);
        let links: Vec<Link> = (1..=3).map(|n| host.link(ns, n, Some("50mbit"))).collect();
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 8 << 20, 21);
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let server = server_on(&host, &links, &out_dir);
        let mut args = vec![
            "--mode".into(),
            "stripe".into(),
            "--path".into(),
            s(&input).to_string(),
        ];
        args.extend(path_args(&links, &[1, 1, 1]));
        // paced below the 150 Mbit/s sum so the shapers never drop
        args.extend(["--rate".into(), "120mbit".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let client = run_ok("mproxy-client", &args);
        let summary = String::from_utf8_lossy(&client.stderr).to_string();
        let len = std::fs::metadata(&input).unwrap().len();
        let out = std::fs::read_dir(&out_dir)
            .unwrap()
            .next()
            .map(|e| e.unwrap().path());
        let done = out
            .as_ref()
            .is_some_and(|o| reached_len(o, len, Duration::from_secs(30)));
        eprintln!(
            "stripe 3x50mbit: {:.1} Mbit/s goodput (debug build, informational)",
            len as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6
        );
        let text = stop(server);
        assert!(done, "incomplete; client: {summary}\nserver: {text}");
        mproxy_testsupport::assert_files_equal(&input, single_output(&out_dir));
        assert!(text.contains(" 0 gaps (0 lost), 0 dups"), "{text}");
        let frames: Vec<u64> = (0..3).map(|i| path_frames(&summary, i)).collect();
        let total: u64 = frames.iter().sum();
        for f in &frames {
            let share = *f as f64 / total as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.05, "uneven split {frames:?}");
        }
    });
}

#[test]
fn weights_one_to_two_follow_the_links() {
    in_netns(|ns| {
        let host = PeerHost::new(ns);
        let links = vec![
            host.link(ns, 1, Some("30mbit")),
            host.link(ns, 2, Some("60mbit")),
        ];
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 6 << 20, 22);
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let server = server_on(&host, &links, &out_dir);
        let mut args = vec![
            "--mode".into(),
            "stripe".into(),
            "--path".into(),
            s(&input).to_string(),
        ];
        args.extend(path_args(&links, &[1, 2]));
        args.extend(["--rate".into(), "80mbit".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let client = run_ok("mproxy-client", &args);
        let summary = String::from_utf8_lossy(&client.stderr).to_string();
        let len = std::fs::metadata(&input).unwrap().len();
        let out = std::fs::read_dir(&out_dir)
            .unwrap()
            .next()
            .map(|e| e.unwrap().path());
        let done = out
            .as_ref()
            .is_some_and(|o| reached_len(o, len, Duration::from_secs(30)));
        let text = stop(server);
        assert!(done, "incomplete; client: {summary}\nserver: {text}");
        mproxy_testsupport::assert_files_equal(&input, single_output(&out_dir));
        let (a, b) = (path_frames(&summary, 0), path_frames(&summary, 1));
        let share = b as f64 / (a + b) as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.03, "split {a}:{b}");
    });
}

#[test]
fn dead_link_is_detected_avoided_and_rejoins() {
    in_netns(|ns| {
        let host = PeerHost::new(ns);
        let links: Vec<Link> = (1..=3).map(|n| host.link(ns, n, Some("50mbit"))).collect();
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        // numbered short lines, so what arrived can be checked line by line
        let lines: Vec<u8> = (0..150_000u32)
            .flat_map(|i| format!("{i:08},{}\n", "x".repeat(40 + (i % 50) as usize)).into_bytes())
            .collect();
        std::fs::write(&input, &lines).unwrap();
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let server = server_on(&host, &links, &out_dir);
        let mut args = vec![
            "--mode".into(),
            "stripe".into(),
            "--path".into(),
            s(&input).to_string(),
        ];
        args.extend(path_args(&links, &[1, 1, 1]));
        args.extend(["--rate".into(), "40mbit".into()]);
        let mut client = spawn(
            std::process::Command::new(bin("mproxy-client"))
                .args(&args)
                .stdout(Stdio::null()),
        );
        // the transfer takes about 2.5 s: take link 3 down for 1.2 s in the middle
        std::thread::sleep(Duration::from_millis(500));
        host.set_link(ns, &links[2], false);
        std::thread::sleep(Duration::from_millis(1200));
        host.set_link(ns, &links[2], true);
        let status = client
            .wait_timeout(Duration::from_secs(60))
            .expect("client finished");
        let summary = client.stderr_text();
        eprintln!("client: {summary}");
        assert!(status.success(), "{summary}");
        let out = single_output(&out_dir);
        // wait for the tail, then stop: the server reports the stream
        std::thread::sleep(Duration::from_millis(800));
        let text = stop(server);
        // the dead path was detected and came back: two state changes
        let path3 = summary
            .split("; ")
            .find(|p| p.contains("path 2 "))
            .unwrap()
            .to_string();
        assert!(path3.contains(" 2 state changes"), "{path3}\n{summary}");
        assert!(summary.contains("path 2 10.210.3.2:9000: Up"), "{summary}");
        // what arrived is the input minus whole lost frames, in order, and
        // the loss is counted
        let got = std::fs::read(&out).unwrap();
        let want = std::fs::read(&input).unwrap();
        let closed = text
            .lines()
            .find(|l| l.contains("stream closed: "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(closed.contains("reason=Fin"), "{closed}");
        let lost: u64 = closed
            .split(" (")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // what arrived is the input minus whole frames, in order...
        let mut prev: Option<u32> = None;
        for line in got.split_inclusive(|b| *b == b'\n') {
            let n: u32 = std::str::from_utf8(&line[..8]).unwrap().parse().unwrap();
            let expect = format!("{n:08},{}\n", "x".repeat(40 + (n % 50) as usize));
            assert_eq!(line, expect.as_bytes(), "damaged line");
            assert!(
                prev.is_none_or(|p| n > p),
                "out of order: {n} after {prev:?}"
            );
            prev = Some(n);
        }
        // ...the stream went on to the end...
        assert_eq!(prev, Some(149_999));
        // ...and anything missing was counted as lost
        assert_eq!(
            got.len() < want.len(),
            lost > 0,
            "{} of {} bytes, {closed}",
            got.len(),
            want.len()
        );
        eprintln!(
            "link down for 1.2 s: {} of {} bytes delivered; {closed}",
            got.len(),
            want.len()
        );
    });
}

/// `--mode redundant` over three paths that each lose 10% (seeded lossy
/// relays, replies carried back): the receiver keeps the first copy of
/// every frame, drops the others as duplicates, and loses only frames
/// that all three paths lost, which it reports exactly. Repair (NACK) is
/// off so redundancy alone is measured.
#[test]
fn redundant_over_three_lossy_paths_loses_at_most_0_2_percent() {
    use mproxy_e2e::start_server;
    use mproxy_testsupport::{LossyRelay, RelayConfig};

    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        line_file(&input, 8 << 20, 77);
        let out = dir.join("out");
        let template = out.join("{session}-{stream}.log");
        let mut args = vec![
            "--path".to_string(),
            s(&template).to_string(),
            "--accept".into(),
            "mpx".into(),
            "--nack".into(),
            "off".into(),
            // The paths' delays differ (three relay threads on a shared
            // machine): hold enough (~6k frames/s x 1 s) that a frame still
            // on its way over a slower path is never given up early.
            "--reorder-timeout".into(),
            "1000".into(),
            "--reorder-window".into(),
            "8192".into(),
        ];
        for p in 9101..=9103 {
            args.extend(["--listen-addr".into(), format!("127.0.0.1:{p}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = start_server(&args, &[9101, 9102, 9103]);
        let relays: Vec<LossyRelay> = (0..3u16)
            .map(|i| {
                LossyRelay::start(
                    format!("127.0.0.1:{}", 9201 + i).parse().unwrap(),
                    format!("127.0.0.1:{}", 9101 + i).parse().unwrap(),
                    RelayConfig {
                        seed: 1000 + u64::from(i),
                        drop: 0.10,
                        return_path: true,
                        ..RelayConfig::default()
                    },
                )
            })
            .collect();
        // exit 3 when a frame was lost on all three paths (checked below)
        let client = mproxy_e2e::run(
            "mproxy-client",
            &[
                "--mode",
                "redundant",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9201",
                "--server-addr",
                "127.0.0.1:9202",
                "--server-addr",
                "127.0.0.1:9203",
                "--rate",
                "50mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).into_owned();
        assert!(summary.contains(", 0 send errors"), "{summary}");
        let closed = |log: &str| log.contains("stream closed: ");
        let deadline = Instant::now() + Duration::from_secs(30);
        // the server logs the close; stop() collects the log
        while Instant::now() < deadline && std::fs::read_dir(&out).map_or(true, |d| d.count() == 0)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(800));
        let records: Vec<_> = relays.into_iter().map(LossyRelay::stop).collect();
        let log = stop(server);
        assert!(closed(&log), "{log}");

        // what got through on at least one path, from the relays' records
        let streams: Vec<_> = records.iter().map(|r| r.single_stream().1).collect();
        let end = streams.iter().map(|s| s.end()).max().unwrap();
        let mut want = Vec::new();
        let mut lost = 0u64;
        let mut frames = 0u64;
        for seq in 0..end {
            let copy = streams
                .iter()
                .filter_map(|s| s.frames.get(&seq))
                .find(|f| f.forwarded > 0);
            frames += 1;
            match copy {
                Some(f) => want.extend_from_slice(&f.payload),
                None => lost += 1,
            }
        }
        let dropped: u64 = records.iter().map(|r| r.dropped).sum();
        let received: u64 = records.iter().map(|r| r.received).sum();
        let got = std::fs::read(single_output(&out)).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("stream closed: "))
            .unwrap()
            .to_string();
        eprintln!(
            "redundant: {frames} frames, relays dropped {dropped} of {received} datagrams; \
             lost on all three paths: {lost} ({:.3}%); server: {line}",
            100.0 * lost as f64 / frames as f64
        );
        assert!(
            dropped as f64 > 0.08 * received as f64,
            "relays barely dropped"
        );
        assert!(
            got == want,
            "output != frames that got through on some path"
        );
        assert!(
            line.contains(&format!("({lost} lost)")),
            "server must count exactly the {lost} frames lost on all paths: {line}"
        );
        assert!(
            (lost as f64) <= 0.002 * frames as f64,
            "{lost} of {frames} frames lost"
        );
        // the client says so too: exit 3 and the same count
        assert_eq!(
            client.status.code(),
            Some(if lost > 0 { 3 } else { 0 }),
            "{summary}"
        );
        if lost > 0 {
            assert!(
                summary.contains(&format!("with {lost} frames lost")),
                "{summary}"
            );
        }
        // every frame that got through twice or three times was a duplicate
        let dups: u64 = line
            .split(", ")
            .find_map(|p| p.strip_suffix(" dups"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no dups in {line}"));
        assert!(dups > frames, "{dups} dups for {frames} frames: {line}");
    });
}
