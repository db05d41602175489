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

/// A config file equivalent to a flag set gives the same validated Config
#[test]
fn config_file_gives_the_same_config_as_the_flags() {
    use mproxy_common::cli::{try_parse_from, Parsed};
    use mproxy_server::{Cli, Config};
    let parse = |args: &[&str]| -> Config {
        let argv = std::iter::once("mproxy-server").chain(args.iter().copied());
        match try_parse_from::<Cli, _, _>(argv) {
            Ok(Parsed::Run(cli)) => Config::try_from(cli).unwrap(),
            other => panic!("{args:?}: {other:?}"),
        }
    };
    let dir = std::env::temp_dir().join(format!("mproxy-server-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, CONFIG_TOML).unwrap();
    let from_file = parse(&["--config", file.to_str().unwrap()]);
    let from_flags = parse(CONFIG_FLAGS);
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
    let _ = std::fs::remove_dir_all(&dir);
}

const CONFIG_FLAGS: &[&str] = &[
    "--listen-addr",
    "127.0.0.1:9000",
    "--listen-addr",
    "239.255.0.1:9001",
    "--path",
    "out/{session}-{stream}.log",
    "--accept",
    "mpx",
    "--reorder-timeout",
    "500",
    "--nack",
    "off",
    "--rcvbuf",
    "16MiB",
];
const CONFIG_TOML: &str = "listen = [\"127.0.0.1:9000\", \"239.255.0.1:9001\"]\noutput = \"out/{session}-{stream}.log\"\n\
    accept = \"mpx\"\nreorder-timeout = 500\nnack = false\nrcvbuf = \"16MiB\"\n";
