//! One access line as bytes, without `fmt`: the human (logfmt) and JSON layouts that
//! tracing-subscriber 0.3 writes for the same event, byte for byte.
//!
//! Promises: a line is one `\n`-terminated line whatever its values hold (every control
//! character is escaped); the JSON line is valid JSON with the keys in tracing's order
//! (`timestamp`, `level`, `message`, the fields, `target`); the timestamp is RFC 3339 UTC with
//! six fractional digits, as tracing's default timer writes it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{AccessLine, TARGET};

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
        // Before 1970 only with a broken clock: stamp the epoch rather than fail.
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let timestamp = self.timestamp(since_epoch.as_secs(), since_epoch.subsec_micros());
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

// tracing-subscriber's colours (nu-ansi-term): dimmed time and target, green INFO, italic keys.
const DIM: &[u8] = b"\x1b[2m";
const ITALIC: &[u8] = b"\x1b[3m";
const RESET: &[u8] = b"\x1b[0m";

fn human(line: &AccessLine<'_>, timestamp: &[u8; 27], is_ansi: bool, out: &mut Vec<u8>) {
    if is_ansi {
        out.extend_from_slice(DIM);
        out.extend_from_slice(timestamp);
        out.extend_from_slice(b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2m");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b"\x1b[0m\x1b[2m:\x1b[0m request");
    } else {
        out.extend_from_slice(timestamp);
        out.extend_from_slice(b"  INFO ");
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(b": request");
    }
    let key = |out: &mut Vec<u8>, key: &str| {
        out.push(b' ');
        if is_ansi {
            out.extend_from_slice(ITALIC);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(RESET);
            out.extend_from_slice(DIM);
            out.push(b'=');
            out.extend_from_slice(RESET);
        } else {
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
        }
    };
    fields(line, out, key, logfmt_value);
    out.push(b'\n');
}

fn json(line: &AccessLine<'_>, timestamp: &[u8; 27], out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"timestamp":""#);
    out.extend_from_slice(timestamp);
    out.extend_from_slice(br#"","level":"INFO","message":"request""#);
    let key = |out: &mut Vec<u8>, key: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    };
    let text = |value: &str, out: &mut Vec<u8>| {
        out.push(b'"');
        escape(value, Escape::Json, out);
        out.push(b'"');
    };
    fields(line, out, key, text);
    out.extend_from_slice(br#","target":""#);
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The fields in tracing's order (the order of the macro call they replace), each as `key`
/// then its value; absent ones are left out. Numbers are bare in both formats.
fn fields(
    line: &AccessLine<'_>,
    out: &mut Vec<u8>,
    key: impl Fn(&mut Vec<u8>, &str),
    text: impl Fn(&str, &mut Vec<u8>),
) {
    let text = |out: &mut Vec<u8>, name: &str, value: Option<&str>| {
        if let Some(value) = value {
            key(out, name);
            text(value, out);
        }
    };
    let number = |out: &mut Vec<u8>, name: &str, digits: &str| {
        key(out, name);
        out.extend_from_slice(digits.as_bytes());
    };
    text(out, "request_id", Some(line.request_id));
    text(out, "method", line.method);
    text(out, "path", line.path);
    text(out, "app", Some(line.app));
    text(out, "command", line.command);
    text(out, "cache", line.cache);
    number(out, "status", itoa::Buffer::new().format(line.status));
    if let Some(code) = line.error_code {
        number(out, "error_code", itoa::Buffer::new().format(code));
    }
    number(
        out,
        "latency_us",
        itoa::Buffer::new().format(line.latency_us),
    );
    text(out, "error", line.error);
}

/// A logfmt value: bare when it is visible ASCII without `"`, `=` or `\`, else quoted and
/// escaped, so that a value can never end its field or its line early.
fn logfmt_value(value: &str, out: &mut Vec<u8>) {
    let is_bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if is_bare {
        out.extend_from_slice(value.as_bytes());
    } else {
        out.push(b'"');
        escape(value, Escape::Logfmt, out);
        out.push(b'"');
    }
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
