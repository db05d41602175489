//! Templates with placeholders: output paths (`--path`) and record
//! prefixes (`--record-prefix`), with UTC time formatting
//!
//! Placeholders: `{session}` `{stream}` (mpx; raw datagrams are session
//! `raw`, stream 0), `{source}` `{port}` (the sender's address and port),
//! `{date}` (= `%Y-%m-%d`), strftime-style `%Y %m %d %H %M %S %j %%`, and
//! in prefixes only `{time}` (RFC 3339, microseconds). Times are UTC.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use mproxy_common::mpx::StreamKey;

/// One part of a template
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Session,
    Stream,
    Source,
    Port,
    /// `%Y`, `%m`, ... (the letter)
    Time(char),
    /// `{time}`: RFC 3339 with microseconds
    Rfc3339,
}

/// Where a template is used: paths may not hold `{time}`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    /// `--path`
    Path,
    /// `--record-prefix`
    Prefix,
}

/// A parsed template
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// What a record is rendered for
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// The mpx stream (`None`: a raw datagram)
    pub(crate) key: Option<StreamKey>,
    /// The sender (`None`: not known)
    pub(crate) source: Option<SocketAddr>,
    /// Wall-clock time
    pub(crate) now: SystemTime,
}

const NAMED: [(&str, Piece); 5] = [
    ("{session}", Piece::Session),
    ("{stream}", Piece::Stream),
    ("{source}", Piece::Source),
    ("{port}", Piece::Port),
    ("{time}", Piece::Rfc3339),
];

impl Template {
    /// Parse `text`; the error names the offending placeholder
    pub(crate) fn parse(text: &str, usage: Usage) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '{' {
                if let Some(date) = rest.strip_prefix("{date}") {
                    flush_lit(&mut lit, &mut pieces);
                    pieces.extend([
                        Piece::Time('Y'),
                        Piece::Lit("-".into()),
                        Piece::Time('m'),
                        Piece::Lit("-".into()),
                        Piece::Time('d'),
                    ]);
                    rest = date;
                    continue;
                }
                let found = NAMED.iter().find(|(name, _)| rest.starts_with(name));
                match found {
                    Some((name, Piece::Rfc3339)) if usage == Usage::Path => {
                        return Err(format!(
                            "'{name}' changes every microsecond and cannot name a file (use {{date}} or %H)"
                        ));
                    }
                    Some((name, piece)) => {
                        flush_lit(&mut lit, &mut pieces);
                        pieces.push(piece.clone());
                        rest = &rest[name.len()..];
                    }
                    None => {
                        let shown: String = rest.chars().take_while(|c| *c != '}').collect();
                        return Err(format!(
                            "unknown placeholder '{shown}}}' (known: {})",
                            known(usage)
                        ));
                    }
                }
            } else if c == '%' {
                let letter = rest[1..].chars().next();
                match letter {
                    Some('%') => lit.push('%'),
                    Some(l @ ('Y' | 'm' | 'd' | 'H' | 'M' | 'S' | 'j')) => {
                        flush_lit(&mut lit, &mut pieces);
                        pieces.push(Piece::Time(l));
                    }
                    Some(l) => {
                        return Err(format!(
                        "unknown time field '%{l}' (known: %Y %m %d %H %M %S %j, and %% for a '%')"
                    ))
                    }
                    None => return Err("a lone '%' at the end (write %% for a '%')".into()),
                }
                rest = &rest[1 + letter.map_or(0, char::len_utf8)..];
            } else {
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        flush_lit(&mut lit, &mut pieces);
        Ok(Self { pieces })
    }

    /// True if the result depends on the mpx stream
    pub(crate) fn uses_stream(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Session | Piece::Stream))
    }

    /// True if the result depends on the sender
    pub(crate) fn uses_source(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Source | Piece::Port))
    }

    /// Seconds between possible changes of the rendered time (the
    /// smallest time field), `None` without time fields
    pub(crate) fn time_unit(&self) -> Option<u64> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Time('S') | Piece::Rfc3339 => Some(1),
                Piece::Time('M') => Some(60),
                Piece::Time('H') => Some(3600),
                Piece::Time(_) => Some(86_400),
                _ => None,
            })
            .min()
    }

    /// The text before the first placeholder
    pub(crate) fn fixed_prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Lit(s)) => s,
            _ => "",
        }
    }

    /// True if the template has no placeholder at all
    pub(crate) fn is_fixed(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// Append the rendering for `ctx` to `out`
    pub(crate) fn render(&self, ctx: &Context, out: &mut String) {
        let mut time: Option<UtcTime> = None;
        for p in &self.pieces {
            let _ = match p {
                Piece::Lit(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Piece::Session => match ctx.key {
                    Some(k) => write!(out, "{:016x}", k.session),
                    None => {
                        out.push_str("raw");
                        Ok(())
                    }
                },
                Piece::Stream => write!(out, "{}", ctx.key.map_or(0, |k| k.stream)),
                Piece::Source => match ctx.source {
                    Some(a) => write!(out, "{}", a.ip().to_canonical()),
                    None => {
                        out.push_str("unknown");
                        Ok(())
                    }
                },
                Piece::Port => write!(out, "{}", ctx.source.map_or(0, |a| a.port())),
                Piece::Time(l) => {
                    let t = time.get_or_insert_with(|| UtcTime::from_system(ctx.now));
                    match l {
                        'Y' => write!(out, "{:04}", t.year),
                        'm' => write!(out, "{:02}", t.month),
                        'd' => write!(out, "{:02}", t.day),
                        'H' => write!(out, "{:02}", t.hour),
                        'M' => write!(out, "{:02}", t.minute),
                        'S' => write!(out, "{:02}", t.second),
                        _ => write!(out, "{:03}", t.day_of_year),
                    }
                }
                Piece::Rfc3339 => {
                    let t = time.get_or_insert_with(|| UtcTime::from_system(ctx.now));
                    write!(
                        out,
                        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                        t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros
                    )
                }
            };
        }
    }
}

fn flush_lit(lit: &mut String, pieces: &mut Vec<Piece>) {
    if !lit.is_empty() {
        pieces.push(Piece::Lit(std::mem::take(lit)));
    }
}

fn known(usage: Usage) -> &'static str {
    match usage {
        Usage::Path => "{session} {stream} {source} {port} {date} %Y %m %d %H %M %S %j",
        Usage::Prefix => "{time} {source} {port} {session} {stream} {date} %Y %m %d %H %M %S %j",
    }
}

/// A UTC calendar time
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UtcTime {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) day_of_year: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
    pub(crate) micros: u32,
}

impl UtcTime {
    /// The calendar time of `t` (times before 1970 read as 1970)
    pub(crate) fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_unix(d.as_secs(), d.subsec_micros())
    }

    /// The calendar time `secs` seconds after 1970-01-01T00:00:00Z
    pub(crate) fn from_unix(secs: u64, micros: u32) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = (secs % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        Self {
            year,
            month,
            day,
            day_of_year: (days - jan1 + 1) as u32,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            micros,
        }
    }
}

/// (year, month, day) of the day `z` days after 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`)
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to the given date (the inverse of [`civil_from_days`])
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
    }

    fn render(t: &str, usage: Usage, ctx: &Context) -> String {
        let mut s = String::new();
        Template::parse(t, usage).unwrap().render(ctx, &mut s);
        s
    }

    #[test]
    fn test_utc_known_dates() {
        // values checked with `date -u -d @SECS`
        let cases = [
            (0, (1970, 1, 1, 1, 0, 0, 0)),
            (951_782_400, (2000, 2, 29, 60, 0, 0, 0)),
            (1_709_164_799, (2024, 2, 28, 59, 23, 59, 59)),
            (1_709_164_800, (2024, 2, 29, 60, 0, 0, 0)),
            (1_735_689_599, (2024, 12, 31, 366, 23, 59, 59)),
            (4_102_444_800, (2100, 1, 1, 1, 0, 0, 0)),
            (4_107_542_400, (2100, 3, 1, 60, 0, 0, 0)),
        ];
        for (secs, (y, mo, d, doy, h, mi, s)) in cases {
            let t = UtcTime::from_unix(secs, 0);
            assert_eq!(
                (
                    t.year,
                    t.month,
                    t.day,
                    t.day_of_year,
                    t.hour,
                    t.minute,
                    t.second
                ),
                (y, mo, d, doy, h, mi, s),
                "{secs}"
            );
        }
    }

    #[test]
    fn test_days_round_trip() {
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn test_parse_and_render() {
        let ctx = Context {
            key: Some(StreamKey {
                session: 0xab,
                stream: 7,
            }),
            source: Some("[::ffff:192.0.2.1]:9000".parse().unwrap()),
            now: at(1_709_164_800 + 3661, 42),
        };
        assert_eq!(
            render("out/{session}-{stream}.log", Usage::Path, &ctx),
            "out/00000000000000ab-7.log"
        );
        assert_eq!(
            render("{source}_{port}/{date}/%H%M%S-%j.%%", Usage::Path, &ctx),
            "192.0.2.1_9000/2024-02-29/010101-060.%"
        );
        assert_eq!(
            render("{time} {source}:{port} ", Usage::Prefix, &ctx),
            "2024-02-29T01:01:01.000042Z 192.0.2.1:9000 "
        );
        let raw = Context {
            key: None,
            source: None,
            ..ctx
        };
        assert_eq!(
            render("{session}-{stream}-{source}", Usage::Path, &raw),
            "raw-0-unknown"
        );
    }

    #[test]
    fn test_properties() {
        let t = Template::parse("d/{session}.log", Usage::Path).unwrap();
        assert!(t.uses_stream() && !t.uses_source() && t.time_unit().is_none());
        assert_eq!(t.fixed_prefix(), "d/");
        let t = Template::parse("d/{source}-%H.log", Usage::Path).unwrap();
        assert!(!t.uses_stream() && t.uses_source());
        assert_eq!(t.time_unit(), Some(3600));
        assert_eq!(
            Template::parse("{date}", Usage::Path).unwrap().time_unit(),
            Some(86_400)
        );
        let t = Template::parse("plain.log", Usage::Path).unwrap();
        assert!(t.is_fixed() && t.fixed_prefix() == "plain.log");
        assert!(Template::parse("100%%.log", Usage::Path)
            .unwrap()
            .is_fixed());
    }

    #[test]
    fn test_errors_name_the_culprit() {
        let e = Template::parse("{sesion}.log", Usage::Path).unwrap_err();
        assert!(e.contains("'{sesion}'"), "{e}");
        let e = Template::parse("{time}.log", Usage::Path).unwrap_err();
        assert!(e.contains("{time}"), "{e}");
        let e = Template::parse("50%.log", Usage::Path).unwrap_err();
        assert!(e.contains("'%.'"), "{e}");
        let e = Template::parse("x%", Usage::Prefix).unwrap_err();
        assert!(e.contains("lone '%'"), "{e}");
        assert!(Template::parse("{time} ", Usage::Prefix).is_ok());
    }
}
