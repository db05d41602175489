//! Who may steer the sender, and how much a NACK may cost it
//!
//! Without a key anyone can send a NACK, WINDOW or FEEDBACK frame naming
//! the session. Two rules bound what that buys:
//!
//! - **Echo tokens.** Every heartbeat and probe carries the session's
//!   current token (a keyed hash of a per-session secret and the time
//!   epoch, new every [`TOKEN_EPOCH`]); receivers return the newest one
//!   in their WINDOW and FEEDBACK frames. A source that returned a valid
//!   token (current or previous epoch) within [`PROOF_LIFETIME`] has shown
//!   that it receives the stream: it is *verified*. Only verified sources'
//!   WINDOW and FEEDBACK frames are acted on, so an off-path stranger can
//!   neither hold the stream back nor kill a path. On multicast every
//!   member of the group sees the heartbeats and can verify itself, which
//!   is what a receiver is; an on-path attacker can too, which is what
//!   `--key-file` is for.
//! - **Re-send budgets** per source address, in bytes: every NACK byte
//!   received earns [`UNVERIFIED_GAIN`] bytes of re-sends, so a source that
//!   receives nothing gets at most twice what it sends; a verified source
//!   also earns one byte for every byte of new data sent (a receiver may
//!   need everything back once), up to the repair buffer's size. Re-sends
//!   go to the stream's destinations, never to the NACK's source.
//!
//! The table of sources is bounded ([`MAX_SOURCES`], least recently seen
//! replaced), so spoofed addresses cannot grow it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A new token every this long (the previous one stays valid one epoch)
pub(crate) const TOKEN_EPOCH: Duration = Duration::from_secs(5);
/// A valid token verifies its source for this long
pub(crate) const PROOF_LIFETIME: Duration = Duration::from_secs(15);
/// Re-send bytes earned per NACK byte received, whoever sends it
pub(crate) const UNVERIFIED_GAIN: u64 = 2;
/// Most re-send credit an unverified source can bank
const UNVERIFIED_CAP: u64 = 64 * 1024;
/// Most sources tracked
pub(crate) const MAX_SOURCES: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Source {
    addr: SocketAddr,
    credit: u64,
    /// Data bytes sent when this source's credit was last topped up
    data_mark: u64,
    verified_until: Option<Instant>,
    last_seen: Instant,
}

/// Tokens and re-send budgets of one session
#[derive(Debug)]
pub(crate) struct Guard {
    secret: u64,
    start: Instant,
    verified_cap: u64,
    sources: Vec<Source>,
}

impl Guard {
    /// `secret`: random per session; `verified_cap`: most credit a
    /// verified source can bank (the repair buffer size)
    pub(crate) fn new(secret: u64, start: Instant, verified_cap: u64) -> Self {
        Self {
            secret,
            start,
            verified_cap: verified_cap.max(UNVERIFIED_CAP),
            sources: Vec::new(),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_millis() / TOKEN_EPOCH.as_millis()) as u64
    }

    /// The token heartbeats carry at `now`
    pub(crate) fn token(&self, now: Instant) -> u64 {
        token_for(self.secret, self.epoch(now))
    }

    /// Check an echoed token from `from`; a valid one verifies the source
    pub(crate) fn check(&mut self, now: Instant, from: SocketAddr, token: Option<u64>) -> bool {
        let e = self.epoch(now);
        let ok = token.is_some_and(|t| {
            t == token_for(self.secret, e) || (e > 0 && t == token_for(self.secret, e - 1))
        });
        if ok {
            self.verify(now, from);
        }
        ok
    }

    /// `from` has shown it belongs: it returned a valid token, or (keyed)
    /// sent an authentic frame
    pub(crate) fn verify(&mut self, now: Instant, from: SocketAddr) {
        let verified_cap = self.verified_cap;
        let s = self.source(now, from, 0);
        if s.verified_until.is_none_or(|t| t <= now) {
            // a newly verified receiver may need much of the buffer
            s.credit = s.credit.max(verified_cap);
        }
        s.verified_until = Some(now + PROOF_LIFETIME);
    }

    /// Whether `from` is verified now
    #[cfg(test)]
    pub(crate) fn is_verified(&self, now: Instant, from: SocketAddr) -> bool {
        self.sources
            .iter()
            .any(|s| s.addr == from && s.verified_until.is_some_and(|t| t > now))
    }

    /// A NACK of `len` bytes from `from`; `data_sent`: data bytes sent so
    /// far. Returns the bytes it may have re-sent
    pub(crate) fn nack_budget(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        data_sent: u64,
    ) -> u64 {
        let verified_cap = self.verified_cap;
        let s = self.source(now, from, data_sent);
        let verified = s.verified_until.is_some_and(|t| t > now);
        let earned = UNVERIFIED_GAIN * len as u64;
        if verified {
            let fresh = data_sent.saturating_sub(s.data_mark);
            s.credit = (s.credit + earned + fresh).min(verified_cap);
        } else {
            s.credit = (s.credit + earned).min(UNVERIFIED_CAP);
        }
        s.data_mark = data_sent;
        s.credit
    }

    /// `bytes` were re-sent for `from`
    pub(crate) fn spend(&mut self, from: SocketAddr, bytes: u64) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.addr == from) {
            s.credit = s.credit.saturating_sub(bytes);
        }
    }

    /// The entry of `addr`, created (replacing the least recently seen
    /// one when full) if needed
    fn source(&mut self, now: Instant, addr: SocketAddr, data_sent: u64) -> &mut Source {
        let i = match self.sources.iter().position(|s| s.addr == addr) {
            Some(i) => i,
            None => {
                let fresh = Source {
                    addr,
                    credit: 0,
                    data_mark: data_sent,
                    verified_until: None,
                    last_seen: now,
                };
                if self.sources.len() < MAX_SOURCES {
                    self.sources.push(fresh);
                    self.sources.len() - 1
                } else {
                    let (i, _) = self
                        .sources
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_seen)
                        .unwrap_or((0, &fresh));
                    self.sources[i] = fresh;
                    i
                }
            }
        };
        let s = &mut self.sources[i];
        s.last_seen = now;
        s
    }
}

/// The token of `epoch`: SplitMix64 finalizer over secret and epoch (an
/// unpredictable 64-bit value to anyone who has not seen the secret's
/// output; not a MAC: `--key-file` is the authentication)
fn token_for(secret: u64, epoch: u64) -> u64 {
    let mut z = secret ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 9], p))
    }

    #[test]
    fn test_unverified_source_gets_twice_its_bytes() {
        let t = Instant::now();
        let mut g = Guard::new(42, t, 1 << 20);
        assert_eq!(g.nack_budget(t, addr(1), 30, 1 << 30), 60);
        g.spend(addr(1), 60);
        assert_eq!(g.nack_budget(t, addr(1), 30, 1 << 30), 60);
        // banking is capped
        for _ in 0..10_000 {
            g.nack_budget(t, addr(1), 1000, 1 << 30);
        }
        assert_eq!(g.nack_budget(t, addr(1), 0, 1 << 30), UNVERIFIED_CAP);
    }

    #[test]
    fn test_token_verifies_and_earns_with_data() {
        let t = Instant::now();
        let mut g = Guard::new(42, t, 1 << 20);
        let tok = g.token(t);
        assert!(!g.check(t, addr(1), Some(tok ^ 1)));
        assert!(!g.check(t, addr(1), None));
        assert!(!g.is_verified(t, addr(1)));
        assert!(g.check(t, addr(1), Some(tok)));
        assert!(g.is_verified(t, addr(1)));
        assert_eq!(g.nack_budget(t, addr(1), 30, 0), 1 << 20);
        g.spend(addr(1), 1 << 20);
        assert_eq!(g.nack_budget(t, addr(1), 30, 5000), 60 + 5000);
        // the previous epoch's token still counts, older ones do not
        let later = t + TOKEN_EPOCH;
        assert_ne!(g.token(later), tok);
        assert!(g.check(later, addr(2), Some(tok)));
        assert!(!g.check(later + TOKEN_EPOCH, addr(3), Some(tok)));
        // proof expires
        assert!(!g.is_verified(t + PROOF_LIFETIME, addr(1)));
    }

    #[test]
    fn test_table_is_bounded() {
        let t = Instant::now();
        let mut g = Guard::new(1, t, 1 << 20);
        for p in 0..(MAX_SOURCES as u16 * 4) {
            g.nack_budget(t + Duration::from_millis(u64::from(p)), addr(p), 10, 0);
        }
        assert_eq!(g.sources.len(), MAX_SOURCES);
    }
}
