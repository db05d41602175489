//! Packing a byte stream into datagrams (sans-IO)
//!
//! [`Packer`] turns the bytes read from a file, pipe or TCP connection into
//! datagram payloads. In [`Framing::Lines`] mode (the default for the
//! client) a datagram carries whole lines, as many as fit in `max` bytes; a
//! line is split only when it alone is longer than `max`, and each such
//! split is counted. Complete lines are emitted as soon as they are pushed,
//! so a line typed on stdin goes on the wire at once; only an unfinished
//! line waits for its newline (or for [`Packer::finish`]).
//!
//! ```
//! use mproxy_common::pack::{Framing, Packer};
//!
//! let mut p = Packer::new(Framing::Lines, 16);
//! let mut out = Vec::new();
//! p.push(b"alpha\nbeta\ngam", |d| out.push(d.to_vec()));
//! p.push(b"ma\n", |d| out.push(d.to_vec()));
//! p.finish(|d| out.push(d.to_vec()));
//! assert_eq!(out, vec![b"alpha\nbeta\n".to_vec(), b"gamma\n".to_vec()]);
//! ```

use std::fmt;
use std::str::FromStr;

/// How a byte stream is cut into datagrams
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Whole lines per datagram; a line is split only when longer than the maximum
    #[default]
    Lines,
    /// Chunks of up to the maximum size, cut anywhere
    Bytes,
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lines" | "line" => Ok(Self::Lines),
            "bytes" | "raw" => Ok(Self::Bytes),
            other => Err(format!(
                "unknown framing '{other}' (expected lines or bytes)"
            )),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lines => "lines",
            Self::Bytes => "bytes",
        })
    }
}

/// Cuts a byte stream into datagram payloads of at most `max` bytes
#[derive(Debug)]
pub struct Packer {
    framing: Framing,
    max: usize,
    pending: Vec<u8>,
    split_lines: u64,
}

impl Packer {
    /// A packer emitting payloads of at most `max` bytes (at least 1)
    pub fn new(framing: Framing, max: usize) -> Self {
        let max = max.max(1);
        Self {
            framing,
            max,
            pending: Vec::with_capacity(2 * max),
            split_lines: 0,
        }
    }

    /// Maximum payload size
    pub fn max(&self) -> usize {
        self.max
    }

    /// Lines that were longer than the maximum and had to be split
    pub fn split_lines(&self) -> u64 {
        self.split_lines
    }

    /// Bytes held back waiting for the end of their line
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feed bytes; `emit` is called with each finished payload
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        match self.framing {
            Framing::Bytes => {
                // bytes framing never holds data back
                for chunk in data.chunks(self.max) {
                    emit(chunk);
                }
            }
            Framing::Lines => {
                if self.pending.is_empty() {
                    let used = self.pack_lines(data, &mut emit);
                    self.pending.extend_from_slice(&data[used..]);
                } else {
                    self.pending.extend_from_slice(data);
                    let pending = std::mem::take(&mut self.pending);
                    let used = self.pack_lines(&pending, &mut emit);
                    self.pending = pending;
                    self.pending.drain(..used);
                }
            }
        }
    }

    /// Emit whatever is held back (an unterminated last line)
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        for chunk in self.pending.chunks(self.max) {
            emit(chunk);
        }
        self.pending.clear();
    }

    /// Emit complete lines of `buf`; returns how many bytes were consumed
    fn pack_lines(&mut self, buf: &[u8], emit: &mut impl FnMut(&[u8])) -> usize {
        let mut start = 0;
        while start < buf.len() {
            let end = (start + self.max).min(buf.len());
            let window = &buf[start..end];
            if let Some(nl) = window.iter().rposition(|&b| b == b'\n') {
                emit(&window[..=nl]);
                start += nl + 1;
            } else if window.len() == self.max {
                // a line longer than a datagram: the only case we split
                emit(window);
                self.split_lines += 1;
                start = end;
            } else {
                break;
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
        let mut p = Packer::new(framing, max);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, |d| out.push(d.to_vec()));
        }
        p.finish(|d| out.push(d.to_vec()));
        (out, p.split_lines())
    }

    #[test]
    fn test_lines_never_split_when_they_fit() {
        let (out, split) = run(Framing::Lines, 10, &[b"aaaa\nbbbb\ncccc\n"]);
        assert_eq!(out, vec![b"aaaa\nbbbb\n".to_vec(), b"cccc\n".to_vec()]);
        assert_eq!(split, 0);
    }

    #[test]
    fn test_line_across_reads() {
        let (out, _) = run(Framing::Lines, 100, &[b"ab", b"cd\nef", b"\n"]);
        assert_eq!(out, vec![b"abcd\n".to_vec(), b"ef\n".to_vec()]);
    }

    #[test]
    fn test_long_line_split_and_counted() {
        let (out, split) = run(Framing::Lines, 4, &[b"abcdefghij\nxy\n"]);
        assert_eq!(
            out,
            vec![
                b"abcd".to_vec(),
                b"efgh".to_vec(),
                b"ij\n".to_vec(),
                b"xy\n".to_vec()
            ]
        );
        assert_eq!(split, 2);
    }

    #[test]
    fn test_unterminated_tail_flushed() {
        let (out, _) = run(Framing::Lines, 8, &[b"a\nbc"]);
        assert_eq!(out, vec![b"a\n".to_vec(), b"bc".to_vec()]);
    }

    #[test]
    fn test_bytes_mode() {
        let (out, _) = run(Framing::Bytes, 3, &[b"abcdefg", b"h"]);
        assert_eq!(
            out,
            vec![
                b"abc".to_vec(),
                b"def".to_vec(),
                b"g".to_vec(),
                b"h".to_vec()
            ]
        );
    }

    #[test]
    fn test_concatenation_is_identity() {
        // every framing and size reproduces the stream exactly
        let data: Vec<u8> = (0..5000u32)
            .map(|i| {
                if i % 37 == 0 || i % 1013 == 0 {
                    b'\n'
                } else {
                    (i % 251) as u8
                }
            })
            .collect();
        for framing in [Framing::Lines, Framing::Bytes] {
            for max in [1, 2, 7, 64, 1472, 9000] {
                for step in [1, 13, 4096] {
                    let chunks: Vec<&[u8]> = data.chunks(step).collect();
                    let (out, _) = run(framing, max, &chunks);
                    assert!(out.iter().all(|d| d.len() <= max && !d.is_empty()));
                    assert_eq!(out.concat(), data, "{framing} max={max} step={step}");
                    if framing == Framing::Lines {
                        // only the last datagram of a run may end mid-line, and only at max size
                        for d in &out[..out.len() - 1] {
                            assert!(d.ends_with(b"\n") || d.len() == max);
                        }
                    }
                }
            }
        }
    }
}
