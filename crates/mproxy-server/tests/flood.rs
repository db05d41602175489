//! A flooded listener cannot starve the others: each socket is read up to
//! a budget per turn, so a frame on a quiet listener is written while
//! another one's queue never runs dry
//!
//! The flood is raw datagrams to an `--accept mpx` server (read and
//! counted, never written), sent as UDP GSO messages of 64 datagrams
//! that reach the GRO socket whole: one system call of the sender's is
//! 64 datagrams of the server's work, so its queue stays full.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::Encoder;
use mproxy_common::net::{send_segments, GSO_MAX_SEGMENTS};
use mproxy_common::pack::Framing;
use mproxy_server::{Accept, Config, Server};
use mproxy_testsupport::{in_netns, wait_until, TempDir};

#[test]
fn a_flooded_listener_does_not_starve_a_quiet_one() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let flooded: SocketAddr = "127.0.0.1:7701".parse().unwrap();
        let quiet: SocketAddr = "127.0.0.1:7702".parse().unwrap();
        let mut config = Config::new(vec![
            flooded.to_string().parse().unwrap(),
            quiet.to_string().parse().unwrap(),
        ]);
        config.path = Some(out.clone());
        config.accept = Accept::Mpx;
        let shutdown = Shutdown::new();
        // (threads spawned here share the test thread's namespace)
        let (bound_tx, bound) = std::sync::mpsc::channel();
        let run = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let server = Server::bind(config).unwrap();
                bound_tx.send(()).unwrap();
                server.run(&shutdown)
            })
        };
        bound.recv_timeout(Duration::from_secs(10)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let flood_sent = Arc::new(AtomicU64::new(0));
        let flood = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&flood_sent));
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let datagram = [b'x'; 1000];
                let frames = vec![&datagram[..]; 16 * GSO_MAX_SEGMENTS];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = send_segments(&sock, &frames, flooded, usize::MAX) {
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
        };
        wait_until(Duration::from_secs(10), "the flood under way", || {
            flood_sent.load(Ordering::Relaxed) > 100_000
        });

        let marker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut enc = Encoder::new(Some((7, 1)), Framing::Bytes, 1000, Duration::from_secs(1));
        enc.push(std::time::Instant::now(), b"quiet\n", |f| {
            marker.send_to(f, quiet).unwrap();
        });
        wait_until(
            Duration::from_secs(10),
            "the quiet listener's frame written during the flood",
            || std::fs::read(&out).is_ok_and(|d| d == b"quiet\n"),
        );
        assert!(!flood.is_finished(), "the flood stopped early");

        stop.store(true, Ordering::Relaxed);
        flood.join().unwrap();
        shutdown.trigger();
        let summary = run.join().unwrap().unwrap();
        let flooded_stats = &summary.listeners[0].recv;
        assert!(flooded_stats.datagrams > 0, "{summary}");
        assert_eq!(summary.raw_dropped, flooded_stats.datagrams, "{summary}");
        assert!(flooded_stats.datagrams <= flood_sent.load(Ordering::Relaxed));
    });
}
