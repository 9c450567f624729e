//! Entries as Redis keeps them, and `claim.lua`'s replies.

use std::time::Duration;

use http::StatusCode;

use crate::cache::{CachePolicy, Stored};

pub(super) enum ClaimReply {
    Found(Stored),
    Won(u64),
    Busy(u64, Duration),
}

pub(super) fn parse_claim(reply: redis::Value, policy: &CachePolicy) -> Option<ClaimReply> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    let int = |i: usize| match items.get(i) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    match int(0)? {
        1 => {
            let Some(redis::Value::BulkString(value)) = items.get(2) else {
                return None;
            };
            let pttl = int(3)?;
            let (status, hard_ttl, body) = decode(value)?;
            Some(ClaimReply::Found(Stored {
                status,
                body,
                age: Duration::from_millis(hard_ttl.saturating_sub(pttl)),
                policy: *policy,
            }))
        }
        2 => Some(ClaimReply::Won(int(1)?)),
        3 => Some(ClaimReply::Busy(
            int(1)?,
            Duration::from_millis(int(2).unwrap_or(0)),
        )),
        _ => None,
    }
}

/// `v1 <generation> <status> <hard ttl ms>\n<body>`.
pub(super) fn encode(stored: &Stored, generation: u64) -> Vec<u8> {
    let head = format!(
        "v1 {generation} {} {}\n",
        stored.status.as_u16(),
        millis(stored.policy.hard_ttl())
    );
    let mut value = Vec::with_capacity(head.len() + stored.body.len());
    value.extend_from_slice(head.as_bytes());
    value.extend_from_slice(&stored.body);
    value
}

/// Status, hard ttl (ms) and body of an entry.
pub(super) fn decode(value: &[u8]) -> Option<(StatusCode, u64, bytes::Bytes)> {
    let end = value.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&value[..end]).ok()?;
    let mut fields = head.split(' ');
    let (Some("v1"), Some(_generation), Some(status), Some(hard_ttl), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let status = StatusCode::from_u16(status.parse().ok()?).ok()?;
    Some((
        status,
        hard_ttl.parse().ok()?,
        bytes::Bytes::copy_from_slice(&value[end + 1..]),
    ))
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry decodes to what was encoded; damaged ones do not decode.
    #[test]
    fn entries_round_trip() {
        let policy = CachePolicy {
            ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
        };
        let stored = Stored {
            status: StatusCode::OK,
            body: bytes::Bytes::from_static(b"{\"ErrorCode\":0}\n"),
            age: Duration::ZERO,
            policy,
        };
        let value = encode(&stored, 7);
        assert!(value.starts_with(b"v1 7 200 65000\n"));
        let (status, hard_ttl, body) = decode(&value).unwrap();
        assert_eq!(
            (status, hard_ttl, &body[..]),
            (StatusCode::OK, 65_000, &stored.body[..])
        );
        for damaged in [
            &b"v2 7 200 65000\n{}"[..],
            b"v1 7 200\n{}",
            b"v1 7 999x 1\n",
            b"no newline",
        ] {
            assert!(decode(damaged).is_none(), "{damaged:?}");
        }
    }
}
