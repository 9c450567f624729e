//! One access line as bytes, without `fmt`. JSON: byte for byte what tracing-subscriber 0.3's
//! `.json().flatten_event(true)` writes for the same event. Human: tracing's prefix
//! (timestamp, level, target, message), then the fields as logfmt, a value quoted only when it
//! needs it (tracing quoted every string: `app="main"` is now `app=main`).
//!
//! Promises: a line is one `\n`-terminated line whatever its values hold (every control
//! character is escaped); the JSON line is valid JSON with the keys in tracing's order
//! (`timestamp`, `level`, `message`, the fields, `target`); the timestamp is RFC 3339 UTC with
//! six fractional digits, as tracing's default timer writes it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::AccessLine;

/// How lines look: the same choice `--log-format` makes for the rest of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<time>  INFO tim_gateway::access: request key=value …`, with tracing's colours when
    /// `is_ansi` (a person at a terminal).
    Human { is_ansi: bool },
    /// One JSON object per line, as tracing's `.json().flatten_event(true)`.
    Json,
}

/// Formats lines in one [`Format`]; keeps the date and time of the last second it formatted,
/// so most lines only write their microseconds.
#[derive(Debug)]
pub struct Encoder {
    format: Format,
    /// Unix second that `second_text` spells; `u64::MAX` before the first line.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` for `second`.
    second_text: [u8; 20],
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Encoder {
            format,
            second: u64::MAX,
            second_text: [0; 20],
        }
    }

    /// Appends `line`, stamped `now`, to `out`.
    pub fn encode(&mut self, line: &AccessLine<'_>, now: SystemTime, out: &mut Vec<u8>) {
        self.encode_at(line, unix_micros(now), out);
    }

    /// As [`Encoder::encode`], with the time in microseconds since 1970.
    pub(super) fn encode_at(&mut self, line: &AccessLine<'_>, unix_micros: u64, out: &mut Vec<u8>) {
        let timestamp = self.timestamp(unix_micros / 1_000_000, (unix_micros % 1_000_000) as u32);
        match self.format {
            Format::Human { is_ansi } => human(line, &timestamp, is_ansi, out),
            Format::Json => json(line, &timestamp, out),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    fn timestamp(&mut self, second: u64, micros: u32) -> [u8; 27] {
        if second != self.second {
            self.second = second;
            self.second_text = second_text(second);
        }
        let mut text = [0u8; 27];
        text[..20].copy_from_slice(&self.second_text);
        let mut rest = micros;
        for digit in text[20..26].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        text[26] = b'Z';
        text
    }
}

/// Microseconds since 1970 (0 for a clock set before 1970, rather than failing).
pub(super) fn unix_micros(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros().try_into().unwrap_or(u64::MAX))
}

/// The last second RFC 3339's four-digit years can name (9999-12-31T23:59:59Z); later clocks
/// are stamped with it.
const LAST_SECOND: u64 = 253_402_300_799;

/// `YYYY-MM-DDTHH:MM:SS.` for a unix second (UTC, proleptic Gregorian calendar).
fn second_text(second: u64) -> [u8; 20] {
    let second = second.min(LAST_SECOND);
    let (year, month, day) = civil_from_days(second / 86_400);
    let of_day = second % 86_400;
    let mut text = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, value: u64, digits: usize| {
        let mut rest = value;
        for digit in text[at..at + digits].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    text
}

/// Year, month (1–12) and day (1–31) of a day counted from 1970-01-01: Howard Hinnant's
/// `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), in unsigned
/// arithmetic because our days are never before 1970.
pub(super) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01, so that the leap day ends each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// The ten keys as written before their values, in field order (the order of the tracing
/// macro call they replace): `request_id`, `method`, `path`, `app`, `command`, `cache`,
/// `status`, `error_code`, `latency_us`, `error`. Constants, so that each copy is a few moves.
macro_rules! keys {
    ($before:literal, $after:literal) => {
        [
            concat!($before, "request_id", $after).as_bytes(),
            concat!($before, "method", $after).as_bytes(),
            concat!($before, "path", $after).as_bytes(),
            concat!($before, "app", $after).as_bytes(),
            concat!($before, "command", $after).as_bytes(),
            concat!($before, "cache", $after).as_bytes(),
            concat!($before, "status", $after).as_bytes(),
            concat!($before, "error_code", $after).as_bytes(),
            concat!($before, "latency_us", $after).as_bytes(),
            concat!($before, "error", $after).as_bytes(),
        ]
    };
}

type Keys = [&'static [u8]; 10];

const HUMAN_KEYS: Keys = keys!(" ", "=");
// tracing-subscriber's colours (nu-ansi-term): italic key, dimmed `=`.
const ANSI_KEYS: Keys = keys!(" \x1b[3m", "\x1b[0m\x1b[2m=\x1b[0m");
const JSON_KEYS: Keys = keys!(",\"", "\":");

const HUMAN_HEAD: &[u8] = b"  INFO tim_gateway::access: request";
// Dimmed time (written around it), green level, dimmed target and colon.
const ANSI_HEAD: &[u8] =
    b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mtim_gateway::access\x1b[0m\x1b[2m:\x1b[0m request";
const JSON_HEAD: &[u8] = br#"","level":"INFO","message":"request""#;
const JSON_TAIL: &[u8] = b",\"target\":\"tim_gateway::access\"}\n";

fn human(line: &AccessLine<'_>, timestamp: &[u8; 27], is_ansi: bool, out: &mut Vec<u8>) {
    if is_ansi {
        out.extend_from_slice(b"\x1b[2m");
        out.extend_from_slice(timestamp);
        out.extend_from_slice(ANSI_HEAD);
        fields(line, &ANSI_KEYS, logfmt_value, false, out);
    } else {
        out.extend_from_slice(timestamp);
        out.extend_from_slice(HUMAN_HEAD);
        fields(line, &HUMAN_KEYS, logfmt_value, false, out);
    }
    out.push(b'\n');
}

fn json(line: &AccessLine<'_>, timestamp: &[u8; 27], out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"timestamp":""#);
    out.extend_from_slice(timestamp);
    out.extend_from_slice(JSON_HEAD);
    fields(line, &JSON_KEYS, json_string, true, out);
    out.extend_from_slice(JSON_TAIL);
}

/// Each present field as its key then its value; absent ones are left out. Numbers are bare
/// in both formats; `text` writes a string value; the app, command and cache result are plain
/// tokens (`[A-Za-z0-9_/-]`: validated names), copied as they are (in quotes where `is_json`).
/// Inlined, so that the keys' lengths are constants at each copy.
#[inline(always)]
fn fields(
    line: &AccessLine<'_>,
    keys: &Keys,
    text: impl Fn(&str, &mut Vec<u8>),
    is_json: bool,
    out: &mut Vec<u8>,
) {
    let token = |value: &str, out: &mut Vec<u8>| {
        debug_assert!(
            !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_/-".contains(&b)),
            "not a token: {value:?}"
        );
        if is_json {
            out.push(b'"');
            out.extend_from_slice(value.as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(value.as_bytes());
        }
    };
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(keys[0]);
    text(line.request_id, out);
    if let Some(method) = line.method {
        out.extend_from_slice(keys[1]);
        text(method, out);
    }
    if let Some(path) = line.path {
        out.extend_from_slice(keys[2]);
        text(path, out);
    }
    out.extend_from_slice(keys[3]);
    token(line.app, out);
    if let Some(command) = line.command {
        out.extend_from_slice(keys[4]);
        token(command, out);
    }
    if let Some(cache) = line.cache {
        out.extend_from_slice(keys[5]);
        token(cache, out);
    }
    out.extend_from_slice(keys[6]);
    out.extend_from_slice(number.format(line.status).as_bytes());
    if let Some(code) = line.error_code {
        out.extend_from_slice(keys[7]);
        out.extend_from_slice(number.format(code).as_bytes());
    }
    out.extend_from_slice(keys[8]);
    out.extend_from_slice(number.format(line.latency_us).as_bytes());
    if let Some(error) = line.error {
        out.extend_from_slice(keys[9]);
        text(error, out);
    }
}

fn json_string(value: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    if any_byte(value, |b| b < 0x20 || b == b'"' || b == b'\\') {
        escape(value, Escape::Json, out);
    } else {
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'"');
}

/// A logfmt value: bare when it is visible ASCII without `"`, `=` or `\`, else quoted and
/// escaped, so that a value can never end its field or its line early.
fn logfmt_value(value: &str, out: &mut Vec<u8>) {
    let is_quoted = value.is_empty()
        || any_byte(value, |b| {
            b <= b' ' || b >= 0x7f || b == b'"' || b == b'=' || b == b'\\'
        });
    if is_quoted {
        out.push(b'"');
        escape(value, Escape::Logfmt, out);
        out.push(b'"');
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

/// Whether `is_special` holds for a byte of `value`. A fold without an early exit, so that the
/// compiler checks 16 bytes per step (SSE2): values are short and almost never special.
#[inline(always)]
fn any_byte(value: &str, is_special: impl Fn(u8) -> bool) -> bool {
    value
        .bytes()
        .fold(false, |is_any, byte| is_any | is_special(byte))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// JSON's rules, as serde_json applies them: `"`, `\` and C0 controls.
    Json,
    /// JSON's rules plus DEL and the C1 controls (U+0080–U+009F), which a terminal may obey.
    Logfmt,
}

/// Appends `value` with the characters `how` must escape written as JSON escapes (`\n`,
/// `\u001b`, …); everything else is copied unchanged.
fn escape(value: &str, how: Escape, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        let (control, len) = match byte {
            b'"' | b'\\' | 0x00..=0x1f => (byte, 1),
            0x7f if how == Escape::Logfmt => (byte, 1),
            // U+0080–U+009F are 0xC2 0x80–0x9F in UTF-8.
            0xc2 if how == Escape::Logfmt && matches!(bytes.get(at + 1), Some(0x80..=0x9f)) => {
                (bytes[at + 1], 2)
            }
            _ => {
                at += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..at]);
        match control {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(control >> 4)],
                HEX[usize::from(control & 0xf)],
            ]),
        }
        at += len;
        copied = at;
    }
    out.extend_from_slice(&bytes[copied..]);
}
