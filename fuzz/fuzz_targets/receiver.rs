//! Fuzz the receiver with arbitrary datagram sequences, sources and clock
//! steps: no panic; memory (reorder buffers and FEC symbols) and stream
//! count stay within the configured bounds; the work of each call
//! (`ReceiverStats::work`) stays below a constant, whatever numbers the
//! datagrams carry; `close_all` releases everything.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mproxy_common::mpx::{Join, Receiver, ReceiverConfig};

/// Most operations one datagram may cost with this configuration: the
/// overheard NACK's 128 ranges and the intervals they replace, a timer
/// heap rebuild (4 x 8 streams + 1024), eviction scans of 8 streams
const DATAGRAM_WORK: u64 = 4096;
/// Most operations one `handle_timeout` may cost: the heap's entries,
/// and per due stream a scan of its window and NACK state
const TIMEOUT_WORK: u64 = 16_384;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = ReceiverConfig {
        reorder_window: 32,
        max_streams: 8,
        reorder_bytes: 4096,
        memory_limit: 16384,
        fec_memory: 65536,
        nack: mode & 1 != 0,
        window: mode & 2 != 0,
        join: if mode & 4 != 0 {
            Join::Earliest
        } else {
            Join::Current
        },
        jitter_seed: 1,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(cfg);
    let sources: [SocketAddr; 4] = [
        "192.0.2.1:9".parse().expect("addr"),
        "192.0.2.2:9".parse().expect("addr"),
        "198.51.100.7:53".parse().expect("addr"),
        "[2001:db8::1]:9".parse().expect("addr"),
    ];
    let mut now = Instant::now();
    // input: [len u8][step_ms u8][source u8][bytes...] records
    while let [len, step, source, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (dgram, next) = tail.split_at(n);
        now += Duration::from_millis(u64::from(*step));
        let from = sources[usize::from(*source) % sources.len()];
        let before = rx.stats().work;
        rx.handle_classified_on(
            now,
            from,
            usize::from(*source >> 4),
            mproxy_common::wire::classify(dgram),
        );
        let spent = rx.stats().work - before;
        assert!(spent <= DATAGRAM_WORK, "one datagram cost {spent}");
        let before = rx.stats().work;
        rx.handle_timeout(now);
        let spent = rx.stats().work - before;
        assert!(spent <= TIMEOUT_WORK, "one timeout cost {spent}");
        while rx.poll_event().is_some() {}
        while rx.poll_transmit().is_some() {}
        let _ = rx.allow_reply(from, 52);
        assert!(rx.stream_count() <= 8);
        assert!(rx.buffered_bytes() <= 16384 + 8 * 256);
        assert!(rx.fec_bytes() <= 65536);
        rest = next;
    }
    rx.close_all();
    while rx.poll_event().is_some() {}
    assert_eq!(rx.buffered_bytes(), 0);
    assert_eq!(rx.fec_bytes(), 0);
    assert_eq!(rx.stream_count(), 0);
});
