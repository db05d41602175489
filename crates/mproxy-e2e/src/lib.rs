//! Helpers for the end-to-end tests in `tests/`: spawn the real binaries
//! and wait for them, always inside the caller's private network namespace
//! (see [`mproxy_testsupport::in_netns`]).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mproxy_testsupport::{bin, spawn, wait_until, ChildGuard};

/// How long any single wait in these tests may take
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Start a workspace binary with `args`; stdout discarded
pub fn start(name: &str, args: &[&str]) -> ChildGuard {
    spawn(Command::new(bin(name)).args(args).stdout(Stdio::null()))
}

/// Start `mproxy-server` and wait until its UDP ports are bound
pub fn start_server(args: &[&str], ports: &[u16]) -> ChildGuard {
    // Count first: another receiver may already hold a shared group port.
    let before: Vec<usize> = ports
        .iter()
        .map(|p| mproxy_testsupport::udp_bound_count(*p))
        .collect();
    let guard = start("mproxy-server", args);
    for (p, n) in ports.iter().zip(before) {
        mproxy_testsupport::wait_for_udp_bound_more(*p, n, TIMEOUT);
    }
    guard
}

/// Run a workspace binary to completion (bounded), returning its output
pub fn run(name: &str, args: &[&str]) -> Output {
    run_cmd(Command::new(bin(name)).args(args))
}

/// Run any command to completion with a bound on its run time
pub fn run_cmd(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{:?} did not finish in {TIMEOUT:?}; stderr: {}",
                cmd.get_program(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run a workspace binary and assert it exits 0
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Wait until `path` holds at least `len` bytes or `timeout` passes;
/// false on timeout (the caller then reports what the processes said)
pub fn reached_len(path: &Path, len: u64, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::fs::metadata(path)
            .map(|m| m.len() >= len)
            .unwrap_or(false)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Wait until `path` holds at least `len` bytes
pub fn wait_for_len(path: &Path, len: u64) {
    wait_until(
        TIMEOUT,
        &format!("{} to reach {len} bytes", path.display()),
        || {
            std::fs::metadata(path)
                .map(|m| m.len() >= len)
                .unwrap_or(false)
        },
    );
}

/// SIGINT a child, require exit 0 within the timeout, return its stderr
pub fn stop(mut child: ChildGuard) -> String {
    child.interrupt();
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGINT: {}", child.stderr_text()));
    let text = child.stderr_text();
    assert!(status.success(), "exit {status} after SIGINT: {text}");
    text
}

/// Wait (bounded by [`TIMEOUT`]) for a child to exit by itself; its exit
/// code (`None`: killed by a signal) and its stderr
pub fn wait_exit(mut child: ChildGuard) -> (Option<i32>, String) {
    let status = child
        .wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("no exit within {TIMEOUT:?}: {}", child.stderr_text()));
    (status.code(), child.stderr_text())
}

/// Wait (bounded) for an already spawned child and collect its output
pub fn run_cmd_wait(mut child: std::process::Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("child did not finish in {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}
