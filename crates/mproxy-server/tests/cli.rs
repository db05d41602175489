//! The `mproxy-server` binary's command line: help, version, usage errors
//!
//! (Being an integration test of this package, this also makes
//! `cargo test --workspace` build the binary for the end-to-end tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mproxy-server"))
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
        .starts_with("mproxy-server "));
}

#[test]
fn unknown_flag_is_one_line_and_exit_2() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

const FLAGS: &[&str] = &[
    "--path",
    "--listen-addr",
    "--tee",
    "--accept",
    "--iface",
    "--source",
    "--rotate-size",
    "--rotate-interval",
    "--record-prefix",
    "SIGHUP",
];
