//! What every binary shares on the command line: socket flags, logging,
//! one-line errors with exit code 2, and signal handling
//!
//! Logs and status go to stderr only; stdout is reserved for data (`--tee`).

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::process::ExitCode;

use crate::addr::Interface;
use crate::net::SocketOptions;

/// Exit code for bad input: flags, addresses, files, ports in use
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a fault after start-up that could not be survived
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a sender whose delivery was not confirmed: a receiver it
/// heard from did not confirm the end (`--confirm`), or nothing could be
/// sent at all
pub const EXIT_UNCONFIRMED: u8 = 3;

/// A flag common to all binaries names something this host does not have
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// `--iface` names no interface of this host
    #[error("--iface {iface}: {reason}")]
    Interface {
        /// The interface as given
        iface: String,
        /// Why it was not found
        reason: crate::addr::AddrError,
    },
}

/// Socket and logging flags common to all four binaries
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Interface for multicast joins and sends: name (eth0), index (3) or
    /// address (192.0.2.7); default: chosen by the routing table
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<Interface>,

    /// Multicast TTL / IPv6 hop limit (1 keeps multicast on the local link)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=255))]
    pub ttl: u32,

    /// Deliver our own multicast sends to receivers on this host
    #[arg(long = "loop", value_name = "on|off", default_value = "on",
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub multicast_loop: bool,

    /// Source address for source-specific multicast (SSM) joins; repeatable
    #[arg(long = "source", value_name = "ADDR")]
    pub sources: Vec<IpAddr>,

    /// Receive buffer to request per socket (e.g. 8MiB); a warning is
    /// logged when the kernel grants less [default: 8MiB, silently clamped]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub rcvbuf: Option<usize>,

    /// Send buffer to request per socket (e.g. 4MiB) [default: kernel's]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub sndbuf: Option<usize>,

    /// UDP segmentation offload: runs of equal-sized datagrams leave in one
    /// GSO system call and receivers take coalesced batches (GRO), where
    /// the kernel and route support it (Linux 4.18/5.0+); off: one
    /// datagram per kernel send, as before
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub offload: bool,

    /// mpx: authenticate (and encrypt) every frame with the 256-bit key in
    /// FILE (hex or base64, '#' comments; mode 0600: see --keygen).
    /// Repeatable for a key roll-over: the first seals, any opens. With a
    /// key, nothing unauthenticated is accepted
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_files: Vec<std::path::PathBuf>,

    /// mpx with --key-file: on encrypts the payload, off authenticates it
    /// only (payload readable on the wire); both refuse forged frames
    #[arg(long, value_name = "on|off", default_value = "on",
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub encrypt: bool,

    /// mpx with --key-file: the AEAD (aes-256-gcm is fastest where the
    /// CPU has AES instructions)
    #[arg(
        long,
        value_name = "aes-256-gcm|chacha20-poly1305",
        default_value = "aes-256-gcm"
    )]
    pub cipher: crate::mpx::auth::Aead,

    /// Write a fresh random key to FILE (created with mode 0600, never
    /// overwritten) and exit; give the file to every member with --key-file
    #[arg(long, value_name = "FILE")]
    pub keygen: Option<std::path::PathBuf>,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl CommonArgs {
    /// The socket options these flags describe
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            iface: self.iface.clone().unwrap_or_default(),
            ttl: self.ttl,
            multicast_loop: self.multicast_loop,
            sources: self.sources.clone(),
            rcvbuf: self.rcvbuf,
            sndbuf: self.sndbuf,
            offload: self.offload,
        }
    }

    /// The keys of `--key-file` and the suite of `--encrypt`/`--cipher`
    /// (`None`: no key given)
    ///
    /// # Errors
    /// A key file that is missing, malformed, of the wrong length or
    /// readable by others: one line naming the file and the fix.
    pub fn keys(
        &self,
    ) -> Result<
        Option<(crate::mpx::auth::Keyring, crate::mpx::auth::Suite)>,
        crate::mpx::auth::KeyFileError,
    > {
        let ring = crate::mpx::auth::Keyring::load_files(&self.key_files)?;
        Ok(ring.map(|r| {
            (
                r,
                crate::mpx::auth::Suite {
                    aead: self.cipher,
                    encrypt: self.encrypt,
                },
            )
        }))
    }

    /// With `--keygen FILE`: write the key, report, and return the exit
    /// code the binary should exit with (`None`: no `--keygen`, carry on)
    pub fn run_keygen(&self) -> Option<ExitCode> {
        let path = self.keygen.as_ref()?;
        Some(match crate::mpx::auth::generate_key_file(path) {
            Ok(id) => {
                eprintln!(
                    "{}: wrote a new key (id {id}) to {} (mode 0600); give it to every member with --key-file",
                    program_name(),
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => exit_with(EXIT_USAGE, &e),
        })
    }

    /// Check the flags that name things on this host (the interface)
    ///
    /// # Errors
    /// [`CliError::Interface`]: an interface that does not exist.
    pub fn validate(&self) -> Result<(), CliError> {
        if let Some(iface) = &self.iface {
            iface.index().map_err(|reason| CliError::Interface {
                iface: iface.to_string(),
                reason,
            })?;
        }
        Ok(())
    }

    /// Install the stderr log subscriber at the level the flags ask for
    pub fn init_tracing(&self) {
        let level = match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (v, _) if v >= 2 => "trace",
            (_, 1) => "warn",
            _ => "error",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init();
    }
}

/// Parse `on|off|true|false|1|0|yes|no`
///
/// # Errors
/// Anything else, with the accepted words.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got '{s}'")),
    }
}

/// Parse a byte size: `65536`, `64k`, `8M`, `8MiB`, `1G` (k/M/G are powers of 1024 here)
///
/// # Errors
/// Anything that is not a positive size below 4 GiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || format!("invalid size '{s}' (examples: 65536, 64KiB, 8MiB)");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    num.checked_mul(mult)
        .filter(|n| *n > 0 && *n < (4u64 << 30))
        .map(|n| n as usize)
        .ok_or_else(bad)
}

/// Like [`parse_size`], but `0` is allowed (meaning "off")
///
/// # Errors
/// Anything that is not a size below 4 GiB.
pub fn parse_size_or_zero(s: &str) -> Result<usize, String> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_size(s)
    }
}

/// Parse a datagram payload limit: 1 to 65507 bytes (the IPv4 UDP maximum)
///
/// # Errors
/// Anything outside that range.
pub fn parse_max_datagram(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=crate::net::MAX_UDP_PAYLOAD).contains(n))
        .ok_or_else(|| {
            format!(
                "invalid datagram size '{s}' (expected 1 to {})",
                crate::net::MAX_UDP_PAYLOAD
            )
        })
}

/// Parse the command line; on a usage error print one line and exit 2
///
/// `--help` and `--version` print as usual and exit 0.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // clap's message, up to the usage block, as one line
            let rendered = e.render().to_string();
            let mut parts = Vec::new();
            for line in rendered.lines().map(str::trim) {
                if line.starts_with("Usage:") || line.starts_with("For more information") {
                    break;
                }
                if !line.is_empty() && !line.starts_with("tip:") {
                    parts.push(line);
                }
            }
            let msg = parts.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            let msg = if msg.is_empty() {
                "invalid arguments"
            } else {
                msg
            };
            eprintln!("{}: error: {msg} (try --help)", program_name());
            std::process::exit(i32::from(EXIT_USAGE));
        }
    }
}

/// Print `err` as one line (its whole context chain) and return exit code 2
pub fn usage_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("{}: error: {}", program_name(), one_line(err));
    ExitCode::from(EXIT_USAGE)
}

/// Print `err` as one line and return exit code 1
pub fn runtime_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("{}: fatal: {}", program_name(), one_line(err));
    ExitCode::from(EXIT_FAILURE)
}

/// Print a typed error as one line (with its sources) and return `code`:
/// [`EXIT_USAGE`] for bad input, [`EXIT_FAILURE`] for a runtime fault, or
/// a binary's own code
pub fn exit_with(code: u8, err: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !line.contains(&s) {
            line.push_str(": ");
            line.push_str(&s);
        }
        source = e.source();
    }
    let kind = if code == EXIT_USAGE { "error" } else { "fatal" };
    eprintln!("{}: {kind}: {}", program_name(), line.replace('\n', " "));
    ExitCode::from(code)
}

fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|p| {
            std::path::Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "mproxy".into())
}

pub use crate::signal::{ReopenSignal, Shutdown, StatsSignal};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5G").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn test_on_off() {
        assert_eq!(parse_on_off("ON"), Ok(true));
        assert_eq!(parse_on_off("0"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }
}
