//! Criterion benches of keyed mpx frames: seal and open per frame
//!
//! `cargo bench -p mproxy-common --bench auth` (figures per frame; the
//! datagram sizes 1472 and 8192 include the 24-byte header and the
//! 36-byte trailer and tag). Also what a forged frame costs a receiver:
//! one under a tracked subkey, one naming a new subkey (HKDF + key setup
//! before the tag check).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mproxy_common::mpx::auth::{Aead, Key, Keyring, Opener, OpenerConfig, Sealer, Suite, OVERHEAD};
use mproxy_common::wire::{Flags, FrameType, Repr, HEADER_LEN};

const SUITES: [(Aead, bool, &str); 4] = [
    (Aead::Aes256Gcm, true, "aes-gcm"),
    (Aead::Aes256Gcm, false, "aes-gcm-auth"),
    (Aead::ChaCha20Poly1305, true, "chacha"),
    (Aead::ChaCha20Poly1305, false, "chacha-auth"),
];

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// An unkeyed DATA frame that seals into exactly `datagram` bytes
fn template(datagram: usize) -> (Vec<u8>, usize) {
    let payload = vec![0x5au8; datagram - HEADER_LEN - OVERHEAD];
    let repr = Repr {
        frame_type: FrameType::Data,
        flags: Flags::NONE,
        session: 7,
        stream: 1,
        seq: 9,
    };
    let mut buf = vec![0u8; datagram];
    let len = repr.emit_with_payload(&mut buf, &payload).unwrap();
    (buf, len)
}

fn keyed(c: &mut Criterion) {
    let keys = Keyring::new(vec![Key::from_bytes(&[0x42; 32])]).unwrap();
    let mut g = c.benchmark_group("auth");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    for datagram in [1472usize, 8192] {
        g.throughput(Throughput::Bytes((datagram - HEADER_LEN - OVERHEAD) as u64));
        for (aead, encrypt, name) in SUITES {
            let suite = Suite { aead, encrypt };
            let (template, len) = template(datagram);
            let mut sealer = Sealer::new(&keys, suite, now()).unwrap();

            // sealing the same buffer again and again costs what sealing a
            // fresh frame does (the payload is just bytes to the AEAD)
            let mut buf = template.clone();
            g.bench_function(BenchmarkId::new(format!("seal/{name}"), datagram), |b| {
                b.iter(|| {
                    sealer
                        .seal(black_box(now()), black_box(&mut buf), len)
                        .unwrap()
                })
            });

            let mut opener = Opener::new(&keys, &OpenerConfig::default());
            let mut fresh = || {
                let mut f = template.clone();
                sealer.seal(now(), &mut f, len).unwrap();
                f
            };
            g.bench_function(BenchmarkId::new(format!("open/{name}"), datagram), |b| {
                b.iter_batched_ref(
                    &mut fresh,
                    |f| opener.open(black_box(now()), f).unwrap().payload.len(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();

    // forged frames: what an attacker without the key costs a receiver
    let mut g = c.benchmark_group("auth-forged");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    let (template, len) = template(1472);
    let mut sealer = Sealer::new(&keys, Suite::default(), now()).unwrap();
    let mut genuine = template.clone();
    sealer.seal(now(), &mut genuine, len).unwrap();
    let mut opener = Opener::new(&keys, &OpenerConfig::default());
    opener.open(now(), &mut genuine.clone()).unwrap();
    let mut forged = genuine.clone();
    forged[HEADER_LEN] ^= 1;
    g.bench_function("bad-tag/tracked-subkey/1472", |b| {
        b.iter_batched_ref(
            || forged.clone(),
            |f| opener.open(now(), f).unwrap_err(),
            BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    let origin_at = forged.len() - OVERHEAD;
    g.bench_function("bad-tag/new-subkey/1472", |b| {
        b.iter_batched_ref(
            || {
                let mut f = forged.clone();
                n += 1;
                f[origin_at..origin_at + 8].copy_from_slice(&n.to_be_bytes());
                f
            },
            |f| opener.open(now(), f).unwrap_err(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, keyed);
criterion_main!(benches);
