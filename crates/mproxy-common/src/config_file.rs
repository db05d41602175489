//! `--config FILE`: TOML files whose keys are the long flags
//!
//! A config file holds the same settings as the command line, under the
//! same names: each top-level key is a long flag without its `--` (or one
//! of its aliases), each value what the flag would take:
//!
//! ```toml
//! # mproxy-client
//! path = "/var/spool/feeds/ais.nmea"
//! server-addr = ["127.0.0.1:9000", "[::1]:9001"]   # a repeatable flag: an array (or one value)
//! rate = "2MB"
//! tee = true                                       # a switch: true or false
//! verbose = 1                                      # -v counts: a number
//! ```
//!
//! The file is turned into arguments that clap parses like any others, so
//! a value is checked by exactly the same code as on the command line.
//! Flags given on the command line win: a key whose flag (or a flag it
//! conflicts with) is on the command line is left out. An unknown key, a
//! value of the wrong type or one the flag refuses is reported on one line
//! naming the file, the line and the key.
//!
//! [`render`] prints the effective configuration (`--print-config`) in the
//! same format, with where each value came from; fed back with `--config`
//! it gives the same configuration.
//!
//! Bounds: the file is read whole and must be at most [`MAX_CONFIG_BYTES`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::builder::ArgAction;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, Id};
use toml::de::{DeTable, DeValue};

/// Largest config file read (a config is a few hundred bytes; this only
/// stops a mistaken `--config /dev/zero`)
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Flags that steer the command line itself and cannot be set in a file
const META: [&str; 5] = ["config", "print-config", "generate", "help", "version"];

/// A config file that cannot be used; one line naming the file, the line
/// and the key
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

/// One `key = value` of the file
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    line: usize,
    value: Value,
}

/// The values a flag can take from TOML
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// Strings, numbers (in decimal) and booleans, as the flag's text
    Scalar(String),
    /// `true` / `false`
    Bool(bool),
    /// An integer (for counts such as `verbose`)
    Int(i64),
    /// A list of scalars (repeatable flags)
    Array(Vec<String>),
}

/// A parsed config file: its keys in file order
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// The arguments a config file adds to a command line
#[derive(Debug, Clone, Default)]
pub struct FileArgs {
    /// `--flag=value` arguments, to go before the command line's own
    pub args: Vec<OsString>,
    /// The flags these arguments set
    pub ids: HashSet<Id>,
}

impl ConfigFile {
    /// Read and parse `path` (TOML)
    ///
    /// # Errors
    /// An unreadable or oversized file, a TOML syntax error (with its
    /// line), a table, a date or a nested array.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError(format!("--config {p}: cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError(format!(
                "--config {p}: {} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("--config {p}: cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parse `text` as the content of `path`
    ///
    /// # Errors
    /// As [`ConfigFile::read`], for the text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let p = path.display();
        let table = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            let msg = e.message().trim().replace('\n', " ");
            ConfigError(format!("--config {p} line {line}: not valid TOML: {msg}"))
        })?;
        let mut entries = Vec::new();
        for (key, value) in table.get_ref() {
            let line = line_of(text, key.span().start);
            let name = key.get_ref().to_string();
            let bad =
                |what: &str| ConfigError(format!("--config {p} line {line}: key '{name}': {what}"));
            let value = match value.get_ref() {
                DeValue::Array(items) => {
                    let mut v = Vec::new();
                    for item in items {
                        match scalar(item.get_ref()) {
                            Some(Value::Scalar(s)) => v.push(s),
                            Some(Value::Bool(b)) => v.push(b.to_string()),
                            Some(Value::Int(i)) => v.push(i.to_string()),
                            _ => return Err(bad("an array may only hold strings, numbers and booleans")),
                        }
                    }
                    Value::Array(v)
                }
                DeValue::Table(_) => {
                    return Err(bad(
                        "tables are not supported: keys are the long flags without '--', at the top level",
                    ))
                }
                other => scalar(other).ok_or_else(|| bad("dates are not supported: write the value as a string"))?,
            };
            entries.push(Entry {
                key: name,
                line,
                value,
            });
        }
        entries.sort_by_key(|e| e.line);
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file's path
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turn the file into arguments for `cmd`, leaving out every flag in
    /// `given` (set on the command line) and every flag that conflicts
    /// with one of them
    ///
    /// Each key is checked on its own by parsing it with `cmd` (which
    /// should have no required arguments, see [`relaxed`]), so a bad
    /// value is reported with its line.
    ///
    /// # Errors
    /// An unknown key, a flag that cannot be set from a file, a value of
    /// the wrong type or one the flag refuses.
    pub fn to_args(&self, cmd: &Command, given: &HashSet<Id>) -> Result<FileArgs, ConfigError> {
        let mut out = FileArgs::default();
        let given_args: Vec<&Arg> = cmd
            .get_arguments()
            .filter(|a| given.contains(a.get_id()))
            .collect();
        for entry in &self.entries {
            let here = format!("--config {} line {}", self.path.display(), entry.line);
            let arg = find_arg(cmd, &entry.key).ok_or_else(|| {
                let hint = similar_key(cmd, &entry.key)
                    .map(|k| format!(" (a similar key exists: '{k}')"))
                    .unwrap_or_else(|| " (keys are the long flags without '--', e.g. path)".into());
                ConfigError(format!("{here}: unknown key '{}'{hint}", entry.key))
            })?;
            let long = arg.get_long().unwrap_or_default();
            if META.contains(&long) {
                return Err(ConfigError(format!(
                    "{here}: key '{}' cannot be set in a config file",
                    entry.key
                )));
            }
            if given.contains(arg.get_id())
                || given_args
                    .iter()
                    .any(|g| conflict(cmd, arg, g) || conflict(cmd, g, arg))
            {
                continue;
            }
            let args = entry_args(arg, long, &entry.value)
                .map_err(|what| ConfigError(format!("{here}: key '{}': {what}", entry.key)))?;
            let probe = std::iter::once(OsString::from(cmd.get_name())).chain(args.iter().cloned());
            if let Err(e) = cmd.clone().try_get_matches_from(probe) {
                let msg = crate::cli::clap_one_line(&e);
                return Err(ConfigError(format!("{here}: key '{}': {msg}", entry.key)));
            }
            out.ids.insert(arg.get_id().clone());
            out.args.extend(args);
        }
        Ok(out)
    }
}

/// `cmd` with no argument required, to parse parts of a command line
/// (the command line without its file, one key of the file)
pub fn relaxed(cmd: &Command) -> Command {
    cmd.clone().mut_args(|a| a.required(false))
}

/// The effective configuration of `matches` as TOML: every flag of `cmd`
/// (but the meta flags) with its value and, in a comment, where it came
/// from (`default`, `command line`, the config file); flags without a
/// value are listed as comments
pub fn render(
    cmd: &Command,
    matches: &ArgMatches,
    from_file: &HashSet<Id>,
    file: Option<&Path>,
) -> String {
    let mut out = format!(
        "# {} {}: effective configuration (command line, config file, defaults), usable with --config\n",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || META.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            None => {
                let _ = writeln!(out, "# {long} is not set");
                continue;
            }
            Some(ValueSource::CommandLine) if from_file.contains(arg.get_id()) => match file {
                Some(f) => format!("from {}", f.display()),
                None => "from the config file".into(),
            },
            Some(ValueSource::CommandLine) => "command line".into(),
            Some(ValueSource::EnvVariable) => "environment".into(),
            Some(_) => "default".into(),
        };
        let value = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => matches
                .try_get_one::<bool>(id)
                .ok()
                .flatten()
                .map(ToString::to_string),
            ArgAction::Count => matches
                .try_get_one::<u8>(id)
                .ok()
                .flatten()
                .map(ToString::to_string),
            action => matches.try_get_raw(id).ok().flatten().map(|raw| {
                let items: Vec<String> = raw.map(|v| toml_scalar(&v.to_string_lossy())).collect();
                if matches!(action, ArgAction::Append) || items.len() != 1 {
                    format!("[{}]", items.join(", "))
                } else {
                    items.concat()
                }
            }),
        };
        match value {
            Some(v) => {
                let _ = writeln!(out, "{long} = {v}  # {source}");
            }
            None => {
                let _ = writeln!(out, "# {long} is not set");
            }
        }
    }
    out
}

/// The arguments for one key
fn entry_args(arg: &Arg, long: &str, value: &Value) -> Result<Vec<OsString>, String> {
    let flag = || OsString::from(format!("--{long}"));
    let with = |v: &str| OsString::from(format!("--{long}={v}"));
    match (arg.get_action(), value) {
        (ArgAction::SetTrue | ArgAction::SetFalse, Value::Bool(b)) => {
            Ok(if *b { vec![flag()] } else { Vec::new() })
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, _) => Err("expected true or false".into()),
        (ArgAction::Count, Value::Int(n)) if (0..=255).contains(n) => {
            Ok((0..*n).map(|_| flag()).collect())
        }
        (ArgAction::Count, Value::Bool(b)) => Ok(if *b { vec![flag()] } else { Vec::new() }),
        (ArgAction::Count, _) => Err("expected a count from 0 to 255".into()),
        (ArgAction::Append, Value::Array(items)) => Ok(items.iter().map(|v| with(v)).collect()),
        (_, Value::Array(_)) => Err(format!("--{long} takes one value, not an array")),
        (_, Value::Scalar(s)) => Ok(vec![with(s)]),
        (_, Value::Bool(b)) => Ok(vec![with(&b.to_string())]),
        (_, Value::Int(i)) => Ok(vec![with(&i.to_string())]),
    }
}

/// A TOML scalar as a flag value
fn scalar(v: &DeValue<'_>) -> Option<Value> {
    match v {
        DeValue::String(s) => Some(Value::Scalar(s.to_string())),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(Value::Int),
        DeValue::Float(f) => Some(Value::Scalar(f.as_str().to_string())),
        DeValue::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

/// The argument a key names: its long flag or an alias (`_` may stand for `-`)
fn find_arg<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    let key = key.replace('_', "-");
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(key.as_str())
            || a.get_all_aliases()
                .is_some_and(|v| v.contains(&key.as_str()))
    })
}

/// Whether `a` declares a conflict with `b`
fn conflict(cmd: &Command, a: &Arg, b: &Arg) -> bool {
    cmd.get_arg_conflicts_with(a)
        .iter()
        .any(|c| c.get_id() == b.get_id())
}

/// The visible long flag closest to `key` (at most 2 edits away)
fn similar_key<'c>(cmd: &'c Command, key: &str) -> Option<&'c str> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(Arg::get_long)
        .filter(|l| !META.contains(l))
        .map(|l| (edit_distance(l, key), l))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, l)| l)
}

/// Levenshtein distance (keys are short: O(n*m) is nothing)
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// 1-based line of byte offset `at`
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A flag's text as a TOML value: a plain decimal integer stays a number,
/// everything else is a string
fn toml_scalar(s: &str) -> String {
    let plain_int = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
        && s.parse::<i64>().is_ok();
    if plain_int {
        s.to_string()
    } else {
        toml_string(s)
    }
}

/// A TOML basic string
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    #[command(name = "t")]
    struct T {
        #[arg(long, required = true)]
        addr: Vec<String>,
        #[arg(long, visible_alias = "speed")]
        rate: Option<crate::rate::Rate>,
        #[arg(long, conflicts_with = "rate")]
        unpaced: bool,
        #[arg(short, long, action = ArgAction::Count)]
        verbose: u8,
        #[arg(long, default_value_t = 1)]
        ttl: u32,
    }

    fn cmd() -> Command {
        let mut c = relaxed(&<T as clap::CommandFactory>::command());
        c.build();
        c
    }

    fn args(text: &str, given: &[&'static str]) -> Result<Vec<String>, ConfigError> {
        let f = ConfigFile::parse(Path::new("t.toml"), text)?;
        let given = given.iter().map(|g| Id::from(*g)).collect();
        Ok(f.to_args(&cmd(), &given)?
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn test_keys_become_flags() {
        let a = args(
            "addr = [\"a:1\", \"b:2\"]\nspeed = \"2MB\"\nverbose = 2\nttl = 0x10\nunpaced = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "--addr=a:1",
                "--addr=b:2",
                "--rate=2MB",
                "--verbose",
                "--verbose",
                "--ttl=16"
            ]
        );
        // one value for a repeatable flag
        assert_eq!(args("addr = \"a:1\"\n", &[]).unwrap(), ["--addr=a:1"]);
    }

    #[test]
    fn test_command_line_wins() {
        // the flag itself, and a flag that conflicts with the key
        assert_eq!(
            args("rate = \"1MB\"\nttl = 3\n", &["rate"]).unwrap(),
            ["--ttl=3"]
        );
        assert!(args("rate = \"1MB\"\n", &["unpaced"]).unwrap().is_empty());
    }

    #[test]
    fn test_errors_name_file_line_and_key() {
        let e = args("ttl = 1\n\naddres = [\"a:1\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--config t.toml line 3: unknown key 'addres' (a similar key exists: 'addr')"
        );
        let e = args("# rate\nrate = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--config t.toml line 2: key 'rate': invalid value 'fast' for '--rate"),
            "{e}"
        );
        let e = args("ttl = [1, 2]\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key 'ttl': --ttl takes one value"),
            "{e}"
        );
        let e = args("unpaced = \"yes\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("key 'unpaced': expected true or false"), "{e}");
        let e = args("[section]\nttl = 1\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("line 1: key 'section': tables are not supported"),
            "{e}"
        );
        let e = args("ttl = 1\nttl = 2\n", &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("--config t.toml line 2: not valid TOML"),
            "{e}"
        );
        let e = args("config = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key 'config'"), "{e}");
        let e = args("when = 1979-05-27\n", &[]).unwrap_err().to_string();
        assert!(e.contains("key 'when': dates are not supported"), "{e}");
        for e in [
            ConfigFile::read(Path::new("/nonexistent/x.toml")).unwrap_err(),
            ConfigFile::parse(Path::new("x.toml"), "ttl = \"unterminated\n").unwrap_err(),
        ] {
            assert!(e.to_string().starts_with("--config "), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn test_render_round_trips() {
        let c = cmd();
        let m = c
            .clone()
            .try_get_matches_from(["t", "--addr", "x:1", "--rate", "2MB", "-vv"])
            .unwrap();
        let text = render(&c, &m, &HashSet::new(), None);
        assert!(
            text.contains("addr = [\"x:1\"]  # command line\n"),
            "{text}"
        );
        assert!(text.contains("ttl = 1  # default\n"), "{text}");
        assert!(text.contains("unpaced = false  # default\n"), "{text}");
        assert!(text.contains("verbose = 2  # command line\n"), "{text}");
        let again = args(&text, &[]).unwrap();
        assert_eq!(
            again,
            [
                "--addr=x:1",
                "--rate=2MB",
                "--verbose",
                "--verbose",
                "--ttl=1"
            ]
        );
    }

    #[test]
    fn test_toml_string_escapes() {
        for s in [
            "plain",
            "a \"quoted\" \\ path",
            "tab\tnew\nline",
            "\u{1}",
            "{session}-%Y",
        ] {
            let doc = format!("k = {}\n", toml_string(s));
            let t = DeTable::parse(&doc).unwrap();
            let v = t.get_ref().iter().next().unwrap().1.get_ref().clone();
            assert!(
                matches!(v, DeValue::String(ref x) if x == s),
                "{s:?}: {doc}"
            );
        }
        assert_eq!(toml_scalar("1472"), "1472");
        assert_eq!(toml_scalar("08"), "\"08\"");
        assert_eq!(toml_scalar("2MB"), "\"2MB\"");
    }
}
