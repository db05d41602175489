//! Where received data goes: stdout, one file, or one file per stream,
//! sender or time period (a `--path` template), written in whole records
//!
//! - [`file`]: one output, its record-whole writes, fault rule, deletion
//!   check and rotation
//! - [`pool`]: the files of a template, opened lazily, an LRU bound
//! - [`template`]: placeholders and UTC time formatting
//! - [`rotate`]: `--rotate-size` / `--rotate-interval`

mod budget;
mod file;
mod pool;
mod rotate;
mod template;

pub(crate) use budget::Budget;
pub(crate) use rotate::{parse_interval, RotatePolicy};
pub(crate) use template::{Template, Usage};

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use mproxy_common::mpx::StreamKey;

use file::{Env, OutFile};
use pool::Pool;
use template::Context;

/// Buffer of a single output (stdout or one file)
const OUT_BUF: usize = 1 << 20;
/// Buffer of each file of a per-stream or per-sender template
const STREAM_BUF: usize = 64 << 10;
/// Most files a template keeps open at once, whatever the descriptor limit
pub(crate) const MAX_OPEN_FILES: usize = 1024;
/// Descriptors kept free for sockets, the poller, stdio and the like
const FD_RESERVE: u64 = 64;
/// Fewest files a per-stream template must be able to keep open
const MIN_OPEN_FILES: usize = 16;
/// How often outputs are checked (deleted, moved, stdout closed, idle, rotation)
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Counters of the outputs
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// Write calls that failed (each fault costs at least one)
    pub write_errors: u64,
    /// Whole records that could not be written (dropped, never written late)
    pub records_lost: u64,
    /// Their bytes
    pub bytes_lost: u64,
    /// Outputs found deleted, moved or replaced and recreated
    pub recreated: u64,
    /// Outputs reopened on SIGHUP
    pub reopened: u64,
    /// Files rotated (`--rotate-size`, `--rotate-interval`)
    pub rotations: u64,
    /// Rotations that failed (writing went on in the same file)
    pub rotate_errors: u64,
    /// Files opened (first time or again after being closed)
    pub files_opened: u64,
    /// Files closed to stay within the open-file bound
    pub files_evicted: u64,
    /// Files closed after being idle
    pub files_idle_closed: u64,
}

/// What `--path`, `--tee` and their companions ask for
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputConfig {
    /// Output file or template, '-' for stdout
    pub(crate) path: Option<PathBuf>,
    /// Copy to stdout too
    pub(crate) tee: bool,
    /// Built-in rotation
    pub(crate) rotate: RotatePolicy,
    /// `--record-prefix` template
    pub(crate) prefix: Option<String>,
    /// Most files open at once (from the descriptor limit)
    pub(crate) max_open: usize,
}

enum Target {
    Discard,
    Stdout(OutFile),
    Files(Pool),
}

/// All outputs of a server
pub(crate) struct Sink {
    target: Target,
    tee: Option<BufWriter<io::Stdout>>,
    prefix: Option<Template>,
    /// Sender of each live mpx stream, if a template needs it
    sources: HashMap<StreamKey, SocketAddr>,
    track_sources: bool,
    rec: Vec<u8>,
    text: String,
    env: Env,
    next_check: Instant,
    wall: SystemTime,
}

/// True if `path` has placeholders that give each stream or sender its own file
pub(crate) fn is_template(path: &Path) -> bool {
    Template::parse(&path.to_string_lossy(), Usage::Path)
        .is_ok_and(|t| t.uses_stream() || t.uses_source())
}

/// Check a `--path` template now, so a typo is a start-up error; the
/// directory before the first placeholder is created now (and those the
/// placeholders name as files are opened), and must be a directory
fn check_template(pattern: &str) -> anyhow::Result<Template> {
    let t = Template::parse(pattern, Usage::Path)
        .map_err(|e| anyhow::anyhow!("--path {pattern}: {e}"))?;
    if t.is_fixed() {
        return Ok(t);
    }
    let fixed = t.fixed_prefix().to_string();
    let dir = match fixed.rfind('/') {
        Some(0) => Path::new("/"),
        Some(i) => Path::new(&fixed[..i]),
        None => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(t),
        Ok(_) => bail!("--path {pattern}: {} is not a directory", dir.display()),
        Err(_) => std::fs::create_dir_all(dir)
            .map(|()| t)
            .with_context(|| format!("--path {pattern}: creating directory {}", dir.display())),
    }
}

/// Raise the descriptor limit and size the open-file bound by it
///
/// # Errors
/// A per-stream template with a limit too low for [`MIN_OPEN_FILES`] files.
pub(crate) fn open_file_bound(
    per_stream: bool,
    max_streams: usize,
    sockets: usize,
) -> anyhow::Result<usize> {
    let lim = match mproxy_common::sys::raise_nofile_limit() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit ({e}); at most {MIN_OPEN_FILES} output files open at once");
            return Ok(MIN_OPEN_FILES);
        }
    };
    if let Some(from) = lim.raised_from {
        tracing::debug!(
            from,
            to = lim.soft,
            "descriptor limit raised to the hard limit"
        );
    }
    let spare = lim.soft.saturating_sub(FD_RESERVE + sockets as u64);
    let bound = usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .min(MAX_OPEN_FILES);
    if !per_stream {
        return Ok(bound.max(1));
    }
    if bound < MIN_OPEN_FILES {
        bail!(
            "descriptor limit {} (hard {}) leaves room for {bound} output files, fewer than the {MIN_OPEN_FILES} a per-stream --path needs: raise it (ulimit -n, systemd LimitNOFILE=)",
            lim.soft, lim.hard
        );
    }
    if bound < max_streams.min(MAX_OPEN_FILES) {
        tracing::warn!(
            "descriptor limit {} (hard {}): at most {bound} output files open at once for --max-streams {max_streams}; \
             quieter streams' files are closed and reopened as needed",
            lim.soft, lim.hard
        );
    }
    Ok(bound)
}

/// True if the reader of stdout went away (a pipe or socket whose other
/// end is closed); never for files and terminals
fn stdout_hung_up() -> bool {
    mproxy_common::io::hung_up(1)
}

impl Sink {
    /// Open the outputs `cfg` names (checked now, so a bad path is a
    /// start-up error naming it)
    pub(crate) fn open(cfg: &OutputConfig) -> anyhow::Result<Self> {
        let mut env = Env::default();
        let prefix = cfg
            .prefix
            .as_deref()
            .map(|p| {
                Template::parse(p, Usage::Prefix)
                    .map_err(|e| anyhow::anyhow!("--record-prefix {p}: {e}"))
            })
            .transpose()?;
        let mut track_sources = prefix.as_ref().is_some_and(Template::uses_source);
        let target = match cfg.path.as_deref() {
            None => Target::Discard,
            Some(p) if p.as_os_str() == "-" => {
                Target::Stdout(OutFile::stdout(OUT_BUF).context("--path -: stdout")?)
            }
            Some(p) => {
                let text = p.to_string_lossy().into_owned();
                let t = check_template(&text)?;
                track_sources |= t.uses_source();
                let per_file = t.uses_stream() || t.uses_source();
                let cap = if per_file { STREAM_BUF } else { OUT_BUF };
                let mut pool = Pool::new(
                    t.clone(),
                    cfg.rotate,
                    cap,
                    if per_file { cfg.max_open } else { 1 },
                );
                if !per_file {
                    // one file: open it now, so an unwritable path is a start-up error
                    let ctx = Context {
                        key: None,
                        source: None,
                        now: SystemTime::now(),
                    };
                    pool.open_now(&ctx, &mut env)
                        .with_context(|| format!("--path {text}"))?;
                }
                Target::Files(pool)
            }
        };
        Ok(Self {
            target,
            tee: cfg
                .tee
                .then(|| BufWriter::with_capacity(OUT_BUF, io::stdout())),
            prefix,
            sources: HashMap::new(),
            track_sources,
            rec: Vec::new(),
            text: String::new(),
            env,
            next_check: Instant::now() + CHECK_EVERY,
            wall: SystemTime::now(),
        })
    }

    /// A new mpx stream from `from` (remembered if a template names the sender)
    pub(crate) fn open_stream(&mut self, key: StreamKey, from: SocketAddr) {
        if self.track_sources {
            self.sources.insert(key, from);
        }
    }

    /// Write one raw datagram from `from`
    pub(crate) fn write_raw(&mut self, from: SocketAddr, data: &[u8]) {
        self.write(None, Some(from), data);
    }

    /// Write one in-order payload of stream `key`
    pub(crate) fn write_stream(&mut self, key: StreamKey, data: &[u8]) {
        let from = self.sources.get(&key).copied();
        self.write(Some(key), from, data);
    }

    fn write(&mut self, key: Option<StreamKey>, source: Option<SocketAddr>, data: &[u8]) {
        let now = if self.prefix.is_some() {
            SystemTime::now()
        } else {
            self.wall
        };
        let ctx = Context { key, source, now };
        let rec: &[u8] = match &self.prefix {
            None => data,
            Some(p) => {
                self.text.clear();
                p.render(&ctx, &mut self.text);
                self.rec.clear();
                for line in data.split_inclusive(|b| *b == b'\n') {
                    self.rec.extend_from_slice(self.text.as_bytes());
                    self.rec.extend_from_slice(line);
                }
                if !data.ends_with(b"\n") {
                    self.rec.push(b'\n');
                }
                &self.rec
            }
        };
        match &mut self.target {
            Target::Discard => {}
            Target::Stdout(f) => f.push(rec, &mut self.env),
            Target::Files(pool) => pool.write(&ctx, rec, &mut self.env),
        }
        if let Some(t) = self.tee.as_mut() {
            if let Err(e) = t.write_all(rec) {
                tracing::warn!("--tee: stdout failed ({e}); no longer copying");
                self.tee = None;
            }
        }
    }

    /// A stream ended: flush and close its own file
    pub(crate) fn close_stream(&mut self, key: StreamKey) {
        let source = self.sources.remove(&key);
        if let Target::Files(pool) = &mut self.target {
            let route = pool.route(Some(key), source);
            pool.close_route(route, &mut self.env);
        }
    }

    /// Write everything buffered
    pub(crate) fn flush(&mut self) {
        match &mut self.target {
            Target::Discard => {}
            Target::Stdout(f) => f.flush(&mut self.env),
            Target::Files(pool) => pool.flush(&mut self.env),
        }
        if let Some(t) = self.tee.as_mut() {
            if t.flush().is_err() {
                tracing::warn!("--tee: stdout failed; no longer copying");
                self.tee = None;
            }
        }
    }

    /// Periodic work, at most once a second: outputs deleted or moved,
    /// rotation, idle files, a closed stdout
    pub(crate) fn tick(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + CHECK_EVERY;
        self.wall = SystemTime::now();
        match &mut self.target {
            Target::Discard => {}
            Target::Stdout(f) => {
                f.flush(&mut self.env);
                if !self.env.closed && !f.is_named_file() && stdout_hung_up() {
                    self.env.closed = true;
                    tracing::error!("stdout closed by its reader: stopping");
                }
            }
            Target::Files(pool) => {
                pool.tick(now, self.wall, &mut self.env);
            }
        }
        if self.tee.is_some() && stdout_hung_up() {
            tracing::warn!("--tee: stdout closed by its reader; no longer copying");
            self.tee = None;
        }
    }

    /// SIGHUP: reopen every output at its path; returns how many
    pub(crate) fn reopen(&mut self) -> usize {
        match &mut self.target {
            Target::Files(pool) => pool.reopen_all(&mut self.env),
            Target::Stdout(f) => {
                f.flush(&mut self.env);
                0
            }
            Target::Discard => 0,
        }
    }

    /// Flush and close every output (end of the run)
    pub(crate) fn finish(&mut self) {
        self.flush();
        if let Target::Files(pool) = &mut self.target {
            pool.close_all(&mut self.env);
        }
    }

    /// True once the output's reader went away: the run should stop
    pub(crate) fn is_closed(&self) -> bool {
        self.env.closed
    }

    /// Counters so far
    pub(crate) fn stats(&self) -> OutputStats {
        self.env.stats
    }

    /// Files open now and the bound (0, 0 without a template)
    pub(crate) fn open_files(&self) -> (usize, usize) {
        match &self.target {
            Target::Files(p) => (p.open_files(), p.max_open()),
            _ => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mproxy-sink-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn key(session: u64, stream: u32) -> StreamKey {
        StreamKey { session, stream }
    }

    fn sink(path: &Path, prefix: Option<&str>, max_open: usize) -> Sink {
        Sink::open(&OutputConfig {
            path: Some(path.to_path_buf()),
            prefix: prefix.map(str::to_string),
            max_open,
            ..OutputConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn test_template_checks() {
        let dir = dir("checks");
        let d = dir.display();
        assert!(check_template(&format!("{d}/{{session}}-{{stream}}.log")).is_ok());
        assert!(check_template(&format!("{d}/{{session}}/{{stream}}.log")).is_ok());
        assert!(check_template("{session}-{stream}.log").is_ok());
        let e = check_template(&format!("{d}/{{sesion}}-{{stream}}.log"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown placeholder '{sesion}'"), "{e}");
        assert!(check_template(&format!("{d}/new/{{stream}}.log")).is_ok());
        assert!(dir.join("new").is_dir());
        assert!(check_template(&format!("{d}/days/%Y/{{date}}.log")).is_ok());
        assert!(dir.join("days").is_dir());
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_template(&format!("{}/{{stream}}.log", file.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = check_template(&format!("{}/sub/{{stream}}.log", file.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("creating directory"), "{e}");
        assert!(is_template(Path::new("x/{source}.log")));
        assert!(!is_template(Path::new("x/{date}.log")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_files_only_for_streams_with_data_and_bounded() {
        let d = dir("lazy");
        let mut s = sink(&d.join("{session}-{stream}.log"), None, 4);
        let from = "192.0.2.1:5000".parse().unwrap();
        for i in 0..10u64 {
            s.open_stream(key(i, 1), from);
        }
        // ten streams with data, interleaved, through at most four open files
        for round in 0..3 {
            for i in 0..10u64 {
                s.write_stream(key(i, 1), format!("{i}:{round}\n").as_bytes());
                assert!(s.open_files().0 <= 4);
            }
        }
        s.open_stream(key(99, 1), from);
        s.close_stream(key(99, 1));
        s.finish();
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 10, "{names:?}");
        for i in 0..10u64 {
            let text = std::fs::read_to_string(d.join(format!("{i:016x}-1.log"))).unwrap();
            assert_eq!(text, format!("{i}:0\n{i}:1\n{i}:2\n"));
        }
        let st = s.stats();
        assert!(
            st.files_evicted > 0 && st.records_lost == 0 && st.write_errors == 0,
            "{st:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_prefix_per_line_and_source_paths() {
        let d = dir("prefix");
        let mut s = sink(&d.join("{source}.log"), Some("{source}:{port} "), 8);
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::2]:6000".parse().unwrap();
        s.write_raw(a, b"one\ntwo\n");
        s.write_raw(b, b"three");
        s.open_stream(key(1, 1), a);
        s.write_stream(key(1, 1), b"four\n");
        s.finish();
        assert_eq!(
            std::fs::read_to_string(d.join("192.0.2.1.log")).unwrap(),
            "192.0.2.1:5000 one\n192.0.2.1:5000 two\n192.0.2.1:5000 four\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("2001:db8::2.log")).unwrap(),
            "2001:db8::2:6000 three\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_device_that_is_full_counts_every_record() {
        let mut s = sink(Path::new("/dev/full"), None, 1);
        s.write_raw("192.0.2.1:5000".parse().unwrap(), b"abc\n");
        s.write_raw("192.0.2.1:5000".parse().unwrap(), b"de\n");
        s.flush();
        s.write_raw("192.0.2.1:5000".parse().unwrap(), b"f\n");
        s.flush();
        let st = s.stats();
        assert_eq!((st.records_lost, st.bytes_lost, st.write_errors), (3, 9, 2));
        assert!(!s.is_closed());
    }
}
