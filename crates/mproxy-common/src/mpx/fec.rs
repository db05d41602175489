//! Forward error correction for one-way links: a block encoder beside the
//! [`Sender`](super::Sender) and a decoder beside the
//! [`Receiver`](super::Receiver)
//!
//! The sender groups consecutive DATA frames of a stream into blocks of up
//! to `block_frames` frames and, after each block, sends
//! `ceil(k * overhead / 100)` FEC frames, each one repair symbol of a
//! systematic Reed–Solomon code over GF(2^16) (the Leopard-RS
//! construction, crate `reed-solomon-simd`). Any `k` of the `k + m`
//! symbols rebuild the block, so a receiver recovers up to `m` lost frames
//! per block without asking for anything. The symbol of a DATA frame
//! holds its length and flags, so rebuilt frames are exact (see
//! [`crate::wire::source_symbol`]). A partial block is sent when the
//! stream ends and when its oldest frame has waited `max_delay`.

use std::collections::{BTreeMap, HashMap};

use super::keyed::KeyedState;
use std::time::{Duration, Instant};

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::StreamKey;
use crate::wire::{
    parse_source_symbol, source_symbol, symbol_len_for, FecRepr, Flags, FrameType, Repr,
    FEC_MAX_BLOCK, FEC_MAX_REPAIR, HEADER_LEN,
};

/// Settings of an [`FecEncoder`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecConfig {
    /// Repair symbols as a percentage of source frames (1..=100)
    pub overhead_percent: u16,
    /// Source frames per block (1..=1024)
    pub block_frames: usize,
    /// Send the repair symbols of a partial block once its first frame is
    /// this old (bounds the latency a lost frame waits for its repair)
    pub max_delay: Duration,
}

/// Default source frames per block: with 10 % overhead a block of 256
/// frames survives 5 % random loss with probability 0.999 (a block of 20
/// fails 9 % of the time)
pub const DEFAULT_FEC_BLOCK: usize = 256;
/// Default wait before a partial block is closed
pub const DEFAULT_FEC_MAX_DELAY: Duration = Duration::from_millis(50);

impl Default for FecConfig {
    fn default() -> Self {
        Self {
            overhead_percent: 10,
            block_frames: DEFAULT_FEC_BLOCK,
            max_delay: DEFAULT_FEC_MAX_DELAY,
        }
    }
}

impl FecConfig {
    /// Repair symbols for a block of `k` source frames:
    /// `ceil(k * overhead / 100)`, at least 1
    pub fn repair_count(&self, k: usize) -> usize {
        let pct = usize::from(self.overhead_percent.clamp(1, 100));
        (k * pct).div_ceil(100).clamp(1, FEC_MAX_REPAIR)
    }
}

/// Counters of an [`FecEncoder`]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecEncoderStats {
    /// Blocks closed (their repair symbols sent)
    pub blocks: u64,
    /// Source frames protected
    pub source_frames: u64,
    /// FEC frames sent
    pub repair_frames: u64,
    /// Bytes of those frames (headers included)
    pub repair_bytes: u64,
}

/// Builds repair symbols for the DATA frames of one stream
pub struct FecEncoder {
    config: FecConfig,
    /// Sequence number of the block's first frame
    base: u32,
    /// Unpadded source symbols of the open block (`count` in use)
    symbols: Vec<Vec<u8>>,
    count: usize,
    max_payload: usize,
    started: Option<Instant>,
    rs: Option<ReedSolomonEncoder>,
    pad: Vec<u8>,
    frame: Vec<u8>,
    stats: FecEncoderStats,
}

impl std::fmt::Debug for FecEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FecEncoder")
            .field("config", &self.config)
            .field("base", &self.base)
            .field("count", &self.count)
            .field("stats", &self.stats)
            .finish()
    }
}

impl FecEncoder {
    /// An encoder; `block_frames` is clamped to 1..=1024 and the overhead to 1..=100 %
    pub fn new(config: FecConfig) -> Self {
        let mut config = config;
        config.block_frames = config.block_frames.clamp(1, FEC_MAX_BLOCK);
        config.overhead_percent = config.overhead_percent.clamp(1, 100);
        Self {
            config,
            base: 0,
            symbols: Vec::new(),
            count: 0,
            max_payload: 0,
            started: None,
            rs: None,
            pad: Vec::new(),
            frame: Vec::new(),
            stats: FecEncoderStats::default(),
        }
    }

    /// The settings in force
    pub fn config(&self) -> FecConfig {
        self.config
    }

    /// Counters so far
    pub fn stats(&self) -> FecEncoderStats {
        self.stats
    }

    /// Add DATA frame `seq` (sent with `flags` and `payload`) to the open
    /// block; true when the block is full and [`FecEncoder::flush`] is due
    ///
    /// Frames must come in sequence order without holes; a frame that does
    /// not follow the block's last one closes nothing and starts a new
    /// block (the caller should flush first).
    pub fn add(&mut self, now: Instant, seq: u32, flags: Flags, payload: &[u8]) -> bool {
        if self.count > 0 && self.base.wrapping_add(self.count as u32) != seq {
            self.count = 0;
        }
        if self.count == 0 {
            self.base = seq;
            self.max_payload = 0;
            self.started = Some(now);
        }
        if self.symbols.len() <= self.count {
            self.symbols.push(Vec::new());
        }
        if let Some(sym) = self.symbols.get_mut(self.count) {
            source_symbol(flags, payload, sym);
        }
        self.count += 1;
        self.max_payload = self.max_payload.max(payload.len());
        self.count >= self.config.block_frames
    }

    /// When the open block must be flushed (its oldest frame waited `max_delay`)
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.count > 0).then_some(self.started? + self.config.max_delay)
    }

    /// Frames in the open block
    pub fn pending(&self) -> usize {
        self.count
    }

    /// Close the open block: emit its repair symbols as FEC frames of
    /// stream `(session, stream)` through `emit` (nothing if it is empty)
    pub fn flush(&mut self, session: u64, stream: u32, mut emit: impl FnMut(&[u8])) {
        let k = self.count;
        if k == 0 {
            return;
        }
        self.count = 0;
        self.started = None;
        let m = self.config.repair_count(k);
        let sym_len = symbol_len_for(self.max_payload);
        let (Ok(k16), Ok(m16), Ok(len16)) =
            (u16::try_from(k), u16::try_from(m), u16::try_from(sym_len))
        else {
            return;
        };
        let rs = match self.rs.as_mut() {
            Some(rs) => rs.reset(k, m, sym_len).map(|()| rs),
            None => ReedSolomonEncoder::new(k, m, sym_len).map(|rs| self.rs.insert(rs)),
        };
        let Ok(rs) = rs else {
            return;
        };
        for sym in &self.symbols[..k] {
            self.pad.clear();
            self.pad.extend_from_slice(sym);
            self.pad.resize(sym_len, 0);
            if rs.add_original_shard(&self.pad).is_err() {
                return;
            }
        }
        let Ok(result) = rs.encode() else {
            return;
        };
        let header = Repr {
            frame_type: FrameType::Fec,
            flags: Flags::NONE,
            session,
            stream,
            seq: self.base,
        };
        self.stats.blocks += 1;
        self.stats.source_frames += k as u64;
        for (index, symbol) in (0..m16).zip(result.recovery_iter()) {
            self.frame.clear();
            self.frame.resize(HEADER_LEN, 0);
            FecRepr {
                k: k16,
                m: m16,
                index,
                symbol_len: len16,
            }
            .emit(symbol, &mut self.frame);
            let mut f = crate::wire::Frame::new_unchecked(&mut self.frame[..]);
            header.emit(&mut f);
            f.fill_checksum();
            self.stats.repair_frames += 1;
            self.stats.repair_bytes += self.frame.len() as u64;
            emit(&self.frame);
        }
    }
}

/// Counters of an [`FecDecoder`]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecDecoderStats {
    /// Valid FEC frames handled
    pub fec_frames: u64,
    /// Blocks whose FEC frames were seen and that were settled (complete,
    /// rebuilt or given up)
    pub blocks: u64,
    /// Blocks with lost frames that were rebuilt
    pub recovered_blocks: u64,
    /// Blocks with more lost frames than repair symbols received
    pub unrecoverable_blocks: u64,
    /// DATA frames rebuilt
    pub rebuilt_frames: u64,
    /// Symbols not kept because the memory limit was reached
    pub dropped_symbols: u64,
}

/// Most source frames kept per stream waiting for their block's FEC frames
const MAX_SOURCE_FRAMES: usize = 2 * FEC_MAX_BLOCK;
/// Most bytes of symbols kept per stream
pub const FEC_STREAM_BYTES: usize = 16 << 20;

struct Block {
    base: u64,
    repr: FecRepr,
    repair: BTreeMap<u16, Vec<u8>>,
}

#[derive(Default)]
struct StreamFec {
    /// Unpadded source symbols by sequence number
    src: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    block: Option<Block>,
    /// Blocks below this are settled
    done_upto: u64,
}

/// Rebuilds lost DATA frames from FEC frames, per stream
///
/// Memory is bounded: per stream by 2048 source frames and 16 MiB of
/// symbols (oldest dropped first), over all streams by `memory_limit`
/// (new symbols refused and counted), and the number of streams by the
/// caller ([`Receiver`](super::Receiver) closes each stream's state with
/// it).
pub struct FecDecoder {
    streams: HashMap<StreamKey, StreamFec, KeyedState>,
    bytes: usize,
    memory_limit: usize,
    rs: Option<ReedSolomonDecoder>,
    pad: Vec<u8>,
    stats: FecDecoderStats,
}

impl std::fmt::Debug for FecDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FecDecoder")
            .field("streams", &self.streams.len())
            .field("bytes", &self.bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

/// A DATA frame rebuilt from FEC: `(sequence number, flags, payload)`
pub type Rebuilt = (u64, Flags, Vec<u8>);

impl FecDecoder {
    /// A decoder holding at most `memory_limit` bytes of symbols
    pub fn new(memory_limit: usize) -> Self {
        Self {
            streams: HashMap::default(),
            bytes: 0,
            memory_limit,
            rs: None,
            pad: Vec::new(),
            stats: FecDecoderStats::default(),
        }
    }

    /// Counters so far
    pub fn stats(&self) -> FecDecoderStats {
        self.stats
    }

    /// Bytes of symbols held
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A DATA frame flagged FEC arrived (extended sequence number `seq`);
    /// frames it lets the decoder rebuild are appended to `out`
    pub fn on_source(
        &mut self,
        key: StreamKey,
        seq: u64,
        flags: Flags,
        payload: &[u8],
        out: &mut Vec<Rebuilt>,
    ) {
        let st = self.streams.entry(key).or_default();
        if seq < st.done_upto || st.src.contains_key(&seq) {
            return;
        }
        let mut sym = Vec::new();
        source_symbol(flags, payload, &mut sym);
        while st.src.len() >= MAX_SOURCE_FRAMES || st.bytes + sym.len() > FEC_STREAM_BYTES {
            let Some((_, old)) = st.src.pop_first() else {
                break;
            };
            st.bytes -= old.len();
            self.bytes -= old.len();
        }
        if self.bytes + sym.len() > self.memory_limit || st.bytes + sym.len() > FEC_STREAM_BYTES {
            self.stats.dropped_symbols += 1;
            return;
        }
        st.bytes += sym.len();
        self.bytes += sym.len();
        st.src.insert(seq, sym);
        if st
            .block
            .as_ref()
            .is_some_and(|b| (b.base..b.base + u64::from(b.repr.k)).contains(&seq))
        {
            self.try_complete(key, out);
        }
    }

    /// An FEC frame of block `base` arrived (its payload already parsed
    /// into `repr` and `symbol`); rebuilt frames are appended to `out`
    pub fn on_repair(
        &mut self,
        key: StreamKey,
        base: u64,
        repr: FecRepr,
        symbol: &[u8],
        out: &mut Vec<Rebuilt>,
    ) {
        self.stats.fec_frames += 1;
        let st = self.streams.entry(key).or_default();
        if base < st.done_upto {
            return;
        }
        if let Some(b) = &st.block {
            if b.base == base
                && b.repr.k == repr.k
                && b.repr.m == repr.m
                && b.repr.symbol_len == repr.symbol_len
            {
                // same block
            } else if base > b.base {
                // a newer block: the old one got all it will get
                let old_base = b.base;
                let done = old_base + u64::from(b.repr.k);
                self.settle(key, false, done.min(base));
            } else {
                return; // inconsistent with the open block: ignore
            }
        }
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        if base < st.done_upto {
            return; // overlaps the block just settled: not from a real sender
        }
        if st.block.is_none() {
            // source frames before this block belong to settled blocks
            while st.src.first_key_value().is_some_and(|(s, _)| *s < base) {
                if let Some((_, old)) = st.src.pop_first() {
                    st.bytes -= old.len();
                    self.bytes -= old.len();
                }
            }
            st.block = Some(Block {
                base,
                repr,
                repair: BTreeMap::new(),
            });
        }
        let Some(block) = st.block.as_mut() else {
            return;
        };
        if block.repair.contains_key(&repr.index) {
            return;
        }
        if self.bytes + symbol.len() > self.memory_limit
            || st.bytes + symbol.len() > FEC_STREAM_BYTES
        {
            self.stats.dropped_symbols += 1;
            return;
        }
        st.bytes += symbol.len();
        self.bytes += symbol.len();
        block.repair.insert(repr.index, symbol.to_vec());
        self.try_complete(key, out);
    }

    /// Forget a stream (it closed); an unsettled block with missing frames
    /// counts as unrecoverable
    pub fn close(&mut self, key: StreamKey) {
        if self.streams.contains_key(&key) {
            self.settle(key, false, 0);
        }
        if let Some(st) = self.streams.remove(&key) {
            self.bytes -= st.bytes;
        }
    }

    /// Settle the stream's open block: `rebuilt` says whether its losses
    /// were rebuilt; frames below `max(upto, block end)` are dropped
    fn settle(&mut self, key: StreamKey, rebuilt: bool, upto: u64) {
        let Some(st) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(block) = st.block.take() else {
            return;
        };
        let end = block.base + u64::from(block.repr.k);
        let present = st.src.range(block.base..end).count();
        self.stats.blocks += 1;
        if rebuilt {
            self.stats.recovered_blocks += 1;
        } else if present < usize::from(block.repr.k) {
            self.stats.unrecoverable_blocks += 1;
        }
        for sym in block.repair.values() {
            st.bytes -= sym.len();
            self.bytes -= sym.len();
        }
        st.done_upto = st.done_upto.max(end).max(upto);
        while st
            .src
            .first_key_value()
            .is_some_and(|(s, _)| *s < st.done_upto)
        {
            if let Some((_, old)) = st.src.pop_first() {
                st.bytes -= old.len();
                self.bytes -= old.len();
            }
        }
    }

    /// Rebuild the open block if enough symbols are in
    fn try_complete(&mut self, key: StreamKey, out: &mut Vec<Rebuilt>) {
        let Some(st) = self.streams.get(&key) else {
            return;
        };
        let Some(block) = &st.block else {
            return;
        };
        let k = usize::from(block.repr.k);
        let m = usize::from(block.repr.m);
        let sym_len = usize::from(block.repr.symbol_len);
        let end = block.base + k as u64;
        let present = st.src.range(block.base..end).count();
        if present == k {
            self.settle(key, false, 0);
            return;
        }
        if present + block.repair.len() < k {
            return;
        }
        let before = out.len();
        let ok = self.decode(key, k, m, sym_len, out);
        if !ok {
            out.truncate(before);
        }
        self.stats.rebuilt_frames += (out.len() - before) as u64;
        self.settle(key, ok, 0);
    }

    fn decode(
        &mut self,
        key: StreamKey,
        k: usize,
        m: usize,
        sym_len: usize,
        out: &mut Vec<Rebuilt>,
    ) -> bool {
        let Some(st) = self.streams.get(&key) else {
            return false;
        };
        let Some(block) = &st.block else {
            return false;
        };
        let rs = match self.rs.as_mut() {
            Some(rs) => rs.reset(k, m, sym_len).map(|()| rs),
            None => ReedSolomonDecoder::new(k, m, sym_len).map(|rs| self.rs.insert(rs)),
        };
        let Ok(rs) = rs else {
            return false;
        };
        for (seq, sym) in st.src.range(block.base..block.base + k as u64) {
            if sym.len() > sym_len {
                return false; // not of this block's shape: corrupt or forged
            }
            self.pad.clear();
            self.pad.extend_from_slice(sym);
            self.pad.resize(sym_len, 0);
            if rs
                .add_original_shard((seq - block.base) as usize, &self.pad)
                .is_err()
            {
                return false;
            }
        }
        for (index, sym) in &block.repair {
            if rs.add_recovery_shard(usize::from(*index), sym).is_err() {
                return false;
            }
        }
        let Ok(result) = rs.decode() else {
            return false;
        };
        for (i, sym) in result.restored_original_iter() {
            let Some((flags, payload)) = parse_source_symbol(sym) else {
                return false;
            };
            out.push((block.base + i as u64, flags, payload.to_vec()));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram};

    fn key() -> StreamKey {
        StreamKey {
            session: 9,
            stream: 1,
        }
    }

    /// Encode `payloads` as one block; returns the FEC frames
    fn encode(payloads: &[&[u8]], overhead: u16) -> Vec<Vec<u8>> {
        let mut enc = FecEncoder::new(FecConfig {
            overhead_percent: overhead,
            block_frames: payloads.len(),
            max_delay: Duration::from_millis(50),
        });
        let t = Instant::now();
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let flags = if i + 1 == payloads.len() {
                Flags::FIN
            } else {
                Flags::NONE
            };
            let full = enc.add(t, 100 + i as u32, flags, p);
            assert_eq!(full, i + 1 == payloads.len());
        }
        enc.flush(9, 1, |f| out.push(f.to_vec()));
        assert_eq!(enc.pending(), 0);
        out
    }

    fn repair_of(f: &[u8]) -> (u64, FecRepr, Vec<u8>) {
        let Datagram::Mpx(r, p) = classify(f) else {
            panic!("not a frame")
        };
        assert_eq!(r.frame_type, FrameType::Fec);
        let (fr, sym) = FecRepr::parse(p).unwrap();
        (u64::from(r.seq), fr, sym.to_vec())
    }

    #[test]
    fn test_rebuilds_lost_frames_exactly() {
        let payloads: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("line {i} {}\n", "x".repeat(i * 3)).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let fec = encode(&refs, 10);
        assert_eq!(fec.len(), 2);
        let mut dec = FecDecoder::new(1 << 20);
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            if i == 3 || i == 19 {
                continue; // lost, the second one is the FIN frame
            }
            let flags = Flags::FEC;
            dec.on_source(key(), 100 + i as u64, flags, p, &mut out);
        }
        assert!(out.is_empty());
        let (base, r, sym) = repair_of(&fec[0]);
        assert_eq!((base, r.k, r.m, r.index), (100, 20, 2, 0));
        dec.on_repair(key(), base, r, &sym, &mut out);
        assert!(out.is_empty(), "one symbol cannot rebuild two frames");
        let (base, r, sym) = repair_of(&fec[1]);
        dec.on_repair(key(), base, r, &sym, &mut out);
        assert_eq!(
            out,
            vec![
                (103, Flags::NONE, payloads[3].clone()),
                (119, Flags::FIN, payloads[19].clone())
            ]
        );
        let s = dec.stats();
        assert_eq!(
            (
                s.blocks,
                s.recovered_blocks,
                s.unrecoverable_blocks,
                s.rebuilt_frames
            ),
            (1, 1, 0, 2)
        );
        // late copies of the block are ignored, memory is released
        dec.on_repair(key(), base, r, &sym, &mut out);
        dec.on_source(key(), 105, Flags::FEC, &payloads[5], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(dec.bytes(), 0);
    }

    #[test]
    fn test_unrecoverable_block_counted_on_next_block_or_close() {
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| vec![b'a' + i as u8; 30]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let fec = encode(&refs, 10);
        assert_eq!(fec.len(), 1);
        let mut dec = FecDecoder::new(1 << 20);
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate().skip(2) {
            dec.on_source(key(), 100 + i as u64, Flags::FEC, p, &mut out);
        }
        let (base, r, sym) = repair_of(&fec[0]);
        dec.on_repair(key(), base, r, &sym, &mut out);
        assert!(out.is_empty());
        dec.close(key());
        let s = dec.stats();
        assert_eq!(
            (s.blocks, s.unrecoverable_blocks, s.rebuilt_frames),
            (1, 1, 0)
        );
        assert_eq!(dec.bytes(), 0);
    }

    #[test]
    fn test_forged_symbols_never_panic() {
        let mut dec = FecDecoder::new(1 << 16);
        let mut out = Vec::new();
        let r = FecRepr {
            k: 4,
            m: 4,
            index: 0,
            symbol_len: 64,
        };
        dec.on_source(key(), 1, Flags::FEC, &[1u8; 200], &mut out);
        for i in 0..4 {
            dec.on_repair(key(), 0, FecRepr { index: i, ..r }, &[0xffu8; 64], &mut out);
        }
        // the 200-byte source cannot be part of a 64-byte-symbol block
        assert!(out.is_empty());
        for s in 0..10_000u64 {
            dec.on_source(key(), 10 + s, Flags::FEC, &[0u8; 100], &mut out);
        }
        assert!(dec.bytes() <= 1 << 16, "{}", dec.bytes());
        assert!(dec.stats().dropped_symbols > 0);
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// Test vector 5 of docs/PROTOCOL.md: a block of three DATA frames
    /// ("a\n", "bc\n", an empty FIN) with 50 % overhead: two FEC frames
    #[test]
    fn test_fec_vector() {
        let zeros58 = " 00".repeat(58);
        let want = [
            hex("a7 4d 11 19 03 98 31 47 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 00 61 0a"),
            hex("a7 4d 11 18 2f 23 4c 83 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 01 62 63 0a"),
            hex("a7 4d 11 1a 9b 4f ea 31 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 02"),
            hex(&format!(
                "a7 4d 15 00 6b 48 60 6f 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 00 \
                 00 03 00 02 00 00 00 40 00 00 0a 60 8c 0d{zeros58}"
            )),
            hex(&format!(
                "a7 4d 15 00 49 56 ba b3 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 00 \
                 00 03 00 02 00 01 00 40 00 01 09 63 e5 07{zeros58}"
            )),
        ];
        let mut s = super::super::Sender::new(
            0x0123_4567_89ab_cdef,
            7,
            &super::super::SenderConfig {
                max_datagram: HEADER_LEN + 4,
                ..super::super::SenderConfig::default()
            },
        );
        s.enable_fec(
            Some(FecConfig {
                overhead_percent: 50,
                block_frames: 3,
                max_delay: Duration::from_millis(50),
            }),
            |_| {},
        );
        let t = Instant::now();
        let mut out = Vec::new();
        s.push(t, b"a\nbc\n", |f| out.push(f.to_vec()));
        s.finish(t, |f| out.push(f.to_vec()));
        assert_eq!(out, want);
        // any 3 of the 5 rebuild the block: here the two repair frames and
        // the middle one rebuild the first and the FIN frame
        let mut dec = FecDecoder::new(1 << 20);
        let mut rebuilt = Vec::new();
        let Datagram::Mpx(_, p) = classify(&want[1]) else {
            panic!()
        };
        dec.on_source(key(), 1, Flags::FEC, p, &mut rebuilt);
        for f in &want[3..] {
            let (base, r, sym) = repair_of(f);
            dec.on_repair(key(), base, r, &sym, &mut rebuilt);
        }
        assert_eq!(
            rebuilt,
            vec![
                (0, Flags::OPEN, b"a\n".to_vec()),
                (2, Flags::FIN, Vec::new())
            ]
        );
    }

    #[test]
    fn test_repair_count() {
        let c = FecConfig::default();
        assert_eq!(c.repair_count(256), 26);
        assert_eq!(c.repair_count(1), 1);
        assert_eq!(c.repair_count(20), 2);
    }
}
