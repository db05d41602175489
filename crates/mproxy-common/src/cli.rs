//! What every binary shares on the command line: socket flags, logging,
//! config files, one-line errors with exit code 2, and signal handling
//!
//! Logs and status go to stderr only; stdout is reserved for data (`--tee`).
//!
//! [`parse_args`] is the one way the binaries read their command line:
//!
//! - `--config FILE` adds the flags of a TOML file (see
//!   [`crate::config_file`]); flags on the command line override it;
//! - `--print-config` prints the effective configuration as TOML and
//!   exits 0;
//! - `--generate man|bash|zsh|fish|elvish|powershell` (hidden, for
//!   packaging) prints a man page or a completion script made from the
//!   same clap definitions and exits 0;
//! - `--help` lays out every binary the same way (descriptions on the line
//!   under each flag);
//! - a usage error prints one line (clap's "a similar argument exists"
//!   hint included) and exits 2.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Command, Id};

use crate::addr::Interface;
use crate::config_file::{self, ConfigFile, FileArgs};
use crate::logging::LogFormat;
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

    /// Log line format: 'text' (one line per event) or 'json' (one JSON
    /// object per line: timestamp, level, message and the event's fields)
    #[arg(long, value_name = "text|json", default_value = "text")]
    pub log_format: LogFormat,

    /// Append logs to this file instead of stderr (a start-up error that
    /// exits 2 is still one line on stderr)
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Read flags from a TOML file whose keys are the long flags without
    /// '--' (server-addr = ["127.0.0.1:9000"], rate = "2MB", tee = true);
    /// flags on the command line override the file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (command line, --config file and
    /// defaults) as TOML and exit
    #[arg(long)]
    pub print_config: bool,

    /// Print a man page or a shell completion script and exit (packaging:
    /// scripts/gen-docs.sh)
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<Generate>,
}

/// What `--generate` prints
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A man page (roff), section 1
    Man,
    /// bash completions
    Bash,
    /// zsh completions
    Zsh,
    /// fish completions
    Fish,
    /// elvish completions
    Elvish,
    /// PowerShell completions
    Powershell,
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

    /// The default log filter the flags ask for (`info`, `debug`, ...)
    pub fn log_level(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (v, _) if v >= 2 => "trace",
            (_, 1) => "warn",
            _ => "error",
        }
    }

    /// Install the log subscriber the flags ask for (level, `--log-format`,
    /// `--log-file`)
    ///
    /// # Errors
    /// The log file cannot be opened.
    pub fn try_init_tracing(&self) -> Result<(), crate::logging::LogError> {
        crate::logging::init(self.log_level(), self.log_format, self.log_file.as_deref())
    }

    /// Install the log subscriber the flags ask for; if the `--log-file`
    /// cannot be opened, print one line and exit 2 (this runs right after
    /// [`parse_args`], as part of reading the command line)
    pub fn init_tracing(&self) {
        if let Err(e) = self.try_init_tracing() {
            eprintln!("{}: error: {e}", program_name());
            std::process::exit(i32::from(EXIT_USAGE));
        }
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

/// What a command line asks for
#[derive(Debug)]
pub enum Parsed<T> {
    /// Run with these arguments
    Run(T),
    /// Print this on stdout and exit 0 (`--help`, `--version`,
    /// `--print-config`, `--generate`)
    Print(String),
}

/// A usage error: one line, without the program name
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

impl From<config_file::ConfigError> for ArgsError {
    fn from(e: config_file::ConfigError) -> Self {
        Self(e.0)
    }
}

/// The clap command of `T` as the binaries use it: help laid out the same
/// way for every binary (each description on the lines under its flag)
pub fn command<T: clap::CommandFactory>() -> Command {
    T::command().next_line_help(true)
}

/// Parse the command line; on a usage error print one line and exit 2
///
/// `--help`, `--version`, `--print-config` and `--generate` print on
/// stdout and exit 0. See [`try_parse_from`] for `--config`.
pub fn parse_args<T: clap::Parser>() -> T {
    match try_parse_from::<T, _, _>(std::env::args_os()) {
        Ok(Parsed::Run(t)) => t,
        Ok(Parsed::Print(text)) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{}: error: {e} (try --help)", program_name());
            std::process::exit(i32::from(EXIT_USAGE));
        }
    }
}

/// Parse `args` (the program name first) as [`parse_args`] does, without
/// printing or exiting
///
/// With `--config FILE` the file's keys (long flags without `--`) are
/// turned into arguments placed before `args`, except those whose flag, or
/// a flag conflicting with it, is given in `args`: the command line wins.
/// Every value goes through the same clap parsers either way.
///
/// # Errors
/// A usage error, as one line: clap's message (with its suggestion), or a
/// config file problem naming the file, the line and the key.
pub fn try_parse_from<T, I, S>(args: I) -> Result<Parsed<T>, ArgsError>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command::<T>();
    let mut relaxed = config_file::relaxed(&cmd);
    cmd.build();
    relaxed.build();
    // first the command line alone, nothing required (it may all be in the file)
    let first = match relaxed.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) if is_display(&e) => {
            // render help and version with the real command (its usage line)
            return Ok(Parsed::Print(
                match cmd.clone().try_get_matches_from(&args) {
                    Err(full) if is_display(&full) => full.render().to_string(),
                    _ => e.render().to_string(),
                },
            ));
        }
        Err(e) => return Err(ArgsError(clap_one_line(&e))),
    };
    if let Ok(Some(what)) = first.try_get_one::<Generate>("generate") {
        return generate(cmd, *what).map(Parsed::Print);
    }
    let config: Option<PathBuf> = first
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned();
    let file = match &config {
        Some(path) => {
            let given: HashSet<Id> = first
                .ids()
                .filter(|id| first.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .cloned()
                .collect();
            ConfigFile::read(path)?.to_args(&relaxed, &given)?
        }
        None => FileArgs::default(),
    };
    let mut all = Vec::with_capacity(args.len() + file.args.len());
    all.extend(args.first().cloned());
    all.extend(file.args.iter().cloned());
    all.extend(args.iter().skip(1).cloned());
    let mut matches = cmd.clone().try_get_matches_from(&all).map_err(|e| {
        let msg = clap_one_line(&e);
        ArgsError(match &config {
            Some(path) => format!("{msg} (with --config {})", path.display()),
            None => msg,
        })
    })?;
    if matches.try_get_one::<bool>("print_config").ok().flatten() == Some(&true) {
        return Ok(Parsed::Print(config_file::render(
            &cmd,
            &matches,
            &file.ids,
            config.as_deref(),
        )));
    }
    T::from_arg_matches_mut(&mut matches)
        .map(Parsed::Run)
        .map_err(|e| ArgsError(clap_one_line(&e)))
}

fn is_display(e: &clap::Error) -> bool {
    use clap::error::ErrorKind;
    matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
}

/// A man page or a completion script for `cmd`
fn generate(mut cmd: Command, what: Generate) -> Result<String, ArgsError> {
    use clap_complete::Shell;
    let mut buf = Vec::new();
    let shell = match what {
        Generate::Man => {
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .map_err(|e| ArgsError(format!("--generate man: {e}")))?;
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        Generate::Bash => Shell::Bash,
        Generate::Zsh => Shell::Zsh,
        Generate::Fish => Shell::Fish,
        Generate::Elvish => Shell::Elvish,
        Generate::Powershell => Shell::PowerShell,
    };
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// clap's error message as one line: the message and its tips (such as
/// "a similar argument exists"), without the usage block
pub(crate) fn clap_one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut msg = String::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if !msg.is_empty() {
            // a list under "...:" continues the sentence; a tip is a new one
            msg.push_str(if msg.ends_with(':') { " " } else { "; " });
        }
        msg.push_str(line);
    }
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    if msg.is_empty() {
        "invalid arguments".into()
    } else {
        msg.to_string()
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
    #![allow(clippy::panic)]
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

    /// A binary's command line in miniature
    #[derive(clap::Parser, Debug)]
    #[command(name = "mproxy-test", version)]
    struct Cli {
        #[arg(long = "server-addr", required = true)]
        server_addr: Vec<String>,
        #[arg(long)]
        rate: Option<crate::rate::Rate>,
        #[command(flatten)]
        common: CommonArgs,
    }

    fn parse(args: &[&str]) -> Result<Parsed<Cli>, ArgsError> {
        try_parse_from::<Cli, _, _>(std::iter::once("mproxy-test").chain(args.iter().copied()))
    }

    fn run(args: &[&str]) -> Cli {
        match parse(args) {
            Ok(Parsed::Run(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn print(args: &[&str]) -> String {
        match parse(args) {
            Ok(Parsed::Print(t)) => t,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn test_errors_are_one_line_with_the_suggestion() {
        let e = parse(&["--server-adr", "x:1"]).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("'--server-adr'"), "{e}");
        assert!(
            e.contains("a similar argument exists: '--server-addr'"),
            "{e}"
        );
        let e = parse(&[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "the following required arguments were not provided: --server-addr <SERVER_ADDR>"
        );
        let e = parse(&["--server-addr", "x:1", "--rate", "fast"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid value 'fast' for '--rate <RATE>'"),
            "{e}"
        );
    }

    #[test]
    fn test_help_version_generate_print() {
        assert!(print(&["--help"]).contains("--server-addr <SERVER_ADDR>"));
        // the usage line of the real command, not of the relaxed one
        assert!(print(&["-h"]).contains("Usage: mproxy-test [OPTIONS] --server-addr"));
        assert!(print(&["--version"]).starts_with("mproxy-test "));
        let man = print(&["--generate", "man"]);
        assert!(man.contains(".TH mproxy-test 1"), "{man}");
        assert!(man.contains("server\\-addr"), "{man}");
        assert!(!man.contains("generate"), "hidden flag in the man page");
        let bash = print(&["--generate", "bash"]);
        assert!(bash.contains("--server-addr"), "{bash}");
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            assert!(
                print(&["--generate", shell]).contains("server-addr"),
                "{shell}"
            );
        }
        let toml = print(&["--server-addr", "x:1", "--print-config", "-q"]);
        assert!(
            toml.contains("server-addr = [\"x:1\"]  # command line\n"),
            "{toml}"
        );
        assert!(toml.contains("quiet = 1  # command line\n"), "{toml}");
        assert!(toml.contains("# rate is not set\n"), "{toml}");
    }

    #[test]
    fn test_config_file_and_overrides() {
        let dir = std::env::temp_dir().join(format!("mproxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "server-addr = [\"a:1\", \"b:2\"]\nrate = \"2MBps\"\nttl = 4\nverbose = 1\nlog-format = \"json\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = run(&["--config", f]);
        assert_eq!(c.server_addr, ["a:1", "b:2"]);
        assert_eq!(
            c.rate.map(crate::rate::Rate::bytes_per_sec),
            Some(2_000_000)
        );
        assert_eq!((c.common.ttl, c.common.verbose), (4, 1));
        assert_eq!(c.common.log_format, LogFormat::Json);
        // the command line wins, also over a conflicting key (-q vs verbose)
        let c = run(&["--server-addr", "c:3", "--config", f, "--ttl", "9", "-q"]);
        assert_eq!(c.server_addr, ["c:3"]);
        assert_eq!((c.common.ttl, c.common.verbose, c.common.quiet), (9, 0, 1));
        // what --print-config prints gives the same configuration back
        let printed = print(&["--config", f, "--print-config"]);
        assert!(
            printed.contains(&format!("ttl = 4  # from {f}\n")),
            "{printed}"
        );
        let again = dir.join("again.toml");
        std::fs::write(&again, &printed).unwrap();
        let mut c1 = run(&["--config", f]);
        let mut c2 = run(&["--config", again.to_str().unwrap()]);
        c1.common.config = None;
        c2.common.config = None;
        assert_eq!(format!("{c1:?}"), format!("{c2:?}"));
        // bad files: one line naming the file, the line and the key
        std::fs::write(&file, "ttl = 1\nrate = \"fast\"\n").unwrap();
        let e = parse(&["--config", f, "--server-addr", "x:1"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "--config {f} line 2: key 'rate': invalid value 'fast'"
            )),
            "{e}"
        );
        std::fs::write(&file, "config = \"other.toml\"\n").unwrap();
        let e = parse(&["--config", f]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key 'config' cannot be set in a config file"),
            "{e}"
        );
        let e = parse(&["--config", "/nonexistent.toml"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--config /nonexistent.toml: cannot read"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_on_off() {
        assert_eq!(parse_on_off("ON"), Ok(true));
        assert_eq!(parse_on_off("0"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }
}
