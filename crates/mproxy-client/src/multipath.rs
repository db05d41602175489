//! Stripe and redundant modes: one socket per path, a scheduler, feedback

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::{Control, MAX_CONTROL};
use anyhow::Context as _;
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::{PathConfig, PathState, Scheduler, SchedulerConfig, Sender};
use mproxy_common::net::bind_sender;
use mproxy_common::rate::Rate;
use mproxy_common::stats::LogLimiter;
use mproxy_common::wire::{classify, Datagram, FeedbackReport, FrameType};
use mproxy_common::{PathSpec, SocketOptions};

/// How a client uses several `--server-addr`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Every server gets a full copy (independent receivers)
    #[default]
    Fanout,
    /// Frames are spread over the paths by weight; one receiver reassembles
    Stripe,
    /// Every frame goes over every path; the receiver keeps the first copy
    Redundant,
}

struct PathSock {
    spec: String,
    addr: SocketAddr,
    sock: UdpSocket,
    send_errors: u64,
    log: LogLimiter,
}

/// The paths of a striped or redundant stream
pub(crate) struct Multipath {
    mode: Mode,
    paths: Vec<PathSock>,
    sched: Scheduler,
    buf: Vec<u8>,
    /// Feedback frames that did not parse or named another session
    pub(crate) bad_feedback: u64,
    session: u64,
    sent_since_poll: u32,
    control: Vec<Control>,
    /// Pacing sleeps end on a shutdown request
    shutdown: Shutdown,
}

impl Multipath {
    pub(crate) fn new(
        mode: Mode,
        specs: &[PathSpec],
        opts: &SocketOptions,
        total_rate: Option<Rate>,
        session: u64,
        now: Instant,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let mut paths = Vec::with_capacity(specs.len());
        for spec in specs {
            let addr = spec
                .endpoint
                .resolve()
                .with_context(|| format!("--server-addr {spec}"))?;
            // one socket per path, so feedback tells which path it is about
            let sock = bind_sender(addr.is_ipv6(), opts)
                .with_context(|| format!("opening socket for path {spec}"))?;
            sock.set_nonblocking(true)
                .with_context(|| format!("socket for path {spec}"))?;
            paths.push(PathSock {
                spec: spec.to_string(),
                addr,
                sock,
                send_errors: 0,
                log: LogLimiter::default(),
            });
        }
        let configs: Vec<PathConfig> = specs
            .iter()
            .map(|s| PathConfig {
                weight: s.weight,
                rate: s.rate,
            })
            .collect();
        let cfg = SchedulerConfig {
            // redundant: every path carries everything at the full rate
            total_rate: if mode == Mode::Stripe {
                total_rate
            } else {
                None
            },
            ..SchedulerConfig::default()
        };
        Ok(Self {
            mode,
            paths,
            sched: Scheduler::new(&configs, cfg, now),
            buf: vec![0u8; 2048],
            bad_feedback: 0,
            session,
            sent_since_poll: 0,
            control: Vec::new(),
            shutdown,
        })
    }

    /// Time zero of the probe timestamps (give it to the [`Sender`])
    pub(crate) fn epoch_for(&self, now: Instant) -> Instant {
        now.checked_sub(Duration::from_micros(self.sched.timestamp_us(now)))
            .unwrap_or(now)
    }

    /// Send on path `i`; false if the path failed locally (network down,
    /// no route), which also marks it dead in the scheduler
    fn send_on(&mut self, i: usize, frame: &[u8]) -> bool {
        let Some(p) = self.paths.get_mut(i) else {
            return false;
        };
        let mut tries = 0;
        loop {
            match p.sock.send_to(frame, p.addr) {
                Ok(_) => {
                    self.sched.on_send_success(i);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if tries < 200
                        && (e.kind() == io::ErrorKind::WouldBlock
                            || e.raw_os_error() == Some(libc::ENOBUFS)) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => {
                    p.send_errors += 1;
                    if let Some(n) = p.log.allow() {
                        tracing::warn!(path = %p.spec, suppressed = n, "send failed: {e}");
                    }
                    let local_failure = matches!(
                        e.raw_os_error(),
                        Some(
                            libc::ENETDOWN
                                | libc::ENETUNREACH
                                | libc::EHOSTUNREACH
                                | libc::EADDRNOTAVAIL
                        )
                    );
                    if local_failure && self.sched.state(i) == Some(PathState::Up) {
                        self.sched.on_send_failure(i);
                        tracing::warn!(path = %p.spec, "path is now Dead (local send failure)");
                    }
                    return false;
                }
            }
        }
    }

    /// Send one frame of the stream according to the mode
    pub(crate) fn send(&mut self, frame: &[u8]) {
        match self.mode {
            Mode::Stripe | Mode::Fanout => {
                // a frame whose path fails locally is re-sent on another
                // path (the failed one is dead now); at most once per path
                for _ in 0..self.paths.len() {
                    let (i, wait) = self.sched.pick(Instant::now(), frame.len());
                    // the pacer keeps the debt, so skipping short sleeps
                    // only batches them (sleep granularity is ~60 us)
                    if wait >= crate::MIN_SLEEP && !self.shutdown.is_set() {
                        mproxy_common::io::sleep_unless(&self.shutdown, wait);
                    }
                    if self.send_on(i, frame) {
                        break;
                    }
                }
            }
            Mode::Redundant => {
                for i in self.sched.pick_all(frame.len()) {
                    let _ = self.send_on(i, frame);
                }
            }
        }
        self.sent_since_poll += 1;
        if self.sent_since_poll >= 32 {
            self.sent_since_poll = 0;
            self.poll_feedback();
        }
    }

    /// Read any feedback that arrived (never blocks)
    pub(crate) fn poll_feedback(&mut self) {
        let now = Instant::now();
        for i in 0..self.paths.len() {
            while let Ok((n, from)) = self.paths[i].sock.recv_from(&mut self.buf) {
                match classify(&self.buf[..n]) {
                    Datagram::Mpx(r, p)
                        if r.frame_type == FrameType::Feedback && r.session == self.session =>
                    {
                        match FeedbackReport::parse(p) {
                            Some(report) => self.sched.on_feedback(now, i, &report),
                            None => self.bad_feedback += 1,
                        }
                    }
                    Datagram::Mpx(r, p) => match Control::from_frame(from, &r, p, self.session) {
                        Some(c) if self.control.len() < MAX_CONTROL => self.control.push(c),
                        Some(_) => {}
                        None => self.bad_feedback += 1,
                    },
                    _ => self.bad_feedback += 1,
                }
            }
        }
    }

    /// NACK and WINDOW frames received since the last call
    pub(crate) fn take_control(&mut self) -> Vec<Control> {
        std::mem::take(&mut self.control)
    }

    /// Probes and health checks; call when [`Multipath::poll_timeout`] is due
    pub(crate) fn handle_timeout(&mut self, now: Instant, sender: &mut Sender) {
        self.poll_feedback();
        let before: Vec<_> = (0..self.paths.len()).map(|i| self.sched.state(i)).collect();
        self.sched.handle_timeout(now);
        for (i, was) in before.iter().enumerate() {
            let is = self.sched.state(i);
            if let (true, Some(state)) = (*was != is, is) {
                tracing::warn!(path = %self.paths[i].spec, "path is now {state:?}");
            }
        }
        while let Some(i) = self.sched.poll_probe(now) {
            let mut probe = Vec::new();
            sender.probe(now, |f| probe.extend_from_slice(f));
            let _ = self.send_on(i, &probe);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.sched.poll_timeout()
    }

    /// One line per path for the summary and periodic stats
    pub(crate) fn summary(&self) -> String {
        self.paths
            .iter()
            .zip(self.sched.stats())
            .enumerate()
            .map(|(i, (p, st))| {
                format!(
                    "path {} {}: {:?}, {st}, {} send errors",
                    i,
                    p.spec,
                    self.sched
                        .state(i)
                        .unwrap_or(mproxy_common::mpx::PathState::Up),
                    p.send_errors
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn send_errors(&self) -> u64 {
        self.paths.iter().map(|p| p.send_errors).sum()
    }
}
