//! The end of a stream: which receivers confirmed it, and where the
//! others stopped
//!
//! A receiver confirms what it has with its WINDOW frames: their sequence
//! number is its `next`, everything before it delivered or given up. The
//! stream is complete at a receiver once its `next` reaches one past the
//! FIN frame. After the end of input the sender keeps answering NACKs and
//! sends FIN heartbeats (which receivers answer with a window at once)
//! until the [`Confirm`] rule is met, every receiver it waits for has
//! gone silent for the receiver timeout, or the linger ends.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::super::flow::PeerState;

/// Which receivers must confirm the end before a sender is done
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Confirm {
    /// Every receiver heard from (default)
    #[default]
    All,
    /// At least one receiver
    Any,
    /// None: after the closing heartbeats, linger only while NACKs come
    None,
}

impl FromStr for Confirm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "any" => Ok(Self::Any),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown confirmation rule '{other}' (expected all, any or none)"
            )),
        }
    }
}

impl fmt::Display for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Any => "any",
            Self::None => "none",
        })
    }
}

/// What became of one receiver of the stream
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverOutcome {
    /// The receiver's random id
    pub id: u64,
    /// Where its latest window came from
    pub addr: SocketAddr,
    /// The sequence number it joined at (its first `next`)
    pub joined_seq: u32,
    /// The stream offset of that frame, when known
    pub joined_offset: Option<u64>,
    /// Its latest `next`
    pub confirmed_seq: u32,
    /// The stream offset it confirmed (bytes before `confirmed_seq`),
    /// when known
    pub confirmed_offset: Option<u64>,
    /// It reached the end of the stream (everything delivered or given up)
    pub reached_end: bool,
    /// Frames it gave up on (lost), as it reports
    pub lost_frames: u64,
    /// It reached the end and lost nothing
    pub complete: bool,
    /// Whether it was still waited for
    pub state: PeerState,
    /// How long ago it was last heard from
    pub silent_for: Duration,
}

impl fmt::Display for ReceiverOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "receiver {:016x} ({}): ", self.id, self.addr)?;
        let at = |seq: u32, off: Option<u64>| match off {
            Some(o) => format!("byte {o} (frame {seq})"),
            None => format!("frame {seq}"),
        };
        if self.complete {
            f.write_str("complete")?;
        } else if self.reached_end {
            write!(f, "reached the end with {} frames lost", self.lost_frames)?;
        } else {
            write!(
                f,
                "confirmed up to {}",
                at(self.confirmed_seq, self.confirmed_offset)
            )?;
            match self.state {
                PeerState::Active => {}
                PeerState::TimedOut => write!(
                    f,
                    ", silent for {:.1}s, given up",
                    self.silent_for.as_secs_f64()
                )?,
                PeerState::Cut => f.write_str(", cut off (--max-lag)")?,
            }
        }
        if self.joined_seq != 0 {
            write!(f, ", joined at {}", at(self.joined_seq, self.joined_offset))?;
        }
        Ok(())
    }
}

/// How the end of a stream was confirmed
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    /// The rule applied
    pub rule: Confirm,
    /// One past the FIN frame (`None`: the stream has not ended)
    pub end_seq: Option<u32>,
    /// Stream bytes sent
    pub bytes: u64,
    /// Every receiver heard from, in the order they joined
    pub receivers: Vec<ReceiverOutcome>,
}

impl Delivery {
    /// True if the rule is met: every receiver heard from confirmed the
    /// end (`all`), at least one did if any was heard (`any`), or nothing
    /// is asked (`none`). A stream no receiver answered for (a one-way
    /// link) is met: there is nobody to confirm, and the summary says so
    pub fn confirmed(&self) -> bool {
        if self.end_seq.is_none() {
            return false;
        }
        match self.rule {
            Confirm::None => true,
            _ if self.receivers.is_empty() => true,
            Confirm::All => self.receivers.iter().all(|r| r.complete),
            Confirm::Any => self.receivers.iter().any(|r| r.complete),
        }
    }

    /// Receivers that did not confirm the end
    pub fn incomplete(&self) -> impl Iterator<Item = &ReceiverOutcome> {
        self.receivers.iter().filter(|r| !r.complete)
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.receivers.is_empty() {
            return f.write_str("no receiver confirmed anything (none answered: one-way)");
        }
        let done = self.receivers.iter().filter(|r| r.complete).count();
        write!(
            f,
            "{done} of {} receivers confirmed the end (--confirm {})",
            self.receivers.len(),
            self.rule
        )?;
        for r in self.incomplete() {
            write!(f, "; {r}")?;
        }
        Ok(())
    }
}
