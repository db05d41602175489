//! The payloads of one TCP output, in arrival order, shared by all its clients
//!
//! Every payload of the group is copied once into a [`Log`]: chunks of
//! [`CHUNK_LEN`] bytes, a payload never split over two. A client is only a
//! position in it (an absolute byte offset), so a client costs no memory
//! of its own however far behind it is, and a `writev` to it points at the
//! chunks where the bytes lie. The log keeps what the client furthest
//! behind still needs, and each client may be at most `--client-queue`
//! bytes behind the newest payload ([`Log::skip_target`] says where a
//! client that is further behind continues), so the log itself never
//! holds more than one client queue plus one payload and two chunks,
//! whatever the number of clients. Chunks no client needs any more are
//! kept for reuse (at most [`SPARE_CHUNKS`]) or freed.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Bytes per chunk: large enough that a `writev` takes one or two slices,
/// small enough that the chunk at either end of the log wastes little
pub(crate) const CHUNK_LEN: usize = 256 * 1024;
/// Emptied chunks kept for reuse instead of being freed
pub(crate) const SPARE_CHUNKS: usize = 4;

/// One chunk: `data` holds the bytes from absolute position `start` on
#[derive(Debug)]
struct Chunk {
    start: u64,
    data: Vec<u8>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// The shared payload log of one TCP output (see the module docs)
#[derive(Debug, Default)]
pub(crate) struct Log {
    chunks: VecDeque<Chunk>,
    /// End position of every payload still in the log, ascending: payload
    /// number `first_seq + i` ends at `ends[i]` (and the next one starts there)
    ends: VecDeque<u64>,
    /// Number of the first payload in `ends`
    first_seq: u64,
    /// Where that payload starts
    first_start: u64,
    /// Position after the newest byte
    head: u64,
    spare: Vec<Vec<u8>>,
    /// Bytes of chunks freed (not kept as spares) since [`Log::take_freed`]
    freed: usize,
}

impl Log {
    /// Append one payload (empty ones are ignored: they carry nothing)
    pub(crate) fn push(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.data.capacity() - c.data.len() >= payload.len());
        if !fits {
            let mut data = self.spare.pop().unwrap_or_default();
            data.clear();
            data.reserve_exact(CHUNK_LEN.max(payload.len()));
            self.chunks.push_back(Chunk {
                start: self.head,
                data,
            });
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.data.extend_from_slice(payload);
        }
        self.head += payload.len() as u64;
        self.ends.push_back(self.head);
    }

    /// Position after the newest byte: where a new client starts
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Payloads appended so far
    pub(crate) fn seq_head(&self) -> u64 {
        self.first_seq + self.ends.len() as u64
    }

    /// Payloads that end at or before `pos` (complete for a client there)
    pub(crate) fn seq_at(&self, pos: u64) -> u64 {
        self.first_seq + self.ends.partition_point(|&e| e <= pos) as u64
    }

    /// Where the payload that holds `pos` ends (`pos` itself at a boundary)
    pub(crate) fn end_of(&self, pos: u64) -> u64 {
        let i = self.ends.partition_point(|&e| e <= pos);
        let start = match i {
            0 => self.first_start,
            _ => self.ends[i - 1],
        };
        match self.ends.get(i) {
            Some(&end) if start < pos => end,
            _ => pos,
        }
    }

    /// Where a client at payload boundary `pos` continues if it may be at
    /// most `queue` bytes behind: the first payload boundary from which
    /// at most `queue` bytes follow, but never past the start of the
    /// newest payload (a payload larger than the queue is still
    /// delivered); `None` if it is not behind that far
    pub(crate) fn skip_target(&self, pos: u64, queue: usize) -> Option<u64> {
        if self.head.saturating_sub(pos) <= queue as u64 {
            return None;
        }
        let floor = self.head - queue as u64;
        // boundaries are `ends` (each one the start of the next payload)
        let i = self.ends.partition_point(|&e| e < floor);
        let newest_start = match self.ends.len() {
            0 | 1 => self.first_start,
            n => self.ends[n - 2],
        };
        let target = self.ends.get(i).copied().unwrap_or(self.head);
        let target = target.min(newest_start);
        (target > pos).then_some(target)
    }

    /// The bytes from `pos` on, as slices of the chunks, at most `max`
    /// bytes, into `out`; the number of slices and of bytes
    pub(crate) fn slices<'a>(
        &'a self,
        pos: u64,
        max: usize,
        out: &mut [IoSlice<'a>],
    ) -> (usize, usize) {
        let (mut n, mut total) = (0, 0);
        let first = self.chunks.partition_point(|c| c.end() <= pos);
        for chunk in self.chunks.iter().skip(first) {
            if total == max || n == out.len() {
                break;
            }
            let from = usize::try_from(pos.saturating_sub(chunk.start)).unwrap_or(usize::MAX);
            let Some(rest) = chunk.data.get(from..) else {
                continue;
            };
            let take = rest.len().min(max - total);
            if take > 0 {
                out[n] = IoSlice::new(&rest[..take]);
                n += 1;
                total += take;
            }
        }
        (n, total)
    }

    /// Copy the bytes `from..to` into `out`
    pub(crate) fn copy(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let mut pos = from;
        while pos < to {
            let mut one = [IoSlice::new(&[])];
            let left = usize::try_from(to - pos).unwrap_or(usize::MAX);
            let (n, got) = self.slices(pos, left, &mut one);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&one[0]);
            pos += got as u64;
        }
    }

    /// Let go of everything before `pos` (the position of the client
    /// furthest behind; [`Log::head`] when there is none)
    pub(crate) fn release(&mut self, pos: u64) {
        let pos = pos.min(self.head);
        while self.chunks.front().is_some_and(|c| c.end() <= pos) {
            // a chunk still being filled is released only when it is full
            // or no client needs anything: then the log starts afresh
            if self.chunks.len() == 1 && pos < self.head {
                break;
            }
            if let Some(chunk) = self.chunks.pop_front() {
                self.recycle(chunk.data);
            }
        }
        while let Some(end) = self.ends.front().copied().filter(|&e| e <= pos) {
            self.ends.pop_front();
            self.first_seq += 1;
            self.first_start = end;
        }
    }

    fn recycle(&mut self, data: Vec<u8>) {
        if self.spare.len() < SPARE_CHUNKS && data.capacity() == CHUNK_LEN {
            self.spare.push(data);
        } else {
            self.freed += data.capacity();
        }
    }

    /// Free the chunks kept for reuse (before memory is handed back)
    pub(crate) fn drop_spares(&mut self) {
        self.spare = Vec::new();
    }

    /// Bytes held in chunks (in use or spare)
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.chunks.iter().map(|c| c.data.capacity()).sum::<usize>()
            + self.spare.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Bytes of chunks freed since the last call
    pub(crate) fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(log: &Log, pos: u64, max: usize) -> Vec<u8> {
        let mut s = [IoSlice::new(&[]); 8];
        let (n, total) = log.slices(pos, max, &mut s);
        let out: Vec<u8> = s[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(out.len(), total);
        out
    }

    #[test]
    fn test_push_and_read_back() {
        let mut log = Log::default();
        log.push(b"abc");
        log.push(b"");
        log.push(b"defg");
        assert_eq!(log.head(), 7);
        assert_eq!(log.seq_head(), 2);
        assert_eq!(joined(&log, 0, 100), b"abcdefg");
        assert_eq!(joined(&log, 2, 3), b"cde");
        assert_eq!(joined(&log, 7, 100), b"");
        assert_eq!((log.seq_at(0), log.seq_at(2), log.seq_at(3)), (0, 0, 1));
        assert_eq!((log.seq_at(6), log.seq_at(7)), (1, 2));
        assert_eq!((log.end_of(0), log.end_of(1), log.end_of(3)), (0, 3, 3));
        assert_eq!((log.end_of(4), log.end_of(7)), (7, 7));
        let mut out = Vec::new();
        log.copy(4, 7, &mut out);
        assert_eq!(out, b"efg");
    }

    #[test]
    fn test_payloads_never_span_chunks() {
        let mut log = Log::default();
        let big = vec![7u8; CHUNK_LEN - 10];
        log.push(&big);
        log.push(&[1u8; 20]);
        assert_eq!(log.chunks.len(), 2);
        let mut s = [IoSlice::new(&[]); 8];
        assert_eq!(log.slices(0, usize::MAX, &mut s), (2, CHUNK_LEN + 10));
        assert_eq!(s[1].len(), 20);
        // one payload larger than a chunk gets a chunk of its own size
        log.push(&vec![2u8; CHUNK_LEN + 1]);
        assert_eq!(log.chunks.len(), 3);
        assert_eq!(joined(&log, log.head() - 2, 10), [2, 2]);
    }

    #[test]
    fn test_skip_target_keeps_boundaries_and_the_newest() {
        let mut log = Log::default();
        for i in 0..10u8 {
            log.push(&[i; 100]);
        }
        assert_eq!(log.skip_target(0, 1000), None);
        assert_eq!(log.skip_target(0, 1001), None);
        // 250 bytes allowed: continue at 800 (the last boundary with at most 250 after it)
        assert_eq!(log.skip_target(0, 250), Some(800));
        assert_eq!(log.skip_target(0, 200), Some(800));
        assert_eq!(log.skip_target(0, 199), Some(900));
        // smaller than one payload: still the newest payload
        assert_eq!(log.skip_target(0, 10), Some(900));
        assert_eq!(log.skip_target(900, 10), None);
        assert_eq!(log.seq_at(800) - log.seq_at(0), 8);
    }

    #[test]
    fn test_release_frees_and_recycles() {
        let mut log = Log::default();
        let payload = vec![3u8; 60_000];
        for _ in 0..40 {
            log.push(&payload);
        }
        let chunks = log.chunks.len();
        assert!(chunks >= 10, "{chunks}");
        // a client at 2/3 of the log
        let pos = log.ends[26];
        log.release(pos);
        assert_eq!(log.first_seq, 27);
        assert_eq!(log.seq_at(pos), 27);
        assert_eq!(log.seq_head(), 40);
        assert!(log.chunks.front().unwrap().start <= pos);
        assert_eq!(joined(&log, pos, 3), [3, 3, 3]);
        assert_eq!(log.spare.len(), SPARE_CHUNKS);
        assert!(log.take_freed() > 0);
        assert_eq!(log.take_freed(), 0);
        // nobody left: everything goes, positions carry on
        let head = log.head();
        log.release(head);
        assert!(log.chunks.is_empty() && log.ends.is_empty());
        assert_eq!(log.seq_head(), 40);
        assert!(log.allocated() <= SPARE_CHUNKS * CHUNK_LEN);
        log.push(b"x");
        assert_eq!(log.seq_at(log.head()), 41);
        assert_eq!(joined(&log, head, 10), b"x");
    }

    #[test]
    fn test_release_keeps_the_chunk_being_filled() {
        let mut log = Log::default();
        log.push(b"abc");
        log.push(b"def");
        log.release(3);
        assert_eq!(joined(&log, 3, 10), b"def");
        assert_eq!(log.seq_at(3), 1);
        log.push(b"gh");
        assert_eq!(joined(&log, 3, 10), b"defgh");
    }
}
