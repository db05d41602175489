//! The client's one event loop: input, sockets and timers over a
//! [`SenderSession`]
//!
//! mio waits on the input (when it is pollable), on every sending socket
//! (receivers' NACK, WINDOW and FEEDBACK frames arrive there) and on a
//! waker that signals ring; the session's `poll_timeout` bounds the wait.
//! Nothing sleeps: pacing, pokes, heartbeats and the linger are timers of
//! the session, and a full socket is waited for with WRITABLE interest.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use mproxy_common::cli::Shutdown;
use mproxy_common::io::{wait_readable, Tee};
use mproxy_common::mpx::{PathCause, SenderSession, SessionEvent};
use mproxy_common::net::recv_nonblocking;
use mproxy_common::stats::human_bytes;

use crate::input::Input;
use crate::out::{path_state_text, Out, Sent};
use crate::{Error, Summary};

const WAKE: Token = Token(0);
const INPUT: Token = Token(1);
/// Token of sending socket `i` is `SOCKET_BASE + i`
const SOCKET_BASE: usize = 2;
/// Most datagrams read from one socket per turn, so a flooded socket
/// cannot starve the input, the other sockets or the timers
const RECV_BUDGET: usize = 256;
/// After ENOBUFS (a full device queue, which no readiness event reports),
/// try the path again this much later
const BUSY_RETRY: Duration = Duration::from_micros(200);
/// Input read per call at most
const READ_CHUNK: usize = 64 * 1024;

/// Everything the loop owns besides the session
pub(crate) struct Driver<'a> {
    pub(crate) input: Input,
    pub(crate) path: String,
    pub(crate) out: Out,
    pub(crate) tee: Tee,
    pub(crate) stats_interval: Option<Duration>,
    pub(crate) shutdown: &'a Shutdown,
}

/// State of one sending socket in the loop
struct SockState {
    /// The path its datagrams belong to
    path: usize,
    /// More may be queued than the last turn's budget read
    pending: bool,
    /// Waiting for WRITABLE (the socket was full)
    want_write: bool,
}

impl Driver<'_> {
    /// Run until the session is done (end of input and nothing owed, or a
    /// shutdown request)
    pub(crate) fn run(
        mut self,
        mut session: SenderSession,
        start: Instant,
    ) -> Result<Summary, Error> {
        let poll_err = |what| move |source| Error::Poll { what, source };
        let mut poll = Poll::new().map_err(poll_err("creating the poller"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKE).map_err(poll_err("creating the waker"))?);
        self.shutdown.add_waker(&waker);
        let fd = self.input.fd();
        // regular files cannot be polled (epoll says EPERM): always readable
        let pollable = !self.input.is_regular()
            && poll
                .registry()
                .register(&mut SourceFd(&fd), INPUT, Interest::READABLE)
                .is_ok();
        let mut socks: Vec<SockState> = Vec::new();
        for (i, (sock, path)) in self.out.sockets().into_iter().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&sock.as_raw_fd()),
                    Token(SOCKET_BASE + i),
                    Interest::READABLE,
                )
                .map_err(poll_err("registering a socket"))?;
            socks.push(SockState {
                path,
                pending: false,
                want_write: false,
            });
        }
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut rbuf = vec![0u8; 65_536];
        let mut input_ready = true;
        let mut eof = false;
        let mut interrupted = false;
        let mut busy_until: Option<(Instant, usize)> = None;
        let mut next_stats = self.stats_interval.map(|d| start + d);
        loop {
            let now = Instant::now();
            if self.shutdown.is_set() && !interrupted {
                interrupted = true;
                session.shutdown(now);
            }
            let periodic = next_stats.is_some_and(|t| now >= t);
            if periodic || self.shutdown.take_stats_request() {
                if let (Some(t), Some(every)) = (next_stats, self.stats_interval) {
                    if periodic {
                        next_stats = Some(t + every);
                    }
                }
                let st = session.stats();
                tracing::info!(
                    "{:.1}s, {}: {}",
                    now.saturating_duration_since(start).as_secs_f64(),
                    human_bytes(st.bytes_in),
                    self.out.summary(&session)
                );
            }
            // a reopen request has nothing to reopen here; it logged above
            let _ = self.shutdown.take_reopen_request();
            if let Some((at, path)) = busy_until {
                if now >= at {
                    session.on_path_writable(path);
                    busy_until = None;
                }
            }
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
            // input: one read per turn, no more than the session takes
            if !eof && input_ready && !interrupted {
                let want = session.writable(now).min(buf.len());
                if want > 0 {
                    let readable = !pollable
                        || wait_readable(fd, Duration::ZERO).map_err(|source| Error::Read {
                            path: self.path.clone(),
                            source,
                        })?;
                    if readable {
                        match self.input.read(&mut buf[..want]) {
                            Ok(0) => {
                                eof = true;
                                session.finish(now);
                            }
                            Ok(n) => {
                                self.tee.write(&buf[..n]);
                                session.push(now, &buf[..n]);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => input_ready = false,
                            Err(source) => {
                                return Err(Error::Read {
                                    path: self.path.clone(),
                                    source,
                                })
                            }
                        }
                    } else {
                        // wait for the next readiness edge
                        input_ready = false;
                    }
                }
            }
            // what may go now
            while let Some(sent) = session.poll_transmit(now).map(|t| self.out.send(&t)) {
                match sent {
                    Sent::Done => {}
                    Sent::Failed { path, unsent } => session.on_path_failure(now, path, unsent),
                    Sent::Blocked { path, unsent } => {
                        session.on_path_blocked(path, unsent);
                        if let Some((i, s)) =
                            socks.iter_mut().enumerate().find(|(_, s)| s.path == path)
                        {
                            s.want_write = true;
                            self.reregister(&poll, i, true)?;
                        }
                    }
                    Sent::Busy { path, unsent } => {
                        session.on_path_blocked(path, unsent);
                        busy_until = Some((now + BUSY_RETRY, path));
                    }
                }
            }
            while let Some(ev) = session.poll_event() {
                self.log_event(ev);
            }
            if session.is_done() {
                break;
            }
            // how long to wait
            let mut deadline = session.poll_timeout();
            for t in [next_stats, busy_until.map(|(t, _)| t)]
                .into_iter()
                .flatten()
            {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
            let reading = !eof && input_ready && !interrupted && session.writable(now) > 0;
            let timeout = if reading || socks.iter().any(|s| s.pending) {
                Some(Duration::ZERO)
            } else {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::Poll {
                        what: "waiting for events",
                        source: e,
                    });
                }
            }
            for ev in &events {
                match ev.token() {
                    INPUT => input_ready = true,
                    WAKE => {}
                    Token(t) if t >= SOCKET_BASE => {
                        let i = t - SOCKET_BASE;
                        if let Some(s) = socks.get_mut(i) {
                            if ev.is_readable() {
                                s.pending = true;
                            }
                            if ev.is_writable() && s.want_write {
                                s.want_write = false;
                                let path = s.path;
                                session.on_path_writable(path);
                                self.reregister(&poll, i, false)?;
                            }
                        }
                    }
                    Token(_) => {}
                }
            }
            // receivers' control frames
            let now = Instant::now();
            for (i, s) in socks.iter_mut().enumerate() {
                if !s.pending {
                    continue;
                }
                let sock = match self.out.sockets().get(i) {
                    Some((sock, _)) => *sock,
                    None => continue,
                };
                s.pending = false;
                for _ in 0..RECV_BUDGET {
                    match recv(sock, &mut rbuf) {
                        Ok(Some((n, from))) => {
                            session.handle_datagram(now, s.path, from, &rbuf[..n]);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("receive on a sending socket: {e}");
                            break;
                        }
                    }
                    s.pending = true;
                }
                // a full budget: maybe more next turn (the edge was consumed)
            }
        }
        let st = session.stats();
        let end = session.end_time().unwrap_or_else(Instant::now);
        Ok(Summary {
            bytes_read: st.bytes_in,
            datagrams: st.datagrams,
            split_lines: st.split_lines,
            send_errors: self.out.send_errors(),
            destinations: self.out.summary(&session),
            session: session.session_id(),
            mpx: st.sender,
            flow: st.flow,
            flow_wait: st.flow_wait,
            fec: st.fec,
            elapsed: end.saturating_duration_since(start),
            interrupted,
            delivery: session
                .session_id()
                .map(|_| session.delivery(Instant::now())),
            delivered_any: self.out.delivered_any() || st.datagrams == 0,
        })
    }

    fn reregister(&self, poll: &Poll, i: usize, write: bool) -> Result<(), Error> {
        let Some((sock, _)) = self.out.sockets().get(i).copied() else {
            return Ok(());
        };
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(
                &mut SourceFd(&sock.as_raw_fd()),
                Token(SOCKET_BASE + i),
                interest,
            )
            .map_err(|source| Error::Poll {
                what: "re-registering a socket",
                source,
            })
    }

    fn log_event(&self, ev: SessionEvent) {
        match ev {
            SessionEvent::Joined(r) => {
                if r.joined_seq == 0 {
                    tracing::info!(receiver = %r.addr, id = format_args!("{:016x}", r.id), "receiver joined");
                } else {
                    tracing::info!(
                        receiver = %r.addr,
                        id = format_args!("{:016x}", r.id),
                        frame = r.joined_seq,
                        byte = ?r.joined_offset,
                        "receiver joined mid-stream"
                    );
                }
            }
            SessionEvent::GivenUp(r) => tracing::warn!(
                receiver = %r.addr,
                id = format_args!("{:016x}", r.id),
                "receiver silent for {:.1} s, no longer waited for; it confirmed up to {}",
                r.silent_for.as_secs_f64(),
                match r.confirmed_offset {
                    Some(b) => format!("byte {b} (frame {})", r.confirmed_seq),
                    None => format!("frame {}", r.confirmed_seq),
                }
            ),
            SessionEvent::Cut { receiver, lag } => tracing::warn!(
                receiver = %receiver.addr,
                lag,
                "receiver lags more than --max-lag frames, cut off at frame {}",
                receiver.confirmed_seq
            ),
            SessionEvent::Reinjected { path, frames } => tracing::warn!(
                path = %self.out.path_spec(path),
                frames,
                "frames in flight on the dead path re-sent on the others"
            ),
            SessionEvent::Path { path, state, cause } => {
                let spec = self.out.path_spec(path);
                match cause {
                    PathCause::LocalFailure => tracing::warn!(
                        path = %spec,
                        "path is now {} (local send failure)",
                        path_state_text(state)
                    ),
                    PathCause::Feedback => {
                        tracing::warn!(path = %spec, "path is now {}", path_state_text(state));
                    }
                }
            }
            _ => {}
        }
    }
}

/// One datagram from a non-blocking read of `sock`; `None` when empty
fn recv(
    sock: &std::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<Option<(usize, std::net::SocketAddr)>> {
    loop {
        match recv_nonblocking(sock, buf) {
            Ok(got) => return Ok(Some(got)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // ICMP errors of earlier sends surface here (port unreachable):
            // not an end of the socket, just nothing to read
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        }
    }
}
