//! UDP socket setup: the only module that uses socket2 and raw socket options

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use super::{NetError, SocketOptions};
use crate::addr::Interface;

/// Receive buffer requested when the user gives no `--rcvbuf`: large enough
/// to ride out a few milliseconds of disk stalls at gigabit rates.
pub const DEFAULT_RCVBUF: usize = 8 << 20;

fn ctx(what: &'static str, addr: impl ToString) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io {
        what,
        addr: addr.to_string(),
        source,
    }
}

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
/// SO_RXQ_OVFL so [`recv_meta`] can report kernel drops, and returns a
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
    group: libc::sockaddr_storage,
    source: libc::sockaddr_storage,
}

fn join_source_group(sock: &Socket, index: u32, group: IpAddr, source: IpAddr) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut req: GroupSourceReq = unsafe { zeroed() };
    req.interface = index;
    write_sockaddr(&mut req.group, SocketAddr::new(group, 0));
    write_sockaddr(&mut req.source, SocketAddr::new(source, 0));
    let level = if group.is_ipv4() {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    setsockopt_raw(sock, level, libc::MCAST_JOIN_SOURCE_GROUP, &req)
}

fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
        }
    }
}

fn read_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn setsockopt_raw<T>(sock: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_int_opt(sock: &impl AsRawFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    setsockopt_raw(sock, level, name, &value)
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
                setsockopt_raw(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &req)
                    .map_err(ctx("setting IP_MULTICAST_IF on", local))?;
            }
        }
    }
    sock.bind(&local.into()).map_err(ctx("binding", local))?;
    Ok(sock.into())
}

/// What [`recv_meta`] learned about one datagram besides its bytes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer
    pub len: usize,
    /// Size of the datagram on the wire; larger than `len` when truncated
    pub wire_len: usize,
    /// Where it came from
    pub from: SocketAddr,
    /// Cumulative count of datagrams the kernel dropped on this socket
    /// because its receive queue was full (SO_RXQ_OVFL), if reported
    pub kernel_drops: Option<u32>,
}

impl RecvMeta {
    /// True if the datagram did not fit the buffer
    pub fn truncated(&self) -> bool {
        self.wire_len > self.len
    }
}

/// Receive one datagram with its true size and the kernel drop counter
///
/// Like `recv_from`, but asks for the datagram's real length (MSG_TRUNC) so
/// truncation is detected, and reads the SO_RXQ_OVFL control message.
///
/// # Errors
/// The OS error, `WouldBlock` included for non-blocking sockets.
pub fn recv_meta(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // SAFETY: zeroed sockaddr_storage and msghdr are valid initial values.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [MaybeUninit::<u64>::uninit(); 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: see above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    let n = loop {
        // SAFETY: msg points at live buffers of the sizes recorded in it.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut kernel_drops = None;
    // SAFETY: the kernel filled msg_control with well-formed cmsgs up to msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SO_RXQ_OVFL {
                kernel_drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = read_sockaddr(&name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without source address",
        )
    })?;
    Ok(RecvMeta {
        len: n.min(buf.len()),
        wire_len: n,
        from,
        kernel_drops,
    })
}

/// All (interface index, address) pairs of the host, from getifaddrs
pub(crate) fn interface_addrs() -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it names;
            // we copy only as many bytes as that family's struct has.
            let addr = unsafe {
                let mut storage: libc::sockaddr_storage = zeroed();
                let family = i32::from((*ifa.ifa_addr).sa_family);
                let len = match family {
                    libc::AF_INET => size_of::<libc::sockaddr_in>(),
                    libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
                    _ => 0,
                };
                std::ptr::copy_nonoverlapping(
                    ifa.ifa_addr as *const u8,
                    &mut storage as *mut _ as *mut u8,
                    len,
                );
                if len == 0 {
                    None
                } else {
                    read_sockaddr(&storage)
                }
            };
            // SAFETY: ifa_name is a NUL-terminated interface name.
            let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            if let (Some(a), true) = (addr, index != 0) {
                out.push((index, a.ip()));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
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
/// Unlike the SO_RXQ_OVFL counter in [`RecvMeta`], this is current even
/// when no datagram arrived after the drops, so summaries use it.
pub fn kernel_drops(sock: &UdpSocket) -> Option<u32> {
    let mut info = [0u32; 16];
    let mut len = size_of::<[u32; 16]>() as libc::socklen_t;
    // SAFETY: info is a writable buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let idx = libc::SK_MEMINFO_DROPS as usize;
    (rc == 0 && (len as usize) > idx * size_of::<u32>()).then(|| info[idx])
}

/// Most segments the kernel takes in one UDP GSO message (`UDP_MAX_SEGMENTS`
/// on every GSO-capable Linux; newer kernels allow 128)
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one UDP GSO message: the whole super-datagram must
/// fit one UDP length field (65,507 bytes over IPv4), with room to spare
pub const GSO_MAX_BYTES: usize = 65_000;

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
/// Only for sockets read with [`RecvBatch`], which splits such buffers back
/// into datagrams; other readers would see the datagrams glued together.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    set_int_opt(sock, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// [`bind_receiver`] for a socket read only through [`RecvBatch`], which
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

/// How many of `frames`, from the first, go into one message: a run of
/// frames of the first one's size, optionally ended by one shorter frame
/// (what `UDP_SEGMENT` requires), within [`GSO_MAX_SEGMENTS`] and
/// [`GSO_MAX_BYTES`], if that size is at most `gso_max` (the largest
/// segment the route takes; 0: no GSO); otherwise 1
pub fn gso_run(frames: &[&[u8]], gso_max: usize) -> usize {
    let Some(first) = frames.first() else {
        return 0;
    };
    let seg = first.len();
    if seg == 0 || seg > gso_max {
        return 1;
    }
    let mut n = 1;
    let mut bytes = seg;
    for f in &frames[1..] {
        if n == GSO_MAX_SEGMENTS || f.len() > seg || f.is_empty() || bytes + f.len() > GSO_MAX_BYTES
        {
            break;
        }
        n += 1;
        bytes += f.len();
        if f.len() < seg {
            break;
        }
    }
    n
}

/// Receives up to `n` messages per system call (recvmmsg), each datagram
/// with its true size and the kernel drop counter, like [`recv_meta`]
///
/// On a socket with [`enable_gro`] a message may hold several datagrams of
/// one sender; they are split here, so [`RecvBatch::get`] always yields
/// single datagrams, exactly as they were sent.
pub struct RecvBatch {
    slot: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 8]>,
    /// Datagrams of the last receive: where each starts in `bufs`, its meta
    segs: Vec<(usize, RecvMeta)>,
    messages: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.names.len())
            .field("slot", &self.slot)
            .finish()
    }
}

impl RecvBatch {
    /// Room for `n` messages of up to `slot` bytes each (a slot of
    /// [`super::RECV_BUF_LEN`] holds any coalesced GRO buffer)
    pub fn new(n: usize, slot: usize) -> Self {
        let n = n.max(1);
        // SAFETY: all-zero sockaddr_storage is a valid value.
        let zero: libc::sockaddr_storage = unsafe { zeroed() };
        Self {
            slot,
            bufs: vec![0; n * slot],
            names: vec![zero; n],
            controls: vec![[0u64; 8]; n],
            segs: Vec::with_capacity(n),
            messages: 0,
        }
    }

    /// Receive what is queued, up to the batch size in messages; returns
    /// how many datagrams arrived (see [`RecvBatch::get`]), which with GRO
    /// may be more than the batch size
    ///
    /// # Errors
    /// The OS error (`WouldBlock` when nothing is queued on a
    /// non-blocking socket).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.names.len();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .chunks_mut(self.slot)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                // SAFETY: an all-zero msghdr is a valid starting value.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<[u64; 8]>() as _;
                h
            })
            .collect();
        let got = loop {
            // SAFETY: every header points at live buffers of the recorded
            // sizes, owned by `self` and `iovs`, for the whole call.
            let rc = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        self.segs.clear();
        self.messages = got;
        for (idx, h) in hdrs.iter().take(got).enumerate() {
            let mut kernel_drops = None;
            let mut segment = 0usize;
            // SAFETY: the kernel filled msg_control with well-formed cmsgs.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !cmsg.is_null() {
                    let c = &*cmsg;
                    if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SO_RXQ_OVFL {
                        kernel_drops =
                            Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32));
                    } else if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == libc::UDP_GRO {
                        let g =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                        segment = usize::try_from(g).unwrap_or(0);
                    }
                    cmsg = libc::CMSG_NXTHDR(&h.msg_hdr, cmsg);
                }
            }
            let wire_len = h.msg_len as usize;
            let from =
                read_sockaddr(&self.names[idx]).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let base = idx * self.slot;
            if h.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0 {
                // a lost UDP_GRO control message would glue datagrams
                // together: hand nothing up, shown as one truncated datagram
                self.segs.push((
                    base,
                    RecvMeta {
                        len: 0,
                        wire_len: wire_len.max(1),
                        from,
                        kernel_drops,
                    },
                ));
                continue;
            }
            if segment == 0 || segment >= wire_len {
                self.segs.push((
                    base,
                    RecvMeta {
                        len: wire_len.min(self.slot),
                        wire_len,
                        from,
                        kernel_drops,
                    },
                ));
                continue;
            }
            // a coalesced buffer: datagrams of `segment` bytes, the last
            // one possibly shorter (only a jumbo GRO buffer could exceed
            // the slot: what lies beyond it shows as truncated datagrams)
            let mut off = 0;
            while off < wire_len {
                let seg_len = segment.min(wire_len - off);
                let len = seg_len.min(self.slot.saturating_sub(off));
                self.segs.push((
                    base + off.min(self.slot),
                    RecvMeta {
                        len,
                        wire_len: seg_len,
                        from,
                        kernel_drops,
                    },
                ));
                off += seg_len;
            }
        }
        Ok(self.segs.len())
    }

    /// Messages (system-level datagrams or GRO buffers) of the last
    /// [`RecvBatch::recv`]; equal to the batch size when more may be queued
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]
    pub fn get(&self, i: usize) -> Option<(&[u8], &RecvMeta)> {
        let (start, meta) = self.segs.get(i)?;
        Some((&self.bufs[*start..*start + meta.len], meta))
    }
}

/// Send several datagrams with one system call (sendmmsg)
///
/// Returns how many of `items` the kernel took, in order; the caller
/// retries the rest (for example after a `WouldBlock`).
///
/// # Errors
/// The OS error if not even the first datagram could be sent.
pub fn send_batch(sock: &UdpSocket, items: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let n = items.len().min(1024);
    // SAFETY: all-zero sockaddr_storage values are valid.
    let mut names: Vec<libc::sockaddr_storage> = (0..n).map(|_| unsafe { zeroed() }).collect();
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
    for (i, (data, addr)) in items.iter().take(n).enumerate() {
        write_sockaddr(&mut names[i], *addr);
        iovs.push(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
    }
    let mut hdrs: Vec<libc::mmsghdr> = (0..n)
        .map(|i| {
            // SAFETY: an all-zero mmsghdr is a valid starting value.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = sockaddr_len(&items[i].1);
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    sendmmsg_retrying(sock, &mut hdrs)
}

fn sockaddr_len(addr: &SocketAddr) -> libc::socklen_t {
    (match addr {
        SocketAddr::V4(_) => size_of::<libc::sockaddr_in>(),
        SocketAddr::V6(_) => size_of::<libc::sockaddr_in6>(),
    }) as libc::socklen_t
}

fn sendmmsg_retrying(sock: &UdpSocket, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: the caller's headers point at live buffers for the whole
        // call; the kernel only reads the payloads.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Send `frames` to `addr` with one system call (sendmmsg); each run of
/// equal-sized frames of at most `gso_max` bytes (see [`gso_run`]) goes
/// out as one UDP GSO message that the kernel cuts into those same
/// datagrams, read in place from `frames` (no copy)
///
/// Returns how many frames, from the first, the kernel took; the caller
/// retries the rest.
///
/// # Errors
/// The OS error if not even the first message could be sent. An error on
/// a message of several segments may mean this route cannot
/// segment: `EIO`, `EOPNOTSUPP` or `ENOPROTOOPT` (no checksum offload, no
/// GSO), `EINVAL` or `EMSGSIZE` (a segment over the route's MTU); send
/// again without `gso`, or with shorter segments.
pub fn send_segments(
    sock: &UdpSocket,
    frames: &[&[u8]],
    addr: SocketAddr,
    gso_max: usize,
) -> io::Result<usize> {
    if frames.is_empty() {
        return Ok(0);
    }
    let frames = &frames[..frames.len().min(1024)];
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    write_sockaddr(&mut name, addr);
    let namelen = sockaddr_len(&addr);
    let iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // (first frame, frames) of each message
    let mut plan: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let k = gso_run(&frames[i..], gso_max).max(1);
        plan.push((i, k));
        i += k;
    }
    let mut controls: Vec<[u64; 4]> = vec![[0u64; 4]; plan.len()];
    // one pointer for all headers (re-borrowing the Vec per header would
    // invalidate the earlier ones under Rust's aliasing rules)
    let controls_base = controls.as_mut_ptr();
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(plan.len());
    for (m, &(first, k)) in plan.iter().enumerate() {
        // SAFETY: an all-zero mmsghdr is a valid starting value.
        let mut h: libc::mmsghdr = unsafe { zeroed() };
        h.msg_hdr.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = namelen;
        h.msg_hdr.msg_iov = iovs[first..].as_ptr() as *mut libc::iovec;
        h.msg_hdr.msg_iovlen = k as _;
        if k > 1 {
            let segment = u16::try_from(frames[first].len()).unwrap_or(u16::MAX);
            // SAFETY: m < plan.len() == controls.len()
            h.msg_hdr.msg_control = unsafe { controls_base.add(m) }.cast();
            // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 32-byte
            // buffer; CMSG_FIRSTHDR points into it and is non-null.
            unsafe {
                h.msg_hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            }
        }
        hdrs.push(h);
    }
    let sent = sendmmsg_retrying(sock, &mut hdrs)?;
    Ok(plan.iter().take(sent).map(|&(_, k)| k).sum())
}

/// Receive one datagram without blocking, even on a blocking socket
/// (MSG_DONTWAIT); its length and source
///
/// # Errors
/// `WouldBlock` when nothing is queued, or the OS error.
pub fn recv_nonblocking(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: zeroed sockaddr_storage is valid; buf and name outlive the call.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: see above; the kernel writes at most buf.len() and len bytes.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut name as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = read_sockaddr(&name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without source address",
        )
    })?;
    Ok((n as usize, from))
}
