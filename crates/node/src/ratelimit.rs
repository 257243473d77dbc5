//! Rate limits per principal and per client address: one token bucket per key, refilled at
//! the configured rate up to the burst; a request that finds its bucket empty is answered
//! 429 `rate_limited` with `Retry-After` (whole seconds until a token is back).
//!
//! - The principal is resolved from the bearer credential against this node's applied
//!   ledger, with no read index and no Argon2 (an API key by its digest, a login token by its
//!   MAC under the cluster's secret), so every token of one user shares that user's bucket and
//!   a forged token cannot spend someone else's. A credential this node cannot resolve has no
//!   principal bucket (it will be answered 401, or it is a key made a moment ago); the address
//!   bucket still counts it.
//! - The address is the TCP peer's IP (`ConnectInfo`; `X-Forwarded-For` is not trusted);
//!   IPv6 clients are keyed by their /64, which one host usually owns whole.
//! - Limits are per node: a client spreading its calls over three nodes gets three times the
//!   rate. The probes (`/healthz`, `/readyz`, `/metrics`) are never counted.
//! - Each table holds at most [`MAX_TRACKED_KEYS`] buckets. When full, buckets that have
//!   refilled to the burst are dropped first (a fresh bucket is the same), then the least
//!   recently used, down to 7/8 of the bound so the sweep runs once per many insertions.
//!
//! Both limits are off by default: the demo and the benchmarks send hundreds of thousands of
//! buyers' calls from one loopback address, and what a fair per-address rate is depends on
//! the deployment (NAT, an agency's servers), so an operator sets them.

use crate::app::App;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger::Principal;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets one table keeps at most (each is a few dozen bytes).
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// A rate in requests per second and the bucket size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_sec` 0 is off; the burst defaults to one second's worth (at least 1).
    pub fn new(per_sec: u32, burst: Option<u32>) -> Option<Rate> {
        (per_sec > 0).then(|| Rate {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.unwrap_or(per_sec).max(1)),
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key, bounded.
pub struct Buckets<K> {
    rate: Rate,
    max_keys: usize,
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Buckets<K> {
        Buckets {
            rate,
            max_keys: max_keys.max(8),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key` at `now`, or say how long until one is back.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table.lock().expect("rate-limit table lock");
        if !table.contains_key(key) && table.len() >= self.max_keys {
            self.evict(&mut table, now);
        }
        let rate = self.rate;
        let b = table.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        b.tokens = refilled(rate, *b, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate.per_sec))
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().expect("rate-limit table lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop the buckets that are full again, then the least recently used, to 7/8 of the bound.
    fn evict(&self, table: &mut HashMap<K, Bucket>, now: Instant) {
        let rate = self.rate;
        table.retain(|_, b| refilled(rate, *b, now) < rate.burst);
        let target = self.max_keys - self.max_keys / 8;
        if table.len() > target {
            let mut ages: Vec<Instant> = table.values().map(|b| b.at).collect();
            let excess = table.len() - target;
            let (_, cut, _) = ages.select_nth_unstable(excess - 1);
            let cut = *cut;
            table.retain(|_, b| b.at > cut);
        }
    }
}

fn refilled(rate: Rate, b: Bucket, now: Instant) -> f64 {
    let secs = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + secs * rate.per_sec).min(rate.burst)
}

/// The limiter the HTTP router runs before every handler.
pub struct Limiter {
    app: Arc<App>,
    principals: Option<Buckets<Principal>>,
    addresses: Option<Buckets<IpAddr>>,
}

impl Limiter {
    pub fn new(app: Arc<App>) -> Arc<Limiter> {
        let c = &app.cfg;
        let principals = Rate::new(c.rate_limit_per_principal, c.rate_limit_burst)
            .map(|r| Buckets::new(r, MAX_TRACKED_KEYS));
        let addresses = Rate::new(c.rate_limit_per_address, c.rate_limit_burst)
            .map(|r| Buckets::new(r, MAX_TRACKED_KEYS));
        Arc::new(Limiter {
            app,
            principals,
            addresses,
        })
    }

    /// The principal an `Authorization` value names, from this node's applied state only.
    fn principal_of(&self, value: &str) -> Option<Principal> {
        let bearer = value.strip_prefix("Bearer ")?.trim();
        if bearer.is_empty() || bearer.len() > 256 {
            return None;
        }
        if crate::auth::looks_like_token(bearer) {
            let secret = self.app.ledger.read(|l| l.state().token_secret)?;
            return crate::auth::verify(&secret, bearer, self.app.now_ms())
                .ok()
                .map(Principal::User);
        }
        let digest = *blake3::hash(bearer.as_bytes()).as_bytes();
        self.app
            .ledger
            .read(|l| l.api_key_by_digest(&digest).map(|k| k.id))
            .map(Principal::ApiKey)
    }
}

/// The probes are for monitors and orchestrators: never throttled.
pub fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// An IPv4 address as it is; an IPv6 address by its /64 (an IPv4-mapped one as IPv4).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn rate_limited_error(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this {what}; retry after {secs} s"),
    );
    e.retry_after = Some(secs);
    e
}

fn rate_limited(what: &str, wait: Duration) -> Response {
    rate_limited_error(what, wait).into_response()
}

impl Limiter {
    fn is_off(&self) -> bool {
        self.addresses.is_none() && self.principals.is_none()
    }

    /// The address bucket, then the principal bucket: `Err` names the one that is empty and
    /// how long until it has a token again.
    fn check(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), (&'static str, Duration)> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.check_value(peer, authorization)
    }

    /// [`Self::check`] for an `Authorization` value.
    fn check_value(
        &self,
        peer: Option<SocketAddr>,
        authorization: Option<&str>,
    ) -> Result<(), (&'static str, Duration)> {
        let now = Instant::now();
        if let Some(buckets) = &self.addresses {
            match peer {
                Some(peer) => buckets
                    .take(&address_key(peer.ip()), now)
                    .map_err(|wait| ("client address", wait))?,
                None => {
                    tracing::warn!("no peer address on a request: per-address rate limit skipped")
                }
            }
        }
        if let Some(buckets) = &self.principals
            && let Some(p) = authorization.and_then(|a| self.principal_of(a))
        {
            buckets.take(&p, now).map_err(|wait| ("principal", wait))?;
        }
        Ok(())
    }
}

impl Limiter {
    /// One call of a pipelined stream (`Ledger.Pipeline`), which the interceptor saw only
    /// once: its address's bucket and its credential's, as a unary call would take them.
    pub fn check_call(
        &self,
        peer: Option<SocketAddr>,
        authorization: &str,
    ) -> Result<(), ApiError> {
        if self.is_off() {
            return Ok(());
        }
        self.check_value(peer, Some(authorization))
            .map_err(|(what, wait)| rate_limited_error(what, wait))
    }
}

/// The middleware: the address bucket, then the principal bucket, then the handler.
pub async fn limit(State(l): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    if l.is_off() || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Err((what, wait)) = l.check(peer, req.headers()) {
        return rate_limited(what, wait);
    }
    next.run(req).await
}

/// The same limits on the public gRPC service (`ticketledger.v1.Ledger`; health, reflection
/// and node-to-node calls are not counted), sharing the HTTP side's buckets: over the limit,
/// `RESOURCE_EXHAUSTED` with `x-ticketledger-code: rate_limited`, `x-ticketledger-status: 429`
/// and `retry-after` (whole seconds) in the metadata.
pub fn grpc_interceptor(
    l: Arc<Limiter>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        if l.is_off() {
            return Ok(req);
        }
        let headers = req.metadata().clone().into_headers();
        match l.check(req.remote_addr(), &headers) {
            Ok(()) => Ok(req),
            Err((what, wait)) => Err(rate_limited_error(what, wait).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let b = Buckets::new(Rate::new(2, Some(3)).unwrap(), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take(&"a", t0).unwrap();
        }
        let wait = b.take(&"a", t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-6,
            "one token at 2/s: {wait:?}"
        );
        // Another key has its own bucket.
        b.take(&"b", t0).unwrap();
        // Half a second later one token is back, and only one.
        b.take(&"a", at(t0, 500)).unwrap();
        assert!(b.take(&"a", at(t0, 500)).is_err());
        // Long idle: refilled to the burst, never beyond.
        for _ in 0..3 {
            b.take(&"a", at(t0, 60_000)).unwrap();
        }
        assert!(b.take(&"a", at(t0, 60_000)).is_err());
    }

    #[test]
    fn off_is_none_and_the_burst_defaults_to_one_second() {
        assert_eq!(Rate::new(0, Some(5)), None);
        assert_eq!(Rate::new(7, None).unwrap().burst, 7.0);
        assert_eq!(Rate::new(1, Some(0)).unwrap().burst, 1.0);
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_busy_keys() {
        let max = 64;
        let b = Buckets::new(Rate::new(1, Some(1)).unwrap(), max);
        let t0 = Instant::now();
        // A busy key, emptied, then a flood of one-off keys each emptying its bucket.
        b.take(&0u32, t0).unwrap();
        for k in 1..10_000u32 {
            let _ = b.take(&k, at(t0, u64::from(k)));
            assert!(b.len() <= max, "{} buckets", b.len());
            if k % 16 == 0 {
                // The busy key stays recent, so eviction keeps it and keeps it empty.
                let _ = b.take(&0u32, at(t0, u64::from(k)));
            }
        }
        {
            let table = b.table.lock().unwrap();
            let busy = table.get(&0u32).expect("the busy key was evicted");
            assert!(busy.tokens < 1.0, "the busy key's bucket came back full");
        }
        // Once everything has refilled, a sweep drops the lot but the new key.
        b.take(&1_000_000u32, at(t0, 100_000)).unwrap();
        let _ = b.take(&1_000_001u32, at(t0, 100_000));
        assert!(b.len() <= max);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_429_is_a_problem_with_retry_after_in_whole_seconds() {
        let r = rate_limited("principal", Duration::from_millis(1_200));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()[header::CONTENT_TYPE], api::PROBLEM_JSON);
        let r = rate_limited("principal", Duration::from_millis(10));
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn the_probes_are_exempt_and_the_api_is_not() {
        assert!(exempt("/healthz") && exempt("/readyz") && exempt("/metrics"));
        assert!(!exempt("/v1/holds") && !exempt("/v1/openapi.json"));
    }
}
