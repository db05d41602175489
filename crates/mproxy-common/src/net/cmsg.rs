//! Control messages (`cmsg(3)`): one encoder and one iterator over plain
//! byte buffers, instead of `CMSG_FIRSTHDR`/`CMSG_NXTHDR` pointer walks
//!
//! The layout is the kernel's: each message is a header (`cmsg_len`, a
//! `size_t` counting header and data; `cmsg_level`; `cmsg_type`), its data,
//! and padding up to the alignment of `size_t`. Reading and writing it as
//! bytes needs no `unsafe`, never reads past the buffer, and never panics
//! on what the kernel (or anything else) left there, so it runs under Miri.

use std::mem::size_of;

/// Bytes of one control-message buffer: room for every message a receive
/// asks for (SO_RXQ_OVFL and UDP_GRO, 24 bytes each) or a send sets
/// (UDP_SEGMENT)
pub(crate) const CMSG_BUF_LEN: usize = 64;

/// A control-message buffer, aligned like `struct cmsghdr`
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_BUF_LEN]);

impl Default for CmsgBuf {
    fn default() -> Self {
        Self([0; CMSG_BUF_LEN])
    }
}

/// Alignment of control messages (`CMSG_ALIGN`: the size of `size_t`)
const ALIGN: usize = size_of::<usize>();

/// `cmsg_len` field size (a `size_t`)
const LEN_FIELD: usize = size_of::<usize>();

/// Size of `struct cmsghdr`, padded (`CMSG_ALIGN(sizeof(struct cmsghdr))`)
const HDR: usize = align(LEN_FIELD + 2 * size_of::<libc::c_int>());

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// `CMSG_LEN(n)`: header plus `n` bytes of data, the value of `cmsg_len`
pub(crate) const fn cmsg_len(n: usize) -> usize {
    HDR + n
}

/// `CMSG_SPACE(n)`: what a message with `n` bytes of data takes in the
/// buffer, padding included
pub(crate) const fn cmsg_space(n: usize) -> usize {
    HDR + align(n)
}

/// Writes control messages one after another into a buffer
#[derive(Debug)]
pub(crate) struct Encoder<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Encoder<'a> {
    /// Start writing at the beginning of `buf`
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Append one message; false (and nothing written) if it does not fit
    pub(crate) fn push(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) -> bool {
        let space = cmsg_space(data.len());
        let Some(room) = self.buf.get_mut(self.len..self.len + space) else {
            return false;
        };
        room.fill(0);
        let (len_field, rest) = room.split_at_mut(LEN_FIELD);
        len_field.copy_from_slice(&cmsg_len(data.len()).to_ne_bytes());
        let (level_field, rest) = rest.split_at_mut(size_of::<libc::c_int>());
        level_field.copy_from_slice(&level.to_ne_bytes());
        let (type_field, _) = rest.split_at_mut(size_of::<libc::c_int>());
        type_field.copy_from_slice(&ty.to_ne_bytes());
        room[HDR..HDR + data.len()].copy_from_slice(data);
        self.len += space;
        true
    }

    /// Bytes written so far (the value for `msg_controllen`)
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One control message: level, type and data
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cmsg<'a> {
    pub(crate) level: libc::c_int,
    pub(crate) ty: libc::c_int,
    pub(crate) data: &'a [u8],
}

impl Cmsg<'_> {
    /// The data as a native-endian `u32`/`int` (what SO_RXQ_OVFL and
    /// UDP_GRO carry), if it is at least that long
    pub(crate) fn u32(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.data.get(..4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    }
}

/// The control messages in the first `len` bytes of `buf` (what the
/// kernel reports in `msg_controllen`)
///
/// Stops at the first header that is malformed (shorter than a header) or
/// runs past the end, as `CMSG_NXTHDR` does.
pub(crate) fn iter(buf: &[u8], len: usize) -> Iter<'_> {
    Iter {
        buf: &buf[..len.min(buf.len())],
    }
}

/// Iterator over control messages, see [`iter`]
#[derive(Debug, Clone)]
pub(crate) struct Iter<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = Cmsg<'a>;

    fn next(&mut self) -> Option<Cmsg<'a>> {
        let header = self.buf.get(..HDR)?;
        let field = |at: usize, n: usize| header.get(at..at + n);
        let len = usize::from_ne_bytes(field(0, LEN_FIELD)?.try_into().ok()?);
        let int = size_of::<libc::c_int>();
        let level = libc::c_int::from_ne_bytes(field(LEN_FIELD, int)?.try_into().ok()?);
        let ty = libc::c_int::from_ne_bytes(field(LEN_FIELD + int, int)?.try_into().ok()?);
        let Some(data) = len
            .checked_sub(HDR)
            .and_then(|n| self.buf.get(HDR..HDR + n))
        else {
            self.buf = &[];
            return None;
        };
        self.buf = self.buf.get(align(len)..).unwrap_or(&[]);
        Some(Cmsg { level, ty, data })
    }
}

/// What a receive's control messages said
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ancillary {
    /// SO_RXQ_OVFL: the socket's cumulative drop counter when this
    /// message was queued
    pub(crate) kernel_drops: Option<u32>,
    /// UDP_GRO: the segment size of a coalesced buffer (0: not coalesced)
    pub(crate) gro_segment: usize,
}

/// Parse the control messages of one received message
pub(crate) fn parse_recv(buf: &[u8], len: usize) -> Ancillary {
    let mut out = Ancillary::default();
    for c in iter(buf, len) {
        match (c.level, c.ty) {
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => out.kernel_drops = c.u32(),
            (libc::SOL_UDP, libc::UDP_GRO) => {
                out.gro_segment = c
                    .u32()
                    .and_then(|g| usize::try_from(g as libc::c_int).ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    out
}

/// Write the UDP_SEGMENT message of a GSO send into `buf`; its length
/// (for `msg_controllen`), 0 if it does not fit
pub(crate) fn encode_segment(buf: &mut CmsgBuf, segment: u16) -> usize {
    let mut enc = Encoder::new(&mut buf.0);
    if enc.push(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes()) {
        enc.len()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sizes_match_libc() {
        for n in [0u32, 1, 2, 4, 7, 8, 9, 16] {
            // SAFETY: CMSG_SPACE and CMSG_LEN are pure arithmetic on `n`.
            let (space, len) = unsafe { (libc::CMSG_SPACE(n), libc::CMSG_LEN(n)) };
            assert_eq!(cmsg_space(n as usize), space as usize, "space {n}");
            assert_eq!(cmsg_len(n as usize), len as usize, "len {n}");
        }
    }

    #[test]
    fn test_encode_then_iterate() {
        let mut buf = [0u8; 80];
        let mut enc = Encoder::new(&mut buf);
        assert!(enc.push(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes()));
        assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, &1472i32.to_ne_bytes()));
        assert!(enc.push(1, 2, b"odd"));
        let len = enc.len();
        assert_eq!(len, 2 * cmsg_space(4) + cmsg_space(3));
        assert!(!enc.push(1, 2, &[0; 8]), "no room: nothing written");
        assert_eq!(enc.len(), len);
        let got: Vec<Cmsg<'_>> = iter(&buf, len).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Cmsg {
                level: 1,
                ty: 2,
                data: b"odd"
            }
        );
        assert_eq!(
            parse_recv(&buf, len),
            Ancillary {
                kernel_drops: Some(7),
                gro_segment: 1472
            }
        );
        // a length cut short by the kernel (MSG_CTRUNC) ends the walk
        assert_eq!(iter(&buf, cmsg_space(4) + 3).count(), 1);
    }

    #[test]
    fn test_segment_message_is_what_the_kernel_expects() {
        let mut buf = CmsgBuf::default();
        let n = encode_segment(&mut buf, 1472);
        // SAFETY: pure arithmetic.
        assert_eq!(n, unsafe { libc::CMSG_SPACE(2) } as usize);
        let c: Vec<Cmsg<'_>> = iter(&buf.0, n).collect();
        assert_eq!(
            c,
            [Cmsg {
                level: libc::SOL_UDP,
                ty: libc::UDP_SEGMENT,
                data: &1472u16.to_ne_bytes()
            }]
        );
    }

    #[test]
    fn test_malformed_buffers_end_the_walk_without_panicking() {
        let mut buf = [0u8; 48];
        // cmsg_len 0 and 8 (shorter than a header), 1000 (past the end)
        for bad in [0usize, 8, 1000, usize::MAX] {
            buf[..LEN_FIELD].copy_from_slice(&bad.to_ne_bytes());
            assert_eq!(iter(&buf, buf.len()).count(), 0, "cmsg_len {bad}");
        }
        // every byte pattern of a small seed stream: no panic, no overrun
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            buf[..LEN_FIELD].copy_from_slice(&((x % 64) as usize).to_ne_bytes());
            for len in [0, 7, 16, 17, 48, 100] {
                let total: usize = iter(&buf, len).map(|c| c.data.len()).sum();
                assert!(total <= len);
                let _ = parse_recv(&buf, len);
            }
        }
    }
}
