//! What an output does with a datagram of the group before delivering it:
//! raw payloads pass, mpx frames are reassembled per stream

use std::net::SocketAddr;
use std::time::Instant;

use mproxy_common::mpx::{Event, Receiver, ReceiverConfig, StreamStats};
use mproxy_common::stats::LogLimiter;

use crate::cli::Accept;
use crate::stats::{MpxSnapshot, MpxStats};

/// The receiving end of one output: `--accept` and, unless it is `raw`,
/// an mpx [`Receiver`]
///
/// `deliver` callbacks get payloads in order per stream: raw datagrams as
/// they are, mpx payloads without their headers.
#[derive(Debug)]
pub(crate) struct Reassembly {
    accept: Accept,
    /// `None` with `--accept raw`
    receiver: Option<Receiver>,
    /// Counters summed over the streams that closed
    closed: StreamStats,
    raw_dropped: u64,
    log_raw: LogLimiter,
}

impl Reassembly {
    pub(crate) fn new(accept: Accept, config: &ReceiverConfig) -> Self {
        Self {
            accept,
            receiver: (accept != Accept::Raw).then(|| {
                Receiver::new(ReceiverConfig {
                    // auto: a raw datagram that merely begins with the
                    // magic is delivered, as on the server
                    invalid_as_raw: accept == Accept::Auto,
                    ..config.clone()
                })
            }),
            closed: StreamStats::default(),
            raw_dropped: 0,
            log_raw: LogLimiter::default(),
        }
    }

    /// Take one datagram of the group
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        mut deliver: impl FnMut(&[u8]),
    ) {
        let Some(receiver) = self.receiver.as_mut() else {
            deliver(datagram);
            return;
        };
        if let Some(raw) = receiver.handle_datagram(now, from, datagram) {
            if self.accept == Accept::Mpx {
                self.raw_dropped += 1;
                if let Some(suppressed) = self.log_raw.allow() {
                    tracing::warn!(
                        %from,
                        suppressed,
                        "dropped a raw datagram of {} bytes (--accept mpx)",
                        raw.len()
                    );
                }
            } else {
                deliver(raw);
            }
        }
        self.drain_events(&mut deliver);
    }

    /// When [`Reassembly::handle_timeout`] is due
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.receiver.as_ref()?.poll_timeout()
    }

    /// Skip gaps that waited too long and close idle streams, if due
    pub(crate) fn handle_timeout(&mut self, now: Instant, mut deliver: impl FnMut(&[u8])) {
        if let Some(receiver) = self.receiver.as_mut() {
            if receiver.poll_timeout().is_some_and(|at| at <= now) {
                receiver.handle_timeout(now);
                self.drain_events(&mut deliver);
            }
        }
    }

    /// Deliver what every stream holds (missing frames count as lost) and
    /// close them all
    pub(crate) fn close_all(&mut self, mut deliver: impl FnMut(&[u8])) {
        if let Some(receiver) = self.receiver.as_mut() {
            receiver.close_all();
            self.drain_events(&mut deliver);
        }
    }

    /// Publish the counters
    pub(crate) fn publish(&self, to: &MpxStats) {
        to.set(MpxSnapshot {
            receiver: self
                .receiver
                .as_ref()
                .map(Receiver::stats)
                .unwrap_or_default(),
            closed: self.closed,
            raw_dropped: self.raw_dropped,
        });
    }

    fn drain_events(&mut self, deliver: &mut impl FnMut(&[u8])) {
        let Some(receiver) = self.receiver.as_mut() else {
            return;
        };
        while let Some(ev) = receiver.poll_event() {
            match ev {
                Event::Data { payload, .. } => {
                    deliver(&payload);
                    receiver.recycle(payload);
                }
                Event::Opened {
                    key,
                    from,
                    first_seq,
                } => {
                    tracing::info!(stream = %key, %from, first_seq, "stream opened");
                }
                Event::Gap { key, first, count } => {
                    tracing::debug!(stream = %key, first, count, "gap skipped");
                }
                Event::Closed { key, reason, stats } => {
                    tracing::info!(stream = %key, ?reason, "stream closed: {stats}");
                    self.closed.add(&stats);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mproxy_common::mpx::{Sender, SenderConfig};
    use mproxy_common::pack::Framing;

    fn frames(session: u64, stream: u32, data: &[u8]) -> Vec<Vec<u8>> {
        let cfg = SenderConfig {
            max_datagram: 24 + 4,
            framing: Framing::Bytes,
            ..SenderConfig::default()
        };
        let mut s = Sender::new(session, stream, &cfg);
        let mut out = Vec::new();
        let t = Instant::now();
        s.push(t, data, |f| out.push(f.to_vec()));
        s.finish(t, |f| out.push(f.to_vec()));
        out
    }

    #[test]
    fn test_reorders_strips_and_counts() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut r = Reassembly::new(Accept::Auto, &ReceiverConfig::default());
        let mut a = frames(1, 1, b"abcdefghij");
        let b = frames(1, 2, b"0123");
        a.swap(0, 1);
        let mut got = Vec::new();
        let t = Instant::now();
        r.handle(t, from, b"raw!", |p| got.push(p.to_vec()));
        for f in a.iter().chain(&b) {
            r.handle(t, from, f, |p| got.push(p.to_vec()));
        }
        // a stream lingers a gap timeout after its FIN before it closes
        r.handle_timeout(t + std::time::Duration::from_secs(1), |p| {
            got.push(p.to_vec())
        });
        let all: Vec<u8> = got.concat();
        assert_eq!(all, b"raw!abcdefghij0123");
        let stats = MpxStats::default();
        r.publish(&stats);
        let s = stats.get();
        assert_eq!(s.receiver.streams_opened, 2);
        assert_eq!(s.receiver.streams_closed, 2);
        assert_eq!(s.closed.bytes, 14);
        assert_eq!(s.closed.reordered, 1);
        assert_eq!(s.raw_dropped, 0);
    }

    #[test]
    fn test_accept_modes() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t = Instant::now();
        let f = frames(9, 1, b"xy");
        let mut raw = Reassembly::new(Accept::Raw, &ReceiverConfig::default());
        let mut got = Vec::new();
        raw.handle(t, from, &f[0], |p| got.push(p.to_vec()));
        assert_eq!(got, vec![f[0].clone()], "raw: frames pass as they are");
        assert_eq!(raw.poll_timeout(), None);

        let mut mpx = Reassembly::new(Accept::Mpx, &ReceiverConfig::default());
        let mut got = Vec::new();
        mpx.handle(t, from, b"raw", |p| got.push(p.to_vec()));
        mpx.handle(t, from, &f[0], |p| got.push(p.to_vec()));
        assert_eq!(got, vec![b"xy".to_vec()]);
        // the stream has no FIN yet: close_all ends it
        mpx.close_all(|p| got.push(p.to_vec()));
        let stats = MpxStats::default();
        mpx.publish(&stats);
        assert_eq!(stats.get().raw_dropped, 1);
        assert_eq!(stats.get().receiver.streams_closed, 1);

        // a binary raw datagram that merely begins with the magic: delivered
        // in auto mode (and counted), dropped as invalid in mpx mode
        let lookalike = [0xa7, 0x4d, 0xf1, 1, 2, 3, 4, 5];
        let mut auto = Reassembly::new(Accept::Auto, &ReceiverConfig::default());
        let mut got = Vec::new();
        auto.handle(t, from, &lookalike, |p| got.push(p.to_vec()));
        assert_eq!(got, vec![lookalike.to_vec()]);
        auto.publish(&stats);
        assert_eq!(stats.get().receiver.raw_lookalike, 1);
        let mut got = Vec::new();
        mpx.handle(t, from, &lookalike, |p| got.push(p.to_vec()));
        assert!(got.is_empty());
        mpx.publish(&stats);
        assert_eq!(
            stats.get().receiver.truncated,
            1,
            "8 bytes: shorter than a header"
        );
    }
}
