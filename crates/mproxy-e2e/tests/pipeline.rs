//! The real binaries end to end, each test in its own network namespace

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use mproxy_e2e::{reached_len, run_ok, start, start_server, stop, wait_for_len, TIMEOUT};
use mproxy_testsupport::{
    assert_files_equal, in_netns, line_file, random_file, wait_for_tcp_listen, wait_for_udp_bound,
    wait_until, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// client --path input --server-addr dest → server(s) listening on `listen`
fn transfer(
    input: &Path,
    listen: &str,
    dest: &str,
    port: u16,
    server_extra: &[&str],
    client_extra: &[&str],
    receivers: usize,
) {
    let dir = TempDir::new();
    let len = std::fs::metadata(input).unwrap().len();
    let outs: Vec<_> = (0..receivers)
        .map(|i| dir.join(format!("out{i}")))
        .collect();
    let servers: Vec<_> = outs
        .iter()
        .map(|out| {
            let mut args = vec!["--listen-addr", listen, "--path", s(out)];
            args.extend_from_slice(server_extra);
            start_server(&args, &[port])
        })
        .collect();
    let mut args = vec!["--path", s(input), "--server-addr", dest];
    args.extend_from_slice(client_extra);
    let client = run_ok("mproxy-client", &args);
    let summary = String::from_utf8_lossy(&client.stderr);
    assert!(
        summary.contains("done: read") && summary.contains(", 0 send errors"),
        "{summary}"
    );
    let complete: Vec<bool> = outs
        .iter()
        .map(|out| reached_len(out, len, Duration::from_secs(30)))
        .collect();
    for (server, out) in servers.into_iter().zip(&outs) {
        let text = stop(server);
        let got = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        assert!(
            got == len,
            "{}: {got} of {len} bytes; server said: {text}",
            out.display()
        );
        assert!(
            text.contains(" 0 truncated, 0 kernel drops, 0 recv errors"),
            "{text}"
        );
    }
    assert!(complete.iter().all(|c| *c));
    for out in &outs {
        assert_files_equal(input, out);
    }
}

#[test]
fn client_server_ipv4_unicast_20mb_lines() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 20 << 20, 1);
        transfer(
            &input,
            "127.0.0.1:9920",
            "127.0.0.1:9920",
            9920,
            &[],
            &["--rate", "200mbit"],
            1,
        );
    });
}

#[test]
fn client_server_ipv4_unicast_20mb_random() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("random.bin");
        random_file(&input, 20 << 20, 2);
        transfer(
            &input,
            "127.0.0.1:9920",
            "127.0.0.1:9920",
            9920,
            &[],
            &[
                "--rate",
                "300mbit",
                "--framing",
                "bytes",
                "--max-datagram",
                "8192",
            ],
            1,
        );
    });
}

#[test]
fn client_server_ipv6_unicast() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 4 << 20, 3);
        transfer(
            &input,
            "[::1]:9921",
            "[::1]:9921",
            9921,
            &[],
            &["--rate", "200mbit"],
            1,
        );
    });
}

#[test]
fn client_server_ipv4_multicast_two_receivers_one_port() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 8 << 20, 4);
        transfer(
            &input,
            "239.255.1.1:9922",
            "239.255.1.1:9922",
            9922,
            &["--iface", "lo"],
            &["--rate", "100mbit", "--iface", "lo"],
            2,
        );
    });
}

#[test]
fn client_server_ipv6_multicast_over_veth() {
    in_netns(|ns| {
        let pair = ns.veth_pair("mpx0", "mpx1");
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 4 << 20, 5);
        let _ = pair;
        transfer(
            &input,
            "[ff15::1:18]:9923",
            "[ff15::1:18]:9923",
            9923,
            &["--iface", "mpx1"],
            &["--rate", "100mbit", "--iface", "mpx0", "--loop", "off"],
            2,
        );
    });
}

#[test]
fn client_stdin_to_server_with_tee() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9924", "--path", s(&out)],
            &[9924],
        );
        let mut client = std::process::Command::new(mproxy_testsupport::bin("mproxy-client"))
            .args(["--path", "-", "--server-addr", "127.0.0.1:9924", "--tee"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        // a line typed on stdin is on the wire before the next one is written
        stdin.write_all(b"$GPGGA,first line\n").unwrap();
        stdin.flush().unwrap();
        wait_for_len(&out, 18);
        stdin.write_all(b"second line, no newline").unwrap();
        drop(stdin);
        let output = mproxy_e2e::run_cmd_wait(client);
        assert!(output.status.success());
        // tee copies exactly the input, and no status text, to stdout
        assert_eq!(output.stdout, b"$GPGGA,first line\nsecond line, no newline");
        wait_for_len(&out, 41);
        stop(server);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"$GPGGA,first line\nsecond line, no newline"
        );
    });
}

#[test]
fn chain_client_proxy_reverseproxy_to_tcp_and_udp() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 4 << 20, 6);
        let len = std::fs::metadata(&input).unwrap().len();
        let udp_out = dir.join("udp-output");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9941", "--path", s(&udp_out)],
            &[9941],
        );
        let rproxy = start(
            "mproxy-reverseproxy",
            &[
                "--udp-listen-addr",
                "127.0.0.1:9921",
                "--multicast-addr",
                "239.255.77.18:9918",
                "--tcp-output-addr",
                "127.0.0.1:9930",
                "--udp-output-addr",
                "127.0.0.1:9941",
            ],
        );
        wait_for_udp_bound(9921, TIMEOUT);
        wait_for_tcp_listen("127.0.0.1:9930".parse().unwrap(), TIMEOUT);
        let proxy = start(
            "mproxy-proxy",
            &[
                "--udp-listen-addr",
                "127.0.0.1:9910",
                "--udp-downstream-addr",
                "127.0.0.1:9921",
            ],
        );
        wait_for_udp_bound(9910, TIMEOUT);
        let tcp = std::thread::spawn(move || {
            let mut conn = TcpStream::connect("127.0.0.1:9930").unwrap();
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while (got.len() as u64) < len {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        });
        // give the TCP client time to be registered by the reverse proxy
        wait_until(TIMEOUT, "reverse proxy to accept the TCP client", || {
            std::fs::read_to_string("/proc/thread-self/net/tcp")
                .map(|t| {
                    t.lines()
                        .filter(|l| l.contains(&format!(":{:04X} ", 9930)) && l.contains(" 01 "))
                        .count()
                        >= 2
                })
                .unwrap_or(false)
        });
        std::thread::sleep(Duration::from_millis(200));
        run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9910",
                "--rate",
                "100mbit",
            ],
        );
        let got = tcp.join().unwrap();
        wait_for_len(&udp_out, len);
        stop(proxy);
        stop(rproxy);
        stop(server);
        assert_eq!(
            got.len() as u64,
            len,
            "TCP client got {} of {len} bytes",
            got.len()
        );
        assert!(
            got == std::fs::read(&input).unwrap(),
            "TCP client data differs"
        );
        assert_files_equal(&input, &udp_out);
    });
}

#[test]
fn proxy_reconnects_to_restarted_tcp_upstream() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let part_a: Vec<u8> = (0..2000)
            .flat_map(|i| format!("A,{i},feed before restart\n").into_bytes())
            .collect();
        let part_b: Vec<u8> = (0..2000)
            .flat_map(|i| format!("B,{i},feed after restart\n").into_bytes())
            .collect();
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9951", "--path", s(&out)],
            &[9951],
        );
        let listener = TcpListener::bind("127.0.0.1:9950").unwrap();
        let proxy = start(
            "mproxy-proxy",
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9950",
                "--udp-downstream-addr",
                "127.0.0.1:9951",
                "--framing",
                "lines",
                "--reconnect-max",
                "1",
            ],
        );
        let (mut conn, _) = listener.accept().unwrap();
        drop(listener); // the upstream goes away entirely: reconnects are refused
        conn.write_all(&part_a).unwrap();
        drop(conn);
        wait_for_len(&out, part_a.len() as u64);
        std::thread::sleep(Duration::from_millis(1500));
        let listener = TcpListener::bind("127.0.0.1:9950").unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&part_b).unwrap();
        drop(conn);
        let total = (part_a.len() + part_b.len()) as u64;
        wait_for_len(&out, total);
        let text = stop(proxy);
        stop(server);
        let mut want = part_a.clone();
        want.extend_from_slice(&part_b);
        assert!(
            std::fs::read(&out).unwrap() == want,
            "output differs from the two feed parts"
        );
        assert!(text.contains("tcp 127.0.0.1:9950: 2 connects"), "{text}");
        assert!(
            !text.contains(" 0 failed attempts"),
            "refused attempts not counted: {text}"
        );
    });
}

#[test]
fn proxy_mpx_frames_tcp_and_udp_inputs_as_separate_streams() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("udp-input.txt");
        line_file(&input, 1 << 20, 11);
        let feed: Vec<u8> = (0..5000)
            .flat_map(|i| format!("!AIVDM,1,1,,A,tcp feed line {i},0*00\n").into_bytes())
            .collect();
        let template = dir.join("out/{session}-{stream}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9961",
                "--path",
                s(&template),
                "--accept",
                "mpx",
            ],
            &[9961],
        );
        let listener = TcpListener::bind("127.0.0.1:9962").unwrap();
        let proxy = start(
            "mproxy-proxy",
            &[
                "--mpx",
                "--framing",
                "lines",
                "--udp-listen-addr",
                "127.0.0.1:9960",
                "--tcp-connect-addr",
                "127.0.0.1:9962",
                "--udp-downstream-addr",
                "127.0.0.1:9961",
            ],
        );
        wait_for_udp_bound(9960, TIMEOUT);
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&feed).unwrap();
        drop(conn);
        run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9960",
                "--rate",
                "100mbit",
            ],
        );
        let total = feed.len() as u64 + std::fs::metadata(&input).unwrap().len();
        wait_until(TIMEOUT, "both streams written", || {
            std::fs::read_dir(dir.join("out"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum::<u64>()
                        >= total
                })
                .unwrap_or(false)
        });
        stop(proxy);
        let text = stop(server);
        let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir.join("out"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        files.sort_by_key(Vec::len);
        assert_eq!(files.len(), 2, "one file per stream: {text}");
        assert!(files[0] == feed, "TCP connection's stream differs");
        assert!(
            files[1] == std::fs::read(&input).unwrap(),
            "UDP listener's stream differs"
        );
        let clean = text
            .lines()
            .filter(|l| l.contains("stream closed: ") && l.contains(" 0 gaps (0 lost), 0 dups"))
            .count();
        assert_eq!(clean, 2, "both streams close without loss: {text}");
    });
}

#[test]
fn source_specific_join_filters_by_sender() {
    in_netns(|ns| {
        let pair = ns.veth_pair("ssma", "ssmb");
        let dir = TempDir::new();
        let (good, other) = (dir.join("good"), dir.join("other"));
        let src = pair.a_v4.to_string();
        // joined for the real sender's address, and for an address nobody uses
        let s1 = start_server(
            &[
                "--listen-addr",
                "232.1.1.1:9970",
                "--iface",
                "ssmb",
                "--source",
                &src,
                "--path",
                s(&good),
            ],
            &[9970],
        );
        let s2 = start_server(
            &[
                "--listen-addr",
                "232.1.1.1:9970",
                "--iface",
                "ssmb",
                "--source",
                "10.200.1.99",
                "--path",
                s(&other),
            ],
            &[9970],
        );
        let input = dir.join("in.txt");
        line_file(&input, 200_000, 31);
        let client = run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "232.1.1.1:9970",
                "--iface",
                "ssma",
                "--loop",
                "off",
                "--rate",
                "20mbit",
            ],
        );
        let complete = reached_len(&good, 200_000, Duration::from_secs(20));
        let good_text = stop(s1);
        let text = stop(s2);
        assert!(
            complete,
            "client: {}\nserver: {good_text}\nlinks: {}",
            String::from_utf8_lossy(&client.stderr),
            ns.run("ip", &["-s", "link"])
        );
        assert_files_equal(&input, &good);
        assert_eq!(std::fs::metadata(&other).unwrap().len(), 0, "{text}");
        assert!(text.contains(": 0 datagrams"), "{text}");
    });
}

#[test]
fn failing_destination_is_counted_not_fatal() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9971", "--path", s(&out)],
            &[9971],
        );
        let input = dir.join("in.txt");
        line_file(&input, 300_000, 32);
        // 192.0.2.1 (TEST-NET-1) has no route in the private namespace
        let client = run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "192.0.2.1:9",
                "--server-addr",
                "127.0.0.1:9971",
                "--rate",
                "20mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr);
        wait_for_len(&out, 300_000);
        stop(server);
        assert_files_equal(&input, &out);
        let dead = summary
            .split("; ")
            .find(|d| d.starts_with("192.0.2.1:9"))
            .unwrap_or_else(|| panic!("{summary}"));
        assert!(
            dead.contains(": 0 datagrams") && !dead.contains(" 0 errors"),
            "{dead}"
        );
        assert!(
            summary.contains("127.0.0.1:9971: ") && summary.contains(", 0 errors"),
            "{summary}"
        );
        // logged, rate-limited: one warning line, not one per datagram
        assert_eq!(summary.matches("send of").count(), 1, "{summary}");
    });
}

/// Binary raw datagrams that happen to begin with the mpx magic (1 in
/// 65536 of random data; 5 in a 256 MiB file were dropped before this was
/// fixed) are written as raw in `--accept auto`, and counted
#[test]
fn raw_datagrams_that_look_like_mpx_frames_are_kept() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9972", "--path", s(&out)],
            &[9972],
        );
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut want = Vec::new();
        for (i, first) in [[0xa7u8, 0x4d, 0xf1], [0xa7, 0x4d, 0x11], [0x00, 0x01, 0x02]]
            .iter()
            .enumerate()
        {
            // an unknown version, a bad checksum, and plain data
            let mut d = first.to_vec();
            d.extend((0..40u8).map(|b| b.wrapping_mul(i as u8 + 3)));
            sock.send_to(&d, "127.0.0.1:9972").unwrap();
            want.extend_from_slice(&d);
        }
        wait_for_len(&out, want.len() as u64);
        let text = stop(server);
        assert!(std::fs::read(&out).unwrap() == want, "{text}");
        assert!(
            text.contains("2 raw datagrams that began like an mpx frame"),
            "{text}"
        );
    });
}
