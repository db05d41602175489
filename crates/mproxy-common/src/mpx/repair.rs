//! The sender's retransmit buffer: recent DATA frames, bounded in bytes

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{Flags, Frame};

struct Held {
    frame: Vec<u8>,
    /// When it was last re-sent (not the original send)
    last_resent: Option<Instant>,
}

/// Frames kept for repair, oldest evicted first once `capacity` bytes are held
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
        }
    }

    /// Bytes currently held
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keep a copy of DATA frame `seq` (must follow the previous one)
    pub fn store(&mut self, seq: u32, frame: &[u8]) {
        if frame.len() > self.capacity {
            self.clear_all();
            self.front = seq.wrapping_add(1);
            return;
        }
        if self.held.is_empty() || self.front.wrapping_add(self.held.len() as u32) != seq {
            self.clear_all();
            self.front = seq;
        }
        while self.bytes + frame.len() > self.capacity {
            match self.held.pop_front() {
                Some(h) => {
                    self.bytes -= h.frame.len();
                    self.front = self.front.wrapping_add(1);
                    self.spare.push(h.frame);
                }
                None => break,
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.bytes += buf.len();
        self.held.push_back(Held {
            frame: buf,
            last_resent: None,
        });
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
