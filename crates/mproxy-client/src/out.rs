//! Where the session's datagrams go: every destination (fan-out) or one
//! socket per path (stripe, redundant)

use std::io;
use std::net::{SocketAddr, UdpSocket};

use mproxy_common::mpx::{Dest, Outgoing, PathState, SenderSession};
use mproxy_common::net::bind_sender;
use mproxy_common::stats::LogLimiter;
use mproxy_common::{Endpoint, Fanout, PathSpec, SocketOptions};

use crate::Error;

/// One path of a multipath stream: its own socket, so feedback tells
/// which path it is about
#[derive(Debug)]
pub(crate) struct PathSock {
    pub(crate) spec: String,
    addr: SocketAddr,
    pub(crate) sock: UdpSocket,
    send_errors: u64,
    /// Datagrams the kernel took
    sent: u64,
    /// Redundant copies not sent because the path's socket was full
    busy_drops: u64,
    log: LogLimiter,
}

/// The sending side of the sockets
#[derive(Debug)]
pub(crate) enum Out {
    /// No destination (`--tee` only)
    None,
    /// Every destination gets every datagram
    Fanout(Fanout),
    /// One socket per path
    Paths(Vec<PathSock>),
}

/// What happened to an [`Outgoing`] batch
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Handed to the kernel (or counted as failed)
    Done,
    /// The path failed locally (network down, no route): the last
    /// `unsent` datagrams did not go
    Failed { path: usize, unsent: usize },
    /// The path's socket is full: wait until it is writable
    Blocked { path: usize, unsent: usize },
    /// The device queue is full (ENOBUFS): try again shortly
    Busy { path: usize, unsent: usize },
}

impl Out {
    /// Fan-out to `servers`
    pub(crate) fn fanout(servers: &[PathSpec], opts: &SocketOptions) -> Result<Self, Error> {
        if servers.is_empty() {
            return Ok(Self::None);
        }
        let endpoints: Vec<Endpoint> = servers.iter().map(|p| p.endpoint.clone()).collect();
        Fanout::new(&endpoints, opts)
            .map(Self::Fanout)
            .map_err(|e| Error::Destination {
                spec: servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: format!("{e:#}"),
            })
    }

    /// One socket per path of `servers`
    pub(crate) fn paths(servers: &[PathSpec], opts: &SocketOptions) -> Result<Self, Error> {
        let mut paths = Vec::with_capacity(servers.len());
        for spec in servers {
            let bad = |reason: String| Error::Destination {
                spec: spec.to_string(),
                reason,
            };
            let addr = spec.endpoint.resolve().map_err(|e| bad(e.to_string()))?;
            let sock = bind_sender(addr.is_ipv6(), opts).map_err(|e| bad(format!("{e:#}")))?;
            sock.set_nonblocking(true)
                .map_err(|e| bad(format!("socket: {e}")))?;
            paths.push(PathSock {
                spec: spec.to_string(),
                addr,
                sock,
                send_errors: 0,
                sent: 0,
                busy_drops: 0,
                log: LogLimiter::default(),
            });
        }
        Ok(Self::Paths(paths))
    }

    /// The sockets receivers answer on, each with the path it belongs to
    pub(crate) fn sockets(&self) -> Vec<(&UdpSocket, usize)> {
        match self {
            Self::None => Vec::new(),
            Self::Fanout(f) => f.sockets().map(|s| (s, 0)).collect(),
            Self::Paths(p) => p.iter().enumerate().map(|(i, p)| (&p.sock, i)).collect(),
        }
    }

    /// Send one batch
    pub(crate) fn send(&mut self, t: &Outgoing<'_>) -> Sent {
        match (self, t.dest) {
            (Self::None, _) => Sent::Done,
            (Self::Fanout(f), _) => {
                f.send_many(&t.frames);
                Sent::Done
            }
            (Self::Paths(paths), Dest::Path(i)) => match paths.get_mut(i) {
                Some(p) => p.send(i, &t.frames, false),
                None => Sent::Done,
            },
            (Self::Paths(paths), Dest::Paths(mask)) => {
                let mut result = Sent::Done;
                for (i, p) in paths.iter_mut().enumerate().take(64) {
                    if mask & (1 << i) != 0 {
                        if let Sent::Failed { path, .. } = p.send(i, &t.frames, true) {
                            result = Sent::Failed { path, unsent: 0 };
                        }
                    }
                }
                result
            }
            (Self::Paths(paths), Dest::All) => {
                for (i, p) in paths.iter_mut().enumerate() {
                    let _ = p.send(i, &t.frames, true);
                }
                Sent::Done
            }
        }
    }

    /// Whether the kernel took any datagram for any destination (true
    /// without destinations: there was nothing to send to)
    pub(crate) fn delivered_any(&self) -> bool {
        match self {
            Self::None => true,
            Self::Fanout(f) => f
                .stats()
                .any(|(_, _, st)| st.datagrams.load(std::sync::atomic::Ordering::Relaxed) > 0),
            Self::Paths(p) => p.iter().any(|p| p.sent > 0),
        }
    }

    /// Failed sends over all destinations
    pub(crate) fn send_errors(&self) -> u64 {
        match self {
            Self::None => 0,
            Self::Fanout(f) => f.total_errors(),
            Self::Paths(p) => p.iter().map(|p| p.send_errors).sum(),
        }
    }

    /// One line per destination or path
    pub(crate) fn summary(&self, session: &SenderSession) -> String {
        match self {
            Self::None => String::new(),
            Self::Fanout(f) => f.summary(),
            Self::Paths(paths) => paths
                .iter()
                .zip(session.path_stats())
                .enumerate()
                .map(|(i, (p, (st, state)))| {
                    let busy = if p.busy_drops > 0 {
                        format!(", {} copies skipped (path busy)", p.busy_drops)
                    } else {
                        String::new()
                    };
                    format!(
                        "path {i} {}: {state:?}, {st}, {} send errors{busy}",
                        p.spec, p.send_errors
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// The spec of path `i` (for log lines)
    pub(crate) fn path_spec(&self, i: usize) -> &str {
        match self {
            Self::Paths(p) => p.get(i).map_or("?", |p| p.spec.as_str()),
            _ => "-",
        }
    }
}

impl PathSock {
    /// Send `frames` on this path; `copy`: these are redundant copies, so
    /// a full socket skips them rather than waiting
    fn send(&mut self, i: usize, frames: &[&[u8]], copy: bool) -> Sent {
        for (k, f) in frames.iter().enumerate() {
            let unsent = frames.len() - k;
            loop {
                match self.sock.send_to(f, self.addr) {
                    Ok(_) => {
                        self.sent += 1;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if copy {
                            self.busy_drops += unsent as u64;
                            return Sent::Done;
                        }
                        return Sent::Blocked { path: i, unsent };
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if copy {
                            self.busy_drops += unsent as u64;
                            return Sent::Done;
                        }
                        return Sent::Busy { path: i, unsent };
                    }
                    Err(e) => {
                        self.send_errors += 1;
                        if let Some(n) = self.log.allow() {
                            tracing::warn!(path = %self.spec, suppressed = n, "send failed: {e}");
                        }
                        if is_local_failure(&e) {
                            // the rest is not tried on a path that is down
                            return Sent::Failed { path: i, unsent };
                        }
                        break;
                    }
                }
            }
        }
        Sent::Done
    }
}

/// Errors that mean "this path cannot reach anything right now"
fn is_local_failure(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETDOWN | libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL)
    )
}

/// The log line for a path state change
pub(crate) fn path_state_text(state: PathState) -> &'static str {
    match state {
        PathState::Up => "Up",
        PathState::Dead => "Dead",
    }
}
