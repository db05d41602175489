//! External peers for interoperability tests, and visible skips.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{enter_netns_fd, find_on_path, outer_netns_fd};

/// Version of the published `mproxy-client` / `mproxy-server` crates that
/// [`mproxy_peer`] installs.
pub const MPROXY_PEER_VERSION: &str = "0.1.8";

/// Default install root of [`mproxy_peer`] (outside the repository).
const DEFAULT_PEERS_DIR: &str = "/tmp/mproxy-peers";

/// How long [`mproxy_peer`] waits for another process's install to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Path of `socat` if it is on `PATH`.
pub fn socat() -> Option<PathBuf> {
    find_on_path("socat")
}

/// Prints `SKIPPED: <test name>: <reason>` to stderr, so that a test which
/// cannot run here is visibly skipped rather than silently passing.
///
/// It writes to the process's stderr directly, past the test harness's
/// output capture, so the line shows up in a plain `cargo test` run.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed test>");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {name}: {reason}");
}

/// Path of the published crates.io binary `name` (`"mproxy-client"` or
/// `"mproxy-server"`) at version [`MPROXY_PEER_VERSION`], installed under
/// `$MPROXY_PEERS_DIR` (default `/tmp/mproxy-peers`) as `<dir>/bin/<name>`.
///
/// If it is not there yet it is installed with
/// `cargo install --root <dir> <name>@0.1.8`, under an exclusive lock on
/// `<dir>/.lock` so concurrent tests do not race. The install runs in the
/// network namespace the thread had before [`crate::in_netns`], so this may
/// be called inside it. Returns `Err(reason)` when the binary cannot be had
/// (the caller should [`skip`] with that reason).
pub fn mproxy_peer(name: &str) -> Result<PathBuf, String> {
    if name != "mproxy-client" && name != "mproxy-server" {
        return Err(format!(
            "unknown mproxy peer {name:?} (expected mproxy-client or mproxy-server)"
        ));
    }
    let dir = std::env::var_os("MPROXY_PEERS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PEERS_DIR), PathBuf::from);
    let bin = dir.join("bin").join(name);
    if installed(&dir, &bin, name) {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock_exclusive(&lock, &lock_path)?;
    // Someone else may have installed it while we waited.
    if installed(&dir, &bin, name) {
        return Ok(bin);
    }
    let result = install(&dir, name);
    drop(lock); // closing the file releases the lock
    result?;
    if installed(&dir, &bin, name) {
        Ok(bin)
    } else {
        Err(format!(
            "`cargo install` succeeded but {} is missing",
            bin.display()
        ))
    }
}

/// Whether `bin` exists and cargo's install record says it is `name` at
/// [`MPROXY_PEER_VERSION`].
fn installed(dir: &Path, bin: &Path, name: &str) -> bool {
    if !bin.is_file() {
        return false;
    }
    let record = std::fs::read_to_string(dir.join(".crates.toml")).unwrap_or_default();
    record.contains(&format!("\"{name} {MPROXY_PEER_VERSION} "))
}

fn lock_exclusive(lock: &File, path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.raw_os_error() != Some(libc::EINTR)
        {
            return Err(format!("cannot lock {}: {err}", path.display()));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {LOCK_TIMEOUT:?} waiting for the lock {}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `cargo install --root <dir> <name>@<version>` in the thread's outer
/// network namespace (the one it had before `in_netns`), if any.
fn install(dir: &Path, name: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("install")
        .arg("--root")
        .arg(dir)
        .arg(format!("{name}@{MPROXY_PEER_VERSION}"))
        // Never build in (and lock) the workspace's target dir: cargo
        // install then uses a temporary one of its own.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null());
    let outer = outer_netns_fd();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(fd) = outer {
                enter_netns_fd(fd)
                    .map_err(|e| format!("cannot enter the outer network namespace: {e}"))?;
            }
            cmd.output()
                .map_err(|e| format!("cannot run {cargo:?} install: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("install thread panicked".to_owned()))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "`cargo install --root {} {name}@{MPROXY_PEER_VERSION}` failed ({}):\n{}",
            dir.display(),
            out.status,
            tail.join("\n")
        ))
    }
}
