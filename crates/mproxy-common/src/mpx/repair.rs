//! The sender's retransmit buffer: recent DATA frames, bounded in bytes

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{Flags, Frame};

struct Held {
    frame: Vec<u8>,
    /// When it was last re-sent (not the original send)
    last_resent: Option<Instant>,
}

/// Frames kept for repair, oldest evicted first once `capacity` bytes of
/// frame buffers are held
///
/// Frames are stored in sequence order with no holes, so a sequence number
/// maps to its slot by subtraction. Evicted buffers are reused, so a
/// sender in steady state does not allocate per frame.
pub struct RepairBuffer {
    held: VecDeque<Held>,
    /// Sequence number of `held[0]`
    front: u32,
    bytes: usize,
    capacity: usize,
    spare: Vec<Vec<u8>>,
    /// The last frame given to [`RepairBuffer::store_with`] when it was too
    /// large to hold
    oversize: Vec<u8>,
}

impl std::fmt::Debug for RepairBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepairBuffer")
            .field("frames", &self.held.len())
            .field("bytes", &self.bytes)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// What became of one requested sequence number
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Re-sent
    Resent,
    /// Re-sent very recently (another receiver asked too): not again yet
    Suppressed,
    /// No longer (or never) held: cannot be repaired
    Unavailable,
}

impl RepairBuffer {
    /// A buffer holding at most `capacity` bytes of frames
    pub fn new(capacity: usize) -> Self {
        Self {
            held: VecDeque::new(),
            front: 0,
            bytes: 0,
            capacity,
            spare: Vec::new(),
            oversize: Vec::new(),
        }
    }

    /// Bytes currently held (the memory of the held frames' buffers, which
    /// the capacity bounds)
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sequence numbers held: the first, and how many follow it
    pub fn range(&self) -> (u32, usize) {
        (self.front, self.held.len())
    }

    /// Length of held frame `seq`
    pub fn frame_len(&self, seq: u32) -> Option<usize> {
        let idx = seq.wrapping_sub(self.front) as usize;
        self.held.get(idx).map(|h| h.frame.len())
    }

    /// Keep a copy of DATA frame `seq` (must follow the previous one)
    pub fn store(&mut self, seq: u32, frame: &[u8]) {
        self.store_with(seq, frame.len(), |buf| {
            buf.copy_from_slice(frame);
            frame.len()
        });
    }

    /// Write DATA frame `seq` straight into the buffer and return it: `write`
    /// gets `max_len` bytes to fill and returns the frame's length. The
    /// payload is copied once (into the held frame) instead of into a
    /// scratch frame and then again into the buffer. Same rules as
    /// [`RepairBuffer::store`]; a frame larger than the whole capacity is
    /// returned but not held.
    pub fn store_with(
        &mut self,
        seq: u32,
        max_len: usize,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) -> &[u8] {
        let mut buf = self.spare.pop().unwrap_or_default();
        // spare buffers keep their last frame's length: mostly full-size
        // already, so this rarely fills anything
        buf.resize(max_len, 0);
        let len = write(&mut buf).min(max_len);
        buf.truncate(len);
        // a frame well under the full size (or a buffer over the whole
        // capacity) gives back the room it does not use, so the count
        // below tracks real frame sizes; full frames, the fast case, keep
        // their buffer as it is
        if len * 2 < buf.capacity() || buf.capacity() > self.capacity {
            buf.shrink_to(len);
        }
        if buf.capacity() > self.capacity {
            self.clear_all();
            self.front = seq.wrapping_add(1);
            self.oversize = buf;
            return &self.oversize;
        }
        if self.held.is_empty() || self.front.wrapping_add(self.held.len() as u32) != seq {
            self.clear_all();
            self.front = seq;
        }
        while self.bytes + buf.capacity() > self.capacity {
            match self.held.pop_front() {
                Some(h) => {
                    self.bytes -= h.frame.capacity();
                    self.front = self.front.wrapping_add(1);
                    self.spare.push(h.frame);
                }
                None => break,
            }
        }
        self.bytes += buf.capacity();
        self.held.push_back(Held {
            frame: buf,
            last_resent: None,
        });
        self.held.back().map_or(&[], |h| h.frame.as_slice())
    }

    fn clear_all(&mut self) {
        for h in self.held.drain(..) {
            self.spare.push(h.frame);
        }
        self.bytes = 0;
    }

    /// Re-send frame `seq` through `emit`, flagged RETRANSMIT, unless it
    /// went out less than `min_gap` ago
    pub fn resend(
        &mut self,
        now: Instant,
        seq: u32,
        min_gap: Duration,
        emit: &mut impl FnMut(&[u8]),
    ) -> RepairOutcome {
        let idx = seq.wrapping_sub(self.front) as usize;
        let Some(h) = self.held.get_mut(idx) else {
            return RepairOutcome::Unavailable;
        };
        if h.last_resent
            .is_some_and(|t| now.saturating_duration_since(t) < min_gap)
        {
            return RepairOutcome::Suppressed;
        }
        let mut f = Frame::new_unchecked(&mut h.frame[..]);
        if !f.flags().contains(Flags::RETRANSMIT) {
            let flags = f.flags() | Flags::RETRANSMIT;
            f.set_flags(flags);
            f.fill_checksum();
        }
        h.last_resent = Some(now);
        emit(&h.frame);
        RepairOutcome::Resent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram, FrameType, Repr};

    fn frame(seq: u32, len: usize) -> Vec<u8> {
        let repr = Repr {
            frame_type: FrameType::Data,
            flags: Flags::NONE,
            session: 1,
            stream: 1,
            seq,
        };
        let mut b = vec![0u8; 24 + len];
        repr.emit_with_payload(&mut b, &vec![b'x'; len]).unwrap();
        b
    }

    #[test]
    fn test_bounded_and_resend() {
        let mut r = RepairBuffer::new(10 * 124);
        let t = Instant::now();
        for seq in 0..20u32 {
            r.store(seq, &frame(seq, 100));
        }
        assert_eq!(r.bytes(), 10 * 124);
        let mut out = Vec::new();
        let mut emit = |f: &[u8]| out.push(f.to_vec());
        assert_eq!(
            r.resend(t, 5, Duration::from_millis(5), &mut emit),
            RepairOutcome::Unavailable
        );
        assert_eq!(
            r.resend(t, 15, Duration::from_millis(5), &mut emit),
            RepairOutcome::Resent
        );
        assert_eq!(
            r.resend(t, 15, Duration::from_millis(5), &mut emit),
            RepairOutcome::Suppressed
        );
        let later = t + Duration::from_millis(6);
        assert_eq!(
            r.resend(later, 15, Duration::from_millis(5), &mut emit),
            RepairOutcome::Resent
        );
        assert_eq!(
            r.resend(t, 20, Duration::from_millis(5), &mut emit),
            RepairOutcome::Unavailable
        );
        assert_eq!(out.len(), 2);
        let Datagram::Mpx(repr, _) = classify(&out[0]) else {
            panic!("not a valid frame")
        };
        assert_eq!(repr.seq, 15);
        assert!(repr.flags.contains(Flags::RETRANSMIT));
    }

    #[test]
    fn test_store_with_holds_what_store_holds() {
        let mut a = RepairBuffer::new(10 * 124);
        let mut b = RepairBuffer::new(10 * 124);
        let t = Instant::now();
        for seq in 0..20u32 {
            let f = frame(seq, 100);
            a.store(seq, &f);
            let held = b.store_with(seq, f.len(), |buf| {
                buf.copy_from_slice(&f);
                f.len()
            });
            assert_eq!(held, &f[..]);
        }
        assert_eq!(a.bytes(), b.bytes());
        // written into room for 200 bytes: the buffers' memory is what counts
        let mut c = RepairBuffer::new(10 * 124);
        for seq in 0..20u32 {
            let f = frame(seq, 100);
            c.store_with(seq, 200, |buf| {
                buf[..f.len()].copy_from_slice(&f);
                f.len()
            });
        }
        assert!(
            c.bytes() <= 10 * 124 && c.bytes() >= 5 * 200,
            "{}",
            c.bytes()
        );
        for seq in 0..20u32 {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let ra = a.resend(t, seq, Duration::ZERO, &mut |f: &[u8]| x = f.to_vec());
            let rb = b.resend(t, seq, Duration::ZERO, &mut |f: &[u8]| y = f.to_vec());
            assert_eq!((ra, &x), (rb, &y), "seq {seq}");
        }
        // small frames in room for large ones are held at their own size
        let mut d = RepairBuffer::new(10 * 124);
        for seq in 0..20u32 {
            let f = frame(seq, 100);
            d.store_with(seq, 1000, |buf| {
                buf[..f.len()].copy_from_slice(&f);
                f.len()
            });
        }
        assert!(d.bytes() >= 8 * 124, "{} bytes held", d.bytes());
        // a repair buffer smaller than the frame room still holds frames
        // that fit it
        let mut e = RepairBuffer::new(200);
        let f = frame(0, 100);
        e.store_with(0, 1000, |buf| {
            buf[..f.len()].copy_from_slice(&f);
            f.len()
        });
        assert!(e.bytes() > 0);
        let mut n = 0;
        let resent = e.resend(t, 0, Duration::ZERO, &mut |_: &[u8]| n += 1);
        assert_eq!((resent, n), (RepairOutcome::Resent, 1));
        // a frame larger than the whole buffer is returned, not held
        let mut small = RepairBuffer::new(50);
        let big = frame(0, 100);
        let out = small
            .store_with(0, 200, |buf| {
                buf[..big.len()].copy_from_slice(&big);
                big.len()
            })
            .to_vec();
        assert_eq!(out, big);
        assert_eq!(small.bytes(), 0);
    }

    #[test]
    fn test_wraps_around() {
        let mut r = RepairBuffer::new(1 << 20);
        for seq in (u32::MAX - 2)..=u32::MAX {
            r.store(seq, &frame(seq, 10));
        }
        for seq in 0..3u32 {
            r.store(seq, &frame(seq, 10));
        }
        let mut n = 0;
        let t = Instant::now();
        assert_eq!(
            r.resend(t, u32::MAX - 1, Duration::ZERO, &mut |_| n += 1),
            RepairOutcome::Resent
        );
        assert_eq!(
            r.resend(t, 2, Duration::ZERO, &mut |_| n += 1),
            RepairOutcome::Resent
        );
        assert_eq!(n, 2);
    }
}
