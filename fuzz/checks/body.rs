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
const RAW_VALUE_TOKEN: &[u8] = b"$serde_json::private::RawValue";

/// Panics if `data` breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let validated = validate(data);
    let canonicalised = canonical(data);
    assert_eq!(
        validated.is_ok(),
        canonicalised.is_ok(),
        "validate and canonical disagree: {validated:?} vs {canonicalised:?}"
    );

    // serde_json, built with `raw_value` (the gateway uses it), reads an object whose key is
    // this token as a raw value, not as an object: no oracle for such input (our validator
    // takes it as the plain object it is).
    let has_raw_value_token = data
        .windows(RAW_VALUE_TOKEN.len())
        .any(|window| window == RAW_VALUE_TOKEN);
    let parsed = (!has_raw_value_token).then(|| serde_json::from_slice::<serde_json::Value>(data));
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
