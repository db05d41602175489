//! System-call plumbing shared by the socket modules: the EINTR/errno
//! pattern in one place, and raw socket options

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

use super::NetError;

/// Return values of libc calls that signal failure with `-1` and `errno`
pub(crate) trait MinusOne: Copy {
    /// True for the failure value
    fn is_minus_one(self) -> bool;
}

impl MinusOne for libc::c_int {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl MinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// Run a system call until it is not interrupted: its result, or the OS
/// error (`errno`) when it returned `-1`
///
/// The closure holds the `unsafe` call and its SAFETY argument, so every
/// call site documents its own pointers; this helper only owns the retry
/// on `EINTR` and the `-1` → [`io::Error::last_os_error`] conversion that
/// every raw call here needs.
pub(crate) fn syscall<T: MinusOne>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let rc = call();
        if !rc.is_minus_one() {
            return Ok(rc);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A non-negative byte count returned by a successful system call
pub(crate) fn to_len(rc: isize) -> usize {
    usize::try_from(rc).unwrap_or(0)
}

/// An all-zero `mmsghdr` (its `msg_hdr` a zero `msghdr`), ready to have
/// its pointers set
pub(crate) fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a C struct of integers and raw pointers, for all
    // of which zero (null) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// setsockopt(2) with a value of type `T`, passed by pointer and size
pub(crate) fn setsockopt<T>(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    syscall(|| {
        // SAFETY: `value` is a live, initialized T for the whole call and
        // `len` is its exact size; the kernel only reads it. The descriptor
        // is borrowed from an open socket.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(value).cast(),
                len,
            )
        }
    })
    .map(drop)
}

/// setsockopt(2) with an `int` value
pub(crate) fn set_int_opt(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt(sock, level, name, &value)
}

/// getsockopt(2) of an `int` value
pub(crate) fn get_int_opt(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(0);
    syscall(|| {
        // SAFETY: `value` is a writable int and `len` its size; the kernel
        // writes at most `len` bytes and stores how many it wrote. The
        // descriptor is borrowed from an open socket.
        unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                level,
                name,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        }
    })?;
    Ok(value)
}

/// Map an OS error of step `what` on `addr` to a [`NetError`]
pub(crate) fn ctx(what: &'static str, addr: impl ToString) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Io {
        what,
        addr: addr.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_syscall_retries_eintr_and_reports_errno() {
        let mut calls = 0;
        let rc = syscall(|| {
            calls += 1;
            if calls < 3 {
                // what a libc wrapper leaves behind on EINTR
                set_errno(libc::EINTR);
                -1
            } else {
                7
            }
        });
        assert_eq!(rc.ok(), Some(7));
        assert_eq!(calls, 3);
        let err = syscall(|| {
            set_errno(libc::EBADF);
            -1isize
        });
        assert_eq!(err.err().and_then(|e| e.raw_os_error()), Some(libc::EBADF));
    }

    fn set_errno(v: libc::c_int) {
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for writes for the thread's lifetime.
        unsafe { *libc::__errno_location() = v };
    }

    #[test]
    fn test_to_len() {
        assert_eq!(to_len(5), 5);
        assert_eq!(to_len(-1), 0);
    }
}
