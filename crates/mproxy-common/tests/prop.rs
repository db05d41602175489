//! Property tests: emit/parse round trips and no panic on any input

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    Event, FecConfig, FecDecoder, FecEncoder, Receiver, ReceiverConfig, StreamKey,
};
use mproxy_common::pack::{Framing, Packer};
use mproxy_common::wire::{
    classify, parse_source_symbol, Datagram, FecRepr, Flags, Frame, FrameType, Repr, HEADER_LEN,
};
use proptest::prelude::*;

fn frame_type() -> impl Strategy<Value = FrameType> {
    (0u8..16).prop_map(FrameType::from)
}

proptest! {
    #[test]
    fn emit_then_parse_round_trips(
        t in frame_type(),
        flags in any::<u8>(),
        session in any::<u64>(),
        stream in any::<u32>(),
        seq in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let repr = Repr { frame_type: t, flags: Flags(flags), session, stream, seq };
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        let len = repr.emit_with_payload(&mut buf, &payload).unwrap();
        prop_assert_eq!(len, buf.len());
        match classify(&buf) {
            Datagram::Mpx(r, p) => {
                let expect_type = match t { FrameType::Unknown(v) => FrameType::from(v & 0x0f), other => other };
                prop_assert_eq!(r, Repr { frame_type: expect_type, ..repr });
                prop_assert_eq!(p, &payload[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        bit in any::<usize>(),
    ) {
        let repr = Repr { frame_type: FrameType::Data, flags: Flags::NONE, session: 1, stream: 2, seq: 3 };
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        repr.emit_with_payload(&mut buf, &payload).unwrap();
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        // a flip in the magic makes it raw; anywhere else the frame is invalid
        prop_assert!(!matches!(classify(&buf), Datagram::Mpx(..)));
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = classify(&bytes);
        if let Ok(f) = Frame::new_checked(&bytes[..]) {
            let _ = Repr::parse(&f);
            let _ = f.to_string();
        }
    }

    #[test]
    fn receiver_never_panics_and_stays_bounded(
        ops in proptest::collection::vec((any::<u8>(), 0u32..64, any::<bool>(), 0u64..400), 1..300),
    ) {
        let cfg = ReceiverConfig { reorder_window: 16, max_streams: 4, reorder_bytes: 256, memory_limit: 512, ..ReceiverConfig::default() };
        let mut rx = Receiver::new(cfg);
        let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; HEADER_LEN + 64];
        for (stream, seq, fin, ms) in ops {
            let repr = Repr {
                frame_type: if seq % 7 == 0 { FrameType::Heartbeat } else { FrameType::Data },
                flags: if fin { Flags::FIN } else { Flags::NONE },
                session: u64::from(stream % 8),
                stream: u32::from(stream),
                seq,
            };
            let len = repr.emit_with_payload(&mut buf, &[b'z'; 64]).unwrap();
            let now = t0 + Duration::from_millis(ms);
            rx.handle_datagram(now, from, &buf[..len]);
            rx.handle_timeout(now);
            while let Some(ev) = rx.poll_event() {
                if let Event::Data { payload, .. } = ev { rx.recycle(payload); }
            }
            prop_assert!(rx.stream_count() <= 4);
            prop_assert!(rx.buffered_bytes() <= 512 + 4 * 64);
        }
        rx.close_all();
        while rx.poll_event().is_some() {}
        prop_assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn packer_reassembles_any_stream(
        data in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..3000),
        max in 1usize..300,
        step in 1usize..500,
        lines in any::<bool>(),
    ) {
        let framing = if lines { Framing::Lines } else { Framing::Bytes };
        let mut p = Packer::new(framing, max);
        let mut out: Vec<Vec<u8>> = Vec::new();
        for c in data.chunks(step) {
            p.push(c, |d| out.push(d.to_vec()));
        }
        p.finish(|d| out.push(d.to_vec()));
        prop_assert!(out.iter().all(|d| !d.is_empty() && d.len() <= max));
        prop_assert_eq!(out.concat(), data);
    }
}

proptest! {
    #[test]
    fn fec_payload_parse_never_panics_and_round_trips(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok((r, sym)) = FecRepr::parse(&bytes) {
            let mut out = Vec::new();
            r.emit(sym, &mut out);
            prop_assert_eq!(out, bytes.clone());
        }
        let _ = parse_source_symbol(&bytes);
    }

    /// Any loss pattern of at most m of a block's k + m frames is rebuilt
    /// byte for byte; FIN and OPEN survive
    #[test]
    fn fec_rebuilds_any_m_losses(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..40),
        overhead in 1u16..=100,
        base in any::<u32>(),
        lost_seed in any::<u64>(),
    ) {
        let k = payloads.len();
        let cfg = FecConfig { overhead_percent: overhead, block_frames: k, ..FecConfig::default() };
        let m = cfg.repair_count(k);
        let mut enc = FecEncoder::new(cfg);
        let t = Instant::now();
        let flags_of = |i: usize| if i + 1 == k { Flags::FIN } else { Flags::NONE };
        for (i, p) in payloads.iter().enumerate() {
            enc.add(t, base.wrapping_add(i as u32), flags_of(i), p);
        }
        let mut fec = Vec::new();
        enc.flush(5, 6, |f| fec.push(f.to_vec()));
        prop_assert_eq!(fec.len(), m);
        // lose exactly min(m, k) distinct symbols, chosen by the seed
        let mut order: Vec<usize> = (0..k + m).collect();
        let mut x = lost_seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let lost: std::collections::BTreeSet<usize> = order[..m.min(k)].iter().copied().collect();
        let key = StreamKey { session: 5, stream: 6 };
        let mut dec = FecDecoder::new(1 << 24);
        let mut out = Vec::new();
        let base64 = u64::from(base) + (1 << 32);
        for (i, p) in payloads.iter().enumerate() {
            if !lost.contains(&i) {
                dec.on_source(key, base64 + i as u64, flags_of(i) | Flags::FEC, p, &mut out);
            }
        }
        for (j, f) in fec.iter().enumerate() {
            if lost.contains(&(k + j)) {
                continue;
            }
            let Datagram::Mpx(r, p) = classify(f) else { panic!("FEC frame invalid") };
            prop_assert_eq!(r.seq, base);
            let (fr, sym) = FecRepr::parse(p).unwrap();
            dec.on_repair(key, base64, fr, sym, &mut out);
        }
        let want: Vec<(u64, Flags, Vec<u8>)> = lost
            .iter()
            .filter(|&&i| i < k)
            .map(|&i| (base64 + i as u64, flags_of(i), payloads[i].clone()))
            .collect();
        out.sort_by_key(|r| r.0);
        prop_assert_eq!(out, want);
        prop_assert_eq!(dec.stats().unrecoverable_blocks, 0);
    }
}
