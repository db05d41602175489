//! FEC end to end: a one-way lossy link (no return path, receiver NACKs
//! off) and the file still arrives byte-exact, rebuilt from repair frames.
//! Each test runs in its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use mproxy_e2e::{run_ok, start_server, stop};
use mproxy_testsupport::{
    assert_files_equal, in_netns, line_file, LossyRelay, RelayConfig, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The number in front of `word` in `text` (e.g. "17 frames rebuilt")
fn number_before(text: &str, word: &str) -> u64 {
    text.split(word)
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before '{word}' in: {text}"))
}

/// 5 % of the datagrams (data and repair frames alike) dropped by a seeded
/// relay with no way back: 10 % FEC rebuilds every lost frame, no gap
#[test]
fn fec_makes_a_one_way_lossy_transfer_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 2 << 20, 72);
        let out = dir.join("out.txt");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9985",
                "--path",
                s(&out),
                "--accept",
                "mpx",
                "--nack",
                "off",
                "--reorder-timeout",
                "1000",
            ],
            &[9985],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9984".parse().unwrap(),
            "127.0.0.1:9985".parse().unwrap(),
            RelayConfig {
                seed: 11,
                drop: 0.05,
                return_path: false,
                ..RelayConfig::default()
            },
        );
        // blocks of 400 frames (~1 MiB at 20 Mbit/s, closed at the latest
        // after 400 ms, under the 1 s reorder timeout): 40 repair frames
        // each, a block fails with probability ~5e-5 at 5 % loss
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                // the block sizes above assume Ethernet-sized frames
                "--max-datagram",
                "1472",
                "--fec",
                "10",
                "--fec-block",
                "400",
                "--fec-delay",
                "400",
                "--repair-buffer",
                "0",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9984",
                "--rate",
                "20mbit",
            ],
        );
        let summary = String::from_utf8_lossy(&client.stderr).to_string();
        let len = std::fs::metadata(&input).unwrap().len();
        let complete = mproxy_e2e::reached_len(&out, len, Duration::from_secs(30));
        let record = relay.stop();
        let text = stop(server);
        assert!(complete, "incomplete: {summary}\n{text}");
        assert_files_equal(&input, &out);
        let closed = text
            .lines()
            .find(|l| l.contains("stream closed: "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            closed.contains(" 0 gaps (0 lost)") && closed.contains("reason=Fin"),
            "{closed}"
        );
        assert_eq!(record.returned, 0, "no return path: {record:?}");
        // the client sent ~10 % repair frames, the server rebuilt frames
        // with them and gave up on no block
        let data_frames = number_before(&summary, " data frames)");
        let repair_frames = number_before(&summary, " repair frames");
        let overhead = repair_frames as f64 / data_frames as f64;
        assert!((0.10..0.12).contains(&overhead), "{summary}");
        let rebuilt = number_before(&text, " frames rebuilt");
        let unrecoverable = number_before(&text, " blocks unrecoverable");
        assert!(record.dropped > 50 && rebuilt > 0, "{record:?} {text}");
        assert!(rebuilt <= record.dropped, "{record:?} {text}");
        assert_eq!(unrecoverable, 0, "{text}");
        assert!(!text.contains("NACKs sent"), "{text}");
        eprintln!(
            "relay dropped {} of {} datagrams; {repair_frames} repair frames for {data_frames} data frames ({:.1} %); server rebuilt {rebuilt}",
            record.dropped,
            record.forwarded + record.dropped,
            overhead * 100.0
        );
    });
}
