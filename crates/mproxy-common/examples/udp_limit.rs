//! The kernel's UDP limit: a minimal sender/receiver pair with the best
//! batching Linux offers, as the yardstick for `bench/run.sh`.
//!
//! The sender blasts `--bytes` of `--payload`-byte datagrams, unpaced, at
//! a connected socket: `sendmmsg` with `--batch` messages per call, and
//! with `--gso` each message is a UDP GSO super-buffer (a `UDP_SEGMENT`
//! control message: the kernel cuts it into `--payload`-byte datagrams).
//! If the kernel refuses GSO it falls back to plain `sendmmsg` and says so.
//! `mark` then sends a few end markers (a separate process, so the
//! sender's wall time is the data alone; a different flow, so they are
//! never coalesced with data).
//!
//! The receiver drains its socket with `recvmmsg` (`--batch` per call);
//! with `--gro` it enables `UDP_GRO` and counts coalesced buffers by their
//! segment size. It stops at the first end marker, or when no datagram has
//! arrived for `--idle-ms` (or none at all for `--max-wait-s`).
//!
//! Each side prints one machine-readable line on stdout, e.g.
//!
//! ```text
//! udp_limit role=send mode=gso payload=1400 bytes=268435456 datagrams=191740 calls=66 errors=0 start_ns=.. end_ns=.. secs=0.101 gbps=21.2
//! udp_limit role=recv mode=gro bytes=268435456 datagrams=191740 truncated=0 kernel_drops=0 first_ns=.. last_ns=.. end=marker
//! ```
//!
//! ```sh
//! cargo build --release -p mproxy-common --example udp_limit
//! target/release/examples/udp_limit recv --addr 127.0.0.1:9000 --gro &
//! target/release/examples/udp_limit send --addr 127.0.0.1:9000 --bytes 256MiB --payload 1400 --gso
//! target/release/examples/udp_limit mark --addr 127.0.0.1:9000
//! ```
//!
//! Linux only (sendmmsg, recvmmsg, UDP_SEGMENT, UDP_GRO, SO_RXQ_OVFL).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The end marker's payload (sent from a second socket)
const MARKER: &[u8] = b"UDP_LIMIT_END";
/// How many end markers the sender sends, 20 ms apart
const MARKERS: usize = 3;
/// Largest UDP payload over IPv4
const MAX_UDP: usize = 65_507;
/// Segments per GSO buffer the kernel accepts on every GSO-capable version
const MAX_SEGMENTS: usize = 64;
/// Room for the control messages of one received datagram
type Control = [u64; 8];

/// What the command line asked for
struct Args {
    role: Role,
    addr: SocketAddr,
    bytes: u64,
    payload: usize,
    batch: usize,
    offload: bool,
    idle: Duration,
    max_wait: Duration,
    rcvbuf: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Send,
    Recv,
    Mark,
}

const USAGE: &str = "usage:
  udp_limit send --addr HOST:PORT --bytes N[KiB|MiB|GiB] [--payload 1400] [--batch 64] [--gso]
  udp_limit recv --addr HOST:PORT [--batch 64] [--gro] [--idle-ms 1000] [--max-wait-s 60] [--rcvbuf 8MiB]
  udp_limit mark --addr HOST:PORT    (the end markers: 3 datagrams, 20 ms apart)";

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("udp_limit: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.role {
        Role::Send => send(&args),
        Role::Recv => recv(&args),
        Role::Mark => mark(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_limit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let role = match it.next().as_deref() {
        Some("send") => Role::Send,
        Some("recv") => Role::Recv,
        Some("mark") => Role::Mark,
        Some("-h" | "--help") | None => return Err("expected 'send' or 'recv'".into()),
        Some(other) => return Err(format!("unknown role {other:?}")),
    };
    let mut args = Args {
        role,
        addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
        bytes: 0,
        payload: 1400,
        batch: 64,
        offload: false,
        idle: Duration::from_millis(1000),
        max_wait: Duration::from_secs(60),
        rcvbuf: 8 << 20,
    };
    let mut addr_given = false;
    while let Some(flag) = it.next() {
        if flag == "--gso" || flag == "--gro" {
            args.offload = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: {what}: {value:?}");
        match flag.as_str() {
            "--addr" => {
                args.addr = value.parse().map_err(|_| bad("not HOST:PORT"))?;
                addr_given = true;
            }
            "--bytes" => args.bytes = parse_size(&value).ok_or_else(|| bad("not a size"))?,
            "--payload" => {
                args.payload = value.parse().map_err(|_| bad("not a number"))?;
                if args.payload == 0 || args.payload > MAX_UDP {
                    return Err(bad("must be 1..=65507"));
                }
            }
            "--batch" => {
                args.batch = value.parse().map_err(|_| bad("not a number"))?;
                if args.batch == 0 || args.batch > 1024 {
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
            "--rcvbuf" => {
                let n = parse_size(&value).ok_or_else(|| bad("not a size"))?;
                args.rcvbuf = usize::try_from(n).map_err(|_| bad("too large"))?;
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if !addr_given {
        return Err("--addr is required".into());
    }
    if role == Role::Send && args.bytes == 0 {
        return Err("send needs --bytes > 0".into());
    }
    Ok(args)
}

/// `1234`, `64KiB`, `256MiB`, `1GiB`
fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

fn setsockopt_int(sock: &UdpSocket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: plain setsockopt on an open descriptor with a live int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(sock: &UdpSocket, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: plain getsockopt on an open descriptor into a live int.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------- sender

/// Sends `msgs` (lengths into `buf`) with one sendmmsg, each with a
/// UDP_SEGMENT control message of `segment` bytes when `segment > 0`;
/// returns how many messages the kernel took
fn sendmmsg_batch(sock: &UdpSocket, buf: &[u8], lens: &[usize], segment: u16) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = lens
        .iter()
        .map(|&len| libc::iovec {
            // The kernel only reads through this pointer.
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: len.min(buf.len()),
        })
        .collect();
    let mut controls: Vec<[u64; 4]> = vec![[0; 4]; lens.len()];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let cmsg_space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(lens.len());
    for (iov, control) in iovs.iter_mut().zip(controls.iter_mut()) {
        // SAFETY: an all-zero mmsghdr is a valid starting value.
        let mut h: libc::mmsghdr = unsafe { zeroed() };
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        if segment > 0 {
            h.msg_hdr.msg_control = control.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = cmsg_space as _;
            // SAFETY: msg_control points at 32 bytes, more than
            // CMSG_SPACE(2); the header and data written stay inside.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                if !cmsg.is_null() {
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                }
            }
        }
        hdrs.push(h);
    }
    loop {
        // SAFETY: every header points at live iovecs, buffers and control
        // messages owned by this frame for the whole call.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn send(args: &Args) -> io::Result<()> {
    let sock = UdpSocket::bind(unspecified_like(&args.addr))?;
    sock.connect(args.addr)?;
    let payload = args.payload;
    // A GSO buffer holds whole segments, at most 64 of them, within one
    // UDP datagram's size limit.
    let per_gso = (MAX_UDP / payload).clamp(1, MAX_SEGMENTS);
    let mut mode = if args.offload && per_gso > 1 {
        "gso"
    } else {
        "mmsg"
    };
    let mut note = String::new();
    if args.offload && per_gso == 1 {
        note = " note=payload-too-large-for-gso".into();
    }
    // Printable, newline-free filler: the content is irrelevant.
    let buf: Vec<u8> = (0..per_gso * payload)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let (mut datagrams, mut calls, mut errors) = (0u64, 0u64, 0u64);
    let mut sent: u64 = 0;
    let start_ns = now_ns();
    let start = Instant::now();
    let mut lens: Vec<usize> = Vec::with_capacity(args.batch);
    while sent < args.bytes {
        let chunk = if mode == "gso" {
            per_gso * payload
        } else {
            payload
        };
        lens.clear();
        let mut planned = sent;
        while lens.len() < args.batch && planned < args.bytes {
            let len = (args.bytes - planned).min(chunk as u64) as usize;
            lens.push(len);
            planned += len as u64;
        }
        let segment = if mode == "gso" { payload as u16 } else { 0 };
        calls += 1;
        match sendmmsg_batch(&sock, &buf, &lens, segment) {
            Ok(n) => {
                for &len in &lens[..n] {
                    sent += len as u64;
                    datagrams += len.div_ceil(payload) as u64;
                }
            }
            Err(e) if mode == "gso" && sent == 0 => {
                // EIO, EINVAL, ENOPROTOOPT...: no UDP GSO here.
                note = format!(" note=gso-unavailable:{}", e.raw_os_error().unwrap_or(0));
                eprintln!("udp_limit: UDP GSO refused ({e}); falling back to sendmmsg");
                mode = "mmsg";
            }
            Err(e) => match e.raw_os_error() {
                // Transient: a full queue, or an ICMP error reported late.
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED) => {
                    errors += 1;
                    if errors > 1_000_000 {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("giving up after {errors} send errors: {e}"),
                        ));
                    }
                }
                _ => return Err(io::Error::new(e.kind(), format!("sendmmsg: {e}"))),
            },
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let end_ns = now_ns();
    let gbps = if secs > 0.0 {
        sent as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    };
    println!(
        "udp_limit role=send mode={mode} payload={payload} bytes={sent} datagrams={datagrams} \
         calls={calls} errors={errors} start_ns={start_ns} end_ns={end_ns} secs={secs:.6} \
         gbps={gbps:.3}{note}"
    );
    Ok(())
}

/// End markers from their own socket: another flow than the data (never
/// coalesced with it) and queued behind it
fn mark(args: &Args) -> io::Result<()> {
    let sock = UdpSocket::bind(unspecified_like(&args.addr))?;
    for i in 0..MARKERS {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = sock.send_to(MARKER, args.addr) {
            eprintln!("udp_limit: end marker {i}: {e}");
        }
    }
    Ok(())
}

// -------------------------------------------------------------- receiver

fn recv(args: &Args) -> io::Result<()> {
    let sock = UdpSocket::bind(args.addr)?;
    let want = i32::try_from(args.rcvbuf).unwrap_or(i32::MAX);
    // SO_RCVBUFFORCE needs CAP_NET_ADMIN (ours inside the namespace);
    // otherwise the request is clamped to net.core.rmem_max.
    if setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err() {
        setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
    }
    let rcvbuf = getsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    let mut mode = "mmsg";
    let mut note = String::new();
    if args.offload {
        match setsockopt_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1) {
            Ok(()) => mode = "gro",
            Err(e) => {
                note = format!(" note=gro-unavailable:{}", e.raw_os_error().unwrap_or(0));
                eprintln!("udp_limit: UDP_GRO refused ({e}); receiving without it");
            }
        }
    }
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    // With GRO one buffer may hold a whole coalesced 64 KiB train.
    let slot = 65_536;
    let n = args.batch;
    let mut bufs = vec![0u8; n * slot];
    let mut controls: Vec<Control> = vec![[0; 8]; n];
    let (mut bytes, mut datagrams, mut truncated, mut kernel_drops) = (0u64, 0u64, 0u64, 0u32);
    let (mut first_ns, mut last_ns) = (0u128, 0u128);
    let started = Instant::now();
    let mut last_data: Option<Instant> = None;
    let end;
    eprintln!(
        "udp_limit: receiving on {} (SO_RCVBUF {rcvbuf}, {mode})",
        args.addr
    );
    loop {
        let mut iovs: Vec<libc::iovec> = bufs
            .chunks_mut(slot)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(controls.iter_mut())
            .map(|(iov, control)| {
                // SAFETY: an all-zero mmsghdr is a valid starting value.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = control.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<Control>() as _;
                h
            })
            .collect();
        // SAFETY: every header points at live buffers and control space of
        // the recorded sizes, owned by this frame for the whole call.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => match last_data {
                    Some(t) if t.elapsed() >= args.idle => {
                        end = "idle";
                        break;
                    }
                    None if started.elapsed() >= args.max_wait => {
                        end = "no-data";
                        break;
                    }
                    _ => continue,
                },
                _ => return Err(io::Error::new(err.kind(), format!("recvmmsg: {err}"))),
            }
        }
        let now = now_ns();
        let mut saw_marker = false;
        for (i, h) in hdrs.iter().take(rc as usize).enumerate() {
            let len = h.msg_len as usize;
            let mut segment = 0usize;
            // SAFETY: the kernel filled msg_control with well-formed cmsgs.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !cmsg.is_null() {
                    let c = &*cmsg;
                    if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SO_RXQ_OVFL {
                        kernel_drops =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u32>());
                    } else if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == libc::UDP_GRO {
                        let s = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
                        segment = usize::try_from(s).unwrap_or(0);
                    }
                    cmsg = libc::CMSG_NXTHDR(&h.msg_hdr, cmsg);
                }
            }
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                truncated += 1;
            }
            let data = &bufs[i * slot..i * slot + len.min(slot)];
            if data == MARKER {
                saw_marker = true;
                continue;
            }
            if first_ns == 0 {
                first_ns = now;
            }
            last_ns = now;
            bytes += len as u64;
            datagrams += if segment > 0 {
                len.div_ceil(segment) as u64
            } else {
                1
            };
        }
        if rc > 0 && last_ns == now {
            last_data = Some(Instant::now());
        }
        if saw_marker {
            end = "marker";
            break;
        }
    }
    println!(
        "udp_limit role=recv mode={mode} rcvbuf={rcvbuf} bytes={bytes} datagrams={datagrams} \
         truncated={truncated} kernel_drops={kernel_drops} first_ns={first_ns} last_ns={last_ns} \
         end={end}{note}"
    );
    Ok(())
}
