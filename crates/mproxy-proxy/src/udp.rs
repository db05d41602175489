//! UDP inputs: one mio loop drains every listening socket

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::net::{recv_meta, RECV_BUF_LEN};
use mproxy_common::stats::LogLimiter;

use crate::{Shared, UdpInputStats};

pub(crate) struct Input {
    pub(crate) spec: String,
    sock: UdpSocket,
    pub(crate) stats: Arc<UdpInputStats>,
    last_drops: u32,
}

impl Input {
    pub(crate) fn new(spec: String, sock: UdpSocket) -> Self {
        Self {
            spec,
            sock,
            stats: Arc::default(),
            last_drops: 0,
        }
    }
}

pub(crate) fn run(
    mut inputs: Vec<Input>,
    shared: &Shared,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let mut poll = Poll::new().context("creating poller")?;
    for (i, input) in inputs.iter().enumerate() {
        poll.registry()
            .register(
                &mut SourceFd(&input.sock.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )
            .context("registering UDP socket")?;
    }
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let log = LogLimiter::default();
    while !shutdown.is_set() {
        match poll.poll(&mut events, Some(Duration::from_millis(200))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("polling UDP sockets"),
        }
        for ev in events.iter() {
            let Some(input) = inputs.get_mut(ev.token().0) else {
                continue;
            };
            drain(input, &mut buf, shared, &log);
        }
    }
    Ok(())
}

fn drain(input: &mut Input, buf: &mut [u8], shared: &Shared, log: &LogLimiter) {
    loop {
        let meta = match recv_meta(&input.sock, buf) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                input.stats.recv_errors.inc();
                if let Some(n) = log.allow() {
                    tracing::warn!(listen = %input.spec, suppressed = n, "receive failed: {e}");
                }
                return;
            }
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
        shared.forward(&buf[..meta.len]);
    }
}
