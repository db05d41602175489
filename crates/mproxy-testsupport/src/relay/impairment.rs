//! The seeded decisions of a [`LossyRelay`](super::LossyRelay): what to
//! drop, duplicate or hold back

use std::time::Duration;

use crate::data::SplitMix64;

/// What a [`LossyRelay`] does to the datagrams it relays.
///
/// Probabilities are per received datagram and independent: with
/// probability `drop` it is not forwarded at all; otherwise it is forwarded
/// twice (back to back) with probability `duplicate`, and with probability
/// `reorder` it (with its duplicate) is held back until `1..=reorder_depth`
/// later datagrams (uniformly chosen) have arrived, or until `max_hold` has
/// passed, whichever comes first. `Default` is a perfect relay (nothing
/// dropped, duplicated or held).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayConfig {
    /// Seed of the decision generator.
    pub seed: u64,
    /// Probability that a datagram is dropped.
    pub drop: f64,
    /// Probability that a forwarded datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a forwarded datagram is held back (reordered).
    pub reorder: f64,
    /// Most later datagrams a held datagram waits for (0: never hold).
    pub reorder_depth: usize,
    /// Longest a datagram is held, whatever the traffic.
    pub max_hold: Duration,
    /// Relay replies (the receiver's NACKs and feedback) back to the
    /// sender that last sent data (mpx DATA or heartbeat frames, or raw
    /// payloads) through the relay; off by default
    pub return_path: bool,
    /// Probability that a reply is dropped on the way back (seeded too)
    pub return_drop: f64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_depth: 0,
            max_hold: Duration::from_millis(20),
            return_path: false,
            return_drop: 0.0,
        }
    }
}

/// The fate of one received datagram, as decided by an [`Impairment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Copies to forward: 0 (dropped), 1, or 2 (duplicated).
    pub copies: u32,
    /// Later arrivals to wait for before forwarding (0: forward at once).
    /// Always 0 for a dropped datagram.
    pub hold: usize,
}

impl Decision {
    /// True if no copy is forwarded.
    pub fn dropped(&self) -> bool {
        self.copies == 0
    }
}

/// The seeded decision sequence of a [`LossyRelay`]: the n-th call to
/// [`Impairment::decide`] gives the decision for the n-th received datagram.
///
/// Each decision consumes exactly four draws of a [`SplitMix64`] seeded
/// with [`RelayConfig::seed`], so it depends on the seed and the position
/// only.
#[derive(Debug, Clone)]
pub struct Impairment {
    config: RelayConfig,
    rng: SplitMix64,
}

/// A uniform value in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Impairment {
    /// The decision sequence for `config`.
    pub fn new(config: &RelayConfig) -> Self {
        Self {
            config: *config,
            rng: SplitMix64::new(config.seed),
        }
    }

    /// The decision for the next datagram.
    pub fn decide(&mut self) -> Decision {
        let drop = unit(self.rng.next_u64()) < self.config.drop;
        let dup = unit(self.rng.next_u64()) < self.config.duplicate;
        let reorder = unit(self.rng.next_u64()) < self.config.reorder;
        let depth = self.rng.next_u64();
        if drop {
            return Decision { copies: 0, hold: 0 };
        }
        let hold = if reorder && self.config.reorder_depth > 0 {
            1 + usize::try_from(depth % self.config.reorder_depth as u64).unwrap_or(0)
        } else {
            0
        };
        Decision {
            copies: if dup { 2 } else { 1 },
            hold,
        }
    }
}
