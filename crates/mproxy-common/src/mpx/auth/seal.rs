//! The sending side: seal frames in place under a self-renewing subkey

use std::time::SystemTime;

use ring::aead::{self, Aad};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use super::{
    age_secs, derive_subkey, keyed_field, nonce, sealed_aad, unix_secs, KeyId, Keyring, Suite,
    KEYED_VERSION, ORIGIN_LEN, OVERHEAD, SUBKEY_LIFETIME, SUBKEY_MAX_BYTES, TAG_LEN, TRAILER_LEN,
};
use crate::wire::{field, HEADER_LEN, MAGIC};

/// Why a frame was not sealed
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// `len` is shorter than the 24-byte header
    #[error("frame shorter than the mpx header")]
    Truncated,
    /// The bytes do not start with the mpx magic
    #[error("not an mpx frame")]
    NotMpx,
    /// `buf` has no room for the [`OVERHEAD`] bytes after the frame
    #[error("no room for the keyed trailer")]
    BufferTooSmall,
    /// The AEAD refused the input (longer than it can seal)
    #[error("frame too long to seal")]
    TooLong,
    /// No random bytes for a new origin from the OS
    #[error("no randomness for a new subkey")]
    NoRandomness,
    /// HKDF refused to derive the subkey (cannot happen with 32-byte keys)
    #[error("subkey derivation failed")]
    KeyDerivation,
}

/// What a [`Sealer`] did
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealerStats {
    /// Frames sealed
    pub sealed: u64,
    /// Payload bytes sealed
    pub bytes: u64,
    /// Subkeys made (the first included)
    pub subkeys: u64,
    /// Frames refused ([`SealError`])
    pub errors: u64,
}

/// The subkey in use: never reused once replaced
struct Subkey {
    key: aead::LessSafeKey,
    origin: [u8; ORIGIN_LEN],
    epoch: u32,
    /// The next frame's counter
    counter: u32,
    /// Payload bytes sealed under it
    bytes: u64,
}

/// Seals frames for one sender of a group (a client, or a receiver's
/// control frames), in place
///
/// Holds the keyring's first key and a subkey of its own: a random 96-bit
/// origin drawn from the OS, the wall-clock second it was made (epoch) and
/// a counter. Every frame takes the next counter, so no two frames sealed
/// by any `Sealer` share a (subkey, nonce): re-sent frames, redundant
/// copies and FEC frames are sealed anew. The subkey is renewed (new origin
/// and epoch, counter 0) after [`SUBKEY_LIFETIME`], when the counter is
/// used up, and after [`SUBKEY_MAX_BYTES`].
///
/// Several `Sealer`s may share a key and a session id: each has its own
/// origin. A `Sealer` is `Send`; give each thread its own.
pub struct Sealer {
    prk: hkdf::Prk,
    key_id: KeyId,
    suite: Suite,
    sub: Subkey,
    rng: SystemRandom,
    stats: SealerStats,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .field("suite", &self.suite)
            .field("epoch", &self.sub.epoch)
            .field("counter", &self.sub.counter)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer using the keyring's first key, with its first subkey made at `now`
    ///
    /// # Errors
    /// [`SealError::NoRandomness`] if the OS gives no random origin.
    pub fn new(keyring: &Keyring, suite: Suite, now: SystemTime) -> Result<Self, SealError> {
        let rng = SystemRandom::new();
        let key = keyring.first();
        let mut origin = [0u8; ORIGIN_LEN];
        rng.fill(&mut origin).map_err(|_| SealError::NoRandomness)?;
        let sub = make_subkey(key.prk(), suite, origin, unix_secs(now))?;
        Ok(Self {
            prk: key.prk().clone(),
            key_id: key.id(),
            suite,
            sub,
            rng,
            stats: SealerStats {
                subkeys: 1,
                ..SealerStats::default()
            },
        })
    }

    /// A sealer with a chosen first origin (test vectors and fuzzing only:
    /// two sealers with the same origin, epoch and key reuse nonces)
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn with_origin(
        keyring: &Keyring,
        suite: Suite,
        origin: [u8; ORIGIN_LEN],
        epoch: u32,
    ) -> Result<Self, SealError> {
        let key = keyring.first();
        Ok(Self {
            prk: key.prk().clone(),
            key_id: key.id(),
            suite,
            sub: make_subkey(key.prk(), suite, origin, epoch)?,
            rng: SystemRandom::new(),
            stats: SealerStats {
                subkeys: 1,
                ..SealerStats::default()
            },
        })
    }

    /// The suite this sealer applies
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The id of the key it seals with
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Counters so far
    pub fn stats(&self) -> SealerStats {
        self.stats
    }

    /// Seal the unkeyed frame `buf[..len]` in place into a keyed one
    ///
    /// `buf[..len]` holds a frame as [`crate::wire::Repr::emit_with_payload`]
    /// writes it (24-byte header, payload; version and checksum are
    /// overwritten), and `buf` has at least [`OVERHEAD`] more bytes. Writes
    /// version 2, suite and key id into the header, encrypts the payload in
    /// place (or leaves it in clear for an auth-only suite), appends the
    /// trailer and the tag, and returns the keyed frame's length,
    /// `len + OVERHEAD`. Allocates nothing.
    ///
    /// `now` is the wall clock: it decides when the subkey is renewed.
    ///
    /// # Errors
    /// [`SealError`]: nothing to send. The buffer is unchanged, except
    /// after [`SealError::TooLong`] (a frame beyond any UDP datagram).
    pub fn seal(
        &mut self,
        now: SystemTime,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SealError> {
        let r = self.seal_inner(now, buf, len);
        match r {
            Ok(_) => {
                self.stats.sealed += 1;
                self.stats.bytes += (len - HEADER_LEN) as u64;
            }
            Err(_) => self.stats.errors += 1,
        }
        r
    }

    fn seal_inner(
        &mut self,
        now: SystemTime,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SealError> {
        if len > buf.len() {
            return Err(SealError::BufferTooSmall);
        }
        if len < HEADER_LEN {
            return Err(SealError::Truncated);
        }
        if buf[field::MAGIC] != MAGIC {
            return Err(SealError::NotMpx);
        }
        let out_len = len.checked_add(OVERHEAD).ok_or(SealError::BufferTooSmall)?;
        if out_len > buf.len() {
            return Err(SealError::BufferTooSmall);
        }
        let payload_len = (len - HEADER_LEN) as u64;
        self.renew_if_due(unix_secs(now), payload_len)?;

        let buf = &mut buf[..out_len];
        buf[field::VERSION_TYPE] = (KEYED_VERSION << 4) | (buf[field::VERSION_TYPE] & 0x0f);
        buf[keyed_field::SUITE] = self.suite.byte();
        buf[keyed_field::KEY_ID].copy_from_slice(&self.key_id.0);
        let sub = &mut self.sub;
        let counter = sub.counter;
        {
            let t = &mut buf[len..len + TRAILER_LEN];
            t[..ORIGIN_LEN].copy_from_slice(&sub.origin);
            t[ORIGIN_LEN..ORIGIN_LEN + 4].copy_from_slice(&sub.epoch.to_be_bytes());
            t[ORIGIN_LEN + 4..].copy_from_slice(&counter.to_be_bytes());
        }
        let tag_at = len + TRAILER_LEN;
        let tag = if self.suite.encrypt {
            let aad = sealed_aad(&buf[..HEADER_LEN], &buf[len..tag_at]);
            sub.key.seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(&aad),
                &mut buf[HEADER_LEN..len],
            )
        } else {
            sub.key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(&buf[..tag_at]), &mut [])
        }
        .map_err(|_| SealError::TooLong)?;
        buf[tag_at..tag_at + TAG_LEN].copy_from_slice(tag.as_ref());
        sub.counter += 1;
        sub.bytes += payload_len;
        Ok(out_len)
    }

    /// Renew the subkey when it is too old (or the clock went back), its
    /// counter is used up, or it sealed [`SUBKEY_MAX_BYTES`]
    fn renew_if_due(&mut self, now: u32, payload_len: u64) -> Result<(), SealError> {
        let age = age_secs(now, self.sub.epoch);
        let due = age < 0
            || age >= SUBKEY_LIFETIME.as_secs() as i64
            || self.sub.counter == u32::MAX
            || self.sub.bytes + payload_len > SUBKEY_MAX_BYTES;
        if due {
            let mut origin = [0u8; ORIGIN_LEN];
            self.rng
                .fill(&mut origin)
                .map_err(|_| SealError::NoRandomness)?;
            self.sub = make_subkey(&self.prk, self.suite, origin, now)?;
            self.stats.subkeys += 1;
        }
        Ok(())
    }

    /// Origin, epoch and next counter of the current subkey (tests)
    #[cfg(test)]
    pub(crate) fn position(&self) -> ([u8; ORIGIN_LEN], u32, u32) {
        (self.sub.origin, self.sub.epoch, self.sub.counter)
    }

    /// Jump the counter (tests of the renewal at the end of the counter)
    #[cfg(test)]
    pub(crate) fn set_counter(&mut self, counter: u32) {
        self.sub.counter = counter;
    }
}

fn make_subkey(
    prk: &hkdf::Prk,
    suite: Suite,
    origin: [u8; ORIGIN_LEN],
    epoch: u32,
) -> Result<Subkey, SealError> {
    let key = derive_subkey(prk, suite, &origin, epoch).ok_or(SealError::KeyDerivation)?;
    Ok(Subkey {
        key,
        origin,
        epoch,
        counter: 0,
        bytes: 0,
    })
}
