//! The session's outgoing frames: FIFO queues of whole datagrams packed
//! into one reused buffer
//!
//! A frame enters a queue once (copied from the sender's frame buffer) and
//! leaves it by reference: [`FrameQueue::front_run`] hands the driver a run
//! of queued frames as slices of the queue's own buffer, so the bytes are
//! not copied again before the kernel takes them. The buffer is reset once
//! everything in it went out and compacted when its dead front half
//! outgrows the live part, so memory follows what is queued.

use std::collections::VecDeque;
use std::time::Instant;

/// Where a frame goes
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Every destination of a fan-out sender (its only "path")
    All,
    /// One path of a multipath sender
    Path(usize),
    /// A copy on each path whose bit is set (redundant mode)
    Paths(u64),
}

/// What a queued frame is, for the accounting done when it leaves
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A DATA frame (FIN included) sent for the first time
    Data {
        /// Its sequence number
        seq: u32,
        /// Its payload length
        payload: u32,
    },
    /// An FEC repair frame (follows its block's DATA frames)
    Fec,
    /// A DATA frame re-sent in answer to a NACK
    Retransmit,
    /// A heartbeat, probe or other small control frame
    Control,
    /// A raw (unframed) datagram
    Raw,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    start: usize,
    len: usize,
    pub(crate) kind: Kind,
    /// Chosen when the frame reaches the head of its queue (`None`: not
    /// yet scheduled)
    pub(crate) dest: Option<Dest>,
    /// Pacing: not before this instant (set together with `dest`)
    pub(crate) not_before: Option<Instant>,
}

impl Item {
    /// Length of the frame in bytes
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One FIFO of frames
#[derive(Debug, Default)]
pub(crate) struct FrameQueue {
    buf: Vec<u8>,
    items: VecDeque<Item>,
    /// Bytes of the frames still queued
    queued: usize,
}

/// Compact once this many dead bytes sit before the first live frame
const COMPACT_AT: usize = 256 * 1024;

impl FrameQueue {
    /// Queue a copy of `frame`
    pub(crate) fn push(&mut self, frame: &[u8], kind: Kind, dest: Option<Dest>) {
        self.reclaim();
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        self.queued += frame.len();
        self.items.push_back(Item {
            start,
            len: frame.len(),
            kind,
            dest,
            not_before: None,
        });
    }

    /// Queue `frame` sealed: `seal` gets a buffer holding the frame plus
    /// `extra` spare bytes and the frame's length, and returns the sealed
    /// length (`None`: not sealed, nothing queued)
    pub(crate) fn push_sealed(
        &mut self,
        frame: &[u8],
        extra: usize,
        kind: Kind,
        dest: Option<Dest>,
        seal: impl FnOnce(&mut [u8], usize) -> Option<usize>,
    ) -> bool {
        self.reclaim();
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        self.buf.resize(start + frame.len() + extra, 0);
        let Some(len) = seal(&mut self.buf[start..], frame.len()) else {
            self.buf.truncate(start);
            return false;
        };
        self.buf.truncate(start + len);
        self.queued += len;
        self.items.push_back(Item {
            start,
            len,
            kind,
            dest,
            not_before: None,
        });
        true
    }

    /// Drop the bytes of frames that already went out, when worth it
    fn reclaim(&mut self) {
        match self.items.front() {
            None => self.buf.clear(),
            Some(first) if first.start >= COMPACT_AT && first.start * 2 >= self.buf.len() => {
                let cut = first.start;
                self.buf.drain(..cut);
                for it in &mut self.items {
                    it.start -= cut;
                }
            }
            Some(_) => {}
        }
    }

    /// Frames queued
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing is queued
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of the queued frames
    pub(crate) fn bytes(&self) -> usize {
        self.queued
    }

    /// Memory held by the queue's buffer
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The first queued frame's bookkeeping
    pub(crate) fn front(&self) -> Option<&Item> {
        self.items.front()
    }

    /// The bookkeeping of the `i`-th queued frame
    pub(crate) fn get(&self, i: usize) -> Option<&Item> {
        self.items.get(i)
    }

    /// The bookkeeping of the `i`-th queued frame
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut Item> {
        self.items.get_mut(i)
    }

    /// Bytes of the `i`-th queued frame
    #[cfg(test)]
    pub(crate) fn frame(&self, i: usize) -> Option<&[u8]> {
        let it = self.items.get(i)?;
        self.buf.get(it.start..it.start + it.len)
    }

    /// Take the first `n` frames off the queue and return them (slices of
    /// the queue's buffer, valid until the queue is next changed)
    pub(crate) fn pop_front(&mut self, n: usize) -> Vec<&[u8]> {
        let n = n.min(self.items.len());
        let mut out = Vec::with_capacity(n);
        for it in self.items.drain(..n) {
            self.queued -= it.len;
            if let Some(f) = self.buf.get(it.start..it.start + it.len) {
                out.push(f);
            }
        }
        out
    }

    /// Put frames that were taken but could not be sent back at the front,
    /// unscheduled (their bytes are still in the buffer: nothing was pushed
    /// since they were taken)
    pub(crate) fn unpop(&mut self, taken: &[Item]) {
        for it in taken.iter().rev() {
            self.queued += it.len;
            self.items.push_front(Item {
                dest: None,
                not_before: None,
                ..*it
            });
        }
    }

    /// Put frames that were taken but could not be sent back at the front,
    /// keeping where they were going
    pub(crate) fn unpop_keep(&mut self, taken: &[Item]) {
        for it in taken.iter().rev() {
            self.queued += it.len;
            self.items.push_front(*it);
        }
    }

    /// The bookkeeping of the first `n` frames (to keep before popping)
    pub(crate) fn items(&self, n: usize) -> Vec<Item> {
        self.items.iter().take(n).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fifo_and_reuse() {
        let mut q = FrameQueue::default();
        q.push(b"ab", Kind::Control, Some(Dest::All));
        q.push(b"cde", Kind::Control, None);
        assert_eq!((q.len(), q.bytes()), (2, 5));
        assert_eq!(q.frame(1), Some(&b"cde"[..]));
        let taken = q.items(1);
        assert_eq!(q.pop_front(1), vec![&b"ab"[..]]);
        assert_eq!(q.bytes(), 3);
        q.unpop(&taken);
        assert_eq!(q.pop_front(5), vec![&b"ab"[..], &b"cde"[..]]);
        assert!(q.is_empty());
        // the next push starts the buffer over
        q.push(b"f", Kind::Raw, None);
        assert_eq!(q.frame(0), Some(&b"f"[..]));
        assert_eq!(q.buf.len(), 1);
    }

    #[test]
    fn test_compaction_keeps_live_frames() {
        let mut q = FrameQueue::default();
        let big = vec![7u8; 1000];
        for _ in 0..400 {
            q.push(&big, Kind::Raw, None);
        }
        q.push(b"tail", Kind::Raw, None);
        assert_eq!(q.pop_front(400).len(), 400);
        // the next push moves the live frame to the front of the buffer
        q.push(b"next", Kind::Raw, None);
        assert_eq!(q.buf.len(), 8);
        assert_eq!(q.pop_front(2), vec![&b"tail"[..], &b"next"[..]]);
    }
}
