//! N TCP readers in one process, for the fan-out rows of `bench/run.sh`.
//!
//! Opens `--conns` connections to `--addr` (e.g. an `mproxy-reverseproxy
//! --tcp-output-addr`), then one thread per connection reads and discards
//! everything, counting bytes and noting the time of its last read. A
//! connection is finished at end of stream, or after `--idle-ms` without
//! data once data has arrived (`--max-wait-s` before that). With
//! `--ready FILE` the file is created once every connection is open.
//!
//! One process instead of N `socat` readers keeps the readers' own cost
//! small and equal, so the figures are about the fan-out itself. Prints one
//! machine-readable line on stdout (bytes per connection, and
//! `CLOCK_REALTIME` nanoseconds of the first and last read over all):
//!
//! ```text
//! tcp_sink conns=32 total=8589934592 min=268435456 median=268435456 max=268435456 first_ns=.. last_ns=.. per_conn=268435456,...
//! ```

use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the command line asked for
struct Args {
    addr: SocketAddr,
    conns: usize,
    idle: Duration,
    max_wait: Duration,
    ready: Option<String>,
}

const USAGE: &str = "usage: tcp_sink --addr HOST:PORT [--conns 1] [--idle-ms 1000] [--max-wait-s 60] [--ready FILE]";

/// What one reader saw: bytes, first and last read (epoch ns, 0 if none)
type Seen = (u64, u128, u128);

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcp_sink: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp_sink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 1,
        idle: Duration::from_millis(1000),
        max_wait: Duration::from_secs(60),
        ready: None,
    };
    let mut addr_given = false;
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help".into());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {what}: {value:?}");
        match flag.as_str() {
            "--addr" => {
                args.addr = value.parse().map_err(|_| bad("not HOST:PORT"))?;
                addr_given = true;
            }
            "--conns" => {
                args.conns = value.parse().map_err(|_| bad("not a number"))?;
                if args.conns == 0 || args.conns > 1024 {
                    return Err(bad("must be 1..=1024"));
                }
            }
            "--idle-ms" => {
                args.idle = Duration::from_millis(value.parse().map_err(|_| bad("not a number"))?);
            }
            "--max-wait-s" => {
                args.max_wait =
                    Duration::from_secs(value.parse().map_err(|_| bad("not a number"))?);
            }
            "--ready" => args.ready = Some(value),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if !addr_given {
        return Err("--addr is required".into());
    }
    Ok(args)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Read `stream` to its end (or idle), discarding; what was seen
fn drain(mut stream: TcpStream, idle: Duration, max_wait: Duration) -> io::Result<Seen> {
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 1 << 18];
    let (mut bytes, mut first, mut last) = (0u64, 0u128, 0u128);
    let started = Instant::now();
    let mut last_read: Option<Instant> = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let t = now_ns();
                if first == 0 {
                    first = t;
                }
                last = t;
                bytes += n as u64;
                last_read = Some(Instant::now());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                match last_read {
                    Some(t) if t.elapsed() >= idle => break,
                    None if started.elapsed() >= max_wait => break,
                    _ => {}
                }
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("read: {e}"))),
        }
    }
    Ok((bytes, first, last))
}

fn run(args: &Args) -> io::Result<()> {
    let mut streams = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let s = TcpStream::connect(args.addr).map_err(|e| {
            io::Error::new(e.kind(), format!("connection {i} to {}: {e}", args.addr))
        })?;
        streams.push(s);
    }
    if let Some(path) = &args.ready {
        std::fs::write(path, format!("{}\n", args.conns))?;
    }
    let (idle, max_wait) = (args.idle, args.max_wait);
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| std::thread::spawn(move || drain(s, idle, max_wait)))
        .collect();
    let mut seen: Vec<Seen> = Vec::with_capacity(handles.len());
    for h in handles {
        match h.join() {
            Ok(r) => seen.push(r?),
            Err(_) => return Err(io::Error::other("a reader thread panicked")),
        }
    }
    let mut per: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let listed = per.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    per.sort_unstable();
    let first = seen
        .iter()
        .map(|s| s.1)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    let last = seen.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "tcp_sink conns={} total={} min={} median={} max={} first_ns={first} last_ns={last} per_conn={listed}",
        per.len(),
        per.iter().sum::<u64>(),
        per.first().copied().unwrap_or(0),
        per.get(per.len() / 2).copied().unwrap_or(0),
        per.last().copied().unwrap_or(0),
    );
    Ok(())
}
