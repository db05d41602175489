//! Payload of a WINDOW frame: how much more of a stream a receiver can take
//!
//! The frame's header names the stream; its sequence number field is the
//! receiver's next expected sequence number (everything before it has been
//! delivered or given up). The payload says how far past that the sender
//! may go: `frames` more frames and `bytes` more payload bytes.

/// Payload length: frames (u32) and bytes (u32), big-endian
pub const WINDOW_LEN: usize = 8;

/// A receiver's window for one stream
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAdvert {
    /// Frames the receiver can hold from its next expected sequence number on
    pub frames: u32,
    /// Payload bytes it can hold
    pub bytes: u32,
}

impl WindowAdvert {
    /// Parse a WINDOW payload; `None` if it is shorter than [`WINDOW_LEN`]
    /// (longer payloads are accepted and the rest ignored, for extensions)
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..WINDOW_LEN)?;
        Some(Self {
            frames: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            bytes: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    /// The payload in wire form
    pub fn emit(&self) -> [u8; WINDOW_LEN] {
        let mut out = [0u8; WINDOW_LEN];
        out[..4].copy_from_slice(&self.frames.to_be_bytes());
        out[4..].copy_from_slice(&self.bytes.to_be_bytes());
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
        };
        assert_eq!(w.emit(), [0, 0, 0x10, 0, 0, 0x40, 0, 0]);
        assert_eq!(WindowAdvert::parse(&w.emit()), Some(w));
        assert_eq!(
            WindowAdvert::parse(&[0, 0, 0x10, 0, 0, 0x40, 0, 0, 9]),
            Some(w)
        );
        assert_eq!(WindowAdvert::parse(&[0; 7]), None);
    }
}
