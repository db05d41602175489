//! UDP segmentation offload (GSO on send, GRO on receive): every datagram
//! arrives whole, in order and with its own size, whether or not the kernel
//! coalesced them, and the binaries move files byte-exact with it on and off

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mproxy_common::addr::Endpoint;
use mproxy_common::net::{
    bind_receiver, enable_gro, gso_run, gso_supported, Fanout, RecvBatch, SocketOptions,
    GSO_MAX_SEGMENTS, RECV_BUF_LEN,
};
use mproxy_e2e::{reached_len, run_ok, start_server, stop};
use mproxy_testsupport::{
    assert_files_equal, bin, in_netns, random_file, spawn, wait_until, PeerHost, TempDir,
};

/// Frames of mixed sizes: runs of equal size (longer than one GSO message),
/// a shorter frame ending a run, a longer one starting a new run, a 1-byte
/// frame, and a run of full 8 KiB frames
fn mixed_frames() -> Vec<Vec<u8>> {
    let mut sizes = Vec::new();
    sizes.extend(std::iter::repeat_n(1472, 150));
    sizes.push(100);
    sizes.extend(std::iter::repeat_n(1400, 3));
    sizes.push(1472);
    sizes.push(1);
    sizes.extend(std::iter::repeat_n(8192, 20));
    sizes.push(5);
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
        .collect()
}

/// A blocking receiver on 127.0.0.1:`port` with UDP GRO on (always: the
/// test reads it through RecvBatch) and a Fanout sending to it with `opts`
fn gro_pair(port: u16, opts: &SocketOptions) -> (UdpSocket, Fanout) {
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let rx = bind_receiver(listen, opts).unwrap();
    assert!(enable_gro(&rx), "UDP_GRO refused by this kernel");
    rx.set_nonblocking(false).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dest: Endpoint = listen.to_string().parse().unwrap();
    (rx, Fanout::new(&[dest], opts).unwrap())
}

/// Send `frames` with `Fanout::send_many` to a GRO receiver; what arrives
/// and in how many receive messages
fn gso_round_trip(frames: &[Vec<u8>], offload: bool) -> (Vec<Vec<u8>>, usize) {
    let opts = SocketOptions {
        offload,
        ..SocketOptions::default()
    };
    let (rx, fanout) = gro_pair(7301, &opts);
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(fanout.send_many(&refs), frames.len());
    let mut batch = RecvBatch::new(8, RECV_BUF_LEN);
    let mut got = Vec::new();
    let mut messages = 0;
    while got.len() < frames.len() {
        let n = batch.recv(&rx).expect("datagrams missing");
        messages += batch.messages();
        for i in 0..n {
            let (data, meta) = batch.get(i).unwrap();
            assert!(!meta.truncated());
            got.push(data.to_vec());
        }
    }
    (got, messages)
}

#[test]
fn gso_sends_arrive_as_the_same_datagrams_through_gro() {
    in_netns(|_| {
        let frames = mixed_frames();
        let (got, messages) = gso_round_trip(&frames, true);
        assert_eq!(got.len(), frames.len());
        for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
            assert_eq!(
                g,
                f,
                "datagram {i} differs ({} vs {} bytes)",
                g.len(),
                f.len()
            );
        }
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        if gso_supported(&probe) {
            // on loopback a GSO message reaches a GRO socket whole: the
            // 150-frame run alone needs at least 3 messages of 44 and 1
            assert!(
                messages < frames.len() / 4,
                "{messages} receive messages for {} datagrams: GSO/GRO not in use",
                frames.len()
            );
        }
    });
}

#[test]
fn offload_off_sends_one_datagram_per_message() {
    in_netns(|_| {
        let frames = mixed_frames();
        let (got, messages) = gso_round_trip(&frames, false);
        assert_eq!(got, frames);
        assert_eq!(messages, frames.len());
    });
}

#[test]
fn gso_runs_follow_the_kernel_rules() {
    let f = |sizes: &[usize]| -> usize {
        let frames: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        gso_run(&refs, usize::MAX)
    };
    assert_eq!(f(&[]), 0);
    assert_eq!(f(&[10]), 1);
    assert_eq!(f(&[10, 10, 10]), 3);
    assert_eq!(f(&[10, 10, 4, 10]), 3, "a shorter frame ends the run");
    assert_eq!(f(&[10, 11]), 1, "a longer frame cannot follow");
    assert_eq!(f(&[0, 0]), 1, "empty frames are sent alone");
    assert_eq!(f(&[10, 0]), 1);
    assert_eq!(f(&vec![100; 200]), GSO_MAX_SEGMENTS);
    assert_eq!(f(&vec![1472; 200]), 44, "65,000 bytes at most");
    assert_eq!(f(&[40_000; 3]), 1);
    let frames = [vec![0u8; 10], vec![0; 10]];
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(gso_run(&refs, 0), 1, "without GSO one frame per message");
    assert_eq!(gso_run(&refs, 9), 1, "segments over the limit go alone");
    assert_eq!(gso_run(&refs, 10), 2);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// client --framing bytes (full-size datagrams: GSO runs) → server(s)
fn transfer(listen: &str, receivers: usize, client_extra: &[&str], offload: &str) {
    let dir = TempDir::new();
    let input = dir.join("in");
    random_file(&input, 12 << 20, 61);
    let len = std::fs::metadata(&input).unwrap().len();
    let outs: Vec<_> = (0..receivers)
        .map(|i| dir.join(format!("out{i}")))
        .collect();
    let servers: Vec<_> = outs
        .iter()
        .map(|out| {
            start_server(
                &[
                    "--listen-addr",
                    listen,
                    "--path",
                    s(out),
                    "--offload",
                    offload,
                ],
                &[7302],
            )
        })
        .collect();
    let mut args = vec![
        "--path",
        s(&input),
        "--server-addr",
        listen,
        "--framing",
        "bytes",
        "--offload",
        offload,
    ];
    args.extend_from_slice(client_extra);
    let client = run_ok("mproxy-client", &args);
    let summary = String::from_utf8_lossy(&client.stderr);
    assert!(summary.contains(", 0 send errors"), "{summary}");
    for out in &outs {
        reached_len(out, len, Duration::from_secs(30));
    }
    for (server, out) in servers.into_iter().zip(&outs) {
        let text = stop(server);
        assert!(
            text.contains(&format!("gro={}", offload == "on")),
            "server did not say whether GRO is on: {text}"
        );
        assert_files_equal(&input, out);
    }
}

#[test]
fn mpx_file_transfer_with_offload_is_byte_exact() {
    in_netns(|_| {
        transfer(
            "127.0.0.1:7302",
            1,
            &["--mpx", "--max-datagram", "1472"],
            "on",
        )
    });
}

#[test]
fn raw_8k_file_transfer_with_offload_is_byte_exact() {
    in_netns(|_| {
        transfer(
            "127.0.0.1:7302",
            1,
            &["--max-datagram", "8192", "--rate", "400mbit"],
            "on",
        )
    });
}

#[test]
fn mpx_multicast_to_two_receivers_with_offload_is_byte_exact() {
    in_netns(|_| transfer("239.255.73.2:7302", 2, &["--mpx"], "on"));
}

#[test]
fn mpx_file_transfer_with_offload_off_is_byte_exact() {
    in_netns(|_| transfer("127.0.0.1:7302", 1, &["--mpx"], "off"));
}

/// client --mpx --framing bytes across a veth link (MTU 1500) to a server
/// on a second host; the output must be exact, `check` judges the client's
/// log (inside the namespace: the whole test re-runs there when it must)
fn across_veth(max_datagram: &str, check: impl FnOnce(&str)) {
    in_netns(|ns| {
        let host = PeerHost::new(ns);
        let link = host.link(ns, 1, None);
        let dir = TempDir::new();
        let input = dir.join("in");
        random_file(&input, 4 << 20, 62);
        let output = dir.join("out");
        let listen = format!("{}:7303", link.peer_addr);
        let mut cmd = host.command(bin("mproxy-server"));
        cmd.args(["--listen-addr", &listen, "--path", s(&output)]);
        let server = spawn(cmd.stdout(Stdio::null()));
        wait_until(Duration::from_secs(30), "server listening", || {
            host.run("ss", &["-H", "-uln", "sport = :7303"])
                .lines()
                .count()
                == 1
        });
        let client = run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                &listen,
                "--mpx",
                "--framing",
                "bytes",
                "--max-datagram",
                max_datagram,
            ],
        );
        let len = std::fs::metadata(&input).unwrap().len();
        reached_len(&output, len, Duration::from_secs(30));
        let text = stop(server);
        let exact = std::fs::read(&output).ok() == std::fs::read(&input).ok();
        assert!(exact, "output differs; server said: {text}");
        check(&String::from_utf8_lossy(&client.stderr));
    });
}

#[test]
fn gso_over_a_1500_byte_mtu_link_keeps_full_size_datagrams_whole() {
    // 1472 + 8 + 20 = 1500: each segment fits the link, GSO stays on
    across_veth("1472", |log| {
        assert!(!log.contains("UDP GSO refused"), "{log}");
    });
}

#[test]
fn gso_refused_by_the_route_falls_back_to_plain_datagrams() {
    // 8 KiB segments exceed the 1500-byte MTU: the kernel refuses them as
    // GSO segments, the client says so once and sends them plainly (the
    // kernel fragments them), and nothing is lost
    across_veth("8192", |log| {
        assert_eq!(log.matches("UDP GSO refused").count(), 1, "{log}");
        assert!(log.contains(", 0 send errors"), "{log}");
    });
}

/// A refusal lowers the GSO limit below the refused size instead of
/// turning GSO off: with `lo` at MTU 1500, 8 KiB segments are refused (and
/// sent plainly, fragmented), 1472-byte ones still leave as GSO messages
#[test]
fn a_refused_segment_size_does_not_turn_gso_off_for_smaller_ones() {
    in_netns(|ns| {
        ns.run("ip", &["link", "set", "lo", "mtu", "1500"]);
        let (rx, fanout) = gro_pair(7304, &SocketOptions::default());
        let mut batch = RecvBatch::new(8, RECV_BUF_LEN);
        let mut receive = |want: usize, size: usize| -> usize {
            let (mut got, mut messages) = (0, 0);
            while got < want {
                let n = batch.recv(&rx).expect("datagrams missing");
                messages += batch.messages();
                for i in 0..n {
                    let (data, _) = batch.get(i).unwrap();
                    assert_eq!(data.len(), size);
                    got += 1;
                }
            }
            messages
        };
        let big = vec![vec![7u8; 8192]; 5];
        let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
        assert_eq!(fanout.send_many(&refs), 5);
        assert_eq!(receive(5, 8192), 5);
        let small = vec![vec![9u8; 1472]; 100];
        let refs: Vec<&[u8]> = small.iter().map(Vec::as_slice).collect();
        assert_eq!(fanout.send_many(&refs), 100);
        let messages = receive(100, 1472);
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        if gso_supported(&probe) {
            assert!(
                messages < 25,
                "{messages} messages for 100 datagrams: GSO was turned off"
            );
        }
        assert_eq!(fanout.total_errors(), 0);
    });
}

/// A coalesced buffer larger than the receive slot: what fits is
/// delivered, the rest shows as truncated datagrams (no panic)
#[test]
fn a_gro_buffer_larger_than_the_slot_is_truncated_not_a_panic() {
    in_netns(|_| {
        let (rx, fanout) = gro_pair(7305, &SocketOptions::default());
        let frames = vec![vec![3u8; 1000]; 5];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(fanout.send_many(&refs), 5);
        let mut batch = RecvBatch::new(1, 1500);
        let mut whole = 0;
        let mut truncated = 0;
        while whole + truncated < 5 {
            let n = batch.recv(&rx).expect("datagrams missing");
            for i in 0..n {
                let (data, meta) = batch.get(i).unwrap();
                if meta.truncated() {
                    truncated += 1;
                    assert!(data.len() < 1000);
                } else {
                    whole += 1;
                    assert_eq!(data, &frames[0][..]);
                }
            }
        }
        assert_eq!(whole + truncated, 5);
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        if gso_supported(&probe) {
            // one GSO message arrives as one buffer: the first datagram
            // fits the 1500-byte slot, the second only in part
            assert_eq!((whole, truncated), (1, 4));
        }
    });
}
