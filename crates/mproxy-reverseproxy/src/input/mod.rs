//! Inputs: UDP sockets and TCP listeners whose data goes to the group
//!
//! With `--mpx` every TCP connection, and the raw datagrams of every UDP
//! listener, is one mpx stream of this process's [`Session`]: its bytes go
//! out as sequenced frames, an idle stream sends a heartbeat every second,
//! and a connection that ends sends FIN and then its closing heartbeats
//! (about 150 ms, at most [`CLOSING_LIMIT`]) although the socket is gone.
//!
//! A `tls://` TCP input drives each connection's rustls session in the
//! same non-blocking poll loop (read records, decrypt, write handshake
//! records when the socket takes them): a slow or silent handshake never
//! blocks the other connections, and one not finished after
//! `--tls-handshake-timeout` is closed and counted.
//!
//! [`udp`] holds the UDP inputs, [`tcp`] the TCP (and TLS) inputs: one
//! thread and one event loop per listener, whatever the number of
//! connections. What they share is here: the sending socket on the group
//! and the mpx session whose stream ids they lease.

mod tcp;
mod udp;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mproxy_common::io::Tee;
use mproxy_common::mpx::{new_session_id, Encoder};
use mproxy_common::net::DatagramBatch;
use mproxy_common::wire::{Frame, FrameType, HEADER_LEN};
use mproxy_common::Fanout;

use crate::config::Config;
use crate::error::Error;

pub(crate) use tcp::TcpInput;
pub(crate) use udp::UdpInput;

/// Heartbeat interval of an idle mpx stream
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest an ended mpx stream may take to send its closing heartbeats
/// (the sender spaces its three closing heartbeats 50 ms apart)
pub(crate) const CLOSING_LIMIT: Duration = Duration::from_millis(500);

/// The mpx session of this process: its random id, and the stream ids in use
#[derive(Debug)]
pub(crate) struct Session {
    id: u64,
    ids: Mutex<StreamIds>,
}

#[derive(Debug)]
struct StreamIds {
    /// Next candidate: ids increase from 1 and wrap past `u32::MAX` to 1
    next: u32,
    /// Ids of streams not yet finished (closing heartbeats included)
    live: HashSet<u32>,
}

impl Session {
    fn new(id: u64) -> Self {
        Self {
            id,
            ids: Mutex::new(StreamIds {
                next: 1,
                live: HashSet::new(),
            }),
        }
    }

    /// A stream id that no live stream of the session uses; `None` only if
    /// all 2^32 - 1 are live
    pub(crate) fn lease(self: &Arc<Self>) -> Option<StreamLease> {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        // among live + 1 consecutive candidates at least one is free
        for _ in 0..=ids.live.len() {
            let id = ids.next;
            ids.next = ids.next.wrapping_add(1).max(1);
            if ids.live.insert(id) {
                return Some(StreamLease {
                    session: Arc::clone(self),
                    id,
                });
            }
        }
        None
    }
}

/// A stream id in use; given back when dropped
#[derive(Debug)]
pub(crate) struct StreamLease {
    session: Arc<Session>,
    pub(crate) id: u32,
}

impl StreamLease {
    /// `(session, stream)` for [`Encoder::new`]
    pub(crate) fn key(&self) -> (u64, u32) {
        (self.session.id, self.id)
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.session
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&self.id);
    }
}

/// The group as the inputs see it: one sending socket shared by all input
/// threads, plus the `--tee` copy and, with `--mpx`, the session
#[derive(Debug)]
pub(crate) struct GroupTx {
    fanout: Fanout,
    tee: Tee,
    session: Option<Arc<Session>>,
}

impl GroupTx {
    /// Open the sending socket (multicast TTL, loopback and interface from
    /// `config.socket`); with `config.mpx`, start a session
    pub(crate) fn open(config: &Config) -> Result<Self, Error> {
        let fanout = Fanout::new(std::slice::from_ref(&config.group.spec), &config.socket)
            .map_err(|e| {
                Error::bind(
                    format!(
                        "opening the sending socket for --multicast-addr {}",
                        config.group
                    ),
                    e,
                )
            })?;
        let session = config.mpx.then(|| Arc::new(Session::new(new_session_id())));
        if let Some(s) = &session {
            tracing::info!(
                session = format_args!("{:016x}", s.id),
                "mpx framing of the inputs on"
            );
        }
        Ok(Self {
            fanout,
            tee: Tee::new(config.tee),
            session,
        })
    }

    /// A fresh stream id, with `--mpx`
    fn lease(&self) -> Option<Result<StreamLease, &'static str>> {
        let session = self.session.as_ref()?;
        Some(session.lease().ok_or("every mpx stream id is in use"))
    }

    /// Send one datagram to the group (and to stdout with `--tee`: with
    /// `--mpx` only the payloads of DATA frames); false if the send failed
    /// (counted and logged by the fan-out)
    pub(crate) fn send(&self, datagram: &[u8]) -> bool {
        if datagram.is_empty() {
            // nothing to send, and an empty datagram would only wake receivers
            return true;
        }
        if self.tee.enabled() {
            if self.session.is_none() {
                self.tee.write(datagram);
            } else if let Some(payload) = data_payload(datagram) {
                self.tee.write(payload);
            }
        }
        self.fanout.send(datagram) == 1
    }

    /// Send the datagrams of `batch` (none empty) to the group with as few
    /// system calls as the kernel takes (sendmmsg), and to stdout with
    /// `--tee` as [`GroupTx::send`] does; how many were sent
    pub(crate) fn send_many(&self, batch: &DatagramBatch) -> usize {
        let frames = batch.frames();
        if self.tee.enabled() {
            for d in &frames {
                if self.session.is_none() {
                    self.tee.write(d);
                } else if let Some(payload) = data_payload(d) {
                    self.tee.write(payload);
                }
            }
        }
        self.fanout.send_many(&frames)
    }
}

/// The payload of a DATA frame (not checksummed: only our own frames and
/// frames forwarded anyway get here)
fn data_payload(datagram: &[u8]) -> Option<&[u8]> {
    let frame = Frame::new_checked(datagram).ok()?;
    (frame.frame_type() == FrameType::Data && datagram.len() > HEADER_LEN)
        .then(|| &datagram[HEADER_LEN..])
}

/// Send the closing heartbeats of ended streams, for at most [`CLOSING_LIMIT`]
pub(crate) fn linger(encoders: &mut [&mut Encoder], mut emit: impl FnMut(&[u8])) {
    let until = Instant::now() + CLOSING_LIMIT;
    while let Some(at) = encoders.iter().filter_map(|e| e.poll_timeout()).min() {
        if at > until {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        for e in encoders.iter_mut() {
            e.handle_timeout(now, &mut emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stream_ids_increase_wrap_and_skip_live() {
        let s = Arc::new(Session::new(7));
        let a = s.lease().unwrap();
        let b = s.lease().unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        drop(a);
        assert_eq!(s.lease().unwrap().id, 3, "increasing, not the freed id");
        // wraps past u32::MAX to 1 (never 0), skipping ids still live
        s.ids.lock().unwrap().next = u32::MAX;
        let c = s.lease().unwrap();
        let d = s.lease().unwrap();
        let e = s.lease().unwrap();
        assert_eq!((c.id, d.id, e.id), (u32::MAX, 1, 3), "2 is live");
        assert_eq!(e.key(), (7, 3));
        drop((b, c, d, e));
        assert!(s.ids.lock().unwrap().live.is_empty());
    }

    #[test]
    fn test_data_payload() {
        let mut s = mproxy_common::mpx::Sender::new(1, 1, &Default::default());
        let mut frames = Vec::new();
        let t = Instant::now();
        s.push(t, b"hello\n", |f| frames.push(f.to_vec()));
        s.finish(t, |f| frames.push(f.to_vec()));
        s.handle_timeout(t + CLOSING_LIMIT, |f| frames.push(f.to_vec()));
        let payloads: Vec<_> = frames.iter().map(|f| data_payload(f)).collect();
        assert_eq!(payloads, [Some(&b"hello\n"[..]), None, None]);
        assert_eq!(data_payload(b"raw"), None);
    }
}
