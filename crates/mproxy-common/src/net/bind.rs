//! Binding receivers and senders: socket options, multicast joins,
//! buffers and offload switches

use std::io;
use std::mem::{size_of, size_of_val};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddrStorage, Socket, Type};

use super::sockaddr;
use super::sys::{ctx, get_int_opt, set_int_opt, setsockopt, syscall};
use super::{NetError, SocketOptions};
use crate::addr::Interface;

/// Receive buffer requested when the user gives no `--rcvbuf`: large enough
/// to ride out a few milliseconds of disk stalls at gigabit rates.
pub const DEFAULT_RCVBUF: usize = 8 << 20;

fn new_udp(domain: Domain, addr: &SocketAddr) -> Result<Socket, NetError> {
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(ctx("creating UDP socket for", addr))?;
    if domain == Domain::IPV6 {
        sock.set_only_v6(true)
            .map_err(ctx("setting IPV6_V6ONLY on", addr))?;
    }
    Ok(sock)
}

/// Bind a UDP socket that receives on `addr`, joining the group if `addr` is multicast
///
/// For a multicast address, sets SO_REUSEADDR (not SO_REUSEPORT, whose
/// load balancing ignores source filters) so several receivers (processes
/// or threads) can share one group:port; requests the receive buffer (warning
/// when the kernel grants less than an explicit `--rcvbuf`), turns on
/// SO_RXQ_OVFL so [`super::recv_meta`] can report kernel drops, and returns a
/// non-blocking socket.
///
/// A multicast socket is bound to the group address itself, so it only sees
/// that group, and joins it on `opts.iface` (or the zone of an IPv6 group,
/// or the kernel's default), source-specific when `opts.sources` is set.
///
/// # Errors
/// Any failing step, naming the address and the step.
pub fn bind_receiver(addr: SocketAddr, opts: &SocketOptions) -> Result<UdpSocket, NetError> {
    let domain = Domain::for_address(addr);
    let sock = new_udp(domain, &addr)?;
    if addr.ip().is_multicast() {
        // Several receivers may share a group:port: SO_REUSEADDR is all
        // Linux needs for that, and every receiver still gets its copy.
        // Deliberately not SO_REUSEPORT: with it the kernel picks ONE
        // socket of the reuseport group by flow hash, ignoring each
        // socket's source filter, so a second receiver joined for another
        // source (SSM) stole a sender's whole stream in 2 of 6 runs
        // (measured, Linux 6.18; never with SO_REUSEADDR alone). Not for
        // unicast either: a second process would silently share the port
        // instead of failing with "address in use".
        sock.set_reuse_address(true)
            .map_err(ctx("setting SO_REUSEADDR on", addr))?;
    }
    set_rcvbuf(&sock, opts.rcvbuf, &addr);
    if let Err(e) = set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1) {
        tracing::debug!(%addr, error = %e, "SO_RXQ_OVFL unavailable; kernel drops not counted");
    }
    if let Some(n) = opts.sndbuf {
        set_sndbuf(&sock, n, &addr);
    }
    if addr.ip().is_multicast() {
        // Join first, then bind: once the port shows as bound (which is
        // what callers and tests wait for) the membership is in place, so
        // no early datagram is missed.
        join(&sock, addr, opts)?;
        sock.bind(&addr.into())
            .map_err(ctx("binding multicast group", addr))?;
    } else {
        if !opts.sources.is_empty() {
            return Err(NetError::Config(format!(
                "--source is only meaningful with a multicast listen address, not {addr}"
            )));
        }
        sock.bind(&addr.into()).map_err(ctx("binding", addr))?;
    }
    sock.set_nonblocking(true)
        .map_err(ctx("setting non-blocking mode on", addr))?;
    Ok(sock.into())
}

fn join(sock: &Socket, group: SocketAddr, opts: &SocketOptions) -> Result<(), NetError> {
    let zone = match group {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    let index = match (&opts.iface, zone) {
        (Interface::Default, z) => z,
        (iface, _) => iface
            .index()
            .map_err(|e| NetError::Config(format!("--iface: {e}")))?,
    };
    match group.ip() {
        IpAddr::V4(g) => {
            sock.set_multicast_all_v4(false)
                .map_err(ctx("clearing IP_MULTICAST_ALL on", group))?;
            if opts.sources.is_empty() {
                let res = match (&opts.iface, index) {
                    (Interface::Addr(IpAddr::V4(a)), _) => sock.join_multicast_v4(&g, a),
                    (_, 0) => sock.join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED),
                    (_, i) => sock.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(i)),
                };
                res.map_err(ctx_join(group, &opts.iface))?;
            }
        }
        IpAddr::V6(g) => {
            sock.set_multicast_all_v6(false)
                .map_err(ctx("clearing IPV6_MULTICAST_ALL on", group))?;
            if opts.sources.is_empty() {
                sock.join_multicast_v6(&g, index)
                    .map_err(ctx_join(group, &opts.iface))?;
            }
        }
    }
    for source in &opts.sources {
        if source.is_ipv4() != group.is_ipv4() {
            return Err(NetError::Config(format!(
                "--source {source} is not of the same address family as group {group}"
            )));
        }
        join_source_group(sock, index, group.ip(), *source).map_err(|source_err| NetError::Io {
            what: "joining source-specific group",
            addr: format!("{} from {} on {}", group, source, opts.iface),
            source: source_err,
        })?;
    }
    Ok(())
}

fn ctx_join(group: SocketAddr, iface: &Interface) -> impl FnOnce(io::Error) -> NetError {
    let addr = format!("{group} on interface {iface}");
    move |source| NetError::Io {
        what: "joining multicast group",
        addr,
        source,
    }
}

/// `struct group_source_req` from <netinet/in.h> (RFC 3678)
#[repr(C)]
struct GroupSourceReq {
    interface: u32,
    group: SockAddrStorage,
    source: SockAddrStorage,
}

fn join_source_group(sock: &Socket, index: u32, group: IpAddr, source: IpAddr) -> io::Result<()> {
    let req = GroupSourceReq {
        interface: index,
        group: sockaddr::storage_of(SocketAddr::new(group, 0)),
        source: sockaddr::storage_of(SocketAddr::new(source, 0)),
    };
    let level = if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    setsockopt(sock, level, libc::MCAST_JOIN_SOURCE_GROUP, &req)
}

fn set_rcvbuf(sock: &Socket, explicit: Option<usize>, addr: &SocketAddr) {
    let want = explicit.unwrap_or(DEFAULT_RCVBUF);
    let clamped = i32::try_from(want).unwrap_or(i32::MAX);
    // SO_RCVBUFFORCE ignores net.core.rmem_max when we have CAP_NET_ADMIN.
    if set_int_opt(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, clamped).is_err() {
        let _ = sock.set_recv_buffer_size(want);
    }
    report_buffer(
        "SO_RCVBUF",
        sock.recv_buffer_size().ok(),
        want,
        explicit.is_some(),
        addr,
    );
}

fn set_sndbuf(sock: &Socket, want: usize, addr: &SocketAddr) {
    let clamped = i32::try_from(want).unwrap_or(i32::MAX);
    if set_int_opt(sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, clamped).is_err() {
        let _ = sock.set_send_buffer_size(want);
    }
    report_buffer("SO_SNDBUF", sock.send_buffer_size().ok(), want, true, addr);
}

fn report_buffer(
    name: &str,
    granted: Option<usize>,
    want: usize,
    explicit: bool,
    addr: &SocketAddr,
) {
    // Linux reports twice the usable size (it counts bookkeeping overhead).
    let usable = granted.map(|g| g / 2);
    match usable {
        Some(got) if got < want && explicit => tracing::warn!(
            %addr,
            "{name}: asked for {want} bytes, kernel granted {got}; raise net.core.{}_max or run with CAP_NET_ADMIN",
            if name == "SO_RCVBUF" { "rmem" } else { "wmem" }
        ),
        Some(got) if got < want => {
            tracing::debug!(%addr, "{name}: default request {want}, kernel granted {got}")
        }
        _ => {}
    }
}

/// Create a UDP socket for sending to destinations of `family`
///
/// Bound to the unspecified address and an ephemeral port, with multicast
/// TTL / hop limit, loopback and outgoing interface from `opts`. Returns a
/// blocking socket: a full send buffer slows the sender down instead of
/// dropping data in user space.
///
/// # Errors
/// Any failing step, naming it.
pub fn bind_sender(ipv6: bool, opts: &SocketOptions) -> Result<UdpSocket, NetError> {
    let local: SocketAddr = if ipv6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = new_udp(Domain::for_address(local), &local)?;
    if let Some(n) = opts.sndbuf {
        set_sndbuf(&sock, n, &local);
    }
    let index = opts
        .iface
        .index()
        .map_err(|e| NetError::Config(format!("--iface: {e}")))?;
    if ipv6 {
        sock.set_multicast_hops_v6(opts.ttl)
            .map_err(ctx("setting IPV6_MULTICAST_HOPS on", local))?;
        sock.set_multicast_loop_v6(opts.multicast_loop)
            .map_err(ctx("setting IPV6_MULTICAST_LOOP on", local))?;
        if index != 0 {
            sock.set_multicast_if_v6(index)
                .map_err(ctx("setting IPV6_MULTICAST_IF on", local))?;
        }
    } else {
        sock.set_multicast_ttl_v4(opts.ttl)
            .map_err(ctx("setting IP_MULTICAST_TTL on", local))?;
        sock.set_multicast_loop_v4(opts.multicast_loop)
            .map_err(ctx("setting IP_MULTICAST_LOOP on", local))?;
        match &opts.iface {
            Interface::Default => {}
            Interface::Addr(IpAddr::V4(a)) => sock
                .set_multicast_if_v4(a)
                .map_err(ctx("setting IP_MULTICAST_IF on", local))?,
            _ => {
                let req = libc::ip_mreqn {
                    imr_multiaddr: libc::in_addr { s_addr: 0 },
                    imr_address: libc::in_addr { s_addr: 0 },
                    imr_ifindex: index as libc::c_int,
                };
                setsockopt(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &req)
                    .map_err(ctx("setting IP_MULTICAST_IF on", local))?;
            }
        }
    }
    sock.bind(&local.into()).map_err(ctx("binding", local))?;
    Ok(sock.into())
}

/// The largest UDP payload a datagram to `dest` carries without IP
/// fragmentation: the MTU the kernel knows for the route to it (IP_MTU /
/// IPV6_MTU of a socket connected to it: the outgoing interface's MTU, or
/// a smaller path MTU it learned) less the IP and UDP headers, at most
/// [`super::MAX_UDP_PAYLOAD`]. For a multicast group the socket gets the
/// sending options (`--iface`), so the route is the one sends take.
///
/// # Errors
/// A socket that cannot be opened or connected, or a kernel that does not
/// report the MTU.
pub fn path_payload(dest: SocketAddr, opts: &SocketOptions) -> Result<usize, NetError> {
    let sock = bind_sender(dest.is_ipv6(), opts)?;
    sock.connect(dest).map_err(ctx("connecting to", dest))?;
    let (level, name, headers) = if dest.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU, 40 + 8)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU, 20 + 8)
    };
    let mtu = get_int_opt(&sock, level, name).map_err(ctx("reading the path MTU to", dest))?;
    let mtu = usize::try_from(mtu).unwrap_or(0);
    Ok(mtu.saturating_sub(headers).clamp(1, super::MAX_UDP_PAYLOAD))
}

/// The receive buffer the kernel granted `sock` (SO_RCVBUF as Linux
/// reports it: twice the request, the budget datagrams are charged
/// against with their bookkeeping overhead)
///
/// # Errors
/// The OS error.
pub fn recv_buffer_size(sock: &UdpSocket) -> io::Result<usize> {
    socket2::SockRef::from(sock).recv_buffer_size()
}

/// Datagrams the kernel has dropped on this socket since it was created
/// (SO_MEMINFO), e.g. because its receive queue was full
///
/// The same counter SO_RXQ_OVFL reports with each datagram (`sk_drops`),
/// but current even when no datagram arrived after the drops, so
/// summaries read it. Cumulative and 32 bits wide: see
/// [`super::KernelDrops`] for turning it into a running total.
pub fn kernel_drops(sock: &UdpSocket) -> Option<u32> {
    let mut info = [0u32; 16];
    let mut len = libc::socklen_t::try_from(size_of_val(&info)).unwrap_or(0);
    let rc = syscall(|| {
        // SAFETY: `info` is writable for `len` bytes, and the kernel
        // writes at most `len` bytes and stores the length it wrote.
        unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        }
    });
    let idx = libc::SK_MEMINFO_DROPS as usize;
    let written = usize::try_from(len).unwrap_or(0) / size_of::<u32>();
    rc.ok()
        .filter(|_| written > idx)
        .and_then(|_| info.get(idx).copied())
}

/// Whether the kernel accepts UDP GSO (`UDP_SEGMENT`, Linux 4.18+) on `sock`
///
/// Probes by setting the socket-wide segment size to 0 (no segmentation
/// unless a message asks for it), which is what it already is.
pub fn gso_supported(sock: &UdpSocket) -> bool {
    set_int_opt(sock, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// Turn on UDP GRO (`UDP_GRO`, Linux 5.0+) on a receiving socket; returns
/// whether the kernel accepted it
///
/// The kernel may then hand over several datagrams from one sender,
/// coalesced into one buffer with their segment size in a control message
/// (on loopback: a UDP GSO send arrives whole instead of being cut up).
/// Only for sockets read with [`super::RecvBatch`], which splits such buffers back
/// into datagrams; other readers would see the datagrams glued together.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    set_int_opt(sock, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// [`bind_receiver`] for a socket read only through [`super::RecvBatch`], which
/// splits coalesced buffers: with `opts.offload` it also gets UDP GRO.
/// Returns the socket and whether GRO is on.
///
/// # Errors
/// As [`bind_receiver`].
pub fn bind_batch_receiver(
    addr: SocketAddr,
    opts: &SocketOptions,
) -> Result<(UdpSocket, bool), NetError> {
    let sock = bind_receiver(addr, opts)?;
    let gro = opts.offload && enable_gro(&sock);
    Ok((sock, gro))
}
