//! Multipath sending: which path carries the next frame, path health
//!
//! The [`Scheduler`] knows nothing of sockets: the driver asks it where the
//! next frame goes ([`Scheduler::pick`]) or which paths carry a copy
//! ([`Scheduler::pick_all`]), reports feedback from the receiver
//! ([`Scheduler::on_feedback`]) and sends the probes it asks for
//! ([`Scheduler::poll_probe`]).
//!
//! How weights and rates combine: with a total rate R and weights w_i, path
//! i is paced at R·w_i/Σw unless it has an explicit rate. When paths are
//! paced, each frame goes to the path that can send it soonest, so the
//! split follows the rates and no path is driven past its own. Unpaced,
//! frames are split by smooth weighted round robin in proportion to the
//! weights. A path is *dead* once it has answered with feedback and then
//! stayed silent for `dead_after`; it gets no data until feedback resumes,
//! but keeps receiving probes. Paths that never answered (one-way links,
//! multicast) keep their static weights.

use std::fmt;
use std::time::{Duration, Instant};

use crate::rate::{Pacer, Rate};
use crate::wire::FeedbackReport;

/// One path as configured
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathConfig {
    /// Relative share of the traffic (1 to 1000)
    pub weight: u32,
    /// Explicit pacing rate of this path (overrides its share of the total)
    pub rate: Option<Rate>,
}

/// Scheduler settings
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Total pacing rate split over the paths by weight (`None`: unpaced
    /// unless a path has its own rate)
    pub total_rate: Option<Rate>,
    /// A path that answered before and is silent this long is dead
    pub dead_after: Duration,
    /// Each path is probed (a heartbeat carrying a timestamp) this often
    pub probe_interval: Duration,
    /// Token bucket depth per path, bytes
    pub burst: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            total_rate: None,
            dead_after: Duration::from_secs(1),
            probe_interval: Duration::from_millis(100),
            burst: 16 * 1472,
        }
    }
}

/// Health of a path
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Carries data
    Up,
    /// Silent for too long: probed, not used for data
    Dead,
}

/// Counters of one path
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PathStats {
    /// Frames scheduled on the path (data and probes)
    pub frames: u64,
    /// Bytes scheduled on the path
    pub bytes: u64,
    /// Frames the receiver reports having received on this path
    pub frames_acked: u64,
    /// Smoothed loss fraction from feedback (0 to 1)
    pub loss: f64,
    /// Smoothed round-trip time from echoed probes
    pub srtt: Option<Duration>,
    /// Feedback reports received
    pub reports: u64,
    /// Up→dead and dead→up transitions
    pub state_changes: u64,
    /// Time of the newest feedback (None: never answered)
    pub last_feedback: Option<Instant>,
}

impl fmt::Display for PathStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} frames, {} bytes, {} acked ({}), recent loss {:.2}%, rtt {}, {} state changes",
            self.frames,
            self.bytes,
            self.frames_acked,
            // all frames not (yet) acknowledged: exact once nothing is in
            // flight, as in the final summary
            if self.last_feedback.is_some() {
                format!(
                    "{} unacknowledged",
                    self.frames.saturating_sub(self.frames_acked)
                )
            } else {
                "no feedback".to_string()
            },
            self.loss * 100.0,
            self.srtt.map_or_else(
                || "-".to_string(),
                |r| format!("{:.2}ms", r.as_secs_f64() * 1e3)
            ),
            self.state_changes
        )
    }
}

#[derive(Debug)]
struct Path {
    weight: i64,
    current: i64,
    pacer: Option<Pacer>,
    state: PathState,
    last_probe: Option<Instant>,
    /// frames sent / acked at the previous report, for loss deltas
    prev_sent: u64,
    prev_acked: u64,
    stats: PathStats,
}

/// Chooses paths for frames and tracks their health (sans-IO)
#[derive(Debug)]
pub struct Scheduler {
    paths: Vec<Path>,
    cfg: SchedulerConfig,
    total_weight: i64,
    epoch: Instant,
}

impl Scheduler {
    /// A scheduler over `paths` (at least one)
    pub fn new(paths: &[PathConfig], cfg: SchedulerConfig, now: Instant) -> Self {
        let total: u64 = paths.iter().map(|p| u64::from(p.weight.max(1))).sum();
        let paths = paths
            .iter()
            .map(|p| {
                let share = cfg.total_rate.and_then(|r| {
                    Rate::from_bytes_per_sec(
                        r.bytes_per_sec() * u64::from(p.weight.max(1)) / total.max(1),
                    )
                });
                Path {
                    weight: i64::from(p.weight.max(1)),
                    current: 0,
                    pacer: p.rate.or(share).map(|r| Pacer::new(r, cfg.burst)),
                    state: PathState::Up,
                    last_probe: None,
                    prev_sent: 0,
                    prev_acked: 0,
                    stats: PathStats::default(),
                }
            })
            .collect();
        Self {
            paths,
            cfg,
            total_weight: total as i64,
            epoch: now,
        }
    }

    /// Number of paths
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True if there are no paths
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// State of path `i`
    pub fn state(&self, i: usize) -> Option<PathState> {
        self.paths.get(i).map(|p| p.state)
    }

    /// Counters of every path
    pub fn stats(&self) -> Vec<PathStats> {
        self.paths.iter().map(|p| p.stats).collect()
    }

    /// Microseconds since the scheduler started (the probe timestamp clock)
    pub fn timestamp_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn usable(&self) -> impl Iterator<Item = usize> + '_ {
        let any_up = self.paths.iter().any(|p| p.state == PathState::Up);
        // with every path dead, keep sending on all of them rather than stop
        (0..self.paths.len()).filter(move |&i| !any_up || self.paths[i].state == PathState::Up)
    }

    /// Choose the path for a frame of `bytes`; returns the path and how
    /// long the caller must wait before sending it (pacing)
    pub fn pick(&mut self, now: Instant, bytes: usize) -> (usize, Duration) {
        let candidates: Vec<usize> = self.usable().collect();
        let paced = candidates.iter().any(|&i| self.paths[i].pacer.is_some());
        // smooth weighted round robin over the candidates
        let weight_sum: i64 = candidates.iter().map(|&i| self.paths[i].weight).sum();
        for &i in &candidates {
            self.paths[i].current += self.paths[i].weight;
        }
        let chosen = if paced {
            // earliest departure; SWRR position breaks ties
            candidates
                .iter()
                .copied()
                .min_by_key(|&i| {
                    let wait = self.paths[i]
                        .pacer
                        .as_ref()
                        .map_or(Duration::ZERO, |p| p.ready_in(now, bytes));
                    (wait, -self.paths[i].current)
                })
                .unwrap_or(0)
        } else {
            candidates
                .iter()
                .copied()
                .max_by_key(|&i| (self.paths[i].current, -(i as i64)))
                .unwrap_or(0)
        };
        let wait = match self.paths.get_mut(chosen) {
            Some(p) => {
                p.current -= weight_sum;
                p.stats.frames += 1;
                p.stats.bytes += bytes as u64;
                p.pacer
                    .as_mut()
                    .map_or(Duration::ZERO, |pc| pc.delay(now, bytes))
            }
            None => Duration::ZERO,
        };
        (chosen, wait)
    }

    /// Paths that carry a copy of every frame (redundant mode): all usable ones
    pub fn pick_all(&mut self, bytes: usize) -> Vec<usize> {
        let all: Vec<usize> = self.usable().collect();
        for &i in &all {
            self.paths[i].stats.frames += 1;
            self.paths[i].stats.bytes += bytes as u64;
        }
        all
    }

    /// Feedback from the receiver about path `i`
    pub fn on_feedback(&mut self, now: Instant, i: usize, report: &FeedbackReport) {
        let now_us = self.timestamp_us(now);
        let Some(p) = self.paths.get_mut(i) else {
            return;
        };
        p.stats.reports += 1;
        p.stats.frames_acked = p.stats.frames_acked.max(report.frames);
        p.stats.last_feedback = Some(now);
        if report.echo_ts_us > 0 && report.echo_ts_us <= now_us {
            let rtt_us =
                (now_us - report.echo_ts_us).saturating_sub(u64::from(report.echo_delay_us));
            let sample = Duration::from_micros(rtt_us);
            p.stats.srtt = Some(match p.stats.srtt {
                None => sample,
                Some(s) => (s * 7 + sample) / 8,
            });
        }
        let sent = p.stats.frames.saturating_sub(p.prev_sent);
        let acked = report.frames.saturating_sub(p.prev_acked);
        if sent >= 16 {
            let sample = 1.0 - (acked as f64 / sent as f64).min(1.0);
            p.stats.loss = p.stats.loss * 0.75 + sample * 0.25;
            p.prev_sent = p.stats.frames;
            p.prev_acked = report.frames;
        }
        if p.state == PathState::Dead {
            p.state = PathState::Up;
            p.stats.state_changes += 1;
            p.current = 0;
        }
    }

    /// The local send on path `i` failed (network down or unreachable):
    /// the path is dead at once, without waiting for feedback to stop
    pub fn on_send_failure(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i) {
            if p.state == PathState::Up {
                p.state = PathState::Dead;
                p.stats.state_changes += 1;
            }
        }
    }

    /// A send (probe) on dead path `i` worked again: a path that never
    /// had feedback comes back now; one with feedback waits for a report
    pub fn on_send_success(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i) {
            if p.state == PathState::Dead && p.stats.last_feedback.is_none() {
                p.state = PathState::Up;
                p.stats.state_changes += 1;
            }
        }
    }

    /// Mark paths dead whose feedback stopped; call at [`Scheduler::poll_timeout`]
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in &mut self.paths {
            if p.state == PathState::Up
                && p.stats
                    .last_feedback
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.dead_after)
            {
                p.state = PathState::Dead;
                p.stats.state_changes += 1;
            }
        }
    }

    /// The next path due for a probe at `now`, if any (marks it probed)
    pub fn poll_probe(&mut self, now: Instant) -> Option<usize> {
        let interval = self.cfg.probe_interval;
        let i = self.paths.iter().position(|p| {
            p.last_probe
                .is_none_or(|t| now.saturating_duration_since(t) >= interval)
        })?;
        self.paths[i].last_probe = Some(now);
        self.paths[i].stats.frames += 1;
        Some(i)
    }

    /// When the next probe or health check is due
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.paths
            .iter()
            .flat_map(|p| {
                let probe = Some(
                    p.last_probe
                        .map_or(self.epoch, |t| t + self.cfg.probe_interval),
                );
                let dead = match p.state {
                    PathState::Up => p.stats.last_feedback.map(|t| t + self.cfg.dead_after),
                    PathState::Dead => None,
                };
                [probe, dead]
            })
            .flatten()
            .min()
    }

    /// The live path heard from most recently (feedback), for repairs: a
    /// re-sent frame should not go where frames may be vanishing
    pub fn freshest(&self) -> Option<usize> {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PathState::Up)
            .filter_map(|(i, p)| p.stats.last_feedback.map(|t| (t, i)))
            .max()
            .map(|(_, i)| i)
    }

    /// Total of the configured weights
    pub fn total_weight(&self) -> i64 {
        self.total_weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfgs(weights: &[u32]) -> Vec<PathConfig> {
        weights
            .iter()
            .map(|&w| PathConfig {
                weight: w,
                rate: None,
            })
            .collect()
    }

    #[test]
    fn test_weighted_split_unpaced() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfgs(&[1, 2, 3]), SchedulerConfig::default(), t0);
        let mut counts = [0u32; 3];
        for _ in 0..600 {
            let (i, wait) = s.pick(t0, 1000);
            assert_eq!(wait, Duration::ZERO);
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn test_paced_split_follows_rates() {
        // 30 and 60 Mbit/s by weight 1:2 of a 90 Mbit/s total
        let t0 = Instant::now();
        let cfg = SchedulerConfig {
            total_rate: Some("90mbit".parse().unwrap()),
            burst: 1500,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(&cfgs(&[1, 2]), cfg, t0);
        let mut now = t0;
        let mut bytes = [0u64; 2];
        for _ in 0..30_000 {
            let (i, wait) = s.pick(now, 1472);
            now += wait;
            bytes[i] += 1472;
        }
        let secs = (now - t0).as_secs_f64();
        let total_rate = (bytes[0] + bytes[1]) as f64 * 8.0 / secs / 1e6;
        assert!((total_rate - 90.0).abs() < 1.0, "{total_rate} Mbit/s");
        let share = bytes[1] as f64 / (bytes[0] + bytes[1]) as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.01, "{share}");
    }

    #[test]
    fn test_explicit_path_rate() {
        let t0 = Instant::now();
        let paths = [
            PathConfig {
                weight: 1,
                rate: Some("10mbit".parse().unwrap()),
            },
            PathConfig {
                weight: 1,
                rate: Some("40mbit".parse().unwrap()),
            },
        ];
        let mut s = Scheduler::new(
            &paths,
            SchedulerConfig {
                burst: 1500,
                ..SchedulerConfig::default()
            },
            t0,
        );
        let mut now = t0;
        let mut bytes = [0u64; 2];
        for _ in 0..20_000 {
            let (i, wait) = s.pick(now, 1000);
            now += wait;
            bytes[i] += 1000;
        }
        let share = bytes[1] as f64 / (bytes[0] + bytes[1]) as f64;
        assert!((share - 0.8).abs() < 0.01, "{share}");
    }

    #[test]
    fn test_dead_path_detection_and_recovery() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfgs(&[1, 1]), SchedulerConfig::default(), t0);
        let report = FeedbackReport::default();
        // both answer at first
        s.on_feedback(t0, 0, &report);
        s.on_feedback(t0, 1, &report);
        // path 1 goes silent; path 0 keeps answering
        let mut now = t0;
        for _ in 0..15 {
            now += Duration::from_millis(100);
            s.on_feedback(now, 0, &report);
            s.handle_timeout(now);
        }
        assert_eq!(s.state(0), Some(PathState::Up));
        assert_eq!(s.state(1), Some(PathState::Dead));
        // no data goes to the dead path...
        for _ in 0..100 {
            assert_eq!(s.pick(now, 100).0, 0);
        }
        // ...but it is still probed
        let probed: Vec<usize> = std::iter::from_fn(|| s.poll_probe(now)).collect();
        assert!(probed.contains(&1));
        // it answers again: back in rotation
        s.on_feedback(now, 1, &report);
        assert_eq!(s.state(1), Some(PathState::Up));
        let used: std::collections::HashSet<usize> = (0..10).map(|_| s.pick(now, 100).0).collect();
        assert_eq!(used.len(), 2);
        assert_eq!(s.stats()[1].state_changes, 2);
    }

    #[test]
    fn test_local_send_failure() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfgs(&[1, 1]), SchedulerConfig::default(), t0);
        s.on_send_failure(1);
        assert_eq!(s.state(1), Some(PathState::Dead));
        assert!((0..10).all(|_| s.pick(t0, 100).0 == 0));
        // never had feedback: a working send brings it back
        s.on_send_success(1);
        assert_eq!(s.state(1), Some(PathState::Up));
        // with feedback history, only feedback does
        s.on_feedback(t0, 1, &FeedbackReport::default());
        s.on_send_failure(1);
        s.on_send_success(1);
        assert_eq!(s.state(1), Some(PathState::Dead));
        s.on_feedback(t0, 1, &FeedbackReport::default());
        assert_eq!(s.state(1), Some(PathState::Up));
    }

    #[test]
    fn test_no_feedback_keeps_static_weights() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfgs(&[1, 1]), SchedulerConfig::default(), t0);
        s.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(s.state(0), Some(PathState::Up));
        assert_eq!(s.state(1), Some(PathState::Up));
    }

    #[test]
    fn test_rtt_and_loss_from_feedback() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&cfgs(&[1]), SchedulerConfig::default(), t0);
        for _ in 0..100 {
            s.pick(t0, 100);
        }
        let sent_at = t0 + Duration::from_millis(10);
        let report = FeedbackReport {
            echo_ts_us: s.timestamp_us(sent_at),
            echo_delay_us: 2_000,
            frames: 90,
            bytes: 9000,
        };
        s.on_feedback(t0 + Duration::from_millis(30), 0, &report);
        let st = s.stats()[0];
        assert_eq!(st.srtt, Some(Duration::from_millis(18)));
        assert!((st.loss - 0.025).abs() < 1e-9, "{}", st.loss);
    }
}
