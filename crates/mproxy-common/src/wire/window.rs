//! Payload of a WINDOW frame: how much more of a stream a receiver can take
//!
//! The frame's header names the stream; its sequence number field is the
//! receiver's next expected sequence number (everything before it has been
//! delivered or given up). The payload says how far past that the sender
//! may go: `frames` more frames and `bytes` more payload bytes, and who
//! says so: a random receiver id, since receivers sharing a group's port
//! on one host send from the same address.

/// Payload length: frames (u32), bytes (u32), receiver id (u64), big-endian
pub const WINDOW_LEN: usize = 16;

/// A receiver's window for one stream
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAdvert {
    /// Frames the receiver can hold from its next expected sequence number on
    pub frames: u32,
    /// Payload bytes it can hold
    pub bytes: u32,
    /// Random id of the receiver (stable for its lifetime)
    pub receiver: u64,
}

impl WindowAdvert {
    /// Parse a WINDOW payload; `None` if it is shorter than [`WINDOW_LEN`]
    /// (longer payloads are accepted and the rest ignored, for extensions)
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..WINDOW_LEN)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Some(Self {
            frames: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            bytes: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            receiver: u64::from_be_bytes(id),
        })
    }

    /// The payload in wire form
    pub fn emit(&self) -> [u8; WINDOW_LEN] {
        let mut out = [0u8; WINDOW_LEN];
        out[..4].copy_from_slice(&self.frames.to_be_bytes());
        out[4..8].copy_from_slice(&self.bytes.to_be_bytes());
        out[8..].copy_from_slice(&self.receiver.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip_and_short_input() {
        let w = WindowAdvert {
            frames: 4096,
            bytes: 0x0040_0000,
            receiver: 0x0102_0304_0506_0708,
        };
        let wire = [0, 0, 0x10, 0, 0, 0x40, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(w.emit(), wire);
        assert_eq!(WindowAdvert::parse(&wire), Some(w));
        let mut longer = wire.to_vec();
        longer.push(9);
        assert_eq!(WindowAdvert::parse(&longer), Some(w));
        assert_eq!(WindowAdvert::parse(&wire[..15]), None);
    }

    /// Test vector 6 of docs/PROTOCOL.md: a whole WINDOW frame
    #[test]
    fn test_window_frame_vector() {
        use crate::wire::{classify, Datagram, Flags, FrameType, Repr};
        let want: [u8; 40] = [
            0xa7, 0x4d, 0x17, 0x00, 0x34, 0xd0, 0x3c, 0x48, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x04, 0x00,
            0x00, 0x40, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        ];
        let repr = Repr {
            frame_type: FrameType::Window,
            flags: Flags::NONE,
            session: 0x0123_4567_89ab_cdef,
            stream: 7,
            seq: 5,
        };
        let w = WindowAdvert {
            frames: 1024,
            bytes: 4 << 20,
            receiver: 0x1122_3344_5566_7788,
        };
        let mut buf = [0u8; 40];
        assert_eq!(repr.emit_with_payload(&mut buf, &w.emit()), Ok(40));
        assert_eq!(buf, want);
        let Datagram::Mpx(r, p) = classify(&want) else {
            panic!("vector must classify as a valid frame")
        };
        assert_eq!(r, repr);
        assert_eq!(WindowAdvert::parse(p), Some(w));
    }
}
