//! One output: a file (or stdout) written in whole records
//!
//! Records (datagram payloads, with their prefix if any) are buffered and
//! written at the end of each poll round, or sooner when the buffer fills.
//! The buffer remembers where each record ends, so a write that stops
//! part-way (disk full, quota) is cut back to the last whole record: the
//! file is truncated there and the records after it are counted as lost.
//!
//! The rule for faults: data that could not be written when its turn came
//! is dropped and counted, never kept to be written later. While an output
//! fails, every round tries again with that round's records; the first
//! write that succeeds logs "writable again" with what was lost meanwhile.
//! So the file never receives stale data out of order, and the log says
//! where the hole is.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::budget::Budget;
use super::rotate::{next_index, rename_rotated};
use super::OutputStats;

/// What every output reports into
#[derive(Debug)]
pub(crate) struct Env {
    /// Counters
    pub(crate) stats: OutputStats,
    /// Budget of fault, recovery and reopen log lines
    pub(crate) log: Budget,
    /// Set when a pipe's reader went away (EPIPE): the run should stop
    pub(crate) closed: bool,
}

impl Default for Env {
    fn default() -> Self {
        Self {
            stats: OutputStats::default(),
            log: Budget::new(20, 2),
            closed: false,
        }
    }
}

/// A write failure that has not ended yet
#[derive(Debug)]
struct Fault {
    since: Instant,
    records: u64,
    bytes: u64,
}

/// How a file changed under us, as the periodic check sees it
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Still at its path
    Same,
    /// Unlinked (no name left)
    Deleted,
    /// Its path is gone: moved away
    Missing,
    /// Its path now names another file (rotated by another tool)
    Replaced,
}

/// One open output
#[derive(Debug)]
pub(crate) struct OutFile {
    file: File,
    /// `None`: stdout
    path: Option<PathBuf>,
    /// A regular file: can be cut back, checked and rotated
    regular: bool,
    /// Opened for reading too (to copy back what went into a deleted file)
    readable: bool,
    /// Create missing directories when (re)opening
    mkdir: bool,
    ident: (u64, u64),
    /// Bytes of whole records in the file
    len: u64,
    /// `len` when the file was last seen at its path
    checked_len: u64,
    /// Records written since then
    records_since_check: u64,
    buf: Vec<u8>,
    /// End offset in `buf` of each record in it
    ends: Vec<u32>,
    cap: usize,
    fault: Option<Fault>,
    /// Offset from which `--rotate-size` counts (moved on after a failed rotation)
    size_base: u64,
    /// Next `PATH.N`, read from the directory at the first rotation
    next_index: Option<u64>,
    /// Last use, for the LRU of open files
    pub(crate) used: u64,
    /// Time of the last write, for closing idle files
    pub(crate) last_write: Instant,
}

/// Open `path` for appending, creating it (and missing directories if
/// `mkdir`); read access too where allowed
fn open_append(path: &Path, mkdir: bool) -> io::Result<(File, bool)> {
    // a FIFO or device is opened write-only as it always was
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let f = OpenOptions::new().append(true).open(path)?;
        return Ok((f, false));
    }
    let try_open = |read: bool| {
        OpenOptions::new()
            .read(read)
            .append(true)
            .create(true)
            .open(path)
    };
    let first = match try_open(true) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && mkdir => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            try_open(true)
        }
        other => other,
    };
    match first {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok((try_open(false)?, false)),
        Err(e) => Err(e),
    }
}

impl OutFile {
    /// Open (create) `path` for appending records, with a buffer of `cap`
    /// bytes; `mkdir`: create missing directories
    pub(crate) fn open(path: &Path, cap: usize, mkdir: bool) -> io::Result<Self> {
        let (file, readable) = open_append(path, mkdir)?;
        let mut f = Self::from_file(file, Some(path.to_path_buf()), readable, cap)?;
        f.mkdir = mkdir;
        Ok(f)
    }

    /// Stdout as an output
    pub(crate) fn stdout(cap: usize) -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Self::from_file(File::from(fd), None, false, cap)
    }

    fn from_file(
        file: File,
        path: Option<PathBuf>,
        readable: bool,
        cap: usize,
    ) -> io::Result<Self> {
        let meta = file.metadata()?;
        let regular = meta.is_file();
        let len = if regular { meta.len() } else { 0 };
        Ok(Self {
            file,
            path,
            regular,
            readable,
            mkdir: false,
            ident: (meta.dev(), meta.ino()),
            len,
            checked_len: len,
            records_since_check: 0,
            buf: Vec::new(),
            ends: Vec::new(),
            cap,
            fault: None,
            size_base: 0,
            next_index: None,
            used: 0,
            last_write: Instant::now(),
        })
    }

    /// The path, or "stdout"
    pub(crate) fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdout".into(), |p| p.display().to_string())
    }

    /// Bytes in the file plus those buffered
    pub(crate) fn logical_len(&self) -> u64 {
        self.len + self.buf.len() as u64
    }

    /// True if this is a regular file at a path (checkable, rotatable)
    pub(crate) fn is_named_file(&self) -> bool {
        self.regular && self.path.is_some()
    }

    /// Modification time of the file
    pub(crate) fn modified(&self) -> Option<std::time::SystemTime> {
        self.file.metadata().and_then(|m| m.modified()).ok()
    }

    /// True if adding `rec_len` bytes would pass `limit` since the last
    /// rotation (never for an empty file: a record bigger than the limit
    /// goes alone into a file)
    pub(crate) fn would_exceed(&self, limit: u64, rec_len: usize) -> bool {
        let used = self.logical_len().saturating_sub(self.size_base);
        used > 0 && used + rec_len as u64 > limit
    }

    /// Buffer one whole record (writing the buffer first if it is full)
    pub(crate) fn push(&mut self, rec: &[u8], env: &mut Env) {
        if env.closed {
            env.stats.records_lost += 1;
            env.stats.bytes_lost += rec.len() as u64;
            return;
        }
        let max_records = (self.cap / 16).max(16);
        if !self.buf.is_empty()
            && (self.buf.len() + rec.len() > self.cap || self.ends.len() >= max_records)
        {
            self.flush(env);
        }
        self.buf.extend_from_slice(rec);
        self.ends.push(self.buf.len() as u32);
    }

    /// Write the buffered records; on a failure cut the file back to the
    /// last whole record and count the rest as lost
    pub(crate) fn flush(&mut self, env: &mut Env) {
        if self.buf.is_empty() {
            return;
        }
        self.last_write = Instant::now();
        let mut written = 0;
        let error = loop {
            match self.file.write(&self.buf[written..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    written += n;
                    if written == self.buf.len() {
                        break None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let records = self.ends.len() as u64;
        match error {
            None => {
                self.len += written as u64;
                self.records_since_check += records;
                if let Some(f) = self.fault.take() {
                    if let Some(n) = env.log.allow() {
                        tracing::info!(
                            output = %self.name(), suppressed = n,
                            "output writable again after {} records ({} bytes) lost in {:.1}s",
                            f.records, f.bytes, f.since.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            Some(e) => self.failed(e, written, env),
        }
        self.buf.clear();
        self.ends.clear();
        if self.buf.capacity() > self.cap + (64 << 10) {
            // an oversize record grew it: give the memory back
            self.buf.shrink_to(self.cap);
        }
    }

    fn failed(&mut self, e: io::Error, written: usize, env: &mut Env) {
        let whole = self.ends.partition_point(|end| *end as usize <= written);
        let keep = whole.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
        if keep < written {
            // a torn record: cut the file back to the last whole one
            let to = self.len + keep as u64;
            let cut = self.regular && self.file.set_len(to).is_ok();
            if cut {
                let _ = self.file.seek(SeekFrom::End(0));
            } else if let Some(n) = env.log.allow() {
                tracing::warn!(
                    output = %self.name(), suppressed = n,
                    "could not cut a partly written record back out of the output"
                );
            }
        }
        self.len += keep as u64;
        self.records_since_check += whole as u64;
        let records = (self.ends.len() - whole) as u64;
        let bytes = (self.buf.len() - keep) as u64;
        env.stats.write_errors += 1;
        env.stats.records_lost += records;
        env.stats.bytes_lost += bytes;
        if e.kind() == io::ErrorKind::BrokenPipe {
            env.closed = true;
            tracing::error!(
                output = %self.name(),
                "output closed by its reader (broken pipe): stopping; {records} records ({bytes} bytes) not written"
            );
            return;
        }
        match &mut self.fault {
            Some(f) => {
                f.records += records;
                f.bytes += bytes;
            }
            None => {
                self.fault = Some(Fault {
                    since: Instant::now(),
                    records,
                    bytes,
                });
                if let Some(n) = env.log.allow() {
                    tracing::warn!(
                        output = %self.name(), suppressed = n,
                        "writing output failed: {e}; {records} records ({bytes} bytes) lost, \
                         and records are dropped (counted) until it is writable again"
                    );
                }
            }
        }
    }

    /// Whether the file is still where it was opened (call after a flush)
    pub(crate) fn check(&mut self) -> Identity {
        let Some(path) = self.path.as_ref().filter(|_| self.regular) else {
            return Identity::Same;
        };
        if self.file.metadata().is_ok_and(|m| m.nlink() == 0) {
            return Identity::Deleted;
        }
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Identity::Missing,
            Ok(m) if (m.dev(), m.ino()) != self.ident => Identity::Replaced,
            _ => {
                self.checked_len = self.len;
                self.records_since_check = 0;
                Identity::Same
            }
        }
    }

    /// Flush, then open the path afresh (creating it); with `copy_back`,
    /// what was written since the file was last seen at its path is copied
    /// from the old file into the new one (a deleted file still holds it)
    ///
    /// Returns the bytes copied.
    pub(crate) fn reopen(&mut self, copy_back: bool, env: &mut Env) -> io::Result<u64> {
        self.flush(env);
        let Some(path) = self.path.clone() else {
            return Ok(0);
        };
        let (mut file, readable) = open_append(&path, self.mkdir)?;
        let start = file.metadata()?.len();
        let (from, to) = (self.checked_len, self.len);
        let mut copied = 0;
        if copy_back && to > from {
            let res = if self.readable {
                copy_range(&self.file, from, to, &mut file)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the old file was not opened for reading",
                ))
            };
            match res {
                Ok(()) => copied = to - from,
                Err(e) => {
                    let _ = file.set_len(start);
                    let _ = file.seek(SeekFrom::End(0));
                    env.stats.records_lost += self.records_since_check;
                    env.stats.bytes_lost += to - from;
                    tracing::warn!(
                        output = %path.display(),
                        "could not copy the last {} records ({} bytes) out of the deleted file: {e}; counted as lost",
                        self.records_since_check, to - from
                    );
                }
            }
        }
        let fresh = Self::from_file(file, Some(path), readable, self.cap)?;
        self.file = fresh.file;
        self.readable = fresh.readable;
        self.regular = fresh.regular;
        self.ident = fresh.ident;
        self.len = fresh.len;
        self.checked_len = fresh.len;
        self.records_since_check = 0;
        self.size_base = 0;
        self.next_index = None;
        Ok(copied)
    }

    /// Rotate: flush, rename the file to `PATH.N` and go on in a new,
    /// empty `PATH` (an empty file is left alone); false if nothing was done
    pub(crate) fn rotate(&mut self, env: &mut Env) -> bool {
        self.flush(env);
        let Some(path) = self.path.clone().filter(|_| self.regular) else {
            return false;
        };
        if self.len == 0 {
            return false;
        }
        let renamed = match self.next_index {
            Some(n) => Ok(n),
            None => next_index(&path),
        }
        .and_then(|mut n| {
            let to = rename_rotated(&path, &mut n);
            self.next_index = Some(n);
            to
        });
        match renamed {
            Ok(to) => {
                let next = self.next_index;
                // the renamed file keeps all that was written
                self.checked_len = self.len;
                self.records_since_check = 0;
                match self.reopen(false, env) {
                    Ok(_) => {
                        self.next_index = next;
                        env.stats.rotations += 1;
                        tracing::debug!(output = %path.display(), to = %to.display(), "rotated");
                        true
                    }
                    Err(e) => {
                        env.stats.rotate_errors += 1;
                        if let Some(n) = env.log.allow() {
                            tracing::warn!(
                                output = %path.display(), suppressed = n,
                                "rotated to {} but could not create a new file: {e}; still writing the old one",
                                to.display()
                            );
                        }
                        self.size_base = self.logical_len();
                        false
                    }
                }
            }
            Err(e) => {
                env.stats.rotate_errors += 1;
                if let Some(n) = env.log.allow() {
                    tracing::warn!(
                        output = %path.display(), suppressed = n,
                        "rotating failed: {e}; writing on in the same file"
                    );
                }
                self.size_base = self.logical_len();
                false
            }
        }
    }
}

/// Copy bytes `from..to` of `src` to the end of `dst`
fn copy_range(src: &File, from: u64, to: u64, dst: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        dst.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mproxy-out-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn test_records_written_whole_and_appended() {
        let d = dir("append");
        let p = d.join("a.log");
        std::fs::write(&p, b"old\n").unwrap();
        let mut env = Env::default();
        let mut f = OutFile::open(&p, 8, false).unwrap();
        for rec in [
            &b"one\n"[..],
            b"two\n",
            b"three\n",
            b"a record longer than the buffer\n",
        ] {
            f.push(rec, &mut env);
        }
        f.flush(&mut env);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"old\none\ntwo\nthree\na record longer than the buffer\n"
        );
        assert_eq!(f.logical_len(), 50);
        assert_eq!(env.stats, OutputStats::default());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_short_write_is_cut_back_to_whole_records() {
        let d = dir("short");
        let p = d.join("a.log");
        let mut env = Env::default();
        let mut f = OutFile::open(&p, 1024, false).unwrap();
        f.push(b"0123456789\n", &mut env);
        f.flush(&mut env);
        f.push(b"abcdefghij\n", &mut env);
        f.push(b"ABCDEFGHIJ\n", &mut env);
        f.push(b"klmnopqrst\n", &mut env);
        // what a write that stopped 17 bytes into the buffer leaves (the
        // real thing on a full tmpfs is in mproxy-e2e/tests/outputs.rs)
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        let part = b"abcdefghij\nABCDE";
        f.file.write_all(part).unwrap();
        f.failed(e, part.len(), &mut env);
        f.buf.clear();
        f.ends.clear();
        assert_eq!(std::fs::read(&p).unwrap(), b"0123456789\nabcdefghij\n");
        assert_eq!((env.stats.records_lost, env.stats.bytes_lost), (2, 22));
        assert_eq!(f.logical_len(), 22);
        // writable again: the next round's records follow the whole ones
        f.push(b"next\n", &mut env);
        f.flush(&mut env);
        assert!(f.fault.is_none());
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"0123456789\nabcdefghij\nnext\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_deleted_file_is_recreated_with_what_it_missed() {
        let d = dir("deleted");
        let p = d.join("a.log");
        let mut env = Env::default();
        let mut f = OutFile::open(&p, 1024, false).unwrap();
        f.push(b"before\n", &mut env);
        f.flush(&mut env);
        assert_eq!(f.check(), Identity::Same);
        f.push(b"after check\n", &mut env);
        f.flush(&mut env);
        std::fs::remove_file(&p).unwrap();
        f.push(b"after delete\n", &mut env);
        f.flush(&mut env);
        assert_eq!(f.check(), Identity::Deleted);
        assert_eq!(f.reopen(true, &mut env).unwrap(), 25);
        f.push(b"new\n", &mut env);
        f.flush(&mut env);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"after check\nafter delete\nnew\n"
        );
        assert_eq!(f.check(), Identity::Same);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_moved_and_replaced_are_told_apart() {
        let d = dir("moved");
        let p = d.join("a.log");
        let mut env = Env::default();
        let mut f = OutFile::open(&p, 1024, false).unwrap();
        f.push(b"x\n", &mut env);
        f.flush(&mut env);
        std::fs::rename(&p, d.join("a.log.old")).unwrap();
        assert_eq!(f.check(), Identity::Missing);
        std::fs::write(&p, b"").unwrap();
        assert_eq!(f.check(), Identity::Replaced);
        assert_eq!(f.reopen(false, &mut env).unwrap(), 0);
        f.push(b"y\n", &mut env);
        f.flush(&mut env);
        assert_eq!(std::fs::read(d.join("a.log.old")).unwrap(), b"x\n");
        assert_eq!(std::fs::read(&p).unwrap(), b"y\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_rotation_keeps_records_whole_and_numbers_files() {
        let d = dir("rotate");
        let p = d.join("r.log");
        let mut env = Env::default();
        let mut f = OutFile::open(&p, 1024, false).unwrap();
        assert!(!f.rotate(&mut env), "an empty file is not rotated");
        for i in 0..10 {
            let rec = format!("record {i}\n");
            if f.would_exceed(20, rec.len()) {
                assert!(f.rotate(&mut env));
            }
            f.push(rec.as_bytes(), &mut env);
        }
        f.flush(&mut env);
        assert_eq!(env.stats.rotations, 4);
        let mut all = Vec::new();
        for n in 1..=4 {
            let part = std::fs::read(d.join(format!("r.log.{n}"))).unwrap();
            assert_eq!(part.len(), 18, "two 9-byte records per file");
            all.extend(part);
        }
        all.extend(std::fs::read(&p).unwrap());
        let want: String = (0..10).map(|i| format!("record {i}\n")).collect();
        assert_eq!(all, want.as_bytes());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_broken_pipe_closes_and_counts() {
        // a socket pair behaves like a pipe here: writing after the reader
        // closed fails with EPIPE
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let w = File::from(std::os::fd::OwnedFd::from(w));
        drop(r);
        let mut env = Env::default();
        let mut f = OutFile::from_file(w, None, false, 64).unwrap();
        f.push(b"a\n", &mut env);
        f.push(b"bc\n", &mut env);
        f.flush(&mut env);
        assert!(env.closed);
        assert_eq!((env.stats.records_lost, env.stats.bytes_lost), (2, 5));
        f.push(b"d\n", &mut env);
        assert_eq!((env.stats.records_lost, env.stats.bytes_lost), (3, 7));
    }
}
