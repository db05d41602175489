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
use mproxy_common::net::{DatagramBatch, Drain, Drained, RecvBatch, MAX_UDP_PAYLOAD, RECV_BUF_LEN};
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
    /// Budget, kernel-drop total and logs of this socket's receive side
    drain: Drain,
    /// Frames raw datagrams as one mpx stream (with --mpx)
    encoder: Option<Encoder>,
}

impl Input {
    /// An input reading `sock`, which takes coalesced buffers if `gro`
    pub(crate) fn new(spec: String, sock: UdpSocket, gro: bool) -> Self {
        Self {
            drain: Drain::new(spec.clone()).with_gro(gro),
            spec,
            sock,
            stats: Arc::default(),
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
                *p = drain(input, sessions, &mut batch, &mut out, shared);
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
    for input in &mut inputs {
        input.drain.sync_kernel_drops(&input.sock, &input.stats);
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

/// Forward what is queued on `input`, a batch per system call, up to the
/// drain's budget (under a constant flood the socket never runs dry, and
/// the loop must still see shutdown requests, timers and the other
/// inputs); true if the budget ran out first (more may be queued: mio's
/// readiness is edge-triggered, so the caller comes back without waiting).
/// With `sessions` (the map and this input's index), the mpx senders whose
/// frames pass are remembered so their receivers' control frames can be
/// sent back.
fn drain(
    input: &mut Input,
    mut sessions: Option<(&mut SessionMap, usize)>,
    batch: &mut RecvBatch,
    out: &mut DatagramBatch,
    shared: &Shared,
) -> bool {
    let encoder = &mut input.encoder;
    let drained = input
        .drain
        .run(&input.sock, batch, &input.stats, |datagrams| {
            let now = Instant::now();
            // without --mpx framing, datagrams are forwarded from the
            // receive buffers themselves (no copy); framing builds new ones
            // in `out`
            let mut direct: Vec<&[u8]> = Vec::new();
            for d in datagrams {
                match encoder.as_mut() {
                    // frames (valid or not) pass untouched; only raw payloads are framed
                    Some(enc) if matches!(classify(d.data), Datagram::Raw(_)) => {
                        enc.push(now, d.data, |f| out.push(f));
                    }
                    _ => {
                        if let Some((map, idx)) = sessions.as_mut() {
                            if let Some(s) = control::sender_session(d.data) {
                                map.learn(s, d.from, *idx, d.data.len(), now);
                            }
                        }
                        if encoder.is_some() {
                            out.push(d.data);
                        } else {
                            direct.push(d.data);
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
        });
    drained == Drained::More
}
