//! Output faults of `mproxy-server`: a full disk (a small tmpfs in a
//! private mount namespace), an output deleted while written, logrotate's
//! rename-then-SIGHUP, stdout closed by its reader (`| head -2`), and a
//! 1024-descriptor limit under a flood of one-frame sessions. Each test
//! runs in its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod output_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mproxy_common::wire::{Flags, FrameType, Repr};
use mproxy_e2e::{start, start_server, stop, TIMEOUT};
use mproxy_testsupport::{
    assert_files_equal, bin, in_netns, line_file, skip, spawn, wait_for_udp_bound, wait_until,
    TempDir,
};
use output_support::{parse, record, records, send, sender, signal, wait_received};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Disk full: a 256 KiB tmpfs, half of it taken by a filler file. Every
/// record in the file is whole and in order, the records in the file plus
/// those the server counts as lost are exactly those it received, and
/// once space is freed the next records are written after a "writable
/// again" message (no stale data written late).
#[test]
fn disk_full_keeps_records_whole_and_counts_the_loss() {
    in_netns(|_| {
        let dir = TempDir::new();
        let mnt = dir.join("tmpfs");
        std::fs::create_dir(&mnt).unwrap();
        let out = mnt.join("out.log");
        // mount in a private mount namespace (never on the host's tree) and
        // run the server there; the test reads the files through /proc/PID/root
        let script = "mount -t tmpfs -o size=256k tmpfs \"$0\" || exit 97; \
                      head -c 131072 /dev/zero > \"$0/filler\" || exit 98; exec \"$@\"";
        let mut server = spawn(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", script])
                .arg(&mnt)
                .arg(bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9700", "--path", s(&out)])
                .stdout(Stdio::null()),
        );
        wait_until(TIMEOUT, "the server to bind", || {
            mproxy_testsupport::is_udp_bound(9700)
                || server.child_mut().try_wait().unwrap().is_some()
        });
        if let Some(status) = server.child_mut().try_wait().unwrap() {
            skip(&format!(
                "cannot mount a tmpfs in a private mount namespace ({status}): {}",
                server.stderr_text()
            ));
            return;
        }
        let seen = format!("/proc/{}/root{}", server.id(), out.display());
        let to: SocketAddr = "127.0.0.1:9700".parse().unwrap();
        let sock = sender();
        // about 550 KB of records for ~128 KB of space
        let first = 0..5000;
        send(&sock, to, first.clone());
        let c = wait_received(&server, 5000);
        let file = std::fs::read(&seen).unwrap();
        let got = parse(&file, "out.log after the disk filled");
        assert!(
            !got.is_empty() && got.len() < 5000,
            "{} records written",
            got.len()
        );
        assert!(got.windows(2).all(|w| w[0] < w[1]), "records out of order");
        assert_eq!(c.datagrams, 5000);
        assert_eq!(
            got.len() as u64 + c.records_lost,
            c.datagrams,
            "every received record is in the file or counted lost: {c:?}"
        );
        let lost_bytes: u64 = first
            .clone()
            .filter(|i| !got.contains(i))
            .map(|i| record(i).len() as u64)
            .sum();
        assert_eq!(c.bytes_lost, lost_bytes, "{c:?}");
        let log = server.stderr_text();
        assert!(log.contains("writing output failed"), "{log}");
        eprintln!(
            "disk full: {} of 5000 records written whole, {} records ({} bytes) counted lost",
            got.len(),
            c.records_lost,
            c.bytes_lost
        );

        // space comes back: the next records follow, and recovery is logged
        std::fs::remove_file(format!(
            "/proc/{}/root{}/filler",
            server.id(),
            mnt.display()
        ))
        .unwrap();
        send(&sock, to, 5000..5100);
        let c2 = wait_received(&server, 5100);
        assert_eq!(
            c2.records_lost, c.records_lost,
            "nothing lost once there is space"
        );
        let after = parse(
            &std::fs::read(&seen).unwrap(),
            "out.log after space came back",
        );
        assert_eq!(&after[..got.len()], &got[..]);
        assert_eq!(&after[got.len()..], &(5000..5100).collect::<Vec<_>>()[..]);
        let log = server.stderr_text();
        assert!(
            log.contains(&format!(
                "output writable again after {} records",
                c.records_lost
            )),
            "{log}"
        );
        let log = stop(server);
        assert!(
            log.contains(&format!(
                "({} records, {} bytes lost)",
                c.records_lost, c.bytes_lost
            )),
            "{log}"
        );
    });
}

/// An output deleted while written is recreated with a warning; nothing
/// received after the deletion is lost (the last second of records is
/// copied out of the deleted file), so the new file is an unbroken run of
/// records up to the last one sent.
#[test]
fn deleted_output_is_recreated_with_everything_after_the_deletion() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out.log");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9701", "--path", s(&out)],
            &[9701],
        );
        let to: SocketAddr = "127.0.0.1:9701".parse().unwrap();
        let sock = sender();
        send(&sock, to, 0..1000);
        wait_received(&server, 1000);
        std::fs::remove_file(&out).unwrap();
        send(&sock, to, 1000..2000);
        wait_until(TIMEOUT, "the deletion to be noticed", || {
            server
                .stderr_text()
                .contains("output was deleted: recreated it")
        });
        send(&sock, to, 2000..2500);
        let c = wait_received(&server, 2500);
        assert_eq!(c.records_lost, 0, "{c:?}");
        let log = stop(server);
        assert!(log.contains("1 recreated"), "{log}");
        let got = parse(&std::fs::read(&out).unwrap(), "the recreated out.log");
        let start = got[0];
        eprintln!("deleted after record 999: the new file holds records {start}..2500");
        assert!(
            start <= 1000,
            "records after the deletion are missing: starts at {start}"
        );
        assert_eq!(got, (start..2500).collect::<Vec<_>>());
    });
}

/// logrotate's `create` mode: rename the file, create an empty one, SIGHUP.
/// The server keeps running, logs its counters, and the two files hold
/// every record exactly once, in order.
#[test]
fn sighup_after_logrotate_create_splits_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out.log");
        let rotated = dir.join("out.log.1");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9702", "--path", s(&out)],
            &[9702],
        );
        let to: SocketAddr = "127.0.0.1:9702".parse().unwrap();
        let sock = sender();
        send(&sock, to, 0..1500);
        wait_received(&server, 1500);
        std::fs::rename(&out, &rotated).unwrap();
        std::fs::File::create(&out).unwrap();
        // records in flight between the rename and the signal go to the old file
        send(&sock, to, 1500..1700);
        signal(server.id(), libc::SIGHUP);
        wait_until(TIMEOUT, "the SIGHUP to be handled", || {
            server
                .stderr_text()
                .contains("SIGHUP: reopened 1 output files")
        });
        send(&sock, to, 1700..3000);
        let c = wait_received(&server, 3000);
        assert_eq!(c.records_lost, 0);
        let log = stop(server);
        let summaries = log.matches(" datagrams (").count();
        assert!(
            summaries >= 2,
            "counters logged on SIGHUP and at exit: {log}"
        );
        let mut both = std::fs::read(&rotated).unwrap();
        let second = std::fs::read(&out).unwrap();
        assert!(!second.is_empty(), "nothing written after the reopen");
        both.extend(second);
        assert_eq!(
            both,
            records(0..3000),
            "the two files together are not the stream"
        );
    });
}

/// `mproxy-server --path - | head -2`: once the reader is gone the server
/// stops by itself, with its summary, exit code 1, even with no more
/// traffic to write.
#[test]
fn closed_stdout_stops_the_server_with_a_summary() {
    in_netns(|_| {
        let mut server = spawn(
            Command::new(bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9703", "--path", "-"])
                .stdout(Stdio::piped()),
        );
        wait_for_udp_bound(9703, TIMEOUT);
        let to: SocketAddr = "127.0.0.1:9703".parse().unwrap();
        let sock = sender();
        send(&sock, to, 0..10);
        let stdout = server.child_mut().stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        for i in 0..2 {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            assert_eq!(line, record(i));
        }
        drop(reader); // what head does after two lines
        let status = server
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "still running 10 s after its reader left: {}",
                    server.stderr_text()
                )
            });
        let log = server.stderr_text();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("stopped: output closed by its reader"),
            "{log}"
        );
        assert!(log.contains("received 10 datagrams"), "{log}");
    });
}

/// Also when the reader leaves while data keeps coming: the next write
/// fails with EPIPE and the server stops, counting what it could not write.
#[test]
fn broken_pipe_while_writing_stops_the_server() {
    in_netns(|_| {
        let mut server = spawn(
            Command::new(bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9704", "--path", "-"])
                .stdout(Stdio::piped()),
        );
        wait_for_udp_bound(9704, TIMEOUT);
        drop(server.child_mut().stdout.take());
        let to: SocketAddr = "127.0.0.1:9704".parse().unwrap();
        let sock = sender();
        let mut sent = 0;
        let status = loop {
            if let Some(st) = server.wait_timeout(Duration::from_millis(50)) {
                break st;
            }
            assert!(sent < 100_000, "still running: {}", server.stderr_text());
            send(&sock, to, sent..sent + 100);
            sent += 100;
        };
        let log = server.stderr_text();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("stopped: output closed by its reader"),
            "{log}"
        );
        assert!(!log.contains("(0 records"), "{log}");
    });
}

/// Emit one mpx DATA frame
fn frame(session: u64, flags: Flags, payload: &[u8]) -> Vec<u8> {
    let repr = Repr {
        frame_type: FrameType::Data,
        flags,
        session,
        stream: 1,
        seq: 0,
    };
    let mut buf = vec![0u8; repr.buffer_len(payload.len())];
    let n = repr.emit_with_payload(&mut buf, payload).unwrap();
    buf.truncate(n);
    buf
}

/// Issue 13, attack 7: a 1024-descriptor limit, 2,000 hostile sessions
/// that each carry one byte (and stay open), 3,000 OPEN|FIN sessions with
/// no data, and a legitimate 4 MiB mpx stream: the legitimate file is
/// byte-exact with no write error, and there is one file per stream that
/// carried data, none for the others.
#[test]
fn descriptor_limit_with_a_session_flood() {
    in_netns(|_| {
        if Command::new("prlimit").arg("--version").output().is_err() {
            skip("prlimit (util-linux) is not installed");
            return;
        }
        let dir = TempDir::new();
        let outdir = dir.join("out");
        let input = dir.join("in");
        line_file(&input, 4 << 20, 13);
        let template = outdir.join("{session}-{stream}.log");
        let server_bin = bin("mproxy-server");
        let server = spawn(
            Command::new("prlimit")
                .args(["--nofile=1024:1024", "--"])
                .arg(&server_bin)
                .args([
                    "--listen-addr",
                    "127.0.0.1:9705",
                    "--max-streams",
                    "8192",
                    "--path",
                    s(&template),
                ])
                .stdout(Stdio::null()),
        );
        wait_for_udp_bound(9705, TIMEOUT);
        let to: SocketAddr = "127.0.0.1:9705".parse().unwrap();
        let sock = sender();
        let mut sent = 0u64;
        for i in 0..5000u64 {
            let f = if i % 5 < 2 {
                frame(0x1000_0000_0000_0000 + i, Flags::OPEN, b"x")
            } else {
                frame(
                    0x2000_0000_0000_0000 + i,
                    Flags(Flags::OPEN.0 | Flags::FIN.0),
                    b"",
                )
            };
            sock.send_to(&f, to).unwrap();
            sent += 1;
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        wait_received(&server, sent);
        let mut client = start(
            "mproxy-client",
            &[
                "--mpx",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9705",
                "--rate",
                "200mbit",
            ],
        );
        let status = client
            .wait_timeout(TIMEOUT)
            .unwrap_or_else(|| panic!("client still running: {}", client.stderr_text()));
        assert!(status.success(), "{}", client.stderr_text());
        wait_until(TIMEOUT, "the legitimate stream to close", || {
            server.stderr_text().contains("reason=Fin")
        });
        let log = stop(server);
        assert!(
            log.contains("at most ") && log.contains("output files open at once"),
            "{log}"
        );
        let summary = log
            .lines()
            .rev()
            .find(|l| l.contains(" datagrams ("))
            .unwrap();
        assert!(summary.contains(", 0 write errors"), "{summary}");
        assert!(!summary.contains("records,"), "{summary}");
        let mut hostile = 0;
        let mut legit = Vec::new();
        for e in std::fs::read_dir(&outdir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.starts_with("1000") {
                hostile += 1;
                assert_eq!(std::fs::read(outdir.join(&name)).unwrap(), b"x", "{name}");
            } else if name.starts_with("2000") {
                panic!("{name}: a file for a stream that carried no data");
            } else {
                legit.push(name);
            }
        }
        assert_eq!(
            hostile, 2000,
            "one file per hostile stream that carried data"
        );
        assert_eq!(legit.len(), 1, "{legit:?}");
        assert_files_equal(&input, outdir.join(&legit[0]));
    });
}

/// The soft descriptor limit is raised to the hard one at start, and a
/// limit too low for per-stream files is a start-up error (exit 2).
#[test]
fn descriptor_limit_raised_or_refused() {
    in_netns(|_| {
        if Command::new("prlimit").arg("--version").output().is_err() {
            skip("prlimit (util-linux) is not installed");
            return;
        }
        let dir = TempDir::new();
        let server = spawn(
            Command::new("prlimit")
                .args(["--nofile=256:4096", "--"])
                .arg(bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9706", "--path"])
                .arg(dir.join("{session}.log"))
                .stdout(Stdio::null()),
        );
        wait_for_udp_bound(9706, TIMEOUT);
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(nums, ["4096", "4096"], "{line}");
        stop(server);

        let out = mproxy_e2e::run_cmd(
            Command::new("prlimit")
                .args(["--nofile=70:70", "--"])
                .arg(bin("mproxy-server"))
                .args(["--listen-addr", "127.0.0.1:9707", "--path"])
                .arg(dir.join("{session}.log")),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("descriptor limit 70"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    });
}
