//! Gateway-made errors → HTTP status + gateway ErrorCode + Tencent's envelope.
//!
//! Clients already check `ErrorCode` in Tencent's JSON envelope, so errors the gateway makes
//! itself use the same envelope, with codes from a range no Tencent code uses: 7 digits,
//! `19xxxxx` (Tencent's are at most 6 digits). The codes are part of the interface, documented
//! in the README; never renumber one.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::body::BodyError;
use crate::origin::BrowserError;
use crate::server::Refusal;
use crate::throttle::ThrottleError;
use crate::upstream::UpstreamError;

/// First code of the gateway's own range; every [`GatewayError`] code lies in
/// `GATEWAY_CODE_BASE..GATEWAY_CODE_BASE + 100_000`.
pub const GATEWAY_CODE_BASE: i64 = 1_900_000;

/// Tencent's envelope, fields in Tencent's order (ActionStatus, ErrorInfo, ErrorCode).
#[derive(serde::Serialize)]
struct Envelope<'a> {
    #[serde(rename = "ActionStatus")]
    action_status: &'a str,
    #[serde(rename = "ErrorInfo")]
    error_info: &'a str,
    #[serde(rename = "ErrorCode")]
    error_code: i64,
}

/// Serialises `{"ActionStatus":..,"ErrorInfo":..,"ErrorCode":..}`.
pub fn envelope(action_status: &str, error_info: &str, error_code: i64) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        action_status,
        error_info,
        error_code,
    })
    .expect("strings and an integer always serialise")
}

/// Everything that makes the gateway answer on its own instead of relaying Tencent's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no such route: use POST /v4/{{service}}/{{command}} or /apps/{{app}}/v4/{{service}}/{{command}}")]
    NoRoute,
    #[error("unknown app; configured apps are listed by `tim-gateway check-config`")]
    UnknownApp,
    #[error("command {0} is not in the gateway's catalogue of Tencent's commands; to pass commands outside it through, set server.allow_unknown_commands = true (TIM_GATEWAY__SERVER__ALLOW_UNKNOWN_COMMANDS=true)")]
    UnknownCommand(String),
    #[error("method not allowed: use POST{}", if *.allows_get { " (or GET for a cacheable read with no body)" } else { "" })]
    MethodNotAllowed { allows_get: bool },
    #[error("the request is not valid HTTP/1.1: {0}")]
    BadHttp(&'static str),
    #[error("the request head is larger than {limit} bytes or has more than 100 headers")]
    HeadersTooLarge { limit: usize },
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("the request body is nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("this command needs a JSON object body; an empty body is only accepted for reads")]
    EmptyBody,
    #[error("the request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("reading the request body failed")]
    ClientBody,
    #[error("the request body did not arrive within the request deadline")]
    ClientTimeout,
    #[error("could not connect to Tencent: {0}")]
    UpstreamConnect(String),
    #[error("Tencent did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("Tencent's answer was unusable: {0}")]
    UpstreamProtocol(String),
    #[error("Tencent answered HTTP {0} without a JSON body")]
    UpstreamHttpStatus(u16),
    #[error("the gateway is shutting down")]
    Draining,
    #[error("{0}")]
    Throttled(ThrottleError),
    #[error("bad admin request: {0}")]
    BadAdminRequest(String),
    #[error("{0}")]
    Browser(BrowserError),
    #[error("this admin endpoint needs the bearer token of server.admin_token_file")]
    AdminUnauthorized,
}

impl GatewayError {
    /// The gateway ErrorCode, stable across releases.
    pub fn code(&self) -> i64 {
        GATEWAY_CODE_BASE
            + match self {
                GatewayError::NoRoute => 4001,
                GatewayError::UnknownApp => 4002,
                GatewayError::UnknownCommand(_) => 4003,
                GatewayError::MethodNotAllowed { .. } => 4004,
                GatewayError::InvalidJson(_) => 4005,
                GatewayError::NotAnObject => 4006,
                GatewayError::TooDeep { .. } => 4013,
                GatewayError::EmptyBody => 4007,
                GatewayError::BodyTooLarge { .. } => 4008,
                GatewayError::ClientBody => 4009,
                GatewayError::ClientTimeout => 4012,
                GatewayError::UpstreamConnect(_) => 5001,
                GatewayError::UpstreamTimeout(_) => 5002,
                GatewayError::UpstreamProtocol(_) => 5003,
                GatewayError::UpstreamHttpStatus(_) => 5004,
                GatewayError::Draining => 5005,
                GatewayError::Throttled(ThrottleError::LockedOut { .. }) => 5006,
                GatewayError::Throttled(ThrottleError::UserSigRejected { .. }) => 5007,
                GatewayError::Throttled(_) => 4010,
                GatewayError::BadAdminRequest(_) => 4011,
                GatewayError::Browser(BrowserError::CrossSite) => 4014,
                GatewayError::Browser(BrowserError::UnknownHost) => 4015,
                GatewayError::AdminUnauthorized => 4016,
                GatewayError::BadHttp(_) => 4017,
                GatewayError::HeadersTooLarge { .. } => 4018,
            }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute | GatewayError::UnknownApp | GatewayError::UnknownCommand(_) => {
                StatusCode::NOT_FOUND
            }
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::InvalidJson(_)
            | GatewayError::NotAnObject
            | GatewayError::TooDeep { .. }
            | GatewayError::EmptyBody
            | GatewayError::ClientBody
            | GatewayError::BadAdminRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_)
            | GatewayError::UpstreamHttpStatus(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Throttled(
                ThrottleError::LockedOut { .. } | ThrottleError::UserSigRejected { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Browser(BrowserError::CrossSite) => StatusCode::FORBIDDEN,
            GatewayError::Browser(BrowserError::UnknownHost) => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::BadHttp(_) => StatusCode::BAD_REQUEST,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The Tencent envelope `{"ActionStatus":"FAIL","ErrorInfo":..,"ErrorCode":..}`.
    pub fn envelope(&self) -> Bytes {
        Bytes::from(envelope("FAIL", &self.client_message(), self.code()))
    }

    /// What the client is told: the `Display` text, minus the network and TLS details of
    /// upstream failures (those go to the log only).
    pub fn client_message(&self) -> std::borrow::Cow<'_, str> {
        match self {
            GatewayError::UpstreamConnect(_) => {
                "could not connect to Tencent (main and backup domain)".into()
            }
            GatewayError::UpstreamProtocol(_) => {
                "Tencent's answer was unusable (connection dropped or not JSON)".into()
            }
            other => other.to_string().into(),
        }
    }

    /// The full HTTP answer for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.envelope()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            GatewayError::MethodNotAllowed { allows_get } => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static(if allows_get {
                        "POST, GET, HEAD"
                    } else {
                        "POST"
                    }),
                );
            }
            GatewayError::Throttled(throttled) => {
                // Whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).
                let secs = throttled.retry_after().as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            GatewayError::AdminUnauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Malformed(reason) => GatewayError::BadHttp(reason),
            Refusal::HeadTooLarge { limit } => GatewayError::HeadersTooLarge { limit },
        }
    }
}

impl From<BrowserError> for GatewayError {
    fn from(error: BrowserError) -> Self {
        GatewayError::Browser(error)
    }
}

impl From<BodyError> for GatewayError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::Syntax { .. } => GatewayError::InvalidJson(error.to_string()),
            BodyError::NotAnObject => GatewayError::NotAnObject,
            BodyError::TooDeep { limit, .. } => GatewayError::TooDeep { limit },
        }
    }
}

impl From<ThrottleError> for GatewayError {
    fn from(error: ThrottleError) -> Self {
        GatewayError::Throttled(error)
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Connect(reason) => GatewayError::UpstreamConnect(reason),
            UpstreamError::Timeout(after) => GatewayError::UpstreamTimeout(after),
            UpstreamError::Protocol(reason) => GatewayError::UpstreamProtocol(reason),
            UpstreamError::HttpStatus(status) => GatewayError::UpstreamHttpStatus(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gateway error has a distinct code inside the documented range, in Tencent's envelope.
    #[test]
    fn codes_are_distinct_and_in_range() {
        let errors = [
            GatewayError::NoRoute,
            GatewayError::UnknownApp,
            GatewayError::UnknownCommand("a/b".into()),
            GatewayError::MethodNotAllowed { allows_get: false },
            GatewayError::InvalidJson("x".into()),
            GatewayError::NotAnObject,
            GatewayError::TooDeep { limit: 128 },
            GatewayError::EmptyBody,
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::ClientBody,
            GatewayError::ClientTimeout,
            GatewayError::UpstreamConnect("x".into()),
            GatewayError::UpstreamTimeout(std::time::Duration::from_secs(1)),
            GatewayError::UpstreamProtocol("x".into()),
            GatewayError::UpstreamHttpStatus(502),
            GatewayError::Draining,
            GatewayError::Throttled(ThrottleError::Saturated {
                retry_after: std::time::Duration::from_millis(1),
            }),
            GatewayError::Throttled(ThrottleError::LockedOut {
                retry_after: std::time::Duration::from_secs(60),
            }),
            GatewayError::BadAdminRequest("x".into()),
            GatewayError::Browser(BrowserError::CrossSite),
            GatewayError::Browser(BrowserError::UnknownHost),
            GatewayError::AdminUnauthorized,
            GatewayError::BadHttp("x"),
            GatewayError::HeadersTooLarge { limit: 1 },
            GatewayError::Throttled(ThrottleError::UserSigRejected {
                retry_after: std::time::Duration::from_secs(1),
            }),
        ];
        let mut codes: Vec<i64> = errors.iter().map(GatewayError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        assert!(codes
            .iter()
            .all(|c| (GATEWAY_CODE_BASE..GATEWAY_CODE_BASE + 100_000).contains(c)));
        assert_eq!(
            GatewayError::NotAnObject.envelope(),
            r#"{"ActionStatus":"FAIL","ErrorInfo":"the request body must be a JSON object","ErrorCode":1904006}"#
        );
    }
}
