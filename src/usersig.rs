//! TLSSigAPIv2 UserSigs: mint and verify, exactly as reference §3 describes.
//!
//! Pure functions, no I/O and no clock: callers pass the time in, so tests can use the known
//! answers of the reference and verify fixtures minted years ago. A [`UserSig`] and a
//! [`SecretKey`] never print their contents (`Debug` is redacted, there is no `Display`).

use std::fmt;
use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Largest inflated UserSig JSON we accept; real ones are about 200 bytes. Guards against a
/// zlib bomb handed to the sandbox or to `verify`.
const MAX_INFLATED_BYTES: u64 = 16 * 1024;

/// An app's secret key. Used as its UTF-8 bytes, never hex-decoded (reference §3 step 2).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key, trimming surrounding whitespace (a key file usually ends with a newline).
    pub fn new(key: impl Into<String>) -> Self {
        let key: String = key.into();
        let trimmed = key.trim();
        if trimmed.len() == key.len() {
            SecretKey(key)
        } else {
            SecretKey(trimmed.to_owned())
        }
    }

    /// The key's bytes, for HMAC and for checks that a log line does not contain it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A minted UserSig, in its URL-safe wire form. Cloning shares it (each signed call holds one).
#[derive(Clone, PartialEq, Eq)]
pub struct UserSig(std::sync::Arc<str>);

impl UserSig {
    /// The wire form, to put in an upstream query string and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserSig(<redacted>)")
    }
}

/// Why a UserSig failed to decode or verify. One variant per cause; none carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserSigError {
    #[error("the UserSig is empty")]
    Empty,
    #[error("the UserSig is not in Tencent's base64 alphabet")]
    BadEncoding,
    #[error("the UserSig does not inflate as a zlib stream")]
    BadCompression,
    #[error("the UserSig's JSON is malformed")]
    BadJson,
    #[error("the UserSig's JSON lacks the field {0}")]
    MissingField(&'static str),
    #[error("the UserSig has version {0:?}, only \"2.0\" is supported")]
    UnsupportedVersion(String),
    #[error("the UserSig was minted for sdkappid {found}, not {expected}")]
    SdkAppIdMismatch { expected: u64, found: u64 },
    #[error("the UserSig was minted for another identifier")]
    IdentifierMismatch,
    #[error("the UserSig expired at unix time {expired_at}")]
    Expired { expired_at: u64 },
    #[error("the UserSig's signature does not match the key")]
    BadSignature,
}

/// The fields of a decoded UserSig (reference §3 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub identifier: String,
    pub sdkappid: u64,
    /// Unix seconds when it was minted.
    pub time: u64,
    /// Lifetime in seconds, relative to `time`.
    pub expire: u64,
    /// Base64 HMAC-SHA256, as carried in `TLS.sig`.
    pub sig: String,
}

impl Decoded {
    /// Unix second after which Tencent calls it expired (`now > time + expire`).
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

#[derive(Serialize)]
struct SigJsonOut<'a> {
    #[serde(rename = "TLS.ver")]
    ver: &'static str,
    #[serde(rename = "TLS.identifier")]
    identifier: &'a str,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.sig")]
    sig: &'a str,
}

#[derive(Deserialize)]
struct SigJsonIn {
    #[serde(rename = "TLS.ver")]
    ver: Option<String>,
    #[serde(rename = "TLS.identifier")]
    identifier: Option<String>,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: Option<u64>,
    #[serde(rename = "TLS.expire")]
    expire: Option<u64>,
    #[serde(rename = "TLS.time")]
    time: Option<u64>,
    #[serde(rename = "TLS.sig")]
    sig: Option<String>,
}

fn content(identifier: &str, sdkappid: u64, time: u64, expire: u64) -> String {
    format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    )
}

fn mac(key: &SecretKey, identifier: &str, sdkappid: u64, time: u64, expire: u64) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(content(identifier, sdkappid, time, expire).as_bytes());
    mac
}

/// `TLS.sig`: standard base64 of HMAC-SHA256(key, content) (reference §3 steps 1–2).
pub fn signature(
    key: &SecretKey,
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
) -> String {
    STANDARD.encode(
        mac(key, identifier, sdkappid, time, expire)
            .finalize()
            .into_bytes(),
    )
}

/// Mints a UserSig for `identifier` valid from unix second `time` for `expire` seconds.
pub fn mint(key: &SecretKey, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> UserSig {
    let sig = signature(key, identifier, sdkappid, time, expire);
    let json = serde_json::to_vec(&SigJsonOut {
        ver: "2.0",
        identifier,
        sdkappid,
        expire,
        time,
        sig: &sig,
    })
    .expect("a struct of strings and integers always serialises");
    let mut zlib = ZlibEncoder::new(Vec::with_capacity(json.len()), Compression::default());
    zlib.write_all(&json).expect("writing to a Vec cannot fail");
    let compressed = zlib.finish().expect("writing to a Vec cannot fail");
    UserSig(to_tencent_alphabet(STANDARD.encode(compressed)).into())
}

/// Standard base64 → Tencent's URL-safe variant (`+`→`*`, `/`→`-`, `=`→`_`).
fn to_tencent_alphabet(b64: String) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

/// Decodes a UserSig's fields without checking its signature.
///
/// # Errors
/// Every way the string can be malformed has its own [`UserSigError`] variant.
pub fn decode(usersig: &str) -> Result<Decoded, UserSigError> {
    if usersig.is_empty() {
        return Err(UserSigError::Empty);
    }
    let mut standard = Vec::with_capacity(usersig.len());
    for byte in usersig.bytes() {
        standard.push(match byte {
            b'*' => b'+',
            b'-' => b'/',
            b'_' => b'=',
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => byte,
            _ => return Err(UserSigError::BadEncoding),
        });
    }
    let compressed = STANDARD
        .decode(&standard)
        .map_err(|_| UserSigError::BadEncoding)?;
    let mut json = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|_| UserSigError::BadCompression)?;
    if json.len() as u64 > MAX_INFLATED_BYTES {
        return Err(UserSigError::BadCompression);
    }
    let parsed: SigJsonIn = serde_json::from_slice(&json).map_err(|_| UserSigError::BadJson)?;
    let ver = parsed.ver.ok_or(UserSigError::MissingField("TLS.ver"))?;
    if ver != "2.0" {
        return Err(UserSigError::UnsupportedVersion(ver));
    }
    Ok(Decoded {
        identifier: parsed
            .identifier
            .ok_or(UserSigError::MissingField("TLS.identifier"))?,
        sdkappid: parsed
            .sdkappid
            .ok_or(UserSigError::MissingField("TLS.sdkappid"))?,
        time: parsed.time.ok_or(UserSigError::MissingField("TLS.time"))?,
        expire: parsed
            .expire
            .ok_or(UserSigError::MissingField("TLS.expire"))?,
        sig: parsed.sig.ok_or(UserSigError::MissingField("TLS.sig"))?,
    })
}

/// Verifies a UserSig as Tencent does (reference §3, "Verifying"): decode, check sdkappid and
/// identifier, check expiry against `now` (unix seconds), then the HMAC in constant time.
///
/// # Errors
/// The first check that fails, as its own [`UserSigError`] variant.
pub fn verify(
    key: &SecretKey,
    usersig: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<Decoded, UserSigError> {
    let decoded = decode(usersig)?;
    if decoded.sdkappid != sdkappid {
        return Err(UserSigError::SdkAppIdMismatch {
            expected: sdkappid,
            found: decoded.sdkappid,
        });
    }
    if decoded.identifier != identifier {
        return Err(UserSigError::IdentifierMismatch);
    }
    if now > decoded.expires_at() {
        return Err(UserSigError::Expired {
            expired_at: decoded.expires_at(),
        });
    }
    let claimed = STANDARD
        .decode(decoded.sig.as_bytes())
        .map_err(|_| UserSigError::BadSignature)?;
    mac(
        key,
        &decoded.identifier,
        decoded.sdkappid,
        decoded.time,
        decoded.expire,
    )
    .verify_slice(&claimed)
    .map_err(|_| UserSigError::BadSignature)?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    fn key() -> SecretKey {
        SecretKey::new(KEY)
    }

    /// The three known answers of reference §3: content → `TLS.sig`, byte for byte.
    #[test]
    fn signature_matches_known_answers() {
        let rows = [
            (
                "xiaojun",
                1_400_000_000,
                1_700_000_000,
                15_552_000,
                "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=",
            ),
            (
                "administrator",
                1_400_000_000,
                1_700_000_000,
                86_400,
                "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60=",
            ),
            (
                "admin",
                1_400_000_001,
                1_600_000_000,
                3_600,
                "qMw1pje1i4s5GS++l0EkCgUHJ7PhufrnAtvKOa3JJS8=",
            ),
        ];
        for (identifier, sdkappid, time, expire, expected) in rows {
            assert_eq!(
                signature(&key(), identifier, sdkappid, time, expire),
                expected,
                "{identifier}"
            );
        }
    }

    const FIXTURE_ROW1_A: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__";
    const FIXTURE_ROW1_B: &str = "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwhWZiflZpXlQqeKU7MSCgswUJStDEwMogMiUZOamKlkZmqOKplYUZBaBxE1NTY3gosWZ6UpWSj5ljuYp*p7l5unBxXnF2WVhVU4uAf7Ozi5JpX7O5SbuHuUhzgZJmQXaTia2SrUAohcx8g__";
    const FIXTURE_ROW3: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-NgUsUp2YkFBZkpQAlDEwMIMITKpVYUZBalAmWMzQwMoGIlmbkgEUMzqFqYeHFmOsjsQt9yw4KsVMNMk2JT92Bt7RwD12zn9FAPL-OAjNK0ojzHkjJv-0RjL69gC1ulWgDLcjFw";

    /// The official libraries' UserSigs decode and verify, including the one with `*` and the
    /// one whose length needs no `_` padding.
    #[test]
    fn official_fixtures_decode_and_verify() {
        let cases = [
            (
                FIXTURE_ROW1_A,
                "xiaojun",
                1_400_000_000,
                1_700_000_000,
                15_552_000,
            ),
            (
                FIXTURE_ROW1_B,
                "xiaojun",
                1_400_000_000,
                1_700_000_000,
                15_552_000,
            ),
            (FIXTURE_ROW3, "admin", 1_400_000_001, 1_600_000_000, 3_600),
        ];
        assert!(FIXTURE_ROW1_B.contains('*'));
        assert!(!FIXTURE_ROW3.ends_with('_') && FIXTURE_ROW3.len().is_multiple_of(4));
        for (sig, identifier, sdkappid, time, expire) in cases {
            let decoded = verify(&key(), sig, sdkappid, identifier, time + 1)
                .unwrap_or_else(|e| panic!("{identifier}: {e}"));
            assert_eq!(
                decoded,
                Decoded {
                    identifier: identifier.to_owned(),
                    sdkappid,
                    time,
                    expire,
                    sig: signature(&key(), identifier, sdkappid, time, expire),
                }
            );
        }
    }

    /// What we mint round-trips through our verifier and uses only the URL-safe alphabet.
    #[test]
    fn minted_usersig_verifies() {
        let sig = mint(
            &key(),
            1_400_000_000,
            "administrator",
            1_700_000_000,
            86_400,
        );
        assert!(sig
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"*-_".contains(&b)));
        let decoded = verify(
            &key(),
            sig.expose(),
            1_400_000_000,
            "administrator",
            1_700_000_000 + 86_400,
        )
        .expect("verifies at its last valid second");
        assert_eq!(decoded.expires_at(), 1_700_086_400);
    }

    /// Each way of being wrong is reported as its own variant, never as a panic.
    #[test]
    fn verify_rejects_each_fault_with_its_own_error() {
        let good = mint(
            &key(),
            1_400_000_000,
            "administrator",
            1_700_000_000,
            86_400,
        );
        let good = good.expose();
        let now = 1_700_000_100;
        let zlib = |bytes: &[u8]| {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(bytes).unwrap();
            to_tencent_alphabet(STANDARD.encode(enc.finish().unwrap()))
        };
        let no_sig = zlib(
            br#"{"TLS.ver":"2.0","TLS.identifier":"administrator","TLS.sdkappid":1400000000,"TLS.expire":86400,"TLS.time":1700000000}"#,
        );
        let old_version = zlib(
            br#"{"TLS.ver":"1.0","TLS.identifier":"administrator","TLS.sdkappid":1400000000,"TLS.expire":86400,"TLS.time":1700000000,"TLS.sig":"x"}"#,
        );
        let not_json = zlib(b"not json");
        let cases: Vec<(&str, SecretKey, &str, u64, &str, u64, UserSigError)> = vec![
            (
                "wrong key",
                SecretKey::new("another-key"),
                good,
                1_400_000_000,
                "administrator",
                now,
                UserSigError::BadSignature,
            ),
            (
                "wrong sdkappid",
                key(),
                good,
                1_400_000_001,
                "administrator",
                now,
                UserSigError::SdkAppIdMismatch {
                    expected: 1_400_000_001,
                    found: 1_400_000_000,
                },
            ),
            (
                "wrong identifier",
                key(),
                good,
                1_400_000_000,
                "admin",
                now,
                UserSigError::IdentifierMismatch,
            ),
            (
                "expired",
                key(),
                good,
                1_400_000_000,
                "administrator",
                1_700_086_401,
                UserSigError::Expired {
                    expired_at: 1_700_086_400,
                },
            ),
            (
                "empty",
                key(),
                "",
                1_400_000_000,
                "administrator",
                now,
                UserSigError::Empty,
            ),
            (
                "bad alphabet",
                key(),
                "eJyr+Vgr/",
                1_400_000_000,
                "administrator",
                now,
                UserSigError::BadEncoding,
            ),
            (
                "bad base64 length",
                key(),
                "eJyrV",
                1_400_000_000,
                "administrator",
                now,
                UserSigError::BadEncoding,
            ),
            (
                "not zlib",
                key(),
                "aGVsbG8gd29ybGQ_",
                1_400_000_000,
                "administrator",
                now,
                UserSigError::BadCompression,
            ),
            (
                "not json",
                key(),
                &not_json,
                1_400_000_000,
                "administrator",
                now,
                UserSigError::BadJson,
            ),
            (
                "missing field",
                key(),
                &no_sig,
                1_400_000_000,
                "administrator",
                now,
                UserSigError::MissingField("TLS.sig"),
            ),
            (
                "old version",
                key(),
                &old_version,
                1_400_000_000,
                "administrator",
                now,
                UserSigError::UnsupportedVersion("1.0".into()),
            ),
        ];
        for (name, key, sig, sdkappid, identifier, now, expected) in cases {
            assert_eq!(
                verify(&key, sig, sdkappid, identifier, now),
                Err(expected),
                "{name}"
            );
        }
    }

    /// A zlib bomb is refused instead of inflated without bound.
    #[test]
    fn oversized_inflation_is_refused() {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&vec![b' '; 1 << 20]).unwrap();
        let bomb = to_tencent_alphabet(STANDARD.encode(enc.finish().unwrap()));
        assert_eq!(decode(&bomb), Err(UserSigError::BadCompression));
    }

    /// Neither a key nor a UserSig shows its contents through `Debug`.
    #[test]
    fn secrets_are_redacted_in_debug() {
        let sig = mint(&key(), 1, "a", 2, 3);
        assert_eq!(format!("{sig:?}"), "UserSig(<redacted>)");
        assert_eq!(format!("{:?}", key()), "SecretKey(<redacted>)");
        assert_eq!(SecretKey::new("  k\n").expose(), "k");
    }
}
