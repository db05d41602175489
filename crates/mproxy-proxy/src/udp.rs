//! UDP inputs: one mio loop drains every listening socket

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::Encoder;
use mproxy_common::net::{DatagramBatch, RecvBatch, MAX_UDP_PAYLOAD, RECV_BUF_LEN};
use mproxy_common::pack::Framing;
use mproxy_common::stats::LogLimiter;
use mproxy_common::wire::{classify, Datagram};

use crate::control::{self, ControlStats, SessionMap, Verdict};
use crate::{Shared, UdpInputStats};

/// Longest wait in the loop before timers and signals are checked
const TICK: Duration = Duration::from_millis(200);
/// Heartbeat interval of an idle mpx stream
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Poller tokens of the downstream (`net::Fanout`) sockets, where the
/// receivers' control frames arrive: counted down from the top, clear of
/// the inputs' tokens
const CONTROL_TOKEN: usize = usize::MAX - 2;

/// Most control frames relayed per call, so a flood on the downstream
/// sockets cannot starve the inputs
const CONTROL_BUDGET: usize = 256;

/// Relays receivers' control frames back to the mpx senders
pub(crate) struct Relay {
    sessions: SessionMap,
    stats: Arc<ControlStats>,
    /// This proxy's own session (`--mpx`), whose frames are not relayed
    own: Option<u64>,
    buf: Vec<u8>,
    log: LogLimiter,
}

impl Relay {
    pub(crate) fn new(stats: Arc<ControlStats>, own: Option<u64>) -> Self {
        Self {
            sessions: SessionMap::new(control::MAX_SESSIONS),
            stats,
            own,
            buf: vec![0; RECV_BUF_LEN],
            log: LogLimiter::default(),
        }
    }

    /// Relay what waits on the downstream sockets (at most
    /// [`CONTROL_BUDGET`]); true if the budget ran out, more may be queued
    fn pump(&mut self, inputs: &[Input], shared: &Shared) -> bool {
        let now = Instant::now();
        let mut more = true;
        for _ in 0..CONTROL_BUDGET {
            let Some((n, _from)) = shared.fanout.recv_control(&mut self.buf) else {
                more = false;
                break;
            };
            let Some(d) = self.buf.get(..n) else {
                continue;
            };
            let Verdict::Relay(route, t) =
                control::judge(d, &mut self.sessions, self.own, &self.stats, now)
            else {
                continue;
            };
            match inputs.get(route.input) {
                Some(input) => {
                    if control::send_back(&input.sock, d, route.from, &self.stats, &self.log) {
                        self.stats.sent(t);
                    }
                }
                None => self.stats.send_errors.inc(),
            }
        }
        self.stats.sessions.max(self.sessions.learned);
        self.stats.evicted.max(self.sessions.evicted);
        more
    }
}

pub(crate) struct Input {
    pub(crate) spec: String,
    sock: UdpSocket,
    pub(crate) stats: Arc<UdpInputStats>,
    last_drops: u32,
    /// Frames raw datagrams as one mpx stream (with --mpx)
    encoder: Option<Encoder>,
}

impl Input {
    pub(crate) fn new(spec: String, sock: UdpSocket) -> Self {
        Self {
            spec,
            sock,
            stats: Arc::default(),
            last_drops: 0,
            encoder: None,
        }
    }
}

pub(crate) fn run(
    mut inputs: Vec<Input>,
    shared: &Shared,
    mut relay: Option<Relay>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut poll = Poll::new().context("creating poller")?;
    for (i, input) in inputs.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut SourceFd(&input.sock.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )
            .context("registering UDP socket")?;
        if let Some(id) = shared.new_stream() {
            tracing::info!(listen = %input.spec, stream = id.1, "raw datagrams framed as mpx stream");
            // one raw datagram per frame whenever it fits
            input.encoder = Some(Encoder::new(
                Some(id),
                Framing::Bytes,
                MAX_UDP_PAYLOAD,
                HEARTBEAT,
            ));
        }
    }
    if relay.is_some() {
        for (k, sock) in shared.fanout.sockets().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&sock.as_raw_fd()),
                    Token(CONTROL_TOKEN + k),
                    Interest::READABLE,
                )
                .context("registering downstream socket for control frames")?;
        }
    }
    let mut events = Events::with_capacity(64);
    let mut batch = RecvBatch::new(BATCH, RECV_BUF_LEN);
    let mut out = DatagramBatch::default();
    let log = LogLimiter::default();
    let forward = |f: &[u8]| shared.forward(f);
    // inputs whose last drain stopped at the budget, data still queued
    let mut pending = vec![false; inputs.len()];
    // control frames left queued when the relay's budget ran out (the
    // poller reports edges: nothing new would wake us for them)
    let mut control_pending = false;
    while !shutdown.is_set() {
        let timeout = if control_pending || pending.iter().any(|p| *p) {
            Duration::ZERO
        } else {
            let now = Instant::now();
            inputs
                .iter()
                .filter_map(|i| i.encoder.as_ref()?.poll_timeout())
                .min()
                .map_or(TICK, |t| t.saturating_duration_since(now))
                .min(TICK)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("polling UDP sockets"),
        }
        for ev in events.iter() {
            if let Some(p) = pending.get_mut(ev.token().0) {
                *p = true;
            }
        }
        for (i, (input, p)) in inputs.iter_mut().zip(pending.iter_mut()).enumerate() {
            if *p {
                let sessions = relay.as_mut().map(|r| (&mut r.sessions, i));
                *p = drain(input, sessions, &mut batch, &mut out, shared, &log);
            }
        }
        // after every turn, not only on the sockets' events: cheap (one
        // MSG_DONTWAIT read when nothing is there)
        if let Some(r) = relay.as_mut() {
            control_pending = r.pump(&inputs, shared);
        }
        let now = Instant::now();
        for input in &mut inputs {
            if let Some(enc) = input.encoder.as_mut() {
                enc.handle_timeout(now, forward);
            }
        }
    }
    // end the mpx streams: FIN, then the closing heartbeats
    for input in &mut inputs {
        if let Some(enc) = input.encoder.as_mut() {
            enc.finish(Instant::now(), forward);
        }
    }
    while let Some(at) = inputs
        .iter()
        .filter_map(|i| i.encoder.as_ref()?.poll_timeout())
        .min()
    {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        for input in &mut inputs {
            if let Some(enc) = input.encoder.as_mut() {
                enc.handle_timeout(now, forward);
            }
        }
    }
    Ok(())
}

/// Datagrams received (recvmmsg) and forwarded (sendmmsg) per system call
const BATCH: usize = 32;

/// Most datagrams taken from one socket per readiness event: under a
/// constant flood the socket never runs dry, and the loop must still see
/// shutdown requests, timers and the other inputs. mio's readiness is
/// edge-triggered, so a socket left with data queued is drained again
/// without waiting for a new event.
const DRAIN_BUDGET: usize = 1024;

/// Forward what is queued on `input`, a batch per system call; true if the
/// budget ran out first (more may be queued). With `sessions` (the map and
/// this input's index), the mpx senders whose frames pass are remembered
/// so their receivers' control frames can be sent back.
fn drain(
    input: &mut Input,
    mut sessions: Option<(&mut SessionMap, usize)>,
    batch: &mut RecvBatch,
    out: &mut DatagramBatch,
    shared: &Shared,
    log: &LogLimiter,
) -> bool {
    let mut taken = 0;
    while taken < DRAIN_BUDGET {
        let n = match batch.recv(&input.sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                input.stats.recv_errors.inc();
                if let Some(n) = log.allow() {
                    tracing::warn!(listen = %input.spec, suppressed = n, "receive failed: {e}");
                }
                return false;
            }
        };
        taken += n.max(1);
        let now = Instant::now();
        // without --mpx framing, datagrams are forwarded from the receive
        // buffers themselves (no copy); framing builds new ones in `out`
        let mut direct: Vec<&[u8]> = Vec::new();
        for i in 0..n {
            let Some((data, meta)) = batch.get(i) else {
                continue;
            };
            input.stats.datagrams.inc();
            input.stats.bytes.add(meta.len as u64);
            if meta.truncated() {
                input.stats.truncated.inc();
                if let Some(n) = log.allow() {
                    tracing::warn!(listen = %input.spec, from = %meta.from, suppressed = n,
                        "datagram of {} bytes truncated to {}", meta.wire_len, meta.len);
                }
            }
            if let Some(d) = meta.kernel_drops {
                if d != input.last_drops {
                    input
                        .stats
                        .kernel_drops
                        .add(u64::from(d.wrapping_sub(input.last_drops)));
                    input.last_drops = d;
                }
            }
            match input.encoder.as_mut() {
                // frames (valid or not) pass untouched; only raw payloads are framed
                Some(enc) if matches!(classify(data), Datagram::Raw(_)) => {
                    enc.push(now, data, |f| out.push(f));
                }
                // nothing to forward for an empty datagram
                _ if data.is_empty() => {}
                _ => {
                    if let Some((map, idx)) = sessions.as_mut() {
                        if let Some(s) = control::sender_session(data) {
                            map.learn(s, meta.from, *idx, data.len(), now);
                        }
                    }
                    if input.encoder.is_some() {
                        out.push(data);
                    } else {
                        direct.push(data);
                    }
                }
            }
        }
        if !direct.is_empty() {
            shared.forward_many(&direct);
        }
        if !out.is_empty() {
            shared.forward_many(&out.frames());
            out.clear();
        }
        if batch.messages() < BATCH {
            return false;
        }
    }
    true
}
