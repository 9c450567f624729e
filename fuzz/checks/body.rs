//! Checks of `tim_gateway::body` on one arbitrary input, shared by the `body` fuzz target and
//! the corpus replay in `tests/fuzz_corpus.rs`.
//!
//! Invariants (src/body.rs promises):
//! - `validate` and `canonical` agree on validity;
//! - a canonical key is itself valid and canonical (`canonical(k) == Key(k)`);
//! - when serde_json parses the input, the key parses to the same `Value` (the key keeps every
//!   number's text, so both sides round a number the same way);
//! - a body serde_json parses as an object is valid, and a valid body that serde_json refuses
//!   is refused only for serde_json's own limits: its recursion limit (127 levels, ours is
//!   128) or a number beyond `f64` (`1e400`; the body keeps it as text).

use tim_gateway::body::{canonical, validate, Canonical};

/// The key serde_json's `raw_value` feature gives a meaning of its own.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether a string literal of `data` decodes to [`RAW_VALUE_TOKEN`], however it is escaped
/// (`"\u0024serde_json…"` is the token too). Literals are found as serde_json tokenises
/// them: a `"` outside a literal opens one, `\` takes the next byte with it, `"` closes it.
fn mentions_raw_value_token(data: &[u8]) -> bool {
    let mut at = 0;
    while let Some(offset) = data[at..].iter().position(|&b| b == b'"') {
        let start = at + offset;
        let mut end = start + 1;
        while end < data.len() && data[end] != b'"' {
            end += if data[end] == b'\\' { 2 } else { 1 };
        }
        let Some(literal) = data.get(start..=end) else {
            return false;
        };
        if serde_json::from_slice::<String>(literal).is_ok_and(|text| text == RAW_VALUE_TOKEN) {
            return true;
        }
        at = end + 1;
    }
    false
}

/// Panics if `data` breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let validated = validate(data);
    let canonicalised = canonical(data);
    assert_eq!(
        validated.is_ok(),
        canonicalised.is_ok(),
        "validate and canonical disagree: {validated:?} vs {canonicalised:?}"
    );

    // serde_json, built with `raw_value` (the gateway uses it), reads an object whose key
    // decodes to this token as a raw value, not as an object: no oracle for such input (our
    // validator takes it as the plain object it is).
    let parsed = (!mentions_raw_value_token(data))
        .then(|| serde_json::from_slice::<serde_json::Value>(data));
    match &parsed {
        None => {}
        Some(Ok(value)) if value.is_object() => {
            assert!(
                validated.is_ok(),
                "serde_json parses an object refused: {validated:?}"
            );
        }
        Some(Ok(_)) => assert!(validated.is_err(), "a non-object was accepted"),
        Some(Err(e)) if validated.is_ok() => {
            let reason = e.to_string();
            assert!(
                reason.contains("recursion limit") || reason.contains("number out of range"),
                "a valid body that serde_json refuses: {reason}"
            );
        }
        Some(Err(_)) => {}
    }

    let Ok(Canonical::Key(key)) = canonicalised else {
        return;
    };
    assert_eq!(validate(&key), Ok(()), "the key is not valid JSON");
    assert_eq!(
        canonical(&key),
        Ok(Canonical::Key(key.clone())),
        "the key is not canonical"
    );
    // No repeated key (that would have been `RepeatedKey`), so serde_json keeps every member.
    if let Some(Ok(value)) = parsed {
        let reparsed: serde_json::Value =
            serde_json::from_slice(&key).expect("serde_json parses the key of a body it parses");
        assert_eq!(reparsed, value, "the key is another document");
    }
}
