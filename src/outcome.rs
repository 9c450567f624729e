//! What Tencent's `ErrorCode` means to the gateway (reference §6): one closed set of
//! outcomes that the budgets (the limiter) and the retry decision (`proxy::call`) act on.

/// How Tencent's ErrorCode shapes what happens next (reference §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 70001/70052: re-mint the UserSig and retry once.
    UserSigExpired,
    /// Internal error or timeout on Tencent's side: bounded retries for reads.
    Retryable,
    /// 60007/60018/60019: this command backs off.
    FrequencyLimited,
    /// 60011: the whole app backs off.
    AppFrequencyLimited,
    /// 70050: no calls for this app for 60 s.
    LockedOut,
    /// 70003/70005/70009/70013/70014: the UserSig was refused (wrong key, sdkappid or
    /// identifier). Logged loudly, passed through, and the app's calls are spaced out so the
    /// failures do not add up to Tencent's 60 s lockout (70050).
    UserSigRejected,
    /// A configuration or operations fault: log it loudly, pass it through, never retry.
    ConfigError(&'static str),
    /// Anything else (the caller's fault, or command-specific): relayed as it is.
    Other,
}

impl Outcome {
    pub fn of(error_code: i64) -> Outcome {
        match error_code {
            0 => Outcome::Success,
            70001 | 70052 => Outcome::UserSigExpired,
            10002 | 70169 | 70500 | 60008 | 60013 | 60014 => Outcome::Retryable,
            60007 | 60018 | 60019 => Outcome::FrequencyLimited,
            60011 => Outcome::AppFrequencyLimited,
            70050 => Outcome::LockedOut,
            70003 | 70005 | 70009 | 70013 | 70014 => Outcome::UserSigRejected,
            70016 | 70020 => Outcome::ConfigError(
                "Tencent does not know this sdkappid or key here: usually the wrong region's domain",
            ),
            10008 | 60010 | 70403 => Outcome::ConfigError(
                "the configured identifier is not an app admin (or the request is invalid for it)",
            ),
            60006 | 60016 | 60020 | 60021 => Outcome::ConfigError(
                "the SDKAppID is invalid, disabled, out of plan, or this caller's IP is not allowed",
            ),
            _ => Outcome::Other,
        }
    }

    /// A failure for which a stale cached answer beats passing the error on.
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Outcome::Retryable
                | Outcome::FrequencyLimited
                | Outcome::AppFrequencyLimited
                | Outcome::LockedOut
                | Outcome::UserSigRejected
        )
    }
}

/// Tencent ErrorCodes given their own metric label value (reference §6 plus the common
/// parameter errors); any other code is counted as `other`, so labels stay a closed set.
const KNOWN_CODES: &[&str] = &[
    "10002", "10004", "10008", "60002", "60003", "60004", "60006", "60007", "60008", "60009",
    "60010", "60011", "60012", "60013", "60014", "60015", "60016", "60018", "60019", "60020",
    "60021", "70001", "70003", "70005", "70009", "70013", "70014", "70016", "70020", "70050",
    "70052", "70169", "70206", "70402", "70403", "70500", "80001", "80002",
];

/// The codes the alerts on single Tencent codes watch (`deploy/prometheus`): counted in
/// `tencent_signals_total{app,code}` too, whose every (app, code) exists at 0 from the start,
/// so that `increase()` sees a code's very first occurrence.
pub const ALERTED_CODES: &[&str] = &[
    "60006", "60007", "60010", "60011", "60016", "60018", "60019", "60020", "60021", "70003",
    "70005", "70009", "70013", "70014", "70016", "70020", "70050", "70403",
];

/// The metric label of a non-zero ErrorCode: the code itself if known, else `other`.
pub fn code_label(error_code: i64) -> &'static str {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(error_code);
    KNOWN_CODES
        .iter()
        .find(|known| **known == text)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of reference §6 maps to the action the reference prescribes.
    #[test]
    fn outcomes_follow_the_reference_table() {
        let table: &[(&[i64], Outcome)] = &[
            (&[0], Outcome::Success),
            (&[70001, 70052], Outcome::UserSigExpired),
            (
                &[10002, 70169, 70500, 60008, 60013, 60014],
                Outcome::Retryable,
            ),
            (&[60007, 60018, 60019], Outcome::FrequencyLimited),
            (&[60011], Outcome::AppFrequencyLimited),
            (&[70050], Outcome::LockedOut),
            (
                &[10004, 60003, 60015, 70402, 70206, 80001, 80002],
                Outcome::Other,
            ),
        ];
        for (codes, expected) in table {
            for &code in *codes {
                assert_eq!(Outcome::of(code), *expected, "{code}");
            }
        }
        for code in [70003, 70005, 70009, 70013, 70014] {
            assert_eq!(Outcome::of(code), Outcome::UserSigRejected, "{code}");
        }
        for code in [
            70016, 70020, 10008, 60010, 70403, 60006, 60016, 60020, 60021,
        ] {
            assert!(
                matches!(Outcome::of(code), Outcome::ConfigError(_)),
                "{code}"
            );
        }
    }

    /// Known codes are their own label; anything else, negative numbers included, is `other`.
    #[test]
    fn code_labels_are_a_closed_set() {
        assert_eq!(code_label(70009), "70009");
        assert_eq!(code_label(60007), "60007");
        assert_eq!(code_label(12345), "other");
        assert_eq!(code_label(-70009), "other");
    }
}
