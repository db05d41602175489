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

/// A config file equivalent to a flag set gives the same validated Config
#[test]
fn config_file_gives_the_same_config_as_the_flags() {
    use mproxy_common::cli::{try_parse_from, Parsed};
    use mproxy_proxy::{Cli, Config};
    let parse = |args: &[&str]| -> Config {
        let argv = std::iter::once("mproxy-proxy").chain(args.iter().copied());
        match try_parse_from::<Cli, _, _>(argv) {
            Ok(Parsed::Run(cli)) => Config::try_from(cli).unwrap(),
            other => panic!("{args:?}: {other:?}"),
        }
    };
    let dir = std::env::temp_dir().join(format!("mproxy-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, CONFIG_TOML).unwrap();
    let from_file = parse(&["--config", file.to_str().unwrap()]);
    let from_flags = parse(CONFIG_FLAGS);
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
    let _ = std::fs::remove_dir_all(&dir);
}

const CONFIG_FLAGS: &[&str] = &[
    "--tcp-connect-addr",
    "tls://feed.example.org:4443",
    "--tcp-connect-addr",
    "127.0.0.1:4001",
    "--udp-listen-addr",
    "127.0.0.1:9920",
    "--udp-downstream-addr",
    "239.255.0.1:9922",
    "--max-line",
    "4000",
    "--idle-timeout",
    "60",
    "--pin-sha256",
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
];
const CONFIG_TOML: &str =
    "tcp-connect-addr = [\"tls://feed.example.org:4443\", \"127.0.0.1:4001\"]\n\
    listen = \"127.0.0.1:9920\"\nto = [\"239.255.0.1:9922\"]\nmax-line = 4000\nidle-timeout = 60\n\
    pin-sha256 = \"sha256//ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=\"\n";
