//! TCP options and probes for the binaries' TCP edges (upstreams, output
//! clients), so they need neither socket2 nor `unsafe`

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::SockRef;

use super::sys::{syscall, to_len};

/// TCP keepalive settings of a connection (`SO_KEEPALIVE` with
/// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe
    pub idle: Duration,
    /// Time between unanswered probes
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead
    pub probes: u32,
}

/// Turn keepalive on for `sock` with `settings` (whole seconds; the kernel
/// takes nothing finer)
///
/// # Errors
/// The OS error of the first option the kernel refused.
pub fn set_keepalive(sock: &TcpStream, settings: &Keepalive) -> io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(settings.idle)
        .with_interval(settings.interval)
        .with_retries(settings.probes);
    SockRef::from(sock).set_tcp_keepalive(&ka)
}

/// The keepalive settings of `sock`, `None` if keepalive is off
///
/// # Errors
/// The OS error of a failed getsockopt.
pub fn keepalive(sock: &TcpStream) -> io::Result<Option<Keepalive>> {
    let s = SockRef::from(sock);
    if !s.keepalive()? {
        return Ok(None);
    }
    Ok(Some(Keepalive {
        idle: s.tcp_keepalive_time()?,
        interval: s.tcp_keepalive_interval()?,
        probes: s.tcp_keepalive_retries()?,
    }))
}

/// Read what `sock` has queued without blocking (MSG_DONTWAIT), even on a
/// blocking socket: the byte count (0: the peer closed its side)
///
/// For watching a connection's read side while only writing to it.
///
/// # Errors
/// `WouldBlock` when nothing is queued, or the OS error (a reset).
pub fn recv_dontwait(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = syscall(|| {
        // SAFETY: `buf` is valid for writes of its length for the whole
        // call; the descriptor is borrowed from an open socket.
        unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    })?;
    Ok(to_len(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;

    #[test]
    #[cfg_attr(miri, ignore = "opens sockets")]
    fn test_keepalive_round_trip_and_dontwait_reads() {
        mproxy_testsupport::in_netns(|_| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            assert_eq!(keepalive(&sock).unwrap(), None);
            let want = Keepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(10),
                probes: 3,
            };
            set_keepalive(&sock, &want).unwrap();
            assert_eq!(keepalive(&sock).unwrap(), Some(want));

            let (mut peer, _) = listener.accept().unwrap();
            let mut buf = [0u8; 16];
            let e = recv_dontwait(&sock, &mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            peer.write_all(b"hi").unwrap();
            mproxy_testsupport::wait_until(Duration::from_secs(5), "bytes queued", || {
                recv_dontwait(&sock, &mut buf).is_ok_and(|n| n == 2)
            });
            drop(peer);
            mproxy_testsupport::wait_until(Duration::from_secs(5), "peer closed", || {
                recv_dontwait(&sock, &mut buf).is_ok_and(|n| n == 0)
            });
        });
    }
}
