//! Fuzz the mpx decoder: classify and parse must never panic, and a frame
//! that parses must re-emit to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproxy_common::wire::{classify, Datagram, Frame, Repr, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Datagram::Mpx(repr, payload) = classify(data) {
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        let len = repr.emit_with_payload(&mut buf, payload).expect("fits");
        let reparsed = Repr::parse(&Frame::new_unchecked(&buf[..len])).expect("round trip");
        assert_eq!(reparsed.seq, repr.seq);
        assert_eq!(reparsed.session, repr.session);
    }
    if let Ok(f) = Frame::new_checked(data) {
        let _ = f.to_string();
    }
});
