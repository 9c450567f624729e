//! Client path → which app and which `service/command`, borrowing from the path.
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

fn is_name_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 64
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
    let (service, name) = command.split_once('/')?;
    if !is_name_segment(service) || !is_name_segment(name) {
        return None;
    }
    Some(ParsedPath { app, command })
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
    }
}
