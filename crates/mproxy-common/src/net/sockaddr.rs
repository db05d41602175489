//! Socket addresses as the kernel reads and writes them, through socket2's
//! `SockAddr` (no hand-written `sockaddr_in`/`sockaddr_in6` layouts)

use std::net::SocketAddr;

use socket2::{SockAddr, SockAddrStorage};

/// Storage the kernel fills with a sender's address (`msg_name`)
pub(crate) fn empty() -> SockAddrStorage {
    SockAddrStorage::zeroed()
}

/// Length to pass as `msg_namelen` for a storage from [`empty`]
pub(crate) fn capacity() -> libc::socklen_t {
    empty().size_of()
}

/// The address the kernel wrote into `storage` (`len` bytes of it), if it
/// is an IPv4 or IPv6 one
///
/// A storage the kernel did not write (still all zero: family
/// `AF_UNSPEC`) or of another family gives `None`.
pub(crate) fn read(storage: SockAddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len.min(capacity());
    // SAFETY: `storage` is either all zero (AF_UNSPEC, which `as_socket`
    // rejects before reading anything else) or what recvmsg/recvfrom/
    // getifaddrs wrote: an address of the family it names, `len` bytes
    // long. The storage is large enough for every family, so reading a
    // sockaddr_in/sockaddr_in6 out of it never leaves it.
    let addr = unsafe { SockAddr::new(storage, len) };
    addr.as_socket()
}

/// `addr` as a `sockaddr_storage` value (for structures such as
/// `group_source_req` that embed one)
pub(crate) fn storage_of(addr: SocketAddr) -> SockAddrStorage {
    SockAddr::from(addr).as_storage()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn test_round_trip_v4_and_v6() {
        let addrs = [
            SocketAddr::from(([192, 0, 2, 7], 9920)),
            SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 1, 2, 3, 4),
                5000,
                0x12345,
                7,
            )),
        ];
        for a in addrs {
            let sa = SockAddr::from(a);
            let len = sa.len();
            assert_eq!(read(sa.as_storage(), len), Some(a), "{a}");
            // a longer length (the whole storage) reads the same
            assert_eq!(read(storage_of(a), capacity()), Some(a), "{a}");
        }
    }

    #[test]
    fn test_unwritten_storage_is_no_address() {
        assert_eq!(read(empty(), capacity()), None);
        assert_eq!(read(empty(), 0), None);
    }
}
