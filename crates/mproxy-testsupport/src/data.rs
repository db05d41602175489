//! Temporary directories and deterministic test data.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A path under [`std::env::temp_dir`] that no other call (in any process)
/// returns: `mproxy-test-<tag>-<pid>-<counter>-<nanos>`.
pub(crate) fn unique_temp_path(tag: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "mproxy-test-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ))
}

/// A fresh directory under [`std::env::temp_dir`], removed with its
/// contents when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory with a unique name.
    pub fn new() -> Self {
        let path = unique_temp_path("dir");
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SplitMix64: a small, fast, deterministic pseudo-random generator
/// (not cryptographic).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi` (slightly biased; fine for test data).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        let span = (hi - lo) as u64 + 1;
        lo + usize::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

fn create(path: &Path) -> BufWriter<File> {
    let f = File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    BufWriter::with_capacity(1 << 16, f)
}

fn finish(path: &Path, mut w: BufWriter<File>) {
    w.flush()
        .and_then(|()| w.get_ref().sync_all())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Writes `len` pseudo-random bytes to `path`; the same `seed` always gives
/// the same content.
pub fn random_file(path: impl AsRef<Path>, len: usize, seed: u64) {
    let path = path.as_ref();
    let mut rng = SplitMix64::new(seed);
    let mut w = create(path);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        left -= n;
    }
    finish(path, w);
}

/// Shortest line [`line_file`] makes, newline included (except a final
/// line that has to fill a smaller remainder).
const MIN_LINE: usize = 20;
/// Longest ordinary line, newline included.
const MAX_LINE: usize = 200;
/// Approximate length of the occasional very long line.
const LONG_LINE: usize = 5000;
/// Fixed part of an AIS sentence: `!AIVDM,1,1,,A,` + `,0*hh\n`.
const AIS_OVERHEAD: usize = 14 + 6;

/// Writes exactly `len` bytes of realistic telemetry lines to `path`: a mix
/// of AIS/NMEA `!AIVDM,...*hh` sentences with valid checksums and CSV sensor
/// readings, mostly 20–200 bytes long, with an occasional line of about
/// 5000 bytes. Every line ends with `'\n'` (so does the file, if `len > 0`).
/// The same `seed` always gives the same content.
pub fn line_file(path: impl AsRef<Path>, len: usize, seed: u64) {
    let path = path.as_ref();
    let mut rng = SplitMix64::new(seed);
    let mut w = create(path);
    let mut left = len;
    let mut seq = 0u64;
    let mut line = Vec::with_capacity(LONG_LINE + MAX_LINE);
    while left > 0 {
        let want = if left <= MAX_LINE {
            left
        } else if left >= LONG_LINE + 500 + MIN_LINE && rng.range(0, 399) == 0 {
            rng.range(LONG_LINE - 500, LONG_LINE + 500)
        } else {
            // Leave either nothing or at least MIN_LINE for the next line.
            let t = rng.range(MIN_LINE, MAX_LINE);
            if left - t < MIN_LINE {
                left - MIN_LINE
            } else {
                t
            }
        };
        line.clear();
        if want > AIS_OVERHEAD && want <= MAX_LINE && rng.range(0, 9) < 6 {
            ais_line(&mut rng, want, &mut line);
        } else {
            csv_line(&mut rng, want, seq, &mut line);
        }
        debug_assert_eq!(line.len(), want);
        w.write_all(&line)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        left -= want;
        seq += 1;
    }
    finish(path, w);
}

/// An `!AIVDM` sentence of exactly `len` bytes (`len > AIS_OVERHEAD`).
fn ais_line(rng: &mut SplitMix64, len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(if rng.range(0, 1) == 0 {
        b"!AIVDM,1,1,,A,"
    } else {
        b"!AIVDM,1,1,,B,"
    });
    for _ in 0..len - AIS_OVERHEAD {
        // AIS 6-bit ASCII armouring: '0'..='W' and '`'..='w'.
        let v = u8::try_from(rng.range(0, 63)).unwrap_or(0);
        out.push(if v < 40 { b'0' + v } else { b'`' + (v - 40) });
    }
    out.extend_from_slice(b",0");
    let sum = out[1..].iter().fold(0u8, |acc, b| acc ^ b);
    out.extend_from_slice(format!("*{sum:02X}\n").as_bytes());
}

/// A CSV sensor line of exactly `len` bytes (`len >= 1`).
fn csv_line(rng: &mut SplitMix64, len: usize, seq: u64, out: &mut Vec<u8>) {
    let body = len - 1;
    let ts = 1_700_000_000_000u64 + seq * 250;
    let station = rng.range(1, 99);
    let mut s = if body >= 40 {
        format!("s{station:02},{ts},{seq}")
    } else {
        format!("s{station:02}")
    };
    while s.len() < body {
        let temp = rng.range(0, 40_000) as f64 / 1000.0 - 10.0;
        let hum = rng.range(0, 1000) as f64 / 10.0;
        s.push_str(&format!(",{temp:.3},{hum:.1}"));
    }
    s.truncate(body);
    if s.ends_with(['.', ',', '-']) {
        s.pop();
        s.push('0');
    }
    out.extend_from_slice(s.as_bytes());
    out.push(b'\n');
}

/// Panics unless the files at `a` and `b` have identical contents; the
/// message gives both sizes and the first differing offset (never the
/// contents).
pub fn assert_files_equal(a: impl AsRef<Path>, b: impl AsRef<Path>) {
    let (a, b) = (a.as_ref(), b.as_ref());
    let open =
        |p: &Path| File::open(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()));
    let (fa, fb) = (open(a), open(b));
    let size = |f: &File, p: &Path| {
        f.metadata()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", p.display()))
            .len()
    };
    let (la, lb) = (size(&fa, a), size(&fb, b));
    let (mut ra, mut rb) = (
        BufReader::with_capacity(1 << 16, fa),
        BufReader::with_capacity(1 << 16, fb),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut ra, &mut ba, a);
        let nb = read_full(&mut rb, &mut bb, b);
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            panic!(
                "files differ: {} ({la} bytes) vs {} ({lb} bytes); first difference at offset {}",
                a.display(),
                b.display(),
                offset + i as u64
            );
        }
        offset += n as u64;
        if na != nb {
            panic!(
                "files differ: {} ({la} bytes) vs {} ({lb} bytes); one ends at offset {offset}",
                a.display(),
                b.display()
            );
        }
        if na == 0 {
            return;
        }
    }
}

/// Reads until `buf` is full or end of file; returns the count.
fn read_full(r: &mut impl Read, buf: &mut [u8], p: &Path) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("cannot read {}: {e}", p.display()),
        }
    }
    n
}
