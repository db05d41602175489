//! The `mproxy-proxy` binary's command line: help, version, usage errors
//!
//! (Being an integration test of this package, this also makes
//! `cargo test --workspace` build the binary for the end-to-end tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mproxy-proxy"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_original_flags_and_exits_zero() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in FLAGS {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn version_exits_zero() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("mproxy-proxy "));
}

#[test]
fn unknown_flag_is_one_line_and_exit_2() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn inconsistent_flags_are_one_line_and_exit_2_before_any_socket() {
    // all rejected while validating the flags, before anything is opened
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--sni",
                "feed.example",
            ],
            "--sni only applies to TLS upstreams",
        ),
        (
            &[
                "--tcp-connect-addr",
                "tls://127.0.0.1:9",
                "--tee",
                "--client-key",
                "k.pem",
            ],
            "--client-key needs --client-cert",
        ),
        (
            &[
                "--tcp-connect-addr",
                "tls://127.0.0.1:9",
                "--tee",
                "--sni",
                "a b",
            ],
            "--sni 'a b'",
        ),
        (
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--framing",
                "bytes",
                "--max-line",
                "80",
            ],
            "--max-line 80 needs --framing lines",
        ),
        (
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--max-line",
                "80",
                "--max-datagram",
                "90",
            ],
            "cannot be used with",
        ),
        (
            &["--tcp-connect-addr", "quic://127.0.0.1:9", "--tee"],
            "unknown scheme",
        ),
        (
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--idle-timeout",
                "0",
            ],
            "--idle-timeout",
        ),
    ];
    for (args, wanted) in cases {
        let out = run(args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
}

const FLAGS: &[&str] = &[
    "--udp-listen-addr",
    "--udp-downstream-addr",
    "--tcp-connect-addr",
    "--tee",
    "--mpx",
    "--framing",
    "--max-datagram",
    "--max-line",
    "--idle-timeout",
    "--tcp-keepalive",
    "--tls",
    "--ca-file",
    "--client-cert",
    "--client-key",
    "--sni",
    "--insecure-skip-verify",
    "tls://",
];
