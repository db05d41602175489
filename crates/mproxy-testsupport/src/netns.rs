//! Private network namespaces for tests.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Environment variable set on a test binary that [`in_netns`] re-executed
/// under `unshare --user --map-root-user --net` because it lacked the
/// privilege to create a network namespace itself.
pub const REEXEC_ENV: &str = "MPROXY_TESTSUPPORT_REEXEC";

const NS_PATH: &str = "/proc/thread-self/ns/net";

/// How long [`Netns::veth_pair`] waits for the new links to become usable.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// Network namespace the current thread was in before the outermost
    /// [`in_netns`] moved it; used to run things (such as `cargo install`) that need the
    /// outside network.
    static OUTER_NETNS: Cell<Option<std::os::fd::RawFd>> = const { Cell::new(None) };
}

/// Identity `(device, inode)` of the network namespace of the calling
/// thread, read from `/proc/thread-self/ns/net`.
///
/// Two threads are in the same network namespace exactly when this returns
/// the same value on both.
pub fn current_netns_id() -> (u64, u64) {
    let meta = std::fs::metadata(NS_PATH)
        .unwrap_or_else(|e| panic!("cannot stat {NS_PATH} (is /proc mounted?): {e}"));
    (meta.dev(), meta.ino())
}

/// Raw descriptor of the network namespace the calling thread was in before
/// the outermost enclosing [`in_netns`], if any.
pub(crate) fn outer_netns_fd() -> Option<std::os::fd::RawFd> {
    OUTER_NETNS.with(Cell::get)
}

/// Moves the calling thread into the network namespace open as `fd`.
pub(crate) fn enter_netns_fd(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller keeps open.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts the thread back into its original namespace when `in_netns` ends,
/// also when the closure panics.
struct Restore {
    outer: File,
    prev_outer: Option<std::os::fd::RawFd>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        OUTER_NETNS.with(|c| c.set(self.prev_outer));
        if let Err(e) = enter_netns_fd(self.outer.as_raw_fd()) {
            // Staying in the private namespace is harmless (nothing leaks to
            // the host); only say so.
            eprintln!("mproxy-testsupport: could not return thread to its original netns: {e}");
        }
    }
}

/// Runs `f` inside a fresh, private network namespace for the current thread.
///
/// The namespace is created with `unshare(CLONE_NEWNET)`, which applies to
/// the calling thread only; threads and child processes started from inside
/// `f` inherit it. Before `f` runs, `lo` is brought up with multicast on and
/// `224.0.0.0/4` is routed to `lo`, so IPv4 multicast sent without an
/// explicit interface stays on loopback. IPv6 duplicate address detection is
/// off and IPv4 reverse-path filtering is off (`accept_local` on) in the
/// namespace, so veth pairs made by [`Netns::veth_pair`] are usable at once
/// and can carry traffic between two addresses of the same namespace.
///
/// IPv6 multicast cannot use `lo` on Linux (the kernel turns any route via
/// `lo` to a non-loopback prefix into a reject route, so sends fail with
/// `ENETUNREACH`); make a veth pair for it: a sender whose
/// `IPV6_MULTICAST_IF` is `a` reaches receivers joined on `b` across the
/// pair, and receivers joined on `a` itself through the multicast loopback.
///
/// When `f` returns (or panics) the thread goes back to its original
/// namespace; the private one disappears once nothing uses it any more.
///
/// If the process may not create namespaces (`EPERM`, not root), the current
/// test is re-executed alone under `unshare --user --map-root-user --net`
/// and this call passes or panics with the outcome of that run; `f` then
/// never runs in this process. If that is impossible too, this panics with
/// instructions. `f` never runs in the host's network namespace. Because
/// the fallback re-runs the *whole test* in the child, keep the entire test
/// body inside `f` (code around the call runs in both processes).
pub fn in_netns<F: FnOnce(&Netns)>(f: F) {
    let before = current_netns_id();
    let outer = File::open(NS_PATH).unwrap_or_else(|e| panic!("cannot open {NS_PATH}: {e}"));
    // SAFETY: plain syscall; affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            reexec_current_test(&err);
            return;
        }
        panic!("unshare(CLONE_NEWNET) failed: {err}");
    }
    // Remember the outermost namespace (the one with real network access).
    let prev_outer = OUTER_NETNS.with(|c| {
        let prev = c.get();
        if prev.is_none() {
            c.set(Some(outer.as_raw_fd()));
        }
        prev
    });
    let _restore = Restore { outer, prev_outer };
    let id = current_netns_id();
    assert_ne!(
        id, before,
        "unshare(CLONE_NEWNET) succeeded but /proc/thread-self/ns/net did not change; refusing to run in the host namespace"
    );
    let ns = Netns {
        id,
        next_pair: Cell::new(1),
        _not_send: PhantomData,
    };
    ns.setup();
    f(&ns);
}

/// Whether this process may create network namespaces itself. When it may
/// not, [`in_netns`] re-executes the current test in a user+net namespace
/// instead of running the closure in this process.
pub fn netns_available() -> bool {
    // A throwaway thread: its namespace dies with it.
    std::thread::spawn(|| {
        // SAFETY: plain syscall; affects only this short-lived thread.
        unsafe { libc::unshare(libc::CLONE_NEWNET) == 0 }
    })
    .join()
    .unwrap_or(false)
}

fn howto() -> &'static str {
    "network-namespace tests need CAP_SYS_ADMIN: run them as root, or inside a user+net \
     namespace, e.g. `unshare --user --map-root-user --net cargo test ...`"
}

/// Re-runs the current test alone in a user+net namespace and reports its
/// outcome by returning (pass) or panicking (fail).
fn reexec_current_test(err: &io::Error) {
    if std::env::var_os(REEXEC_ENV).is_some() {
        panic!("unshare(CLONE_NEWNET) failed ({err}) even after re-executing under `unshare --user --map-root-user --net`; {}", howto());
    }
    let thread = std::thread::current();
    let name = match thread.name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => panic!(
            "unshare(CLONE_NEWNET) failed ({err}) and the current test cannot be re-executed (unknown test name); {}",
            howto()
        ),
    };
    let Some(unshare) = find_on_path("unshare") else {
        panic!(
            "unshare(CLONE_NEWNET) failed ({err}) and the `unshare` tool is not on PATH; {}",
            howto()
        );
    };
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe failed: {e}"));
    let out = Command::new(&unshare)
        .args(["--user", "--map-root-user", "--net"])
        .arg(&exe)
        .arg(&name)
        .args([
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(REEXEC_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {}", unshare.display(), howto()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.contains("running 1 test") {
        panic!(
            "unshare(CLONE_NEWNET) failed ({err}) and re-executing under `unshare --user --map-root-user --net` did not work ({}):\n{stderr}\n{}",
            out.status,
            howto()
        );
    }
    if !out.status.success() || !stdout.contains("test result: ok. 1 passed") {
        panic!(
            "test {name} failed when re-executed in a user+net namespace ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            out.status
        );
    }
    // Shown by the harness for failing tests or with --nocapture ...
    println!("(re-executed in a user+net namespace)\n{stdout}");
    eprint!("{stderr}");
    // ... except skips, which must always be visible (see `skip`).
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED: ")) {
        let _ = writeln!(io::stderr().lock(), "{line}");
    }
}

/// Finds an executable called `name` on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A private network namespace created by [`in_netns`].
///
/// It belongs to the thread that runs the closure (and the threads and
/// processes started from it), so a `Netns` cannot be sent to other threads.
#[derive(Debug)]
pub struct Netns {
    id: (u64, u64),
    next_pair: Cell<u32>,
    _not_send: PhantomData<*const ()>,
}

/// The two ends of a veth pair made by [`Netns::veth_pair`], with their
/// interface indexes and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// Name of the first end.
    pub a: String,
    /// Name of the second end.
    pub b: String,
    /// Interface index of `a`.
    pub a_index: u32,
    /// Interface index of `b`.
    pub b_index: u32,
    /// IPv6 ULA address of `a` (`fd00:<n>::1/64`).
    pub a_v6: Ipv6Addr,
    /// IPv6 ULA address of `b` (`fd00:<n>::2/64`).
    pub b_v6: Ipv6Addr,
    /// IPv4 address of `a` (`10.200.<n>.1/24`).
    pub a_v4: Ipv4Addr,
    /// IPv4 address of `b` (`10.200.<n>.2/24`).
    pub b_v4: Ipv4Addr,
}

impl Netns {
    /// Identity of this namespace, as returned by [`current_netns_id`].
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    fn check_thread(&self) {
        let here = current_netns_id();
        assert_eq!(
            here, self.id,
            "Netns used from a thread that is not inside it; refusing to run commands in another namespace"
        );
    }

    fn setup(&self) {
        self.run("ip", &["link", "set", "dev", "lo", "up"]);
        self.run("ip", &["link", "set", "dev", "lo", "multicast", "on"]);
        self.run("ip", &["route", "add", "224.0.0.0/4", "dev", "lo"]);
        // New interfaces take their settings from "default".
        for (key, value) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.accept_local", "1"),
            ("net.ipv4.conf.default.accept_local", "1"),
        ] {
            self.sysctl(key, value);
        }
    }

    /// Writes a sysctl of this namespace, e.g.
    /// `sysctl("net.ipv4.conf.all.rp_filter", "0")`. Keys are dotted paths
    /// below `/proc/sys` (interface names containing dots are not supported).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.check_thread();
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).unwrap_or_else(|e| {
            panic!("cannot set sysctl {key}={value} ({}): {e}", path.display())
        });
    }

    /// Reads a sysctl of this namespace (trimmed), e.g.
    /// `read_sysctl("net.ipv6.conf.all.forwarding")`.
    pub fn read_sysctl(&self, key: &str) -> String {
        self.check_thread();
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read sysctl {key} ({}): {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Runs `cmd args...` inside this namespace (stdin from `/dev/null`,
    /// output captured) and returns its output whatever its exit status.
    pub fn try_run(&self, cmd: &str, args: &[&str]) -> io::Result<Output> {
        self.check_thread();
        Command::new(cmd).args(args).stdin(Stdio::null()).output()
    }

    /// Runs `cmd args...` inside this namespace and returns its stdout;
    /// panics with its stderr if it cannot start or exits unsuccessfully.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        let line = || format!("{cmd} {}", args.join(" "));
        let out = self
            .try_run(cmd, args)
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", line()));
        if !out.status.success() {
            panic!(
                "`{}` failed ({}): {}{}",
                line(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                String::from_utf8_lossy(&out.stdout).trim_end()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates the veth pair `a` <-> `b` in this namespace, both ends up with
    /// multicast on, `a` = `fd00:<n>::1/64` + `10.200.<n>.1/24`,
    /// `b` = `fd00:<n>::2/64` + `10.200.<n>.2/24` (`n` = 1, 2, ... per pair
    /// made in this namespace; IPv6 addresses added with `nodad`), and waits
    /// (at most 5 s) until both links are up and no address is tentative.
    ///
    /// Both ends live in the same namespace: IPv4/IPv6 *unicast* between
    /// `a_v4` and `b_v4` is delivered locally (through `lo`), while multicast
    /// sent with the outgoing interface set to `a` really crosses the pair
    /// and arrives on `b`.
    pub fn veth_pair(&self, a: &str, b: &str) -> VethPair {
        for name in [a, b] {
            assert!(
                !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['/', ' ']),
                "bad interface name {name:?} (1..15 characters, no '/' or spaces)"
            );
        }
        let n = self.next_pair.get();
        assert!(n <= 254, "too many veth pairs in one namespace");
        self.next_pair.set(n + 1);
        let n16 = u16::try_from(n).unwrap_or(0);
        let n8 = u8::try_from(n).unwrap_or(0);
        let a_v6 = Ipv6Addr::new(0xfd00, n16, 0, 0, 0, 0, 0, 1);
        let b_v6 = Ipv6Addr::new(0xfd00, n16, 0, 0, 0, 0, 0, 2);
        let a_v4 = Ipv4Addr::new(10, 200, n8, 1);
        let b_v4 = Ipv4Addr::new(10, 200, n8, 2);

        // "name" is spelled out: `ip link add a ...` would read "a" as an
        // abbreviation of "address".
        self.run(
            "ip",
            &["link", "add", "name", a, "type", "veth", "peer", "name", b],
        );
        for (dev, v6, v4) in [(a, a_v6, a_v4), (b, b_v6, b_v4)] {
            self.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0");
            self.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
            self.sysctl(&format!("net.ipv4.conf.{dev}.accept_local"), "1");
            self.run("ip", &["link", "set", "dev", dev, "multicast", "on", "up"]);
            self.run(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            self.run(
                "ip",
                &["-4", "addr", "add", &format!("{v4}/24"), "dev", dev],
            );
        }
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        for (dev, v6) in [(a, a_v6), (b, b_v6)] {
            loop {
                let link = self.run("ip", &["-o", "link", "show", "dev", dev]);
                let addrs = self.run("ip", &["-o", "-6", "addr", "show", "dev", dev]);
                let up = link.contains("LOWER_UP") && link.contains(",UP");
                let ready = addrs.contains(&format!("{v6}/64"))
                    && addrs.contains(" fe80:")
                    && !addrs.contains("tentative");
                if up && ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "veth {dev} not usable after {LINK_UP_TIMEOUT:?}:\n{link}\n{addrs}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        VethPair {
            a: a.to_owned(),
            b: b.to_owned(),
            a_index: self.if_index(a),
            b_index: self.if_index(b),
            a_v6,
            b_v6,
            a_v4,
            b_v4,
        }
    }

    /// Interface index of `dev` in this namespace (`if_nametoindex`); panics
    /// if there is no such interface.
    pub fn if_index(&self, dev: &str) -> u32 {
        self.check_thread();
        let c = CString::new(dev).unwrap_or_else(|_| panic!("bad interface name {dev:?}"));
        // SAFETY: `c` is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(
            idx != 0,
            "if_nametoindex({dev}): {}",
            io::Error::last_os_error()
        );
        idx
    }

    /// Shapes egress of `dev` with a token bucket filter:
    /// `tc qdisc replace dev <dev> root tbf rate <rate> burst <burst> latency <latency>`
    /// (e.g. `shape("a", "10mbit", "32kbit", "50ms")`).
    pub fn shape(&self, dev: &str, rate: &str, burst: &str, latency: &str) {
        self.run(
            "tc",
            &[
                "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                "latency", latency,
            ],
        );
    }
}
