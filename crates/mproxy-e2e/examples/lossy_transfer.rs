//! Measure repair over a lossy link: `mproxy-client --mpx`, unpaced, sends
//! a random file through a seeded relay that drops a share of the
//! datagrams each way (NACKs included) to `mproxy-server`; prints whether
//! the output is byte-exact and how much was re-sent for what was lost.
//!
//! ```sh
//! cargo build --release -j2 --bins -p mproxy-e2e --example lossy_transfer
//! target/release/examples/lossy_transfer [MiB] [drop] [seed]    # as root
//! unshare -Ur target/release/examples/lossy_transfer 256 0.05 1  # otherwise
//! ```
//!
//! Defaults: 256 MiB, 5% drop each way, seed 1. Everything runs inside a
//! private network namespace (the relay is a thread of this process; the
//! binaries are the release builds next to it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproxy_testsupport::{
    bin, in_netns, random_file, spawn, wait_for_udp_bound_more, wait_until, LossyRelay,
    RelayConfig, TempDir,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: u64 = args.first().map_or(256, |a| a.parse().expect("MiB"));
    let drop: f64 = args.get(1).map_or(0.05, |a| a.parse().expect("drop"));
    let seed: u64 = args.get(2).map_or(1, |a| a.parse().expect("seed"));
    in_netns(|_| run(mib, drop, seed));
}

fn run(mib: u64, drop: f64, seed: u64) {
    let dir = TempDir::new();
    let input = dir.join("in");
    random_file(&input, (mib << 20) as usize, seed);
    let out = dir.join("out");
    let mut server = spawn(
        Command::new(bin("mproxy-server"))
            .args(["--listen-addr", "127.0.0.1:9601", "--accept", "mpx"])
            .arg("--path")
            .arg(out.join("{session}-{stream}.log"))
            .stdout(Stdio::null()),
    );
    wait_for_udp_bound_more(9601, 0, Duration::from_secs(10));
    let relay = LossyRelay::start(
        "127.0.0.1:9600".parse().unwrap(),
        "127.0.0.1:9601".parse().unwrap(),
        RelayConfig {
            seed,
            drop,
            return_path: true,
            return_drop: drop,
            ..RelayConfig::default()
        },
    );
    let start = Instant::now();
    let client = Command::new(bin("mproxy-client"))
        .args([
            "--mpx",
            "--framing",
            "bytes",
            "--server-addr",
            "127.0.0.1:9600",
        ])
        .arg("--path")
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("running mproxy-client");
    let client_time = start.elapsed();
    let summary = String::from_utf8_lossy(&client.stderr).into_owned();
    wait_until(Duration::from_secs(60), "the stream to close", || {
        server.stderr_text().contains("stream closed: ")
    });
    let rec = relay.stop();
    server.interrupt();
    let _ = server.wait_timeout(Duration::from_secs(10));
    let log = server.stderr_text();
    let (_, st) = rec.single_stream();
    // every copy of a DATA frame the relay dropped, originals and re-sends
    let (mut lost_copies, mut lost_bytes) = (0u64, 0u64);
    for f in st.frames.values() {
        let dropped = u64::from(f.received.saturating_sub(f.forwarded));
        lost_copies += dropped;
        lost_bytes += dropped * f.payload.len() as u64;
    }
    let resent: u64 = summary
        .split(" frames re-sent")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let resent_bytes: u64 = st
        .frames
        .values()
        .map(|f| u64::from(f.received.saturating_sub(1)) * f.payload.len() as u64)
        .sum();
    let files: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let exact =
        files.len() == 1 && std::fs::read(&files[0]).ok() == Some(std::fs::read(&input).unwrap());
    let secs = client_time.as_secs_f64();
    println!(
        "{mib} MiB, drop {:.1}% each way, seed {seed}: byte-exact {}, client {:.2}s ({:.0} Mbit/s)",
        drop * 100.0,
        if exact { "yes" } else { "NO" },
        secs,
        (mib << 20) as f64 * 8.0 / secs / 1e6
    );
    println!(
        "relay: {} datagrams, {} dropped, {} replies returned, {} replies dropped",
        rec.received, rec.dropped, rec.returned, rec.returns_dropped
    );
    println!(
        "DATA copies dropped: {lost_copies} ({lost_bytes} payload bytes); frames re-sent: {resent} \
         ({resent_bytes} payload bytes) = {:.3} x the bytes lost",
        resent_bytes as f64 / lost_bytes.max(1) as f64
    );
    println!(
        "client: {}",
        summary
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(400)
            .collect::<String>()
    );
    println!(
        "server: {}",
        log.lines()
            .find(|l| l.contains("stream closed: "))
            .unwrap_or("")
    );
}
