//! tim-gateway: a caching, signing, quota-keeping reverse proxy for Tencent Cloud Chat's REST API.
//!
//! - [`access_log`]: the one line per request, formatted and batched off tracing's path.
//! - [`admin`]: `/healthz`, `/readyz` on the admin listener.
//! - [`body`]: client request bodies: one-pass JSON validation, canonical form, depth limit.
//! - [`cache`]: answer cache: canonical keys, freshness, single flight, invalidation.
//! - [`catalogue`]: the known commands, their access and quotas.
//! - [`cli`]: the subcommands behind the binary.
//! - [`config`]: TOML file + `TIM_GATEWAY__…` env overrides → validated `Config`, all problems at once.
//! - [`error`]: gateway-made errors in Tencent's envelope.
//! - [`gateway`]: assemble and run the proxy and admin listeners; shutdown.
//! - [`limiter`]: the upstream budgets behind one interface, and the policy for Tencent's signals.
//! - [`metrics`]: the Prometheus registry, helpers and the process collector; each concern
//!   registers its own families.
//! - [`origin`]: browser protection: `Host`, `Origin` and `Sec-Fetch-Site` checks.
//! - [`outcome`]: what Tencent's ErrorCode means to the gateway.
//! - [`proxy`]: the client-facing handler, phase by phase.
//! - [`region`]: regional domains and upstream origins.
//! - [`reload`]: live reload of the configuration (SIGHUP or a changed file).
//! - [`route`]: client path → app and command.
//! - [`sandbox`]: in-process HTTPS look-alike of Tencent's REST API, with test knobs.
//! - [`server`]: accept loop, HTTP/1.1 serving, graceful drain.
//! - [`shutdown`]: SIGTERM / SIGINT.
//! - [`signer`]: per-app admin UserSig, re-minted early.
//! - [`throttle`]: per-(app, command) upstream budget below Tencent's quota.
//! - [`upstream`]: pooled HTTPS client to Tencent, signed URL.
//! - [`usersig`]: mint and verify TLSSigAPIv2 UserSigs (pure).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod key_file;
pub mod limiter;
pub mod log_level;
pub mod metrics;
pub mod origin;
pub mod outcome;
pub mod proxy;
pub mod region;
pub mod reload;
pub mod route;
pub mod sandbox;
pub mod server;
pub mod shared_cache;
pub mod shutdown;
pub mod signer;
pub mod throttle;
pub mod upstream;
pub mod usersig;
