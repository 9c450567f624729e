//! Client path → which app and which `service/command`, borrowing from the path; query
//! strings (admin endpoints, the sandbox) → decoded pairs.
//!
//! Two shapes (PRODUCT.md, "Interfaces"): `/v4/{service}/{command}` for the default app and
//! `/apps/{app}/v4/{service}/{command}` for a named one. Segments are restricted to Tencent's
//! alphabet so nothing odd can reach an upstream URL or a log line.

/// A client path split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedPath<'a> {
    /// The app named in `/apps/{app}/…`, or `None` for the default app.
    pub app: Option<&'a str>,
    /// `service/command`, the catalogue key.
    pub command: &'a str,
}

fn is_app_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 64
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses the path part of a client request (no query). `None` if it has neither shape.
pub fn parse_path(path: &str) -> Option<ParsedPath<'_>> {
    parse_path_known(path, |_| None::<()>).map(|(parsed, _)| parsed)
}

/// [`parse_path`] that first asks `lookup` (the catalogue) about the command: a command it
/// knows is valid by construction, so only unknown ones pay the byte-by-byte check. Returns
/// what `lookup` found with the parsed path.
pub fn parse_path_known<T>(
    path: &str,
    lookup: impl FnOnce(&str) -> Option<T>,
) -> Option<(ParsedPath<'_>, Option<T>)> {
    let (app, rest) = match path.strip_prefix("/apps/") {
        Some(rest) => {
            let (app, rest) = rest.split_once('/')?;
            if !is_app_segment(app) {
                return None;
            }
            (Some(app), rest)
        }
        None => (None, path.strip_prefix('/')?),
    };
    let command = rest.strip_prefix("v4/")?;
    let known = lookup(command);
    (known.is_some() || is_command(command)).then_some((ParsedPath { app, command }, known))
}

/// Bytes allowed in a command's segments (Tencent's alphabet), as a table: one load per byte.
const SEGMENT_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || byte == b'_';
        b += 1;
    }
    table
};

/// Whether `command` is `service/name`, both name segments, in one pass over its bytes.
pub fn is_command(command: &str) -> bool {
    let bytes = command.as_bytes();
    let Some(slash) = bytes.iter().position(|&b| !SEGMENT_BYTE[usize::from(b)]) else {
        return false;
    };
    let (service, name) = (&bytes[..slash], &bytes[slash + 1..]);
    bytes[slash] == b'/'
        && (1..=64).contains(&service.len())
        && (1..=64).contains(&name.len())
        && name.iter().all(|&b| SEGMENT_BYTE[usize::from(b)])
}

/// Splits a raw query string into percent-decoded `(name, value)` pairs, in the order received.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Form-style decoding: `%XX` is a byte and `+` a space. A `%` not followed by two hex digits
/// stays as it is, and bytes that are not UTF-8 become U+FFFD, so no input is an error.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = bytes
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(bytes.get(i + 2).copied().and_then(hex));
                match pair {
                    Some((hi, lo)) => {
                        // Two hex digits are at most 0xFF, so the cast is lossless.
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of accepted and refused client paths.
    #[test]
    fn parses_both_shapes_and_nothing_else() {
        type Case<'a> = (&'a str, Option<(Option<&'a str>, &'a str)>);
        let cases: &[Case] = &[
            (
                "/v4/openim_robot_http_svc/get_all_robots",
                Some((None, "openim_robot_http_svc/get_all_robots")),
            ),
            (
                "/apps/main/v4/profile/portrait_get",
                Some((Some("main"), "profile/portrait_get")),
            ),
            (
                "/apps/eu-1/v4/ConfigSvc/GetIPList",
                Some((Some("eu-1"), "ConfigSvc/GetIPList")),
            ),
            ("/v4/openim_robot_http_svc/get_all_robots/", None),
            ("/v4/openim_robot_http_svc", None),
            ("/v4//get_all_robots", None),
            ("/v4/a/b/c", None),
            ("/v3/a/b", None),
            ("/apps//v4/a/b", None),
            ("/apps/x y/v4/a/b", None),
            ("/v4/a%2Fb/c", None),
            ("/v4/../b", None),
            ("v4/a/b", None),
            ("", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            let got = parse_path(path).map(|p| (p.app, p.command));
            assert_eq!(got, *expected, "{path}");
        }
        // Each of the two segments is 1 to 64 characters.
        let (s64, s65) = ("s".repeat(64), "s".repeat(65));
        for (path, is_valid) in [
            (format!("/v4/{s64}/{s64}"), true),
            (format!("/v4/{s65}/c"), false),
            (format!("/v4/c/{s65}"), false),
            ("/v4/a/".to_owned(), false),
            ("/v4/a/b-c".to_owned(), false),
        ] {
            assert_eq!(parse_path(&path).is_some(), is_valid, "{path}");
        }
    }

    /// Query values are form-decoded in order, and malformed escapes never fail.
    #[test]
    fn parse_query_decodes_in_order() {
        let cases: [(&str, &[(&str, &str)]); 6] = [
            ("a=1&b=2", &[("a", "1"), ("b", "2")]),
            ("x=%61b%2Fc&y=a+b", &[("x", "ab/c"), ("y", "a b")]),
            ("flag&&z=", &[("flag", ""), ("z", "")]),
            ("bad=%zz%4", &[("bad", "%zz%4")]),
            ("u=%C3%A9%FF", &[("u", "é\u{FFFD}")]),
            ("", &[]),
        ];
        for (raw, expected) in cases {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(parse_query(raw), expected, "{raw}");
        }
    }
}
