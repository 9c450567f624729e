//! Per-app admin UserSig: minted at start, reused, re-minted before it expires.
//!
//! Invariant: [`Signer::current`] never hands out a UserSig past 80% of its lifetime, by
//! either clock: the monotonic one (tokio time, pausable in tests) or the wall clock Tencent
//! checks `TLS.time + TLS.expire` against. A wall-clock step (suspend/resume, an NTP step)
//! therefore re-mints at once instead of leaving an expired UserSig in use (issue 7, F4). Re-minting
//! happens on the request path (it costs microseconds: one HMAC and a small zlib), under a
//! mutex with a second check, so a crowd of callers re-mints once, not once each. A UserSig
//! Tencent rejected (70001/70052) is replaced once per rejected generation, however many
//! requests saw the rejection.
//!
//! Metrics owned here, read at scrape time by [`UserSigCollector`]:
//! `usersig_mints_total{reason}` and `usersig_expiry_timestamp_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::time::Instant;

use crate::usersig::{self, SecretKey, UserSig};

/// Fraction of the lifetime after which a UserSig is replaced.
const REFRESH_AT_FRACTION: f64 = 0.8;

/// Why a UserSig was minted (a metric label in the operations work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintReason {
    Startup = 0,
    Schedule = 1,
    Rejected = 2,
    /// The secret key changed on disk (`Signer::rotate_key`).
    KeyRotated = 3,
    /// A reload changed the identifier or the lifetime (`Signer::update`).
    Reloaded = 4,
}

/// One minted UserSig and when to replace it.
#[derive(Debug)]
pub struct Minted {
    pub usersig: UserSig,
    /// The admin account it was minted for.
    pub identifier: Arc<str>,
    /// Increases by one with every mint; identifies the UserSig a rejection refers to.
    pub generation: u64,
    /// Unix second after which Tencent calls it expired.
    pub expires_at_unix: u64,
    pub reason: MintReason,
    refresh_at: Instant,
    /// Unix second at which the wall clock says 80% of the lifetime has passed.
    refresh_at_unix: u64,
}

/// Seconds since the Unix epoch, as the signer reads them; replaceable in tests.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The admin UserSig of one app.
pub struct Signer {
    sdkappid: u64,
    /// Read only while minting (under `mint_lock`); replaced by [`Signer::rotate_key`] and
    /// [`Signer::update`].
    credentials: Mutex<Credentials>,
    /// The UserSig in use; readers clone the `Arc` and drop the lock at once.
    current: RwLock<Arc<Minted>>,
    /// Held while minting, so concurrent callers that all see a due refresh mint once.
    mint_lock: Mutex<()>,
    /// Mints so far by reason (startup, schedule, rejected, key rotated), for tests and metrics.
    mints: [AtomicU64; 5],
    /// The wall clock: [`unix_now`] outside tests.
    wall_clock: WallClock,
}

/// What a UserSig is minted from.
#[derive(Clone)]
struct Credentials {
    key: SecretKey,
    identifier: Arc<str>,
    lifetime: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = self.credentials();
        f.debug_struct("Signer")
            .field("sdkappid", &self.sdkappid)
            .field("identifier", &credentials.identifier)
            .field("lifetime", &credentials.lifetime)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    /// Mints the first UserSig at once. `lifetime` is rounded down to whole seconds (min 1 s).
    pub fn new(sdkappid: u64, identifier: String, key: SecretKey, lifetime: Duration) -> Self {
        Self::with_wall_clock(sdkappid, identifier, key, lifetime, Arc::new(unix_now))
    }

    /// As [`Signer::new`], reading the wall clock from `wall_clock` (tests step it).
    pub fn with_wall_clock(
        sdkappid: u64,
        identifier: String,
        key: SecretKey,
        lifetime: Duration,
        wall_clock: WallClock,
    ) -> Self {
        let credentials = Credentials {
            key,
            identifier: identifier.into(),
            lifetime: Duration::from_secs(lifetime.as_secs().max(1)),
        };
        let first = Self::mint_with(&credentials, sdkappid, 1, MintReason::Startup, wall_clock());
        Signer {
            sdkappid,
            credentials: Mutex::new(credentials),
            current: RwLock::new(Arc::new(first)),
            mint_lock: Mutex::new(()),
            mints: [
                AtomicU64::new(1),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            wall_clock,
        }
    }

    fn credentials(&self) -> std::sync::MutexGuard<'_, Credentials> {
        self.credentials.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint_with(
        credentials: &Credentials,
        sdkappid: u64,
        generation: u64,
        reason: MintReason,
        now: u64,
    ) -> Minted {
        let Credentials {
            key,
            identifier,
            lifetime,
        } = credentials;
        let expire = lifetime.as_secs();
        let refresh_after = lifetime.mul_f64(REFRESH_AT_FRACTION);
        Minted {
            usersig: usersig::mint(key, sdkappid, identifier, now, expire),
            identifier: Arc::clone(identifier),
            generation,
            expires_at_unix: now + expire,
            reason,
            refresh_at: Instant::now() + refresh_after,
            refresh_at_unix: now + refresh_after.as_secs(),
        }
    }

    /// Whether `minted` is past its refresh point by either clock.
    fn is_due(&self, minted: &Minted) -> bool {
        Instant::now() >= minted.refresh_at || (self.wall_clock)() >= minted.refresh_at_unix
    }

    /// Whether the UserSig in use (re-minted first if due) is valid by the wall clock now:
    /// what `/readyz` reports.
    pub fn is_valid_now(&self) -> bool {
        self.current().expires_at_unix > (self.wall_clock)()
    }

    pub fn sdkappid(&self) -> u64 {
        self.sdkappid
    }

    pub fn identifier(&self) -> Arc<str> {
        Arc::clone(&self.credentials().identifier)
    }

    /// How many UserSigs this signer has minted, the first included.
    pub fn mints(&self) -> u64 {
        self.mints_by_reason().iter().sum()
    }

    /// Mints so far, by [`MintReason`] in the order startup, schedule, rejected, key rotated,
    /// reloaded.
    pub fn mints_by_reason(&self) -> [u64; 5] {
        self.mints.each_ref().map(|m| m.load(Ordering::Relaxed))
    }

    fn snapshot(&self) -> Arc<Minted> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The UserSig to use now, re-minted first if it is past its refresh point.
    pub fn current(&self) -> Arc<Minted> {
        let minted = self.snapshot();
        if !self.is_due(&minted) {
            return minted;
        }
        self.replace_if(|current| self.is_due(current), MintReason::Schedule)
    }

    /// Replaces the UserSig of `rejected_generation` after Tencent refused it (70001/70052).
    /// If another caller already replaced it, returns that newer one without minting again.
    pub fn remint_after_rejection(&self, rejected_generation: u64) -> Arc<Minted> {
        self.replace_if(
            |current| current.generation == rejected_generation,
            MintReason::Rejected,
        )
    }

    /// A new secret key (a rotated key file): if it differs from the one in use, it replaces
    /// it and a UserSig is minted with it at once, so the next call is signed with the new key.
    /// Returns whether the key changed.
    pub fn rotate_key(&self, key: SecretKey) -> bool {
        {
            let mut current = self.credentials();
            if current.key.expose() == key.expose() {
                return false;
            }
            current.key = key;
        }
        self.replace_if(|_| true, MintReason::KeyRotated);
        true
    }

    /// A reloaded identifier and lifetime: if either differs, a UserSig is minted with them at
    /// once. Returns whether anything changed.
    pub fn update(&self, identifier: &str, lifetime: Duration) -> bool {
        let lifetime = Duration::from_secs(lifetime.as_secs().max(1));
        {
            let mut current = self.credentials();
            if &*current.identifier == identifier && current.lifetime == lifetime {
                return false;
            }
            current.identifier = identifier.into();
            current.lifetime = lifetime;
        }
        self.replace_if(|_| true, MintReason::Reloaded);
        true
    }

    fn replace_if(&self, is_due: impl Fn(&Minted) -> bool, reason: MintReason) -> Arc<Minted> {
        let _minting = self.mint_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Second check under the lock: whoever got here first has already minted.
        let current = self.snapshot();
        if !is_due(&current) {
            return current;
        }
        let credentials = self.credentials().clone();
        let next = Arc::new(Self::mint_with(
            &credentials,
            self.sdkappid,
            current.generation + 1,
            reason,
            (self.wall_clock)(),
        ));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&next);
        self.mints[reason as usize].fetch_add(1, Ordering::Relaxed);
        next
    }
}

/// `usersig_mints_total` by reason and `usersig_expiry_timestamp_seconds`, read from the
/// signers when `/metrics` is scraped. Reading calls [`Signer::current`], not a peek: a scrape
/// re-mints a UserSig past 80% of its lifetime, so an idle gateway's expiry (and its alert)
/// stays truthful.
pub struct UserSigCollector {
    /// App name and its signer.
    signers: Vec<(String, Arc<Signer>)>,
    mints: IntCounterVec,
    expiry: IntGaugeVec,
    /// One scrape at a time: the counters catch up with the signers by difference, which two
    /// concurrent scrapes would both add.
    scrape: Mutex<()>,
}

impl UserSigCollector {
    /// # Errors
    /// A metric name is invalid (a bug).
    pub fn new(signers: Vec<(String, Arc<Signer>)>) -> prometheus::Result<Self> {
        Ok(UserSigCollector {
            signers,
            mints: IntCounterVec::new(
                Opts::new("usersig_mints_total", "Admin UserSigs minted, by reason."),
                &["app", "reason"],
            )?,
            expiry: IntGaugeVec::new(
                Opts::new(
                    "usersig_expiry_timestamp_seconds",
                    "Unix time at which the current admin UserSig expires.",
                ),
                &["app"],
            )?,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for UserSigCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.mints.desc(), self.expiry.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for (app, signer) in &self.signers {
            let minted = signer.current();
            for (reason, total) in ["startup", "schedule", "rejected", "key_rotated", "reloaded"]
                .iter()
                .zip(signer.mints_by_reason())
            {
                let counter = self.mints.with_label_values(&[app.as_str(), reason]);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            self.expiry
                .with_label_values(&[app.as_str()])
                .set(i64::try_from(minted.expires_at_unix).unwrap_or(i64::MAX));
        }
        [self.mints.collect(), self.expiry.collect()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(lifetime: Duration) -> Signer {
        Signer::new(
            1_400_000_000,
            "administrator".into(),
            SecretKey::new("test-key"),
            lifetime,
        )
    }

    /// The UserSig is reused until 80% of its lifetime, then re-minted once.
    #[tokio::test(start_paused = true)]
    async fn reminted_at_eighty_percent_of_lifetime() {
        let signer = signer(Duration::from_secs(100));
        let first = signer.current();
        assert_eq!(first.reason, MintReason::Startup);
        tokio::time::advance(Duration::from_secs(79)).await;
        assert_eq!(signer.current().generation, first.generation);
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = signer.current();
        assert_eq!(second.generation, first.generation + 1);
        assert_eq!(second.reason, MintReason::Schedule);
        assert_eq!(signer.current().generation, second.generation);
        assert_eq!(signer.mints(), 2);
        let decoded = usersig::verify(
            &SecretKey::new("test-key"),
            second.usersig.expose(),
            1_400_000_000,
            "administrator",
            unix_now(),
        )
        .expect("the re-minted UserSig verifies");
        assert_eq!(decoded.expire, 100);
    }

    /// Reproduces issue 7, F4: a wall-clock step forward re-mints once 80% of the lifetime
    /// has passed by the wall clock, even though the monotonic clock has not moved, and a
    /// step past expiry makes the UserSig invalid only until the next `current()`.
    #[tokio::test(start_paused = true)]
    async fn wall_clock_step_remints() {
        let wall = Arc::new(AtomicU64::new(1_700_000_000));
        let clock: WallClock = {
            let wall = Arc::clone(&wall);
            Arc::new(move || wall.load(Ordering::SeqCst))
        };
        let signer = Signer::with_wall_clock(
            1_400_000_000,
            "administrator".into(),
            SecretKey::new("test-key"),
            Duration::from_secs(100),
            clock,
        );
        let first = signer.current();
        assert_eq!(first.expires_at_unix, 1_700_000_100);
        // 79 s by the wall clock: still the first UserSig.
        wall.fetch_add(79, Ordering::SeqCst);
        assert_eq!(signer.current().generation, first.generation);
        // 80 s by the wall clock, 0 s by the monotonic one: re-minted, with the new time.
        wall.fetch_add(1, Ordering::SeqCst);
        let second = signer.current();
        assert_eq!(second.generation, first.generation + 1);
        assert_eq!(second.reason, MintReason::Schedule);
        assert_eq!(second.expires_at_unix, 1_700_000_180);
        // A suspend of three hours: expired by the wall clock, re-minted on the next check.
        wall.fetch_add(3 * 3600, Ordering::SeqCst);
        assert!(signer.is_valid_now());
        assert_eq!(signer.current().generation, second.generation + 1);
        assert_eq!(signer.mints(), 3);
    }

    /// Many callers reporting the same rejected UserSig cause one mint, not one each.
    #[test]
    fn rejection_remints_once_per_generation() {
        let signer = Arc::new(signer(Duration::from_secs(3600)));
        let rejected = signer.current().generation;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let signer = Arc::clone(&signer);
                std::thread::spawn(move || signer.remint_after_rejection(rejected).generation)
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), rejected + 1);
        }
        assert_eq!(signer.mints(), 2);
        assert_eq!(signer.current().reason, MintReason::Rejected);
    }

    /// A new key replaces the old one and mints at once with it; the same key again is no
    /// rotation and mints nothing.
    #[test]
    fn a_rotated_key_mints_at_once_with_the_new_key() {
        let signer = Signer::new(
            1_400_000_000,
            "admin".into(),
            SecretKey::new("old-key"),
            Duration::from_secs(86_400),
        );
        assert!(!signer.rotate_key(SecretKey::new("old-key\n")));
        assert_eq!(signer.mints_by_reason(), [1, 0, 0, 0, 0]);
        assert!(signer.rotate_key(SecretKey::new("new-key")));
        assert_eq!(signer.mints_by_reason(), [1, 0, 0, 1, 0]);
        let minted = signer.current();
        assert_eq!(minted.reason, MintReason::KeyRotated);
        assert_eq!(minted.generation, 2);
        let now = unix_now();
        let verify = |key: &str| {
            usersig::verify(
                &SecretKey::new(key),
                minted.usersig.expose(),
                1_400_000_000,
                "admin",
                now,
            )
        };
        assert!(verify("new-key").is_ok());
        assert!(verify("old-key").is_err());
    }
}
