//! A self-signed server certificate made the usual way with openssl
//! (`openssl req -x509 -newkey ... -subj /CN=localhost`, which marks it as
//! a CA) behind `openssl s_server`: refused with `--ca-file` and a
//! one-line explanation, accepted with `--pin-sha256` of the certificate
//! (openssl's hex fingerprint) or of its public key (base64, as curl
//! takes it), refused with a wrong pin. Each test in its own namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mproxy_e2e::{reached_len, start, start_server, stop, TIMEOUT};
use mproxy_testsupport::{
    in_netns, skip, spawn_with_stdin, wait_for_tcp_bound, wait_until, ChildGuard, TempDir,
};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `sh -c script` in `dir`; its stdout, trimmed
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The self-signed certificate and its pins, as a user would make them
struct SelfSigned {
    cert: String,
    key: String,
    /// `AB:CD:...`, from `openssl x509 -fingerprint -sha256`
    fingerprint: String,
    /// base64 SHA-256 of the public key
    spki_base64: String,
}

fn self_signed(dir: &Path) -> SelfSigned {
    sh(
        dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout key.pem -out cert.pem -days 30 -subj /CN=localhost 2>/dev/null",
    );
    // the point of the exercise: openssl marks it as a CA
    let text = sh(dir, "openssl x509 -in cert.pem -noout -text");
    assert!(
        text.contains("CA:TRUE"),
        "this openssl did not make a CA certificate: {text}"
    );
    let fp = sh(dir, "openssl x509 -in cert.pem -noout -fingerprint -sha256");
    let fingerprint = fp.split_once('=').unwrap().1.to_string();
    let spki_base64 = sh(
        dir,
        "openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
    );
    SelfSigned {
        cert: s(&dir.join("cert.pem")).to_string(),
        key: s(&dir.join("key.pem")).to_string(),
        fingerprint,
        spki_base64,
    }
}

/// `openssl s_server` with the certificate on 127.0.0.1:`port`; what it
/// reads on stdin goes to the connected client
fn s_server(c: &SelfSigned, port: u16) -> ChildGuard {
    let guard = spawn_with_stdin(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", &c.cert, "-key", &c.key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    wait_for_tcp_bound(port, TIMEOUT);
    guard
}

fn proxy(port: u16, down: u16, extra: &[&str]) -> ChildGuard {
    let up = format!("tls://localhost:{port}");
    let down = format!("127.0.0.1:{down}");
    let mut args = vec![
        "--tcp-connect-addr",
        &up,
        "--udp-downstream-addr",
        &down,
        "--reconnect-max",
        "1",
    ];
    args.extend_from_slice(extra);
    start("mproxy-proxy", &args)
}

/// The proxy's stderr once it logged a line containing `what`
fn wait_log(p: &ChildGuard, what: &str) -> String {
    wait_until(TIMEOUT, &format!("'{what}' in the proxy's log"), || {
        p.stderr_text().contains(what)
    });
    p.stderr_text()
}

#[test]
fn self_signed_openssl_certificate_is_refused_with_an_explanation() {
    if !openssl_available() {
        skip("openssl not found (apt-get install openssl)");
        return;
    }
    in_netns(|_| {
        let dir = TempDir::new();
        let c = self_signed(dir.path());
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9761", "--path", s(&out)],
            &[9761],
        );
        let mut feed = s_server(&c, 9760);
        let p = proxy(9760, 9761, &["--ca-file", &c.cert]);
        let log = wait_log(&p, "is a CA certificate");
        let text = stop(p);
        let line = log
            .lines()
            .find(|l| l.contains("is a CA certificate"))
            .unwrap();
        // in words, with what to do, and the hash to pin (openssl's, unformatted)
        let hex = c.fingerprint.replace(':', "").to_lowercase();
        assert!(line.contains(&format!("--pin-sha256 {hex}")), "{line}");
        assert!(line.contains("CA:FALSE"), "{line}");
        assert!(!line.contains("CaUsedAsEndEntity"), "{line}");
        assert!(text.contains("bad certificate"), "{text}");
        stop(server);
        feed.kill();
        assert_eq!(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0), 0);
    });
}

#[test]
fn self_signed_openssl_certificate_is_accepted_with_its_pin() {
    if !openssl_available() {
        skip("openssl not found (apt-get install openssl)");
        return;
    }
    in_netns(|_| {
        let dir = TempDir::new();
        let c = self_signed(dir.path());
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9771", "--path", s(&out)],
            &[9771],
        );
        let data: Vec<u8> = (0..2000)
            .flat_map(|i| format!("$GPGGA,pinned line {i},0*00\n").into_bytes())
            .collect();

        // the certificate's fingerprint as openssl prints it (colons, upper case)
        let mut feed = s_server(&c, 9770);
        let p = proxy(9770, 9771, &["--pin-sha256", &c.fingerprint]);
        wait_log(&p, "connected (TLS)");
        // s_server echoes stdin to its client only once the handshake is
        // over (see tls.rs, tls_feed_from_openssl_s_server)
        std::thread::sleep(Duration::from_millis(300));
        let mut stdin = feed.child_mut().stdin.take().unwrap();
        stdin.write_all(&data).unwrap();
        stdin.flush().unwrap();
        let complete = reached_len(&out, data.len() as u64, TIMEOUT);
        let text = stop(p);
        assert!(complete, "output incomplete: {text}");
        assert!(std::fs::read(&out).unwrap() == data, "output differs");
        assert!(text.contains(" 0 TLS failures"), "{text}");
        drop(stdin);
        feed.kill();

        // the public key's hash, base64 as curl writes it
        let mut feed = s_server(&c, 9772);
        let spki = format!("sha256//{}", c.spki_base64);
        let p = proxy(9772, 9771, &["--pin-sha256", &spki]);
        wait_log(&p, "connected (TLS)");
        stop(p);
        feed.kill();

        // a pin of something else: refused, naming the hashes it has
        let mut feed = s_server(&c, 9773);
        let wrong = "00".repeat(32);
        let p = proxy(9773, 9771, &["--pin-sha256", &wrong]);
        let log = wait_log(&p, "matches no --pin-sha256");
        let hex = c.fingerprint.replace(':', "").to_lowercase();
        assert!(log.contains(&format!("certificate sha256 {hex}")), "{log}");
        assert!(log.contains(&c.spki_base64), "{log}");
        let text = stop(p);
        assert!(text.contains("bad certificate"), "{text}");
        feed.kill();
        stop(server);
        // nothing more than the first feed arrived
        assert_eq!(std::fs::metadata(&out).unwrap().len(), data.len() as u64);
    });
}

#[test]
fn bad_pins_exit_2_naming_the_flag() {
    in_netns(|_| bad_pins());
}

fn bad_pins() {
    let out = mproxy_e2e::run(
        "mproxy-proxy",
        &[
            "--tcp-connect-addr",
            "tls://127.0.0.1:9",
            "--tee",
            "--pin-sha256",
            "abcd",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--pin-sha256") && err.contains("'abcd' is not a SHA-256 hash"),
        "{err}"
    );
    let out = mproxy_e2e::run(
        "mproxy-proxy",
        &[
            "--tcp-connect-addr",
            "tls://127.0.0.1:9",
            "--tee",
            "--insecure-skip-verify",
            "--pin-sha256",
            &"ab".repeat(32),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--insecure-skip-verify and --pin-sha256 exclude each other"),
        "{err}"
    );
    let out = mproxy_e2e::run(
        "mproxy-proxy",
        &[
            "--tcp-connect-addr",
            "127.0.0.1:9",
            "--tee",
            "--pin-sha256",
            &"ab".repeat(32),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--pin-sha256 only applies to TLS upstreams"),
        "{err}"
    );
}
