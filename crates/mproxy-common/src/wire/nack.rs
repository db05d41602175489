//! Payload of a NACK frame: ranges of sequence numbers a receiver misses

/// Bytes per range: start (u32) and count (u16), big-endian
pub const NACK_RANGE_LEN: usize = 6;
/// Most ranges one NACK carries
pub const NACK_MAX_RANGES: usize = 128;

/// A run of missing sequence numbers `start .. start + count` (wrapping)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRange {
    /// First missing sequence number (wire value)
    pub start: u32,
    /// How many consecutive numbers are missing (at least 1)
    pub count: u16,
}

/// Parse a NACK payload; malformed trailing bytes and zero-length ranges
/// are ignored, at most [`NACK_MAX_RANGES`] are read
pub fn parse_nack(payload: &[u8]) -> impl Iterator<Item = NackRange> + '_ {
    payload
        .chunks_exact(NACK_RANGE_LEN)
        .take(NACK_MAX_RANGES)
        .map(|c| NackRange {
            start: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            count: u16::from_be_bytes([c[4], c[5]]),
        })
        .filter(|r| r.count > 0)
}

/// Append `ranges` (at most [`NACK_MAX_RANGES`]) to `out` in wire form
pub fn emit_nack(ranges: &[NackRange], out: &mut Vec<u8>) {
    for r in ranges.iter().take(NACK_MAX_RANGES) {
        out.extend_from_slice(&r.start.to_be_bytes());
        out.extend_from_slice(&r.count.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip() {
        let ranges = [
            NackRange { start: 7, count: 1 },
            NackRange {
                start: u32::MAX,
                count: 300,
            },
        ];
        let mut b = Vec::new();
        emit_nack(&ranges, &mut b);
        assert_eq!(b, [0, 0, 0, 7, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x01, 0x2c]);
        b.extend_from_slice(&[0, 0, 0, 9, 0, 0, 1, 2]); // a zero range and junk
        assert_eq!(parse_nack(&b).collect::<Vec<_>>(), ranges);
    }

    /// Test vector 4 of docs/PROTOCOL.md: a whole NACK frame
    #[test]
    fn test_nack_frame_vector() {
        use crate::wire::{classify, Datagram, Flags, FrameType, Repr};
        let want: [u8; 36] = [
            0xa7, 0x4d, 0x13, 0x00, 0x22, 0x08, 0x48, 0x03, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x07,
            0x00, 0x01, 0xff, 0xff, 0xff, 0xff, 0x01, 0x2c,
        ];
        let repr = Repr {
            frame_type: FrameType::Nack,
            flags: Flags::NONE,
            session: 0x0123_4567_89ab_cdef,
            stream: 7,
            seq: 5,
        };
        let mut payload = Vec::new();
        emit_nack(
            &[
                NackRange { start: 7, count: 1 },
                NackRange {
                    start: u32::MAX,
                    count: 300,
                },
            ],
            &mut payload,
        );
        let mut buf = [0u8; 36];
        assert_eq!(repr.emit_with_payload(&mut buf, &payload), Ok(36));
        assert_eq!(buf, want);
        let Datagram::Mpx(r, p) = classify(&want) else {
            panic!("vector must classify as a valid frame")
        };
        assert_eq!(r, repr);
        assert_eq!(parse_nack(p).count(), 2);
        // at most 128 ranges are emitted and read
        let many = vec![NackRange { start: 1, count: 1 }; 200];
        let mut b = Vec::new();
        emit_nack(&many, &mut b);
        assert_eq!(b.len(), NACK_MAX_RANGES * NACK_RANGE_LEN);
        b.extend_from_slice(&[0, 0, 0, 1, 0, 1]);
        assert_eq!(parse_nack(&b).count(), NACK_MAX_RANGES);
    }
}
