//! The host's interface addresses (getifaddrs)

use std::net::{IpAddr, SocketAddr};

use super::sockaddr;

/// All (interface index, address) pairs of the host, from getifaddrs
pub(crate) fn interface_addrs() -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        if let Some(addr) = address_of(ifa.ifa_addr) {
            // SAFETY: ifa_name is the NUL-terminated name of the node's
            // interface, alive with the list.
            let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            if index != 0 {
                out.push((index, addr.ip()));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once; no
    // reference into the list outlives this call.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// An IPv4 or IPv6 address at `sa` (a node's `ifa_addr`, possibly null)
fn address_of(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: a non-null ifa_addr points at a sockaddr, whose family field
    // is always there.
    let family = libc::c_int::from(unsafe { (*sa).sa_family });
    let len = match family {
        libc::AF_INET => std::mem::size_of::<libc::sockaddr_in>(),
        libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
        _ => return None,
    };
    let mut storage = sockaddr::empty();
    // SAFETY: for these families the kernel's sockaddr is exactly `len`
    // bytes long, and the storage holds any address.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.cast::<u8>(),
            std::ptr::from_mut(&mut storage).cast::<u8>(),
            len,
        );
    }
    sockaddr::read(storage, libc::socklen_t::try_from(len).ok()?)
}
