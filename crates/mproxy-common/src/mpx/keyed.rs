//! A fast keyed hash for the per-frame table lookups of the receiver
//!
//! The std `RandomState` (SipHash-1-3) took about a quarter of the server's
//! user time at multi-gigabit rates (perf, 1472-byte frames): the receiver
//! looks its stream up several times per frame. Keys are small integers
//! (session, stream, path), so a folded 64×64→128-bit multiply per word is
//! enough. The seed is random per table (taken from `RandomState`), so
//! senders cannot aim for collisions without knowing it, and the tables
//! are bounded anyway (`max_streams`, tracked paths).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Builds [`KeyedHasher`]s with one random seed per table
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedState {
    seed: u64,
}

impl Default for KeyedState {
    fn default() -> Self {
        Self {
            seed: RandomState::new().hash_one(0x006d_7078_u64) | 1,
        }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

/// Folded-multiply hasher over whole words (see the module docs)
#[derive(Debug)]
pub(crate) struct KeyedHasher {
    state: u64,
    seed: u64,
}

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // the length keeps "ab" and "ab\0" apart
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.state = fold(self.state ^ i, MUL);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.state, self.seed ^ MUL)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedState;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    #[test]
    fn test_equal_keys_hash_equal_and_near_keys_spread() {
        let s = KeyedState::default();
        assert_eq!(s.hash_one((7u64, 3u32)), s.hash_one((7u64, 3u32)));
        assert_ne!(s.hash_one((7u64, 3u32)), s.hash_one((7u64, 4u32)));
        assert_ne!(s.hash_one((7u64, 3u32)), s.hash_one((3u64, 7u32)));
        assert_ne!(s.hash_one(b"ab".as_slice()), s.hash_one(b"ab\0".as_slice()));
        // consecutive stream ids land in different top-7-bit groups and
        // low-bit buckets most of the time
        let top: std::collections::HashSet<u64> =
            (0..64u32).map(|i| s.hash_one((1u64, i)) >> 57).collect();
        assert!(top.len() > 32, "{} distinct top bits of 64", top.len());
        let mut m: HashMap<(u64, u32), u32, KeyedState> = HashMap::with_hasher(s);
        for i in 0..1000 {
            m.insert((u64::from(i) << 32, i), i);
        }
        assert!((0..1000).all(|i| m.get(&(u64::from(i) << 32, i)) == Some(&i)));
    }

    #[test]
    fn test_tables_get_different_seeds() {
        let a = KeyedState::default();
        let b = KeyedState::default();
        assert_ne!(a.hash_one(1u64), b.hash_one(1u64));
    }
}
