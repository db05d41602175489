//! Running as a service: config files, JSON logs and log files, the proxy
//! surviving DNS failures at start-up and keeping TCP records whole by
//! default, one help layout and one flag vocabulary, and the packaging
//! (man pages, completions, systemd units). Each test that runs a binary
//! does so in its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mproxy_e2e::{run, run_cmd, run_ok, start, start_server, stop, wait_for_len, TIMEOUT};
use mproxy_testsupport::{assert_files_equal, bin, in_netns, line_file, skip, wait_until, TempDir};

const BINARIES: [&str; 4] = [
    "mproxy-client",
    "mproxy-proxy",
    "mproxy-reverseproxy",
    "mproxy-server",
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--print-config` of `bin` with `args`, without the comments (where each
/// value came from)
fn effective(bin: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = run_ok(bin, &all);
    text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split("  #").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------ config files

/// For every binary: a config file equivalent to a flag set gives the same
/// effective configuration, and flags override the file
#[test]
fn config_file_equals_the_flags_it_holds() {
    in_netns(|_| {
        let dir = TempDir::new();
        let cases: [(&str, &[&str], &str); 4] = [
            (
                "mproxy-client",
                &["--server-addr", "127.0.0.1:9000", "--server-addr", "[::1]:9001", "--rate", "2MB", "--tee", "-v"],
                "server-addr = [\"127.0.0.1:9000\", \"[::1]:9001\"]\nrate = \"2MB\"\ntee = true\nverbose = 1\n",
            ),
            (
                "mproxy-proxy",
                &["--tcp-connect-addr", "tls://feed.example.org:4443", "--udp-downstream-addr", "239.255.0.1:9922", "--idle-timeout", "60", "--pin-sha256", &"ab".repeat(32)],
                &format!("tcp-connect-addr = [\"tls://feed.example.org:4443\"]\nudp-downstream-addr = \"239.255.0.1:9922\"\nidle-timeout = 60\npin-sha256 = [\"{}\"]\n", "ab".repeat(32)),
            ),
            (
                "mproxy-reverseproxy",
                &["--udp-listen-addr", "0.0.0.0:9920", "--tcp-output-addr", "0.0.0.0:9100", "--framing", "lines", "--loop", "off"],
                "udp-listen-addr = [\"0.0.0.0:9920\"]\ntcp-output-addr = [\"0.0.0.0:9100\"]\nframing = \"lines\"\nloop = \"off\"\n",
            ),
            (
                "mproxy-server",
                &["--listen-addr", "239.255.0.1:9920", "--path", "/var/log/feed.log", "--nack", "off", "--log-format", "json"],
                "listen-addr = [\"239.255.0.1:9920\"]\npath = \"/var/log/feed.log\"\nnack = \"off\"\nlog-format = \"json\"\n",
            ),
        ];
        for (bin, flags, toml) in cases {
            let file = dir.join(format!("{bin}.toml"));
            std::fs::write(&file, toml).unwrap();
            let from_flags = effective(bin, flags);
            let from_file = effective(bin, &["--config", s(&file)]);
            assert_eq!(from_flags, from_file, "{bin}: {toml}");
            // a flag overrides its key
            let over = effective(bin, &["--config", s(&file), "--ttl", "7"]);
            assert!(over.contains("\nttl = 7\n"), "{bin}: {over}");
            assert_eq!(
                over.replace("\nttl = 7\n", "\nttl = 1\n"),
                from_file,
                "{bin}"
            );
        }
    });
}

/// A bad key or value: exit 2, one line naming the file, the line and the key
#[test]
fn bad_config_exits_2_naming_key_and_line() {
    in_netns(|_| {
        let dir = TempDir::new();
        for bin in BINARIES {
            for (toml, wanted) in [
                (
                    "ttl = 2\n\nno-such-key = 1\n",
                    "line 3: unknown key 'no-such-key'",
                ),
                (
                    "# comment\nttl = \"many\"\n",
                    "line 2: key 'ttl': invalid value 'many'",
                ),
                (
                    "ttl = 1\nrcvbuf = [\"1M\", \"2M\"]\n",
                    "line 2: key 'rcvbuf': --rcvbuf takes one value",
                ),
                (
                    "tee = \"yes\"\n",
                    "line 1: key 'tee': expected true or false",
                ),
                ("ttl = \n", "line 1: not valid TOML"),
            ] {
                let file = dir.join("bad.toml");
                std::fs::write(&file, toml).unwrap();
                let out = run(bin, &["--config", s(&file)]);
                let err = text(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{bin} {toml:?}: {err}");
                assert_eq!(err.trim_end().lines().count(), 1, "{bin}: {err}");
                assert!(
                    err.starts_with(&format!("{bin}: error: --config {} {wanted}", s(&file))),
                    "{bin} {toml:?}: {err}"
                );
            }
        }
    });
}

/// One real transfer configured only by files: the server's listen
/// address and output, the client's destination, rate and input, with a
/// flag overriding the client's input
#[test]
fn config_file_e2e_transfer() {
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 256 << 10, 16);
        let out = dir.join("out.txt");
        let server_toml = dir.join("server.toml");
        std::fs::write(
            &server_toml,
            format!(
                "listen = [\"127.0.0.1:9700\"]\noutput = {:?}\nquiet = 1\n",
                s(&out)
            ),
        )
        .unwrap();
        let client_toml = dir.join("client.toml");
        std::fs::write(
            &client_toml,
            "to = [\"127.0.0.1:9700\"]\nrate = \"4MBps\"\npath = \"/nonexistent/overridden\"\n",
        )
        .unwrap();
        let server = start_server(&["--config", s(&server_toml)], &[9700]);
        run_ok(
            "mproxy-client",
            &["--config", s(&client_toml), "--path", s(&input)],
        );
        wait_for_len(&out, std::fs::metadata(&input).unwrap().len());
        stop(server);
        assert_files_equal(&input, &out);
    });
}

// ------------------------------------------------------------ logs

fn python_json_lines(path: &Path) -> Option<std::process::Output> {
    let input = std::fs::File::open(path).unwrap();
    let out = Command::new("python3")
        .args(["-m", "json.tool", "--json-lines"])
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    Some(out)
}

#[test]
fn json_logs_parse_line_by_line() {
    if Command::new("python3").arg("--version").output().is_err() {
        skip("python3 not found");
        return;
    }
    in_netns(|_| {
        let dir = TempDir::new();
        let input = dir.join("input.txt");
        line_file(&input, 64 << 10, 3);
        let out = dir.join("out.txt");
        let log = dir.join("server.log");
        // the server logs to a file, debug level included; the client to stderr
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9710",
                "--path",
                s(&out),
                "--log-format",
                "json",
                "--log-file",
                s(&log),
                "-v",
            ],
            &[9710],
        );
        let client = run_ok(
            "mproxy-client",
            &[
                "--path",
                s(&input),
                "--server-addr",
                "127.0.0.1:9710",
                "--mpx",
                "--log-format",
                "json",
                "-v",
            ],
        );
        wait_for_len(&out, std::fs::metadata(&input).unwrap().len());
        let server_stderr = stop(server);
        assert!(
            server_stderr.is_empty(),
            "logs went to stderr: {server_stderr}"
        );
        let client_log = dir.join("client.log");
        std::fs::write(&client_log, &client.stderr).unwrap();
        for (what, path) in [("server --log-file", &log), ("client stderr", &client_log)] {
            let lines = std::fs::read_to_string(path).unwrap();
            assert!(lines.lines().count() >= 2, "{what}: {lines}");
            for line in lines.lines() {
                assert!(
                    line.starts_with("{\"timestamp\":") && line.contains("\"level\":"),
                    "{what}: {line}"
                );
            }
            let checked = python_json_lines(path).expect("python3");
            assert!(
                checked.status.success(),
                "{what}: python3 -m json.tool refused: {}\n{lines}",
                text(&checked.stderr)
            );
        }
        // the summary is an event like any other, its counters in the message
        let server_log = std::fs::read_to_string(&log).unwrap();
        assert!(
            server_log.contains("\"level\":\"INFO\",\"message\":\"received "),
            "{server_log}"
        );
        assert!(
            server_log.contains("\"level\":\"DEBUG\""),
            "no -v: {server_log}"
        );
    });
}

#[test]
fn log_file_that_cannot_be_opened_exits_2_on_stderr() {
    in_netns(|_| {
        for bin in BINARIES {
            let out = run(
                bin,
                &[
                    "--log-file",
                    "/nonexistent/dir/x.log",
                    "--tee",
                    "--listen-addr",
                    "127.0.0.1:9",
                ][..if bin == "mproxy-server" { 5 } else { 3 }],
            );
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{bin}: {err}");
            assert!(
                err.starts_with(&format!(
                    "{bin}: error: --log-file /nonexistent/dir/x.log: cannot open"
                )),
                "{bin}: {err}"
            );
        }
    });
}

// ------------------------------------------------------------ the proxy

/// DNS down at boot: the proxy warns and retries like an unreachable
/// upstream, instead of exiting 2; a malformed address still exits 2
#[test]
fn proxy_unresolvable_upstream_is_retried_not_fatal() {
    in_netns(|_| {
        let proxy = start(
            "mproxy-proxy",
            &[
                "--tcp-connect-addr",
                "no-such-host.invalid:4001",
                "--udp-downstream-addr",
                "127.0.0.1:9720",
                "--reconnect-max",
                "1",
            ],
        );
        wait_until(TIMEOUT, "a resolve warning", || {
            proxy
                .stderr_text()
                .contains("cannot resolve 'no-such-host.invalid:4001'")
        });
        let log = proxy.stderr_text();
        let line = log.lines().find(|l| l.contains("cannot resolve")).unwrap();
        assert!(line.contains("WARN"), "{line}");
        let text = stop(proxy);
        assert!(
            text.contains("tcp no-such-host.invalid:4001: 0 connects")
                && !text.contains(" 0 failed attempts"),
            "{text}"
        );
        let out = run(
            "mproxy-proxy",
            &["--tcp-connect-addr", "no-such-host.invalid", "--tee"],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text_of(&out));
        assert!(text_of(&out).contains("has no port"), "{}", text_of(&out));
    });
}

fn text_of(o: &std::process::Output) -> String {
    text(&o.stderr)
}

/// TCP input is cut at line ends by default now (0.1.x cut it wherever a
/// read() ended): a line written in two pieces arrives in one datagram
#[test]
fn proxy_tcp_input_keeps_lines_whole_by_default() {
    in_netns(|_| {
        let sink = UdpSocket::bind("127.0.0.1:9731").unwrap();
        sink.set_read_timeout(Some(TIMEOUT)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:9730").unwrap();
        let proxy = start(
            "mproxy-proxy",
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9730",
                "--udp-downstream-addr",
                "127.0.0.1:9731",
            ],
        );
        let (mut conn, _) = listener.accept().unwrap();
        let pieces: [&[u8]; 3] = [
            b"$GPGGA,first\n$GPGGA,sec",
            b"ond half\n$GPGGA,th",
            b"ird\n",
        ];
        let mut got = Vec::new();
        let mut datagrams = Vec::new();
        let mut buf = [0u8; 2048];
        for p in pieces {
            conn.write_all(p).unwrap();
            conn.flush().unwrap();
            // each piece is read on its own (bytes framing would send it as is)
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(conn);
        let want = pieces.concat();
        while got.len() < want.len() {
            let n = sink.recv(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            datagrams.push(text(&buf[..n]));
        }
        stop(proxy);
        assert_eq!(got, want);
        for d in &datagrams {
            assert!(d.ends_with('\n'), "a datagram ends mid-line: {datagrams:?}");
        }
        assert_eq!(datagrams.len(), 3, "{datagrams:?}");
    });
}

// ------------------------------------------------------------ help and flags

/// Every binary lays out --help the same way: each description on the
/// lines under its flag, never beside it
#[test]
fn help_has_one_layout() {
    in_netns(|_| {
        for bin in BINARIES {
            let help = text(&run_ok(bin, &["--help"]).stdout);
            assert!(help.contains("\nOptions:\n"), "{bin}");
            for line in help.lines() {
                let t = line.trim_start();
                let indent = line.len() - t.len();
                if (indent == 2 || indent == 6) && t.starts_with('-') {
                    // the flag, its aliases and value name, nothing else
                    let rest = t.split("  ").nth(1);
                    assert!(rest.is_none(), "{bin}: description beside the flag: {line}");
                }
            }
        }
    });
}

/// The 0.1.x names keep working, and the same job has the same alias in
/// every binary: --to (UDP destination), --listen (UDP input),
/// --input/--output (the client's and the server's files)
#[test]
fn original_names_and_aliases_reach_the_same_flags() {
    in_netns(|_| {
        let cases: [(&str, &[&str], &[&str]); 6] = [
            (
                "mproxy-client",
                &["--path", "a.txt", "--server-addr", "127.0.0.1:9", "--tee"],
                &["--input", "a.txt", "--to", "127.0.0.1:9", "-t"],
            ),
            (
                "mproxy-server",
                &["--path", "o.log", "--listen-addr", "127.0.0.1:9", "--tee"],
                &["--output", "o.log", "--listen", "127.0.0.1:9", "-t"],
            ),
            (
                "mproxy-server",
                &["--path", "o.log", "--listen-addr", "127.0.0.1:9"],
                &["--path", "o.log", "--udp-listen-addr", "127.0.0.1:9"],
            ),
            (
                "mproxy-proxy",
                &[
                    "--udp-listen-addr",
                    "127.0.0.1:8",
                    "--udp-downstream-addr",
                    "127.0.0.1:9",
                    "--tcp-connect-addr",
                    "127.0.0.1:7",
                    "--tee",
                ],
                &[
                    "--listen",
                    "127.0.0.1:8",
                    "--to",
                    "127.0.0.1:9",
                    "--tcp-connect-addr",
                    "127.0.0.1:7",
                    "-t",
                ],
            ),
            (
                "mproxy-proxy",
                &[
                    "--udp-listen-addr",
                    "127.0.0.1:8",
                    "--udp-downstream-addr",
                    "127.0.0.1:9",
                ],
                &[
                    "--listen-addr",
                    "127.0.0.1:8",
                    "--udp-downstream-addr",
                    "127.0.0.1:9",
                ],
            ),
            (
                "mproxy-reverseproxy",
                &[
                    "--udp-listen-addr",
                    "127.0.0.1:8",
                    "--tcp-listen-addr",
                    "127.0.0.1:7",
                    "--multicast-addr",
                    "239.1.2.3:4",
                    "--tcp-output-addr",
                    "127.0.0.1:6",
                    "--udp-output-addr",
                    "127.0.0.1:9",
                    "--tee",
                ],
                &[
                    "--listen",
                    "127.0.0.1:8",
                    "--tcp-listen-addr",
                    "127.0.0.1:7",
                    "--multicast-addr",
                    "239.1.2.3:4",
                    "--tcp-output-addr",
                    "127.0.0.1:6",
                    "--to",
                    "127.0.0.1:9",
                    "-t",
                ],
            ),
        ];
        for (bin, original, aliases) in cases {
            assert_eq!(
                effective(bin, original),
                effective(bin, aliases),
                "{bin} {aliases:?}"
            );
        }
    });
}

// ------------------------------------------------------------ packaging

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// scripts/check-packaging.sh: the man pages render with `man ./FILE`
/// (no warnings), completions load, the example configs are valid and the
/// systemd units pass `systemd-analyze verify`
#[test]
fn packaging_man_pages_render_and_units_verify() {
    in_netns(|_| {
        let bin_dir = bin("mproxy-server").parent().unwrap().to_path_buf();
        let out = run_cmd(
            Command::new("bash")
                .arg(workspace_root().join("scripts/check-packaging.sh"))
                .env("MPROXY_BIN_DIR", &bin_dir)
                .env_remove("MPROXY_INSTALL_PACKAGES"),
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "check-packaging.sh failed: {err}");
        if err.contains("SKIPPED: man") {
            skip("man not found (apt-get install man-db)");
        } else {
            for b in BINARIES {
                assert!(err.contains(&format!("man ./{b}.1 renders")), "{err}");
            }
        }
        if err.contains("SKIPPED: systemd-analyze") {
            skip("systemd-analyze not found (apt-get install systemd)");
        } else {
            assert!(
                err.contains("systemd-analyze verify passes on 4 units"),
                "{err}"
            );
        }
    });
}

/// The man page and completions come from the same definitions as --help
#[test]
fn generated_docs_follow_the_flags() {
    in_netns(|_| {
        for b in BINARIES {
            let man = text(&run_ok(b, &["--generate", "man"]).stdout);
            assert!(man.contains(&format!(".TH {b} 1")), "{b}");
            assert!(man.contains("\\-\\-config"), "{b}");
            assert!(
                !man.contains("\\-\\-generate"),
                "{b}: the hidden flag is documented"
            );
            for shell in ["bash", "zsh", "fish"] {
                let c = text(&run_ok(b, &["--generate", shell]).stdout);
                assert!(c.contains("log-format"), "{b} {shell}");
            }
        }
    });
}
