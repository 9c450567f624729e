//! A cache hit answered at once, from the bytes the connection read: no `http::Request`, no
//! future, nothing allocated. The same phases as [`Proxy::handle`] in the same order
//! (browser checks, `route`, the body's checks and canonical form, `lookup`, `respond`), each
//! giving up (`false`) wherever the full path would do more than answer a fresh hit: an
//! error, a miss, a stale entry. The full path then takes the request from the start, so
//! every answer but a fresh hit comes from one place.

use http::Method;
use tokio::time::Instant;

use super::Proxy;
use crate::body::{self, Canonical};
use crate::cache::CacheKey;
use crate::catalogue::Access;
use crate::server::{Answer, RawRequest};

impl Proxy {
    /// Answers `request` into `answer` if it is a fresh cache hit; otherwise leaves both
    /// untouched and returns `false`.
    pub fn answer_now(&self, request: &RawRequest<'_>, answer: &mut Answer<'_>) -> bool {
        let started = Instant::now();
        let method = match request.method {
            "POST" => Method::POST,
            "GET" => Method::GET,
            _ => return false,
        };
        if self.hosts.check_raw(request.headers).is_err() {
            return false;
        }
        let Ok(target) = self.route(&method, request.path()) else {
            return false;
        };
        let (Some(policy), Some(command)) = (target.cache, target.lane.command) else {
            return false;
        };
        if request.body.len() > self.max_body_bytes {
            return false;
        }
        let body: &[u8] = match (body::is_blank(request.body), target.lane.access) {
            (false, _) => request.body,
            (true, Access::Read) => b"{}",
            (true, Access::Write) => return false,
        };
        let Ok(Canonical::Key(canonical)) = body::canonical(body) else {
            return false;
        };
        let key = CacheKey {
            app: target.lane.app as u32,
            command: command as u32,
            body: canonical,
        };
        let Some(cached) = self.shared.cache.lookup_hot(&key, &policy, started) else {
            return false;
        };
        self.respond_now(&target, &cached, request, started, answer);
        true
    }
}
