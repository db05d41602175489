//! What a [`LossyRelay`](super::LossyRelay) let through, per mpx stream,
//! and what an ideal mpx receiver makes of it

use std::collections::BTreeMap;

use mproxy_common::mpx::StreamKey;
use mproxy_common::wire::{classify, Datagram, Flags, FrameType, HEADER_LEN};

use super::Decision;

/// One mpx DATA frame seen by the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameRecord {
    /// Its payload (from the first copy received).
    pub payload: Vec<u8>,
    /// Whether it carries FIN (the stream's last frame).
    pub fin: bool,
    /// Copies received from upstream.
    pub received: u32,
    /// Copies forwarded downstream.
    pub forwarded: u32,
}

/// What the relay saw and forwarded of one mpx stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRecord {
    /// DATA frames seen, by sequence number.
    pub frames: BTreeMap<u32, FrameRecord>,
    /// Heartbeats received from upstream.
    pub heartbeats_received: u64,
    /// Heartbeat copies forwarded downstream.
    pub heartbeats_forwarded: u64,
    /// Whether FIN information got through: at least one copy of a FIN
    /// DATA frame or of a FIN heartbeat was forwarded. Without it the
    /// receiver cannot know where the stream ends, and closes it only when
    /// idle, without counting a lost FIN frame.
    pub fin_forwarded: bool,
    /// One past the FIN frame's sequence number, as learned from upstream
    /// (a FIN DATA frame or a FIN heartbeat), whether or not forwarded.
    pub fin_end: Option<u32>,
    /// One past the highest sequence number seen from upstream (DATA
    /// frames, and the next-sequence number heartbeats carry).
    pub high: u32,
    /// Copies of DATA frames forwarded after the stream was complete
    /// downstream (FIN information and at least one copy of every frame up
    /// to it forwarded). An mpx receiver has closed the stream by then and
    /// drops them without counting them as duplicates of the stream.
    pub after_complete: u64,
    /// Extra copies (beyond the first) of DATA frames forwarded while the
    /// stream was not yet complete downstream.
    dups: u64,
    /// End of the stream as made known downstream (by forwarded FIN
    /// information).
    end_downstream: Option<u32>,
    /// Distinct sequence numbers with at least one copy forwarded.
    distinct_forwarded: u64,
}

impl StreamRecord {
    /// One past the last sequence number of the stream: from FIN
    /// information if the relay saw any, else [`StreamRecord::high`].
    pub fn end(&self) -> u32 {
        self.fin_end.unwrap_or(self.high)
    }

    /// The bytes an mpx receiver delivers: the payloads of all frames with
    /// at least one copy forwarded, in sequence order.
    pub fn expected_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in self.frames.values().filter(|f| f.forwarded > 0) {
            out.extend_from_slice(&f.payload);
        }
        out
    }

    /// Frames with at least one copy forwarded (what a receiver counts as
    /// delivered datagrams; the empty FIN frame included).
    pub fn delivered_frames(&self) -> u64 {
        self.frames.values().filter(|f| f.forwarded > 0).count() as u64
    }

    /// Frames the relay received but dropped every copy of.
    pub fn lost(&self) -> u64 {
        self.frames.values().filter(|f| f.forwarded == 0).count() as u64
    }

    /// Sequence numbers below [`StreamRecord::end`] the relay never
    /// received at all (lost before the relay; should be 0 in a test).
    pub fn unseen(&self) -> u64 {
        let seen = self.frames.keys().filter(|s| **s < self.end()).count() as u64;
        u64::from(self.end()) - seen
    }

    /// Maximal runs of consecutive sequence numbers below
    /// [`StreamRecord::end`] of which no copy was forwarded (dropped by the
    /// relay or never received).
    pub fn gaps(&self) -> u64 {
        let mut runs = 0;
        let mut in_run = false;
        for seq in 0..self.end() {
            let missing = self.frames.get(&seq).is_none_or(|f| f.forwarded == 0);
            if missing && !in_run {
                runs += 1;
            }
            in_run = missing;
        }
        runs
    }

    /// Extra copies of DATA frames a receiver sees while the stream is
    /// open: all copies beyond the first of each frame, except those
    /// forwarded after the stream was complete downstream (see
    /// [`StreamRecord::after_complete`]).
    pub fn duplicates(&self) -> u64 {
        self.dups
    }

    /// Whether FIN information and at least one copy of every frame before
    /// it have been forwarded.
    pub fn complete_downstream(&self) -> bool {
        self.end_downstream
            .is_some_and(|end| self.distinct_forwarded >= u64::from(end))
    }

    pub(super) fn on_data_received(&mut self, seq: u32, fin: bool, payload: &[u8]) {
        let f = self.frames.entry(seq).or_insert_with(|| FrameRecord {
            payload: payload.to_vec(),
            fin,
            received: 0,
            forwarded: 0,
        });
        f.received += 1;
        self.high = self.high.max(seq.saturating_add(1));
        if fin {
            self.fin_end.get_or_insert(seq.saturating_add(1));
        }
    }

    pub(super) fn on_data_forwarded(&mut self, seq: u32, fin: bool) {
        let complete = self.complete_downstream();
        let Some(f) = self.frames.get_mut(&seq) else {
            return;
        };
        if f.forwarded == 0 {
            self.distinct_forwarded += 1;
        } else if complete {
            self.after_complete += 1;
        } else {
            self.dups += 1;
        }
        f.forwarded += 1;
        if fin {
            self.fin_forwarded = true;
            self.end_downstream.get_or_insert(seq.saturating_add(1));
        }
    }

    pub(super) fn on_heartbeat_received(&mut self, next: u32, fin: bool) {
        self.heartbeats_received += 1;
        self.high = self.high.max(next);
        if fin {
            self.fin_end.get_or_insert(next);
        }
    }

    pub(super) fn on_heartbeat_forwarded(&mut self, next: u32, fin: bool) {
        self.heartbeats_forwarded += 1;
        if fin {
            self.fin_forwarded = true;
            self.end_downstream.get_or_insert(next);
        }
    }
}

/// Everything a [`LossyRelay`] did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayRecord {
    /// Datagrams received from upstream (all kinds).
    pub received: u64,
    /// Datagrams dropped (no copy forwarded).
    pub dropped: u64,
    /// Datagrams forwarded twice.
    pub duplicated: u64,
    /// Datagrams held back (reordered).
    pub held: u64,
    /// Copies sent downstream (all kinds).
    pub forwarded: u64,
    /// Copies that could not be sent (not counted as forwarded anywhere).
    pub send_errors: u64,
    /// Receive errors on the listening socket.
    pub recv_errors: u64,
    /// Replies relayed back to the sender (with `return_path`)
    pub returned: u64,
    /// Replies dropped on the way back
    pub returns_dropped: u64,
    /// Datagrams the kernel dropped on the listening socket because its
    /// receive queue was full (they never reached the relay; from the
    /// `drops` column of `/proc/net/udp`).
    pub kernel_drops: u64,
    /// Raw (non-mpx) datagrams received.
    pub raw_received: u64,
    /// Copies of raw datagrams forwarded.
    pub raw_forwarded: u64,
    /// Datagrams that start with the mpx magic but are not valid frames,
    /// and valid mpx frames that are neither DATA nor heartbeats (relayed
    /// like any other datagram).
    pub other_received: u64,
    /// mpx streams seen, by (session, stream id).
    pub streams: BTreeMap<StreamKey, StreamRecord>,
}

/// What a datagram is, as far as the record is concerned.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Data {
        key: StreamKey,
        seq: u32,
        fin: bool,
    },
    Heartbeat {
        key: StreamKey,
        next: u32,
        fin: bool,
    },
    Raw,
    Other,
}

impl Kind {
    pub(super) fn of(bytes: &[u8]) -> Self {
        match classify(bytes) {
            Datagram::Raw(_) => Self::Raw,
            Datagram::Invalid(..) => Self::Other,
            Datagram::Mpx(repr, _) => {
                let key = StreamKey {
                    session: repr.session,
                    stream: repr.stream,
                };
                let fin = repr.flags.contains(Flags::FIN);
                match repr.frame_type {
                    FrameType::Data => Self::Data {
                        key,
                        seq: repr.seq,
                        fin,
                    },
                    FrameType::Heartbeat => Self::Heartbeat {
                        key,
                        next: repr.seq,
                        fin,
                    },
                    _ => Self::Other,
                }
            }
        }
    }
}

impl RelayRecord {
    pub(super) fn on_received(&mut self, kind: Kind, bytes: &[u8], d: Decision) {
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        self.received += 1;
        if d.dropped() {
            self.dropped += 1;
        }
        if d.copies > 1 {
            self.duplicated += 1;
        }
        if d.hold > 0 {
            self.held += 1;
        }
        match kind {
            Kind::Data { key, seq, fin } => {
                self.streams
                    .entry(key)
                    .or_default()
                    .on_data_received(seq, fin, payload);
            }
            Kind::Heartbeat { key, next, fin } => {
                self.streams
                    .entry(key)
                    .or_default()
                    .on_heartbeat_received(next, fin);
            }
            Kind::Raw => self.raw_received += 1,
            Kind::Other => self.other_received += 1,
        }
    }

    pub(super) fn on_forwarded(&mut self, kind: Kind) {
        self.forwarded += 1;
        match kind {
            Kind::Data { key, seq, fin } => {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.on_data_forwarded(seq, fin);
                }
            }
            Kind::Heartbeat { key, next, fin } => {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.on_heartbeat_forwarded(next, fin);
                }
            }
            Kind::Raw => self.raw_forwarded += 1,
            Kind::Other => {}
        }
    }

    /// The record of the only mpx stream seen; panics unless there is
    /// exactly one.
    pub fn single_stream(&self) -> (StreamKey, &StreamRecord) {
        assert_eq!(
            self.streams.len(),
            1,
            "expected exactly one mpx stream through the relay, saw {:?}",
            self.streams.keys().collect::<Vec<_>>()
        );
        let (k, s) = self.streams.iter().next().unwrap_or_else(|| unreachable!());
        (*k, s)
    }
}
