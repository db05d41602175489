//! Receiving: one datagram (`recvmsg`) or a batch (`recvmmsg`), each with
//! its true size (MSG_TRUNC), the kernel's drop counter (SO_RXQ_OVFL) and,
//! on a GRO socket, coalesced buffers split back into their datagrams

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddrStorage;

use super::cmsg::{self, CmsgBuf, CMSG_BUF_LEN};
use super::sockaddr;
use super::sys::{syscall, to_len, zeroed_mmsghdr};

/// What a receive learned about one datagram besides its bytes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer
    pub len: usize,
    /// Size of the datagram on the wire (its UDP payload); larger than
    /// `len` when truncated
    pub wire_len: usize,
    /// Where it came from
    pub from: SocketAddr,
    /// Cumulative count of the socket's kernel drops (SO_RXQ_OVFL) when
    /// this datagram was queued, if reported
    pub kernel_drops: Option<u32>,
}

impl RecvMeta {
    /// True if the datagram did not fit the buffer
    pub fn truncated(&self) -> bool {
        self.wire_len > self.len
    }
}

/// Source shown for a datagram whose address the kernel did not report
const NO_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// What the kernel reported about one received message
#[derive(Debug, Clone, Copy)]
struct Message {
    /// Bytes of the message (with MSG_TRUNC: its full size)
    len: usize,
    /// Length of the address in `msg_name`
    namelen: libc::socklen_t,
    /// Bytes of control messages in `msg_control`
    controllen: usize,
    /// `msg_flags`
    flags: libc::c_int,
}

impl Message {
    fn of(h: &libc::msghdr, len: usize) -> Self {
        Self {
            len,
            namelen: h.msg_namelen,
            controllen: h.msg_controllen,
            flags: h.msg_flags,
        }
    }
}

/// Receive one datagram with its true size and the kernel drop counter
///
/// Like `recv_from`, but asks for the datagram's real length (MSG_TRUNC) so
/// truncation is detected, and reads the SO_RXQ_OVFL control message. For
/// sockets without GRO (see [`super::enable_gro`]).
///
/// # Errors
/// The OS error, `WouldBlock` included for non-blocking sockets.
pub fn recv_meta(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut name = sockaddr::empty();
    let mut control = CmsgBuf::default();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut h = zeroed_mmsghdr().msg_hdr;
    h.msg_name = std::ptr::from_mut(&mut name).cast();
    h.msg_namelen = sockaddr::capacity();
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    h.msg_control = control.0.as_mut_ptr().cast();
    h.msg_controllen = CMSG_BUF_LEN;
    let n = syscall(|| {
        // SAFETY: `h` points at `name`, `iov` (which points at `buf`) and
        // `control`, all live for the call, with their true sizes.
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut h, libc::MSG_TRUNC) }
    })?;
    let msg = Message::of(&h, to_len(n));
    let anc = cmsg::parse_recv(&control.0, msg.controllen);
    let from = sockaddr::read(name, msg.namelen).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without source address",
        )
    })?;
    Ok(RecvMeta {
        len: msg.len.min(buf.len()),
        wire_len: msg.len,
        from,
        kernel_drops: anc.kernel_drops,
    })
}

/// Receive one datagram without blocking, even on a blocking socket
/// (MSG_DONTWAIT); its length and source
///
/// # Errors
/// `WouldBlock` when nothing is queued, or the OS error.
pub fn recv_nonblocking(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    let mut name = sockaddr::empty();
    let mut len = sockaddr::capacity();
    let n = syscall(|| {
        // SAFETY: `buf` and `name` are live and writable for the lengths
        // passed; the kernel writes at most that much into each.
        unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                std::ptr::from_mut(&mut name).cast(),
                &mut len,
            )
        }
    })?;
    let from = sockaddr::read(name, len).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram without source address",
        )
    })?;
    Ok((to_len(n), from))
}

/// Where the datagrams of one received message lie in its slot
///
/// A message of `wire_len` bytes (its full size, MSG_TRUNC) landed in a
/// slot of `slot` bytes; `segment` is its UDP_GRO segment size (0: a single
/// datagram). Calls `each(offset, len, wire_len)` per datagram: a
/// coalesced buffer holds datagrams of `segment` bytes, the last one
/// possibly shorter; what lies beyond the slot shows as truncated
/// datagrams. A message whose control data was cut (`ctrunc`: a lost
/// UDP_GRO message would glue datagrams together) yields one datagram of
/// no bytes, shown as truncated, so nothing glued is handed up.
pub(crate) fn split_gro(
    wire_len: usize,
    segment: usize,
    slot: usize,
    ctrunc: bool,
    mut each: impl FnMut(usize, usize, usize),
) {
    if ctrunc {
        each(0, 0, wire_len.max(1));
        return;
    }
    if segment == 0 || segment >= wire_len {
        each(0, wire_len.min(slot), wire_len);
        return;
    }
    let mut off = 0;
    while off < wire_len {
        let seg_len = segment.min(wire_len - off);
        let len = seg_len.min(slot.saturating_sub(off));
        each(off.min(slot), len, seg_len);
        off += seg_len;
    }
}

/// Receives up to `n` messages per system call (recvmmsg), each datagram
/// with its true size and the kernel drop counter, like [`recv_meta`]
///
/// On a socket with [`super::enable_gro`] a message may hold several
/// datagrams of one sender; they are split here, so [`RecvBatch::get`]
/// always yields single datagrams, exactly as they were sent.
pub struct RecvBatch {
    slot: usize,
    bufs: Vec<u8>,
    names: Vec<SockAddrStorage>,
    controls: Vec<CmsgBuf>,
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
        Self {
            slot,
            bufs: vec![0; n * slot],
            names: (0..n).map(|_| sockaddr::empty()).collect(),
            controls: vec![CmsgBuf::default(); n],
            segs: Vec::with_capacity(n),
            messages: 0,
        }
    }

    /// Messages per system call
    pub fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Point one header per slot at that slot's buffer, address storage
    /// and control buffer
    ///
    /// Every pointer is derived from one `as_mut_ptr` per Vec, taken once:
    /// indexing the Vecs (`&mut v[i]`) per header would re-borrow the whole
    /// Vec and invalidate the pointers stored in the earlier headers.
    /// `iovs` must not be touched again until the headers are dropped.
    fn headers(&mut self, iovs: &mut Vec<libc::iovec>) -> Vec<libc::mmsghdr> {
        let n = self.names.len();
        let slot = self.slot;
        let bufs = self.bufs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let controls = self.controls.as_mut_ptr();
        iovs.clear();
        iovs.extend((0..n).map(|i| libc::iovec {
            iov_base: bufs.wrapping_add(i * slot).cast(),
            iov_len: slot,
        }));
        let iov = iovs.as_mut_ptr();
        (0..n)
            .map(|i| {
                let mut h = zeroed_mmsghdr();
                h.msg_hdr.msg_name = names.wrapping_add(i).cast();
                h.msg_hdr.msg_namelen = sockaddr::capacity();
                h.msg_hdr.msg_iov = iov.wrapping_add(i);
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = controls.wrapping_add(i).cast();
                h.msg_hdr.msg_controllen = CMSG_BUF_LEN;
                h
            })
            .collect()
    }

    /// Receive what is queued, up to the batch size in messages; returns
    /// how many datagrams arrived (see [`RecvBatch::get`]), which with GRO
    /// may be more than the batch size
    ///
    /// # Errors
    /// The OS error (`WouldBlock` when nothing is queued on a
    /// non-blocking socket).
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let mut iovs = Vec::with_capacity(self.names.len());
        let mut hdrs = self.headers(&mut iovs);
        let vlen = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
        let got = syscall(|| {
            // SAFETY: each header points at its own slot of `self.bufs`
            // (through `iovs`), its own address storage and control buffer,
            // with their true sizes; all of them, `iovs` and `hdrs` stay
            // alive and untouched for the whole call.
            unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            }
        })?;
        let got = usize::try_from(got).unwrap_or(0).min(hdrs.len());
        let messages: Vec<Message> = hdrs[..got]
            .iter()
            .map(|h| Message::of(&h.msg_hdr, h.msg_len as usize))
            .collect();
        drop(hdrs);
        Ok(self.finish(&messages))
    }

    /// Turn what the kernel wrote for `messages` (one per slot, from the
    /// first) into datagrams
    fn finish(&mut self, messages: &[Message]) -> usize {
        self.segs.clear();
        self.messages = messages.len();
        let slot = self.slot;
        for (idx, m) in messages.iter().enumerate() {
            let anc = self
                .controls
                .get(idx)
                .map(|c| cmsg::parse_recv(&c.0, m.controllen))
                .unwrap_or_default();
            let from = self
                .names
                .get_mut(idx)
                .map(|n| std::mem::replace(n, sockaddr::empty()))
                .and_then(|n| sockaddr::read(n, m.namelen))
                .unwrap_or(NO_ADDR);
            let base = idx * slot;
            let ctrunc = m.flags & libc::MSG_CTRUNC != 0;
            let segs = &mut self.segs;
            split_gro(
                m.len,
                anc.gro_segment,
                slot,
                ctrunc,
                |off, len, wire_len| {
                    segs.push((
                        base + off,
                        RecvMeta {
                            len,
                            wire_len,
                            from,
                            kernel_drops: anc.kernel_drops,
                        },
                    ));
                },
            );
        }
        self.segs.len()
    }

    /// Messages (system-level datagrams or GRO buffers) of the last
    /// [`RecvBatch::recv`]; equal to the batch size when more may be queued
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Datagrams of the last [`RecvBatch::recv`]
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// True if the last [`RecvBatch::recv`] brought no datagram
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]
    pub fn get(&self, i: usize) -> Option<(&[u8], &RecvMeta)> {
        let (start, meta) = self.segs.get(i)?;
        Some((self.bufs.get(*start..*start + meta.len)?, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::cmsg::Encoder;
    use socket2::SockAddr;

    fn metas(
        wire_len: usize,
        segment: usize,
        slot: usize,
        ctrunc: bool,
    ) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        split_gro(wire_len, segment, slot, ctrunc, |o, l, w| v.push((o, l, w)));
        v
    }

    #[test]
    fn test_split_gro() {
        assert_eq!(metas(100, 0, 1500, false), [(0, 100, 100)]);
        assert_eq!(metas(0, 0, 1500, false), [(0, 0, 0)]);
        assert_eq!(metas(2000, 0, 1500, false), [(0, 1500, 2000)], "truncated");
        assert_eq!(metas(100, 100, 1500, false), [(0, 100, 100)]);
        assert_eq!(
            metas(250, 100, 1500, false),
            [(0, 100, 100), (100, 100, 100), (200, 50, 50)]
        );
        // a coalesced buffer larger than the slot: the rest is truncated
        assert_eq!(
            metas(5000, 1000, 1500, false),
            [
                (0, 1000, 1000),
                (1000, 500, 1000),
                (1500, 0, 1000),
                (1500, 0, 1000),
                (1500, 0, 1000)
            ]
        );
        assert_eq!(metas(3000, 1000, 1500, true), [(0, 0, 3000)]);
        assert_eq!(metas(0, 1000, 1500, true), [(0, 0, 1)]);
    }

    #[test]
    fn test_split_gro_covers_every_byte_once() {
        // (Miri interprets every step: smaller cases there)
        let lens: &[usize] = if cfg!(miri) {
            &[1, 99, 100, 101, 2000]
        } else {
            &[1, 99, 100, 101, 4399, 4400, 65_000]
        };
        for &wire_len in lens {
            for segment in [0usize, 1, 100, 1472, 65_535] {
                let v = metas(wire_len, segment, 65_536, false);
                assert_eq!(v.iter().map(|m| m.2).sum::<usize>(), wire_len);
                assert!(v.iter().all(|m| m.1 == m.2), "fits the slot: whole");
                let mut at = 0;
                for m in &v {
                    assert_eq!(m.0, at);
                    at += m.1;
                }
            }
        }
    }

    /// Play the kernel: write through the pointers of the headers exactly
    /// as recvmmsg would (payload through the iovec, the sender's address,
    /// control messages, the lengths), then split. Under Miri this checks
    /// that no header's pointer was invalidated by building the later ones.
    #[test]
    fn test_headers_stay_valid_for_the_kernel() {
        let mut batch = RecvBatch::new(3, 4000);
        let mut iovs = Vec::new();
        let mut hdrs = batch.headers(&mut iovs);
        let from: [SocketAddr; 3] = [
            "192.0.2.1:1000".parse().unwrap(),
            "[2001:db8::2]:2000".parse().unwrap(),
            "192.0.2.3:3000".parse().unwrap(),
        ];
        let sizes = [(10usize, 0usize), (3000, 1000), (5000, 0)];
        // the kernel fills the headers from the last to the first: any
        // pointer of an earlier header invalidated by a later re-borrow
        // would be caught on use
        for (i, h) in hdrs.iter_mut().enumerate().rev() {
            let m = &mut h.msg_hdr;
            let (len, segment) = sizes[i];
            // SAFETY: the test stands in for the kernel and writes within
            // the sizes each header records.
            unsafe {
                let iov = &*m.msg_iov;
                let dst = std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), iov.iov_len);
                for (k, b) in dst.iter_mut().take(len).enumerate() {
                    *b = (i * 7 + k) as u8;
                }
                let addr = SockAddr::from(from[i]);
                let name = m.msg_name.cast::<u8>();
                let addr_len = addr.len() as usize;
                std::ptr::copy_nonoverlapping(addr.as_ptr().cast::<u8>(), name, addr_len);
                m.msg_namelen = addr.len();
                let control =
                    std::slice::from_raw_parts_mut(m.msg_control.cast::<u8>(), m.msg_controllen);
                let mut enc = Encoder::new(control);
                assert!(enc.push(
                    libc::SOL_SOCKET,
                    libc::SO_RXQ_OVFL,
                    &(i as u32).to_ne_bytes()
                ));
                if segment > 0 {
                    assert!(enc.push(
                        libc::SOL_UDP,
                        libc::UDP_GRO,
                        &(segment as i32).to_ne_bytes()
                    ));
                }
                m.msg_controllen = enc.len();
            }
            h.msg_len = len as libc::c_uint;
        }
        let messages: Vec<Message> = hdrs
            .iter()
            .map(|h| Message::of(&h.msg_hdr, h.msg_len as usize))
            .collect();
        drop(hdrs);
        let n = batch.finish(&messages);
        // 1 + 3 (coalesced) + 1 (truncated)
        assert_eq!(n, 5);
        assert_eq!(batch.messages(), 3);
        let (d, m) = batch.get(0).unwrap();
        assert_eq!(d.len(), 10);
        assert_eq!(d[3], 3);
        assert_eq!(
            (m.from, m.kernel_drops, m.truncated()),
            (from[0], Some(0), false)
        );
        for k in 1..4 {
            let (d, m) = batch.get(k).unwrap();
            assert_eq!((d.len(), m.from, m.kernel_drops), (1000, from[1], Some(1)));
            assert_eq!(d[0], (7 + (k - 1) * 1000) as u8);
        }
        let (d, m) = batch.get(4).unwrap();
        assert_eq!((d.len(), m.wire_len, m.truncated()), (4000, 5000, true));
        assert_eq!(m.from, from[2]);
        assert!(batch.get(5).is_none());
    }
}
