//! Keyed frames: published vectors, round trips, forgeries, replay,
//! freshness, nonce uniqueness, bounded state

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::*;
use crate::wire::{classify, Datagram, Error as WireError, Flags, FrameType, Repr};

/// 2027-01-15T08:00:00Z, the epoch of the vectors
const T0: u64 = 1_800_000_000;
const ORIGIN: [u8; ORIGIN_LEN] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab,
];

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn vector_key() -> Key {
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    Key::from_bytes(&k)
}

fn ring_of(keys: &[Key]) -> Keyring {
    Keyring::new(keys.to_vec()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const AES: Suite = Suite {
    aead: Aead::Aes256Gcm,
    encrypt: true,
};
const AES_AUTH: Suite = Suite {
    aead: Aead::Aes256Gcm,
    encrypt: false,
};
const CHACHA: Suite = Suite {
    aead: Aead::ChaCha20Poly1305,
    encrypt: true,
};
const CHACHA_AUTH: Suite = Suite {
    aead: Aead::ChaCha20Poly1305,
    encrypt: false,
};
const SUITES: [Suite; 4] = [AES, AES_AUTH, CHACHA, CHACHA_AUTH];

/// Vector 1 of PROTOCOL.md §15: DATA, OPEN|FIN, stream 7, "hi\n"
fn data_repr() -> Repr {
    Repr {
        frame_type: FrameType::Data,
        flags: Flags::OPEN | Flags::FIN,
        session: 0x0123_4567_89ab_cdef,
        stream: 7,
        seq: 0x0102_0304,
    }
}

/// An unkeyed frame with room for the trailer
fn frame(repr: &Repr, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; HEADER_LEN + payload.len() + OVERHEAD];
    let len = repr.emit_with_payload(&mut buf, payload).unwrap();
    (buf, len)
}

fn sealed(sealer: &mut Sealer, now: SystemTime, repr: &Repr, payload: &[u8]) -> Vec<u8> {
    let (mut buf, len) = frame(repr, payload);
    let n = sealer.seal(now, &mut buf, len).unwrap();
    assert_eq!(n, buf.len());
    buf
}

fn opener(keys: &Keyring) -> Opener {
    Opener::new(keys, &OpenerConfig::default())
}

#[test]
fn test_key_id_and_subkey_vectors() {
    let key = vector_key();
    assert_eq!(key.id(), KeyId([0xce, 0xea, 0x68]));
    assert_eq!(key.id().to_string(), "ceea68");
    let epoch = T0 as u32;
    for (suite, want) in [
        (
            AES,
            "601644a51d4401f19f288059665a7127e1fc01a5223edbf8a8aa0803adce3982",
        ),
        (
            AES_AUTH,
            "9f8ae7bd62d057d3e8fe3eabbb12d673b004d1d7ef295e36209e1138d7e559ba",
        ),
        (
            CHACHA,
            "b9aed343c1e7ce167bfbd1f5db38ce70f20c2dffb6dfd661e56611741f5b6ec3",
        ),
        (
            CHACHA_AUTH,
            "1b4177d0a73dc0d1762ca079d0d818937ff38aed07a3b7cb1566493c723914cc",
        ),
    ] {
        assert_eq!(
            derive_subkey_bytes(key.prk(), suite, &ORIGIN, epoch).to_vec(),
            hex(want),
            "{suite}"
        );
    }
}

/// PROTOCOL.md §16.10, vectors K3-K6 (computed independently from the text
/// with Python's `cryptography` and `hmac`)
#[test]
fn test_sealed_frame_vectors() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    let nack_repr = Repr {
        frame_type: FrameType::Nack,
        flags: Flags::NONE,
        session: 0x0123_4567_89ab_cdef,
        stream: 7,
        seq: 5,
    };
    let nack_payload = hex("00 00 00 07 00 01 ff ff ff ff 01 2c");
    let k3_0 = "a7 4d 21 03 01 ce ea 68 01 23 45 67 89 ab cd ef 00 00 00 07 01 02 03 04
                b9 e9 8b a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab 6b 49 d2 00 00 00 00 00
                06 32 6f 90 bc 0a 5b 3b f8 7c c3 af d4 5f fa f9";
    let k3_1 = "a7 4d 21 03 01 ce ea 68 01 23 45 67 89 ab cd ef 00 00 00 07 01 02 03 04
                b3 b7 bd a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab 6b 49 d2 00 00 00 00 01
                42 e7 a9 ba 15 98 de 37 6a 40 06 a6 44 4b f8 77";
    let k4 = "a7 4d 23 00 12 ce ea 68 01 23 45 67 89 ab cd ef 00 00 00 07 00 00 00 05
              00 00 00 07 00 01 ff ff ff ff 01 2c
              a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab 6b 49 d2 00 00 00 00 00
              cf 23 e7 a9 16 0e 67 28 9b 35 5a ce 61 fd a5 59";
    let k5 = "a7 4d 21 03 02 ce ea 68 01 23 45 67 89 ab cd ef 00 00 00 07 01 02 03 04
              4f 57 e3 a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab 6b 49 d2 00 00 00 00 00
              f8 64 b7 77 75 77 13 53 d1 bf 4e b6 94 ca 14 e6";
    let k6 = "a7 4d 21 03 11 ce ea 68 01 23 45 67 89 ab cd ef 00 00 00 07 01 02 03 04
              68 69 0a a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab 6b 49 d2 00 00 00 00 00
              5d 8f 49 5c 50 d9 e9 b1 06 5e ce bd da ca 17 1d";

    let mut s = Sealer::with_origin(&keys, AES, ORIGIN, T0 as u32).unwrap();
    let f0 = sealed(&mut s, now, &data_repr(), b"hi\n");
    // the same frame sent again (a retransmission) takes the next counter
    let f1 = sealed(&mut s, now, &data_repr(), b"hi\n");
    assert_eq!(f0, hex(k3_0));
    assert_eq!(f1, hex(k3_1));
    let mut s = Sealer::with_origin(&keys, CHACHA_AUTH, ORIGIN, T0 as u32).unwrap();
    let f4 = sealed(&mut s, now, &nack_repr, &nack_payload);
    assert_eq!(f4, hex(k4));
    let mut s = Sealer::with_origin(&keys, CHACHA, ORIGIN, T0 as u32).unwrap();
    let f5 = sealed(&mut s, now, &data_repr(), b"hi\n");
    assert_eq!(f5, hex(k5));
    let mut s = Sealer::with_origin(&keys, AES_AUTH, ORIGIN, T0 as u32).unwrap();
    let f6 = sealed(&mut s, now, &data_repr(), b"hi\n");
    assert_eq!(f6, hex(k6));

    let mut o = opener(&keys);
    for (mut f, repr, payload) in [
        (f0, data_repr(), b"hi\n".to_vec()),
        (f1, data_repr(), b"hi\n".to_vec()),
        (f4, nack_repr, nack_payload.clone()),
        (f5, data_repr(), b"hi\n".to_vec()),
        (f6, data_repr(), b"hi\n".to_vec()),
    ] {
        let got = o.open(now, &mut f).unwrap();
        assert_eq!(got.repr, repr);
        assert_eq!(&f[got.payload.clone()], payload.as_slice());
        assert_eq!(got.key, KeyId([0xce, 0xea, 0x68]));
        assert_eq!(got.origin, ORIGIN);
    }
    let nack: Vec<_> = crate::wire::parse_nack(&nack_payload).collect();
    assert_eq!(nack.len(), 2);
    assert_eq!(o.stats().opened, 5);
}

#[test]
fn test_round_trip_every_type_both_aeads_both_modes() {
    let keys = ring_of(&[Key::generate().unwrap()]);
    let now = at(T0);
    let types = [
        FrameType::Data,
        FrameType::Heartbeat,
        FrameType::Nack,
        FrameType::Repair,
        FrameType::Fec,
        FrameType::Feedback,
        FrameType::Window,
        FrameType::Unknown(9),
        FrameType::Unknown(15),
    ];
    for suite in SUITES {
        let mut s = Sealer::new(&keys, suite, now).unwrap();
        let mut o = opener(&keys);
        for (i, t) in types.into_iter().enumerate() {
            for size in [0usize, 1, 28, 1412, 8156] {
                let repr = Repr {
                    frame_type: t,
                    flags: Flags(i as u8),
                    session: 0xfeed_0000 + i as u64,
                    stream: size as u32,
                    seq: u32::MAX - i as u32,
                };
                let payload: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
                let mut f = sealed(&mut s, now, &repr, &payload);
                assert!(is_keyed(&f));
                assert_eq!(f.len(), HEADER_LEN + size + OVERHEAD);
                let wire_payload = f[HEADER_LEN..HEADER_LEN + size].to_vec();
                if suite.encrypt && size >= 16 {
                    assert_ne!(wire_payload, payload, "{suite} sealed payload in clear");
                } else if !suite.encrypt {
                    assert_eq!(wire_payload, payload, "{suite} auth-only payload changed");
                }
                let got = o.open(now, &mut f).unwrap();
                assert_eq!(got.repr, repr, "{suite} {t}");
                assert_eq!(got.suite, suite);
                assert_eq!(got.payload, HEADER_LEN..HEADER_LEN + size);
                assert_eq!(&f[got.payload], payload.as_slice(), "{suite} {t} {size}");
            }
        }
        assert_eq!(o.stats().opened, (types.len() * 5) as u64);
        assert_eq!(o.stats().refused(), 0);
        assert_eq!(s.stats().sealed, (types.len() * 5) as u64);
    }
}

#[test]
fn test_tamper_any_bit_is_refused_and_consumes_nothing() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    for suite in SUITES {
        let mut s = Sealer::new(&keys, suite, now).unwrap();
        let good = sealed(&mut s, now, &data_repr(), b"position 59.1N 10.7E\n");
        let mut o = opener(&keys);
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut f = good.clone();
                f[i] ^= 1 << bit;
                let e = o.open(now, &mut f).unwrap_err();
                let want = match i {
                    0 | 1 => AuthError::NotMpx,
                    // version nibble 2 -> 3, 6, 10 or back to 0: only 3 of 4 are not 1
                    2 if bit >= 4 => AuthError::Malformed,
                    // the encrypt bit flips to the other valid mode
                    4 if bit == 4 => AuthError::BadTag,
                    4 => AuthError::Malformed,
                    5..=7 => AuthError::UnknownKeyId,
                    _ => AuthError::BadTag,
                };
                assert_eq!(e, want, "{suite}: byte {i} bit {bit}");
            }
        }
        // each cut or extension is refused too
        for cut in 1..good.len() {
            let mut f = good[..good.len() - cut].to_vec();
            assert!(o.open(now, &mut f).is_err(), "{suite}: cut {cut}");
        }
        let mut f = good.clone();
        f.push(0);
        assert_eq!(o.open(now, &mut f), Err(AuthError::BadTag));
        // nothing was tracked or marked: the genuine frame still opens, once
        assert_eq!(o.tracked(), 0);
        let mut f = good.clone();
        assert!(o.open(now, &mut f).is_ok(), "{suite}");
        let mut f = good.clone();
        assert_eq!(o.open(now, &mut f), Err(AuthError::Replayed));
        let st = o.stats();
        assert_eq!(st.opened, 1);
        assert_eq!(st.replayed, 1);
        assert!(st.bad_tag > 0 && st.malformed > 0 && st.unknown_key_id > 0 && st.not_mpx > 0);
    }
}

#[test]
fn test_replay_window() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    let mut s = Sealer::new(&keys, AES, now).unwrap();
    let frames: Vec<Vec<u8>> = (0..10_000)
        .map(|_| sealed(&mut s, now, &data_repr(), b"x"))
        .collect();
    let mut o = Opener::new(
        &keys,
        &OpenerConfig {
            replay_window: 1024,
            ..OpenerConfig::default()
        },
    );
    // in order, then all again
    for f in &frames[..5000] {
        assert!(o.open(now, &mut f.clone()).is_ok());
    }
    for f in &frames[..5000] {
        assert_eq!(o.open(now, &mut f.clone()), Err(AuthError::Replayed));
    }
    // out of order within the window: accepted once
    for f in frames[5000..6000].iter().rev() {
        assert!(o.open(now, &mut f.clone()).is_ok());
    }
    // a frame far behind the newest is refused even if never seen
    assert!(o.open(now, &mut frames[9999].clone()).is_ok());
    assert_eq!(
        o.open(now, &mut frames[8000].clone()),
        Err(AuthError::Replayed)
    );
    assert!(o.open(now, &mut frames[9000].clone()).is_ok());
    assert_eq!(o.stats().replayed, 5001);
}

#[test]
fn test_stale_sessions_refused() {
    let keys = ring_of(&[vector_key()]);
    let sent = T0;
    let mut s = Sealer::new(&keys, CHACHA, at(sent)).unwrap();
    let f = sealed(&mut s, at(sent), &data_repr(), b"yesterday");
    let lifetime = SUBKEY_LIFETIME.as_secs();
    let skew = DEFAULT_MAX_SKEW.as_secs();
    for (now, ok) in [
        (sent, true),
        (sent + lifetime + skew, true),
        (sent + lifetime + skew + 1, false),
        (sent + 86_400, false),
        (sent - skew, true),
        (sent - skew - 1, false),
    ] {
        let mut o = opener(&keys);
        let r = o.open(at(now), &mut f.clone());
        if ok {
            assert!(r.is_ok(), "now {now}: {r:?}");
        } else {
            assert_eq!(r, Err(AuthError::StaleSession), "now {now}");
            assert_eq!(o.stats().stale, 1);
            assert_eq!(o.tracked(), 0);
        }
    }
    // a wider allowance accepts the same frame later
    let mut o = Opener::new(
        &keys,
        &OpenerConfig {
            max_skew: Duration::from_secs(3600),
            ..OpenerConfig::default()
        },
    );
    assert!(o.open(at(sent + 3000), &mut f.clone()).is_ok());
}

#[test]
fn test_sender_renews_subkey_and_receiver_follows() {
    let keys = ring_of(&[vector_key()]);
    let mut s = Sealer::new(&keys, AES, at(T0)).unwrap();
    let mut o = opener(&keys);
    let (o0, e0, _) = s.position();
    let mut open = |s: &mut Sealer, t: u64| {
        let mut f = sealed(s, at(t), &data_repr(), b"tick");
        o.open(at(t), &mut f).map(|op| op.origin)
    };
    assert_eq!(open(&mut s, T0), Ok(o0));
    assert_eq!(open(&mut s, T0 + 59), Ok(o0));
    let o1 = open(&mut s, T0 + 60).unwrap();
    assert_ne!(o1, o0);
    let (_, e1, c1) = s.position();
    assert_eq!((e1, c1), (e0 + 60, 1));
    // the clock stepped back: a new subkey too
    let o2 = open(&mut s, T0 + 30).unwrap();
    assert!(o2 != o1 && o2 != o0);
    // the counter used up: a new subkey
    s.set_counter(u32::MAX - 1);
    let o3 = open(&mut s, T0 + 31).unwrap();
    assert_eq!(s.position().2, u32::MAX);
    let o4 = open(&mut s, T0 + 31).unwrap();
    assert_ne!(o3, o4);
    assert_eq!(s.position().2, 1);
    assert_eq!(s.stats().subkeys, 4);
    assert_eq!(o.stats().subkeys, 4);
}

#[test]
fn test_wrong_key_and_roll_over() {
    let old = Key::generate().unwrap();
    let new = Key::generate().unwrap();
    let now = at(T0);
    let mut by_old = Sealer::new(&ring_of(std::slice::from_ref(&old)), AES, now).unwrap();
    // during the roll-over senders put the new key first
    let mut by_new = Sealer::new(&ring_of(&[new.clone(), old.clone()]), AES, now).unwrap();
    assert_eq!(by_new.key_id(), new.id());
    let f_old = sealed(&mut by_old, now, &data_repr(), b"old");
    let f_new = sealed(&mut by_new, now, &data_repr(), b"new");

    let mut both = opener(&ring_of(&[old.clone(), new.clone()]));
    let got = both.open(now, &mut f_old.clone()).unwrap();
    assert_eq!(got.key, old.id());
    let got = both.open(now, &mut f_new.clone()).unwrap();
    assert_eq!(got.key, new.id());

    let mut only_old = opener(&ring_of(std::slice::from_ref(&old)));
    assert!(only_old.open(now, &mut f_old.clone()).is_ok());
    assert_eq!(
        only_old.open(now, &mut f_new.clone()),
        Err(AuthError::UnknownKeyId)
    );
    // a wrong key under a right key id (a forger guessing): bad tag
    let mut f = f_old.clone();
    let mut wrong = opener(&ring_of(&[new.clone().with_id(old.id())]));
    assert_eq!(wrong.open(now, &mut f), Err(AuthError::BadTag));
    assert_eq!(wrong.stats().bad_tag, 1);
}

#[test]
fn test_nonces_never_repeat() {
    // one sender: originals, re-sends of one seq, redundant copies, FEC and
    // heartbeats; a second sender with the same session id; subkey renewals
    let keys = ring_of(&[vector_key()]);
    let mut a = Sealer::new(&keys, AES, at(T0)).unwrap();
    let mut b = Sealer::new(&keys, AES, at(T0)).unwrap();
    let mut seen = HashSet::new();
    let mut ciphertexts = HashSet::new();
    let mut frames = 0;
    for i in 0..30_000u32 {
        let t = T0 + u64::from(i / 200); // 150 s: two renewals each
        let seq = if i % 3 == 0 { 7 } else { i }; // one seq sent 10,000 times
        let ty = match i % 5 {
            0 => FrameType::Fec,
            1 => FrameType::Heartbeat,
            _ => FrameType::Data,
        };
        let repr = Repr {
            frame_type: ty,
            flags: Flags::NONE,
            session: 1,
            stream: 1,
            seq,
        };
        for which in [0, 1, 0] {
            // [a, b, a]: a redundant copy over a second path
            let s = if which == 0 { &mut a } else { &mut b };
            let f = sealed(s, at(t), &repr, b"same payload");
            let end = f.len() - OVERHEAD;
            // (key id, suite, origin, epoch, counter) = (subkey, nonce)
            let mut nonce_id = f[4..8].to_vec();
            nonce_id.extend_from_slice(&f[end..f.len() - TAG_LEN]);
            assert!(seen.insert(nonce_id), "nonce repeated at frame {i}");
            ciphertexts.insert(f[HEADER_LEN..end].to_vec());
            frames += 1;
        }
    }
    assert_eq!(seen.len(), frames);
    // the same plaintext never encrypts the same way twice
    assert_eq!(ciphertexts.len(), frames);
    assert_eq!(a.stats().subkeys, 3);
    assert_eq!(b.stats().subkeys, 3);
}

#[test]
fn test_unkeyed_raw_and_unknown_versions() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    let mut o = opener(&keys);
    let (mut v1, len) = frame(&data_repr(), b"hi\n");
    v1.truncate(len);
    assert!(!is_keyed(&v1));
    assert_eq!(o.open(now, &mut v1.clone()), Err(AuthError::Unkeyed));
    assert_eq!(
        o.open(now, &mut b"$GPGGA,1\n".to_vec()),
        Err(AuthError::NotMpx)
    );
    assert_eq!(o.open(now, &mut Vec::new()), Err(AuthError::NotMpx));
    assert_eq!(o.open(now, &mut [0xa7, 0x4d]), Err(AuthError::Malformed));
    let mut v3 = v1.clone();
    v3[2] = 0x31;
    assert_eq!(o.open(now, &mut v3), Err(AuthError::Malformed));
    let mut s = Sealer::new(&keys, AES, now).unwrap();
    let f = sealed(&mut s, now, &data_repr(), b"");
    assert_eq!(f.len(), KEYED_MIN_LEN);
    assert_eq!(
        o.open(now, &mut f[..KEYED_MIN_LEN - 1].to_vec()),
        Err(AuthError::Malformed)
    );
    // an unkeyed receiver sees an invalid frame of unknown version 2
    assert!(matches!(
        classify(&f),
        Datagram::Invalid(WireError::UnknownVersion(2), _)
    ));
    let st = o.stats();
    assert_eq!((st.unkeyed, st.not_mpx, st.malformed), (1, 2, 3));
    // sealing something that is not a frame
    let mut junk = vec![0u8; 100];
    assert_eq!(s.seal(now, &mut junk, 30), Err(SealError::NotMpx));
    assert_eq!(s.seal(now, &mut junk, 10), Err(SealError::Truncated));
    let (mut buf, len) = frame(&data_repr(), b"abc");
    assert_eq!(
        s.seal(now, &mut buf[..len + OVERHEAD - 1], len),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(s.stats().errors, 3);
}

#[test]
fn test_subkey_table_bounded_and_forgeries_allocate_nothing() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    let mut o = Opener::new(
        &keys,
        &OpenerConfig {
            max_subkeys: 4,
            ..OpenerConfig::default()
        },
    );
    let mut senders: Vec<Sealer> = (0..5)
        .map(|_| Sealer::new(&keys, AES, now).unwrap())
        .collect();
    for s in &mut senders[..4] {
        assert!(o.open(now, &mut sealed(s, now, &data_repr(), b"a")).is_ok());
    }
    assert_eq!(o.tracked(), 4);
    let heap = o.heap_bytes();
    // forged frames under the known key id, random origins and counters
    let mut x: u64 = 1;
    for _ in 0..5000 {
        let mut f = sealed(&mut senders[0], now, &data_repr(), b"forged?");
        for b in f[HEADER_LEN..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let end = f.len() - OVERHEAD;
        f[end + ORIGIN_LEN..end + ORIGIN_LEN + 4].copy_from_slice(&(T0 as u32).to_be_bytes());
        assert_eq!(o.open(now, &mut f), Err(AuthError::BadTag));
    }
    assert_eq!(o.tracked(), 4);
    assert_eq!(o.heap_bytes(), heap);
    // a fifth genuine sender while the four are fresh: refused, counted
    let mut f = sealed(&mut senders[4], now, &data_repr(), b"b");
    assert_eq!(o.open(now, &mut f.clone()), Err(AuthError::TooManySenders));
    // once the four are stale they make room
    let later = at(T0 + 200);
    let mut fresh = Sealer::new(&keys, AES, later).unwrap();
    assert!(o
        .open(later, &mut sealed(&mut fresh, later, &data_repr(), b"c"))
        .is_ok());
    assert_eq!(o.tracked(), 1);
    let st = o.stats();
    assert_eq!(
        (st.too_many_senders, st.subkeys_evicted, st.subkeys),
        (1, 4, 1)
    );
    // the refused sender's frame is stale by now
    assert_eq!(o.open(later, &mut f), Err(AuthError::StaleSession));
}

#[test]
fn test_verify_leaves_the_datagram_for_relays() {
    let keys = ring_of(&[vector_key()]);
    let now = at(T0);
    for suite in SUITES {
        let mut s = Sealer::new(&keys, suite, now).unwrap();
        let f = sealed(&mut s, now, &data_repr(), b"relay me");
        let copy = f.clone();
        let mut relay = opener(&keys);
        let got = relay.verify(now, &f).unwrap();
        assert_eq!(f, copy);
        assert_eq!(&relay.last_plaintext()[got.payload], b"relay me");
        assert_eq!(relay.verify(now, &f), Err(AuthError::Replayed));
        // the receiver behind the relay opens the forwarded bytes
        let mut rx = opener(&keys);
        assert!(rx.open(now, &mut f.clone()).is_ok());
    }
}

#[test]
fn test_suite_bytes_and_names() {
    for suite in SUITES {
        assert_eq!(Suite::from_byte(suite.byte()), Some(suite));
    }
    assert_eq!(AES.byte(), 0x01);
    assert_eq!(CHACHA_AUTH.byte(), 0x12);
    assert_eq!(Suite::from_byte(0x00), None);
    assert_eq!(Suite::from_byte(0x03), None);
    assert_eq!(Suite::from_byte(0x21), None);
    assert_eq!(Suite::default(), AES);
    assert_eq!("chacha20-poly1305".parse(), Ok(Aead::ChaCha20Poly1305));
    assert_eq!("AES-256-GCM".parse(), Ok(Aead::Aes256Gcm));
    assert!("aes-128-gcm".parse::<Aead>().is_err());
    assert_eq!(CHACHA_AUTH.to_string(), "chacha20-poly1305 auth-only");
}
