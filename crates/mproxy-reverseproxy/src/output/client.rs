//! One client of a TCP output, as the output's event loop drives it
//!
//! A client is a non-blocking socket, a position in the output's shared
//! [`Log`], and for a `tls://` output a rustls session. Nothing here
//! blocks or sleeps: [`Client::write`] writes what the socket takes and
//! says whether it is caught up, blocked (wait for a writable event) or
//! out of its turn; [`Client::read`] takes what the client sent (a TLS
//! handshake, alerts, a close), discarding any data.
//!
//! Plain clients are written with `writev` straight from the log's
//! chunks. A TLS session is fed at most [`TLS_FEED`] bytes of plaintext
//! at a time, and only once the records of the previous feed have all
//! left, so a blocked TLS client holds at most one feed of records.
//! Whatever rustls has to send (handshake flights, the server's
//! ChangeCipherSpec and Finished of a TLS 1.2 handshake, alerts) is
//! written whenever it has any, whether or not there is data.

use std::fmt;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mproxy_common::stats::LogLimiter;
use rustls::ServerConnection;

use super::log::Log;
use crate::slots::{Class, Standing};
use crate::stats::ClientStats;
use crate::tls;

/// Most bytes a client is written per turn of the loop, so one client
/// with a large backlog cannot hold up the others
pub(crate) const TURN_BYTES: usize = 512 * 1024;
/// Plaintext given to a TLS session at once (records of the previous feed
/// must have left first)
pub(crate) const TLS_FEED: usize = 64 * 1024;
/// Most bytes read from a client per turn (it has nothing to say but a
/// handshake, so more is discarded later)
const READ_BYTES: usize = 64 * 1024;
/// Slices per `writev`
const MAX_IOV: usize = 16;

/// Why a client's connection ended
#[derive(Debug)]
pub(crate) enum End {
    /// The proxy stopped
    Stopped,
    /// The proxy stopped while the client was not taking data
    Stalled,
    /// The client closed or reset the connection
    Gone(io::Error),
    /// Its queue was full (`--slow-client disconnect`)
    Kicked,
    /// Its TLS handshake failed or timed out (the reason, one line)
    Tls(String),
    /// It made room for a newcomer (why it was chosen)
    Evicted(String),
    /// It took no data for `--stall-timeout`
    Silent(Duration),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Stalled => f.write_str("stopped while the client was not reading"),
            Self::Gone(e) => write!(f, "disconnected: {}", tls::explain_io(e)),
            Self::Kicked => f.write_str(
                "disconnected: not keeping up, its queue was full (--slow-client disconnect)",
            ),
            Self::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            Self::Evicted(why) => write!(
                f,
                "closed to make room for a new client (--max-clients/--max-handshakes): {why}"
            ),
            Self::Silent(after) => write!(
                f,
                "closed: took no data for {} s (--stall-timeout)",
                after.as_secs()
            ),
        }
    }
}

/// What a write turn ended with
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Nothing left to write (or a handshake is still running)
    CaughtUp,
    /// The socket is full: wait for it to be writable
    Blocked,
    /// Its turn is over with more to write: come back without waiting
    More,
}

/// One connected client
pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    pub(crate) stats: Arc<ClientStats>,
    tls: Option<Box<ServerConnection>>,
    /// Its next byte in the log
    pos: u64,
    /// The rest of a payload its position jumped past (a skip): written first
    partial: Vec<u8>,
    partial_done: usize,
    /// The socket refused the last write: nothing more until it is writable
    pub(crate) blocked: bool,
    /// A readable event not yet read to `WouldBlock`
    pub(crate) readable: bool,
    /// An error event: look at the socket's error
    pub(crate) errored: bool,
    /// When it half-closed its end (EOF, or a TLS close_notify)
    half_closed: Option<Instant>,
    opened: Instant,
    /// Last time it took a byte or had nothing waiting
    progress: Instant,
    /// "Not keeping up" warnings
    pub(crate) log: LogLimiter,
}

impl Client {
    /// A client starting at log position `pos`, with its TLS session for a
    /// `tls://` output
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<ServerConnection>,
        pos: u64,
        now: Instant,
    ) -> Self {
        Self {
            stream,
            stats: Arc::new(ClientStats::new(peer)),
            tls: tls.map(Box::new),
            pos,
            partial: Vec::new(),
            partial_done: 0,
            blocked: false,
            readable: true,
            errored: false,
            half_closed: None,
            opened: now,
            progress: now,
            log: LogLimiter::default(),
        }
    }

    /// Its position in the log (what the log must keep for it)
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Its TLS handshake is still running
    pub(crate) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// When it connected
    pub(crate) fn opened(&self) -> Instant {
        self.opened
    }

    /// Bytes waiting for it
    pub(crate) fn backlog(&self, log: &Log) -> u64 {
        (self.partial.len() - self.partial_done) as u64 + log.head().saturating_sub(self.pos)
    }

    /// How long it has taken nothing while data waited, if it is stuck
    pub(crate) fn stuck_for(&self, now: Instant) -> Option<Duration> {
        self.blocked
            .then(|| now.saturating_duration_since(self.progress))
    }

    /// Note that nothing waits for it (it is not stuck, whatever it reads)
    pub(crate) fn idle(&mut self, now: Instant) {
        self.progress = now;
    }

    /// Where it stands for the slot policy
    pub(crate) fn standing(&self, log: &Log) -> Standing {
        if self.handshaking() {
            Standing::new(Class::Handshaking, self.opened)
        } else if self.blocked && self.backlog(log) > 0 {
            Standing::new(Class::Stuck, self.progress)
        } else if self.stats.bytes.get() == 0 {
            Standing::new(Class::Unproven, self.opened)
        } else if let Some(at) = self.half_closed {
            Standing::new(Class::HalfClosed, at)
        } else {
            Standing::healthy(self.opened, self.stats.bytes.get())
        }
    }

    /// Whether it is further behind than `queue` bytes allow (by more than
    /// the payload it is in the middle of)
    pub(crate) fn over_queue(&self, log: &Log, queue: usize) -> bool {
        log.skip_target(log.end_of(self.pos), queue).is_some()
    }

    /// Its TLS session has records to write
    pub(crate) fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// If it is more than `queue` bytes behind, move it on to the oldest
    /// payload boundary within `queue` bytes of the newest payload (the
    /// payload it is in the middle of is kept, and finished first);
    /// returns the payloads it skipped
    pub(crate) fn skip(&mut self, log: &Log, queue: usize) -> u64 {
        let from = log.end_of(self.pos);
        let Some(to) = log.skip_target(from, queue) else {
            return 0;
        };
        if from != self.pos {
            // only at a boundary can `partial` still hold something
            self.partial.clear();
            self.partial_done = 0;
            log.copy(self.pos, from, &mut self.partial);
            self.partial.shrink_to(self.partial.len());
        }
        self.pos = to;
        log.seq_at(to) - log.seq_at(from)
    }

    /// Payloads it has not received, counted when it leaves
    pub(crate) fn unwritten(&self, log: &Log) -> u64 {
        let partial = u64::from(self.partial_done < self.partial.len());
        partial + log.seq_head().saturating_sub(log.seq_at(self.pos))
    }

    /// `n` more bytes were written (or given to the TLS session): count the
    /// payloads they complete and move on
    fn advance(&mut self, log: &Log, mut n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        self.progress = now;
        self.stats.bytes.add(n as u64);
        let rest = self.partial.len() - self.partial_done;
        if rest > 0 {
            let take = n.min(rest);
            self.partial_done += take;
            n -= take;
            if self.partial_done == self.partial.len() {
                self.stats.datagrams.inc();
                self.partial = Vec::new();
                self.partial_done = 0;
            }
        }
        let to = self.pos + n as u64;
        self.stats
            .datagrams
            .add(log.seq_at(to) - log.seq_at(self.pos));
        self.pos = to;
    }

    /// What to write next, into `iov`: the rest of `partial`, then the log
    /// from `pos`; at most `max` bytes. The number of slices and of bytes
    fn gather<'a>(&'a self, log: &'a Log, max: usize, iov: &mut [IoSlice<'a>]) -> (usize, usize) {
        let rest = &self.partial[self.partial_done..];
        if rest.is_empty() {
            return log.slices(self.pos, max, iov);
        }
        let take = rest.len().min(max);
        iov[0] = IoSlice::new(&rest[..take]);
        let (n, more) = log.slices(self.pos, max - take, &mut iov[1..]);
        (n + 1, take + more)
    }

    /// Write what waits for it, up to [`TURN_BYTES`], until the socket is
    /// full; TLS records (handshake included) first
    ///
    /// # Errors
    /// The connection failed (written to after a reset, a TLS error).
    pub(crate) fn write(&mut self, log: &Log, now: Instant) -> Result<Flow, End> {
        if self.tls.is_some() {
            return self.write_tls(log, now);
        }
        let mut sent = 0;
        loop {
            let written = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let (n, want) = self.gather(log, TURN_BYTES - sent, &mut iov);
                if want == 0 {
                    self.progress = now;
                    return Ok(if sent < TURN_BYTES {
                        Flow::CaughtUp
                    } else {
                        Flow::More
                    });
                }
                (&self.stream).write_vectored(&iov[..n])
            };
            match written {
                Ok(0) => return Err(End::Gone(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.advance(log, n, now);
                    sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(Flow::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Gone(e)),
            }
        }
    }

    /// [`Client::write`] for a TLS client
    fn write_tls(&mut self, log: &Log, now: Instant) -> Result<Flow, End> {
        let mut fed = 0;
        loop {
            if flush_records(&mut self.tls, &self.stream)? {
                self.blocked = true;
                return Ok(Flow::Blocked);
            }
            if self.tls.as_ref().is_none_or(|c| c.is_handshaking()) {
                return Ok(Flow::CaughtUp);
            }
            if fed >= TURN_BYTES {
                return Ok(Flow::More);
            }
            // the session apart from the rest of `self`, for the feed
            let Some(mut conn) = self.tls.take() else {
                return Ok(Flow::CaughtUp);
            };
            let given = self.feed(&mut conn, log);
            self.tls = Some(conn);
            let n = given?;
            if n == 0 {
                self.progress = now;
                return Ok(Flow::CaughtUp);
            }
            self.advance(log, n, now);
            fed += n;
        }
    }

    /// Give the session up to [`TLS_FEED`] bytes of what waits; how many it took
    fn feed(&self, conn: &mut ServerConnection, log: &Log) -> Result<usize, End> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let (n, _) = self.gather(log, TLS_FEED, &mut iov);
        let mut given = 0;
        for s in &iov[..n] {
            let took = conn.writer().write(s).map_err(End::Gone)?;
            given += took;
            if took < s.len() {
                break; // its buffer is full: the records must leave first
            }
        }
        Ok(given)
    }

    /// Read what the client sent: for a TLS client, its handshake and
    /// alerts (whatever rustls answers is written by the next
    /// [`Client::write`]); data is discarded. At most [`READ_BYTES`] per
    /// turn (`readable` stays set if more may wait)
    ///
    /// # Errors
    /// A reset, a TLS error, or a close during the TLS handshake.
    pub(crate) fn read(&mut self, scratch: &mut [u8], now: Instant) -> Result<(), End> {
        let mut total = 0;
        while total < READ_BYTES {
            let Some(conn) = self.tls.as_deref_mut() else {
                match (&self.stream).read(scratch) {
                    Ok(0) => return self.eof(now),
                    Ok(n) => total += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(End::Gone(e)),
                }
                continue;
            };
            let n = match conn.read_tls(&mut &self.stream) {
                Ok(0) if conn.is_handshaking() => {
                    return Err(End::Tls(
                        "the client closed the connection during the handshake".into(),
                    ))
                }
                Ok(0) => return self.eof(now),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(End::Gone(e)),
            };
            total += n;
            let state = match conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // the alert tells the client why (best effort)
                    let _ = conn.write_tls(&mut &self.stream);
                    return Err(End::Tls(tls::explain(&e)));
                }
            };
            let closed = state.peer_has_closed();
            // drain the plaintext, so rustls never refuses more records
            while let Ok(n) = conn.reader().read(scratch) {
                if n == 0 {
                    break;
                }
            }
            if closed {
                return self.eof(now);
            }
        }
        self.readable = total >= READ_BYTES;
        Ok(())
    }

    /// The client half-closed: it may still read (`ncat < /dev/null` does),
    /// so it stays until a write fails, it stalls or it is evicted
    fn eof(&mut self, now: Instant) -> Result<(), End> {
        self.readable = false;
        if self.half_closed.is_none() {
            self.half_closed = Some(now);
            tracing::debug!(client = %self.stats.peer, "half-closed");
        }
        Ok(())
    }

    /// The socket's pending error, after an error event
    pub(crate) fn check_error(&mut self) -> Result<(), End> {
        self.errored = false;
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(End::Gone(e)),
            Ok(None) => Ok(()),
        }
    }

    /// An orderly end for a TLS client: close_notify (best effort)
    pub(crate) fn close_notify(&mut self) {
        if let Some(conn) = self.tls.as_deref_mut() {
            conn.send_close_notify();
            let _ = flush_records(&mut self.tls, &self.stream);
        }
    }
}

/// Write the records a TLS session holds until it holds none (false) or
/// the socket is full (true)
fn flush_records(tls: &mut Option<Box<ServerConnection>>, stream: &TcpStream) -> Result<bool, End> {
    let Some(conn) = tls.as_deref_mut() else {
        return Ok(false);
    };
    while conn.wants_write() {
        match conn.write_tls(&mut &*stream) {
            Ok(0) => return Err(End::Gone(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Gone(e)),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_end_messages() {
        assert!(End::Kicked.to_string().contains("--slow-client disconnect"));
        let e = End::Tls("not finished after 10 s (--tls-handshake-timeout)".into());
        assert!(e
            .to_string()
            .starts_with("TLS handshake failed: not finished"));
        let e = End::Silent(Duration::from_secs(60));
        assert!(e.to_string().contains("60 s (--stall-timeout)"), "{e}");
        assert!(!End::Evicted("x".into()).to_string().contains(" connected"));
    }
}
