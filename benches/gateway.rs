//! The hot path: cache-key canonicalisation and a full cache-hit request through the handler
//! (routing, body check, key, moka lookup, response), without sockets.

use std::collections::HashMap;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;

use tim_gateway::config::{Config, Env};
use tim_gateway::proxy::Proxy;
use tim_gateway::sandbox::{Sandbox, SandboxApp, SandboxOptions};
use tim_gateway::upstream::{UpstreamClient, UpstreamSettings};
use tim_gateway::usersig::SecretKey;

const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn canonicalisation(c: &mut Criterion) {
    let empty = Bytes::from_static(b"{}");
    c.bench_function("cache_key_canonical_empty_object", |b| {
        b.iter(|| tim_gateway::body::canonical(black_box(&empty)))
    });
    let body = Bytes::from_static(
        br#"{"To_Account":["alice","bob","carol"],"TagList":["Tag_Profile_IM_Nick","Tag_Profile_IM_Image"],"Extra":{"b":1,"a":[1,2,3]}}"#,
    );
    c.bench_function("cache_key_canonical_small_object", |b| {
        b.iter(|| tim_gateway::body::canonical(black_box(&body)))
    });
}

/// About 1 MiB of body shaped four ways: the linear-cost promise (issue 7, F1) is that no
/// shape costs more than ~10× the flat one.
fn worst_case_bodies() -> Vec<(&'static str, Vec<u8>)> {
    const SIZE: usize = 1 << 20;
    // Flat: one long string.
    let flat = format!(r#"{{"s":"{}"}}"#, "x".repeat(SIZE - 8)).into_bytes();
    // Deep: 128 levels of arrays around a long string.
    let mut deep = br#"{"a":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 127));
    deep.extend(format!(r#""{}""#, "x".repeat(SIZE - 300)).bytes());
    deep.extend(std::iter::repeat_n(b']', 127));
    deep.push(b'}');
    // Deep and out of order at every level: each object's big member is emitted after a
    // later-sorting small one, so every level is reordered.
    let mut reordered = String::new();
    for _ in 0..127 {
        reordered.push_str(r#"{"z":0,"a":"#);
    }
    reordered.push_str(&format!(r#""{}""#, "x".repeat(SIZE - 1500)));
    reordered.push_str(&"}".repeat(127));
    // Many small members, in reverse order, with escapes.
    let mut keys = String::from("{");
    let mut i = 0;
    while keys.len() < SIZE - 64 {
        if i > 0 {
            keys.push(',');
        }
        keys.push_str(&format!(r#""k{:07}":"\u00e9\n{}""#, 9_999_999 - i, i));
        i += 1;
    }
    keys.push('}');
    vec![
        ("flat", flat),
        ("deep", deep),
        ("deep_reordered", reordered.into_bytes()),
        ("many_keys_reversed", keys.into_bytes()),
    ]
}

fn body_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("body_1mib");
    group.sample_size(20);
    for (name, body) in worst_case_bodies() {
        assert!(tim_gateway::body::validate(&body).is_ok(), "{name}");
        group.bench_function(format!("canonical_{name}"), |b| {
            b.iter(|| tim_gateway::body::canonical(black_box(&body)))
        });
        group.bench_function(format!("validate_{name}"), |b| {
            b.iter(|| tim_gateway::body::validate(black_box(&body)))
        });
    }
    group.finish();
}

/// A proxy in front of a sandbox, with get_all_robots already cached.
fn primed_proxy(runtime: &tokio::runtime::Runtime) -> (Proxy, Sandbox) {
    runtime.block_on(async {
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxOptions {
                apps: vec![SandboxApp {
                    sdkappid: 1_400_000_000,
                    key: SecretKey::new(KEY),
                    admins: vec!["administrator".into()],
                }],
                ..SandboxOptions::default()
            },
        )
        .await
        .unwrap();
        sandbox.add_robot(1_400_000_000, "@RBT#bench");
        let toml = format!(
            "[apps.bench]\nsdkappid = 1400000000\nendpoint = \"{}\"\n[[cache.rules]]\ncommand = \"openim_robot_http_svc/get_all_robots\"\nttl = \"1h\"\n",
            sandbox.endpoint()
        );
        let env = Env::from_map(HashMap::from([(
            "TIM_GATEWAY_SECRET_KEY".to_owned(),
            KEY.to_owned(),
        )]));
        let config = Config::from_toml_str(&toml, &env).unwrap().config;
        let upstream = UpstreamClient::new(&UpstreamSettings {
            connect_timeout: config.upstream.connect_timeout,
            request_timeout: config.upstream.request_timeout,
            pool_idle_timeout: config.upstream.pool_idle_timeout,
            pool_max_idle_per_host: config.upstream.pool_max_idle_per_host,
            extra_ca_pem: Some(sandbox.ca_pem().as_bytes().to_vec()),
            proxy: None,
        })
        .unwrap();
        let proxy = Proxy::new(&config, upstream);
        let primed = proxy.handle(request()).await;
        assert_eq!(primed.headers()["x-cache"], "MISS");
        (proxy, sandbox)
    })
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/v4/openim_robot_http_svc/get_all_robots")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn cache_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, _sandbox) = primed_proxy(&runtime);
    c.bench_function("cache_hit_through_handler", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = proxy.handle(request()).await;
            debug_assert_eq!(response.headers()["x-cache"], "HIT");
            response
        })
    });
}

criterion_group!(benches, canonicalisation, body_cost, cache_hit);
criterion_main!(benches);
