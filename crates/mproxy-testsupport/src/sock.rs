//! Small socket helpers std does not offer.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;

/// `setsockopt(2)` with a typed value.
pub(crate) fn setsockopt<T>(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `IPV6_MULTICAST_IF`: IPv6 multicast sent on `sock` leaves through
/// the interface with index `ifindex`.
pub fn set_multicast_if_v6(sock: &UdpSocket, ifindex: u32) -> io::Result<()> {
    let idx = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    setsockopt(sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &idx)
}

/// Sets `IP_MULTICAST_IF`: IPv4 multicast sent on `sock` leaves through the
/// interface that has address `addr`.
pub fn set_multicast_if_v4(sock: &UdpSocket, addr: Ipv4Addr) -> io::Result<()> {
    let a = libc::in_addr {
        s_addr: u32::from(addr).to_be(),
    };
    setsockopt(sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &a)
}
