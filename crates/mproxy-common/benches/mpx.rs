//! Criterion benches of the mpx core: frame encode/parse and reordering
//!
//! `cargo bench -p mproxy-common` (figures are per frame or per byte;
//! compare runs made on the same machine in the same session).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mproxy_common::mpx::{
    Event, FecConfig, FecDecoder, FecEncoder, Receiver, ReceiverConfig, Sender, SenderConfig,
    StreamKey,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram, FecRepr, Flags, FrameType, Repr};

fn frames(n: usize, payload: usize) -> Vec<Vec<u8>> {
    let cfg = SenderConfig {
        max_datagram: 24 + payload,
        framing: Framing::Bytes,
        heartbeat_interval: Duration::from_secs(1),
        repair_buffer: 0,
    };
    let mut s = Sender::new(1, 1, &cfg);
    let data = vec![b'x'; n * payload];
    let mut out = Vec::with_capacity(n);
    s.push(Instant::now(), &data, |f| out.push(f.to_vec()));
    out
}

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    for size in [100usize, 1448, 8168] {
        let payload = vec![0x42u8; size];
        let mut buf = vec![0u8; 24 + size];
        let repr = Repr {
            frame_type: FrameType::Data,
            flags: Flags::NONE,
            session: 7,
            stream: 1,
            seq: 9,
        };
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("emit", size), &size, |b, _| {
            b.iter(|| {
                repr.emit_with_payload(black_box(&mut buf), black_box(&payload))
                    .unwrap()
            })
        });
        let frame = buf.clone();
        g.bench_with_input(BenchmarkId::new("classify+parse", size), &size, |b, _| {
            b.iter(|| match classify(black_box(&frame)) {
                Datagram::Mpx(r, p) => (r.seq, p.len()),
                _ => unreachable!(),
            })
        });
    }
    g.finish();
}

fn reorder(c: &mut Criterion) {
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut g = c.benchmark_group("receiver");
    let n = 10_000;
    let in_order = frames(n, 1448);
    // every 8-frame block delivered in reverse: constant reordering
    let mut shuffled = in_order.clone();
    for block in shuffled.chunks_mut(8) {
        block.reverse();
    }
    g.throughput(Throughput::Bytes((n * 1448) as u64));
    for (name, input) in [("in_order", &in_order), ("reversed_blocks_of_8", &shuffled)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut rx = Receiver::new(ReceiverConfig::default());
                let now = Instant::now();
                let mut bytes = 0;
                for f in input.iter() {
                    rx.handle_datagram(now, from, f);
                    while let Some(ev) = rx.poll_event() {
                        if let Event::Data { payload, .. } = ev {
                            bytes += payload.len();
                            rx.recycle(payload);
                        }
                    }
                }
                assert_eq!(bytes, n * 1448);
            })
        });
    }
    g.finish();
}

fn sender(c: &mut Criterion) {
    let mut g = c.benchmark_group("sender");
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| {
            if i % 83 == 82 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("lines_1MB_1472", |b| {
        b.iter(|| {
            let mut s = Sender::new(1, 1, &SenderConfig::default());
            let mut n = 0usize;
            for chunk in data.chunks(65536) {
                s.push(Instant::now(), chunk, |f| n += f.len());
            }
            n
        })
    });
    g.finish();
}

/// FEC: encode a block of 256 full frames (10 % repair), and rebuild 26
/// lost frames of it; throughput in source payload bytes
fn fec(c: &mut Criterion) {
    let mut g = c.benchmark_group("fec");
    let k = 256usize;
    let payload = vec![0x5au8; 1448];
    g.throughput(Throughput::Bytes((k * payload.len()) as u64));
    let cfg = FecConfig::default();
    let mut enc = FecEncoder::new(cfg);
    let t = Instant::now();
    g.bench_function("encode 256x1448 +10%", |b| {
        b.iter(|| {
            for i in 0..k {
                enc.add(t, i as u32, Flags::NONE, black_box(&payload));
            }
            let mut n = 0;
            enc.flush(1, 1, |f| n += f.len());
            n
        })
    });
    let mut repairs = Vec::new();
    for i in 0..k {
        enc.add(t, i as u32, Flags::NONE, &payload);
    }
    enc.flush(1, 1, |f| repairs.push(f.to_vec()));
    let parsed: Vec<(FecRepr, Vec<u8>)> = repairs
        .iter()
        .map(|f| match classify(f) {
            Datagram::Mpx(_, p) => {
                let (r, s) = FecRepr::parse(p).unwrap();
                (r, s.to_vec())
            }
            _ => unreachable!(),
        })
        .collect();
    let key = StreamKey {
        session: 1,
        stream: 1,
    };
    g.bench_function("rebuild 26 of 256x1448", |b| {
        b.iter(|| {
            let mut dec = FecDecoder::new(64 << 20);
            let mut out = Vec::new();
            for i in 26..k {
                dec.on_source(key, i as u64, Flags::FEC, &payload, &mut out);
            }
            for (r, s) in &parsed {
                dec.on_repair(key, 0, *r, s, &mut out);
            }
            assert_eq!(out.len(), 26);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, wire, reorder, sender, fec);
criterion_main!(benches);
