//! Small blocking-I/O helpers shared by the binaries

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[cfg(feature = "cli")]
use crate::cli::Shutdown;

/// Wait until `fd` is readable or `timeout` passes; true if readable
///
/// Regular files are always readable. Used so a blocking read of stdin or a
/// device can still notice a shutdown request.
///
/// # Errors
/// The OS error from poll(2), other than EINTR (reported as not readable).
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: pfd is a valid pollfd array of length 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(rc > 0)
}

/// True if the other end of `fd` went away (a pipe or socket whose reader
/// closed it: POLLERR or POLLHUP); never blocks, false for files and
/// terminals and on any error
pub fn hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd array of length 1; timeout 0 never blocks.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Sleep for `d`, waking early if shutdown is requested; false if it was
#[cfg(feature = "cli")]
pub fn sleep_unless(shutdown: &Shutdown, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if shutdown.is_set() {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !shutdown.is_set()
}

/// Copy of the data stream to stdout (`--tee`)
///
/// Each payload is written whole under the stdout lock, so threads never
/// interleave mid-datagram. If stdout goes away (a closed pipe) the tee
/// turns itself off with one warning instead of killing the process.
#[derive(Debug)]
pub struct Tee {
    on: AtomicBool,
}

impl Tee {
    /// An enabled or disabled tee
    pub fn new(enabled: bool) -> Self {
        Self {
            on: AtomicBool::new(enabled),
        }
    }

    /// True while copying
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Write one payload to stdout
    pub fn write(&self, data: &[u8]) {
        if !self.enabled() {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
            self.on.store(false, Ordering::Relaxed);
            tracing::warn!("--tee: stdout failed ({e}); no longer copying to stdout");
        }
    }
}
