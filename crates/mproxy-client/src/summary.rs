//! What a finished run did, and how it is printed

use std::fmt;
use std::time::Duration;

use mproxy_common::cli::EXIT_UNCONFIRMED;
use mproxy_common::mpx::{Delivery, FecEncoderStats, FlowStats, SenderStats};
use mproxy_common::stats::{human_bytes, human_rate};

/// What a finished run did
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Bytes read from the input
    pub bytes_read: u64,
    /// Datagrams produced (each sent to every destination)
    pub datagrams: u64,
    /// Lines longer than the datagram limit that had to be split
    pub split_lines: u64,
    /// Failed sends over all destinations
    pub send_errors: u64,
    /// Per-destination counters, one entry per destination
    pub destinations: String,
    /// mpx session id, if framing was on
    pub session: Option<u64>,
    /// mpx sender counters (repairs included), if framing was on
    pub mpx: Option<SenderStats>,
    /// Flow-control counters, if it was on
    pub flow: Option<FlowStats>,
    /// Time spent held back by receivers' windows
    pub flow_wait: Duration,
    /// FEC counters, if FEC was on
    pub fec: Option<FecEncoderStats>,
    /// Wall time of the run
    pub elapsed: Duration,
    /// True if the run ended on a shutdown request rather than EOF
    pub interrupted: bool,
    /// mpx: which receivers confirmed the end, and where the others stopped
    pub delivery: Option<Delivery>,
    /// Datagrams the kernel took for at least one destination (0 with
    /// destinations: nothing could be sent)
    pub delivered_any: bool,
}

impl Summary {
    /// The exit code this run deserves: 0, or [`EXIT_UNCONFIRMED`] when a
    /// receiver did not confirm the end (`--confirm`) or no datagram could
    /// be sent at all
    pub fn exit_code(&self) -> u8 {
        let unconfirmed = self.delivery.as_ref().is_some_and(|d| !d.confirmed());
        if unconfirmed || !self.delivered_any {
            EXIT_UNCONFIRMED
        } else {
            0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read {} in {:.2}s ({}), {} datagrams{}{}, {} lines split, {} send errors{}{}",
            if self.interrupted {
                "interrupted"
            } else {
                "done"
            },
            human_bytes(self.bytes_read),
            self.elapsed.as_secs_f64(),
            human_rate(self.bytes_read, self.elapsed),
            self.datagrams,
            match (self.session, self.mpx) {
                (Some(s), Some(m)) => format!(
                    " (mpx session {s:016x}; {} NACKs, {} frames re-sent, {} unrecoverable{})",
                    m.nacks,
                    m.retransmitted,
                    m.unrecoverable,
                    self.flow
                        .map(|fl| format!(
                            "; flow control: {} windows, held back {:.2}s, {} receivers timed out, {} cut off",
                            fl.windows,
                            self.flow_wait.as_secs_f64(),
                            fl.timed_out,
                            fl.cut
                        ))
                        .unwrap_or_default()
                ),
                (Some(s), None) => format!(" (mpx session {s:016x})"),
                _ => String::new(),
            },
            match (self.fec, self.mpx) {
                (Some(f), Some(m)) => format!(
                    " (FEC: {} blocks, {} repair frames, {:.1} % of {} data frames)",
                    f.blocks,
                    f.repair_frames,
                    100.0 * f.repair_frames as f64 / m.frames.max(1) as f64,
                    m.frames
                ),
                _ => String::new(),
            },
            self.split_lines,
            self.send_errors,
            if self.destinations.is_empty() {
                ""
            } else {
                "; "
            },
            self.destinations
        )?;
        if let Some(d) = &self.delivery {
            write!(f, "; {d}")?;
        }
        if !self.delivered_any {
            f.write_str("; nothing could be sent")?;
        }
        Ok(())
    }
}
