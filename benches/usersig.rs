//! UserSig mint and verify: the signer re-mints on the request path, so this must stay in
//! the microseconds.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tim_gateway::usersig::{mint, verify, SecretKey};

const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn usersig(c: &mut Criterion) {
    let key = SecretKey::new(KEY);
    c.bench_function("usersig_mint", |b| {
        b.iter(|| {
            mint(
                black_box(&key),
                1_400_000_000,
                black_box("administrator"),
                1_700_000_000,
                86_400,
            )
        })
    });
    let sig = mint(&key, 1_400_000_000, "administrator", 1_700_000_000, 86_400);
    c.bench_function("usersig_verify", |b| {
        b.iter(|| {
            verify(
                &key,
                black_box(sig.expose()),
                1_400_000_000,
                "administrator",
                1_700_000_001,
            )
        })
    });
}

criterion_group!(benches, usersig);
criterion_main!(benches);
