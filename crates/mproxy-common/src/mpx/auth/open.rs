//! The receiving side: open keyed frames, refuse forged, replayed and stale ones

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use ring::aead::{self, Aad, Tag};

use super::replay::{ReplayWindow, DEFAULT_REPLAY_WINDOW};
use super::{
    age_secs, derive_subkey, keyed_field, nonce, sealed_aad, unix_secs, KeyId, Keyring, Suite,
    DEFAULT_MAX_SKEW, KEYED_MIN_LEN, KEYED_VERSION, KEY_ID_LEN, MAX_SKEW_LIMIT, ORIGIN_LEN,
    OVERHEAD, SUBKEY_LIFETIME, TAG_LEN, TRAILER_LEN,
};
use crate::mpx::keyed::KeyedState;
use crate::wire::{field, Frame, Repr, HEADER_LEN, MAGIC, VERSION};

/// Why a datagram was not accepted as a keyed frame (each is counted in
/// [`AuthStats`])
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Does not start with the mpx magic: a raw datagram (the caller's
    /// `--accept` policy decides; it is never an authenticated frame)
    #[error("not an mpx frame (raw datagram)")]
    NotMpx,
    /// An unkeyed (version 1) mpx frame: it carries no key id
    #[error("unkeyed mpx frame (no key id)")]
    Unkeyed,
    /// Not a well-formed keyed frame: too short for header and trailer, a
    /// version other than 1 and 2, or an unknown suite byte
    #[error("malformed keyed frame")]
    Malformed,
    /// Names a key this keyring does not hold
    #[error("unknown key id")]
    UnknownKeyId,
    /// The tag does not verify: forged, damaged, or sealed with another key
    #[error("bad tag")]
    BadTag,
    /// Authentic, but its counter was accepted before or is too far behind
    /// the newest of its subkey
    #[error("replayed frame")]
    Replayed,
    /// Authentic, but its subkey's epoch is outside the freshness window:
    /// a recorded session replayed later, or a clock off by more than the
    /// allowed skew
    #[error("stale frame (old session or clock skew)")]
    StaleSession,
    /// Authentic and fresh, but from a new subkey while the table of
    /// tracked subkeys is full of fresh ones
    #[error("too many senders")]
    TooManySenders,
}

/// Counters of an [`Opener`]: frames accepted, and refused per cause
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthStats {
    /// Frames accepted
    pub opened: u64,
    /// [`AuthError::NotMpx`]
    pub not_mpx: u64,
    /// [`AuthError::Unkeyed`]
    pub unkeyed: u64,
    /// [`AuthError::Malformed`]
    pub malformed: u64,
    /// [`AuthError::UnknownKeyId`]
    pub unknown_key_id: u64,
    /// [`AuthError::BadTag`]
    pub bad_tag: u64,
    /// [`AuthError::Replayed`]
    pub replayed: u64,
    /// [`AuthError::StaleSession`]
    pub stale: u64,
    /// [`AuthError::TooManySenders`]
    pub too_many_senders: u64,
    /// Subkeys being tracked now
    pub subkeys: u64,
    /// Subkeys forgotten to make room (their frames would be stale by now)
    pub subkeys_evicted: u64,
}

impl AuthStats {
    /// Datagrams refused for any cause
    pub fn refused(&self) -> u64 {
        self.not_mpx
            + self.unkeyed
            + self.malformed
            + self.unknown_key_id
            + self.bad_tag
            + self.replayed
            + self.stale
            + self.too_many_senders
    }

    fn count(&mut self, e: AuthError) {
        let c = match e {
            AuthError::NotMpx => &mut self.not_mpx,
            AuthError::Unkeyed => &mut self.unkeyed,
            AuthError::Malformed => &mut self.malformed,
            AuthError::UnknownKeyId => &mut self.unknown_key_id,
            AuthError::BadTag => &mut self.bad_tag,
            AuthError::Replayed => &mut self.replayed,
            AuthError::StaleSession => &mut self.stale,
            AuthError::TooManySenders => &mut self.too_many_senders,
        };
        *c += 1;
    }
}

impl std::ops::AddAssign for AuthStats {
    /// Sum the counters of several openers (one per socket or thread)
    fn add_assign(&mut self, o: Self) {
        self.opened += o.opened;
        self.not_mpx += o.not_mpx;
        self.unkeyed += o.unkeyed;
        self.malformed += o.malformed;
        self.unknown_key_id += o.unknown_key_id;
        self.bad_tag += o.bad_tag;
        self.replayed += o.replayed;
        self.stale += o.stale;
        self.too_many_senders += o.too_many_senders;
        self.subkeys += o.subkeys;
        self.subkeys_evicted += o.subkeys_evicted;
    }
}

/// Limits of an [`Opener`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenerConfig {
    /// How far the sender's clock may be off from ours (default 60 s, at
    /// most a day): frames whose subkey epoch is more than
    /// [`SUBKEY_LIFETIME`] + `max_skew` old, or `max_skew` ahead, are stale
    pub max_skew: Duration,
    /// Replay window per subkey, in counters (default 8192, 64 ..= 65536);
    /// it must exceed the frames a sender sends in the largest path delay
    /// difference (multipath), or late frames count as replayed
    pub replay_window: usize,
    /// Subkeys tracked at most (default 1024). Each sender and each
    /// receiver that sends control frames uses one subkey a minute, and
    /// one is kept until its frames are stale (2-3 per sender).
    pub max_subkeys: usize,
}

impl Default for OpenerConfig {
    fn default() -> Self {
        Self {
            max_skew: DEFAULT_MAX_SKEW,
            replay_window: DEFAULT_REPLAY_WINDOW,
            max_subkeys: 1024,
        }
    }
}

/// An authentic frame, opened in place
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its header (as version 1's [`Repr`]; the type may be unknown)
    pub repr: Repr,
    /// Where its payload (now in clear) is in the buffer: `24 .. len - 36`
    pub payload: Range<usize>,
    /// The key it was sealed with
    pub key: KeyId,
    /// AEAD and whether the payload was encrypted
    pub suite: Suite,
    /// The sealing subkey's origin (random per sender and minute: tells
    /// senders apart, for logs)
    pub origin: [u8; ORIGIN_LEN],
}

/// Table key of a subkey: suite, key id, origin and epoch as on the wire
type SubkeyId = [u8; 1 + KEY_ID_LEN + ORIGIN_LEN + 4];

/// A tracked subkey: its AEAD key and which counters were accepted
struct Tracked {
    key: aead::LessSafeKey,
    window: ReplayWindow,
    epoch: u32,
}

/// Opens the keyed frames a receiver (or a relay) gets, refusing every
/// frame that is not authentic, fresh and new
///
/// Keeps, per subkey seen (suite, key id, origin, epoch), the derived AEAD
/// key and a replay window, in a table of at most
/// [`OpenerConfig::max_subkeys`] entries. An entry is created only after a
/// frame's tag verified: a party without the key cannot make the table
/// grow, evict entries or move a replay window. A frame of a subkey not in
/// the table costs one HKDF-Expand and one AEAD key setup on the stack
/// before its tag is checked.
pub struct Opener {
    keys: Vec<(KeyId, ring::hkdf::Prk)>,
    config: OpenerConfig,
    table: HashMap<SubkeyId, Tracked, KeyedState>,
    /// Wall-clock second (mod 2^32) before which no entry can be evicted
    /// (the table was full of fresh entries at the last look)
    no_eviction_before: Option<u32>,
    scratch: Vec<u8>,
    stats: AuthStats,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<KeyId> = self.keys.iter().map(|k| k.0).collect();
        f.debug_struct("Opener")
            .field("keys", &ids)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener accepting frames sealed with any key of `keyring`
    pub fn new(keyring: &Keyring, config: &OpenerConfig) -> Self {
        let mut config = *config;
        config.max_skew = config.max_skew.min(MAX_SKEW_LIMIT);
        config.max_subkeys = config.max_subkeys.max(1);
        Self {
            keys: keyring
                .keys()
                .iter()
                .map(|k| (k.id(), k.prk().clone()))
                .collect(),
            config,
            table: HashMap::with_hasher(KeyedState::default()),
            no_eviction_before: None,
            scratch: Vec::new(),
            stats: AuthStats::default(),
        }
    }

    /// Counters so far
    pub fn stats(&self) -> AuthStats {
        let mut s = self.stats;
        s.subkeys = self.table.len() as u64;
        s
    }

    /// Heap bytes held by the subkey table (bounded by `max_subkeys`)
    pub fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<(SubkeyId, Tracked)>() + 8;
        self.table.capacity() * per
            + self
                .table
                .values()
                .map(|t| t.window.heap_bytes())
                .sum::<usize>()
            + self.scratch.capacity()
    }

    /// Open the keyed frame `buf` in place: verify it, decrypt its payload
    /// (when sealed), check freshness and replay, count the outcome
    ///
    /// On success the payload is in clear at [`Opened::payload`]; the rest
    /// of `buf` is left as received. On error nothing may be used (the
    /// payload of an authentic but replayed or stale frame is decrypted).
    /// `now` is the wall clock.
    ///
    /// # Errors
    /// [`AuthError`], one cause per refused datagram.
    pub fn open(&mut self, now: SystemTime, buf: &mut [u8]) -> Result<Opened, AuthError> {
        let r = self.open_inner(unix_secs(now), buf);
        match &r {
            Ok(_) => self.stats.opened += 1,
            Err(e) => self.stats.count(*e),
        }
        r
    }

    /// Like [`Opener::open`], but leaves `datagram` as it is (it decrypts
    /// a copy): for relays that check a frame and forward its bytes
    ///
    /// The payload of the returned [`Opened`] refers to the copy, readable
    /// with [`Opener::last_plaintext`] until the next call.
    ///
    /// # Errors
    /// As [`Opener::open`].
    pub fn verify(&mut self, now: SystemTime, datagram: &[u8]) -> Result<Opened, AuthError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(datagram);
        let r = self.open(now, &mut scratch);
        self.scratch = scratch;
        r
    }

    /// The datagram as opened by the last [`Opener::verify`]
    pub fn last_plaintext(&self) -> &[u8] {
        &self.scratch
    }

    fn open_inner(&mut self, now: u32, buf: &mut [u8]) -> Result<Opened, AuthError> {
        if buf.len() < 2 || buf[field::MAGIC] != MAGIC {
            return Err(AuthError::NotMpx);
        }
        if buf.len() <= field::VERSION_TYPE {
            return Err(AuthError::Malformed);
        }
        match buf[field::VERSION_TYPE] >> 4 {
            KEYED_VERSION => {}
            VERSION => return Err(AuthError::Unkeyed),
            _ => return Err(AuthError::Malformed),
        }
        let len = buf.len();
        if len < KEYED_MIN_LEN {
            return Err(AuthError::Malformed);
        }
        let suite = Suite::from_byte(buf[keyed_field::SUITE]).ok_or(AuthError::Malformed)?;
        let mut key_id = KeyId([0; KEY_ID_LEN]);
        key_id.0.copy_from_slice(&buf[keyed_field::KEY_ID]);
        let end = len - OVERHEAD; // payload end, trailer start
        let tag_at = len - TAG_LEN;
        let mut id: SubkeyId = [0; 1 + KEY_ID_LEN + ORIGIN_LEN + 4];
        id[..1 + KEY_ID_LEN].copy_from_slice(&buf[keyed_field::SUITE..keyed_field::KEY_ID.end]);
        id[1 + KEY_ID_LEN..].copy_from_slice(&buf[end..end + ORIGIN_LEN + 4]);
        let mut origin = [0u8; ORIGIN_LEN];
        origin.copy_from_slice(&buf[end..end + ORIGIN_LEN]);
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&buf[end + ORIGIN_LEN..end + ORIGIN_LEN + 4]);
        let epoch = u32::from_be_bytes(epoch);
        let mut counter = [0u8; 4];
        counter.copy_from_slice(&buf[end + ORIGIN_LEN + 4..tag_at]);
        let counter = u32::from_be_bytes(counter);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&buf[tag_at..]);

        // 1. the tag, under the tracked subkey or one derived on the stack
        let tracked = self.table.get_mut(&id);
        let mut derived = None;
        let key: &aead::LessSafeKey = match &tracked {
            Some(t) => &t.key,
            None => {
                let prk = &self
                    .keys
                    .iter()
                    .find(|k| k.0 == key_id)
                    .ok_or(AuthError::UnknownKeyId)?
                    .1;
                derived.insert(derive_subkey(prk, suite, &origin, epoch).ok_or(AuthError::BadTag)?)
            }
        };
        let verified = if suite.encrypt {
            let aad = sealed_aad(&buf[..HEADER_LEN], &buf[end..tag_at]);
            key.open_in_place_separate_tag(
                nonce(counter),
                Aad::from(&aad),
                Tag::from(tag),
                &mut buf[HEADER_LEN..end],
                0..,
            )
            .is_ok()
        } else {
            key.open_in_place_separate_tag(
                nonce(counter),
                Aad::from(&buf[..tag_at]),
                Tag::from(tag),
                &mut [],
                0..,
            )
            .is_ok()
        };
        if !verified {
            return Err(AuthError::BadTag);
        }

        // 2. freshness of its subkey
        let age = age_secs(now, epoch);
        let skew = self.config.max_skew.as_secs() as i64;
        if age > SUBKEY_LIFETIME.as_secs() as i64 + skew || age < -skew {
            return Err(AuthError::StaleSession);
        }

        // 3. replay: only now may state change
        match tracked {
            Some(t) => {
                if !t.window.check_and_set(counter) {
                    return Err(AuthError::Replayed);
                }
            }
            None => {
                let Some(key) = derived.take() else {
                    return Err(AuthError::BadTag);
                };
                if self.table.len() >= self.config.max_subkeys && !self.evict_stale(now) {
                    return Err(AuthError::TooManySenders);
                }
                let mut window = ReplayWindow::new(self.config.replay_window);
                window.check_and_set(counter);
                self.table.insert(id, Tracked { key, window, epoch });
            }
        }
        let frame = Frame::new_unchecked(&buf[..HEADER_LEN]);
        Ok(Opened {
            repr: Repr {
                frame_type: frame.frame_type(),
                flags: frame.flags(),
                session: frame.session(),
                stream: frame.stream(),
                seq: frame.seq(),
            },
            payload: HEADER_LEN..end,
            key: key_id,
            suite,
            origin,
        })
    }

    /// Forget every subkey whose frames are stale by now; true if that made
    /// room. Scans the table at most once per second while it stays full
    /// of fresh subkeys.
    fn evict_stale(&mut self, now: u32) -> bool {
        if let Some(t) = self.no_eviction_before {
            if age_secs(now, t) < 0 {
                return false;
            }
        }
        let limit = SUBKEY_LIFETIME.as_secs() as i64 + self.config.max_skew.as_secs() as i64;
        let before = self.table.len();
        self.table.retain(|_, t| age_secs(now, t.epoch) <= limit);
        let evicted = before - self.table.len();
        self.stats.subkeys_evicted += evicted as u64;
        if self.table.len() < self.config.max_subkeys {
            self.no_eviction_before = None;
            true
        } else {
            self.no_eviction_before = Some(now.wrapping_add(1));
            false
        }
    }

    /// Subkeys tracked now
    pub fn tracked(&self) -> usize {
        self.table.len()
    }
}

const _: () = assert!(TRAILER_LEN == ORIGIN_LEN + 8);
