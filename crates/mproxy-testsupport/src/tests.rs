//! Tests of the harness itself; every one that opens sockets does so inside
//! [`in_netns`].

use std::io::Read;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::*;

const READ_TIMEOUT: Duration = Duration::from_secs(3);

fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    sock.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no datagram within {READ_TIMEOUT:?}: {e}"));
    (buf[..n].to_vec(), from)
}

#[test]
fn netns_is_private_and_restored() {
    let host = current_netns_id();
    let host_dad = std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_dad").ok();
    in_netns(|ns| {
        let inside = current_netns_id();
        assert_ne!(inside, host);
        assert_eq!(ns.id(), inside);
        // Threads started inside share the namespace.
        let from_thread = std::thread::spawn(current_netns_id).join().unwrap();
        assert_eq!(from_thread, inside);
        // Only lo exists, and it is up with multicast.
        let links = ns.run("ip", &["-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(
            links.contains("MULTICAST") && links.contains("LOWER_UP"),
            "{links}"
        );
        assert_eq!(ns.read_sysctl("net.ipv6.conf.default.accept_dad"), "0");
        let routes = ns.run("ip", &["route", "show"]);
        assert!(routes.contains("224.0.0.0/4 dev lo"), "{routes}");
    });
    assert_eq!(
        current_netns_id(),
        host,
        "thread not returned to its namespace"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/accept_dad").ok(),
        host_dad,
        "host sysctl touched"
    );
}

#[test]
fn netns_restored_after_panic() {
    if !netns_available() {
        // in_netns would re-run this whole test in a child process instead.
        skip("needs privilege to create network namespaces in this process");
        return;
    }
    let host = current_netns_id();
    let r = std::panic::catch_unwind(|| in_netns(|_| panic!("boom")));
    assert!(r.is_err());
    assert_eq!(current_netns_id(), host);
}

#[test]
fn nested_netns_are_distinct() {
    in_netns(|outer| {
        in_netns(|inner| assert_ne!(inner.id(), outer.id()));
        assert_eq!(current_netns_id(), outer.id());
    });
}

#[test]
fn ipv4_multicast_on_lo() {
    in_netns(|_| {
        let group = Ipv4Addr::new(239, 255, 1, 1);
        let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5000)).unwrap();
        rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
        // No IP_MULTICAST_IF: the 224.0.0.0/4 route sends it to lo.
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.set_multicast_loop_v4(true).unwrap();
        tx.send_to(b"hello v4", (group, 5000)).unwrap();
        let (data, from) = recv(&rx);
        assert_eq!(data, b"hello v4");
        assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    });
}

#[test]
fn ipv6_multicast_needs_a_veth() {
    in_netns(|ns| {
        let group: Ipv6Addr = "ff15::1".parse().unwrap();
        // Linux cannot route IPv6 multicast through lo.
        let tx = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
        let err = tx.send_to(b"x", (group, 5001)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");

        // With a veth pair, a receiver joined on the sending end gets the
        // multicast loopback copy, and one joined on the other end gets the
        // datagram that crossed the pair.
        let p = ns.veth_pair("lpa", "lpb");
        let on_a = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 5001)).unwrap();
        on_a.join_multicast_v6(&group, p.a_index).unwrap();
        let on_b = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 5011)).unwrap();
        on_b.join_multicast_v6(&group, p.b_index).unwrap();
        set_multicast_if_v6(&tx, p.a_index).unwrap();
        tx.set_multicast_loop_v6(true).unwrap();
        tx.send_to(b"looped", (group, 5001)).unwrap();
        assert_eq!(
            recv(&on_a),
            (
                b"looped".to_vec(),
                SocketAddr::new(p.a_v6.into(), tx.local_addr().unwrap().port())
            )
        );
        tx.send_to(b"crossed", (group, 5011)).unwrap();
        assert_eq!(recv(&on_b).0, b"crossed");
    });
}

#[test]
fn veth_pair_carries_ipv6_multicast() {
    in_netns(|ns| {
        let p = ns.veth_pair("mpa0", "mpb0");
        assert_eq!(p.a, "mpa0");
        assert_ne!(p.a_index, p.b_index);
        assert_eq!(p.a_v6, "fd00:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.b_v4, Ipv4Addr::new(10, 200, 1, 2));
        // Both addresses are bindable right away (no DAD).
        UdpSocket::bind((p.a_v6, 0)).unwrap();
        UdpSocket::bind((p.b_v6, 0)).unwrap();

        for group in ["ff02::1:3", "ff12::4d50"] {
            let group: Ipv6Addr = group.parse().unwrap();
            let rx = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 5002)).unwrap();
            rx.join_multicast_v6(&group, p.b_index).unwrap();
            let tx = UdpSocket::bind(SocketAddrV6::new(p.a_v6, 0, 0, 0)).unwrap();
            set_multicast_if_v6(&tx, p.a_index).unwrap();
            tx.set_multicast_loop_v6(false).unwrap(); // so it must cross the pair
                                                      // std has no setter for IPV6_MULTICAST_HOPS.
            set_hops(&tx, 1);
            let dst = SocketAddrV6::new(group, 5002, 0, p.a_index);
            tx.send_to(b"over the veth", dst).unwrap();
            let (data, from) = recv(&rx);
            assert_eq!(data, b"over the veth");
            assert_eq!(from.ip(), IpAddr::V6(p.a_v6));
        }
    });
}

fn set_hops(sock: &UdpSocket, hops: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd and a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            std::ptr::from_ref(&hops).cast(),
            4,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn veth_pair_carries_ipv4_multicast() {
    in_netns(|ns| {
        let p = ns.veth_pair("v4a", "v4b");
        let group = Ipv4Addr::new(239, 255, 7, 7);
        let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5003)).unwrap();
        rx.join_multicast_v4(&group, &p.b_v4).unwrap();
        let tx = UdpSocket::bind((p.a_v4, 0)).unwrap();
        set_multicast_if_v4(&tx, p.a_v4).unwrap();
        tx.set_multicast_loop_v4(false).unwrap();
        tx.set_multicast_ttl_v4(1).unwrap();
        tx.send_to(b"v4 over the veth", (group, 5003)).unwrap();
        let (data, from) = recv(&rx);
        assert_eq!(data, b"v4 over the veth");
        assert_eq!(from.ip(), IpAddr::V4(p.a_v4));
    });
}

#[test]
fn second_pair_gets_next_subnet_and_shaping_applies() {
    in_netns(|ns| {
        let p1 = ns.veth_pair("s1a", "s1b");
        let p2 = ns.veth_pair("s2a", "s2b");
        assert_eq!(p1.a_v4, Ipv4Addr::new(10, 200, 1, 1));
        assert_eq!(p2.a_v4, Ipv4Addr::new(10, 200, 2, 1));
        assert_eq!(p2.b_v6, "fd00:2::2".parse::<Ipv6Addr>().unwrap());
        ns.shape("s2a", "10mbit", "32kbit", "50ms");
        let q = ns.run("tc", &["qdisc", "show", "dev", "s2a"]);
        assert!(q.contains("tbf") && q.contains("10Mbit"), "{q}");
        let out = ns
            .try_run("ip", &["link", "show", "dev", "nosuchdev"])
            .unwrap();
        assert!(!out.status.success());
    });
}

#[test]
fn run_failure_reports_stderr() {
    in_netns(|ns| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.run("ip", &["link", "show", "dev", "nosuchdev"]);
        }));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("nosuchdev") && msg.contains("failed"), "{msg}");
    });
}

#[test]
fn port_waits_see_this_namespace_only() {
    in_netns(|_| {
        assert!(!is_udp_bound(5004));
        let _v4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 5004)).unwrap();
        wait_for_udp_bound(5004, Duration::from_secs(1));
        let _v6 = UdpSocket::bind((Ipv6Addr::LOCALHOST, 5005)).unwrap();
        wait_for_udp_bound(5005, Duration::from_secs(1));

        assert!(!is_tcp_listening(5006));
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 5006)).unwrap();
        wait_for_tcp_bound(5006, Duration::from_secs(1));
        wait_for_tcp_listen(l.local_addr().unwrap(), Duration::from_secs(1));
        // A connected (non-listening) socket does not count as listening.
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let local_port = c.local_addr().unwrap().port();
        assert!(!is_tcp_listening(local_port));
        // Another namespace does not see these sockets.
        in_netns(|_| assert!(!is_udp_bound(5004) && !is_tcp_listening(5006)));
    });
}

#[test]
#[should_panic(expected = "timed out after")]
fn wait_until_is_bounded() {
    wait_until(
        Duration::from_millis(50),
        "something that never happens",
        || false,
    );
}

#[test]
fn child_guard_interrupt_and_stderr() {
    let mut g = spawn(Command::new("sh").args([
        "-c",
        "trap 'echo got-int >&2; exit 3' INT; echo started >&2; while :; do sleep 0.05; done",
    ]));
    assert!(g.id() > 0);
    wait_until(Duration::from_secs(5), "child to start", || {
        g.stderr_text().contains("started")
    });
    assert!(g.wait_timeout(Duration::from_millis(50)).is_none());
    g.interrupt();
    let status = g
        .wait_timeout(Duration::from_secs(5))
        .expect("child did not exit after SIGINT");
    assert_eq!(status.code(), Some(3));
    assert!(g.stderr_text().contains("got-int"));
    g.interrupt(); // harmless once it has exited
}

#[test]
fn child_guard_kills_on_drop() {
    let pid;
    {
        let g = spawn(Command::new("sleep").arg("30"));
        pid = g.id();
    }
    // Reaped, so the pid is gone (or reused by an unrelated process).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!stat.starts_with("sleep"), "sleep still running");
}

#[test]
fn child_guard_stdin_piped() {
    use std::io::Write;
    let mut g = spawn_with_stdin(
        Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = g.child_mut().stdin.take().unwrap();
    stdin.write_all(b"ping").unwrap();
    drop(stdin);
    let mut out = String::new();
    g.child_mut()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "ping");
    assert!(g.wait_timeout(READ_TIMEOUT).unwrap().success());
}

#[test]
#[should_panic(expected = "run `cargo build --workspace --bins` first")]
fn bin_reports_missing_binary() {
    bin("mproxy-no-such-binary");
}

#[test]
fn tempdir_and_random_file() {
    let dir = TempDir::new();
    let kept = dir.path().to_path_buf();
    assert!(kept.is_dir());
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    random_file(&a, 100_003, 7);
    random_file(&b, 100_003, 7);
    random_file(&c, 100_003, 8);
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 100_003);
    assert_files_equal(&a, &b);
    let err = std::panic::catch_unwind(|| assert_files_equal(&a, &c)).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("100003 bytes") && msg.contains("offset"),
        "{msg}"
    );
    // A prefix differs at its end.
    random_file(&c, 1000, 7);
    let err = std::panic::catch_unwind(|| assert_files_equal(&a, &c)).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("ends at offset 1000"), "{msg}");
    drop(dir);
    assert!(!kept.exists());
}

fn ais_checksum_ok(line: &str) -> bool {
    let Some((body, sum)) = line[1..].rsplit_once('*') else {
        return false;
    };
    let x = body.bytes().fold(0u8, |a, b| a ^ b);
    sum == format!("{x:02X}")
}

#[test]
fn line_file_exact_and_realistic() {
    let dir = TempDir::new();
    for len in [
        0, 1, 5, 19, 20, 21, 199, 200, 201, 219, 220, 221, 4096, 65_537,
    ] {
        let p = dir.join(format!("l{len}"));
        line_file(&p, len, len as u64);
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), len);
        if len > 0 {
            assert_eq!(data.last(), Some(&b'\n'));
        }
    }
    let p = dir.join("big");
    let len = 3_000_000;
    line_file(&p, len, 42);
    let q = dir.join("big2");
    line_file(&q, len, 42);
    assert_files_equal(&p, &q);
    let text = String::from_utf8(std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(text.len(), len);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let (mut ais, mut csv, mut long) = (0, 0, 0);
    for l in &lines {
        let n = l.len() + 1;
        if n > 1000 {
            long += 1;
            assert!((4500..=5500).contains(&n), "long line of {n}");
        } else {
            assert!((20..=200).contains(&n), "line of {n}: {l}");
        }
        if l.starts_with("!AIVDM,") {
            ais += 1;
            assert!(ais_checksum_ok(l), "bad checksum: {l}");
        } else {
            csv += 1;
            assert!(l.split(',').count() >= 3, "{l}");
        }
    }
    assert!(ais > 1000 && csv > 1000 && long > 0, "{ais} {csv} {long}");
}

#[test]
fn peers_and_skip() {
    assert!(mproxy_peer("bogus").is_err());
    if let Some(s) = socat() {
        assert!(s.is_file());
    }
    match mproxy_peer("mproxy-client") {
        Ok(p) => {
            let out = Command::new(&p).arg("--help").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("mproxy-client"), "{text}");
        }
        Err(e) => skip(&e),
    }
}
