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

/// Check a `--path` template now, so a typo is a start-up error: only
/// `{session}` and `{stream}` are placeholders; the directory before the
/// first one is created now (and directories the placeholders name as
/// streams arrive), and must be a directory
fn check_template(pattern: &str) -> anyhow::Result<()> {
    let mut rest = pattern;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        let known = ["{session}", "{stream}"]
            .into_iter()
            .find(|k| tail.starts_with(k));
        match known {
            Some(k) => rest = &tail[k.len()..],
            None => {
                let shown: String = tail.chars().take_while(|c| *c != '}').collect();
                anyhow::bail!(
                    "--path {pattern}: unknown placeholder '{shown}}}' (the placeholders are {{session}} and {{stream}})"
                );
            }
        }
    }
    let fixed = &pattern[..pattern.find('{').unwrap_or(pattern.len())];
    let dir = match fixed.rfind('/') {
        Some(0) => Path::new("/"),
        Some(i) => Path::new(&fixed[..i]),
        None => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("--path {pattern}: {} is not a directory", dir.display()),
        Err(_) => std::fs::create_dir_all(dir)
            .with_context(|| format!("--path {pattern}: creating directory {}", dir.display())),
    }
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
                let pattern = p.to_string_lossy().into_owned();
                check_template(&pattern)?;
                Kind::Template {
                    pattern,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_template_checks() {
        let dir = std::env::temp_dir().join(format!("mproxy-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
