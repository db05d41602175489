//! Shared by tests/outputs.rs and tests/rotation.rs: numbered records
//! that show a torn or misplaced one at once, sending them, and reading
//! the server's counters (SIGUSR1)

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::Duration;

use mproxy_e2e::TIMEOUT;
use mproxy_testsupport::{wait_until, ChildGuard};

/// Record `i`: "rec <i, 6 digits> " and letters up to a length between
/// 20 and 200 bytes that depends on `i`, then a newline
pub(crate) fn record(i: usize) -> Vec<u8> {
    let len = 20 + (i * 37) % 181;
    let mut r = format!("rec {i:06} ").into_bytes();
    let mut c = b'a' + (i % 26) as u8;
    while r.len() < len - 1 {
        r.push(c);
        c = if c == b'z' { b'a' } else { c + 1 };
    }
    r.push(b'\n');
    r
}

/// Records `range`, concatenated
pub(crate) fn records(range: Range<usize>) -> Vec<u8> {
    range.flat_map(record).collect()
}

/// Send records `range` as one datagram each, pausing now and then so the
/// socket buffer never overflows
pub(crate) fn send(sock: &UdpSocket, to: SocketAddr, range: Range<usize>) {
    for i in range {
        sock.send_to(&record(i), to).unwrap();
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A socket to send records from
pub(crate) fn sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// The numbers of the records `bytes` holds, checking each is whole and
/// exactly as sent (panics on a torn or altered record)
pub(crate) fn parse(bytes: &[u8], what: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or_else(|| {
            panic!(
                "{what}: a record without its newline at the end: {:?}",
                String::from_utf8_lossy(rest)
            )
        });
        let line = &rest[..=end];
        let n: usize = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_prefix("rec "))
            .and_then(|l| l.get(..6))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{what}: not a record: {:?}", String::from_utf8_lossy(line)));
        assert_eq!(line, record(n), "{what}: record {n} is torn or altered");
        out.push(n);
        rest = &rest[end + 1..];
    }
    out
}

/// The server's counters, from its summary line
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Datagrams received
    pub(crate) datagrams: u64,
    /// Records lost to output faults
    pub(crate) records_lost: u64,
    /// Their bytes
    pub(crate) bytes_lost: u64,
}

/// Parse the last summary line of `log`
pub(crate) fn last_counts(log: &str) -> Option<Counts> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" received ") && l.contains(" datagrams ("))?;
    let after = |word: &str| -> Option<u64> {
        let (head, _) = line.split_once(word)?;
        head.rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let datagrams = after(" datagrams (")?;
    let (records_lost, bytes_lost) = match (after(" records, "), after(" bytes lost)")) {
        (Some(r), Some(b)) => (r, b),
        _ => (0, 0),
    };
    Some(Counts {
        datagrams,
        records_lost,
        bytes_lost,
    })
}

/// Send `sig` to process `pid`
pub(crate) fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: plain syscall on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Ask the server for its counters (SIGUSR1) until it has received `n`
/// datagrams; its outputs are flushed by then
pub(crate) fn wait_received(server: &ChildGuard, n: u64) -> Counts {
    let mut got = Counts::default();
    wait_until(
        TIMEOUT,
        &format!("the server to receive {n} datagrams"),
        || {
            let before = server.stderr_text().matches(" datagrams (").count();
            signal(server.id(), libc::SIGUSR1);
            wait_until(TIMEOUT, "the server to log its counters", || {
                server.stderr_text().matches(" datagrams (").count() > before
            });
            got = last_counts(&server.stderr_text()).unwrap_or_default();
            if got.datagrams < n {
                std::thread::sleep(Duration::from_millis(20));
            }
            got.datagrams >= n
        },
    );
    got
}
