//! Where received data goes: one file (or stdout), or one file per stream

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use mproxy_common::mpx::StreamKey;
use mproxy_common::stats::LogLimiter;

const OUT_BUF: usize = 1 << 20;
const STREAM_BUF: usize = 64 << 10;

/// True if `path` is a per-stream template
pub(crate) fn is_template(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.contains("{session}") || s.contains("{stream}")
}

/// The file name of stream `key` (`None`: raw datagrams)
pub(crate) fn expand(pattern: &str, key: Option<StreamKey>) -> PathBuf {
    let (session, stream) = match key {
        Some(k) => (format!("{:016x}", k.session), k.stream.to_string()),
        None => ("raw".to_string(), "0".to_string()),
    };
    PathBuf::from(
        pattern
            .replace("{session}", &session)
            .replace("{stream}", &stream),
    )
}

enum Kind {
    Discard,
    Single(Box<dyn Write>),
    Template {
        pattern: String,
        files: HashMap<Option<StreamKey>, BufWriter<File>>,
    },
}

pub(crate) struct Sink {
    kind: Kind,
    tee: Option<BufWriter<io::Stdout>>,
    pub(crate) write_errors: u64,
    pub(crate) bytes_lost: u64,
    log: LogLimiter,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    /// Open the output named by `--path` (checked now, so a bad path is a
    /// start-up error naming it)
    pub(crate) fn open(path: Option<&Path>, tee: bool) -> anyhow::Result<Self> {
        let kind = match path {
            None => Kind::Discard,
            Some(p) if p.as_os_str() == "-" => {
                Kind::Single(Box::new(BufWriter::with_capacity(OUT_BUF, io::stdout())))
            }
            Some(p) if is_template(p) => {
                // check that files can be created where the template points
                let probe = expand(&p.to_string_lossy(), None);
                if let Some(dir) = probe.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("--path {}: creating {}", p.display(), dir.display())
                    })?;
                }
                Kind::Template {
                    pattern: p.to_string_lossy().into_owned(),
                    files: HashMap::new(),
                }
            }
            Some(p) => Kind::Single(Box::new(BufWriter::with_capacity(
                OUT_BUF,
                open_append(p).with_context(|| format!("--path {}", p.display()))?,
            ))),
        };
        Ok(Self {
            kind,
            tee: tee.then(|| BufWriter::with_capacity(OUT_BUF, io::stdout())),
            write_errors: 0,
            bytes_lost: 0,
            log: LogLimiter::default(),
        })
    }

    /// Write one whole message of stream `key` (`None`: raw)
    pub(crate) fn write(&mut self, key: Option<StreamKey>, data: &[u8]) {
        let res = match &mut self.kind {
            Kind::Discard => Ok(()),
            Kind::Single(w) => w.write_all(data),
            Kind::Template { pattern, files } => {
                let w = match files.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let path = expand(pattern, key);
                        let opened = path
                            .parent()
                            .filter(|d| !d.as_os_str().is_empty())
                            .map_or(Ok(()), std::fs::create_dir_all)
                            .and_then(|()| open_append(&path));
                        match opened {
                            Ok(f) => {
                                tracing::info!(path = %path.display(), "writing stream");
                                Ok(v.insert(BufWriter::with_capacity(STREAM_BUF, f)))
                            }
                            Err(e) => Err(io::Error::new(
                                e.kind(),
                                format!("opening {}: {e}", path.display()),
                            )),
                        }
                    }
                };
                w.and_then(|w| w.write_all(data))
            }
        };
        if let Err(e) = res {
            self.write_errors += 1;
            self.bytes_lost += data.len() as u64;
            if let Some(n) = self.log.allow() {
                tracing::warn!(suppressed = n, "writing output failed: {e}");
            }
        }
        if let Some(t) = self.tee.as_mut() {
            if let Err(e) = t.write_all(data) {
                tracing::warn!("--tee: stdout failed ({e}); no longer copying");
                self.tee = None;
            }
        }
    }

    /// A stream ended: flush and close its file
    pub(crate) fn close_stream(&mut self, key: StreamKey) {
        if let Kind::Template { files, .. } = &mut self.kind {
            if let Some(mut w) = files.remove(&Some(key)) {
                if let Err(e) = w.flush() {
                    self.write_errors += 1;
                    tracing::warn!(stream = %key, "flushing stream file failed: {e}");
                }
            }
        }
    }

    /// Push buffered output to the files
    pub(crate) fn flush(&mut self) {
        let res = match &mut self.kind {
            Kind::Discard => Ok(()),
            Kind::Single(w) => w.flush(),
            Kind::Template { files, .. } => files.values_mut().try_for_each(|w| w.flush()),
        };
        if let Err(e) = res {
            self.write_errors += 1;
            if let Some(n) = self.log.allow() {
                tracing::warn!(suppressed = n, "flushing output failed: {e}");
            }
        }
        if let Some(t) = self.tee.as_mut() {
            if t.flush().is_err() {
                self.tee = None;
            }
        }
    }
}
