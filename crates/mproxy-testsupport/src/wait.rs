//! Bounded waits.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it returns `true`; panics mentioning
/// `what` if that has not happened within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a TCP connection to `addr` succeeds (the connection is closed
/// right away, so the server sees one empty connection); panics after
/// `timeout`.
pub fn wait_for_tcp_listen(addr: SocketAddr, timeout: Duration) {
    wait_until(timeout, &format!("a TCP listener on {addr}"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    });
}

/// Waits until a UDP socket (IPv4 or IPv6) of the calling thread's network
/// namespace is bound to local `port`; panics after `timeout`.
pub fn wait_for_udp_bound(port: u16, timeout: Duration) {
    wait_until(
        timeout,
        &format!("a UDP socket bound to port {port}"),
        || is_udp_bound(port),
    );
}

/// Waits until a TCP socket (IPv4 or IPv6) of the calling thread's network
/// namespace listens on local `port`; panics after `timeout`.
pub fn wait_for_tcp_bound(port: u16, timeout: Duration) {
    wait_until(timeout, &format!("a TCP listener on port {port}"), || {
        is_tcp_listening(port)
    });
}

/// Whether a UDP socket of the calling thread's network namespace is bound
/// to local `port` (from `/proc/thread-self/net/udp` and `udp6`).
pub fn is_udp_bound(port: u16) -> bool {
    udp_bound_count(port) > 0
}

/// How many UDP sockets (IPv4 and IPv6) of the calling thread's network
/// namespace are bound to local `port`. Several receivers may share a
/// multicast group's port, so "a second receiver is ready" is "the count
/// went up", not "the port is bound".
pub fn udp_bound_count(port: u16) -> usize {
    ["udp", "udp6"]
        .iter()
        .map(|f| proc_net_count(f, port, None))
        .sum()
}

/// Waits until more than `before` UDP sockets are bound to local `port`
/// (see [`udp_bound_count`]); panics after `timeout`.
pub fn wait_for_udp_bound_more(port: u16, before: usize, timeout: Duration) {
    wait_until(
        timeout,
        &format!("more than {before} UDP sockets bound to port {port}"),
        || udp_bound_count(port) > before,
    );
}

/// Whether a TCP socket of the calling thread's network namespace is in
/// LISTEN state on local `port` (from `/proc/thread-self/net/tcp` and
/// `tcp6`).
pub fn is_tcp_listening(port: u16) -> bool {
    ["tcp", "tcp6"]
        .iter()
        .any(|f| proc_net_has(f, port, Some("0A")))
}

/// Scans `/proc/thread-self/net/<file>` for a socket whose local port is
/// `port` (and whose state is `state`, if given).
fn proc_net_has(file: &str, port: u16, state: Option<&str>) -> bool {
    proc_net_count(file, port, state) > 0
}

fn proc_net_count(file: &str, port: u16, state: Option<&str>) -> usize {
    // thread-self, not self: the namespace is per thread.
    let path = format!("/proc/thread-self/net/{file}");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return 0; // e.g. no IPv6 in this kernel
    };
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            let st = fields.nth(1).unwrap_or("");
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && state.is_none_or(|s| s == st)
        })
        .count()
}
