//! Payload of a HEARTBEAT frame, and the echo token receivers return
//!
//! A heartbeat carries, big-endian: the sender's timestamp in microseconds
//! (8 bytes, since version 1), the stream offset of its sequence number
//! (8 bytes: stream bytes before that frame) and the sender's current echo
//! token (8 bytes). Receivers accept any prefix of at least 8 bytes and
//! ignore what follows. A receiver returns the newest token it saw in its
//! WINDOW and FEEDBACK frames (appended after their version-1 payload),
//! which shows the sender that it receives the stream (PROTOCOL.md §16).

use super::{FEEDBACK_LEN, WINDOW_LEN};

/// Full heartbeat payload: timestamp, offset, token, and 8 reserved bytes
/// (zero), so a heartbeat is as long as the WINDOW a receiver answers it
/// with (receivers reply at most as many bytes as they receive)
pub const HEARTBEAT_LEN: usize = 32;

/// A parsed heartbeat payload
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatInfo {
    /// Sender's clock, µs since its stream epoch
    pub ts_us: u64,
    /// Stream bytes before the heartbeat's sequence number (if present)
    pub offset: Option<u64>,
    /// The sender's echo token (if present)
    pub token: Option<u64>,
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    b.copy_from_slice(p.get(at..at + 8)?);
    Some(u64::from_be_bytes(b))
}

impl HeartbeatInfo {
    /// Parse a payload; `None` if shorter than 8 bytes
    pub fn parse(payload: &[u8]) -> Option<Self> {
        Some(Self {
            ts_us: u64_at(payload, 0)?,
            offset: u64_at(payload, 8),
            token: u64_at(payload, 16),
        })
    }

    /// The full payload (absent fields as 0)
    pub fn emit(&self) -> [u8; HEARTBEAT_LEN] {
        let mut out = [0u8; HEARTBEAT_LEN];
        out[..8].copy_from_slice(&self.ts_us.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.unwrap_or(0).to_be_bytes());
        out[16..24].copy_from_slice(&self.token.unwrap_or(0).to_be_bytes());
        out
    }
}

/// The echo token a WINDOW payload carries after its version-1 fields
pub fn window_token(payload: &[u8]) -> Option<u64> {
    u64_at(payload, WINDOW_LEN)
}

/// The frames a receiver gave up on, carried by a WINDOW payload after
/// its echo token (`None`: an older receiver that does not say)
pub fn window_lost(payload: &[u8]) -> Option<u64> {
    u64_at(payload, WINDOW_LEN + 8)
}

/// The echo token a FEEDBACK payload carries after its version-1 fields
pub fn feedback_token(payload: &[u8]) -> Option<u64> {
    u64_at(payload, FEEDBACK_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_prefixes() {
        let full = HeartbeatInfo {
            ts_us: 7,
            offset: Some(1 << 40),
            token: Some(0xfeed),
        };
        let wire = full.emit();
        assert_eq!(HeartbeatInfo::parse(&wire), Some(full));
        let short = HeartbeatInfo::parse(&wire[..8]).unwrap();
        assert_eq!((short.ts_us, short.offset, short.token), (7, None, None));
        assert_eq!(HeartbeatInfo::parse(&wire[..16]).unwrap().token, None);
        assert_eq!(HeartbeatInfo::parse(&wire[..7]), None);
        let mut w = [0u8; WINDOW_LEN + 8];
        w[WINDOW_LEN..].copy_from_slice(&9u64.to_be_bytes());
        assert_eq!(window_token(&w), Some(9));
        assert_eq!(window_token(&w[..WINDOW_LEN]), None);
    }
}
