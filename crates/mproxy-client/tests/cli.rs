//! The `mproxy-client` binary's command line: help, version, usage errors
//!
//! (Being an integration test of this package, this also makes
//! `cargo test --workspace` build the binary for the end-to-end tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mproxy-client"))
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
        .starts_with("mproxy-client "));
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
    "--server-addr",
    "--tee",
    "--mpx",
    "--fec",
    "--fec-block",
    "--fec-delay",
    "--rate",
    "--iface",
    "--ttl",
];

#[test]
fn fec_options_are_checked() {
    for (args, want) in [
        (
            &["--fec", "10", "--server-addr", "127.0.0.1:9"][..],
            "--fec needs --mpx",
        ),
        (
            &["--mpx", "--fec", "101", "--server-addr", "127.0.0.1:9"][..],
            "'--fec <PERCENT>'",
        ),
        (
            &[
                "--mpx",
                "--fec",
                "10",
                "--fec-block",
                "0",
                "--server-addr",
                "127.0.0.1:9",
            ][..],
            "'--fec-block <FRAMES>'",
        ),
        (
            &[
                "--mpx",
                "--fec",
                "10",
                "--fec-block",
                "1024",
                "--max-datagram",
                "65507",
                "--server-addr",
                "127.0.0.1:9",
            ][..],
            "use a smaller block",
        ),
        (
            &[
                "--fec-block",
                "100",
                "--mpx",
                "--server-addr",
                "127.0.0.1:9",
            ][..],
            "--fec-block needs --fec",
        ),
        (
            &["--stream-id", "5", "--server-addr", "127.0.0.1:9"][..],
            "--stream-id needs --mpx",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A config file equivalent to a flag set gives the same validated Config
#[test]
fn config_file_gives_the_same_config_as_the_flags() {
    use mproxy_client::{Cli, Config};
    use mproxy_common::cli::{try_parse_from, Parsed};
    let parse = |args: &[&str]| -> Config {
        let argv = std::iter::once("mproxy-client").chain(args.iter().copied());
        match try_parse_from::<Cli, _, _>(argv) {
            Ok(Parsed::Run(cli)) => Config::try_from(cli).unwrap(),
            other => panic!("{args:?}: {other:?}"),
        }
    };
    let dir = std::env::temp_dir().join(format!("mproxy-client-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, CONFIG_TOML).unwrap();
    let from_file = parse(&["--config", file.to_str().unwrap()]);
    let from_flags = parse(CONFIG_FLAGS);
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
    let _ = std::fs::remove_dir_all(&dir);
}

const CONFIG_FLAGS: &[&str] = &[
    "--path",
    "/dev/ttyUSB0",
    "--server-addr",
    "127.0.0.1:9000",
    "--server-addr",
    "[::1]:9001",
    "--rate",
    "2MBps",
    "--mpx",
    "--stream-id",
    "7",
    "--fec",
    "10",
    "--ttl",
    "4",
    "--loop",
    "off",
];
const CONFIG_TOML: &str =
    "path = \"/dev/ttyUSB0\"\nserver-addr = [\"127.0.0.1:9000\", \"[::1]:9001\"]\n\
    rate = \"2MB\"\nmpx = true\nstream-id = 7\nfec = 10\nttl = 4\nloop = false\n";
