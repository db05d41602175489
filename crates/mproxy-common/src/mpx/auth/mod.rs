//! Keyed mpx: pre-shared keys, per-frame AEAD, replay and freshness checks
//!
//! The normative text is docs/PROTOCOL.md §16. In short: a group shares a
//! 256-bit key ([`Key`], loaded from a key file; several form a
//! [`Keyring`] for roll-over). Every frame of every type is sealed or
//! authenticated by AEAD (AES-256-GCM or ChaCha20-Poly1305 from `ring`)
//! under a *subkey* that each [`Sealer`] derives for itself from the key
//! with HKDF-SHA256 and a fresh random 96-bit *origin*, and renews every
//! [`SUBKEY_LIFETIME`]. A keyed frame is a version-2 frame: the 24-byte
//! header of version 1 (its checksum field replaced by suite and key id),
//! the payload (sealed or in clear), and a 36-byte trailer:
//!
//! ```text
//! | header (24, v2) | payload (n) | origin (12) | epoch (4) | counter (4) | tag (16) |
//! ```
//!
//! The payload stays at offset 24, so the payload parsers of version 1
//! (NACK, FEC, WINDOW, FEEDBACK) read an opened frame unchanged, and a
//! sender seals a version-1 frame it already built in place by appending
//! the trailer ([`Sealer::seal`]). A receiver opens in place
//! ([`Opener::open`]) or, as a relay that must forward the bytes
//! unchanged, verifies a copy ([`Opener::verify`]).
//!
//! Sans-IO: no sockets, no clock. The wall-clock time is passed in
//! (`now: SystemTime`); tests and simulations pass a virtual one.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use mproxy_common::mpx::auth::{Key, Keyring, Opener, OpenerConfig, Sealer, Suite, OVERHEAD};
//! use mproxy_common::wire::{Flags, FrameType, Repr, HEADER_LEN};
//!
//! let ring = Keyring::new(vec![Key::from_bytes(&[7u8; 32])]).unwrap();
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let mut sealer = Sealer::new(&ring, Suite::default(), now).unwrap();
//! let mut opener = Opener::new(&ring, &OpenerConfig::default());
//!
//! // build an ordinary (version 1) frame with room for the trailer, seal it in place
//! let repr = Repr { frame_type: FrameType::Data, flags: Flags::OPEN, session: 1, stream: 2, seq: 0 };
//! let mut buf = vec![0u8; HEADER_LEN + 5 + OVERHEAD];
//! let len = repr.emit_with_payload(&mut buf, b"hello").unwrap();
//! let len = sealer.seal(now, &mut buf, len).unwrap();
//!
//! let opened = opener.open(now, &mut buf[..len]).unwrap();
//! assert_eq!(opened.repr, repr);
//! assert_eq!(&buf[opened.payload], b"hello");
//! // the same datagram again is a replay
//! assert!(opener.open(now, &mut buf[..len]).is_err());
//! ```

mod key;
mod open;
mod replay;
mod seal;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use ring::{aead, hkdf};

use crate::wire::{field, HEADER_LEN, MAGIC};

pub use key::{
    generate_key_file, parse_key_text, Key, KeyFileError, KeyFileErrorKind, KeyId, KeyTextError,
    Keyring, KeyringError, KEY_FILE_MAX_LEN, KEY_LEN,
};
pub use open::{AuthError, AuthStats, Opened, Opener, OpenerConfig};
pub use replay::{DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use seal::{SealError, Sealer, SealerStats};

/// Version nibble of keyed frames (byte 2, high nibble)
pub const KEYED_VERSION: u8 = 2;
/// Bytes of the key id (header bytes 5..8)
pub const KEY_ID_LEN: usize = 3;
/// Bytes of a subkey's origin: random per subkey
pub const ORIGIN_LEN: usize = 12;
/// Bytes of the trailer between payload and tag: origin, epoch, counter
pub const TRAILER_LEN: usize = ORIGIN_LEN + 4 + 4;
/// Bytes of the AEAD tag (both AEADs)
pub const TAG_LEN: usize = 16;
/// Bytes a keyed frame adds to the version-1 frame it seals
pub const OVERHEAD: usize = TRAILER_LEN + TAG_LEN;
/// The shortest keyed frame: header, empty payload, trailer, tag
pub const KEYED_MIN_LEN: usize = HEADER_LEN + OVERHEAD;
/// A sender renews its subkey (new origin, epoch and counter) at least this often
pub const SUBKEY_LIFETIME: Duration = Duration::from_secs(60);
/// ... and after this many payload bytes under one subkey (2^36 AES blocks)
pub const SUBKEY_MAX_BYTES: u64 = 1 << 40;
/// Default clock-skew allowance of a receiver's freshness check
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(60);
/// The largest clock-skew allowance a receiver accepts (a day)
pub const MAX_SKEW_LIMIT: Duration = Duration::from_secs(86_400);

/// HKDF-Extract salt: binds the keys to this protocol
const SALT: &[u8] = b"mpx v2 psk";
/// HKDF-Expand info prefix of the key id
const INFO_KEY_ID: &[u8] = b"mpx v2 key id";
/// HKDF-Expand info prefix of a subkey
const INFO_SUBKEY: &[u8] = b"mpx v2 subkey";

/// Byte ranges of the keyed header fields that differ from version 1
pub mod keyed_field {
    /// Suite byte (AEAD and mode): where version 1 has the checksum's first byte
    pub const SUITE: usize = 4;
    /// Key id: the rest of version 1's checksum field
    pub const KEY_ID: std::ops::Range<usize> = 5..8;
    /// The AEAD tag: the last [`super::TAG_LEN`] bytes of the datagram
    pub const TAG_FROM_END: usize = super::TAG_LEN;
    /// The trailer (origin, epoch, counter): the [`super::TRAILER_LEN`]
    /// bytes before the tag
    pub const TRAILER_FROM_END: usize = super::OVERHEAD;
}

/// The AEAD algorithm of a keyed frame (suite byte, low nibble)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Aead {
    /// AES-256-GCM (code 1): the default; 1.4-3x faster than
    /// ChaCha20-Poly1305 on CPUs with AES and carry-less multiply
    /// instructions (x86-64 AES-NI + PCLMULQDQ, ARMv8 crypto extensions)
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (code 2): the faster choice on CPUs without AES
    /// instructions (many small ARM boards)
    ChaCha20Poly1305,
}

impl Aead {
    /// Code in the suite byte
    pub fn code(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
        }
    }

    /// The AEAD of a suite code, if known
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The name the flags use: `aes-256-gcm` or `chacha20-poly1305`
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes-256-gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

impl std::fmt::Display for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Aead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "aes-256-gcm" | "aes256gcm" | "aes" => Ok(Self::Aes256Gcm),
            "chacha20-poly1305" | "chacha20poly1305" | "chacha" => Ok(Self::ChaCha20Poly1305),
            _ => Err(format!(
                "expected aes-256-gcm or chacha20-poly1305, got '{s}'"
            )),
        }
    }
}

/// What a sender does to each frame: which AEAD, and whether the payload
/// is encrypted or only authenticated (the header is always authenticated)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Suite {
    /// The AEAD algorithm
    pub aead: Aead,
    /// Encrypt the payload (`--encrypt on`); false: payload in clear,
    /// covered by the tag (`--encrypt off`)
    pub encrypt: bool,
}

impl Default for Suite {
    /// AES-256-GCM, encrypting
    fn default() -> Self {
        Self {
            aead: Aead::default(),
            encrypt: true,
        }
    }
}

/// Suite byte bit: the payload is in clear (authenticated only)
const SUITE_CLEAR: u8 = 0x10;

impl Suite {
    /// The suite byte (header byte 4): AEAD code in the low nibble, bit
    /// 0x10 set when the payload is in clear, bits 0xe0 zero
    pub fn byte(self) -> u8 {
        self.aead.code() | if self.encrypt { 0 } else { SUITE_CLEAR }
    }

    /// The suite of a suite byte, `None` for an unknown AEAD or reserved bits
    pub fn from_byte(b: u8) -> Option<Self> {
        if b & 0xe0 != 0 {
            return None;
        }
        Some(Self {
            aead: Aead::from_code(b & 0x0f)?,
            encrypt: b & SUITE_CLEAR == 0,
        })
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.encrypt {
            "encrypting"
        } else {
            "auth-only"
        };
        write!(f, "{} {mode}", self.aead)
    }
}

/// True if `bytes` is a keyed (version 2) mpx frame by its first three
/// bytes: an unkeyed receiver counts it as *unknown version* and MUST NOT
/// deliver it as raw data, even in an auto mode (PROTOCOL.md §16.8)
pub fn is_keyed(bytes: &[u8]) -> bool {
    bytes.len() > field::VERSION_TYPE
        && bytes[field::MAGIC] == MAGIC
        && bytes[field::VERSION_TYPE] >> 4 == KEYED_VERSION
}

/// The nonce of a frame: 8 zero bytes and the counter, big-endian
fn nonce(counter: u32) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// HKDF-Extract of a key: the PRK all its derivations expand from
fn extract(key: &[u8; KEY_LEN]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key)
}

/// Output length for an HKDF-Expand into a byte array
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The subkey of (key, suite, origin, epoch): HKDF-Expand of the key's PRK
/// with info = "mpx v2 subkey" || suite byte || origin || epoch (BE)
fn derive_subkey(
    prk: &hkdf::Prk,
    suite: Suite,
    origin: &[u8; ORIGIN_LEN],
    epoch: u32,
) -> Option<aead::LessSafeKey> {
    let suite_byte = [suite.byte()];
    let epoch = epoch.to_be_bytes();
    let info: [&[u8]; 4] = [INFO_SUBKEY, &suite_byte, origin, &epoch];
    let okm = prk.expand(&info, suite.aead.algorithm()).ok()?;
    Some(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

/// Raw subkey bytes (for the published test vectors only)
#[cfg(test)]
fn derive_subkey_bytes(
    prk: &hkdf::Prk,
    suite: Suite,
    origin: &[u8; ORIGIN_LEN],
    epoch: u32,
) -> [u8; 32] {
    let suite_byte = [suite.byte()];
    let epoch = epoch.to_be_bytes();
    let info: [&[u8]; 4] = [INFO_SUBKEY, &suite_byte, origin, &epoch];
    let mut out = [0u8; 32];
    let filled = prk
        .expand(&info, Len(32))
        .and_then(|okm| okm.fill(&mut out));
    assert!(filled.is_ok());
    out
}

/// Wall-clock seconds since the Unix epoch, modulo 2^32 (0 before 1970)
fn unix_secs(now: SystemTime) -> u32 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Seconds from `epoch` to `now`, serial arithmetic on 32 bits (negative:
/// `epoch` is ahead of `now`)
fn age_secs(now: u32, epoch: u32) -> i64 {
    i64::from(now.wrapping_sub(epoch) as i32)
}

/// The additional data of a sealed frame: header (24) || trailer (20)
fn sealed_aad(header: &[u8], trailer: &[u8]) -> [u8; HEADER_LEN + TRAILER_LEN] {
    let mut aad = [0u8; HEADER_LEN + TRAILER_LEN];
    aad[..HEADER_LEN].copy_from_slice(&header[..HEADER_LEN]);
    aad[HEADER_LEN..].copy_from_slice(&trailer[..TRAILER_LEN]);
    aad
}
