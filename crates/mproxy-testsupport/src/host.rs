//! A second host for multipath tests: its own network namespace, reached
//! from the test's namespace over veth pairs that can be rate-limited
//! (tc tbf) and taken down
//!
//! The host is a `sleep` process started in a fresh network namespace
//! (`unshare --net`) from the test thread; commands run inside it with
//! `nsenter --net=/proc/PID/ns/net`. Killing the holder when the
//! [`PeerHost`] drops destroys the namespace and its links. Nothing is
//! named globally, so parallel tests cannot collide.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// A network namespace standing for another machine
#[derive(Debug)]
pub struct PeerHost {
    holder: Child,
    pid: u32,
}

/// One veth link between the test's namespace and a [`PeerHost`]
#[derive(Debug, Clone)]
pub struct Link {
    /// Device name on the test's side
    pub local_dev: String,
    /// Device name on the peer host's side
    pub peer_dev: String,
    /// Address on the test's side (10.210.N.1)
    pub local_addr: Ipv4Addr,
    /// Address on the peer host's side (10.210.N.2)
    pub peer_addr: Ipv4Addr,
}

impl PeerHost {
    /// Start a new host (call inside [`crate::in_netns`])
    pub fn new(_ns: &Netns) -> Self {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting a peer host with unshare: {e}"));
        let pid = holder.id();
        let me = std::fs::read_link("/proc/thread-self/ns/net").ok();
        // wait until the holder has really moved into its own namespace
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if theirs.is_some() && theirs != me {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "peer host {pid} never got its own namespace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let host = Self { holder, pid };
        host.run("ip", &["link", "set", "lo", "up"]);
        host
    }

    /// A command that runs inside this host
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg("--")
            .arg(program);
        c
    }

    /// Run a command inside this host; panics with its stderr on failure
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in peer host: {e}"));
        assert!(
            out.status.success(),
            "`{program} {}` in peer host failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Connect the test's namespace to this host with link number `n`
    /// (1..=250): devices `mpl<n>` (local) and `mpp<n>` (peer), addresses
    /// 10.210.n.1 and 10.210.n.2; egress of both ends shaped to `rate`
    /// (tc tbf) when given
    pub fn link(&self, ns: &Netns, n: u8, rate: Option<&str>) -> Link {
        let local_dev = format!("mpl{n}");
        let peer_dev = format!("mpp{n}");
        let local_addr = Ipv4Addr::new(10, 210, n, 1);
        let peer_addr = Ipv4Addr::new(10, 210, n, 2);
        let pid = self.pid.to_string();
        ns.run(
            "ip",
            &[
                "link", "add", "name", &local_dev, "type", "veth", "peer", "name", &peer_dev,
                "netns", &pid,
            ],
        );
        ns.run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{local_addr}/24"),
                "dev",
                &local_dev,
            ],
        );
        ns.run("ip", &["link", "set", "dev", &local_dev, "up"]);
        self.run(
            "ip",
            &["addr", "add", &format!("{peer_addr}/24"), "dev", &peer_dev],
        );
        self.run("ip", &["link", "set", "dev", &peer_dev, "up"]);
        if let Some(rate) = rate {
            for (run_local, dev) in [(true, &local_dev), (false, &peer_dev)] {
                let args = [
                    "qdisc",
                    "replace",
                    "dev",
                    dev.as_str(),
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "64kb",
                    "latency",
                    "100ms",
                ];
                if run_local {
                    ns.run("tc", &args);
                } else {
                    self.run("tc", &args);
                }
            }
        }
        Link {
            local_dev,
            peer_dev,
            local_addr,
            peer_addr,
        }
    }

    /// Take link `l` down (`up == false`) or bring it back, on both ends
    pub fn set_link(&self, ns: &Netns, l: &Link, up: bool) {
        let state = if up { "up" } else { "down" };
        ns.run("ip", &["link", "set", "dev", &l.local_dev, state]);
        self.run("ip", &["link", "set", "dev", &l.peer_dev, state]);
    }

    /// Process id of the namespace holder
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
