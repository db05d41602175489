//! What every component thread shares: a readiness wait that wakes at
//! least every [`TICK`] to look at the shutdown flag

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// Longest a thread sleeps before looking at the shutdown flag again
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Watch `fd` for readability (edge-triggered: drain to `WouldBlock`)
pub(crate) fn register(poll: &Poll, fd: RawFd, token: Token) -> io::Result<()> {
    poll.registry()
        .register(&mut SourceFd(&fd), token, Interest::READABLE)
}

/// Watch `fd` for readability and writability (edge-triggered): a TLS
/// connection may have records to write while the peer is not sending
pub(crate) fn register_rw(poll: &Poll, fd: RawFd, token: Token) -> io::Result<()> {
    poll.registry().register(
        &mut SourceFd(&fd),
        token,
        Interest::READABLE | Interest::WRITABLE,
    )
}

/// How long to wait for a timer due at `deadline`: at most [`TICK`], zero
/// if it is already due, [`TICK`] if there is none
pub(crate) fn timeout_until(deadline: Option<Instant>) -> Duration {
    deadline.map_or(TICK, |at| {
        at.saturating_duration_since(Instant::now()).min(TICK)
    })
}

/// Wait at most `timeout` for events; a signal counts as a wake-up without events
pub(crate) fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(e),
    }
}
