//! Sending batches: sendmmsg, with runs of equal-sized datagrams as UDP
//! GSO messages (`UDP_SEGMENT`)

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

use super::cmsg::{self, CmsgBuf};
use super::sys::{syscall, zeroed_mmsghdr};

/// Most segments the kernel takes in one UDP GSO message (`UDP_MAX_SEGMENTS`
/// on every GSO-capable Linux; newer kernels allow 128)
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes in one UDP GSO message: the whole super-datagram must
/// fit one UDP length field (65,507 bytes over IPv4), with room to spare
pub const GSO_MAX_BYTES: usize = 65_000;

/// Most messages handed to one sendmmsg
const MAX_MESSAGES: usize = 1024;

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

/// An iovec for a payload the kernel only reads
fn iovec_of(data: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    }
}

/// A send header: destination `name`, `iovlen` iovecs from `iov`
fn send_header(name: &SockAddr, iov: *const libc::iovec, iovlen: usize) -> libc::mmsghdr {
    let mut h = zeroed_mmsghdr();
    // sendmsg only reads the name, the iovecs and the control data: the
    // pointers are derived from shared borrows and never written through
    h.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
    h.msg_hdr.msg_namelen = name.len();
    h.msg_hdr.msg_iov = iov.cast_mut();
    h.msg_hdr.msg_iovlen = iovlen;
    h
}

fn sendmmsg(sock: &UdpSocket, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    let vlen = libc::c_uint::try_from(hdrs.len()).unwrap_or(libc::c_uint::MAX);
    let sent = syscall(|| {
        // SAFETY: every header points at names, iovecs, payloads and
        // control buffers that the caller keeps alive and unchanged for
        // the whole call; the kernel reads them and writes only `msg_len`
        // into the headers themselves.
        unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), vlen, 0) }
    })?;
    Ok(usize::try_from(sent).unwrap_or(0))
}

/// Send several datagrams with one system call (sendmmsg)
///
/// Returns how many of `items` the kernel took, in order; the caller
/// retries the rest (for example after a `WouldBlock`).
///
/// # Errors
/// The OS error if not even the first datagram could be sent.
pub fn send_batch(sock: &UdpSocket, items: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let items = &items[..items.len().min(MAX_MESSAGES)];
    if items.is_empty() {
        return Ok(0);
    }
    let names: Vec<SockAddr> = items.iter().map(|(_, a)| SockAddr::from(*a)).collect();
    let iovs: Vec<libc::iovec> = items.iter().map(|(d, _)| iovec_of(d)).collect();
    let iov = iovs.as_ptr();
    let mut hdrs: Vec<libc::mmsghdr> = names
        .iter()
        .enumerate()
        .map(|(i, name)| send_header(name, iov.wrapping_add(i), 1))
        .collect();
    sendmmsg(sock, &mut hdrs)
}

/// The messages one [`send_segments`] call makes of `frames`: (first
/// frame, frames) of each, every run as long as [`gso_run`] allows
fn plan(frames: &[&[u8]], gso_max: usize) -> Vec<(usize, usize)> {
    let mut plan = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let k = gso_run(&frames[i..], gso_max).max(1);
        plan.push((i, k));
        i += k;
    }
    plan
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
    let frames = &frames[..frames.len().min(MAX_MESSAGES)];
    if frames.is_empty() {
        return Ok(0);
    }
    let msgs = SegmentMessages::new(frames, addr, gso_max);
    let mut hdrs = msgs.headers();
    let sent = sendmmsg(sock, &mut hdrs)?;
    Ok(msgs.plan.iter().take(sent).map(|&(_, k)| k).sum())
}

/// Everything the headers of one [`send_segments`] call point at
struct SegmentMessages {
    name: SockAddr,
    iovs: Vec<libc::iovec>,
    /// (first frame, frames) of each message
    plan: Vec<(usize, usize)>,
    /// Per message: its UDP_SEGMENT control message and that one's length
    /// (0: a single datagram, no control message)
    controls: Vec<(CmsgBuf, usize)>,
}

impl SegmentMessages {
    fn new(frames: &[&[u8]], addr: SocketAddr, gso_max: usize) -> Self {
        let plan = plan(frames, gso_max);
        let controls = plan
            .iter()
            .map(|&(first, k)| {
                let mut c = CmsgBuf::default();
                let len = if k > 1 {
                    let segment = u16::try_from(frames[first].len()).unwrap_or(u16::MAX);
                    cmsg::encode_segment(&mut c, segment)
                } else {
                    0
                };
                (c, len)
            })
            .collect();
        Self {
            name: SockAddr::from(addr),
            iovs: frames.iter().map(|f| iovec_of(f)).collect(),
            plan,
            controls,
        }
    }

    /// One header per message; they borrow `self` (through raw pointers,
    /// all derived from shared borrows: the kernel only reads them)
    fn headers(&self) -> Vec<libc::mmsghdr> {
        let iov = self.iovs.as_ptr();
        self.plan
            .iter()
            .zip(&self.controls)
            .map(|(&(first, k), (control, len))| {
                let mut h = send_header(&self.name, iov.wrapping_add(first), k);
                if *len > 0 {
                    h.msg_hdr.msg_control = control.0.as_ptr().cast_mut().cast();
                    h.msg_hdr.msg_controllen = *len;
                }
                h
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_plan_covers_every_frame_once_in_order() {
        let sizes = [1472usize, 1472, 1472, 100, 1472, 1, 0, 8192, 8192];
        let frames: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let p = plan(&refs, usize::MAX);
        assert_eq!(p, [(0, 4), (4, 2), (6, 1), (7, 2)]);
        let p = plan(&refs, 0);
        assert_eq!(p.len(), sizes.len());
        assert!(p.iter().enumerate().all(|(i, &(f, k))| f == i && k == 1));
    }

    /// Read the headers as sendmmsg would (under Miri: every pointer must
    /// still be valid after all headers were built)
    #[test]
    fn test_segment_headers_point_at_the_frames() {
        let sizes = [1000usize, 1000, 1000, 500, 7, 1000, 1000];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let to: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        let msgs = SegmentMessages::new(&refs, to, 1472);
        let hdrs = msgs.headers();
        let mut seen = Vec::new();
        let mut segments = Vec::new();
        for h in &hdrs {
            let m = &h.msg_hdr;
            // SAFETY: the test stands in for the kernel and reads within
            // the sizes each header records.
            unsafe {
                let name =
                    std::slice::from_raw_parts(m.msg_name.cast::<u8>(), m.msg_namelen as usize);
                assert_eq!(
                    name,
                    std::slice::from_raw_parts(
                        SockAddr::from(to).as_ptr().cast::<u8>(),
                        name.len()
                    )
                );
                for iov in std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen) {
                    seen.push(
                        std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len).to_vec(),
                    );
                }
                let control = if m.msg_controllen == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(m.msg_control.cast::<u8>(), m.msg_controllen)
                };
                segments.push(
                    cmsg::iter(control, control.len())
                        .map(|c| (c.level, c.ty, c.data.to_vec()))
                        .collect::<Vec<_>>(),
                );
            }
        }
        assert_eq!(seen, frames);
        // runs: 1000 x3 + 500, then 7 alone, then 1000 x2
        assert_eq!(hdrs.len(), 3);
        let segment = vec![(
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            1000u16.to_ne_bytes().to_vec(),
        )];
        assert_eq!(segments, [segment.clone(), vec![], segment]);
    }
}
