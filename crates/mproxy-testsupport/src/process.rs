//! Workspace binaries and child-process guards.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::data::unique_temp_path;

/// Path of the workspace binary `name` (e.g. `"mproxy-client"`) built in the
/// same target profile directory as the running test (or example) executable.
///
/// A test executable lives at `<target>/<profile>/deps/<test>-<hash>`, so
/// the binary is expected at `<target>/<profile>/<name>`. Panics if it does
/// not exist.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe failed: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("test executable {} has no parent", exe.display()))
        .to_path_buf();
    // tests live in <profile>/deps, examples in <profile>/examples
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary {name} not found at {}: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A running child process that is killed and reaped when dropped.
///
/// Its stderr goes to a temporary file (see [`ChildGuard::stderr_text`]);
/// if the guard is dropped while the thread panics, that text is printed so
/// failing tests show what the child said.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    program: String,
    stderr_path: PathBuf,
}

/// Spawns `cmd` with stdin from `/dev/null` and stderr captured to a
/// temporary file; stdout is left as configured on `cmd`.
pub fn spawn(cmd: &mut Command) -> ChildGuard {
    cmd.stdin(Stdio::null());
    spawn_with_stdin(cmd)
}

/// Like [`spawn`], but leaves stdin as configured on `cmd` (for instance
/// `Stdio::piped()`; take it with `guard.child_mut().stdin.take()`).
pub fn spawn_with_stdin(cmd: &mut Command) -> ChildGuard {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let stderr_path = unique_temp_path("stderr");
    let file = File::create(&stderr_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));
    cmd.stderr(file);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&stderr_path);
            panic!("cannot spawn {cmd:?}: {e}");
        }
    };
    ChildGuard {
        child,
        program,
        stderr_path,
    }
}

impl ChildGuard {
    /// Process id of the child.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The wrapped [`Child`] (for its stdin/stdout pipes, `try_wait`, ...).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends SIGINT to the child if it is still running.
    pub fn interrupt(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// Sends SIGTERM to the child if it is still running.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&mut self, sig: libc::c_int) {
        // Only while it has not been reaped, so the pid cannot be reused.
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: plain syscall; the pid is our unreaped child.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// Waits at most `timeout` for the child to exit (polling every 10 ms);
    /// `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(e) => panic!("waiting for {} failed: {e}", self.program),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (SIGKILL) if still running and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {} failed: {e}", self.program))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of {} (pid {}) ---\n{}--- end of stderr ---",
                self.program,
                self.child.id(),
                self.stderr_text()
            );
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}
