//! The mpx wire format (see docs/PROTOCOL.md for the normative text)
//!
//! Every mpx datagram carries exactly one frame: a fixed 24-byte header and
//! a payload that runs to the end of the datagram. The module follows
//! smoltcp's contract:
//!
//! - [`Frame::new_checked`] validates the length and the magic; after that
//!   no accessor panics, whatever the bytes.
//! - [`Repr::parse`] never panics and rejects unknown versions and bad
//!   checksums; [`Repr::emit`] never panics on a buffer of
//!   [`HEADER_LEN`] bytes or more.
//!
//! ```
//! use mproxy_common::wire::{Flags, Frame, FrameType, Repr, HEADER_LEN};
//!
//! let repr = Repr {
//!     frame_type: FrameType::Data,
//!     flags: Flags::OPEN,
//!     session: 0x0123_4567_89ab_cdef,
//!     stream: 7,
//!     seq: 0,
//! };
//! let mut buf = vec![0u8; HEADER_LEN + 5];
//! let len = repr.emit_with_payload(&mut buf, b"hello").unwrap();
//! let frame = Frame::new_checked(&buf[..len]).unwrap();
//! assert_eq!(Repr::parse(&frame).unwrap(), repr);
//! assert_eq!(frame.payload(), b"hello");
//! ```

mod fec;
mod feedback;
mod frame;
mod heartbeat;
mod nack;
mod window;

pub use fec::{
    parse_source_symbol, source_symbol, symbol_len_for, FecError, FecRepr, FEC_HEADER_LEN,
    FEC_MAX_BLOCK, FEC_MAX_REPAIR, FEC_SOURCE_PREFIX, FEC_SYMBOL_ALIGN,
};
pub use feedback::{FeedbackReport, FEEDBACK_LEN};
pub use heartbeat::{feedback_token, window_lost, window_token, HeartbeatInfo, HEARTBEAT_LEN};
pub use nack::{emit_nack, parse_nack, NackRange, NACK_MAX_RANGES, NACK_RANGE_LEN};
pub use window::{WindowAdvert, WINDOW_LEN};

pub use frame::{
    classify, field, Datagram, Error, Flags, Frame, FrameType, Repr, HEADER_LEN, MAGIC, VERSION,
};
