//! Signals and shutdown requests that wake event loops
//!
//! [`Shutdown`] is a shared handle: SIGINT and SIGTERM request shutdown,
//! SIGUSR1 asks for the counters, SIGHUP asks to reopen outputs (and log
//! the counters). A run loop registers a [`mio::Waker`] with
//! [`Shutdown::add_waker`] and is woken at once by any of them, so no loop
//! polls a flag on a timer. Signals are taken by one small thread per
//! process (signal-hook's iterator), which sets the flags and wakes every
//! registered loop; [`Shutdown::trigger`] does the same from library code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Shared shutdown / stats / reopen requests; clones share the state
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    shutdown: AtomicBool,
    stats: AtomicBool,
    reopen: AtomicBool,
    wakers: Mutex<Vec<Weak<mio::Waker>>>,
}

impl Shutdown {
    /// Requests that only the methods of this handle set (library use, tests)
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests set by signals: SIGINT and SIGTERM (shutdown), SIGUSR1
    /// (counters), SIGHUP (reopen outputs, and counters)
    ///
    /// # Errors
    /// If the handlers or their thread cannot be set up.
    pub fn install() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let s = Self::new();
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP])?;
        let handle = s.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    match sig {
                        SIGUSR1 => handle.request_stats(),
                        SIGHUP => handle.request_reopen(),
                        _ => handle.trigger(),
                    }
                }
            })?;
        Ok(s)
    }

    /// True once shutdown was requested
    pub fn is_set(&self) -> bool {
        self.0.shutdown.load(Ordering::Relaxed)
    }

    /// Request shutdown (and wake the loops)
    pub fn trigger(&self) {
        self.0.shutdown.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Ask the loops to log their counters
    pub fn request_stats(&self) {
        self.0.stats.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Ask the loops to reopen their outputs (and log their counters)
    pub fn request_reopen(&self) {
        self.0.reopen.store(true, Ordering::Relaxed);
        self.0.stats.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// True (once) if the counters were asked for since the last call
    pub fn take_stats_request(&self) -> bool {
        self.0.stats.swap(false, Ordering::Relaxed)
    }

    /// True (once) if reopening was asked for since the last call
    pub fn take_reopen_request(&self) -> bool {
        self.0.reopen.swap(false, Ordering::Relaxed)
    }

    /// Wake `waker` on every request from now on (as long as it lives)
    pub fn add_waker(&self, waker: &Arc<mio::Waker>) {
        if let Ok(mut w) = self.0.wakers.lock() {
            w.retain(|w| w.strong_count() > 0);
            w.push(Arc::downgrade(waker));
        }
    }

    fn wake(&self) {
        if let Ok(w) = self.0.wakers.lock() {
            for waker in w.iter().filter_map(Weak::upgrade) {
                // a failed wake only delays the loop until its next event
                let _ = waker.wake();
            }
        }
    }
}

/// Set by SIGUSR1: "log your counters now" (for loops that poll a flag;
/// event loops use [`Shutdown::take_stats_request`])
#[derive(Debug, Clone)]
pub struct StatsSignal(Arc<AtomicBool>);

impl StatsSignal {
    /// Register the SIGUSR1 handler; `None` if that fails (stats then
    /// only come at `--stats-interval` and exit)
    pub fn install() -> Option<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&flag))
            .ok()
            .map(|_| Self(flag))
    }

    /// True (once) if SIGUSR1 arrived since the last call
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Set by SIGHUP: "reopen your outputs" (what logrotate sends after
/// renaming a log), instead of the default action of dying
#[derive(Debug, Clone)]
pub struct ReopenSignal(Arc<AtomicBool>);

impl ReopenSignal {
    /// Register the SIGHUP handler; `None` if that fails (SIGHUP then
    /// keeps its default action)
    pub fn install() -> Option<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&flag))
            .ok()
            .map(|_| Self(flag))
    }

    /// True (once) if SIGHUP arrived since the last call
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_trigger_wakes_a_poll() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        let s = Shutdown::new();
        s.add_waker(&waker);
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.request_reopen());
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        t.join().unwrap();
        assert!(events.iter().any(|e| e.token() == mio::Token(7)));
        assert!(s.take_reopen_request() && s.take_stats_request());
        assert!(!s.take_reopen_request() && !s.is_set());
        s.trigger();
        assert!(s.is_set());
    }
}
