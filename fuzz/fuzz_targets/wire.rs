//! Fuzz the mpx decoder: classify and parse must never panic, and a frame
//! that parses must re-emit to the same bytes; so must NACK, FEC and
//! WINDOW payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproxy_common::wire::{
    classify, emit_nack, parse_nack, parse_source_symbol, Datagram, FecRepr, Frame, Repr,
    WindowAdvert, HEADER_LEN, WINDOW_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Datagram::Mpx(repr, payload) = classify(data) {
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        let len = repr.emit_with_payload(&mut buf, payload).expect("fits");
        let reparsed = Repr::parse(&Frame::new_unchecked(&buf[..len])).expect("round trip");
        assert_eq!(reparsed.seq, repr.seq);
        assert_eq!(reparsed.session, repr.session);
    }
    // any bytes as a NACK payload, an FEC payload and a source symbol
    let ranges: Vec<_> = parse_nack(data).collect();
    let mut nack = Vec::new();
    emit_nack(&ranges, &mut nack);
    assert_eq!(parse_nack(&nack).collect::<Vec<_>>(), ranges);
    if let Ok((fec, symbol)) = FecRepr::parse(data) {
        let mut out = Vec::new();
        fec.emit(symbol, &mut out);
        assert_eq!(out, data);
    }
    if let Some(w) = WindowAdvert::parse(data) {
        assert_eq!(w.emit()[..], data[..WINDOW_LEN]);
    }
    if let Some((_, payload)) = parse_source_symbol(data) {
        assert!(payload.len() + 3 <= data.len());
    }
    if let Ok(f) = Frame::new_checked(data) {
        let _ = f.to_string();
    }
});
