//! The mpx frame header: layout, checked view, owned representation

use std::fmt;

/// Length of the mpx header in bytes
pub const HEADER_LEN: usize = 24;
/// The two bytes every mpx frame starts with
pub const MAGIC: [u8; 2] = [0xA7, 0x4D];
/// The protocol version this implementation speaks
pub const VERSION: u8 = 1;

/// Byte ranges of the header fields (network byte order throughout)
pub mod field {
    /// A range of bytes
    pub type Field = std::ops::Range<usize>;
    /// Magic bytes `A7 4D`
    pub const MAGIC: Field = 0..2;
    /// Version in the high nibble, frame type in the low nibble
    pub const VERSION_TYPE: usize = 2;
    /// Flag bits
    pub const FLAGS: usize = 3;
    /// CRC32C of the whole frame with this field zeroed
    pub const CHECKSUM: Field = 4..8;
    /// Sender session id
    pub const SESSION: Field = 8..16;
    /// Stream id within the session
    pub const STREAM: Field = 16..20;
    /// Sequence number within the stream
    pub const SEQ: Field = 20..24;
    /// Payload: the rest of the datagram
    pub const PAYLOAD: std::ops::RangeFrom<usize> = 24..;
}

/// Why bytes are not a valid mpx frame
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the header
    #[error("truncated mpx frame")]
    Truncated,
    /// Does not start with [`MAGIC`]
    #[error("not an mpx frame (bad magic)")]
    BadMagic,
    /// A version this implementation does not speak
    #[error("unknown mpx version {0}")]
    UnknownVersion(u8),
    /// The CRC32C does not match
    #[error("mpx checksum mismatch")]
    Checksum,
    /// The output buffer is too small
    #[error("buffer too small for mpx frame")]
    BufferTooSmall,
}

/// What a frame is for (low nibble of byte 2)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Stream payload
    Data,
    /// Keep-alive carrying the next sequence number (reveals tail loss)
    Heartbeat,
    /// Negative acknowledgement: ranges of missing frames a receiver asks for
    Nack,
    /// Reserved: retransmitted payload
    Repair,
    /// Forward error correction: one repair symbol of a block of DATA frames
    Fec,
    /// Receiver feedback report (path health)
    Feedback,
    /// Receiver window advertisement (flow control)
    Window,
    /// A code this implementation does not know
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Data,
            2 => Self::Heartbeat,
            3 => Self::Nack,
            4 => Self::Repair,
            5 => Self::Fec,
            6 => Self::Feedback,
            7 => Self::Window,
            other => Self::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> Self {
        match t {
            FrameType::Data => 1,
            FrameType::Heartbeat => 2,
            FrameType::Nack => 3,
            FrameType::Repair => 4,
            FrameType::Fec => 5,
            FrameType::Feedback => 6,
            FrameType::Window => 7,
            FrameType::Unknown(v) => v & 0x0f,
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(v) => write!(f, "unknown({v})"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Flag bits (byte 3)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// No flags
    pub const NONE: Self = Self(0);
    /// First frame of a stream (sequence number 0)
    pub const OPEN: Self = Self(0x01);
    /// Last frame of a stream: nothing follows its sequence number
    pub const FIN: Self = Self(0x02);
    /// DATA: this frame is a retransmission (an answer to a NACK)
    pub const RETRANSMIT: Self = Self(0x04);
    /// DATA: this frame is a source symbol of an FEC block (receivers that
    /// decode FEC keep a copy until the block's FEC frames have arrived)
    pub const FEC: Self = Self(0x08);
    /// DATA: the stream began less than 2 s before this frame was first
    /// sent. A receiver that meets a stream first on such a frame (its
    /// OPEN frame lost or late) starts it at 0 and asks for what it
    /// missed; later frames join a stream where it is
    pub const YOUNG: Self = Self(0x10);
    /// HEARTBEAT: the sender probes its paths and wants FEEDBACK reports
    /// (multipath); receivers report on a path only while it is probed
    pub const PROBE: Self = Self(0x20);

    /// True if every bit of `other` is set
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A read-only or mutable view of an mpx frame in a buffer
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wrap a buffer without checks (accessors may panic if it is short)
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap a buffer, checking length and magic
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::BadMagic`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        if f.buffer.as_ref()[field::MAGIC] != MAGIC {
            return Err(Error::BadMagic);
        }
        Ok(f)
    }

    /// Ensure the buffer holds a whole header (no setter invalidates this)
    ///
    /// # Errors
    /// [`Error::Truncated`].
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consume the view, returning the buffer
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Protocol version (high nibble of byte 2)
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_TYPE] >> 4
    }

    /// Frame type (low nibble of byte 2)
    pub fn frame_type(&self) -> FrameType {
        FrameType::from(self.buffer.as_ref()[field::VERSION_TYPE] & 0x0f)
    }

    /// Flag bits
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Checksum field
    pub fn checksum(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Sender session id
    pub fn session(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::SESSION])
    }

    /// Stream id
    pub fn stream(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::STREAM])
    }

    /// Sequence number
    pub fn seq(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::SEQ])
    }

    /// Payload bytes
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// CRC32C over the frame with the checksum field taken as zero
    pub fn compute_checksum(&self) -> u32 {
        let b = self.buffer.as_ref();
        let c = crc32c::crc32c(&b[..field::CHECKSUM.start]);
        let c = crc32c::crc32c_append(c, &[0u8; 4]);
        crc32c::crc32c_append(c, &b[field::CHECKSUM.end..])
    }

    /// True if the checksum field matches the contents
    pub fn verify_checksum(&self) -> bool {
        cfg!(fuzzing) || self.checksum() == self.compute_checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Write the magic bytes
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC);
    }

    /// Write version and frame type
    pub fn set_version_type(&mut self, version: u8, t: FrameType) {
        self.buffer.as_mut()[field::VERSION_TYPE] = (version << 4) | (u8::from(t) & 0x0f);
    }

    /// Write the flag bits
    pub fn set_flags(&mut self, flags: Flags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    /// Write the session id
    pub fn set_session(&mut self, v: u64) {
        self.buffer.as_mut()[field::SESSION].copy_from_slice(&v.to_be_bytes());
    }

    /// Write the stream id
    pub fn set_stream(&mut self, v: u32) {
        self.buffer.as_mut()[field::STREAM].copy_from_slice(&v.to_be_bytes());
    }

    /// Write the sequence number
    pub fn set_seq(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes());
    }

    /// Mutable payload bytes
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }

    /// Compute and write the checksum (call after everything else is written)
    pub fn fill_checksum(&mut self) {
        let c = self.compute_checksum();
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

impl<T: AsRef<[u8]>> fmt::Display for Frame<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.check_len().is_err() {
            return write!(f, "mpx (truncated)");
        }
        write!(
            f,
            "mpx v{} {} flags={:#04x} session={:016x} stream={} seq={} len={}",
            self.version(),
            self.frame_type(),
            self.flags().0,
            self.session(),
            self.stream(),
            self.seq(),
            self.payload().len()
        )
    }
}

/// The header fields of a parsed frame
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// What the frame is for
    pub frame_type: FrameType,
    /// Flag bits
    pub flags: Flags,
    /// Sender session id (random per sender process)
    pub session: u64,
    /// Stream id within the session
    pub stream: u32,
    /// Sequence number within the stream (datagrams, wrapping)
    pub seq: u32,
}

impl Repr {
    /// Parse and validate a checked frame
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::BadMagic`], [`Error::UnknownVersion`]
    /// or [`Error::Checksum`]. Unknown frame types parse (as
    /// [`FrameType::Unknown`]) so the caller can count them.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Self, Error> {
        frame.check_len()?;
        if frame.buffer.as_ref()[field::MAGIC] != MAGIC {
            return Err(Error::BadMagic);
        }
        if frame.version() != VERSION {
            return Err(Error::UnknownVersion(frame.version()));
        }
        if !frame.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Self {
            frame_type: frame.frame_type(),
            flags: frame.flags(),
            session: frame.session(),
            stream: frame.stream(),
            seq: frame.seq(),
        })
    }

    /// Bytes needed for this header plus `payload_len` bytes of payload
    pub fn buffer_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Write the header into `frame` (checksum left zero: write the
    /// payload, then call [`Frame::fill_checksum`])
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_magic();
        frame.set_version_type(VERSION, self.frame_type);
        frame.set_flags(self.flags);
        frame.buffer.as_mut()[field::CHECKSUM].fill(0);
        frame.set_session(self.session);
        frame.set_stream(self.stream);
        frame.set_seq(self.seq);
    }

    /// Write header, payload and checksum into `buf`; returns the frame length
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if `buf` cannot hold the frame.
    pub fn emit_with_payload(&self, buf: &mut [u8], payload: &[u8]) -> Result<usize, Error> {
        let len = self.buffer_len(payload.len());
        let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        let mut frame = Frame::new_unchecked(out);
        self.emit(&mut frame);
        frame.payload_mut().copy_from_slice(payload);
        frame.fill_checksum();
        Ok(len)
    }
}

/// How a receiver that accepts both raw and mpx traffic sees a datagram
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Does not start with the mpx magic: raw payload, deliver as is
    Raw(&'a [u8]),
    /// A valid mpx frame
    Mpx(Repr, &'a [u8]),
    /// Starts with the mpx magic but is not a valid frame (why, and the
    /// whole datagram): count and drop, or in an auto mode deliver as raw
    Invalid(Error, &'a [u8]),
}

/// Tell raw payloads and mpx frames apart
///
/// A datagram is taken as mpx if it starts with the two magic bytes; it is
/// then either a valid frame or invalid (truncated, unknown version, bad
/// checksum). Text telemetry never starts with byte 0xA7, so raw line data
/// is never mistaken; raw *binary* data starts with the magic with
/// probability 2^-16 per datagram, which is why receivers also offer a
/// raw-only mode.
pub fn classify(bytes: &[u8]) -> Datagram<'_> {
    if bytes.len() < 2 || bytes[field::MAGIC] != MAGIC {
        return Datagram::Raw(bytes);
    }
    let frame = Frame::new_unchecked(bytes);
    match Repr::parse(&frame) {
        Ok(repr) => Datagram::Mpx(repr, &bytes[field::PAYLOAD]),
        Err(e) => Datagram::Invalid(e, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DATA, OPEN|FIN, session 0x0123456789abcdef, stream 7, seq 0x01020304, payload "hi\n"
    static FRAME_BYTES: [u8; 27] = [
        0xa7, 0x4d, 0x11, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef, 0x00, 0x00, 0x00, 0x07, 0x01, 0x02, 0x03, 0x04, b'h', b'i', b'\n',
    ];

    fn frame_bytes() -> Vec<u8> {
        let mut b = FRAME_BYTES.to_vec();
        let mut f = Frame::new_unchecked(&mut b);
        f.fill_checksum();
        b
    }

    fn repr() -> Repr {
        Repr {
            frame_type: FrameType::Data,
            flags: Flags::OPEN | Flags::FIN,
            session: 0x0123_4567_89ab_cdef,
            stream: 7,
            seq: 0x0102_0304,
        }
    }

    #[test]
    fn test_deconstruct() {
        let b = frame_bytes();
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.version(), 1);
        assert_eq!(f.frame_type(), FrameType::Data);
        assert!(f.flags().contains(Flags::OPEN));
        assert!(f.flags().contains(Flags::FIN));
        assert!(!f.flags().contains(Flags::RETRANSMIT));
        assert_eq!(f.session(), 0x0123_4567_89ab_cdef);
        assert_eq!(f.stream(), 7);
        assert_eq!(f.seq(), 0x0102_0304);
        assert_eq!(f.payload(), b"hi\n");
        assert!(f.verify_checksum());
    }

    #[test]
    fn test_construct() {
        let mut buf = vec![0xffu8; 27];
        let len = repr().emit_with_payload(&mut buf, b"hi\n").unwrap();
        assert_eq!(len, 27);
        assert_eq!(buf, frame_bytes());
    }

    #[test]
    fn test_checksum_vector() {
        // The published test vector (docs/PROTOCOL.md), cross-checked with an
        // independent bitwise CRC32C (poly 0x82F63B78, reflected, init/xorout ~0).
        let b = frame_bytes();
        assert_eq!(
            &b[4..8],
            &[0x31, 0x23, 0xf8, 0xf4],
            "checksum {:02x?}",
            &b[4..8]
        );
        // CRC32C check value from RFC 3720 B.4: 32 zero bytes -> 8a9136aa
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn test_parse_errors() {
        assert_eq!(
            Frame::new_checked(&[0xa7, 0x4d][..]).unwrap_err(),
            Error::Truncated
        );
        let mut b = frame_bytes();
        b[0] = 0;
        assert_eq!(Frame::new_checked(&b[..]).unwrap_err(), Error::BadMagic);
        let mut b = frame_bytes();
        b[2] = 0x21;
        assert_eq!(
            Repr::parse(&Frame::new_unchecked(&b[..])).unwrap_err(),
            Error::UnknownVersion(2)
        );
        let mut b = frame_bytes();
        *b.last_mut().unwrap() ^= 1;
        assert_eq!(
            Repr::parse(&Frame::new_unchecked(&b[..])).unwrap_err(),
            Error::Checksum
        );
        let mut small = [0u8; 10];
        assert_eq!(
            repr().emit_with_payload(&mut small, b"").unwrap_err(),
            Error::BufferTooSmall
        );
    }

    #[test]
    fn test_unknown_type_parses() {
        let mut b = frame_bytes();
        b[2] = 0x1f;
        Frame::new_unchecked(&mut b).fill_checksum();
        let r = Repr::parse(&Frame::new_unchecked(&b[..])).unwrap();
        assert_eq!(r.frame_type, FrameType::Unknown(15));
    }

    #[test]
    fn test_classify() {
        assert!(matches!(classify(b"$GPGGA,1\n"), Datagram::Raw(_)));
        assert!(matches!(classify(b""), Datagram::Raw(_)));
        assert!(matches!(classify(&[0xa7]), Datagram::Raw(_)));
        assert!(matches!(
            classify(&[0xa7, 0x4d, 1]),
            Datagram::Invalid(Error::Truncated, [0xa7, 0x4d, 0x01])
        ));
        let b = frame_bytes();
        match classify(&b) {
            Datagram::Mpx(r, p) => {
                assert_eq!(r, repr());
                assert_eq!(p, b"hi\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_display() {
        let b = frame_bytes();
        assert_eq!(
            Frame::new_unchecked(&b[..]).to_string(),
            "mpx v1 Data flags=0x03 session=0123456789abcdef stream=7 seq=16909060 len=3"
        );
    }

    #[test]
    fn test_no_panic_on_any_short_input() {
        for len in 0..HEADER_LEN + 2 {
            let b = vec![0xa7u8; len];
            let _ = classify(&b);
            let _ = Frame::new_checked(&b[..]).map(|f| Repr::parse(&f));
        }
    }
}
