//! How `consume` and `produce` read and print records, with the conventions of kcat and the
//! Kafka console tools: where to start (`--from`), the output format (`--format`, `--json`),
//! keys and headers on input lines (`--key-separator`, `-H`).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardline_net::client::{ConsumerRecord, Header, OffsetSpec};

/// `--from`: `earliest`, `latest`, an offset, an RFC 3339 time (`2026-12-03T10:00:00Z`,
/// `2026-12-03T11:00:00+01:00`) or a duration back from now (`-5m`, `-1h30m`, `-10s`).
pub(crate) fn parse_from(s: &str) -> Result<OffsetSpec, String> {
    const EXPECTED: &str = "expected earliest, latest, an offset, an RFC 3339 time \
                            (2026-12-03T10:00:00Z) or a duration back from now (-5m)";
    match s {
        "earliest" => return Ok(OffsetSpec::Earliest),
        "latest" => return Ok(OffsetSpec::Latest),
        _ => {}
    }
    if let Ok(offset) = s.parse::<u64>() {
        return Ok(OffsetSpec::At(offset));
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = humantime::parse_duration(ago).map_err(|e| format!("'{s}': {e}; {EXPECTED}"))?;
        let at = SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("'{s}' reaches before 1970"))?;
        return Ok(OffsetSpec::Timestamp(micros(at)));
    }
    parse_rfc3339(s)
        .map(|t| OffsetSpec::Timestamp(micros(t)))
        .map_err(|e| format!("'{s}': {e}; {EXPECTED}"))
}

fn micros(t: SystemTime) -> i64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// RFC 3339 with `Z` or a numeric offset (`+01:00`); `humantime` reads only UTC.
fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let (utc, offset_s) = split_offset(s)?;
    let t = humantime::parse_rfc3339_weak(utc).map_err(|e| e.to_string())?;
    let shifted = if offset_s >= 0 {
        t.checked_sub(Duration::from_secs(offset_s.unsigned_abs()))
    } else {
        t.checked_add(Duration::from_secs(offset_s.unsigned_abs()))
    };
    shifted.ok_or_else(|| "time out of range".to_string())
}

/// The time without its zone, and the zone's offset east of UTC in seconds.
fn split_offset(s: &str) -> Result<(&str, i64), String> {
    if let Some(t) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Ok((t, 0));
    }
    let Some(tail) = s.len().checked_sub(6).and_then(|i| s.get(i..)) else {
        return Err("not a time".into());
    };
    let bytes = tail.as_bytes();
    if (bytes[0] == b'+' || bytes[0] == b'-') && bytes[3] == b':' {
        let number = |r: std::ops::Range<usize>| -> Result<i64, String> {
            tail.get(r)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| "bad zone offset".to_string())
        };
        let (hours, minutes) = (number(1..3)?, number(4..6)?);
        let sign = if bytes[0] == b'-' { -1 } else { 1 };
        return Ok((&s[..s.len() - 6], sign * (hours * 3600 + minutes * 60)));
    }
    Err("a time needs a zone: Z or +HH:MM".into())
}

/// How `consume` prints a record.
#[derive(Debug, Clone)]
pub(crate) enum OutputFormat {
    /// The value and a newline.
    Value,
    /// A kcat-style template (see [`parse_format`]).
    Template(Vec<Piece>),
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    TimestampMs,
    Headers,
    KeyBytes,
    ValueBytes,
}

/// A parsed `--format` (a newtype: clap reads a bare `Vec` as a repeated flag).
#[derive(Debug, Clone)]
pub(crate) struct Template(pub(crate) Vec<Piece>);

pub(crate) fn parse_template(s: &str) -> Result<Template, String> {
    parse_format(s).map(Template)
}

/// `--format`: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s` value, `%T` timestamp
/// (milliseconds since the epoch), `%h` headers (`name=value,...`), `%K`/`%S` key/value length
/// in bytes, `%%` a percent sign; `\n`, `\t`, `\\` escapes. Without a `\n` in the format each
/// record ends with a newline.
pub(crate) fn parse_format(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut has_newline = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let piece = match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('s') => Piece::Value,
                    Some('T') => Piece::TimestampMs,
                    Some('h') => Piece::Headers,
                    Some('K') => Piece::KeyBytes,
                    Some('S') => Piece::ValueBytes,
                    Some('%') => {
                        text.push(b'%');
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "unknown format token %{}; known: %t %p %o %k %s %T %h %K %S %%",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
            }
            '\\' => match chars.next() {
                Some('n') => {
                    text.push(b'\n');
                    has_newline = true;
                }
                Some('t') => text.push(b'\t'),
                Some('\\') => text.push(b'\\'),
                Some(other) => {
                    text.push(b'\\');
                    text.extend_from_slice(other.to_string().as_bytes());
                }
                None => text.push(b'\\'),
            },
            c => text.extend_from_slice(c.to_string().as_bytes()),
        }
    }
    if !has_newline {
        text.push(b'\n');
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl OutputFormat {
    pub(crate) fn write(&self, out: &mut impl Write, r: &ConsumerRecord) -> std::io::Result<()> {
        match self {
            OutputFormat::Value => {
                out.write_all(&r.value)?;
                out.write_all(b"\n")
            }
            OutputFormat::Template(pieces) => {
                for p in pieces {
                    write_piece(out, p, r)?;
                }
                Ok(())
            }
            OutputFormat::Json => {
                let line = json(r);
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            }
        }
    }
}

fn write_piece(out: &mut impl Write, p: &Piece, r: &ConsumerRecord) -> std::io::Result<()> {
    match p {
        Piece::Text(t) => out.write_all(t),
        Piece::Topic => out.write_all(r.topic.as_bytes()),
        Piece::Partition => write!(out, "{}", r.partition),
        Piece::Offset => write!(out, "{}", r.offset),
        Piece::Key => out.write_all(r.key.as_deref().unwrap_or_default()),
        Piece::Value => out.write_all(&r.value),
        Piece::TimestampMs => write!(out, "{}", r.timestamp_us.div_euclid(1000)),
        Piece::Headers => {
            for (i, h) in r.headers.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(h.key.as_bytes())?;
                out.write_all(b"=")?;
                out.write_all(&h.value)?;
            }
            Ok(())
        }
        Piece::KeyBytes => write!(out, "{}", r.key.as_ref().map_or(0, Vec::len)),
        Piece::ValueBytes => write!(out, "{}", r.value.len()),
    }
}

/// `{"topic":..,"partition":..,"offset":..,"timestamp_ms":..,"key":..|null,"value":..,
/// "headers":{..}}`; keys, values and header values as (lossy) UTF-8 strings.
fn json(r: &ConsumerRecord) -> String {
    let text = |b: &[u8]| serde_json::Value::String(String::from_utf8_lossy(b).into_owned());
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|h| (h.key.clone(), text(&h.value)))
        .collect();
    serde_json::json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_us.div_euclid(1000),
        "key": r.key.as_deref().map(text),
        "value": text(&r.value),
        "headers": headers,
    })
    .to_string()
}

/// `-H name=value`.
pub(crate) fn parse_header(s: &str) -> Result<Header, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok(Header {
            key: name.to_string(),
            value: value.as_bytes().to_vec(),
        }),
        _ => Err(format!("header '{s}' is not NAME=VALUE")),
    }
}

/// A `produce` input line with `--key-separator`: the key before the first separator, the
/// value after it; a line without the separator has no key.
pub(crate) fn split_key<'a>(line: &'a [u8], separator: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if separator.is_empty() {
        return (None, line);
    }
    match line.windows(separator.len()).position(|w| w == separator) {
        Some(i) => (Some(&line[..i]), &line[i + separator.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            timestamp_us: 1_700_000_000_123_456,
            key: Some(b"k1".to_vec()),
            value: b"hello".to_vec(),
            headers: vec![Header {
                key: "a".into(),
                value: b"1".to_vec(),
            }],
        }
    }

    fn render(f: &OutputFormat) -> String {
        let mut v = Vec::new();
        f.write(&mut v, &record()).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn from_accepts_names_offsets_times_and_durations() {
        assert_eq!(parse_from("earliest"), Ok(OffsetSpec::Earliest));
        assert_eq!(parse_from("latest"), Ok(OffsetSpec::Latest));
        assert_eq!(parse_from("42"), Ok(OffsetSpec::At(42)));
        assert_eq!(
            parse_from("2023-11-14T22:13:20Z"),
            Ok(OffsetSpec::Timestamp(1_700_000_000_000_000))
        );
        assert_eq!(
            parse_from("2023-11-14T23:13:20+01:00"),
            Ok(OffsetSpec::Timestamp(1_700_000_000_000_000))
        );
        let Ok(OffsetSpec::Timestamp(us)) = parse_from("-5m") else {
            panic!("duration");
        };
        let ago = micros(SystemTime::now()) - us;
        assert!((299_000_000..=301_000_000).contains(&ago), "{ago}");
        assert!(parse_from("yesterday").is_err());
        assert!(
            parse_from("2023-11-14T22:13:20").is_err(),
            "a zone is required"
        );
    }

    #[test]
    fn template_and_json() {
        let f = OutputFormat::Template(parse_format("%k %o %T %h %s").unwrap());
        assert_eq!(render(&f), "k1 7 1700000000123 a=1 hello\n");
        let f = OutputFormat::Template(parse_format("%t/%p\\t%K:%S%%\\n").unwrap());
        assert_eq!(render(&f), "orders/2\t2:5%\n");
        assert!(parse_format("%x").is_err());
        let v: serde_json::Value =
            serde_json::from_str(render(&OutputFormat::Json).trim()).unwrap();
        assert_eq!(v["key"], "k1");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["timestamp_ms"], 1_700_000_000_123_i64);
        assert_eq!(v["headers"]["a"], "1");
    }

    #[test]
    fn keys_and_headers_of_input_lines() {
        assert_eq!(
            split_key(b"user-1:hello:world", b":"),
            (Some(&b"user-1"[..]), &b"hello:world"[..])
        );
        assert_eq!(split_key(b"no key", b"::"), (None, &b"no key"[..]));
        let h = parse_header("trace=abc=1").unwrap();
        assert_eq!(
            (h.key.as_str(), h.value.as_slice()),
            ("trace", &b"abc=1"[..])
        );
        assert!(parse_header("=x").is_err());
        assert!(parse_header("novalue").is_err());
    }
}
