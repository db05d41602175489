//! Built-in rotation: `--rotate-size` and `--rotate-interval`
//!
//! A file is rotated only between two records, so no record is ever split
//! between files. The finished file is renamed to `PATH.N`, N one more
//! than the highest number already there (so numbers only grow: `PATH.1`
//! is the oldest, the file at `PATH` the one being written), and writing
//! goes on in a new, empty `PATH`. Interval rotation happens at multiples
//! of the interval since 1970-01-01 UTC (`1h`: on the hour); an empty file
//! is never rotated.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When files are rotated
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RotatePolicy {
    /// Rotate before a record would make the file larger than this
    pub(crate) size: Option<u64>,
    /// Rotate at every multiple of this many seconds since the epoch
    pub(crate) interval: Option<u64>,
}

impl RotatePolicy {
    /// Start (Unix seconds) of the interval `now` falls in
    pub(crate) fn interval_start(&self, now: SystemTime) -> Option<u64> {
        let every = self.interval?;
        let secs = unix_secs(now);
        Some(secs - secs % every.max(1))
    }
}

/// Seconds since 1970 (0 before it)
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Parse a duration: `90`, `90s`, `15m`, `1h`, `1d` (at least 1 s, at
/// most 366 days)
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid interval '{s}' (examples: 30s, 15m, 1h, 1d)");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    num.checked_mul(mult)
        .filter(|n| (1..=366 * 86_400).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// `PATH.N`
pub(crate) fn rotated_name(path: &Path, n: u64) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// One more than the highest N of the `PATH.N` files in `path`'s directory
/// (1 if there are none); reads the directory once
pub(crate) fn next_index(path: &Path) -> io::Result<u64> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(1);
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut highest = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let other = entry.file_name();
        let Some(n) = other
            .to_str()
            .and_then(|o| o.strip_prefix(name))
            .and_then(|o| o.strip_prefix('.'))
            .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|o| o.parse::<u64>().ok())
        else {
            continue;
        };
        highest = highest.max(n);
    }
    Ok(highest.saturating_add(1))
}

/// Rename `path` to `PATH.N` with `N >= *next`, never replacing a file;
/// `*next` becomes the number after the one used
pub(crate) fn rename_rotated(path: &Path, next: &mut u64) -> io::Result<PathBuf> {
    // a file that appeared since the directory was read is skipped, not replaced
    for _ in 0..1000 {
        let to = rotated_name(path, *next);
        *next = next.saturating_add(1);
        if std::fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        std::fs::rename(path, &to)?;
        return Ok(to);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free {}.N name", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_interval() {
        assert_eq!(parse_interval("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["0", "1w", "h", "", "-1s", "400d"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_interval_start_is_aligned() {
        let p = RotatePolicy {
            size: None,
            interval: Some(3600),
        };
        let t = UNIX_EPOCH + Duration::from_secs(7200 + 1234);
        assert_eq!(p.interval_start(t), Some(7200));
        assert_eq!(RotatePolicy::default().interval_start(t), None);
    }

    #[test]
    fn test_numbering_grows_and_never_replaces() {
        let dir = std::env::temp_dir().join(format!("mproxy-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.log");
        assert_eq!(next_index(&path).unwrap(), 1);
        for name in [
            "out.log.3",
            "out.log.x",
            "out.log.",
            "other.log.9",
            "out.log.2",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let mut next = next_index(&path).unwrap();
        assert_eq!(next, 4);
        std::fs::write(&path, b"a").unwrap();
        std::fs::write(dir.join("out.log.4"), b"someone else's").unwrap();
        let to = rename_rotated(&path, &mut next).unwrap();
        assert_eq!(to, dir.join("out.log.5"));
        assert_eq!(next, 6);
        assert_eq!(
            std::fs::read(dir.join("out.log.4")).unwrap(),
            b"someone else's"
        );
        assert_eq!(std::fs::read(&to).unwrap(), b"a");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
