//! Checks of `tim_gateway::usersig` on one arbitrary input, shared by the `usersig` fuzz target
//! and the corpus replay in `tests/fuzz_corpus.rs`.
//!
//! Two uses of the input:
//! - as a UserSig (UTF-8, lossily): `decode` and `verify` never panic, `verify` fails exactly
//!   when `decode` fails or a check fails, and a UserSig that verifies under the reference key
//!   carries the signature `signature` computes (reference §3);
//! - as fields: the first 24 bytes are sdkappid, time and expire (little-endian, zero-padded),
//!   the rest the identifier. What `mint` makes from them must verify under the same key, from
//!   `time` to `time + expire`, and be expired one second later.

use tim_gateway::usersig::{decode, mint, signature, verify, SecretKey, UserSigError};

/// The known-answer key of reference §3.
pub const REFERENCE_KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

/// Longest identifier the round trip uses. `decode` refuses a UserSig whose JSON inflates past
/// 16 KiB (a zlib-bomb guard), and an identifier can grow six-fold when JSON escapes it
/// (`\u0001`); 2 KiB stays under the guard whatever it holds. Configured identifiers are at
/// most 32 bytes.
const MAX_IDENTIFIER_BYTES: usize = 2048;

/// Panics if `data` breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let key = SecretKey::new(REFERENCE_KEY);
    check_as_usersig(&key, &String::from_utf8_lossy(data));
    check_round_trip(&key, data);
}

fn check_as_usersig(key: &SecretKey, text: &str) {
    let decoded = match decode(text) {
        Ok(decoded) => decoded,
        Err(e) => {
            assert_eq!(verify(key, text, 1_400_000_000, "administrator", 0), Err(e));
            return;
        }
    };
    match verify(
        key,
        text,
        decoded.sdkappid,
        &decoded.identifier,
        decoded.time,
    ) {
        Ok(verified) => {
            assert_eq!(verified, decoded, "verify and decode read different fields");
            let expected = signature(
                key,
                &decoded.identifier,
                decoded.sdkappid,
                decoded.time,
                decoded.expire,
            );
            assert_eq!(
                decoded.sig, expected,
                "verified, yet not the signature we compute"
            );
        }
        Err(UserSigError::BadSignature) => {}
        Err(other) => panic!("a decodable UserSig checked against its own fields: {other:?}"),
    }
    let other_app = decoded.sdkappid.wrapping_add(1);
    assert!(matches!(
        verify(key, text, other_app, &decoded.identifier, decoded.time),
        Err(UserSigError::SdkAppIdMismatch { .. })
    ));
}

fn check_round_trip(key: &SecretKey, data: &[u8]) {
    let word = |i: usize| {
        let mut bytes = [0u8; 8];
        let chunk = data.get(i * 8..).unwrap_or_default();
        let n = chunk.len().min(8);
        bytes[..n].copy_from_slice(&chunk[..n]);
        u64::from_le_bytes(bytes)
    };
    let (sdkappid, time, expire) = (word(0), word(1), word(2));
    let mut identifier = String::from_utf8_lossy(data.get(24..).unwrap_or_default()).into_owned();
    if identifier.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !identifier.is_char_boundary(end) {
            end -= 1;
        }
        identifier.truncate(end);
    }

    let usersig = mint(key, sdkappid, &identifier, time, expire);
    let minted = usersig.expose();
    let expires_at = time.saturating_add(expire);
    for now in [time, expires_at] {
        let verified = verify(key, minted, sdkappid, &identifier, now)
            .unwrap_or_else(|e| panic!("a freshly minted UserSig fails at {now}: {e:?}"));
        assert_eq!(
            (
                verified.sdkappid,
                verified.identifier.as_str(),
                verified.time,
                verified.expire
            ),
            (sdkappid, identifier.as_str(), time, expire)
        );
    }
    if let Some(after) = expires_at.checked_add(1) {
        assert_eq!(
            verify(key, minted, sdkappid, &identifier, after),
            Err(UserSigError::Expired {
                expired_at: expires_at
            })
        );
    }
    assert_eq!(
        verify(
            &SecretKey::new("another key"),
            minted,
            sdkappid,
            &identifier,
            time
        ),
        Err(UserSigError::BadSignature)
    );
}
