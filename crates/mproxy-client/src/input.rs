//! The client's input: a file, a device, a FIFO or stdin

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use crate::Error;

/// An open input
#[derive(Debug)]
pub(crate) enum Input {
    Stdin,
    File(File),
}

impl Input {
    /// Open `path` ('-' for stdin)
    pub(crate) fn open(path: &str) -> Result<Self, Error> {
        if path == "-" {
            return Ok(Self::Stdin);
        }
        let bad = |reason: String| Error::Input {
            path: path.to_string(),
            reason,
        };
        let file = File::open(Path::new(path)).map_err(|e| bad(e.to_string()))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(bad("is a directory".into()));
        }
        Ok(Self::File(file))
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Self::Stdin => io::stdin().as_raw_fd(),
            Self::File(f) => f.as_raw_fd(),
        }
    }

    /// True for a regular file: always readable, not pollable
    pub(crate) fn is_regular(&self) -> bool {
        let meta = match self {
            Self::Stdin => io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| File::from(fd).metadata()),
            Self::File(f) => f.metadata(),
        };
        meta.map(|m| m.file_type().is_file()).unwrap_or(false)
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Stdin => io::stdin().lock().read(buf),
            Self::File(f) => f.read(buf),
        }
    }
}
