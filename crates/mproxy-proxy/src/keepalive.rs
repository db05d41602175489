//! TCP keepalive on upstream sockets
//!
//! An upstream that vanishes without a FIN or RST (power loss, a NAT or
//! firewall that forgot the flow) leaves a silent connection behind. With
//! keepalive the kernel probes it after `idle` without traffic, then every
//! `idle / 3` (at least 1 s), and fails the socket after
//! [`KEEPALIVE_PROBES`] unanswered probes, so the read returns an error and
//! the upstream is redialled: about twice `idle` in all. The options are
//! set by `mproxy_common::net` (socket2's `TcpKeepalive`).

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use mproxy_common::net::{self, Keepalive};

/// Unanswered probes before the connection is declared dead
pub(crate) const KEEPALIVE_PROBES: u32 = 3;

/// The probe schedule for a first probe after `idle` of silence (whole
/// seconds, at least one)
fn schedule(idle: Duration) -> Keepalive {
    let idle = Duration::from_secs(idle.as_secs().max(1));
    Keepalive {
        idle,
        interval: Duration::from_secs((idle.as_secs() / 3).max(1)),
        probes: KEEPALIVE_PROBES,
    }
}

/// Turn keepalive on with the first probe after `idle` of silence
pub(crate) fn set_keepalive(sock: &TcpStream, idle: Duration) -> io::Result<()> {
    net::set_keepalive(sock, &schedule(idle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn test_keepalive_options_reach_the_socket() {
        mproxy_testsupport::in_netns(|_| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            set_keepalive(&sock, Duration::from_secs(30)).unwrap();
            let got = net::keepalive(&sock).unwrap().unwrap();
            assert_eq!(got.idle, Duration::from_secs(30));
            assert_eq!(got.interval, Duration::from_secs(10));
            assert_eq!(got.probes, KEEPALIVE_PROBES);
        });
    }

    #[test]
    fn test_schedule_rounds_to_whole_seconds() {
        let s = schedule(Duration::from_millis(1500));
        assert_eq!(
            (s.idle, s.interval),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        let s = schedule(Duration::ZERO);
        assert_eq!(s.idle, Duration::from_secs(1));
    }
}
