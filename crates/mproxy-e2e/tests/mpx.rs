//! mpx end to end: many streams on one multicast group, a seeded lossy
//! relay whose record must match the server's counters exactly, a client
//! restart, and raw and mpx senders sharing one port. Each test runs in its
//! own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproxy_e2e::{run_ok, start, start_server, stop, wait_for_len, TIMEOUT};
use mproxy_testsupport::{
    assert_files_equal, bin, in_netns, line_file, spawn_with_stdin, wait_until, ChildGuard,
    LossyRelay, RelayConfig, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One "stream closed: ..." line of the server's log
#[derive(Debug, Clone, PartialEq, Eq)]
struct Closed {
    /// `<session as 16 hex digits>-<stream id>`
    key: String,
    reason: String,
    bytes: u64,
    datagrams: u64,
    gaps: u64,
    lost: u64,
    dups: u64,
    reordered: u64,
    late: u64,
}

/// Every "stream closed" line in `log`, e.g.
/// `... stream closed: 108894 bytes, 77 datagrams, 0 gaps (0 lost), 0 dups,
/// 0 reordered, 0 late stream=cb4c866e30f5fc86-5 reason=Fin`
fn closed_streams(log: &str) -> Vec<Closed> {
    log.lines()
        .filter_map(|l| l.split_once("stream closed: ").map(|(_, rest)| rest))
        .map(|rest| {
            let t: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize, word: &str| -> u64 {
                assert!(t[i + 1].starts_with(word), "{rest}: expected {word}");
                t[i].trim_start_matches('(').parse().unwrap()
            };
            let field = |name: &str| {
                t.iter()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {rest}"))
                    .to_string()
            };
            Closed {
                bytes: num(0, "bytes"),
                datagrams: num(2, "datagrams"),
                gaps: num(4, "gaps"),
                lost: num(6, "lost"),
                dups: num(8, "dups"),
                reordered: num(10, "reordered"),
                late: num(12, "late"),
                key: field("stream="),
                reason: field("reason="),
            }
        })
        .collect()
}

/// The files of a `{session}-{stream}.log` template directory, as
/// (session, stream id, path)
fn stream_files(dir: &Path) -> Vec<(String, u32, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let stem = name
                .strip_suffix(".log")
                .unwrap_or_else(|| panic!("unexpected file {name}"));
            let (session, stream) = stem.split_once('-').unwrap();
            assert!(
                session.len() == 16 && session.chars().all(|c| c.is_ascii_hexdigit()),
                "{name}"
            );
            (session.to_string(), stream.parse().unwrap(), path)
        })
        .collect();
    v.sort();
    v
}

/// The session id a `--mpx` client announced ("mpx framing on session=...")
fn client_session(client: &ChildGuard) -> String {
    let mut session = String::new();
    wait_until(TIMEOUT, "the client to announce its session", || {
        let text = client.stderr_text();
        if let Some((_, rest)) = text.split_once("mpx framing on session=") {
            session = rest.chars().take(16).collect();
            true
        } else {
            false
        }
    });
    session
}

fn summary_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains(" received "))
        .unwrap_or_else(|| panic!("no summary in {log}"))
}

fn wait_closed(server: &ChildGuard, n: usize, timeout: Duration) {
    wait_until(timeout, &format!("{n} streams to close"), || {
        closed_streams(&server.stderr_text()).len() >= n
    });
}

/// (a) 8 paced mpx clients, each its own stream id, one multicast group on
/// lo, one server with a per-stream template: 8 byte-exact files
#[test]
fn eight_mpx_streams_on_one_multicast_group() {
    in_netns(|_| {
        let dir = TempDir::new();
        let out = dir.join("out");
        let template = out.join("{session}-{stream}.log");
        let ids: [u32; 8] = [0, 1, 2, 3, 7, 1000, 65_536, u32::MAX];
        let inputs: HashMap<u32, PathBuf> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let p = dir.join(format!("in-{id}"));
                line_file(&p, (2 << 20) + 997 * i, 300 + i as u64);
                (*id, p)
            })
            .collect();
        let server = start_server(
            &[
                "--listen-addr",
                "239.255.3.3:9980",
                "--iface",
                "lo",
                "--path",
                s(&template),
            ],
            &[9980],
        );
        let mut clients: Vec<ChildGuard> = ids
            .iter()
            .map(|id| {
                start(
                    "mproxy-client",
                    &[
                        "--mpx",
                        "--stream-id",
                        &id.to_string(),
                        "--path",
                        s(&inputs[id]),
                        "--server-addr",
                        "239.255.3.3:9980",
                        "--iface",
                        "lo",
                        "--rate",
                        "40mbit",
                    ],
                )
            })
            .collect();
        for c in &mut clients {
            let status = c
                .wait_timeout(TIMEOUT)
                .unwrap_or_else(|| panic!("client still running: {}", c.stderr_text()));
            let text = c.stderr_text();
            assert!(status.success(), "{text}");
            assert!(text.contains(", 0 send errors"), "{text}");
        }
        wait_closed(&server, ids.len(), TIMEOUT);
        let log = stop(server);
        assert!(summary_line(&log).contains(" 0 kernel drops"), "{log}");

        let files = stream_files(&out);
        assert_eq!(files.len(), ids.len(), "{files:?}");
        let mut sessions: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        sessions.sort_unstable();
        sessions.dedup();
        assert_eq!(sessions.len(), ids.len(), "one session per client process");
        let mut seen: Vec<u32> = files.iter().map(|f| f.1).collect();
        seen.sort_unstable();
        let mut want = ids.to_vec();
        want.sort_unstable();
        assert_eq!(seen, want);
        let closed = closed_streams(&log);
        assert_eq!(closed.len(), ids.len(), "{log}");
        for (session, id, path) in &files {
            assert_files_equal(&inputs[id], path);
            let key = format!("{session}-{id}");
            let c = closed
                .iter()
                .find(|c| c.key == key)
                .unwrap_or_else(|| panic!("{key} not closed: {log}"));
            let len = std::fs::metadata(&inputs[id]).unwrap().len();
            assert_eq!(
                (c.reason.as_str(), c.bytes, c.gaps, c.lost, c.dups, c.late),
                ("Fin", len, 0, 0, 0, 0),
                "{c:?}"
            );
        }
    });
}

/// (b) client --mpx → seeded lossy relay → server: the server writes
/// exactly what the relay let through and counts exactly the losses,
/// gaps and duplicates the relay made
fn through_lossy_relay(seed: u64) {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        line_file(&input, 2 << 20, 500 + seed);
        let out = dir.join("out");
        let template = out.join("{session}-{stream}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9991",
                "--path",
                s(&template),
                "--reorder-timeout",
                "300",
            ],
            &[9991],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9990".parse().unwrap(),
            "127.0.0.1:9991".parse().unwrap(),
            RelayConfig {
                seed,
                drop: 0.05,
                duplicate: 0.03,
                reorder: 0.05,
                reorder_depth: 20,
                max_hold: Duration::from_millis(20),
                ..RelayConfig::default()
            },
        );
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--stream-id",
                "7",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9990",
                "--rate",
                "20mbit",
            ],
        );
        let client_log = String::from_utf8_lossy(&client.stderr).into_owned();
        assert!(client_log.contains(", 0 send errors"), "{client_log}");
        wait_closed(&server, 1, TIMEOUT);
        let rec = relay.stop();
        let log = stop(server);
        assert!(summary_line(&log).contains(" 0 kernel drops"), "{log}");

        let (key, st) = rec.single_stream();
        assert_eq!(key.stream, 7);
        assert_eq!(
            (rec.kernel_drops, rec.send_errors, rec.recv_errors),
            (0, 0, 0),
            "{rec:?}"
        );
        assert_eq!(st.unseen(), 0, "the relay missed frames");
        assert!(
            st.fin_forwarded,
            "seed {seed}: no FIN information got through"
        );
        assert!(
            st.lost() > 0 && st.duplicates() > 0 && rec.held > 0,
            "seed {seed} impairs nothing"
        );

        let files = stream_files(&out);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(format!("{}-{}", files[0].0, files[0].1), key.to_string());
        let got = std::fs::read(&files[0].2).unwrap();
        let want = st.expected_bytes();
        assert!(
            got == want,
            "seed {seed}: output ({} bytes) != what the relay let through ({} bytes)",
            got.len(),
            want.len()
        );
        let closed = closed_streams(&log);
        assert_eq!(closed.len(), 1, "{log}");
        let c = &closed[0];
        eprintln!(
            "seed {seed}: relay received {} datagrams ({} frames), dropped {}, duplicated {}, \
             held {}; stream: {} lost in {} gaps, {} dups (+{} after complete), {} frames \
             delivered, {} bytes; server: {c:?}",
            rec.received,
            st.frames.len(),
            rec.dropped,
            rec.duplicated,
            rec.held,
            st.lost(),
            st.gaps(),
            st.duplicates(),
            st.after_complete,
            st.delivered_frames(),
            want.len(),
        );
        assert_eq!(c.key, key.to_string());
        // (how soon and why it closed: lossy_stream_closes_by_fin_promptly)
        assert_eq!(
            (c.bytes, c.datagrams, c.lost, c.gaps, c.dups, c.late),
            (
                want.len() as u64,
                st.delivered_frames(),
                st.lost(),
                st.gaps(),
                st.duplicates(),
                0
            ),
            "seed {seed}: server (bytes, datagrams, lost, gaps, dups, late) vs relay record"
        );
    });
}

#[test]
fn lossy_relay_seed_1() {
    through_lossy_relay(1);
}

#[test]
fn lossy_relay_seed_2() {
    through_lossy_relay(2);
}

#[test]
fn lossy_relay_seed_3() {
    through_lossy_relay(3);
}

/// A stream with sustained random loss (5 %, nothing else) must still
/// have each missing frame declared lost about `--reorder-timeout` after it
/// is missed, so the server closes it on FIN shortly after the sender ends
/// (not 10 s later, as idle)
#[test]
fn lossy_stream_closes_by_fin_promptly() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        line_file(&input, 2 << 20, 800);
        let out = dir.join("out");
        let template = out.join("{session}-{stream}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9993",
                "--path",
                s(&template),
                "--reorder-timeout",
                "300",
            ],
            &[9993],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9992".parse().unwrap(),
            "127.0.0.1:9993".parse().unwrap(),
            RelayConfig {
                seed: 1,
                drop: 0.05,
                ..RelayConfig::default()
            },
        );
        run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9992",
                "--rate",
                "20mbit",
            ],
        );
        let ended = Instant::now();
        wait_closed(&server, 1, TIMEOUT);
        let after = ended.elapsed();
        let rec = relay.stop();
        let log = stop(server);
        let (_, st) = rec.single_stream();
        let c = &closed_streams(&log)[0];
        eprintln!(
            "closed {after:?} after the client exited: {c:?}; relay dropped {} frames in {} gaps",
            st.lost(),
            st.gaps()
        );
        assert!(st.fin_forwarded && st.lost() > 0);
        assert_eq!((c.lost, c.gaps, c.late), (st.lost(), st.gaps(), 0), "{c:?}");
        assert_eq!(c.reason, "Fin", "closed {after:?} after the sender: {c:?}");
        assert!(
            after < Duration::from_secs(2),
            "closed {after:?} after the sender ended (reorder timeout 300 ms)"
        );
    });
}

/// Splits `data` at the first line end after its middle
fn halves(data: &[u8]) -> (&[u8], &[u8]) {
    let mid = data.len() / 2;
    let cut = mid + data[mid..].iter().position(|b| *b == b'\n').unwrap() + 1;
    data.split_at(cut)
}

/// (c) a client killed mid-stream and a new client process: two sessions,
/// the first a whole-line prefix closed when idle, the second exact
#[test]
fn restarted_client_opens_a_new_session() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("in");
        line_file(&input, 2 << 20, 600);
        let data = std::fs::read(&input).unwrap();
        let (first, second) = halves(&data);
        let second_path = dir.join("second");
        std::fs::write(&second_path, second).unwrap();
        let out = dir.join("out");
        let template = out.join("{session}-{stream}.log");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9982", "--path", s(&template)],
            &[9982],
        );
        // lines up to ~5.5 kB stay whole in 8 kB datagrams
        let common = [
            "--mpx",
            "--stream-id",
            "5",
            "--server-addr",
            "127.0.0.1:9982",
            "--max-datagram",
            "8192",
            "--rate",
            "8mbit",
        ];
        let mut a = spawn_with_stdin(
            Command::new(bin("mproxy-client"))
                .args(common)
                .args(["--path", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
        );
        let mut stdin = a.child_mut().stdin.take().unwrap();
        let first_owned = first.to_vec();
        // keeps stdin open (no EOF, no FIN) until the client is killed
        let writer = std::thread::spawn(move || {
            let r = stdin.write_all(&first_owned);
            (stdin, r)
        });
        let session_a = client_session(&a);
        let file_a = out.join(format!("{session_a}-5.log"));
        wait_for_len(&file_a, 256 << 10);
        let status = a.kill();
        assert!(!status.success(), "client A finished before it was killed");
        let (stdin, _) = writer.join().unwrap();
        drop(stdin);

        let b = run_ok(
            "mproxy-client",
            &[&common[..], &["--path", s(&second_path)]].concat(),
        );
        let b_log = String::from_utf8_lossy(&b.stderr).into_owned();
        let session_b = b_log
            .split_once("mpx framing on session=")
            .map(|(_, r)| r.chars().take(16).collect::<String>())
            .unwrap_or_else(|| panic!("{b_log}"));
        assert_ne!(session_a, session_b);
        // B ends with FIN; A, silent since the kill, after the 10 s idle timeout
        wait_closed(&server, 2, Duration::from_secs(40));
        let log = stop(server);
        assert!(summary_line(&log).contains(" 0 kernel drops"), "{log}");

        let files = stream_files(&out);
        assert_eq!(files.len(), 2, "{files:?}");
        let got_a = std::fs::read(&file_a).unwrap();
        let file_b = out.join(format!("{session_b}-5.log"));
        assert_files_equal(&second_path, &file_b);
        assert!(
            !got_a.is_empty() && got_a.len() < first.len(),
            "A delivered {} of {} bytes: not killed mid-run",
            got_a.len(),
            first.len()
        );
        assert!(
            first.starts_with(&got_a),
            "A's file is not a prefix of its input"
        );
        assert_eq!(got_a.last(), Some(&b'\n'), "A's file ends mid-line");
        let closed = closed_streams(&log);
        let find = |session: &str| {
            closed
                .iter()
                .find(|c| c.key == format!("{session}-5"))
                .unwrap_or_else(|| panic!("{session} not closed: {log}"))
                .clone()
        };
        let (ca, cb) = (find(&session_a), find(&session_b));
        assert_eq!(
            (ca.reason.as_str(), ca.bytes, ca.lost, ca.gaps, ca.dups),
            ("Idle", got_a.len() as u64, 0, 0, 0),
            "{ca:?}"
        );
        assert_eq!(
            (cb.reason.as_str(), cb.bytes, cb.lost, cb.gaps, cb.dups),
            ("Fin", second.len() as u64, 0, 0, 0),
            "{cb:?}"
        );
    });
}

/// Whether `out` is an interleaving of the sequences `a` and `b` (every
/// element of both, each in its own order, nothing else); if so, the fewest
/// switches between `a` and `b` such an interleaving needs.
///
/// Lines may occur in both inputs (short AIS sentences repeat), so every
/// way of attributing an ambiguous line is followed: the set of reachable
/// (position in a, position in b) states stays tiny.
fn interleaving(out: &[&str], a: &[&str], b: &[&str]) -> Option<u64> {
    // (i, j, last was from a) -> fewest switches so far
    let mut states: HashMap<(usize, usize, bool), u64> = HashMap::from([((0, 0, true), 0)]);
    for line in out {
        let mut next = HashMap::new();
        for (&(i, j, last_a), &sw) in &states {
            let mut go = |k: (usize, usize, bool), cost: u64| {
                let e = next.entry(k).or_insert(u64::MAX);
                *e = (*e).min(sw + cost);
            };
            if a.get(i) == Some(line) {
                go((i + 1, j, true), u64::from(!last_a && i + j > 0));
            }
            if b.get(j) == Some(line) {
                go((i, j + 1, false), u64::from(last_a && i + j > 0));
            }
        }
        if next.is_empty() {
            return None;
        }
        states = next;
    }
    states
        .iter()
        .filter(|(k, _)| k.0 == a.len() && k.1 == b.len())
        .map(|(_, sw)| *sw)
        .min()
}

/// (d) --accept auto: a raw client and an mpx client on one port, one
/// output file: whole lines only, each input's lines all there and in order
#[test]
fn auto_accept_mixes_raw_and_mpx_in_whole_lines() {
    in_netns(|_| {
        let dir = TempDir::new();
        let (raw_in, mpx_in) = (dir.join("raw-in"), dir.join("mpx-in"));
        line_file(&raw_in, 2 << 20, 700);
        line_file(&mpx_in, (2 << 20) + 4321, 701);
        let raw_data = std::fs::read_to_string(&raw_in).unwrap();
        let mpx_data = std::fs::read_to_string(&mpx_in).unwrap();
        let raw_lines: Vec<&str> = raw_data.split_inclusive('\n').collect();
        let mpx_lines: Vec<&str> = mpx_data.split_inclusive('\n').collect();
        let out = dir.join("out.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9983",
                "--accept",
                "auto",
                "--path",
                s(&out),
            ],
            &[9983],
        );
        let common = [
            "--server-addr",
            "127.0.0.1:9983",
            "--max-datagram",
            "8192",
            "--rate",
            "10mbit",
        ];
        let mut clients = [
            start(
                "mproxy-client",
                &[&common[..], &["--path", s(&raw_in)]].concat(),
            ),
            start(
                "mproxy-client",
                &[
                    &common[..],
                    &["--path", s(&mpx_in), "--mpx", "--stream-id", "9"],
                ]
                .concat(),
            ),
        ];
        for c in &mut clients {
            let status = c
                .wait_timeout(TIMEOUT)
                .unwrap_or_else(|| panic!("client still running: {}", c.stderr_text()));
            let text = c.stderr_text();
            assert!(status.success(), "{text}");
            assert!(text.contains(" 0 lines split, 0 send errors"), "{text}");
        }
        let total = (raw_data.len() + mpx_data.len()) as u64;
        wait_for_len(&out, total);
        wait_closed(&server, 1, TIMEOUT);
        let log = stop(server);
        assert!(summary_line(&log).contains(" 0 kernel drops"), "{log}");
        let c = &closed_streams(&log)[0];
        assert_eq!(
            (c.reason.as_str(), c.bytes, c.lost, c.dups),
            ("Fin", mpx_data.len() as u64, 0, 0),
            "{c:?}"
        );

        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(got.len() as u64, total);
        assert!(got.ends_with('\n'));
        let out_lines: Vec<&str> = got.split_inclusive('\n').collect();
        let switches = interleaving(&out_lines, &raw_lines, &mpx_lines).unwrap_or_else(|| {
            panic!(
                "the output ({} lines) is not an interleaving of the raw ({} lines) and \
                 mpx ({} lines) inputs' whole lines",
                out_lines.len(),
                raw_lines.len(),
                mpx_lines.len()
            )
        });
        // and they really were interleaved (both clients run ~1.6 s)
        assert!(
            switches > 2,
            "the inputs did not overlap: {switches} switches"
        );
        eprintln!("raw/mpx alternations in the output: {switches}");
    });
}

/// NACK repair end to end: 5% of the frames and 5% of the NACKs lost on
/// the way, yet the file arrives byte-exact and the sender re-sends at most
/// 1.5 times what the relay dropped
#[test]
fn nack_repair_makes_a_lossy_transfer_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 2 << 20, 71);
        let out = dir.join("out.txt");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9995",
                "--path",
                s(&out),
                "--accept",
                "mpx",
                "--reorder-timeout",
                "500",
            ],
            &[9995],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9994".parse().unwrap(),
            "127.0.0.1:9995".parse().unwrap(),
            RelayConfig {
                seed: 9,
                drop: 0.05,
                return_path: true,
                return_drop: 0.05,
                ..RelayConfig::default()
            },
        );
        let client = run_ok(
            "mproxy-client",
            &[
                "--mpx",
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9994",
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
        let resent: u64 = summary
            .split(" frames re-sent")
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{summary}"));
        assert!(record.dropped > 0 && resent > 0, "{summary} {record:?}");
        assert!(
            resent as f64 <= 1.5 * record.dropped as f64,
            "re-sent {resent} frames for {} dropped",
            record.dropped
        );
        eprintln!(
            "relay dropped {} datagrams, {} replies; client re-sent {resent}; {closed}",
            record.dropped, record.returns_dropped
        );
    });
}
