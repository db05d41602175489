//! Kernel drops are reported per datagram: a raw-mode server stopped for
//! 2 s (SIGSTOP) while a paced client keeps sending loses what its receive
//! queue cannot hold, and its summary must say how many datagrams that was
//!
//! In raw mode the kernel's drop counter is the only loss signal. The
//! kernel counts a dropped GRO buffer once, however many datagrams it held,
//! so raw receivers read without GRO; in auto mode (GRO on) the summary
//! says that its count is of coalesced buffers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mproxy_e2e::{reached_len, run_cmd_wait, start_server, stop};
use mproxy_testsupport::{bin, in_netns, random_file, wait_until, TempDir};

/// Payload of every datagram: the client reads 64 KiB at a time and cuts
/// it into datagrams of this size, so all of them are full (bytes framing)
const DATAGRAM: u64 = 1024;

/// Sends SIGCONT when dropped, so a failing test never leaves a stopped
/// process behind
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        signal("-STOP", pid);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What one stalled transfer gave: (datagrams sent, datagrams written,
/// kernel drops the server reported, its stderr)
fn stalled_transfer(port: u16, accept: &str) -> (u64, u64, u64, String) {
    let dir = TempDir::new();
    let input = dir.join("in");
    // 48 MiB at 128 Mbit/s: about 3 s of sending, 2 s of it while the
    // server is stopped
    random_file(&input, 48 << 20, 91);
    let output = dir.join("out");
    let listen = format!("127.0.0.1:{port}");
    let server = start_server(
        &[
            "--listen-addr",
            &listen,
            "--path",
            s(&output),
            "--accept",
            accept,
            "--rcvbuf",
            "1MiB",
        ],
        &[port],
    );
    let client = Command::new(bin("mproxy-client"))
        .args([
            "--path",
            s(&input),
            "--server-addr",
            &listen,
            "--framing",
            "bytes",
            "--max-datagram",
            &DATAGRAM.to_string(),
            "--rate",
            "128mbit",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the transfer is under way: stop the server for 2 s (the stall is
    // the scenario, not a wait)
    assert!(
        reached_len(&output, 1 << 20, Duration::from_secs(30)),
        "no data arrived: {}",
        server.stderr_text()
    );
    {
        let _stopped = Stopped::new(server.id());
        std::thread::sleep(Duration::from_secs(2));
    }
    let out = run_cmd_wait(client);
    let client_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "client failed: {client_log}");
    assert!(client_log.contains(", 0 send errors"), "{client_log}");
    let sent = datagrams_sent(&client_log);
    assert_eq!(sent, (48 << 20) / DATAGRAM, "{client_log}");
    // what the server already has queued it writes before it exits
    let mut last = 0;
    wait_until(
        Duration::from_secs(30),
        "the output to stop growing",
        || {
            let len = std::fs::metadata(&output).map_or(0, |m| m.len());
            let settled = len == last;
            last = len;
            std::thread::sleep(Duration::from_millis(200));
            settled
        },
    );
    let log = stop(server);
    let written = std::fs::metadata(&output).unwrap().len();
    assert_eq!(written % DATAGRAM, 0, "a datagram was written in part");
    (sent, written / DATAGRAM, kernel_drops(&log), log)
}

/// Datagrams from the client's summary: `done: read ..., N datagrams, ...`
fn datagrams_sent(log: &str) -> u64 {
    let done = log
        .lines()
        .find_map(|l| l.split_once("done: read").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no summary: {log}"));
    done.split(", ")
        .find_map(|part| part.strip_suffix(" datagrams")?.parse().ok())
        .unwrap_or_else(|| panic!("no datagram count: {done}"))
}

/// The kernel drops of the server's one listener, from its summary
fn kernel_drops(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" kernel drops"))
        .unwrap_or_else(|| panic!("no summary: {log}"));
    let before = line.split(" kernel drops").next().unwrap_or_default();
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kernel drop count: {line}"))
}

#[test]
fn raw_server_reports_each_datagram_the_kernel_dropped() {
    in_netns(|_| {
        let (sent, written, reported, log) = stalled_transfer(7601, "raw");
        assert!(
            log.contains("gro=false"),
            "raw mode reads without GRO: {log}"
        );
        let lost = sent - written;
        // 2 s at 128 Mbit/s is 31,250 datagrams; the 1 MiB queue holds a
        // few hundred of them
        assert!(lost > 10_000, "the stall lost only {lost} of {sent}: {log}");
        eprintln!("raw: {sent} sent, {written} written, {lost} lost, {reported} reported");
        let off = reported.abs_diff(lost);
        assert!(
            off * 100 <= lost,
            "{lost} datagrams lost ({sent} sent, {written} written), {reported} reported: {log}"
        );
    });
}

#[test]
fn auto_mode_says_its_gro_drop_count_is_of_buffers() {
    in_netns(|_| {
        let (sent, written, reported, log) = stalled_transfer(7602, "auto");
        let lost = sent - written;
        eprintln!("auto (GRO): {sent} sent, {written} written, {lost} lost, {reported} reported");
        assert!(lost > 10_000 && reported > 0, "{log}");
        assert!(reported <= lost, "{reported} reported, {lost} lost: {log}");
        if log.contains("gro=true") {
            assert!(
                log.contains("(GRO: coalesced buffers, at least as many datagrams"),
                "{log}"
            );
        }
    });
}
