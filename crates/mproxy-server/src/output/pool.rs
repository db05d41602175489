//! The files of a `--path` template: which record goes to which file, and
//! a bound on how many are open at once
//!
//! A record's route (its stream and sender, as far as the template uses
//! them) is rendered into a path once and cached; files are opened on the
//! first record that goes to them (a stream that never carries data makes
//! no file), closed when their stream ends, when idle for [`IDLE_CLOSE`],
//! and least recently used first when [`Pool::max_open`] are open and
//! another is needed. A closed file is simply reopened for appending when
//! its next record comes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mproxy_common::mpx::StreamKey;

use super::file::{Env, Identity, OutFile};
use super::rotate::{unix_secs, RotatePolicy};
use super::template::{Context, Template};

/// Files not written for this long are closed (and reopened when needed)
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// What decides a record's file: the fields the template uses
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RouteKey {
    stream: Option<StreamKey>,
    source: Option<SocketAddr>,
}

#[derive(Debug)]
struct Slot {
    file: OutFile,
    path: PathBuf,
    routes: Vec<RouteKey>,
}

/// The open files of one template
#[derive(Debug)]
pub(crate) struct Pool {
    template: Template,
    rotate: RotatePolicy,
    /// Buffer per file
    cap: usize,
    /// Most files open at once
    max_open: usize,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_path: HashMap<PathBuf, usize>,
    routes: HashMap<RouteKey, usize>,
    last: Option<(RouteKey, usize)>,
    open: usize,
    clock: u64,
    /// Unix second at which the template's time fields next change
    next_switch: Option<u64>,
    /// Start of the rotation interval the open files belong to
    interval_at: Option<u64>,
    /// Budget of "opened"/"closed" log lines
    log: super::budget::Budget,
    name: String,
}

impl Pool {
    /// A pool for `template`, at most `max_open` files open at once
    pub(crate) fn new(
        template: Template,
        rotate: RotatePolicy,
        cap: usize,
        max_open: usize,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            next_switch: template.time_unit().map(|u| (unix_secs(now) / u + 1) * u),
            interval_at: rotate.interval_start(now),
            template,
            rotate,
            cap,
            max_open: max_open.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            by_path: HashMap::new(),
            routes: HashMap::new(),
            last: None,
            open: 0,
            clock: 0,
            log: super::budget::Budget::new(20, 2),
            name: String::new(),
        }
    }

    /// Most files open at once
    pub(crate) fn max_open(&self) -> usize {
        self.max_open
    }

    /// Files open now
    pub(crate) fn open_files(&self) -> usize {
        self.open
    }

    /// The route of a record of `key` from `source`
    pub(crate) fn route(&self, key: Option<StreamKey>, source: Option<SocketAddr>) -> RouteKey {
        RouteKey {
            stream: key.filter(|_| self.template.uses_stream()),
            source: source.filter(|_| self.template.uses_source()),
        }
    }

    /// Open the file `ctx` renders to now (checks a fixed path at start-up)
    pub(crate) fn open_now(&mut self, ctx: &Context, env: &mut Env) -> std::io::Result<()> {
        let route = self.route(ctx.key, ctx.source);
        self.resolve(route, ctx, env).map(|_| ())
    }

    /// Buffer one whole record for the file of `ctx`
    pub(crate) fn write(&mut self, ctx: &Context, rec: &[u8], env: &mut Env) {
        let route = self.route(ctx.key, ctx.source);
        let idx = match self.last {
            Some((k, i)) if k == route => Some(i),
            _ => match self.routes.get(&route) {
                Some(i) => Some(*i),
                None => match self.resolve(route, ctx, env) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        env.stats.write_errors += 1;
                        env.stats.records_lost += 1;
                        env.stats.bytes_lost += rec.len() as u64;
                        if let Some(n) = env.log.allow() {
                            tracing::warn!(
                                output = %self.name, suppressed = n,
                                "opening output failed: {e}; record lost (counted)"
                            );
                        }
                        None
                    }
                },
            },
        };
        let Some(idx) = idx else {
            return;
        };
        self.last = Some((route, idx));
        self.clock += 1;
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        slot.file.used = self.clock;
        if let Some(limit) = self.rotate.size {
            if slot.file.would_exceed(limit, rec.len()) {
                slot.file.rotate(env);
            }
        }
        slot.file.push(rec, env);
    }

    /// The slot of `route`: the file its path names, opened if need be
    fn resolve(&mut self, route: RouteKey, ctx: &Context, env: &mut Env) -> std::io::Result<usize> {
        self.name.clear();
        self.template.render(ctx, &mut self.name);
        let path = PathBuf::from(&self.name);
        if let Some(&i) = self.by_path.get(&path) {
            if let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) {
                slot.routes.push(route);
                self.routes.insert(route, i);
                return Ok(i);
            }
        }
        if self.open >= self.max_open {
            self.evict(env);
        }
        // a fixed path's directory must exist (a typo is an error), a
        // template's are created as its placeholders name them
        let mut file = OutFile::open(&path, self.cap, !self.template.is_fixed())?;
        env.stats.files_opened += 1;
        if let Some(start) = self.interval_at {
            // a file left from an earlier interval is rotated before use
            let old = file
                .modified()
                .is_some_and(|m| unix_secs(m) < start && file.logical_len() > 0);
            if old {
                file.rotate(env);
            }
        }
        if let Some(n) = self.log.allow() {
            tracing::debug!(output = %path.display(), suppressed = n, "opened output");
        }
        let slot = Slot {
            file,
            path: path.clone(),
            routes: vec![route],
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.open += 1;
        self.by_path.insert(path, i);
        self.routes.insert(route, i);
        Ok(i)
    }

    /// Close the least recently used eighth of the open files
    fn evict(&mut self, env: &mut Env) {
        let mut ages: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s.file.used, i)))
            .collect();
        let n = (self.max_open / 8).clamp(1, ages.len().max(1));
        if ages.len() > n {
            ages.select_nth_unstable(n - 1);
        }
        for &(_, i) in ages.iter().take(n) {
            self.close_slot(i, env);
            env.stats.files_evicted += 1;
        }
    }

    fn close_slot(&mut self, i: usize, env: &mut Env) {
        let Some(mut slot) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        slot.file.flush(env);
        for r in &slot.routes {
            self.routes.remove(r);
        }
        self.by_path.remove(&slot.path);
        self.last = None;
        self.open -= 1;
        self.free.push(i);
    }

    /// A stream ended: forget its route and, if the file is its own, close it
    pub(crate) fn close_route(&mut self, route: RouteKey, env: &mut Env) {
        if !self.template.uses_stream() {
            // the file is shared by every stream: keep it and its route
            return;
        }
        let Some(i) = self.routes.remove(&route) else {
            return;
        };
        self.last = None;
        let own = self
            .slots
            .get_mut(i)
            .and_then(Option::as_mut)
            .is_some_and(|s| {
                s.routes.retain(|r| *r != route);
                s.routes.is_empty()
            });
        if own {
            self.close_slot(i, env);
        }
    }

    /// Write every buffered record
    pub(crate) fn flush(&mut self, env: &mut Env) {
        for slot in self.slots.iter_mut().flatten() {
            slot.file.flush(env);
        }
    }

    /// Close every file (at the end of a run)
    pub(crate) fn close_all(&mut self, env: &mut Env) {
        for i in 0..self.slots.len() {
            self.close_slot(i, env);
        }
    }

    /// Once a second: files deleted or moved under us, time to rotate or
    /// switch to the next time-named file, idle files
    pub(crate) fn tick(&mut self, now: Instant, wall: SystemTime, env: &mut Env) {
        let secs = unix_secs(wall);
        if self.next_switch.is_some_and(|at| secs >= at) {
            // every open file may be named for the time that just ended
            self.close_all(env);
            self.next_switch = self.template.time_unit().map(|u| (secs / u + 1) * u);
        }
        let interval = self.rotate.interval_start(wall);
        let rotate_all = interval != self.interval_at;
        self.interval_at = interval;
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            slot.file.flush(env);
            check_identity(&mut slot.file, env);
            if rotate_all {
                slot.file.rotate(env);
            }
            if now.saturating_duration_since(slot.file.last_write) >= IDLE_CLOSE {
                self.close_slot(i, env);
                env.stats.files_idle_closed += 1;
            }
        }
    }

    /// SIGHUP: reopen every open file at its path (after logrotate moved it)
    pub(crate) fn reopen_all(&mut self, env: &mut Env) -> usize {
        let mut n = 0;
        for slot in self.slots.iter_mut().flatten() {
            match slot.file.reopen(false, env) {
                Ok(_) => n += 1,
                Err(e) => {
                    env.stats.write_errors += 1;
                    tracing::warn!(output = %slot.path.display(), "reopening failed: {e}; still writing the old file");
                }
            }
        }
        env.stats.reopened += n as u64;
        n
    }
}

/// React to a file deleted, moved or replaced under us: recreate it (a
/// deleted file's last second of records is copied into the new one)
pub(crate) fn check_identity(file: &mut OutFile, env: &mut Env) {
    let id = file.check();
    if id == Identity::Same {
        return;
    }
    let res = file.reopen(id == Identity::Deleted, env);
    let name = file.name();
    let what = match id {
        Identity::Deleted => "was deleted",
        Identity::Replaced => "was replaced",
        _ => "was moved away",
    };
    match (id, res) {
        (_, Err(e)) => {
            env.stats.write_errors += 1;
            if let Some(n) = env.log.allow() {
                tracing::warn!(
                    output = %name, suppressed = n,
                    "output {what} and could not be recreated: {e}; trying again every second"
                );
            }
        }
        (Identity::Replaced, Ok(_)) => {
            env.stats.recreated += 1;
            if let Some(n) = env.log.allow() {
                tracing::info!(output = %name, suppressed = n, "output replaced by a new file (rotated?): writing to the new one");
            }
        }
        (Identity::Deleted, Ok(copied)) => {
            env.stats.recreated += 1;
            if let Some(n) = env.log.allow() {
                tracing::warn!(
                    output = %name, suppressed = n,
                    "output was deleted: recreated it, with the {copied} bytes written since it was last seen"
                );
            }
        }
        (_, Ok(_)) => {
            env.stats.recreated += 1;
            if let Some(n) = env.log.allow() {
                tracing::warn!(
                    output = %name, suppressed = n,
                    "output was moved away: recreated it (what came before is in the moved file)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::template::Usage;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mproxy-pool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ctx(stream: u32, now: SystemTime) -> Context {
        Context {
            key: Some(StreamKey { session: 1, stream }),
            source: None,
            now,
        }
    }

    #[test]
    fn test_idle_files_close_and_reopen_for_appending() {
        let d = dir("idle");
        let t = Template::parse(&format!("{}/{{stream}}.log", d.display()), Usage::Path).unwrap();
        let mut pool = Pool::new(t, RotatePolicy::default(), 1024, 8);
        let mut env = Env::default();
        let now = SystemTime::now();
        pool.write(&ctx(1, now), b"a\n", &mut env);
        pool.write(&ctx(2, now), b"b\n", &mut env);
        pool.flush(&mut env);
        pool.tick(Instant::now(), now, &mut env);
        assert_eq!(pool.open_files(), 2);
        pool.tick(Instant::now() + IDLE_CLOSE, now, &mut env);
        assert_eq!(pool.open_files(), 0);
        assert_eq!(env.stats.files_idle_closed, 2);
        pool.write(&ctx(1, now), b"c\n", &mut env);
        pool.close_all(&mut env);
        assert_eq!(std::fs::read(d.join("1.log")).unwrap(), b"a\nc\n");
        assert_eq!(std::fs::read(d.join("2.log")).unwrap(), b"b\n");
        assert_eq!(env.stats.files_opened, 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_time_named_files_switch_when_the_name_changes() {
        let d = dir("date");
        let t = Template::parse(&format!("{}/{{date}}.log", d.display()), Usage::Path).unwrap();
        let mut pool = Pool::new(t, RotatePolicy::default(), 1024, 1);
        let mut env = Env::default();
        let day0 = std::time::UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        let now = SystemTime::now();
        pool.write(&ctx(1, day0), b"leap day\n", &mut env);
        pool.tick(Instant::now(), now, &mut env);
        assert_eq!(pool.open_files(), 1, "the same day: the file stays open");
        pool.tick(Instant::now(), now + Duration::from_secs(86_400), &mut env);
        assert_eq!(pool.open_files(), 0, "the next day: the file is closed");
        pool.write(
            &ctx(1, day0 + Duration::from_secs(86_400)),
            b"next day\n",
            &mut env,
        );
        pool.close_all(&mut env);
        assert_eq!(
            std::fs::read(d.join("2024-02-29.log")).unwrap(),
            b"leap day\n"
        );
        assert_eq!(
            std::fs::read(d.join("2024-03-01.log")).unwrap(),
            b"next day\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_file_from_an_earlier_interval_is_rotated_before_use() {
        let d = dir("interval");
        let path = d.join("feed.log");
        std::fs::write(&path, b"from before\n").unwrap();
        // an mtime two hours back
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let t = Template::parse(&path.display().to_string(), Usage::Path).unwrap();
        let rotate = RotatePolicy {
            size: None,
            interval: Some(3600),
        };
        let mut pool = Pool::new(t, rotate, 1024, 1);
        let mut env = Env::default();
        pool.write(&ctx(1, SystemTime::now()), b"now\n", &mut env);
        pool.close_all(&mut env);
        assert_eq!(
            std::fs::read(d.join("feed.log.1")).unwrap(),
            b"from before\n"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"now\n");
        let _ = std::fs::remove_dir_all(&d);
    }
}
