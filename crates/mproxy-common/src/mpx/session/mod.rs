//! The sending side of one stream over one or more paths, sans-IO
//!
//! A [`SenderSession`] owns everything a sender decides: how the input is
//! cut into datagrams (raw or mpx frames), the repair buffer that answers
//! NACKs, FEC, flow control from receivers' WINDOW frames, pacing, the
//! multipath scheduler, heartbeats, probes and the wait for the end of
//! the stream. It owns no socket, thread or clock: like quinn-proto's
//! `Connection`, it is driven from outside.
//!
//! Driving order (each call takes the current time as `now`):
//! 1. feed input: read at most [`SenderSession::writable`] bytes and pass
//!    them to [`SenderSession::push`] ([`SenderSession::finish`] at end of
//!    input); feed every datagram that arrives on a sending socket to
//!    [`SenderSession::handle_datagram`];
//! 2. call [`SenderSession::handle_timeout`] when [`SenderSession::poll_timeout`]
//!    is due;
//! 3. send what [`SenderSession::poll_transmit`] returns until `None`
//!    (report a local send failure on a path with
//!    [`SenderSession::on_path_failure`]);
//! 4. drain [`SenderSession::poll_event`] (things to log);
//! 5. stop once [`SenderSession::is_done`]; otherwise wait for input, a
//!    socket, or [`SenderSession::poll_timeout`], and go to 1.
//!
//! Frames wait in two queues: *urgent* (re-sent frames, heartbeats and
//! probes) goes first and is never held back by flow control; *data*
//! (DATA and FEC frames, in stream order) goes when the receivers'
//! windows allow. Pacing (`rate`, or per-path rates in stripe mode)
//! applies to both; probes are never paced.

mod confirm;
mod guard;
mod queue;

pub use confirm::{Confirm, Delivery, ReceiverOutcome};
use guard::Guard;
pub use queue::Dest;
use queue::{FrameQueue, Item, Kind};

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use super::auth::{
    AuthStats, Keyring, Opener, OpenerConfig, SealError, Sealer, SealerStats, Suite, OVERHEAD,
};
use super::fec::{FecConfig, FecEncoderStats};
use super::flow::{FlowConfig, FlowControl, FlowEvent, FlowStats, PeerState};
use super::scheduler::{PathConfig, PathState, PathStats, Scheduler, SchedulerConfig};
use super::sender::{Sender, SenderConfig, SenderStats};
use crate::pack::{Framing, Packer};
use crate::rate::{Pacer, Rate};
use crate::wire::{
    classify, feedback_token, window_token, Datagram, FeedbackReport, FrameType, Repr, HEADER_LEN,
};

/// How a session uses its paths
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One logical path: the driver sends every frame to every destination
    #[default]
    Fanout,
    /// Frames are spread over the paths; one receiver reassembles them
    Stripe,
    /// Every frame goes over every live path; the receiver keeps the first
    Redundant,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fanout" => Ok(Self::Fanout),
            "stripe" => Ok(Self::Stripe),
            "redundant" => Ok(Self::Redundant),
            other => Err(format!(
                "unknown mode '{other}' (expected fanout, stripe or redundant)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fanout => "fanout",
            Self::Stripe => "stripe",
            Self::Redundant => "redundant",
        })
    }
}

/// Settings of a [`SenderSession`]
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// mpx framing: `Some((session id, stream id))`; `None`: raw payloads
    pub mpx: Option<(u64, u32)>,
    /// How the input is cut into datagrams
    pub framing: Framing,
    /// Largest datagram (mpx header included)
    pub max_datagram: usize,
    /// Heartbeat after this long without a frame (mpx)
    pub heartbeat_interval: Duration,
    /// Bytes of recent frames kept to answer NACKs (mpx; 0: no repair)
    pub repair_buffer: usize,
    /// Forward error correction (mpx; `None`: off)
    pub fec: Option<FecConfig>,
    /// Receivers' windows: how they are tracked (mpx)
    pub flow: FlowConfig,
    /// Hold the stream to the slowest receiver's window (mpx); when off,
    /// windows are still tracked to confirm the end
    pub flow_control: bool,
    /// Which receivers must confirm the end (mpx)
    pub confirm: Confirm,
    /// Seal every frame and accept only authentic control frames (mpx;
    /// `None`: unkeyed, as version 1)
    pub keys: Option<SessionKeys>,
    /// Random secret of the echo tokens (see [`SenderSession`]'s docs on
    /// hostile input); a driver draws it from the OS
    pub token_secret: u64,
    /// Pacing: the stream's rate in fan-out mode, the total split by
    /// weight in stripe mode (`None`: as fast as allowed)
    pub rate: Option<Rate>,
    /// How the paths are used
    pub mode: Mode,
    /// The paths of stripe and redundant modes (ignored in fan-out mode)
    pub paths: Vec<PathConfig>,
    /// After the end of input, wait at most this long for receivers to
    /// confirm the end (or, with nobody to confirm, for NACKs to stop
    /// coming for [`LINGER_QUIET`]) (mpx)
    pub linger: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            mpx: None,
            framing: Framing::Lines,
            max_datagram: 1472,
            heartbeat_interval: Duration::from_secs(1),
            repair_buffer: 0,
            fec: None,
            flow: FlowConfig::default(),
            flow_control: false,
            confirm: Confirm::All,
            keys: None,
            token_secret: 0,
            rate: None,
            mode: Mode::Fanout,
            paths: Vec::new(),
            linger: Duration::from_secs(30),
        }
    }
}

/// After the end of input, the wait ends once no NACK came for this long
pub const LINGER_QUIET: Duration = Duration::from_millis(300);
/// While flow control holds the stream back, a heartbeat pokes the
/// receivers for their windows this often (a lost WINDOW must not stall)
pub const FLOW_POKE: Duration = Duration::from_millis(50);
/// Heartbeats flagged FIN after the FIN frame, and their spacing
const CLOSING_HEARTBEATS: u8 = 3;
const CLOSING_INTERVAL: Duration = Duration::from_millis(50);
/// While receivers still owe their confirmation, a FIN heartbeat (which
/// they answer with a window) this often
const CONFIRM_POKE: Duration = Duration::from_millis(250);
/// Stream offsets of this many recent frames are kept, to report where a
/// receiver stopped in bytes
const OFFSET_LOG: usize = 1 << 16;
/// DATA frames remembered per path until feedback acknowledges them
const INFLIGHT_MAX: usize = 1 << 16;
/// Pacing waits shorter than this are not waited for but carried as debt
/// by the pacer, so timer granularity does not cap the rate
pub const MIN_WAIT: Duration = Duration::from_micros(250);
/// Most frames in one [`Outgoing`]
pub const MAX_BATCH: usize = 64;
/// Most input bytes waiting in the data queue (unpaced)
const QUEUE_LIMIT: usize = 256 * 1024;

/// Frames to send now, all to one destination
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Where they go
    pub dest: Dest,
    /// The datagrams, in order
    pub frames: Vec<&'a [u8]>,
}

/// Something a driver should log
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A receiver was heard from for the first time (or again after it
    /// was given up)
    Joined(ReceiverOutcome),
    /// A receiver went silent for the receiver timeout: no longer waited
    /// for; where it stands
    GivenUp(ReceiverOutcome),
    /// A receiver lagged more than `max_lag` frames and was cut off
    Cut {
        /// Where it stands
        receiver: ReceiverOutcome,
        /// Frames behind the most advanced receiver
        lag: u32,
    },
    /// The frames in flight on a path that died went out again on the
    /// others
    Reinjected {
        /// The dead path
        path: usize,
        /// Frames re-sent
        frames: usize,
    },
    /// A path changed state
    Path {
        /// Its index
        path: usize,
        /// The new state
        state: PathState,
        /// What caused it
        cause: PathCause,
    },
}

/// Why a path changed state
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathCause {
    /// Feedback stopped or resumed
    Feedback,
    /// A local send failed (network down, no route)
    LocalFailure,
}

/// Counters of a [`SenderSession`]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Input bytes pushed
    pub bytes_in: u64,
    /// Datagrams handed to the driver (each counted once, whatever the
    /// number of destinations)
    pub datagrams: u64,
    /// Bytes of those datagrams
    pub bytes_out: u64,
    /// mpx sender counters (`None` in raw mode)
    pub sender: Option<SenderStats>,
    /// Flow-control counters (`None` when off)
    pub flow: Option<FlowStats>,
    /// Time the stream was held back by receivers' windows
    pub flow_wait: Duration,
    /// FEC counters (`None` when off)
    pub fec: Option<FecEncoderStats>,
    /// Control frames taken (NACK, WINDOW, FEEDBACK of this stream)
    pub control: u64,
    /// Datagrams received that were not control frames of this stream
    /// (other sessions, raw data, malformed feedback)
    pub ignored: u64,
    /// WINDOW and FEEDBACK frames not acted on: their source has not shown
    /// that it receives the stream (no valid echo token)
    pub unverified: u64,
    /// Frames re-sent on live paths because the path they went on died
    pub reinjected: u64,
    /// Keyed: receivers' frames refused, by cause (`None`: unkeyed)
    pub auth: Option<AuthStats>,
    /// Keyed: frames sealed (`None`: unkeyed)
    pub sealed: Option<SealerStats>,
    /// Lines longer than a datagram that had to be split
    pub split_lines: u64,
}

/// The keys of a keyed session (see docs/PROTOCOL.md §16)
#[derive(Debug, Clone)]
pub struct SessionKeys {
    /// The group's keys: frames are sealed with the first, control frames
    /// from receivers accepted under any
    pub keyring: Keyring,
    /// AEAD and whether the payload is encrypted
    pub suite: Suite,
    /// Limits of the opener of receivers' control frames
    pub opener: OpenerConfig,
    /// The wall-clock time at the `now` the session is created with
    /// (subkey epochs and freshness are wall-clock based)
    pub wall_start: SystemTime,
}

/// A keyed session's sealer and opener
#[derive(Debug)]
struct Keyed {
    sealer: Sealer,
    opener: Opener,
    wall_start: SystemTime,
    start: Instant,
    /// Receivers' control frames are opened in a copy here
    scratch: Vec<u8>,
}

impl Keyed {
    fn wall(&self, now: Instant) -> SystemTime {
        self.wall_start + now.saturating_duration_since(self.start)
    }
}

/// Which queue a taken frame came from
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Urgent,
    Data,
}

/// What turns input into datagrams
#[derive(Debug)]
enum Framer {
    Raw(Packer),
    Mpx(Box<Sender>),
}

/// The sending side of one stream (sans-IO); see the module docs
#[derive(Debug)]
pub struct SenderSession {
    framer: Framer,
    mode: Mode,
    max_payload: usize,
    heartbeat_interval: Duration,
    repairing: bool,
    linger: Duration,
    rate: Option<Rate>,
    keyed: Option<Keyed>,
    flow: Option<FlowControl>,
    flow_enforce: bool,
    confirm: Confirm,
    guard: Guard,
    /// Stream offset of each recent DATA frame (by `seq % OFFSET_LOG`)
    offsets: Vec<u64>,
    /// Per path: DATA frames sent and not yet acknowledged by feedback
    inflight: Vec<VecDeque<u32>>,
    last_heartbeat: Option<Instant>,
    sched: Option<Scheduler>,
    pacer: Option<Pacer>,
    urgent: FrameQueue,
    data: FrameQueue,
    /// Frames handed out by the last [`SenderSession::poll_transmit`]
    last_taken: Option<(Queue, Vec<Item>)>,
    /// mpx: first sequence number not yet sent, and the stream bytes before it
    next_unsent: u32,
    offset: u64,
    last_sent: Option<Instant>,
    /// Flow control holds the stream back since then
    blocked_since: Option<Instant>,
    last_poke: Option<Instant>,
    finished: bool,
    /// Set by [`SenderSession::shutdown`]: send what is queued unpaced, ignore
    /// windows, do not linger
    hurry: bool,
    /// When the FIN frame went out (mpx) or the last datagram (raw)
    end: Option<Instant>,
    closing_left: u8,
    last_closing: Option<Instant>,
    last_nack: Option<Instant>,
    /// Nothing is owed any more (closing heartbeats sent, linger over)
    done: bool,
    /// Paths whose socket is full (bit i: path i), see
    /// [`SenderSession::on_path_blocked`]
    blocked_paths: u64,
    events: VecDeque<SessionEvent>,
    stats: SessionStats,
    scratch: Vec<u8>,
}

impl SenderSession {
    /// A session starting at `now`
    ///
    /// # Errors
    /// A keyed session whose sealer cannot be set up (no randomness for
    /// its subkey); an unkeyed session never fails.
    pub fn new(config: SessionConfig, now: Instant) -> Result<Self, SealError> {
        let keyed = match (&config.keys, config.mpx) {
            (Some(k), Some(_)) => Some(Keyed {
                sealer: Sealer::new(&k.keyring, k.suite, k.wall_start)?,
                opener: Opener::new(&k.keyring, &k.opener),
                wall_start: k.wall_start,
                start: now,
                scratch: Vec::new(),
            }),
            _ => None,
        };
        // a keyed frame carries OVERHEAD more bytes: the frames are made
        // that much smaller so the datagram stays within max_datagram
        let max_datagram = if keyed.is_some() {
            config.max_datagram.saturating_sub(OVERHEAD)
        } else {
            config.max_datagram
        };
        let max_payload = if config.mpx.is_some() {
            max_datagram.saturating_sub(HEADER_LEN).max(1)
        } else {
            max_datagram.max(1)
        };
        let framer = match config.mpx {
            None => Framer::Raw(Packer::new(config.framing, config.max_datagram)),
            Some((session, stream)) => {
                let mut s = Sender::new(
                    session,
                    stream,
                    &SenderConfig {
                        max_datagram,
                        framing: config.framing,
                        heartbeat_interval: config.heartbeat_interval,
                        repair_buffer: config.repair_buffer,
                    },
                );
                s.set_epoch(now);
                s.enable_fec(config.fec, |_| {});
                // multipath senders want path feedback
                s.set_probing(config.mode != Mode::Fanout && !config.paths.is_empty());
                Framer::Mpx(Box::new(s))
            }
        };
        let mpx = config.mpx.is_some();
        let multipath = config.mode != Mode::Fanout && !config.paths.is_empty();
        let sched = multipath.then(|| {
            let cfg = SchedulerConfig {
                // redundant: every path carries everything
                total_rate: if config.mode == Mode::Stripe {
                    config.rate
                } else {
                    None
                },
                ..SchedulerConfig::default()
            };
            Scheduler::new(&config.paths, cfg, now)
        });
        let pacer = match (&sched, config.rate) {
            (None, Some(r)) => Some(Pacer::new(r, pacer_burst(r, config.max_datagram))),
            _ => None,
        };
        Ok(Self {
            keyed,
            framer,
            mode: if multipath { config.mode } else { Mode::Fanout },
            max_payload,
            heartbeat_interval: config.heartbeat_interval,
            repairing: mpx && config.repair_buffer > 0,
            linger: config.linger,
            rate: config.rate,
            flow: mpx.then(|| FlowControl::new(config.flow.clone(), 0)),
            flow_enforce: config.flow_control,
            confirm: config.confirm,
            guard: Guard::new(config.token_secret, now, config.repair_buffer as u64),
            offsets: Vec::new(),
            inflight: vec![VecDeque::new(); if multipath { config.paths.len() } else { 0 }],
            last_heartbeat: None,
            sched,
            pacer,
            urgent: FrameQueue::default(),
            data: FrameQueue::default(),
            last_taken: None,
            next_unsent: 0,
            offset: 0,
            last_sent: None,
            blocked_since: None,
            last_poke: None,
            finished: false,
            hurry: false,
            end: None,
            closing_left: 0,
            last_closing: None,
            last_nack: None,
            done: false,
            blocked_paths: 0,
            events: VecDeque::new(),
            stats: SessionStats::default(),
            scratch: Vec::new(),
        })
    }

    /// mpx session id (`None` in raw mode)
    pub fn session_id(&self) -> Option<u64> {
        match &self.framer {
            Framer::Raw(_) => None,
            Framer::Mpx(s) => Some(s.session()),
        }
    }

    /// How the paths are used
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Largest payload of one datagram
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Input bytes the session takes now: 0 while flow control or pacing
    /// holds the stream back, or after [`SenderSession::finish`]
    pub fn writable(&mut self, now: Instant) -> usize {
        if self.finished {
            return 0;
        }
        // with a rate, read ~50 ms of it ahead (at least one datagram)
        let limit = self.rate.map_or(QUEUE_LIMIT, |r| {
            usize::try_from(r.bytes_per_sec() / 20)
                .unwrap_or(usize::MAX)
                .clamp(self.max_payload, QUEUE_LIMIT)
        });
        let room = limit.saturating_sub(self.data.bytes());
        let Framer::Mpx(sender) = &self.framer else {
            return room;
        };
        let next = sender.next_seq();
        match self.flow_limit(now) {
            None => room,
            Some(limit) => {
                let left = limit.wrapping_sub(next);
                if left == 0 || left > (1 << 31) {
                    self.note_blocked(now, true);
                    0
                } else {
                    room.min((left as usize).saturating_mul(self.max_payload))
                }
            }
        }
    }

    /// Feed input bytes (whatever [`SenderSession::writable`] said: more is
    /// taken too, and only queues longer)
    pub fn push(&mut self, now: Instant, input: &[u8]) {
        if self.finished || input.is_empty() {
            return;
        }
        self.stats.bytes_in += input.len() as u64;
        if self.last_heartbeat.is_none() && matches!(self.framer, Framer::Mpx(_)) {
            // receivers learn the echo token before the first window
            self.queue_heartbeat(now);
        }
        let data = &mut self.data;
        match &mut self.framer {
            Framer::Raw(p) => p.push(input, |d| data.push(d, Kind::Raw, None)),
            Framer::Mpx(s) => {
                let mut seq = s.next_seq();
                let keyed = &mut self.keyed;
                s.push(now, input, |f| push_frame(data, keyed, now, f, &mut seq));
            }
        }
    }

    /// End of input: flush what is held back and (mpx) send FIN
    pub fn finish(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        self.finished = true;
        let data = &mut self.data;
        match &mut self.framer {
            Framer::Raw(p) => p.finish(|d| data.push(d, Kind::Raw, None)),
            Framer::Mpx(s) => {
                let mut seq = s.next_seq();
                let keyed = &mut self.keyed;
                s.finish(now, |f| push_frame(data, keyed, now, f, &mut seq));
            }
        }
    }

    /// Stop soon: end the stream now, send what is queued at once (no
    /// pacing, no windows) and do not wait for repair requests
    pub fn shutdown(&mut self, now: Instant) {
        self.finish(now);
        self.hurry = true;
    }

    /// True once the stream ended, everything went out and nothing is
    /// owed any more: the driver may stop
    pub fn is_done(&self) -> bool {
        self.finished
            && self.urgent.is_empty()
            && self.data.is_empty()
            && (self.hurry || self.done || matches!(self.framer, Framer::Raw(_)))
    }

    /// A datagram that arrived on a sending socket: `path` is the path
    /// whose socket got it (0 in fan-out mode), `from` its source
    pub fn handle_datagram(&mut self, now: Instant, path: usize, from: SocketAddr, bytes: &[u8]) {
        if !matches!(self.framer, Framer::Mpx(_)) {
            self.stats.ignored += 1;
            return;
        }
        match self.keyed.as_mut() {
            None => match classify(bytes) {
                Datagram::Mpx(repr, payload) => {
                    self.handle_control(now, path, from, repr, payload, bytes.len());
                }
                _ => self.stats.ignored += 1,
            },
            Some(k) => {
                // only authentic frames are acted on; the opener counts
                // the others by cause
                let mut buf = std::mem::take(&mut k.scratch);
                buf.clear();
                buf.extend_from_slice(bytes);
                let wall = k.wall(now);
                if let Ok(opened) = k.opener.open(wall, &mut buf) {
                    // a member of the group: it holds the key
                    self.guard.verify(now, from);
                    if let Some(payload) = buf.get(opened.payload.clone()) {
                        self.handle_control(now, path, from, opened.repr, payload, bytes.len());
                    }
                }
                if let Some(k) = self.keyed.as_mut() {
                    k.scratch = buf;
                }
            }
        }
    }

    /// A receiver's frame (authentic, when keyed) of `len` bytes on the wire
    fn handle_control(
        &mut self,
        now: Instant,
        path: usize,
        from: SocketAddr,
        repr: Repr,
        payload: &[u8],
        len: usize,
    ) {
        let Framer::Mpx(sender) = &mut self.framer else {
            return;
        };
        if repr.session != sender.session() {
            self.stats.ignored += 1;
            return;
        }
        match repr.frame_type {
            FrameType::Nack if repr.stream == sender.stream() => {
                self.stats.control += 1;
                self.last_nack = Some(now);
                let budget = self.guard.nack_budget(now, from, len, self.offset);
                let (urgent, keyed) = (&mut self.urgent, &mut self.keyed);
                sender.set_sent(self.next_unsent);
                let spent = sender.handle_nack_limited(now, payload, budget, |f| {
                    enqueue(urgent, keyed, now, f, Kind::Retransmit, None);
                });
                self.guard.spend(from, spent);
            }
            FrameType::Window if repr.stream == sender.stream() => {
                if !self.guard.check(now, from, window_token(payload)) {
                    self.stats.unverified += 1;
                    return;
                }
                self.stats.control += 1;
                if let Some(fc) = self.flow.as_mut() {
                    fc.on_window(now, from, repr.seq, payload, self.max_payload);
                }
                self.drain_flow_events(now);
            }
            FrameType::Feedback => {
                let (Some(_), Some(report)) = (self.sched.as_ref(), FeedbackReport::parse(payload))
                else {
                    self.stats.ignored += 1;
                    return;
                };
                if !self.guard.check(now, from, feedback_token(payload)) {
                    self.stats.unverified += 1;
                    return;
                }
                self.stats.control += 1;
                if let Some(sched) = self.sched.as_mut() {
                    let was = sched.state(path);
                    sched.on_feedback(now, path, &report);
                    // what the receiver has not acknowledged on this path
                    let st = sched.stats();
                    if let (Some(p), Some(q)) = (st.get(path), self.inflight.get_mut(path)) {
                        let unacked = p.frames.saturating_sub(p.frames_acked) as usize;
                        while q.len() > unacked {
                            q.pop_front();
                        }
                    }
                    self.note_path(path, was, PathCause::Feedback);
                }
            }
            _ => self.stats.ignored += 1,
        }
    }

    /// A local send on `path` failed (network down, no route): the path is
    /// dead at once, and the last `unsent` frames handed out for it go to
    /// another path
    pub fn on_path_failure(&mut self, now: Instant, path: usize, unsent: usize) {
        let Some(sched) = self.sched.as_mut() else {
            return;
        };
        let was = sched.state(path);
        sched.on_send_failure(path);
        self.note_path(path, was, PathCause::LocalFailure);
        let Some((queue, items)) = self.last_taken.take() else {
            return;
        };
        if self.mode != Mode::Stripe || unsent == 0 {
            return;
        }
        let from = items.len().saturating_sub(unsent);
        let back: Vec<Item> = items[from..]
            .iter()
            .copied()
            .filter(|it| it.dest == Some(Dest::Path(path)))
            .collect();
        self.stats.datagrams = self.stats.datagrams.saturating_sub(back.len() as u64);
        self.stats.bytes_out = self
            .stats
            .bytes_out
            .saturating_sub(back.iter().map(|it| it.len() as u64).sum());
        match queue {
            Queue::Urgent => self.urgent.unpop(&back),
            Queue::Data => self.data.unpop(&back),
        }
        let _ = now;
    }

    /// When the last frame of the stream went out (`None` before)
    pub fn end_time(&self) -> Option<Instant> {
        self.end
    }

    /// The socket of `path` is full: the last `unsent` frames handed out
    /// for it stay first in line for it, and nothing more is handed out
    /// for that path until [`SenderSession::on_path_writable`]
    pub fn on_path_blocked(&mut self, path: usize, unsent: usize) {
        if path < 64 {
            self.blocked_paths |= 1 << path;
        }
        let Some((queue, items)) = self.last_taken.take() else {
            return;
        };
        let from = items.len().saturating_sub(unsent);
        let back = &items[from..];
        self.stats.datagrams = self.stats.datagrams.saturating_sub(back.len() as u64);
        self.stats.bytes_out = self
            .stats
            .bytes_out
            .saturating_sub(back.iter().map(|it| it.len() as u64).sum());
        match queue {
            Queue::Urgent => self.urgent.unpop_keep(back),
            Queue::Data => self.data.unpop_keep(back),
        }
    }

    /// The socket of `path` can take datagrams again
    pub fn on_path_writable(&mut self, path: usize) {
        if path < 64 {
            self.blocked_paths &= !(1 << path);
        }
    }

    /// A send on `path` worked (a dead path that never reported comes back)
    pub fn on_path_success(&mut self, path: usize) {
        if let Some(sched) = self.sched.as_mut() {
            let was = sched.state(path);
            sched.on_send_success(path);
            self.note_path(path, was, PathCause::LocalFailure);
        }
    }

    /// When [`SenderSession::handle_timeout`] is next due
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        // a frame waiting for its pacing slot
        for q in [&self.urgent, &self.data] {
            consider(q.front().and_then(|it| it.not_before));
        }
        if let Framer::Mpx(sender) = &self.framer {
            consider(sender.poll_fec_timeout());
            if let Some(sched) = &self.sched {
                consider(sched.poll_timeout());
            }
            if let Some(fc) = &self.flow {
                consider(fc.poll_timeout());
            }
            if let (Some(since), false) = (self.blocked_since, self.hurry) {
                consider(Some(self.last_poke.unwrap_or(since) + FLOW_POKE));
            }
            match self.end {
                None if !self.finished => {
                    consider(self.last_heartbeat.map(|t| t + self.heartbeat_interval));
                }
                None => {}
                Some(end) if !self.hurry && !self.done => {
                    let poke = if self.closing_left > 0 {
                        CLOSING_INTERVAL
                    } else {
                        CONFIRM_POKE
                    };
                    consider(Some(self.last_closing.unwrap_or(end) + poke));
                    if self.closing_left == 0 {
                        consider(Some(self.end_deadline(end)));
                    }
                }
                Some(_) => {}
            }
        }
        at
    }

    /// After the end, when the wait ends at the latest: the linger cap, or
    /// (nobody to confirm) the NACK-quiet rule
    fn end_deadline(&self, end: Instant) -> Instant {
        let hard = end + self.linger;
        if self.confirm != Confirm::None
            && self
                .flow
                .as_ref()
                .is_some_and(|f| f.peers().next().is_some())
        {
            return hard;
        }
        if !self.repairing {
            return end;
        }
        let quiet = self.last_nack.map_or(end, |t| t.max(end)) + LINGER_QUIET;
        quiet.min(hard)
    }

    /// Whether receivers still owe their confirmation of the end
    fn owed(&self) -> bool {
        let Some(fc) = &self.flow else {
            return false;
        };
        let end = self.next_unsent;
        let complete = |n: u32| n == end;
        let mut active_pending = false;
        let mut any_complete = false;
        for p in fc.peers() {
            if complete(p.next) {
                any_complete = true;
            } else if p.state == PeerState::Active {
                active_pending = true;
            }
        }
        match self.confirm {
            Confirm::All => active_pending,
            Confirm::Any => !any_complete && active_pending,
            Confirm::None => false,
        }
    }

    /// Do what timers call for: heartbeats, probes, pokes, FEC blocks,
    /// path health, receivers timing out, the wait for confirmations
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.framer, Framer::Raw(_)) {
            return;
        }
        let (seq, fin, offset) = self.heartbeat_position();
        let token = self.guard.token(now);
        let mut died = Vec::new();
        if let Framer::Mpx(sender) = &mut self.framer {
            let (data, keyed) = (&mut self.data, &mut self.keyed);
            sender.handle_fec_timeout(now, |f| enqueue(data, keyed, now, f, Kind::Fec, None));
            if let Some(sched) = self.sched.as_mut() {
                let before: Vec<_> = (0..sched.len()).map(|i| sched.state(i)).collect();
                sched.handle_timeout(now);
                let (urgent, keyed) = (&mut self.urgent, &mut self.keyed);
                while let Some(i) = sched.poll_probe(now) {
                    sender.heartbeat(now, seq, fin, offset, token, |f| {
                        enqueue(urgent, keyed, now, f, Kind::Control, Some(Dest::Path(i)));
                    });
                }
                for (i, was) in before.into_iter().enumerate() {
                    if was == Some(PathState::Up) && sched.state(i) == Some(PathState::Dead) {
                        died.push(i);
                    }
                }
            }
        }
        for i in 0..self.sched.as_ref().map_or(0, Scheduler::len) {
            let was = if died.contains(&i) {
                Some(PathState::Up)
            } else {
                self.sched.as_ref().and_then(|s| s.state(i))
            };
            self.note_path(i, was, PathCause::Feedback);
        }
        for i in died {
            self.reinject(now, i);
        }
        // receivers timing out, the end of the first wait
        let _ = self.flow_limit(now);
        self.drain_flow_events(now);
        if let (Some(since), false) = (self.blocked_since, self.hurry) {
            if now.saturating_duration_since(self.last_poke.unwrap_or(since)) >= FLOW_POKE {
                self.last_poke = Some(now);
                self.queue_heartbeat(now);
            }
        }
        match self.end {
            // at least one heartbeat per interval, busy or idle: it carries
            // the next sequence number (tail losses) and the echo token
            None if !self.finished
                && self.last_heartbeat.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.heartbeat_interval
                }) =>
            {
                self.queue_heartbeat(now);
            }
            None => {}
            Some(end) if !self.hurry && !self.done => {
                let poke = if self.closing_left > 0 {
                    CLOSING_INTERVAL
                } else {
                    CONFIRM_POKE
                };
                let owed = self.owed();
                if now.saturating_duration_since(self.last_closing.unwrap_or(end)) >= poke
                    && (self.closing_left > 0 || owed)
                {
                    self.closing_left = self.closing_left.saturating_sub(1);
                    self.last_closing = Some(now);
                    self.queue_heartbeat(now);
                }
                if self.closing_left == 0 {
                    let waiting_for_peers = self.confirm != Confirm::None
                        && self
                            .flow
                            .as_ref()
                            .is_some_and(|f| f.peers().next().is_some());
                    if (waiting_for_peers && !owed) || now >= self.end_deadline(end) {
                        self.done = true;
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// Re-send the frames in flight on dead path `path` on the others
    fn reinject(&mut self, now: Instant, path: usize) {
        let Some(q) = self.inflight.get_mut(path) else {
            return;
        };
        let seqs: Vec<u32> = q.drain(..).collect();
        let Framer::Mpx(sender) = &mut self.framer else {
            return;
        };
        sender.set_sent(self.next_unsent);
        let (urgent, keyed) = (&mut self.urgent, &mut self.keyed);
        let mut n = 0;
        for seq in seqs {
            if sender.resend(now, seq, |f| {
                enqueue(urgent, keyed, now, f, Kind::Retransmit, None);
            }) {
                n += 1;
            }
        }
        if n > 0 {
            self.stats.reinjected += n as u64;
            self.events
                .push_back(SessionEvent::Reinjected { path, frames: n });
        }
    }

    /// How the end of the stream stands: which receivers confirmed it and
    /// where the others are
    pub fn delivery(&self, now: Instant) -> Delivery {
        let receivers = self.flow.as_ref().map_or_else(Vec::new, |fc| {
            let end = self.end.map(|_| self.next_unsent);
            fc.peers()
                .map(|p| ReceiverOutcome {
                    id: p.id,
                    addr: p.addr,
                    joined_seq: p.joined,
                    joined_offset: self.offset_of(p.joined),
                    confirmed_seq: p.next,
                    confirmed_offset: self.offset_of(p.next),
                    reached_end: end == Some(p.next),
                    lost_frames: p.lost,
                    complete: end == Some(p.next) && p.lost == 0,
                    state: p.state,
                    silent_for: now.saturating_duration_since(p.last_heard),
                })
                .collect()
        });
        Delivery {
            rule: self.confirm,
            end_seq: self.end.map(|_| self.next_unsent),
            bytes: self.offset,
            receivers,
        }
    }

    /// Stream offset of frame `seq` (bytes before it), if still known
    pub fn offset_of(&self, seq: u32) -> Option<u64> {
        if seq == self.next_unsent {
            return Some(self.offset);
        }
        let behind = self.next_unsent.wrapping_sub(seq) as usize;
        if behind == 0 || behind > OFFSET_LOG || self.offsets.len() < OFFSET_LOG {
            return None;
        }
        self.offsets.get(seq as usize % OFFSET_LOG).copied()
    }

    /// The next datagrams to send, all to one destination; `None` when
    /// nothing may go now (see [`SenderSession::poll_timeout`])
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing<'_>> {
        self.last_taken = None;
        let (queue, n, dest) = self.plan(now)?;
        let last_of_stream = self.finished
            && self.end.is_none()
            && queue == Queue::Data
            && self.data.len() == n
            && self.urgent.is_empty();
        let items = match queue {
            Queue::Urgent => self.urgent.items(n),
            Queue::Data => self.data.items(n),
        };
        let mut bytes = 0u64;
        if self.offsets.is_empty() && matches!(self.framer, Framer::Mpx(_)) {
            self.offsets = vec![0; OFFSET_LOG];
        }
        for it in &items {
            bytes += it.len() as u64;
            if let Kind::Data { seq, payload } = it.kind {
                // a frame sent again after a failed path is not counted twice
                if seq == self.next_unsent {
                    if let Some(o) = self.offsets.get_mut(seq as usize % OFFSET_LOG) {
                        *o = self.offset;
                    }
                    self.next_unsent = seq.wrapping_add(1);
                    self.offset += u64::from(payload);
                }
                if let Some(q) = self.inflight.get_mut(dest_index(dest)) {
                    if q.len() >= INFLIGHT_MAX {
                        q.pop_front();
                    }
                    q.push_back(seq);
                }
            }
        }
        self.stats.datagrams += n as u64;
        self.stats.bytes_out += bytes;
        self.last_sent = Some(now);
        if last_of_stream {
            // the last frame of the stream goes out now
            self.end = Some(now);
            if matches!(self.framer, Framer::Mpx(_)) && !self.hurry {
                self.closing_left = CLOSING_HEARTBEATS;
                self.last_closing = Some(now);
            }
        }
        self.last_taken = Some((queue, items));
        let frames = match queue {
            Queue::Urgent => self.urgent.pop_front(n),
            Queue::Data => self.data.pop_front(n),
        };
        Some(Outgoing { dest, frames })
    }

    /// Which queue sends next, how many frames, and where to
    fn plan(&mut self, now: Instant) -> Option<(Queue, usize, Dest)> {
        let window = if self.hurry {
            None
        } else {
            self.flow_limit(now)
        };
        let mut blocked = false;
        for queue in [Queue::Urgent, Queue::Data] {
            let mut n = 0;
            let mut dest = None;
            loop {
                if n == MAX_BATCH {
                    break;
                }
                let q = match queue {
                    Queue::Urgent => &self.urgent,
                    Queue::Data => &self.data,
                };
                let Some(&item) = q.get(n) else {
                    break;
                };
                if let (Kind::Data { seq, .. }, Some(limit)) = (item.kind, window) {
                    if !serial_before(seq, limit) {
                        blocked = n == 0;
                        break;
                    }
                }
                let (d, not_before) = match item.dest {
                    Some(d) => (d, item.not_before),
                    None => {
                        let (d, wait) = self.route(now, item.len(), item.kind);
                        let nb = (wait >= MIN_WAIT && !self.hurry).then(|| now + wait);
                        let q = match queue {
                            Queue::Urgent => &mut self.urgent,
                            Queue::Data => &mut self.data,
                        };
                        if let Some(it) = q.get_mut(n) {
                            it.dest = Some(d);
                            it.not_before = nb;
                        }
                        (d, nb)
                    }
                };
                if not_before.is_some_and(|t| t > now) && !self.hurry {
                    break;
                }
                if let Dest::Path(i) = d {
                    if i < 64 && self.blocked_paths & (1 << i) != 0 {
                        break;
                    }
                }
                match dest {
                    None => dest = Some(d),
                    Some(first) if first != d => break,
                    Some(_) => {}
                }
                n += 1;
            }
            if let (Some(d), true) = (dest, n > 0) {
                if queue == Queue::Data {
                    self.note_blocked(now, false);
                }
                return Some((queue, n, d));
            }
            if queue == Queue::Urgent && self.urgent.front().is_some() {
                // paced or blocked: the data queue waits behind it
                return None;
            }
        }
        if !self.data.is_empty() {
            self.note_blocked(now, blocked);
        }
        None
    }

    /// Where a frame of `len` bytes goes, and how long pacing wants it to wait
    fn route(&mut self, now: Instant, len: usize, kind: Kind) -> (Dest, Duration) {
        if let (Kind::Retransmit, Mode::Stripe, Some(s)) = (kind, self.mode, self.sched.as_ref()) {
            // a repair goes over the live path heard from last, not where
            // the original may have vanished
            if let Some(i) = s.freshest() {
                return (Dest::Path(i), Duration::ZERO);
            }
        }
        match (self.mode, self.sched.as_mut()) {
            (Mode::Stripe, Some(s)) => {
                let (i, wait) = s.pick(now, len);
                (Dest::Path(i), wait)
            }
            (Mode::Redundant, Some(s)) => {
                let mask = s
                    .pick_all(len)
                    .into_iter()
                    .filter(|&i| i < 64)
                    .fold(0u64, |m, i| m | (1 << i));
                (Dest::Paths(mask), Duration::ZERO)
            }
            _ => {
                let wait = self
                    .pacer
                    .as_mut()
                    .map_or(Duration::ZERO, |p| p.delay(now, len));
                (Dest::All, wait)
            }
        }
    }

    /// The flow-control limit now (`None`: not limited); also times out
    /// silent receivers
    fn flow_limit(&mut self, now: Instant) -> Option<u32> {
        let limit = self.flow.as_mut().and_then(|fc| fc.limit(now));
        limit.filter(|_| self.flow_enforce)
    }

    /// Flow control started or stopped holding the stream back
    fn note_blocked(&mut self, now: Instant, blocked: bool) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(t)) => {
                self.stats.flow_wait += now.saturating_duration_since(t);
                self.blocked_since = None;
                self.last_poke = None;
            }
            _ => {}
        }
    }

    /// Sequence number, FIN flag and stream offset a heartbeat carries now
    fn heartbeat_position(&self) -> (u32, bool, u64) {
        let fin_sent = self.finished && self.data.is_empty() && self.end.is_some();
        (self.next_unsent, fin_sent, self.offset)
    }

    /// Queue a heartbeat of the stream (urgent, to every destination)
    fn queue_heartbeat(&mut self, now: Instant) {
        let (seq, fin, offset) = self.heartbeat_position();
        let Framer::Mpx(sender) = &mut self.framer else {
            return;
        };
        let urgent = &mut self.urgent;
        let dest = match (self.mode, &self.sched) {
            (Mode::Fanout, _) | (_, None) => None,
            (_, Some(s)) => Some(Dest::Paths(
                (0..s.len().min(64))
                    .filter(|&i| s.state(i) == Some(PathState::Up))
                    .fold(0u64, |m, i| m | (1 << i)),
            )),
        };
        let dest = match dest {
            Some(Dest::Paths(0)) => None,
            d => d,
        };
        let token = self.guard.token(now);
        let keyed = &mut self.keyed;
        sender.heartbeat(now, seq, fin, offset, token, |f| {
            enqueue(urgent, keyed, now, f, Kind::Control, dest);
        });
        self.last_heartbeat = Some(now);
    }

    fn drain_flow_events(&mut self, now: Instant) {
        let Some(fc) = self.flow.as_mut() else {
            return;
        };
        let mut evs = Vec::new();
        while let Some(ev) = fc.poll_event() {
            evs.push(ev);
        }
        if evs.is_empty() {
            return;
        }
        let d = self.delivery(now);
        let find = |addr: SocketAddr, want: Option<PeerState>| {
            d.receivers
                .iter()
                .rev()
                .find(|r| r.addr == addr && want.is_none_or(|w| r.state == w))
                .copied()
        };
        for ev in evs {
            let out = match ev {
                FlowEvent::Joined(a) => find(a, Some(PeerState::Active)).map(SessionEvent::Joined),
                FlowEvent::TimedOut(a) => {
                    find(a, Some(PeerState::TimedOut)).map(SessionEvent::GivenUp)
                }
                FlowEvent::Cut { addr, lag } => find(addr, Some(PeerState::Cut))
                    .map(|receiver| SessionEvent::Cut { receiver, lag }),
            };
            if let Some(e) = out {
                self.events.push_back(e);
            }
        }
    }

    fn note_path(&mut self, path: usize, was: Option<PathState>, cause: PathCause) {
        let is = self.sched.as_ref().and_then(|s| s.state(path));
        if let (true, Some(state)) = (was != is, is) {
            self.events
                .push_back(SessionEvent::Path { path, state, cause });
        }
    }

    /// The next thing to log, if any
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Counters so far
    pub fn stats(&self) -> SessionStats {
        let mut s = self.stats;
        match &self.framer {
            Framer::Raw(p) => s.split_lines = p.split_lines(),
            Framer::Mpx(m) => {
                s.split_lines = m.split_lines();
                s.sender = Some(m.stats());
                s.fec = m.fec_stats();
            }
        }
        s.flow = self.flow.as_ref().map(FlowControl::stats);
        if let Some(k) = &self.keyed {
            s.auth = Some(k.opener.stats());
            s.sealed = Some(k.sealer.stats());
        }
        s
    }

    /// Per-path counters and states (multipath modes; empty otherwise)
    pub fn path_stats(&self) -> Vec<(PathStats, PathState)> {
        self.sched.as_ref().map_or_else(Vec::new, |s| {
            s.stats()
                .into_iter()
                .enumerate()
                .map(|(i, st)| (st, s.state(i).unwrap_or(PathState::Up)))
                .collect()
        })
    }

    /// Frames and bytes waiting to be sent, and the memory the queues hold
    pub fn queued(&self) -> (usize, usize, usize) {
        (
            self.urgent.len() + self.data.len(),
            self.urgent.bytes() + self.data.bytes(),
            self.urgent.capacity() + self.data.capacity() + self.scratch.capacity(),
        )
    }
}

/// Queue a frame the mpx sender made: DATA frames carry their sequence
/// number (counted from `seq`), everything else is FEC
fn push_frame(
    q: &mut FrameQueue,
    keyed: &mut Option<Keyed>,
    now: Instant,
    frame: &[u8],
    seq: &mut u32,
) {
    let is_data = frame.get(2).is_some_and(|b| b & 0x0f == 1);
    if is_data {
        let payload = u32::try_from(frame.len().saturating_sub(HEADER_LEN)).unwrap_or(u32::MAX);
        let kind = Kind::Data { seq: *seq, payload };
        enqueue(q, keyed, now, frame, kind, None);
        *seq = seq.wrapping_add(1);
    } else {
        enqueue(q, keyed, now, frame, Kind::Fec, None);
    }
}

/// Queue a frame, sealed when the session is keyed (a frame that cannot
/// be sealed is counted by the sealer and not sent)
fn enqueue(
    q: &mut FrameQueue,
    keyed: &mut Option<Keyed>,
    now: Instant,
    frame: &[u8],
    kind: Kind,
    dest: Option<Dest>,
) {
    match keyed {
        None => q.push(frame, kind, dest),
        Some(k) => {
            let wall = k.wall(now);
            q.push_sealed(frame, OVERHEAD, kind, dest, |buf, len| {
                k.sealer.seal(wall, buf, len).ok()
            });
        }
    }
}

/// The path index of a single-path destination (`usize::MAX` otherwise)
fn dest_index(dest: Dest) -> usize {
    match dest {
        Dest::Path(i) => i,
        _ => usize::MAX,
    }
}

/// `a` is before `b` in 32-bit serial arithmetic
fn serial_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Credit a pacer may bank: 4 datagrams, or 1 ms of the rate if more. A
/// timer overshoots by tens of microseconds; with a bucket of only 4
/// datagrams the credit earned meanwhile was capped away, and the client
/// reached 58% of a 1500mbit rate (872 Mbit/s, 128 MiB, loopback)
fn pacer_burst(rate: Rate, max_datagram: usize) -> usize {
    let per_ms = usize::try_from(rate.bytes_per_sec() / 1000).unwrap_or(usize::MAX);
    (4 * max_datagram).max(per_ms)
}

#[cfg(test)]
mod tests;
