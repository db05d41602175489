//! Interoperability with UDP peers written elsewhere, in raw mode (plain
//! UDP payloads, no framing of our own): `socat` as sender and as receiver,
//! and the published mproxy 0.1.8 `mproxy-client` / `mproxy-server` from
//! crates.io. Every test runs in its own network namespace.
//!
//! Loss on loopback is the only source of flakiness here, so every transfer
//! is sized to fit the receiver's socket buffer and/or paced, and every
//! comparison stays byte-exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mproxy_e2e::{run_cmd, run_ok, start_server, stop, wait_for_len, TIMEOUT};
use mproxy_testsupport::{
    assert_files_equal, in_netns, line_file, mproxy_peer, random_file, skip, socat, spawn,
    wait_for_udp_bound, ChildGuard, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `socat`, or a visible skip
fn socat_or_skip() -> Option<PathBuf> {
    let found = socat();
    if found.is_none() {
        skip("socat not installed");
    }
    found
}

/// The published 0.1.8 binary `name`, or a visible skip
fn peer_or_skip(name: &str) -> Option<PathBuf> {
    match mproxy_peer(name) {
        Ok(p) => Some(p),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

/// Our server's exit summary must show a clean receive
fn assert_clean_server(stderr: &str) {
    assert!(
        stderr.contains(" 0 truncated, 0 kernel drops, 0 recv errors"),
        "{stderr}"
    );
}

/// `socat -u <socat_args...> OPEN:<input> <dest>` → our `mproxy-server`
/// listening on `listen` (`port`); the log must equal the input.
fn socat_to_server(
    socat: &Path,
    input: &Path,
    socat_args: &[&str],
    dest: &str,
    listen: &str,
    port: u16,
    server_extra: &[&str],
) {
    let dir = TempDir::new();
    let out = dir.join("out");
    let len = std::fs::metadata(input).unwrap().len();
    let mut args = vec!["--listen-addr", listen, "--path", s(&out)];
    args.extend_from_slice(server_extra);
    let server = start_server(&args, &[port]);
    // socat -u reads the file in -b sized chunks and sends each as one
    // datagram, unpaced; it exits once the file is sent.
    let open = format!("OPEN:{}", s(input));
    let sent = run_cmd(
        Command::new(socat)
            .arg("-u")
            .args(socat_args)
            .args([open.as_str(), dest]),
    );
    assert!(
        sent.status.success(),
        "socat failed ({}): {}",
        sent.status,
        String::from_utf8_lossy(&sent.stderr)
    );
    wait_for_len(&out, len);
    assert_clean_server(&stop(server));
    assert_files_equal(input, &out);
}

/// A `socat -u <source> OPEN:<out>,creat,trunc` receiver, once its UDP
/// port is bound
fn start_socat_receiver(socat: &Path, source: &str, port: u16, out: &Path) -> ChildGuard {
    let sink = format!("OPEN:{},creat,trunc", s(out));
    let guard = spawn(
        Command::new(socat)
            .args(["-u", source, sink.as_str()])
            .stdout(Stdio::null()),
    );
    wait_for_udp_bound(port, TIMEOUT);
    guard
}

/// Our `mproxy-client --server-addr dest` → `socat -u <source> OPEN:<out>`;
/// socat never exits on its own, so it is stopped once the output has the
/// input's size, and the output must equal the input.
fn client_to_socat(
    socat: &Path,
    input: &Path,
    source: &str,
    port: u16,
    dest: &str,
    client_extra: &[&str],
) {
    let dir = TempDir::new();
    let out = dir.join("out");
    let len = std::fs::metadata(input).unwrap().len();
    let mut receiver = start_socat_receiver(socat, source, port, &out);
    let mut args = vec!["--path", s(input), "--server-addr", dest];
    args.extend_from_slice(client_extra);
    let client = run_ok("mproxy-client", &args);
    let summary = String::from_utf8_lossy(&client.stderr);
    assert!(summary.contains(", 0 send errors"), "{summary}");
    wait_for_len(&out, len);
    receiver.terminate();
    if receiver.wait_timeout(Duration::from_secs(10)).is_none() {
        receiver.kill();
    }
    assert_files_equal(input, &out);
}

/// socat's receive buffer for our (paced) client: 4 MiB requested, which
/// the kernel doubles; far more than any input here
const SOCAT_RCVBUF: &str = "rcvbuf=4194304";

#[test]
fn socat_sends_ipv4_unicast_to_server() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        // 32 datagrams of 8192 bytes (socat's default -b): well inside our
        // server's receive buffer (8 MiB by default), so no pacing needed.
        line_file(&input, 256 << 10, 11);
        socat_to_server(
            &socat,
            &input,
            &[],
            "UDP-SENDTO:127.0.0.1:9960",
            "127.0.0.1:9960",
            9960,
            &[],
        );
    });
}

#[test]
fn socat_sends_ipv4_unicast_small_datagrams_to_server() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("random.bin");
        // ~190 datagrams of 1400 bytes: still inside the receive buffer
        random_file(&input, 256 << 10, 12);
        socat_to_server(
            &socat,
            &input,
            &["-b", "1400"],
            "UDP-SENDTO:127.0.0.1:9961",
            "127.0.0.1:9961",
            9961,
            &["--rcvbuf", "8MiB"],
        );
    });
}

#[test]
fn socat_sends_ipv4_multicast_to_server() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 256 << 10, 13);
        socat_to_server(
            &socat,
            &input,
            &["-b", "1400"],
            "UDP-SENDTO:239.255.2.2:9962,ip-multicast-loop=1,ip-multicast-if=127.0.0.1",
            "239.255.2.2:9962",
            9962,
            &["--iface", "lo"],
        );
    });
}

#[test]
fn client_sends_ipv4_unicast_to_socat() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 1 << 20, 14);
        client_to_socat(
            &socat,
            &input,
            &format!("UDP-RECV:9963,{SOCAT_RCVBUF}"),
            9963,
            "127.0.0.1:9963",
            &["--rate", "50mbit"],
        );
    });
}

#[test]
fn client_sends_ipv4_multicast_to_socat() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 1 << 20, 15);
        client_to_socat(
            &socat,
            &input,
            &format!("UDP-RECV:9964,ip-add-membership=239.255.2.3:127.0.0.1,{SOCAT_RCVBUF}"),
            9964,
            "239.255.2.3:9964",
            &["--rate", "50mbit", "--iface", "lo"],
        );
    });
}

#[test]
fn socat_ipv6_unicast_both_directions() {
    in_netns(|_| {
        let Some(socat) = socat_or_skip() else { return };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 256 << 10, 16);
        socat_to_server(
            &socat,
            &input,
            &["-b", "1400"],
            "UDP6-SENDTO:[::1]:9965",
            "[::1]:9965",
            9965,
            &[],
        );
        client_to_socat(
            &socat,
            &input,
            &format!("UDP6-RECV:9966,{SOCAT_RCVBUF}"),
            9966,
            "[::1]:9966",
            &["--rate", "50mbit"],
        );
    });
}

/// Starts the published `mproxy-server` with `args`, its stdout to
/// `stdout_path`, and waits for its UDP `port`.
///
/// It never exits on its own (and has no signal handling): kill it.
fn start_published_server(peer: &Path, args: &[&str], port: u16, stdout_path: &Path) -> ChildGuard {
    let stdout = File::create(stdout_path).unwrap();
    let guard = spawn(Command::new(peer).args(args).stdout(stdout));
    wait_for_udp_bound(port, TIMEOUT);
    guard
}

/// Names in `dir`, sorted
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn client_sends_to_published_server() {
    in_netns(|_| {
        let Some(peer) = peer_or_skip("mproxy-server") else {
            return;
        };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        // The 0.1.8 server keeps the kernel's default receive buffer
        // (net.core.rmem_default, typically 208 KiB) and does a write(2)
        // per datagram: a small input at a modest rate never fills it.
        line_file(&input, 128 << 10, 21);
        let len = std::fs::metadata(&input).unwrap().len();
        let out = dir.join("out.log");
        let stdout_path = dir.join("server.stdout");
        let mut server = start_published_server(
            &peer,
            &["--path", s(&out), "--listen-addr", "127.0.0.1:9970"],
            9970,
            &stdout_path,
        );
        // Our default --max-datagram (1472) is below its 8096-byte buffer.
        let client = run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9970",
                "--rate",
                "10mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr);
        assert!(summary.contains(", 0 send errors"), "{summary}");
        wait_for_len(&out, len);
        server.kill();
        // With ONE --listen-addr it appends to --path as given (no suffix;
        // with several it would write `<path><path>.<addr>` per address) and
        // says so on stdout.
        assert_eq!(
            std::fs::read_to_string(&stdout_path).unwrap(),
            format!("logging transmissions from 127.0.0.1:9970 to {}\n", s(&out))
        );
        assert_eq!(
            dir_names(dir.path()),
            ["lines.txt", "out.log", "server.stdout"]
        );
        assert_files_equal(&input, &out);
    });
}

#[test]
fn published_server_truncates_datagrams_over_8096_bytes() {
    // Documents a limit of the 0.1.8 server: it receives into an 8096-byte
    // buffer, so longer datagrams lose their tail silently. Our client must
    // keep --max-datagram at or below 8096 when feeding it.
    in_netns(|_| {
        let Some(peer) = peer_or_skip("mproxy-server") else {
            return;
        };
        let dir = TempDir::new();
        let input = dir.join("random.bin");
        random_file(&input, 4 * 8192, 22);
        let out = dir.join("out.log");
        let mut server = start_published_server(
            &peer,
            &["--path", s(&out), "--listen-addr", "127.0.0.1:9971"],
            9971,
            &dir.join("server.stdout"),
        );
        run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9971",
                "--framing",
                "bytes",
                "--max-datagram",
                "8192",
                "--rate",
                "10mbit",
            ],
        );
        let data = std::fs::read(&input).unwrap();
        let want: Vec<u8> = data
            .chunks(8192)
            .flat_map(|c| c[..8096].iter().copied())
            .collect();
        wait_for_len(&out, want.len() as u64);
        server.kill();
        assert!(
            std::fs::read(&out).unwrap() == want,
            "expected each 8192-byte datagram cut to its first 8096 bytes"
        );
    });
}

/// Runs the published `mproxy-client --path input --server-addr dest` to
/// completion and checks what it prints.
fn run_published_client(peer: &Path, input: &Path, dest: &str) {
    let out = run_cmd(Command::new(peer).args(["--path", s(input), "--server-addr", dest]));
    assert!(
        out.status.success(),
        "published mproxy-client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // One status line per destination on stdout (so --tee output is mixed
    // with it), nothing on stderr.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("logging from {}: sending to {dest}\n", s(input))
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn published_client_sends_to_server() {
    in_netns(|_| {
        let Some(peer) = peer_or_skip("mproxy-client") else {
            return;
        };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        // The 0.1.8 client sends unpaced, one datagram per read: 8096 and
        // 96 bytes alternately (an 8096-byte read through an 8 KiB
        // BufReader). 160 KiB is 40 datagrams, far inside our 8 MiB buffer.
        // The size is a multiple of 8192 so that no read is a lone "\n"
        // (see the next test).
        line_file(&input, 160 << 10, 23);
        let out = dir.join("out");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9972",
                "--path",
                s(&out),
                "--rcvbuf",
                "8MiB",
            ],
            &[9972],
        );
        run_published_client(&peer, &input, "127.0.0.1:9972");
        wait_for_len(&out, std::fs::metadata(&input).unwrap().len());
        let text = stop(server);
        assert_clean_server(&text);
        assert!(text.contains("received 40 datagrams"), "{text}");
        assert_files_equal(&input, &out);
    });
}

#[test]
fn published_client_drops_a_read_that_is_a_lone_newline() {
    // Documents a quirk of the 0.1.8 client: it skips any read(2) result
    // that is exactly "\n" (meant to skip empty lines on stdin). With a
    // file, reads are 8096 then 96 bytes per 8 KiB block, so a file whose
    // length is 1 more than a multiple of 8192 loses its final newline.
    in_netns(|_| {
        let Some(peer) = peer_or_skip("mproxy-client") else {
            return;
        };
        let dir = TempDir::new();
        let input = dir.join("lines.txt");
        line_file(&input, 2 * 8192 + 1, 24);
        let data = std::fs::read(&input).unwrap();
        assert_eq!(data.last(), Some(&b'\n'));
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9973", "--path", s(&out)],
            &[9973],
        );
        run_published_client(&peer, &input, "127.0.0.1:9973");
        // A sentinel sent after the client has exited marks the end of its
        // stream (so the server is not stopped before a late datagram).
        let sentinel = UdpSocket::bind("127.0.0.1:0").unwrap();
        sentinel.send_to(b"END\n", "127.0.0.1:9973").unwrap();
        let mut want = data[..data.len() - 1].to_vec();
        want.extend_from_slice(b"END\n");
        wait_for_len(&out, want.len() as u64);
        let text = stop(server);
        assert_clean_server(&text);
        // 8096 + 96 + 8096 + 96 bytes, then the "\n" read is not sent
        assert!(text.contains("received 5 datagrams"), "{text}");
        assert!(
            std::fs::read(&out).unwrap() == want,
            "expected everything but the final newline, then the sentinel"
        );
    });
}
