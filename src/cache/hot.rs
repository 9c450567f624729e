//! Each thread's recent fresh hits, in front of moka.
//!
//! A moka read costs about 2,000 instructions of a ~19,000-instruction cache hit (SipHash over
//! the key, recording the read for its eviction policy, and the housekeeping those records
//! trigger). A key answered again and again on the same worker thread finds its entry here
//! instead: in a slot picked by a cheap hash of the key, compared in full. The slot's entry is
//! served only when all of these hold, so nothing is served that moka's own lookup would not:
//! - same cache (tests build several) and an equal key;
//! - its generation is the pair's current one (no invalidation since it was stored);
//! - moka has not let it go (moka's eviction listener marks an entry evicted, expired,
//!   invalidated or replaced; from then on no slot serves it);
//! - it is fresh at `now`. Stale and missing entries take moka's path.
//!
//! Every [`SAMPLE`]th hit of a slot is also read from moka ([`Found::Sampled`]), so that moka's
//! eviction policy keeps seeing the key's reads (a fixed fraction of them, the same for every
//! key). The slot's entry is still the answer: the checks above already make it one moka
//! would serve.
//!
//! Memory: only answers up to [`MAX_BODY_BYTES`] are kept, in [`SLOTS`] slots per thread. An
//! entry moka let go is released when its slot is next looked at, so at most
//! `SLOTS × MAX_BODY_BYTES` (1 MiB) per worker thread can outlive moka's bound.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{CacheKey, Cached};

/// Slots per thread.
pub const SLOTS: usize = 64;

/// One hit in this many of a slot goes to moka.
pub const SAMPLE: u32 = 16;

/// Larger answers are only kept by moka.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

struct Slot {
    /// Which cache stored it ([`super::ResponseCache`]'s id).
    cache: u64,
    key: CacheKey,
    entry: Arc<Cached>,
    /// Hits served from this slot; every `SAMPLE`th goes to moka.
    hits: u32,
}

thread_local! {
    static HOT: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// The slot of `key`: the top bits of an Fx hash. A direct-mapped table has no chains, so
/// colliding keys only take each other's slot (no flooding concern).
fn slot_of(key: &CacheKey) -> usize {
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    (hasher.finish() >> (u64::BITS - SLOTS.trailing_zeros())) as usize
}

/// A slot's entry, and whether this hit is one moka should see too.
pub enum Found {
    Served(Arc<Cached>),
    /// Every [`SAMPLE`]th hit: read the key from moka as well.
    Sampled(Arc<Cached>),
}

/// This thread's entry for `key`, if moka would serve it as fresh at `now` (see the module).
pub fn get(
    cache: u64,
    key: &CacheKey,
    generation: u64,
    ttl: Duration,
    now: Instant,
) -> Option<Found> {
    HOT.try_with(|slots| {
        let mut slots = slots.try_borrow_mut().ok()?;
        let held = &mut slots[slot_of(key)];
        let slot = held.as_mut()?;
        if slot.cache != cache || slot.key != *key {
            return None;
        }
        let is_current = slot.entry.generation == generation
            && !slot
                .entry
                .is_evicted
                .load(std::sync::atomic::Ordering::Acquire)
            && slot.entry.age(now) < ttl;
        if !is_current {
            *held = None;
            return None;
        }
        slot.hits = slot.hits.wrapping_add(1);
        let entry = Arc::clone(&slot.entry);
        Some(if slot.hits.is_multiple_of(SAMPLE) {
            Found::Sampled(entry)
        } else {
            Found::Served(entry)
        })
    })
    .ok()
    .flatten()
}

/// Keeps `entry`, just served fresh by moka for `key`, in this thread's slot for it.
pub fn put(cache: u64, key: &CacheKey, entry: &Arc<Cached>) {
    if entry.body.len() > MAX_BODY_BYTES {
        return;
    }
    let _ = HOT.try_with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        let held = &mut slots[slot_of(key)];
        if let Some(slot) = held {
            if slot.cache == cache && Arc::ptr_eq(&slot.entry, entry) {
                return;
            }
        }
        *held = Some(Slot {
            cache,
            key: key.clone(),
            entry: Arc::clone(entry),
            hits: 0,
        });
    });
}
