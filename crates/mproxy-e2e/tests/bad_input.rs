//! Bad input of every kind: exit code 2, one line on stderr naming the culprit, no panic

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::UdpSocket;

use mproxy_e2e::run;
use mproxy_testsupport::{in_netns, TempDir};

fn check(bin: &str, args: &[&str], culprit: &str) {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.trim_end();
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
    assert_eq!(
        line.lines().count(),
        1,
        "{bin} {args:?}: not one line: {stderr}"
    );
    assert!(
        line.contains(culprit),
        "{bin} {args:?}: '{culprit}' not named in: {line}"
    );
    assert!(
        line.starts_with(&format!("{bin}: error: ")),
        "{bin} {args:?}: {line}"
    );
    assert!(!line.contains("panicked"), "{line}");
    assert!(out.stdout.is_empty(), "{bin} {args:?} wrote to stdout");
}

#[test]
fn bad_input_table() {
    in_netns(|_| {
        let dir = TempDir::new();
        let file = dir.join("input.txt");
        std::fs::write(&file, b"x\n").unwrap();
        let file = file.to_str().unwrap();
        let dir_s = dir.path().to_str().unwrap();
        let missing_dir_out = format!("{dir_s}/no/such/dir/out.log");
        let typo_template = format!("{dir_s}/{{sesion}}-{{stream}}.log");
        let _taken = UdpSocket::bind("127.0.0.1:9960").unwrap();

        let cases: Vec<(&str, Vec<&str>, &str)> = vec![
            // malformed addresses
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "127.0.0.1"],
                "'127.0.0.1' has no port",
            ),
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "127.0.0.1:99999"],
                "127.0.0.1:99999",
            ),
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "::1:9"],
                "::1:9",
            ),
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "[::1:9"],
                "[::1:9",
            ),
            (
                "mproxy-server",
                vec!["--path", "-", "--listen-addr", "bad host:9"],
                "bad host:9",
            ),
            (
                "mproxy-proxy",
                vec!["--udp-listen-addr", "1.2.3.4.5:9", "--tee"],
                "1.2.3.4.5:9",
            ),
            (
                "mproxy-reverseproxy",
                vec!["--udp-listen-addr", "[fe80::1%]:9"],
                "[fe80::1%]:9",
            ),
            // names that do not resolve
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "no-such-host.invalid:9"],
                "no-such-host.invalid:9",
            ),
            // (an unresolvable TCP upstream of the proxy is retried, not
            // bad input: tests/service.rs)
            // unknown interfaces
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "239.255.0.1:9",
                    "--iface",
                    "nosuch0",
                ],
                "nosuch0",
            ),
            (
                "mproxy-server",
                vec![
                    "--path",
                    "-",
                    "--listen-addr",
                    "239.255.0.1:9",
                    "--iface",
                    "nosuch0",
                ],
                "nosuch0",
            ),
            (
                "mproxy-server",
                vec!["--path", "-", "--listen-addr", "[ff02::1:2%nosuch1]:9"],
                "nosuch1",
            ),
            // files
            (
                "mproxy-client",
                vec![
                    "--path",
                    "/no/such/file.txt",
                    "--server-addr",
                    "127.0.0.1:9",
                ],
                "/no/such/file.txt",
            ),
            (
                "mproxy-client",
                vec!["--path", dir_s, "--server-addr", "127.0.0.1:9"],
                "is a directory",
            ),
            (
                "mproxy-server",
                vec!["--path", &missing_dir_out, "--listen-addr", "127.0.0.1:9"],
                &missing_dir_out,
            ),
            (
                "mproxy-server",
                vec!["--path", dir_s, "--listen-addr", "127.0.0.1:9"],
                dir_s,
            ),
            // port in use
            (
                "mproxy-server",
                vec!["--path", "-", "--listen-addr", "127.0.0.1:9960"],
                "127.0.0.1:9960",
            ),
            (
                "mproxy-proxy",
                vec!["--udp-listen-addr", "127.0.0.1:9960", "--tee"],
                "127.0.0.1:9960",
            ),
            // flags
            ("mproxy-client", vec!["--bogus"], "--bogus"),
            ("mproxy-client", vec!["--path", file], "--server-addr"),
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "127.0.0.1:9",
                    "--rate",
                    "fast",
                ],
                "fast",
            ),
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "127.0.0.1:9",
                    "--max-datagram",
                    "70000",
                ],
                "70000",
            ),
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "127.0.0.1:9",
                    "--ttl",
                    "300",
                ],
                "300",
            ),
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "127.0.0.1:9",
                    "--framing",
                    "xml",
                ],
                "xml",
            ),
            ("mproxy-server", vec!["--path", "-"], "--listen-addr"),
            (
                "mproxy-server",
                vec!["--listen-addr", "127.0.0.1:9"],
                "--path",
            ),
            (
                "mproxy-server",
                vec![
                    "--path",
                    "-",
                    "--listen-addr",
                    "127.0.0.1:9",
                    "--source",
                    "10.0.0.1",
                ],
                "--source",
            ),
            ("mproxy-proxy", vec!["--tee"], "--udp-listen-addr"),
            // options that cannot apply are refused, not ignored
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--server-addr",
                    "127.0.0.1:9",
                    "--source",
                    "10.0.0.1",
                ],
                "--source 10.0.0.1",
            ),
            (
                "mproxy-proxy",
                vec![
                    "--udp-listen-addr",
                    "127.0.0.1:9961",
                    "--udp-downstream-addr",
                    "127.0.0.1:9",
                    "--framing",
                    "lines",
                ],
                "--framing lines applies to TCP inputs",
            ),
            (
                "mproxy-proxy",
                vec![
                    "--udp-listen-addr",
                    "127.0.0.1:9961",
                    "--udp-downstream-addr",
                    "127.0.0.1:9",
                    "--max-line",
                    "4096",
                ],
                "--max-line 4096 applies to TCP inputs",
            ),
            // a proxy forwarding to where it listens would loop forever
            (
                "mproxy-proxy",
                vec![
                    "--udp-listen-addr",
                    "239.255.0.1:9922",
                    "--udp-downstream-addr",
                    "239.255.0.1:9922",
                ],
                "sends back to --udp-listen-addr 239.255.0.1:9922",
            ),
            (
                "mproxy-client",
                vec!["--path", file, "--server-addr", "127.0.0.1:0"],
                "'127.0.0.1:0' has an invalid port",
            ),
            (
                "mproxy-client",
                vec![
                    "--path",
                    file,
                    "--mpx",
                    "--max-datagram",
                    "24",
                    "--server-addr",
                    "127.0.0.1:9",
                ],
                "--max-datagram 24",
            ),
            (
                "mproxy-server",
                vec!["--path", &typo_template, "--listen-addr", "127.0.0.1:9"],
                "unknown placeholder '{sesion}'",
            ),
            (
                "mproxy-proxy",
                vec!["--udp-listen-addr", "127.0.0.1:9"],
                "--udp-downstream-addr",
            ),
            ("mproxy-reverseproxy", vec![], "--"),
            (
                "mproxy-reverseproxy",
                vec![
                    "--udp-listen-addr",
                    "127.0.0.1:9",
                    "--multicast-addr",
                    "127.0.0.1:9918",
                ],
                "127.0.0.1:9918",
            ),
        ];
        for (bin, args, culprit) in cases {
            check(bin, &args, culprit);
        }
    });
}
