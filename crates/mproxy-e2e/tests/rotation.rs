//! Built-in rotation and per-record metadata of `mproxy-server`:
//! `--rotate-size`, `--rotate-interval`, `{source}`/`{date}` path
//! templates and `--record-prefix`. Each test runs in its own network
//! namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod output_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use mproxy_e2e::{run, start_server, stop, TIMEOUT};
use mproxy_testsupport::{in_netns, wait_until, TempDir};
use output_support::{parse, record, records, send, sender, wait_received};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `out.log.1`, `out.log.2`, ... in numeric order, then `out.log`
fn rotated_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p
                .file_name()?
                .to_str()?
                .strip_prefix(name)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    numbered.sort();
    let mut v: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(name);
    if current.exists() {
        v.push(current);
    }
    v
}

/// 10,000 records of 20 to 200 bytes across `--rotate-size 100k`: every
/// file at most 100 KiB, holding whole records only, rotated only when the
/// next record would not fit, and the files in order are the stream.
#[test]
fn rotate_size_splits_between_records_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9710",
                "--path",
                s(&out),
                "--rotate-size",
                "100k",
            ],
            &[9710],
        );
        let to: SocketAddr = "127.0.0.1:9710".parse().unwrap();
        send(&sender(), to, 0..10_000);
        let c = wait_received(&server, 10_000);
        assert_eq!(c.records_lost, 0);
        let log = stop(server);
        let files = rotated_files(dir.path(), "out.log");
        let want = records(0..10_000);
        assert!(files.len() > want.len() / 102_400, "{files:?}");
        let mut all = Vec::new();
        let mut next = 0;
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                bytes.len() <= 102_400,
                "{}: {} bytes",
                f.display(),
                bytes.len()
            );
            let got = parse(&bytes, &f.display().to_string());
            assert_eq!(
                got.first(),
                Some(&next),
                "{} does not start where the last one ended",
                f.display()
            );
            next = got.last().unwrap() + 1;
            if i + 1 < files.len() {
                assert!(
                    bytes.len() + record(next).len() > 102_400,
                    "{} was rotated with room left for the next record",
                    f.display()
                );
            }
            all.extend(bytes);
        }
        assert_eq!(all, want, "the files in order are not the stream");
        assert!(
            log.contains(&format!("{} rotations (0 failed)", files.len() - 1)),
            "{log}"
        );
        eprintln!(
            "10,000 records, {} bytes, in {} files",
            want.len(),
            files.len()
        );
    });
}

/// `--rotate-interval 1s`: a file with data is rotated at the next second
/// boundary; an empty one is not.
#[test]
fn rotate_interval_rotates_at_boundaries() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("feed.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9711",
                "--path",
                s(&out),
                "--rotate-interval",
                "1s",
            ],
            &[9711],
        );
        let to: SocketAddr = "127.0.0.1:9711".parse().unwrap();
        let sock = sender();
        send(&sock, to, 0..1);
        wait_received(&server, 1);
        wait_until(TIMEOUT, "feed.log.1 to appear", || {
            dir.join("feed.log.1").exists()
        });
        send(&sock, to, 1..2);
        wait_received(&server, 2);
        stop(server);
        assert_eq!(std::fs::read(dir.join("feed.log.1")).unwrap(), record(0));
        let files = rotated_files(dir.path(), "feed.log");
        let all: Vec<u8> = files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect();
        assert_eq!(all, records(0..2), "{files:?}");
        for f in &files {
            assert!(
                std::fs::metadata(f).unwrap().len() > 0,
                "{} is empty",
                f.display()
            );
        }
    });
}

/// UTC date as `date -u +%F` prints it
fn utc_today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `{source}` and `{date}` in the path, and `--record-prefix` with the
/// receive time and the sender on every line, a final newline added
#[test]
fn source_and_date_templates_with_record_prefix() {
    in_netns(|_| {
        let dir = TempDir::new();
        let template = dir.join("{source}/{date}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9712",
                "--path",
                s(&template),
                "--record-prefix",
                "{time} {source}:{port} ",
            ],
            &[9712],
        );
        let to: SocketAddr = "127.0.0.1:9712".parse().unwrap();
        let a = UdpSocket::bind("127.0.0.1:40001").unwrap();
        let b = UdpSocket::bind("127.0.0.2:40002").unwrap();
        let before = utc_today();
        a.send_to(b"one\ntwo\n", to).unwrap();
        b.send_to(b"three", to).unwrap();
        a.send_to(b"four\n", to).unwrap();
        wait_received(&server, 3);
        let after = utc_today();
        stop(server);
        let read = |ip: &str| {
            let day = [&before, &after]
                .into_iter()
                .map(|d| dir.join(ip).join(format!("{d}.log")))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("no {ip}/{before}.log"));
            std::fs::read_to_string(day).unwrap()
        };
        let check = |text: String, source: &str, want: &[&str]| {
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), want.len(), "{text}");
            assert!(text.ends_with('\n'));
            for (line, w) in lines.iter().zip(want) {
                let (time, rest) = line.split_once(' ').unwrap();
                assert_eq!(rest, format!("{source} {w}"), "{line}");
                // 2024-02-29T01:01:01.000042Z
                assert_eq!(time.len(), 27, "{time}");
                assert!(
                    time.starts_with(&before) || time.starts_with(&after),
                    "{time}"
                );
                assert_eq!(
                    (&time[10..11], &time[19..20], &time[26..]),
                    ("T", ".", "Z"),
                    "{time}"
                );
            }
        };
        check(
            read("127.0.0.1"),
            "127.0.0.1:40001",
            &["one", "two", "four"],
        );
        check(read("127.0.0.2"), "127.0.0.2:40002", &["three"]);
    });
}

/// Bad rotation and template flags are one-line errors, exit 2
#[test]
fn bad_rotation_and_template_flags_exit_2() {
    in_netns(|_| {
        let dir = TempDir::new();
        let file = dir.join("f.log");
        let cases: &[(&[&str], &str)] = &[
            (&["--path", "-", "--rotate-size", "1M"], "--rotate-size"),
            (&["--tee", "--rotate-interval", "1h"], "--rotate-size"),
            (
                &["--path", s(&file), "--rotate-interval", "1w"],
                "invalid interval '1w'",
            ),
            (
                &["--path", s(&file), "--rotate-size", "lots"],
                "invalid size 'lots'",
            ),
            (&["--path", "x/{time}.log"], "{time}"),
            (&["--path", "x/%Q.log"], "'%Q'"),
            (
                &["--path", s(&file), "--record-prefix", "{host} "],
                "unknown placeholder '{host}'",
            ),
            (&["--path", "x/{stream}.log", "--accept", "raw"], "need mpx"),
        ];
        for (args, want) in cases {
            let mut all = vec!["--listen-addr", "127.0.0.1:9713"];
            all.extend_from_slice(args);
            let out = run("mproxy-server", &all);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: {err}");
        }
    });
}
