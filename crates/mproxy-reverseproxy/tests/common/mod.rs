//! Helpers of the `mproxy-reverseproxy` integration tests (`mod common;`
//! in each file): the binary, payloads, readers, the proxy's exit

// Each test file that includes this module uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mproxy_testsupport::{bin, wait_until, ChildGuard, SplitMix64};

pub(crate) const STARTUP: Duration = Duration::from_secs(10);

pub(crate) fn reverseproxy(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("mproxy-reverseproxy"));
    cmd.args(args).stdout(Stdio::null());
    cmd
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Deterministic payloads of `len` bytes each
pub(crate) fn payloads(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut p = vec![0u8; len];
            rng.fill(&mut p);
            p
        })
        .collect()
}

/// Send each payload as a datagram, pausing 1 ms after every `burst`
pub(crate) fn send_paced(sock: &UdpSocket, to: SocketAddr, payloads: &[Vec<u8>], burst: usize) {
    for (i, p) in payloads.iter().enumerate() {
        sock.send_to(p, to).unwrap();
        if (i + 1) % burst == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A TCP client of a `--tcp-output-addr` that reads `want` bytes (or
/// until `timeout`) on its own thread
pub(crate) fn tcp_reader(
    to: SocketAddr,
    want: usize,
    timeout: Duration,
) -> thread::JoinHandle<Vec<u8>> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
    thread::spawn(move || read_bytes(stream, want, timeout))
}

pub(crate) fn read_bytes(mut stream: TcpStream, want: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // a signal, e.g. SIGCHLD of another test's child
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("reading from {:?}: {e}", stream.peer_addr()),
        }
    }
    got
}

/// Wait until the proxy logged `n` "client ... connected" lines
pub(crate) fn wait_for_clients(p: &ChildGuard, n: usize) {
    wait_until(STARTUP, &format!("{n} clients connected"), || {
        p.stderr_text().matches(" connected").count() >= n
    });
}

/// SIGINT, then expect exit 0 within `within`; returns stderr
pub(crate) fn interrupt_ok(p: &mut ChildGuard, within: Duration) -> String {
    p.interrupt();
    let status = p
        .wait_timeout(within)
        .unwrap_or_else(|| panic!("no exit {within:?} after SIGINT:\n{}", p.stderr_text()));
    let stderr = p.stderr_text();
    assert!(status.success(), "exit {status}:\n{stderr}");
    assert!(stderr.contains("summary"), "no summary:\n{stderr}");
    stderr
}

/// utime + stime of a process, in clock ticks
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the ")" that ends the command name; utime and stime are 14 and 15
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

/// Ask for a 4 MiB receive buffer (the kernel may grant less)
pub(crate) fn big_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let size: libc::c_int = 4 << 20;
    // SAFETY: `size` outlives the call and its length is passed along.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of_val(&size) as libc::socklen_t,
        );
    }
}
