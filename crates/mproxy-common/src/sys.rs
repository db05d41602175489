//! Process limits: the open-descriptor limit (RLIMIT_NOFILE)
//!
//! A receiver that writes one file per stream needs a descriptor per open
//! output besides its sockets. The common default soft limit (1024) is far
//! below the hard limit most systems allow (systemd: 524288), so a binary
//! raises the soft limit to the hard one at start and sizes its tables by
//! what it got.

use std::io;

/// The descriptor limit after [`raise_nofile_limit`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit now in force: descriptors numbered below it can be opened
    pub soft: u64,
    /// Hard limit (the most the soft limit can be raised to)
    pub hard: u64,
    /// The soft limit before, if it was raised
    pub raised_from: Option<u64>,
}

/// Highest soft limit asked for: beyond this nothing in mproxy needs more,
/// and a huge limit only makes descriptor tables larger
const MAX_WANTED: u64 = 1 << 20;

/// Read RLIMIT_NOFILE and raise the soft limit to the hard one (at most
/// 2^20)
///
/// A soft limit that cannot be raised (a container that forbids it) is
/// kept and reported as is.
///
/// # Errors
/// Only if the limit cannot be read at all.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft = lim.rlim_cur;
    let hard = lim.rlim_max;
    let wanted = hard.min(MAX_WANTED);
    if wanted <= soft {
        return Ok(NofileLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    let new = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: hard,
    };
    // SAFETY: new is a valid rlimit; only the soft limit changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        Ok(NofileLimit {
            soft: wanted,
            hard,
            raised_from: Some(soft),
        })
    } else {
        Ok(NofileLimit {
            soft,
            hard,
            raised_from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_raise_reaches_hard_or_cap() {
        let lim = raise_nofile_limit().unwrap();
        assert!(lim.soft <= lim.hard);
        assert!(lim.soft == lim.hard.min(MAX_WANTED) || lim.raised_from.is_none());
        // a second call finds nothing left to raise
        let again = raise_nofile_limit().unwrap();
        assert_eq!(again.soft, lim.soft);
        assert_eq!(again.raised_from, None);
    }
}
