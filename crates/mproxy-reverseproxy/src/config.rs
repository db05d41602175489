//! Validated configuration: every address resolved, nothing bound yet

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mproxy_common::mpx::ReceiverConfig;
use mproxy_common::net::MAX_UDP_PAYLOAD;
use mproxy_common::pack::Framing;
use mproxy_common::wire::HEADER_LEN;
use mproxy_common::{AddrError, Endpoint, SocketOptions};

use crate::cli::{
    Accept, Cli, DEFAULT_CLIENT_QUEUE, DEFAULT_GROUP, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_DATAGRAM,
    DEFAULT_STALL_TIMEOUT_SECS,
};
use crate::error::{bail_config, Error};
use crate::slots::default_max_handshakes;
use crate::tls::TlsServerOptions;
pub use crate::types::{Addr, ClientQueue, ListenAddr, SlowClient, MAX_CLIENT_QUEUE};

/// Everything [`ReverseProxy::start`](crate::ReverseProxy::start) needs
///
/// Build it from the command line with `Config::try_from(cli)`, or fill
/// in the fields, starting from [`Config::default`] (no inputs or
/// outputs, the default group and limits).
#[derive(Debug, Clone)]
pub struct Config {
    /// The multicast group inputs send to and outputs receive from
    pub group: Addr,
    /// UDP sockets whose datagrams are sent to the group
    pub udp_inputs: Vec<Addr>,
    /// TCP listeners whose connections' bytes are sent to the group
    /// (`tls` set: TLS listeners)
    pub tcp_inputs: Vec<Addr>,
    /// TCP listeners whose clients receive the group's payloads (`tls`
    /// set: TLS listeners)
    pub tcp_outputs: Vec<Addr>,
    /// UDP destinations the group's datagrams are forwarded to
    pub udp_outputs: Vec<Addr>,
    /// Send the UDP outputs the reassembled payloads instead of the frames
    pub udp_output_strip: bool,
    /// How TCP input is cut into datagrams
    pub framing: Framing,
    /// Largest payload made from TCP input (with `mpx`: largest frame,
    /// header included, made from TCP input or a raw UDP datagram)
    pub max_datagram: usize,
    /// Frame the inputs with mpx, one stream per TCP connection and per
    /// UDP listener, all in one session of this process
    pub mpx: bool,
    /// Which datagrams the TCP outputs (and stripping UDP outputs) accept
    pub accept: Accept,
    /// Reassembly of mpx streams in the outputs; `reorder_window`,
    /// `reorder_timeout` and `max_streams` come from the command line
    pub receiver: ReceiverConfig,
    /// How far a TCP output client may fall behind before it loses
    /// datagrams (or is disconnected, see `slow_client`)
    pub client_queue: ClientQueue,
    /// What happens to a TCP output client whose queue is full
    pub slow_client: SlowClient,
    /// Connections per TCP listener (a newcomer evicts the one that made
    /// the least progress, see `mproxy_reverseproxy` docs)
    pub max_clients: usize,
    /// TLS handshakes running at once per `tls://` listener; `None`: a
    /// quarter of `max_clients`, 8 to 64
    pub max_handshakes: Option<usize>,
    /// A TCP output client that takes no data for this long while data
    /// waits for it is closed
    pub stall_timeout: Duration,
    /// Certificate, key and client CA of the `tls://` listeners
    pub tls: TlsServerOptions,
    /// Copy what the inputs send to the group to stdout
    pub tee: bool,
    /// Interface, TTL, loopback, SSM sources and buffer sizes. `sources`
    /// apply to the joins of the group only (outputs), not to UDP inputs
    pub socket: SocketOptions,
}

impl Default for Config {
    fn default() -> Self {
        let group: SocketAddr = DEFAULT_GROUP
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([239, 255, 77, 18], 9918)));
        Self {
            group: group.into(),
            udp_inputs: Vec::new(),
            tcp_inputs: Vec::new(),
            tcp_outputs: Vec::new(),
            udp_outputs: Vec::new(),
            udp_output_strip: false,
            framing: Framing::Bytes,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            mpx: false,
            accept: Accept::Auto,
            receiver: ReceiverConfig::default(),
            client_queue: DEFAULT_CLIENT_QUEUE,
            slow_client: SlowClient::Drop,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_handshakes: None,
            stall_timeout: Duration::from_secs(DEFAULT_STALL_TIMEOUT_SECS),
            tls: TlsServerOptions::default(),
            tee: false,
            socket: SocketOptions::default(),
        }
    }
}

impl TryFrom<Cli> for Config {
    type Error = Error;

    /// Resolve every address and check the combination; binds nothing
    fn try_from(cli: Cli) -> Result<Self, Error> {
        cli.common
            .validate()
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        let named = |flag: &str, e: AddrError| Error::Config(format!("--{flag}: {e}"));
        let resolve_all = |flag: &str, specs: Vec<Endpoint>| -> Result<Vec<Addr>, Error> {
            specs
                .into_iter()
                .map(|e| Addr::resolve(e).map_err(|e| named(flag, e)))
                .collect()
        };
        let resolve_listen = |flag: &str, specs: Vec<ListenAddr>| -> Result<Vec<Addr>, Error> {
            specs
                .into_iter()
                .map(|e| Addr::resolve_listen(e).map_err(|e| named(flag, e)))
                .collect()
        };
        let config = Self {
            group: Addr::resolve(cli.multicast_addr).map_err(|e| named("multicast-addr", e))?,
            udp_inputs: resolve_all("udp-listen-addr", cli.udp_listen_addr)?,
            tcp_inputs: resolve_listen("tcp-listen-addr", cli.tcp_listen_addr)?,
            tcp_outputs: resolve_listen("tcp-output-addr", cli.tcp_output_addr)?,
            udp_outputs: resolve_all("udp-output-addr", cli.udp_output_addr)?,
            udp_output_strip: cli.udp_output_strip,
            framing: cli.framing,
            max_datagram: cli.max_datagram,
            mpx: cli.mpx,
            accept: cli.accept,
            receiver: ReceiverConfig {
                reorder_window: cli.reorder_window,
                reorder_timeout: Duration::from_millis(cli.reorder_timeout),
                max_streams: cli.max_streams,
                ..ReceiverConfig::default()
            },
            client_queue: cli.client_queue,
            slow_client: cli.slow_client,
            max_clients: cli.max_clients,
            max_handshakes: cli.max_handshakes,
            stall_timeout: Duration::from_secs(cli.stall_timeout),
            tls: TlsServerOptions {
                cert: cli.tls_cert,
                key: cli.tls_key,
                client_ca: cli.tls_client_ca,
                handshake_timeout: Duration::from_secs(cli.tls_handshake_timeout),
            },
            tee: cli.tee,
            socket: cli.common.socket_options(),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// True if there is at least one input
    pub fn has_inputs(&self) -> bool {
        !self.udp_inputs.is_empty() || !self.tcp_inputs.is_empty()
    }

    /// True if there is at least one output
    pub fn has_outputs(&self) -> bool {
        !self.tcp_outputs.is_empty() || !self.udp_outputs.is_empty()
    }

    /// True if at least one TCP listener is `tls://`
    pub fn has_tls(&self) -> bool {
        self.tcp_inputs
            .iter()
            .chain(&self.tcp_outputs)
            .any(|a| a.tls)
    }

    /// Check the combination of settings without touching the network
    ///
    /// # Errors
    /// No input or output at all; a group that is not multicast; an
    /// address given twice; a setup that would send the group's traffic
    /// back into the group (a loop); limits out of range; mpx settings
    /// that cannot work (`mpx` without inputs or with a `max_datagram` no
    /// larger than the header, `udp_output_strip` without UDP outputs).
    pub fn validate(&self) -> Result<(), Error> {
        if !self.has_inputs() && !self.has_outputs() {
            bail_config!(
                "nothing to do: give at least one --udp-listen-addr, --tcp-listen-addr, \
                 --tcp-output-addr or --udp-output-addr"
            );
        }
        let group = &self.group;
        if !group.addr.ip().is_multicast() {
            bail_config!(
                "--multicast-addr {group}: not a multicast address \
                 (expected e.g. {DEFAULT_GROUP} or [ff15::77:18]:9918)"
            );
        }
        if group.addr.port() == 0 {
            bail_config!("--multicast-addr {group}: the group needs a port (1-65535)");
        }
        if !(1..=MAX_UDP_PAYLOAD).contains(&self.max_datagram) {
            bail_config!(
                "--max-datagram {}: expected 1 to {MAX_UDP_PAYLOAD}",
                self.max_datagram
            );
        }
        let queue = self.client_queue.bytes(self.max_datagram);
        if !(1..=MAX_CLIENT_QUEUE).contains(&queue) {
            bail_config!(
                "--client-queue {}: {queue} bytes, expected 1 byte to 1GiB",
                self.client_queue
            );
        }
        if self.max_clients == 0 {
            bail_config!("--max-clients must be at least 1");
        }
        if self.max_handshakes == Some(0) {
            bail_config!("--max-handshakes must be at least 1");
        }
        let stall = self.stall_timeout.as_secs();
        if !(1..=86_400).contains(&stall) {
            bail_config!("--stall-timeout {stall} out of range (1 to 86400 s)");
        }
        self.validate_mpx()?;
        self.tls.validate(self.has_tls())?;
        if let Some(a) = self
            .udp_inputs
            .iter()
            .chain(&self.udp_outputs)
            .find(|a| a.tls)
        {
            bail_config!("{a}: TLS only applies to TCP listeners");
        }
        for out in &self.udp_outputs {
            if out.addr.port() == 0 || out.addr.ip().is_unspecified() {
                bail_config!("--udp-output-addr {out}: not a destination address");
            }
            if out.addr == group.addr {
                bail_config!(
                    "--udp-output-addr {out} is the group itself: the group's traffic \
                     would be sent back into the group forever"
                );
            }
            if let Some(input) = self.udp_inputs.iter().find(|i| receives(i.addr, out.addr)) {
                bail_config!(
                    "--udp-output-addr {out} would reach --udp-listen-addr {input}: the \
                     group's traffic would be sent back into the group forever"
                );
            }
        }
        for input in &self.udp_inputs {
            if receives(input.addr, group.addr) {
                bail_config!(
                    "--udp-listen-addr {input} would receive the group's own traffic \
                     (--multicast-addr {group}) and send it back into the group forever; \
                     use another port"
                );
            }
        }
        no_duplicates("--udp-listen-addr", &self.udp_inputs, &[])?;
        no_duplicates(
            "--tcp-listen-addr/--tcp-output-addr",
            &self.tcp_inputs,
            &self.tcp_outputs,
        )?;
        no_duplicates("--udp-output-addr", &self.udp_outputs, &[])?;
        if !self.socket.sources.is_empty() && !self.has_outputs() {
            bail_config!("--source only applies to the outputs' joins of the group, and there are no outputs");
        }
        if !self.socket.multicast_loop && self.has_inputs() && self.has_outputs() {
            tracing::warn!(
                "--loop off: outputs on this host will not receive what this host's inputs send"
            );
        }
        Ok(())
    }

    /// TLS handshakes a `tls://` listener runs at once (`--max-handshakes`,
    /// by default a quarter of `--max-clients`, 8 to 64), never more than
    /// `--max-clients`
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
            .unwrap_or_else(|| default_max_handshakes(self.max_clients))
            .min(self.max_clients)
            .max(1)
    }

    /// The mpx part of [`Config::validate`]
    fn validate_mpx(&self) -> Result<(), Error> {
        if self.mpx && !self.has_inputs() {
            bail_config!(
                "--mpx frames what the inputs send, and there are no inputs \
                 (outputs take mpx frames anyway, see --accept)"
            );
        }
        if self.mpx && self.max_datagram <= HEADER_LEN {
            bail_config!(
                "--max-datagram {}: with --mpx it must be larger than the \
                 {HEADER_LEN}-byte frame header",
                self.max_datagram
            );
        }
        if self.udp_output_strip && self.udp_outputs.is_empty() {
            bail_config!("--udp-output-strip applies to --udp-output-addr, and there is none");
        }
        let r = &self.receiver;
        if !(1..=65536).contains(&r.reorder_window) {
            bail_config!(
                "--reorder-window {} out of range (1 to 65536 frames)",
                r.reorder_window
            );
        }
        let timeout = r.reorder_timeout.as_millis();
        if !(1..=60_000).contains(&timeout) {
            bail_config!("--reorder-timeout {timeout} out of range (1 to 60000 ms)");
        }
        if !(1..=65536).contains(&r.max_streams) {
            bail_config!("--max-streams {} out of range (1 to 65536)", r.max_streams);
        }
        Ok(())
    }
}

/// Would a UDP socket bound to `listen` receive datagrams sent to `dest`?
///
/// Same port and family, and the same address, or a wildcard bind and a
/// destination that is this host or a multicast group (a wildcard socket
/// receives every group some socket of the host has joined).
fn receives(listen: SocketAddr, dest: SocketAddr) -> bool {
    if listen.port() != dest.port() || listen.is_ipv4() != dest.is_ipv4() {
        return false;
    }
    let (l, d) = (listen.ip(), dest.ip());
    l == d || (l.is_unspecified() && (d.is_loopback() || d.is_multicast() || is_local(d)))
}

fn is_local(ip: IpAddr) -> bool {
    mproxy_common::net::interface_index_of(ip).is_some()
}

fn no_duplicates(flag: &str, a: &[Addr], b: &[Addr]) -> Result<(), Error> {
    let all: Vec<&Addr> = a.iter().chain(b).collect();
    for (i, x) in all.iter().enumerate() {
        if x.addr.port() == 0 {
            continue;
        }
        if let Some(y) = all[i + 1..].iter().find(|y| y.addr == x.addr) {
            bail_config!("{flag}: {x} and {y} are the same address");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn config(args: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["mproxy-reverseproxy"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| Error::Config(e.to_string()))?;
        Config::try_from(cli)
    }

    fn err(args: &[&str]) -> String {
        format!("{:#}", config(args).unwrap_err())
    }

    #[test]
    fn test_valid() {
        let c = config(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-listen-addr",
            "127.0.0.1:9001",
            "--tcp-output-addr",
            "[::1]:9100",
            "--udp-output-addr",
            "127.0.0.1:9200",
        ])
        .unwrap();
        assert_eq!(c.group.addr, "239.255.77.18:9918".parse().unwrap());
        assert_eq!(c.udp_inputs[0].addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.tcp_outputs[0].addr, "[::1]:9100".parse().unwrap());
        assert!(c.udp_outputs[0].addr.ip().is_loopback());
        // names are shown with what they resolved to (built by hand: unit
        // tests do no name lookups)
        let named = Addr {
            spec: "localhost:9200".parse().unwrap(),
            addr: "127.0.0.1:9200".parse().unwrap(),
            tls: false,
        };
        assert_eq!(named.to_string(), "localhost:9200 (127.0.0.1:9200)");
        assert!(c.socket.multicast_loop, "loop must default to on");
        assert!(c.has_inputs() && c.has_outputs());
        // an IPv6 group, outputs only
        let c = config(&[
            "--multicast-addr",
            "[ff15::77:18]:9918",
            "--tcp-output-addr",
            "[::1]:9100",
        ])
        .unwrap();
        assert!(c.group.addr.is_ipv6());
    }

    #[test]
    fn test_nothing_to_do() {
        assert!(err(&[]).starts_with("nothing to do"));
    }

    #[test]
    fn test_group_must_be_multicast() {
        let e = err(&[
            "--multicast-addr",
            "127.0.0.1:9",
            "--tcp-output-addr",
            "127.0.0.1:9100",
        ]);
        assert!(
            e.contains("--multicast-addr 127.0.0.1:9: not a multicast address"),
            "{e}"
        );
        let e = err(&[
            "--multicast-addr",
            "239.1.2.3:0",
            "--tcp-output-addr",
            "127.0.0.1:9100",
        ]);
        assert!(e.contains("invalid port (expected 1-65535)"), "{e}");
    }

    #[test]
    fn test_loops_rejected() {
        let e = err(&["--udp-output-addr", "239.255.77.18:9918"]);
        assert!(e.contains("is the group itself"), "{e}");
        let e = err(&["--udp-listen-addr", "239.255.77.18:9918"]);
        assert!(e.contains("would receive the group's own traffic"), "{e}");
        let e = err(&["--udp-listen-addr", "0.0.0.0:9918"]);
        assert!(e.contains("would receive the group's own traffic"), "{e}");
        let e = err(&[
            "--udp-listen-addr",
            "0.0.0.0:9000",
            "--udp-output-addr",
            "127.0.0.1:9000",
        ]);
        assert!(
            e.contains("would reach --udp-listen-addr 0.0.0.0:9000"),
            "{e}"
        );
        let e = err(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--udp-output-addr",
            "127.0.0.1:9000",
        ]);
        assert!(e.contains("would reach"), "{e}");
        // a relay to another host on the same port is fine
        config(&[
            "--udp-listen-addr",
            "0.0.0.0:9000",
            "--udp-output-addr",
            "192.0.2.1:9000",
        ])
        .unwrap();
        // another port on the wildcard is fine, and so is the group port on another family
        config(&["--udp-listen-addr", "0.0.0.0:9919"]).unwrap();
        config(&["--udp-listen-addr", "[::]:9918"]).unwrap();
    }

    #[test]
    fn test_duplicates_rejected() {
        let e = err(&[
            "--tcp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "127.0.0.1:9000",
        ]);
        assert!(e.contains("are the same address"), "{e}");
        let e = err(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--udp-listen-addr",
            "127.0.0.1:9000",
        ]);
        assert!(e.contains("--udp-listen-addr"), "{e}");
        // TCP and UDP may share a port
        config(&[
            "--tcp-listen-addr",
            "127.0.0.1:9000",
            "--udp-listen-addr",
            "127.0.0.1:9000",
        ])
        .unwrap();
    }

    #[test]
    fn test_bad_destinations() {
        let e = err(&["--udp-output-addr", "0.0.0.0:9000"]);
        assert!(e.contains("not a destination"), "{e}");
        let e = err(&["--udp-output-addr", "127.0.0.1:0"]);
        assert!(e.contains("invalid port (expected 1-65535)"), "{e}");
        let e = err(&[
            "--tcp-listen-addr",
            "127.0.0.1:9000",
            "--source",
            "192.0.2.1",
        ]);
        assert!(e.contains("--source"), "{e}");
        let e = err(&[
            "--tcp-output-addr",
            "127.0.0.1:9000",
            "--iface",
            "nosuchif0",
        ]);
        assert!(e.contains("--iface nosuchif0"), "{e}");
    }

    #[test]
    fn test_mpx_settings() {
        let c = config(&[
            "--mpx",
            "--tcp-listen-addr",
            "127.0.0.1:9000",
            "--udp-output-addr",
            "127.0.0.1:9200",
            "--udp-output-strip",
            "--accept",
            "mpx",
            "--reorder-window",
            "64",
            "--reorder-timeout",
            "50",
            "--max-streams",
            "8",
        ])
        .unwrap();
        assert!(c.mpx && c.udp_output_strip);
        assert_eq!(c.accept, Accept::Mpx);
        assert_eq!(c.receiver.reorder_window, 64);
        assert_eq!(c.receiver.reorder_timeout, Duration::from_millis(50));
        assert_eq!(c.receiver.max_streams, 8);

        let out = ["--tcp-output-addr", "127.0.0.1:9100"];
        for (extra, want) in [
            (
                &["--reorder-window", "0"][..],
                "--reorder-window 0 out of range",
            ),
            (&["--reorder-window", "65537"], "--reorder-window 65537"),
            (
                &["--reorder-timeout", "0"],
                "--reorder-timeout 0 out of range",
            ),
            (&["--reorder-timeout", "60001"], "--reorder-timeout 60001"),
            (&["--max-streams", "0"], "--max-streams 0 out of range"),
            (&["--max-streams", "70000"], "--max-streams 70000"),
            (&["--mpx"], "there are no inputs"),
            (&["--udp-output-strip"], "--udp-output-strip"),
        ] {
            let mut args = out.to_vec();
            args.extend_from_slice(extra);
            let e = err(&args);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = err(&[
            "--mpx",
            "--tcp-listen-addr",
            "127.0.0.1:9000",
            "--max-datagram",
            "24",
        ]);
        assert!(e.contains("larger than the 24-byte frame header"), "{e}");
        config(&[
            "--mpx",
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--max-datagram",
            "25",
        ])
        .unwrap();
    }

    #[test]
    fn test_library_defaults() {
        let c = Config {
            tcp_inputs: vec!["127.0.0.1:9000".parse().unwrap()],
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(c.group.to_string(), DEFAULT_GROUP);
        assert_eq!(c.framing, Framing::Bytes);
        assert!(!c.mpx && !c.udp_output_strip);
        assert_eq!(c.accept, Accept::Auto);
        Config::default().validate().unwrap_err();
    }

    #[test]
    fn test_tls_listeners_and_flags() {
        let c = config(&[
            "--tcp-output-addr",
            "tls://127.0.0.1:9100",
            "--tcp-listen-addr",
            "tcp://127.0.0.1:9000",
            "--tcp-listen-addr",
            "tls://[::1]:9001",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--slow-client",
            "disconnect",
        ])
        .unwrap();
        assert!(c.tcp_outputs[0].tls && !c.tcp_inputs[0].tls && c.tcp_inputs[1].tls);
        assert_eq!(c.tcp_outputs[0].to_string(), "tls://127.0.0.1:9100");
        assert_eq!(c.tcp_inputs[0].to_string(), "127.0.0.1:9000");
        assert_eq!(c.slow_client, SlowClient::Disconnect);
        assert!(c.has_tls());
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
        // a tls:// listener needs a certificate and key
        let e = err(&["--tcp-output-addr", "tls://127.0.0.1:9100"]);
        assert!(e.contains("needs --tls-cert and --tls-key"), "{e}");
        // TLS flags need a tls:// listener
        let e = err(&[
            "--tcp-output-addr",
            "127.0.0.1:9100",
            "--tls-client-ca",
            "ca.pem",
        ]);
        assert!(
            e.starts_with("--tls-client-ca only applies to TLS listeners"),
            "{e}"
        );
        // the same port twice, once plain and once TLS
        let e = err(&[
            "--tcp-output-addr",
            "127.0.0.1:9100",
            "--tcp-output-addr",
            "tls://127.0.0.1:9100",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        assert!(e.contains("are the same address"), "{e}");
        // library users write the scheme too
        let a: Addr = "tls://127.0.0.1:1".parse().unwrap();
        assert!(a.tls);
        assert!("ssl://127.0.0.1:1".parse::<Addr>().is_err());
        assert_eq!(
            config(&["--tcp-output-addr", "127.0.0.1:9100"])
                .unwrap()
                .slow_client,
            SlowClient::Drop
        );
    }
}
