//! Payload of a FEEDBACK frame: a receiver's report on one path

/// Length of a feedback report payload
pub const FEEDBACK_LEN: usize = 28;

/// What a receiver tells a sender about the frames of one session that
/// arrived over one path (one receiving socket, from one sender address)
///
/// Layout (big-endian): `echo_ts_us` u64, `echo_delay_us` u32, `frames`
/// u64, `bytes` u64. Carried in a FEEDBACK frame whose session is the
/// sender's session, stream 0, and whose sequence number counts reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedbackReport {
    /// Timestamp of the newest HEARTBEAT received on this path (0: none)
    pub echo_ts_us: u64,
    /// Microseconds between receiving that heartbeat and sending this report
    pub echo_delay_us: u32,
    /// Frames of the session received on this path so far
    pub frames: u64,
    /// Payload bytes of those frames
    pub bytes: u64,
}

impl FeedbackReport {
    /// Parse a payload; `None` if it is shorter than [`FEEDBACK_LEN`]
    /// (longer payloads are accepted: later versions may append fields)
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..FEEDBACK_LEN)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut d = [0u8; 4];
        d.copy_from_slice(&p[8..12]);
        Some(Self {
            echo_ts_us: u64_at(0),
            echo_delay_us: u32::from_be_bytes(d),
            frames: u64_at(12),
            bytes: u64_at(20),
        })
    }

    /// Serialize into the payload layout
    pub fn to_bytes(&self) -> [u8; FEEDBACK_LEN] {
        let mut b = [0u8; FEEDBACK_LEN];
        b[0..8].copy_from_slice(&self.echo_ts_us.to_be_bytes());
        b[8..12].copy_from_slice(&self.echo_delay_us.to_be_bytes());
        b[12..20].copy_from_slice(&self.frames.to_be_bytes());
        b[20..28].copy_from_slice(&self.bytes.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip() {
        let r = FeedbackReport {
            echo_ts_us: 0x0102_0304_0506_0708,
            echo_delay_us: 250,
            frames: 12345,
            bytes: 1 << 40,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(FeedbackReport::parse(&b), Some(r));
        assert_eq!(FeedbackReport::parse(&b[..27]), None);
        let mut longer = b.to_vec();
        longer.push(9);
        assert_eq!(FeedbackReport::parse(&longer), Some(r));
    }
}
