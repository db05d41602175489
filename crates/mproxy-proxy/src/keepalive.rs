//! TCP keepalive on upstream sockets, set with setsockopt(2)
//!
//! Raw socket options belong in `mproxy_common::net::socket` (the project's
//! one user of socket2); this small helper lives here until a TCP
//! counterpart of the UDP helpers exists there.
//!
//! An upstream that vanishes without a FIN or RST (power loss, a NAT or
//! firewall that forgot the flow) leaves a silent connection behind. With
//! keepalive the kernel probes it after `idle` without traffic, then every
//! `idle / 3` (at least 1 s), and fails the socket after
//! [`KEEPALIVE_PROBES`] unanswered probes, so the read returns an error and
//! the upstream is redialled: about twice `idle` in all.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Unanswered probes before the connection is declared dead
pub(crate) const KEEPALIVE_PROBES: i32 = 3;

/// Turn keepalive on with the first probe after `idle` of silence
pub(crate) fn set_keepalive(sock: &TcpStream, idle: Duration) -> io::Result<()> {
    let idle_s = i32::try_from(idle.as_secs().max(1)).unwrap_or(i32::MAX);
    let interval = (idle_s / 3).max(1);
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is an open socket borrowed for the duration of the call;
    // the option value points at a c_int and its exact length is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
fn getsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid, writable and of the lengths given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
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
            let fd = sock.as_raw_fd();
            let get = |level, name| getsockopt_int(fd, level, name).unwrap();
            assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
            assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
            assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 10);
            assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT), KEEPALIVE_PROBES);
        });
    }
}
