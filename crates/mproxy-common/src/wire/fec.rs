//! Payload of an FEC frame and the source symbol of a DATA frame
//!
//! An FEC frame carries one repair symbol of a block of `k` consecutive
//! DATA frames (the source frames, sequence numbers `base .. base + k`,
//! `base` being the FEC frame's header sequence number). The payload is
//! an 8-byte FEC header followed by the symbol:
//!
//! ```text
//! offset size field
//!      0    2 k            source frames in the block (1..=1024)
//!      2    2 m            repair symbols of the block (1..=1024)
//!      4    2 index        this symbol's index (0..m)
//!      6    2 symbol_len   bytes per symbol (a multiple of 64, nonzero)
//!      8    . symbol       symbol_len bytes
//! ```
//!
//! The source symbol of a DATA frame is its payload length (u16), its
//! OPEN and FIN flags (u8) and its payload, zero-padded to `symbol_len`
//! (see [`source_symbol`]). All integers are big-endian.

/// Bytes of the FEC header in front of the symbol
pub const FEC_HEADER_LEN: usize = 8;
/// Most source frames in one block
pub const FEC_MAX_BLOCK: usize = 1024;
/// Most repair symbols of one block
pub const FEC_MAX_REPAIR: usize = 1024;
/// Symbol sizes are multiples of this (Leopard-RS compatible shard size)
pub const FEC_SYMBOL_ALIGN: usize = 64;
/// Bytes in front of the payload inside a source symbol: length (u16) and flags (u8)
pub const FEC_SOURCE_PREFIX: usize = 3;

/// The FEC header of an FEC frame
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FecRepr {
    /// Source frames in the block
    pub k: u16,
    /// Repair symbols of the block
    pub m: u16,
    /// Index of this repair symbol (`0..m`)
    pub index: u16,
    /// Bytes per symbol
    pub symbol_len: u16,
}

/// Why an FEC payload is invalid
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FecError {
    /// Shorter than the FEC header, or the symbol is not `symbol_len` bytes
    #[error("FEC payload length does not match its header")]
    Length,
    /// `k`, `m`, `index` or `symbol_len` out of range
    #[error("FEC header field out of range")]
    Range,
}

impl FecRepr {
    /// Parse an FEC frame's payload into its header and symbol
    ///
    /// # Errors
    /// [`FecError::Length`] unless the payload is exactly the header and
    /// `symbol_len` bytes; [`FecError::Range`] unless `1 <= k <= 1024`,
    /// `1 <= m <= 1024`, `index < m`, and `symbol_len` is a nonzero
    /// multiple of 64.
    pub fn parse(payload: &[u8]) -> Result<(Self, &[u8]), FecError> {
        let (head, symbol) = payload
            .split_first_chunk::<FEC_HEADER_LEN>()
            .ok_or(FecError::Length)?;
        let r = Self {
            k: u16::from_be_bytes([head[0], head[1]]),
            m: u16::from_be_bytes([head[2], head[3]]),
            index: u16::from_be_bytes([head[4], head[5]]),
            symbol_len: u16::from_be_bytes([head[6], head[7]]),
        };
        let k = usize::from(r.k);
        let m = usize::from(r.m);
        let len = usize::from(r.symbol_len);
        if !(1..=FEC_MAX_BLOCK).contains(&k)
            || !(1..=FEC_MAX_REPAIR).contains(&m)
            || r.index >= r.m
            || len == 0
            || len % FEC_SYMBOL_ALIGN != 0
        {
            return Err(FecError::Range);
        }
        if symbol.len() != len {
            return Err(FecError::Length);
        }
        Ok((r, symbol))
    }

    /// Append the FEC header and `symbol` to `out`
    pub fn emit(&self, symbol: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.k.to_be_bytes());
        out.extend_from_slice(&self.m.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.symbol_len.to_be_bytes());
        out.extend_from_slice(symbol);
    }
}

/// Symbol size for a block whose longest DATA payload is `max_payload`
/// bytes: prefix plus payload, rounded up to a multiple of 64
pub fn symbol_len_for(max_payload: usize) -> usize {
    (FEC_SOURCE_PREFIX + max_payload).div_ceil(FEC_SYMBOL_ALIGN) * FEC_SYMBOL_ALIGN
}

/// Write the unpadded source symbol of a DATA frame into `out` (cleared
/// first): payload length (u16), flags masked to OPEN|FIN (u8), payload
pub fn source_symbol(flags: super::Flags, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(flags.0 & (super::Flags::OPEN.0 | super::Flags::FIN.0));
    out.extend_from_slice(&payload[..usize::from(len)]);
}

/// Split a (decoded) source symbol into flags and payload; `None` if its
/// length field runs past the symbol or its flags have unknown bits
pub fn parse_source_symbol(symbol: &[u8]) -> Option<(super::Flags, &[u8])> {
    let (head, rest) = symbol.split_first_chunk::<FEC_SOURCE_PREFIX>()?;
    let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
    if head[2] & !(super::Flags::OPEN.0 | super::Flags::FIN.0) != 0 {
        return None;
    }
    Some((super::Flags(head[2]), rest.get(..len)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Flags;

    #[test]
    fn test_round_trip_and_errors() {
        let r = FecRepr {
            k: 3,
            m: 2,
            index: 1,
            symbol_len: 64,
        };
        let mut b = Vec::new();
        r.emit(&[7u8; 64], &mut b);
        assert_eq!(&b[..8], &[0, 3, 0, 2, 0, 1, 0, 64]);
        let (p, sym) = FecRepr::parse(&b).unwrap();
        assert_eq!((p, sym), (r, &[7u8; 64][..]));
        assert_eq!(FecRepr::parse(&b[..70]), Err(FecError::Length));
        assert_eq!(FecRepr::parse(&b[..3]), Err(FecError::Length));
        for (i, v) in [(1usize, 0u8), (3, 0), (5, 2), (7, 63)] {
            let mut bad = b.clone();
            bad[i] = v;
            assert_eq!(FecRepr::parse(&bad), Err(FecError::Range), "byte {i}");
        }
        let mut big = b.clone();
        big[0] = 0x04;
        big[1] = 0x01; // k = 1025
        assert_eq!(FecRepr::parse(&big), Err(FecError::Range));
    }

    #[test]
    fn test_source_symbol() {
        let mut s = Vec::new();
        source_symbol(Flags::FIN | Flags::FEC | Flags::RETRANSMIT, b"ab", &mut s);
        assert_eq!(s, [0, 2, 2, b'a', b'b']);
        s.resize(symbol_len_for(2), 0);
        assert_eq!(s.len(), 64);
        assert_eq!(parse_source_symbol(&s), Some((Flags::FIN, &b"ab"[..])));
        assert_eq!(parse_source_symbol(&[0, 70, 0, 1]), None);
        assert_eq!(parse_source_symbol(&[0, 0, 0x10]), None);
        assert_eq!(parse_source_symbol(&[0, 0]), None);
        assert_eq!(symbol_len_for(1448), 1472);
        assert_eq!(symbol_len_for(61), 64);
        assert_eq!(symbol_len_for(62), 128);
    }
}
