//! tim-gateway: a caching, signing, quota-keeping reverse proxy for Tencent Cloud Chat's REST API.
//!
//! - [`region`]: regional domains and upstream origins.
//! - [`usersig`]: mint and verify TLSSigAPIv2 UserSigs (pure).
#![forbid(unsafe_code)]

pub mod region;
pub mod usersig;
