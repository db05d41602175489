//! Fuzz the keyed-frame decoder (`mpx::auth::Opener`)
//!
//! Two kinds of input, chosen by the first byte:
//! - arbitrary bytes, opened and verified: never a panic, and anything
//!   accepted has a payload range inside the datagram;
//! - a genuine frame sealed from fuzzer-chosen fields (suite, type, flags,
//!   payload, clock offset), then mutated (byte XORs, a cut or an
//!   extension): the receiver accepts it exactly when it is unchanged and
//!   fresh, with the sealed header and payload; a refused mutation
//!   consumes nothing (the genuine frame still opens afterwards, once);
//!   and the subkey table stays within its bound.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use mproxy_common::mpx::auth::{
    Aead, AuthError, Key, Keyring, Opener, OpenerConfig, Sealer, Suite, OVERHEAD,
};
use mproxy_common::wire::{Flags, FrameType, Repr, HEADER_LEN};

const T0: u64 = 1_800_000_000;
const MAX_SUBKEYS: usize = 8;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn opener(keys: &Keyring) -> Opener {
    Opener::new(
        keys,
        &OpenerConfig {
            max_subkeys: MAX_SUBKEYS,
            replay_window: 128,
            ..OpenerConfig::default()
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(keys) = Keyring::new(vec![
        Key::from_bytes(&[0x11; 32]),
        Key::from_bytes(&[0x22; 32]),
    ]) else {
        return;
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        arbitrary_bytes(&keys, rest);
    } else {
        mutated_frame(&keys, rest);
    }
});

fn arbitrary_bytes(keys: &Keyring, data: &[u8]) {
    let mut o = opener(keys);
    let now = at(T0);
    if let Ok(v) = o.verify(now, data) {
        assert!(v.payload.start == HEADER_LEN && v.payload.end + OVERHEAD == data.len());
    }
    let mut buf = data.to_vec();
    if let Ok(v) = o.open(now, &mut buf) {
        assert!(v.payload.end + OVERHEAD == data.len());
    }
    assert!(o.tracked() <= MAX_SUBKEYS);
    let st = o.stats();
    assert_eq!(st.opened + st.refused(), 2);
}

fn mutated_frame(keys: &Keyring, data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let suite = Suite {
        aead: if data[0] & 1 == 0 {
            Aead::Aes256Gcm
        } else {
            Aead::ChaCha20Poly1305
        },
        encrypt: data[0] & 2 == 0,
    };
    let repr = Repr {
        frame_type: FrameType::from(data[1] & 0x0f),
        flags: Flags(data[2]),
        session: 0x0123_4567_89ab_cdef,
        stream: u32::from(data[1] >> 4),
        seq: u32::from(data[2]) << 8,
    };
    // receiver clock: -128 .. +127 steps of 2 s from the sender's
    let offset = i64::from(data[3] as i8) * 2;
    let payload_len = usize::from(u16::from_be_bytes([data[4], data[5]]) % 2048);
    let rest = &data[6..];
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| rest.get(i % rest.len().max(1)).copied().unwrap_or(0))
        .collect();

    let mut buf = vec![0u8; HEADER_LEN + payload_len + OVERHEAD];
    let Ok(len) = repr.emit_with_payload(&mut buf, &payload) else {
        return;
    };
    let Ok(mut sealer) = Sealer::with_origin(keys, suite, [7u8; 12], T0 as u32) else {
        return;
    };
    let Ok(len) = sealer.seal(at(T0), &mut buf, len) else {
        panic!("sealing a well-formed frame failed");
    };
    let genuine = buf[..len].to_vec();

    // mutations: pairs (position, xor) from the input; a last odd byte
    // cuts (bit 7 clear) or extends the datagram
    let mut m = genuine.clone();
    let muts = rest.get(payload_len.min(rest.len())..).unwrap_or(&[]);
    for pair in muts.chunks_exact(3) {
        let pos = usize::from(u16::from_be_bytes([pair[0], pair[1]])) % m.len().max(1);
        if let Some(b) = m.get_mut(pos) {
            *b ^= pair[2];
        }
    }
    if muts.len() % 3 != 0 {
        let last = muts[muts.len() - 1];
        if last & 0x80 == 0 {
            m.truncate(m.len().saturating_sub(usize::from(last) + 1));
        } else {
            m.extend(std::iter::repeat_n(last, usize::from(last & 0x7f) + 1));
        }
    }

    let lifetime_plus_skew = 120;
    let fresh = (-60..=lifetime_plus_skew).contains(&offset);
    let now = at(T0.saturating_add_signed(offset));
    let mut o = opener(keys);
    let r = o.open(now, &mut m.clone());
    if m == genuine {
        if fresh {
            let opened = r.expect("a genuine fresh frame opens");
            assert_eq!(opened.repr, repr);
            let mut g = genuine.clone();
            let again = o.open(now, &mut g);
            assert_eq!(again, Err(AuthError::Replayed));
            // re-open in a fresh opener to read the plaintext
            let mut g = genuine.clone();
            let p = opener(keys).open(now, &mut g).expect("opens");
            assert_eq!(&g[p.payload], payload.as_slice());
        } else {
            assert_eq!(r, Err(AuthError::StaleSession));
        }
    } else {
        assert!(r.is_err(), "a changed frame was accepted: {r:?}");
        // nothing consumed: the genuine frame still opens (when fresh)
        let mut g = genuine.clone();
        let r = o.open(now, &mut g);
        assert_eq!(r.is_ok(), fresh, "{r:?}");
    }
    assert!(o.tracked() <= MAX_SUBKEYS);
}
