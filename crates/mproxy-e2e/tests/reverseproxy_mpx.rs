//! `mproxy-reverseproxy --mpx` into a real `mproxy-server`: every input
//! connection must come out as its own stream file, byte for byte

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use mproxy_e2e::{start, start_server, stop, TIMEOUT};
use mproxy_testsupport::{in_netns, line_file, wait_for_tcp_bound, wait_until, TempDir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sum of the sizes of the files in `dir` (0 if it does not exist yet)
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn reverseproxy_mpx_connections_become_server_stream_files() {
    in_netns(|_| {
        let dir = TempDir::new();
        let inputs = [dir.join("a.txt"), dir.join("b.txt")];
        line_file(&inputs[0], 1 << 20, 21);
        line_file(&inputs[1], 1 << 20, 22);
        let data: Vec<Vec<u8>> = inputs.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let total: u64 = data.iter().map(|d| d.len() as u64).sum();

        let template = dir.join("out/{session}-{stream}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9981",
                "--path",
                s(&template),
                "--accept",
                "mpx",
            ],
            &[9981],
        );
        let proxy = start(
            "mproxy-reverseproxy",
            &[
                "--mpx",
                "--framing",
                "lines",
                "--tcp-listen-addr",
                "127.0.0.1:9980",
                "--udp-output-addr",
                "127.0.0.1:9981",
            ],
        );
        wait_for_tcp_bound(9980, TIMEOUT);
        // the output's group socket exists once the proxy says it started
        wait_until(TIMEOUT, "the reverse proxy to start", || {
            proxy.stderr_text().contains("started")
        });

        // two connections at once, each paced to ~4 MB/s
        let feeds: Vec<_> = data
            .iter()
            .cloned()
            .map(|d| {
                let mut conn = TcpStream::connect("127.0.0.1:9980").unwrap();
                thread::spawn(move || {
                    for chunk in d.chunks(4096) {
                        conn.write_all(chunk).unwrap();
                        thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for f in feeds {
            f.join().unwrap();
        }
        let out = dir.join("out");
        wait_until(TIMEOUT, "both streams written", || dir_bytes(&out) >= total);
        // both streams end with FIN (the server logs their close)
        wait_until(TIMEOUT, "both streams closed", || {
            server.stderr_text().matches("stream closed: ").count() >= 2
        });
        let proxy_log = stop(proxy);
        let server_log = stop(server);

        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            2,
            "one file per connection: {:?}\n{server_log}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        // same session, streams 1 and 2 (which connection got which id is
        // up to the accept order)
        let session = files[0].0.split_once('-').unwrap().0.to_string();
        for (name, _) in &files {
            assert!(name.starts_with(&format!("{session}-")), "{name}");
        }
        let mut ids: Vec<String> = files
            .iter()
            .map(|(n, _)| n.split_once('-').unwrap().1.to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["1.log", "2.log"]);
        for want in &data {
            let found = files.iter().filter(|(_, got)| got == want).count();
            assert_eq!(found, 1, "an input is not exactly one stream file");
        }
        let clean = server_log
            .lines()
            .filter(|l| {
                l.contains("stream closed: ")
                    && l.contains(" 0 gaps (0 lost), 0 dups")
                    && l.contains("reason=Fin")
            })
            .count();
        assert_eq!(clean, 2, "both streams close without loss:\n{server_log}");
        assert!(
            proxy_log.contains("tcp input 127.0.0.1:9980: 2 connections (0 rejected)"),
            "{proxy_log}"
        );
    });
}
