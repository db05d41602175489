//! TCP upstreams: one thread each, reconnecting with backoff and jitter

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mproxy_common::backoff::Backoff;
use mproxy_common::cli::Shutdown;
use mproxy_common::io::sleep_unless;
use mproxy_common::mpx::Encoder;
use mproxy_common::pack::Framing;
use mproxy_common::stats::{human_bytes, Counter, LogLimiter};
use mproxy_common::Endpoint;

use crate::Shared;

/// How long one connect attempt may take
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat interval of an idle mpx stream
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a blocked read wakes up to check for shutdown
const READ_TICK: Duration = Duration::from_millis(200);

/// Counters of one TCP upstream
#[derive(Debug)]
pub struct UpstreamStats {
    /// The upstream as given
    pub spec: String,
    /// Successful connections
    pub connects: Counter,
    /// Failed attempts (resolve, connect)
    pub connect_failures: Counter,
    /// Connections that ended (EOF, reset, error)
    pub disconnects: Counter,
    /// Bytes read
    pub bytes: Counter,
    /// Datagrams sent from this upstream
    pub datagrams: Counter,
}

impl UpstreamStats {
    pub(crate) fn new(spec: String) -> Self {
        Self {
            spec,
            connects: Counter::default(),
            connect_failures: Counter::default(),
            disconnects: Counter::default(),
            bytes: Counter::default(),
            datagrams: Counter::default(),
        }
    }
}

impl fmt::Display for UpstreamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tcp {}: {} connects, {} failed attempts, {} disconnects, {} in {} datagrams",
            self.spec,
            self.connects.get(),
            self.connect_failures.get(),
            self.disconnects.get(),
            human_bytes(self.bytes.get()),
            self.datagrams.get()
        )
    }
}

pub(crate) struct Upstream {
    pub(crate) endpoint: Endpoint,
    pub(crate) framing: Framing,
    pub(crate) max_datagram: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<UpstreamStats>,
    pub(crate) shutdown: Shutdown,
}

impl Upstream {
    pub(crate) fn run(self) {
        let mut backoff = Backoff::new(
            self.reconnect_min,
            self.reconnect_max,
            Backoff::entropy_seed() ^ self.stats.spec.len() as u64,
        );
        let log = LogLimiter::default();
        let mut buf = vec![0u8; 64 * 1024];
        while !self.shutdown.is_set() {
            match self.connect() {
                Ok(stream) => {
                    self.stats.connects.inc();
                    tracing::info!(upstream = %self.endpoint, "connected");
                    let got_data = self.pump(stream, &mut buf);
                    self.stats.disconnects.inc();
                    if got_data {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    self.stats.connect_failures.inc();
                    if let Some(n) = log.allow() {
                        tracing::warn!(upstream = %self.endpoint, suppressed = n, "{e}");
                    }
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(upstream = %self.endpoint, ?delay, "reconnecting after delay");
            if !sleep_unless(&self.shutdown, delay) {
                break;
            }
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addr = self
            .endpoint
            .resolve()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
        stream.set_read_timeout(Some(READ_TICK))?;
        Ok(stream)
    }

    /// Forward one connection until it ends; true if any data arrived
    fn pump(&self, mut stream: TcpStream, buf: &mut [u8]) -> bool {
        let mut encoder = Encoder::new(
            self.shared.new_stream(),
            self.framing,
            self.max_datagram,
            HEARTBEAT,
        );
        let started = Instant::now();
        let mut total = 0u64;
        let mut send = |d: &[u8]| {
            self.stats.datagrams.inc();
            self.shared.forward(d);
        };
        let reason = loop {
            if self.shutdown.is_set() {
                break "shutting down".to_string();
            }
            match stream.read(buf) {
                Ok(0) => break "closed by upstream".to_string(),
                Ok(n) => {
                    total += n as u64;
                    self.stats.bytes.add(n as u64);
                    encoder.push(Instant::now(), &buf[..n], &mut send);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    encoder.handle_timeout(Instant::now(), &mut send);
                }
                Err(e) => break format!("read failed: {e}"),
            }
        };
        encoder.finish(Instant::now(), &mut send);
        // mpx: the closing heartbeats (a few tens of milliseconds)
        while let Some(at) = encoder.poll_timeout() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            encoder.handle_timeout(Instant::now(), &mut send);
        }
        tracing::info!(
            upstream = %self.endpoint,
            "disconnected ({reason}) after {:.1}s and {}",
            started.elapsed().as_secs_f64(),
            human_bytes(total)
        );
        total > 0
    }
}
