//! Stream a file, device or stdin to UDP servers, unicast or multicast
//!
//! The client reads its input, packs it into datagrams (whole lines by
//! default, see [`mproxy_common::pack`]) and sends every datagram to every
//! `--server-addr`. Payloads are raw bytes, wire-compatible with the
//! original `mproxy-client` 0.1.x: any UDP receiver (socat, the original
//! `mproxy-server`, netcat) gets the input back by concatenating them.
//! With `--mpx` the stream is framed (sequence numbers, repair, flow
//! control, FEC) and may be striped over several paths.
//!
//! The protocol decisions live in [`mproxy_common::mpx::SenderSession`]
//! (sans-IO); this crate opens the input and the sockets and runs one mio
//! event loop over them.
//!
//! ```no_run
//! use mproxy_client::{Client, Config};
//! use mproxy_common::cli::Shutdown;
//!
//! let config = Config {
//!     servers: vec!["127.0.0.1:9920".parse()?],
//!     ..Config::new("telemetry.csv")
//! };
//! let summary = Client::new(config)?.run(&Shutdown::new())?;
//! eprintln!("{summary}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cli;
mod driver;
mod error;
mod input;
mod out;
mod summary;

pub use cli::{Cli, Config, MaxDatagram, AUTO_MAX_DATAGRAM, DEFAULT_MAX_DATAGRAM};
pub use error::Error;
pub use mproxy_common::mpx::Mode;
pub use summary::Summary;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use mproxy_common::cli::Shutdown;
use mproxy_common::io::Tee;
use mproxy_common::mpx::auth::OpenerConfig;
use mproxy_common::mpx::{new_session_id, PathConfig, SenderSession, SessionConfig, SessionKeys};

use input::Input;
use out::Out;

/// `--max-datagram` as bytes: `auto` is the smallest path MTU payload
/// over the destinations, at most [`AUTO_MAX_DATAGRAM`] (logged)
fn resolve_max_datagram(config: &Config) -> Result<usize, Error> {
    let MaxDatagram::Bytes(n) = config.max_datagram else {
        let mut smallest = AUTO_MAX_DATAGRAM;
        for spec in &config.servers {
            let bad = |reason: String| Error::Destination {
                spec: spec.to_string(),
                reason,
            };
            let addr = spec.endpoint.resolve().map_err(|e| bad(e.to_string()))?;
            let path = mproxy_common::net::path_payload(addr, &config.socket)
                .map_err(|e| bad(format!("{e:#}")))?;
            tracing::debug!(dest = %spec, path_payload = path, "path MTU");
            smallest = smallest.min(path);
        }
        tracing::info!(
            max_datagram = smallest,
            "--max-datagram auto: the smallest path MTU payload, at most {AUTO_MAX_DATAGRAM}"
        );
        return Ok(smallest);
    };
    Ok(n)
}

/// Heartbeat interval of an idle mpx stream
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A client with its input open and its sockets bound
pub struct Client {
    config: Config,
    input: Input,
    out: Out,
    /// `--max-datagram` resolved
    max_datagram: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish()
    }
}

impl Client {
    /// Open the input, resolve the destinations and bind the sockets
    ///
    /// # Errors
    /// A missing or unreadable input, an unresolvable destination, or a
    /// socket that cannot be set up; each names the culprit
    /// ([`Error::is_bad_input`]).
    pub fn new(config: Config) -> Result<Self, Error> {
        let input = Input::open(&config.path)?;
        let out = if config.mode == Mode::Fanout {
            Out::fanout(&config.servers, &config.socket)?
        } else {
            Out::paths(&config.servers, &config.socket)?
        };
        let max_datagram = resolve_max_datagram(&config)?;
        Ok(Self {
            config,
            input,
            out,
            max_datagram,
        })
    }

    /// Stream the input until EOF (or shutdown), then finish the stream
    /// and summarize
    ///
    /// # Errors
    /// A read error on the input, or an event loop that cannot be set up.
    /// Send errors are counted, not returned.
    pub fn run(self, shutdown: &Shutdown) -> Result<Summary, Error> {
        let start = Instant::now();
        let c = &self.config;
        let mpx = c.mpx_stream.map(|id| (new_session_id(), id));
        if let Some((s, id)) = mpx {
            tracing::info!(session = format_args!("{s:016x}"), stream = id, mode = %c.mode, "mpx framing on");
        }
        if let (Some(f), Some(_)) = (c.fec, mpx) {
            tracing::info!(
                overhead_percent = f.overhead_percent,
                block_frames = f.block_frames,
                "FEC on"
            );
        }
        let keys = c.keys.clone().map(|(keyring, suite)| SessionKeys {
            keyring,
            suite,
            opener: OpenerConfig::default(),
            wall_start: SystemTime::now(),
        });
        if let Some(k) = &keys {
            tracing::info!(
                key = %k.keyring.first().id(),
                cipher = k.suite.aead.name(),
                encrypt = k.suite.encrypt,
                "keyed mpx"
            );
        }
        let session = SenderSession::new(
            SessionConfig {
                mpx,
                framing: c.framing,
                max_datagram: self.max_datagram,
                heartbeat_interval: HEARTBEAT_INTERVAL,
                repair_buffer: c.repair_buffer,
                fec: c.fec,
                flow: c.flow.clone(),
                flow_control: c.flow_control,
                confirm: c.confirm,
                keys,
                token_secret: new_session_id(),
                rate: c.rate,
                mode: c.mode,
                paths: c
                    .servers
                    .iter()
                    .map(|p| PathConfig {
                        weight: p.weight,
                        rate: p.rate,
                    })
                    .collect(),
                linger: c.linger,
            },
            start,
        )
        .map_err(|e| Error::Config(format!("--key-file: {e}")))?;
        let driver = driver::Driver {
            input: self.input,
            path: c.path.clone(),
            out: self.out,
            tee: Tee::new(c.tee),
            stats_interval: c.stats_interval,
            shutdown,
        };
        driver.run(session, start)
    }
}
