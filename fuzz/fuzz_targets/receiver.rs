//! Fuzz the receiver with arbitrary datagram sequences and clock steps:
//! no panic, memory (reorder buffers and FEC symbols) and stream count
//! stay within the configured bounds.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mproxy_common::mpx::{Receiver, ReceiverConfig};

fuzz_target!(|data: &[u8]| {
    let cfg = ReceiverConfig {
        reorder_window: 32,
        max_streams: 8,
        reorder_bytes: 4096,
        memory_limit: 16384,
        fec_memory: 65536,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(cfg);
    let from: SocketAddr = "192.0.2.1:9".parse().expect("addr");
    let mut now = Instant::now();
    // input: [len u8][step_ms u8][bytes...] records
    let mut rest = data;
    while let [len, step, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (dgram, next) = tail.split_at(n);
        now += Duration::from_millis(u64::from(*step));
        rx.handle_datagram(now, from, dgram);
        rx.handle_timeout(now);
        while rx.poll_event().is_some() {}
        assert!(rx.stream_count() <= 8);
        assert!(rx.buffered_bytes() <= 16384 + 8 * 256);
        assert!(rx.fec_bytes() <= 65536);
        rest = next;
    }
    rx.close_all();
    while rx.poll_event().is_some() {}
    assert_eq!(rx.buffered_bytes(), 0);
    assert_eq!(rx.fec_bytes(), 0);
});
