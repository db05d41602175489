//! One-way latency of stamped lines, for `bench/run.sh`.
//!
//! `send` writes `--count` lines of `--size` bytes (newline included) at
//! `--rate` lines per second, on an absolute schedule (line `i` is due at
//! `start + i / rate`, so a late line does not delay the next ones). Each
//! line carries its sequence number and the `CLOCK_MONOTONIC` time at which
//! it was written:
//!
//! ```text
//! 0000000042 00000001234567890123 xxxxxxxx...x\n
//! ```
//!
//! Lines go to stdout or the file (or FIFO) `--file PATH`, one `write(2)`
//! per line (e.g. into `mproxy-client --path -`), or with `--udp HOST:PORT`
//! one datagram per line.
//!
//! `recv` reads lines from stdin or `--file PATH` (e.g. a FIFO that
//! `mproxy-server --path` writes), or with `--udp HOST:PORT` from
//! datagrams (each may hold several lines), stamps
//! each on arrival and subtracts. `CLOCK_MONOTONIC` is one clock for every
//! process of the machine, so the difference is the one-way latency of
//! everything in between. It stops after `--count` lines, at end of input,
//! or after `--idle-ms` without a line (once one has arrived; `--max-wait-s`
//! before that), and prints one machine-readable line on stdout:
//!
//! ```text
//! latency lines=4990 lost=0 dup=0 p50_us=41.2 p99_us=88.0 p999_us=150.3 max_us=312.9
//! ```
//!
//! The first `--warmup` lines (default 10) are received but not counted in
//! the percentiles (first-packet costs: page faults, lazy binding, caches).
//!
//! ```sh
//! cargo build --release -p mproxy-common --example latency
//! latency recv --udp 127.0.0.1:9100 --count 5000 &
//! latency send --count 5000 --rate 1000 | mproxy-client --path - --server-addr 127.0.0.1:9100
//! ```
//!
//! Linux only (`CLOCK_MONOTONIC` through libc).

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Bytes of the stamp: 10-digit sequence, space, 20-digit nanoseconds, space
const STAMP_LEN: usize = 10 + 1 + 20 + 1;

/// What the command line asked for
struct Args {
    role: Role,
    udp: Option<SocketAddr>,
    file: Option<String>,
    count: u64,
    rate: f64,
    size: usize,
    warmup: u64,
    idle: Duration,
    max_wait: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Send,
    Recv,
}

const USAGE: &str = "usage:
  latency send [--udp HOST:PORT | --file PATH] [--count 5000] [--rate 1000] [--size 100]
  latency recv [--udp HOST:PORT | --file PATH] [--count 5000] [--warmup 10] [--idle-ms 2000] [--max-wait-s 30]";

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("latency: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.role {
        Role::Send => send(&args),
        Role::Recv => recv(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latency: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let role = match it.next().as_deref() {
        Some("send") => Role::Send,
        Some("recv") => Role::Recv,
        Some("-h" | "--help") | None => return Err("expected 'send' or 'recv'".into()),
        Some(other) => return Err(format!("unknown role {other:?}")),
    };
    let mut args = Args {
        role,
        udp: None,
        file: None,
        count: 5000,
        rate: 1000.0,
        size: 100,
        warmup: 10,
        idle: Duration::from_millis(2000),
        max_wait: Duration::from_secs(30),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {what}: {value:?}");
        match flag.as_str() {
            "--udp" => args.udp = Some(value.parse().map_err(|_| bad("not HOST:PORT"))?),
            "--file" => args.file = Some(value),
            "--count" => args.count = value.parse().map_err(|_| bad("not a number"))?,
            "--rate" => {
                args.rate = value.parse().map_err(|_| bad("not a number"))?;
                if !(args.rate > 0.0 && args.rate <= 1e6) {
                    return Err(bad("must be in (0, 1e6] lines/s"));
                }
            }
            "--size" => {
                args.size = value.parse().map_err(|_| bad("not a number"))?;
                if args.size <= STAMP_LEN || args.size > 65_000 {
                    return Err(bad("must be 33..=65000 bytes"));
                }
            }
            "--warmup" => args.warmup = value.parse().map_err(|_| bad("not a number"))?,
            "--idle-ms" => {
                args.idle = Duration::from_millis(value.parse().map_err(|_| bad("not a number"))?);
            }
            "--max-wait-s" => {
                args.max_wait =
                    Duration::from_secs(value.parse().map_err(|_| bad("not a number"))?);
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if args.udp.is_some() && args.file.is_some() {
        return Err("--udp and --file exclude each other".into());
    }
    if args.count == 0 {
        return Err("--count must be > 0".into());
    }
    Ok(args)
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for all processes of the host
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    // CLOCK_MONOTONIC always exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

// ---------------------------------------------------------------- sender

fn send(args: &Args) -> io::Result<()> {
    let udp = match args.udp {
        Some(addr) => {
            let bind: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let sock = UdpSocket::bind(bind)?;
            sock.connect(addr)?;
            Some(sock)
        }
        None => None,
    };
    let mut out: Box<dyn io::Write> = match &args.file {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("--file {path}: {e}")))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let mut line = vec![b'x'; args.size];
    line[args.size - 1] = b'\n';
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    for seq in 0..args.count {
        // seq < 2^32 lines at most 1e6/s: the float product is exact enough
        let due = start + period.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let stamp = format!("{seq:010} {:020} ", mono_ns());
        line[..STAMP_LEN].copy_from_slice(stamp.as_bytes());
        match &udp {
            Some(sock) => {
                // a refused datagram (receiver not up yet) is a lost line
                if let Err(e) = sock.send(&line) {
                    if e.kind() != io::ErrorKind::ConnectionRefused {
                        return Err(io::Error::new(e.kind(), format!("send: {e}")));
                    }
                }
            }
            None => {
                out.write_all(&line)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

// -------------------------------------------------------------- receiver

/// Latencies and sequence bookkeeping of a receive run
struct Tally {
    warmup: u64,
    lines: u64,
    seen: Vec<bool>,
    dup: u64,
    garbled: u64,
    lat_ns: Vec<u64>,
}

impl Tally {
    /// Account one received line, stamped on arrival at `now`
    fn line(&mut self, line: &[u8], now: u64) {
        let parsed = (|| {
            let text = std::str::from_utf8(line.get(..STAMP_LEN)?).ok()?;
            let mut parts = text.split_ascii_whitespace();
            let seq: u64 = parts.next()?.parse().ok()?;
            let sent: u64 = parts.next()?.parse().ok()?;
            Some((seq, sent))
        })();
        let Some((seq, sent)) = parsed else {
            self.garbled += 1;
            return;
        };
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.seen.get_mut(i)) else {
            self.garbled += 1;
            return;
        };
        if *slot {
            self.dup += 1;
            return;
        }
        *slot = true;
        self.lines += 1;
        if seq >= self.warmup {
            self.lat_ns.push(now.saturating_sub(sent));
        }
    }

    fn done(&self) -> bool {
        self.lines as usize >= self.seen.len()
    }
}

/// The `q`-quantile (nearest rank) of sorted values, in microseconds
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e3
}

fn recv(args: &Args) -> io::Result<()> {
    let count = usize::try_from(args.count)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "--count too large"))?;
    let mut tally = Tally {
        warmup: args.warmup,
        lines: 0,
        seen: vec![false; count],
        dup: 0,
        garbled: 0,
        lat_ns: Vec::with_capacity(count),
    };
    let end = match args.udp {
        Some(addr) => recv_udp(args, addr, &mut tally)?,
        None => match &args.file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("--file {path}: {e}")))?;
                recv_stream(file, &mut tally)?
            }
            None => recv_stream(io::stdin().lock(), &mut tally)?,
        },
    };
    let mut lat = std::mem::take(&mut tally.lat_ns);
    lat.sort_unstable();
    let lost = args.count - tally.lines;
    println!(
        "latency lines={} lost={lost} dup={} garbled={} p50_us={:.1} p99_us={:.1} p999_us={:.1} \
         max_us={:.1} end={end}",
        tally.lines,
        tally.dup,
        tally.garbled,
        quantile_us(&lat, 0.50),
        quantile_us(&lat, 0.99),
        quantile_us(&lat, 0.999),
        quantile_us(&lat, 1.0),
    );
    Ok(())
}

/// Lines from a stream until `--count` of them or end of input (the far
/// end of the pipe bounds the wait: the script stops the writer)
fn recv_stream(input: impl io::Read, tally: &mut Tally) -> io::Result<&'static str> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok("eof");
        }
        tally.line(&line, mono_ns());
        if tally.done() {
            return Ok("count");
        }
    }
}

/// Datagrams on `addr`, each holding one or more whole lines
fn recv_udp(args: &Args, addr: SocketAddr, tally: &mut Tally) -> io::Result<&'static str> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 65_536];
    let started = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let now = mono_ns();
                last = Some(Instant::now());
                for line in buf[..n].split_inclusive(|&b| b == b'\n') {
                    tally.line(line, now);
                }
                if tally.done() {
                    return Ok("count");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                match last {
                    Some(t) if t.elapsed() >= args.idle => return Ok("idle"),
                    None if started.elapsed() >= args.max_wait => return Ok("no-data"),
                    _ => {}
                }
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("recv: {e}"))),
        }
    }
}
