//! Sliding replay window over a 32-bit packet counter (RFC 6479)
//!
//! A ring of 64-bit blocks: the bit of counter `n` is bit `n % 64` of
//! block `(n / 64) % blocks`. Moving the top forward clears only the
//! blocks it passes (at most all of them), so a check costs O(1) however
//! far the counter jumps. With `blocks` blocks the window accepts counters
//! down to `(blocks - 1) * 64` below the highest seen.

/// Default window: counters up to 8192 below the highest are accepted
/// once (WireGuard's size; 1 KiB per tracked subkey)
pub const DEFAULT_REPLAY_WINDOW: usize = 8192;
/// The largest window a receiver may configure (8 KiB per tracked subkey)
pub const MAX_REPLAY_WINDOW: usize = 65_536;

const BLOCK_BITS: u64 = 64;

/// Which counters of one subkey were accepted
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    blocks: Box<[u64]>,
    /// Highest counter accepted so far (`None`: none yet)
    top: Option<u64>,
}

impl ReplayWindow {
    /// A window accepting counters down to `window` below the highest
    /// (`window` is rounded up to a multiple of 64, clamped to 64 ..=
    /// [`MAX_REPLAY_WINDOW`])
    pub(crate) fn new(window: usize) -> Self {
        let window = window.clamp(64, MAX_REPLAY_WINDOW);
        let n = window.div_ceil(64) + 1;
        Self {
            blocks: vec![0u64; n].into_boxed_slice(),
            top: None,
        }
    }

    /// Counters this far below the highest are refused as too old
    pub(crate) fn width(&self) -> u64 {
        (self.blocks.len() as u64 - 1) * BLOCK_BITS
    }

    /// Accept counter `n` if it was not accepted before and is not too old;
    /// true if accepted (its bit is then set)
    ///
    /// Call only for frames whose tag verified.
    pub(crate) fn check_and_set(&mut self, n: u32) -> bool {
        let n = u64::from(n);
        let nblocks = self.blocks.len() as u64;
        match self.top {
            Some(top) if n + self.width() <= top => return false,
            Some(top) if n > top => {
                let from = top / BLOCK_BITS;
                let to = n / BLOCK_BITS;
                let clear = (to - from).min(nblocks);
                for i in 1..=clear {
                    self.blocks[((from + i) % nblocks) as usize] = 0;
                }
                self.top = Some(n);
            }
            Some(_) => {}
            None => {
                self.blocks.fill(0);
                self.top = Some(n);
            }
        }
        let block = &mut self.blocks[((n / BLOCK_BITS) % nblocks) as usize];
        let bit = 1u64 << (n % BLOCK_BITS);
        if *block & bit != 0 {
            return false;
        }
        *block |= bit;
        true
    }

    /// Heap bytes this window holds
    pub(crate) fn heap_bytes(&self) -> usize {
        self.blocks.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_each_counter_once() {
        let mut w = ReplayWindow::new(128);
        assert_eq!(w.width(), 128);
        for n in 0..1000u32 {
            assert!(w.check_and_set(n), "{n}");
            assert!(!w.check_and_set(n), "{n} again");
        }
    }

    #[test]
    fn test_reordered_within_window_accepted_once_old_refused() {
        let mut w = ReplayWindow::new(128);
        assert!(w.check_and_set(500));
        // 128 below the top is too old, 127 below is inside
        assert!(!w.check_and_set(372));
        assert!(w.check_and_set(373));
        assert!(!w.check_and_set(373));
        for n in (374..500).rev() {
            assert!(w.check_and_set(n), "{n}");
        }
        for n in 373..=500 {
            assert!(!w.check_and_set(n), "{n} again");
        }
    }

    #[test]
    fn test_large_jump_clears_old_bits() {
        let mut w = ReplayWindow::new(128);
        for n in 0..200 {
            assert!(w.check_and_set(n));
        }
        // jump far ahead: the ring blocks are reused, stale bits must be gone
        assert!(w.check_and_set(1_000_000));
        for n in (1_000_000 - 127)..1_000_000 {
            assert!(w.check_and_set(n), "{n}");
        }
        assert!(!w.check_and_set(1_000_000 - 128));
        assert!(!w.check_and_set(199));
    }

    #[test]
    fn test_top_of_range_and_first_counter() {
        let mut w = ReplayWindow::new(DEFAULT_REPLAY_WINDOW);
        assert!(w.check_and_set(u32::MAX));
        assert!(!w.check_and_set(u32::MAX));
        assert!(w.check_and_set(u32::MAX - 1));
        assert!(!w.check_and_set(0));
        assert_eq!(w.heap_bytes(), (8192 / 64 + 1) * 8);
        let mut w = ReplayWindow::new(0);
        assert_eq!(w.width(), 64);
        assert!(w.check_and_set(0));
        assert!(!w.check_and_set(0));
    }

    #[test]
    fn test_matches_a_set_model() {
        // a seeded random walk against a plain set of accepted counters
        let mut w = ReplayWindow::new(256);
        let mut seen = std::collections::HashSet::new();
        let mut top: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9;
        let mut base: u64 = 0;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            let n = (base + x % 600).saturating_sub(300);
            let Ok(n32) = u32::try_from(n) else { continue };
            let too_old = top.is_some_and(|t| n + 256 <= t);
            let expect = !too_old && !seen.contains(&n);
            assert_eq!(w.check_and_set(n32), expect, "counter {n}, top {top:?}");
            if expect {
                seen.insert(n);
                top = Some(top.map_or(n, |t| t.max(n)));
            }
        }
    }
}
