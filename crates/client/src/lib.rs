//! # client
//!
//! A typed Rust client for ticketledger's HTTP API v1 (docs/http-api.md), and the local
//! development cluster ([`dev`]) that `ticketctl dev` and the multi-node tests use.
//!
//! The client is leader-agnostic: give it every node's URL (any node accepts any call; a
//! follower forwards writes to the leader). A call fails over to the next node on a connection
//! error, a timeout, or a 502/503/504, and waits on 429; it honours `Retry-After` (that node
//! is not asked again before it), backs off exponentially with jitter, and gives up at the
//! call's overall deadline ([`Client::with_deadline`]). Every mutating call carries one
//! `Idempotency-Key` (128 random bits in hex) for all its attempts, so a retry after an
//! unknown outcome is applied once, and a retry of an applied call returns the first outcome.
//! A 4xx is the cluster's answer and is returned at once as [`Error::Api`] with its
//! [`api::Problem`] (status, stable `code`, `detail`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! let c = client::Client::new(["http://127.0.0.1:8080", "127.0.0.1:8081"])
//!     .with_key("buyer-key")
//!     .with_deadline(std::time::Duration::from_secs(10));
//! let hold = c
//!     .hold(&api::CreateHold {
//!         performance_id: "p_4".into(),
//!         seats: Some(vec!["A:1:1".into()]),
//!         section: None,
//!         quantity: None,
//!         category: None,
//!     })
//!     .await;
//! match hold {
//!     Ok(h) => println!("{} until {}", h.hold_id, h.expires_at),
//!     Err(e) if e.code() == Some("seat_unavailable") => println!("taken, pick another seat"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod demo;
mod demo_payments;
pub mod dev;
pub mod fairness;
pub mod grpc;
pub mod tls;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Default overall deadline of one call, over all its attempts.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(15);
/// Default timeout of one attempt against one node (ticketd answers 503 after its own request
/// timeout, 5 s by default, so this leaves room for that answer to arrive).
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(6);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this is treated as this (the deadline bounds it anyway).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// How much of an unparseable error body is kept in [`api::Problem::detail`].
const DETAIL_CHARS_MAX: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster answered with a problem: a 4xx, or a 5xx that is not retried (or the last
    /// 503 when it was the answer at the deadline is reported as [`Error::Unavailable`]).
    #[error("{} {}: {}", .problem.status, .problem.code, .problem.detail)]
    Api { problem: Box<api::Problem> },
    /// No node gave an answer within the deadline; `last` says what the last attempt got.
    #[error("no node answered within {deadline:?} ({attempts} attempts); last: {last}")]
    Unavailable {
        deadline: Duration,
        attempts: u32,
        last: String,
    },
    /// A success response whose body is not what the contract says.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    /// The problem's stable code (`seat_unavailable`, `hold_expired`, …), if the cluster answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { problem } => Some(&problem.code),
            _ => None,
        }
    }

    /// The HTTP status, if the cluster answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { problem } => Some(problem.status),
            _ => None,
        }
    }

    /// The whole problem, if the cluster answered.
    pub fn problem(&self) -> Option<&api::Problem> {
        match self {
            Error::Api { problem } => Some(problem),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Read consistency of the reads that offer a choice (venues, events, performances, seat
/// maps, waiting-room entries). Holds, bookings and cluster status are always linearizable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Read index through the leader: sees every write acknowledged before the call.
    #[default]
    Linearizable,
    /// Served from the answering node's state; may lag, never blocks on the leader.
    Stale,
}

/// Filters of `GET /v1/events`.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub category: Option<String>,
    /// Case-insensitive substring of the name or description.
    pub q: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

/// Filters of `GET /v1/bookings`: none lists the caller's own; `buyer` (`u_…`/`k_…`) or
/// `performance` need a service or operator key (a buyer may name itself).
#[derive(Clone, Debug, Default)]
pub struct BookingQuery {
    pub buyer: Option<String>,
    pub performance: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

/// A leader-agnostic client of a ticketledger cluster. Cheap to clone (clones share the
/// connection pool and the remembered node that last answered).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    nodes: Arc<Vec<Url>>,
    key: Option<String>,
    deadline: Duration,
    attempt_timeout: Duration,
    consistency: Consistency,
    /// The node that answered last: calls start there (usually the leader, which saves a
    /// forwarding hop), and move on from there on failure.
    preferred: Arc<AtomicUsize>,
    /// What the pool was built with, so that [`Client::with_ca_cert`] and
    /// [`Client::with_idle_connections`] compose in either order.
    ca: Option<Arc<Vec<reqwest::Certificate>>>,
    idle_per_node: usize,
}

/// Idle connections a [`Client`]'s pool keeps per node unless told otherwise.
pub const IDLE_CONNECTIONS_DEFAULT: usize = 64;

/// The connection pool every [`Client`] uses; `ca` replaces the system's roots.
///
/// Building one reads the system's root certificates from disk (tens of milliseconds, on
/// the calling thread), so the default one is built once per process and shared: a server
/// that makes a `Client` per request (the payments service reads with each caller's token)
/// stalled its whole runtime on certificate files otherwise.
///
/// A request finding no idle connection opens one, and a connection coming back to a full
/// pool is closed: more requests in flight than `idle_per_node` means connections opened
/// and closed all along (with 3,400 buyers in flight through a pool of 64, a 300k-buyer
/// demo opened 127,482 connections during a sale of ~550k exchanges: about a fifth paid for
/// a TCP handshake, an accept and a close).
fn http_client(
    ca: Option<&[reqwest::Certificate]>,
    idle_per_node: usize,
) -> std::result::Result<reqwest::Client, String> {
    let build = |ca: Option<&[reqwest::Certificate]>| {
        let mut b = tls::http_builder().pool_max_idle_per_host(idle_per_node);
        if let Some(ca) = ca {
            b = b.tls_certs_only(ca.iter().cloned());
        }
        b.build()
            .map_err(|e| format!("building the HTTP client: {e}"))
    };
    if ca.is_some() || idle_per_node != IDLE_CONNECTIONS_DEFAULT {
        return build(ca);
    }
    static DEFAULT: std::sync::OnceLock<std::result::Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| build(None)).clone()
}

/// A fresh idempotency key: 128 random bits as 32 lowercase hex digits.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One logical call: its attempts share everything here, the idempotency key included.
struct Call<'a> {
    method: Method,
    path: &'a str,
    query: Vec<(&'static str, String)>,
    body: Option<(Vec<u8>, &'static str)>,
    idempotency_key: Option<String>,
}

/// What one attempt got, as far as retrying is concerned.
enum Attempt {
    Done(Vec<u8>),
    Answer(Box<api::Problem>),
    /// Try another node; this one not before `retry_after` (if the server said so).
    Retry {
        why: String,
        retry_after: Option<Duration>,
        every_node: bool,
    },
}

impl Client {
    /// A client of the nodes at these base URLs (`http://host:port`; a bare `host:port` is
    /// taken as `http://`). Panics on an empty list or a URL that does not parse: they are
    /// configuration, checked once at start-up.
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Client {
        Client::try_new(nodes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Client::new`] that reports bad URLs instead of panicking (for CLI input).
    pub fn try_new<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> std::result::Result<Client, String> {
        let mut urls = Vec::new();
        for n in nodes {
            let n: String = n.into();
            let n = n.trim().trim_end_matches('/');
            if n.is_empty() {
                continue;
            }
            let full = if n.contains("://") {
                n.to_string()
            } else {
                format!("http://{n}")
            };
            let url = Url::parse(&full).map_err(|e| format!("bad node URL {n:?}: {e}"))?;
            urls.push(url);
        }
        if urls.is_empty() {
            return Err("a client needs at least one node URL".into());
        }
        Ok(Client {
            http: http_client(None, IDLE_CONNECTIONS_DEFAULT)?,
            nodes: Arc::new(urls),
            key: None,
            deadline: DEADLINE_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            consistency: Consistency::Linearizable,
            preferred: Arc::new(AtomicUsize::new(0)),
            ca: None,
            idle_per_node: IDLE_CONNECTIONS_DEFAULT,
        })
    }

    /// Trust only this CA (PEM) for `https://` nodes, as a cluster run with `ticketd
    /// --tls-ca` needs (without it, `https://` is verified against the system's roots).
    pub fn with_ca_cert(mut self, pem: &[u8]) -> std::result::Result<Client, String> {
        let ca = Arc::new(tls::ca_certificates(pem)?);
        self.http = http_client(Some(&ca), self.idle_per_node)?;
        self.ca = Some(ca);
        Ok(self)
    }

    /// Keep up to `n` idle connections per node (default [`IDLE_CONNECTIONS_DEFAULT`]):
    /// about as many as the requests this client (and its clones, which share the pool)
    /// has in flight at once, so that a busy client reuses connections instead of opening
    /// and closing them (0 counts as 1). Builds a pool of its own (reading the system's
    /// roots again).
    pub fn with_idle_connections(mut self, n: usize) -> std::result::Result<Client, String> {
        let n = n.max(1);
        self.http = http_client(self.ca.as_deref().map(|c| c.as_slice()), n)?;
        self.idle_per_node = n;
        Ok(self)
    }

    /// The bearer API key sent with every call.
    pub fn with_key(mut self, key: impl Into<String>) -> Client {
        self.key = Some(key.into());
        self
    }

    /// The bearer key or token this client sends, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Overall deadline of one call, over all its attempts and waits.
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self.attempt_timeout = self.attempt_timeout.min(deadline);
        self
    }

    /// Timeout of one attempt against one node, after which the next node is tried.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Client {
        self.attempt_timeout = timeout;
        self
    }

    /// Consistency of catalog reads (see [`Consistency`]).
    pub fn with_consistency(mut self, consistency: Consistency) -> Client {
        self.consistency = consistency;
        self
    }

    /// Start calls at node `index` (modulo the node count), remembered apart from the clients
    /// this one was cloned from: with stale reads, a set of readers spread this way shares
    /// the load among the replicas instead of all asking the leader.
    pub fn with_home_node(mut self, index: usize) -> Client {
        self.preferred = Arc::new(AtomicUsize::new(index % self.nodes.len()));
        self
    }

    /// The node base URLs, in the order given.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect()
    }

    fn url(&self, node: usize, path: &str, query: &[(&'static str, String)]) -> Url {
        let mut url = self.nodes[node].clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// One attempt against one node (index into [`Client::nodes`]), no retries, any status:
    /// for tests and tools that probe a specific node.
    pub async fn raw(
        &self,
        node: usize,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let mut req = self
            .http
            .request(method, self.url(node, path, &[]))
            .timeout(self.attempt_timeout);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let unavailable = |e: reqwest::Error| Error::Unavailable {
            deadline: self.attempt_timeout,
            attempts: 1,
            last: error_chain(&e),
        };
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unavailable)?;
        Ok((status, bytes.to_vec()))
    }

    /// A JSON call with retries across nodes. Mutating methods get a fresh idempotency key,
    /// shared by all attempts.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let key = (method != Method::GET).then(new_idempotency_key);
        self.send_keyed(method, path, body, key).await
    }

    /// [`Client::send`] with the caller's idempotency key (`None` for none): a service that
    /// must survive its own restart keeps the key with its work and reuses it.
    pub async fn send_keyed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<String>,
    ) -> Result<T> {
        let body = body.map(|b| {
            (
                serde_json::to_vec(b).expect("request types serialize"),
                "application/json",
            )
        });
        let bytes = self
            .execute(Call {
                method,
                path,
                query: Vec::new(),
                body,
                idempotency_key,
            })
            .await?;
        decode(path, &bytes)
    }

    /// Run one logical call: attempts across nodes until an answer or the deadline.
    async fn execute(&self, call: Call<'_>) -> Result<Vec<u8>> {
        let start = Instant::now();
        let n = self.nodes.len();
        // When each node may be asked again (Retry-After or backoff).
        let mut not_before = vec![start; n];
        let mut backoff = BACKOFF_FIRST;
        let mut attempts = 0u32;
        let mut last = String::from("no attempt made");
        let mut node = self.preferred.load(Ordering::Relaxed) % n;
        loop {
            let now = Instant::now();
            let left = self.deadline.saturating_sub(now - start);
            if left.is_zero() {
                break;
            }
            // The first node, from `node` on, that may be asked now; else wait for the earliest.
            let ready = (0..n)
                .map(|i| (node + i) % n)
                .find(|i| not_before[*i] <= now);
            let Some(ready) = ready else {
                let earliest = not_before.iter().min().copied().unwrap_or(now);
                tokio::time::sleep((earliest - now).min(left)).await;
                continue;
            };
            node = ready;
            attempts += 1;
            match self.attempt(node, &call, left).await {
                Attempt::Done(bytes) => {
                    self.preferred.store(node, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Attempt::Answer(problem) => return Err(Error::Api { problem }),
                Attempt::Retry {
                    why,
                    retry_after,
                    every_node,
                } => {
                    last = format!("{}: {why}", self.nodes[node].as_str().trim_end_matches('/'));
                    let wait = retry_after
                        .map(|r| r.min(RETRY_AFTER_MAX))
                        .unwrap_or(Duration::ZERO)
                        .max(jitter(backoff));
                    let until = Instant::now() + wait;
                    if every_node {
                        not_before.iter_mut().for_each(|t| *t = (*t).max(until));
                    } else {
                        not_before[node] = until;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    node = (node + 1) % n;
                }
            }
        }
        Err(Error::Unavailable {
            deadline: self.deadline,
            attempts,
            last,
        })
    }

    async fn attempt(&self, node: usize, call: &Call<'_>, left: Duration) -> Attempt {
        let timeout = self.attempt_timeout.min(left).max(Duration::from_millis(1));
        let mut req = self
            .http
            .request(call.method.clone(), self.url(node, call.path, &call.query))
            .timeout(timeout);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(k) = &call.idempotency_key {
            req = req.header(api::IDEMPOTENCY_KEY_HEADER, k);
        }
        if let Some((b, content_type)) = &call.body {
            req = req.header("content-type", *content_type).body(b.clone());
        }
        let transport = |e: reqwest::Error| Attempt::Retry {
            why: error_chain(&e),
            retry_after: None,
            every_node: false,
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return transport(e),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // A body cut off by a dying node is as unknown an outcome as no answer at all.
        let bytes = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return transport(e),
        };
        if status.is_success() {
            return Attempt::Done(bytes);
        }
        let problem = problem_of(status, &bytes);
        match status {
            StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT => Attempt::Retry {
                why: format!("{} {}: {}", problem.status, problem.code, problem.detail),
                retry_after,
                every_node: false,
            },
            // A rate limit is the cluster's, not one node's: wait before asking anyone.
            StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
                why: format!("{} {}: {}", problem.status, problem.code, problem.detail),
                retry_after,
                every_node: true,
            },
            _ => Attempt::Answer(Box::new(problem)),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get_query(path, Vec::new()).await
    }

    async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Vec<(&'static str, String)>,
    ) -> Result<T> {
        let bytes = self
            .execute(Call {
                method: Method::GET,
                path,
                query,
                body: None,
                idempotency_key: None,
            })
            .await?;
        decode(path, &bytes)
    }

    /// A catalog read, with `?consistency=stale` when the client asks for it.
    async fn get_catalog<T: DeserializeOwned>(
        &self,
        path: &str,
        mut query: Vec<(&'static str, String)>,
    ) -> Result<T> {
        if self.consistency == Consistency::Stale {
            query.push(("consistency", "stale".into()));
        }
        self.get_query(path, query).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(Method::POST, path, Some(body)).await
    }

    // ------------------------------------------------------------ health

    /// `GET /healthz` of every node, in order: whether it answered 200.
    pub async fn health(&self) -> Vec<bool> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            out.push(matches!(
                self.raw(i, Method::GET, "/healthz", None).await,
                Ok((s, _)) if s.is_success()
            ));
        }
        out
    }

    /// `GET /readyz` of every node, in order: whether it has a leader and keeps up (applied
    /// within 256 entries of what it knows committed).
    pub async fn ready(&self) -> Vec<bool> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            out.push(matches!(
                self.raw(i, Method::GET, "/readyz", None).await,
                Ok((s, _)) if s.is_success()
            ));
        }
        out
    }

    /// `GET /metrics` (Prometheus text) of the first node that answers.
    pub async fn metrics(&self) -> Result<String> {
        let bytes = self
            .execute(Call {
                method: Method::GET,
                path: "/metrics",
                query: Vec::new(),
                body: None,
                idempotency_key: None,
            })
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    // ------------------------------------------------------------ cluster (operator)

    /// `POST /v1/cluster/init`: create the cluster on the node(s) given, with the bootstrap
    /// operator key (≥ 16 characters). Allowed once.
    pub async fn init(&self, admin_key: &str) -> Result<api::ClusterStatus> {
        let body = api::InitCluster {
            admin_key: admin_key.into(),
        };
        self.post("/v1/cluster/init", &body).await
    }

    pub async fn status(&self) -> Result<api::ClusterStatus> {
        self.get("/v1/cluster/status").await
    }

    /// `POST /v1/cluster/learners`: returns once the learner has caught up.
    pub async fn add_learner(
        &self,
        node_id: u64,
        grpc_addr: &str,
        http_addr: &str,
    ) -> Result<api::ClusterStatus> {
        let body = api::AddLearner {
            node_id,
            grpc_addr: grpc_addr.into(),
            http_addr: http_addr.into(),
        };
        self.post("/v1/cluster/learners", &body).await
    }

    /// `POST /v1/cluster/membership`: `voters` is the complete set of voters after the change.
    pub async fn change_membership(&self, voters: Vec<u64>) -> Result<api::ClusterStatus> {
        self.post("/v1/cluster/membership", &api::ChangeMembership { voters })
            .await
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<api::ClusterStatus> {
        self.post("/v1/cluster/transfer-leader", &api::TransferLeader { to })
            .await
    }

    pub async fn snapshot(&self) -> Result<api::SnapshotTaken> {
        self.post("/v1/cluster/snapshot", &serde_json::json!({}))
            .await
    }

    /// `GET /v1/cluster/backup`: the ledger snapshot bytes.
    pub async fn backup(&self) -> Result<Vec<u8>> {
        self.execute(Call {
            method: Method::GET,
            path: "/v1/cluster/backup",
            query: Vec::new(),
            body: None,
            idempotency_key: None,
        })
        .await
    }

    /// `POST /v1/cluster/restore`: a backup into a cluster with no catalog yet. Followers
    /// answer 503, so the call moves on until the leader takes it.
    pub async fn restore(&self, backup: Vec<u8>) -> Result<api::ClusterStatus> {
        let bytes = self
            .execute(Call {
                method: Method::POST,
                path: "/v1/cluster/restore",
                query: Vec::new(),
                body: Some((backup, "application/octet-stream")),
                idempotency_key: Some(new_idempotency_key()),
            })
            .await?;
        decode("/v1/cluster/restore", &bytes)
    }

    // ------------------------------------------------------------ catalog

    /// `POST /v1/api-keys`: `role` is `buyer`, `organizer`, `service` or `operator`.
    /// `POST /v1/auth/signup`: a buyer account and a first session. Not retried with an
    /// idempotency key (the server refuses one); a retry after an ambiguous failure gets
    /// `already_exists` (409): log in then.
    pub async fn signup(&self, email: &str, password: &str, name: &str) -> Result<api::Session> {
        let body = api::Signup {
            email: email.into(),
            password: password.into(),
            name: name.into(),
        };
        self.send_keyed(Method::POST, "/v1/auth/signup", Some(&body), None)
            .await
    }

    /// `POST /v1/auth/login`: a bearer token; use it with [`Client::with_key`].
    pub async fn login(&self, email: &str, password: &str) -> Result<api::Session> {
        let body = api::Login {
            email: email.into(),
            password: password.into(),
        };
        self.send_keyed(Method::POST, "/v1/auth/login", Some(&body), None)
            .await
    }

    pub async fn create_api_key(&self, name: &str, role: &str) -> Result<api::ApiKeyCreated> {
        let body = api::CreateApiKey {
            name: name.into(),
            role: role.into(),
        };
        self.post("/v1/api-keys", &body).await
    }

    pub async fn create_venue(&self, v: &api::CreateVenue) -> Result<api::VenueCreated> {
        self.post("/v1/venues", v).await
    }

    pub async fn venue(&self, id: &str) -> Result<api::Venue> {
        self.get_catalog(&format!("/v1/venues/{id}"), Vec::new())
            .await
    }

    pub async fn create_event(&self, e: &api::CreateEvent) -> Result<api::EventCreated> {
        self.post("/v1/events", e).await
    }

    pub async fn event(&self, id: &str) -> Result<api::Event> {
        self.get_catalog(&format!("/v1/events/{id}"), Vec::new())
            .await
    }

    /// One page of `GET /v1/events`; pass `next` back as `after` for the following page.
    pub async fn events(&self, q: &EventQuery) -> Result<api::EventList> {
        let mut query = Vec::new();
        if let Some(c) = &q.category {
            query.push(("category", c.clone()));
        }
        if let Some(s) = &q.q {
            query.push(("q", s.clone()));
        }
        if let Some(a) = &q.after {
            query.push(("after", a.clone()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        self.get_catalog("/v1/events", query).await
    }

    pub async fn create_performance(
        &self,
        event_id: &str,
        p: &api::CreatePerformance,
    ) -> Result<api::PerformanceCreated> {
        self.post(&format!("/v1/events/{event_id}/performances"), p)
            .await
    }

    /// `PATCH /v1/performances/{id}`: open (`on_sale`), pause, close or cancel a sale.
    pub async fn update_performance(
        &self,
        id: &str,
        u: &api::UpdatePerformance,
    ) -> Result<api::Performance> {
        self.send(Method::PATCH, &format!("/v1/performances/{id}"), Some(u))
            .await
    }

    pub async fn performance(&self, id: &str) -> Result<api::Performance> {
        self.get_catalog(&format!("/v1/performances/{id}"), Vec::new())
            .await
    }

    /// The seat map of a performance, or of one section of it.
    pub async fn seats(&self, id: &str, section: Option<&str>) -> Result<api::SeatMap> {
        let query = section
            .map(|s| vec![("section", s.to_string())])
            .unwrap_or_default();
        self.get_catalog(&format!("/v1/performances/{id}/seats"), query)
            .await
    }

    // ------------------------------------------------------------ on-sale

    /// `POST /v1/holds`; a seat someone else holds is [`Error::Api`] `seat_unavailable` (409).
    pub async fn hold(&self, h: &api::CreateHold) -> Result<api::Hold> {
        self.post("/v1/holds", h).await
    }

    pub async fn get_hold(&self, id: &str) -> Result<api::Hold> {
        self.get(&format!("/v1/holds/{id}")).await
    }

    /// `GET /v1/holds/{id}?consistency=stale`: the hold as the answering node has applied it,
    /// without a read index through the leader. It may lag: a hold placed a moment ago can
    /// be `not_found` there yet, and its state can be behind. What never changes (its id,
    /// buyer, seats and price) is exact.
    pub async fn get_hold_stale(&self, id: &str) -> Result<api::Hold> {
        self.get_query(
            &format!("/v1/holds/{id}"),
            vec![("consistency", "stale".into())],
        )
        .await
    }

    /// `DELETE /v1/holds/{id}` (idempotent).
    pub async fn release(&self, id: &str) -> Result<api::Hold> {
        self.send::<(), _>(Method::DELETE, &format!("/v1/holds/{id}"), None)
            .await
    }

    /// Extend a hold into its payment grace period.
    pub async fn extend(&self, id: &str, payment_ref: &str) -> Result<api::Hold> {
        let body = api::ExtendHold {
            payment_ref: payment_ref.into(),
        };
        self.post(&format!("/v1/holds/{id}/extend"), &body).await
    }

    /// `POST /v1/holds/{id}/confirm` (service key); an expired hold is `hold_expired` (410).
    pub async fn confirm(&self, id: &str, payment_ref: &str) -> Result<api::Booking> {
        let body = api::ConfirmHold {
            payment_ref: payment_ref.into(),
        };
        self.post(&format!("/v1/holds/{id}/confirm"), &body).await
    }

    /// `POST /v1/holds/{id}/confirm-late` (service key): book an expired hold in checkout
    /// if its seats are all still free; else `seat_unavailable` (409), and the payment must
    /// be refunded.
    pub async fn confirm_late(&self, id: &str, payment_ref: &str) -> Result<api::Booking> {
        let body = api::ConfirmHold {
            payment_ref: payment_ref.into(),
        };
        self.post(&format!("/v1/holds/{id}/confirm-late"), &body)
            .await
    }

    /// `POST /v1/holds/{id}/payment` (service key): what the provider did with the money of a
    /// hold in checkout. A repeat of the event that made the state is answered the same; an
    /// event that does not fit is `invalid_state` (409).
    pub async fn record_payment(
        &self,
        hold_id: &str,
        payment_ref: &str,
        event: api::PaymentEvent,
    ) -> Result<api::Checkout> {
        let body = api::RecordPayment {
            payment_ref: payment_ref.into(),
            event,
        };
        self.post(&format!("/v1/holds/{hold_id}/payment"), &body)
            .await
    }

    /// `GET /v1/holds/{id}/checkout`: the checkout of a hold extended with a payment_ref.
    pub async fn checkout(&self, hold_id: &str) -> Result<api::Checkout> {
        self.get(&format!("/v1/holds/{hold_id}/checkout")).await
    }

    /// `GET /v1/checkouts` (service key), one page in hold-id order: open ones only (started
    /// or captured) or every checkout still kept. Pass the answer's `next` as `after`.
    pub async fn checkouts(
        &self,
        open_only: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<api::CheckoutList> {
        let mut query = vec![
            ("open", open_only.to_string()),
            ("limit", limit.to_string()),
        ];
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        self.get_query("/v1/checkouts", query).await
    }

    pub async fn booking(&self, id: &str) -> Result<api::Booking> {
        self.get(&format!("/v1/bookings/{id}")).await
    }

    /// One page of `GET /v1/bookings`; pass `next` back as `after` for the following page.
    pub async fn bookings(&self, q: &BookingQuery) -> Result<api::BookingList> {
        let mut query = Vec::new();
        for (name, v) in [
            ("buyer", &q.buyer),
            ("performance", &q.performance),
            ("after", &q.after),
        ] {
            if let Some(v) = v {
                query.push((name, v.clone()));
            }
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        self.get_query("/v1/bookings", query).await
    }

    /// `POST /v1/performances/{id}/check-in`: a used code is [`Error::Api`] `ticket_used` (409).
    pub async fn check_in(&self, performance_id: &str, code: &str) -> Result<api::CheckedIn> {
        let body = api::CheckIn { code: code.into() };
        self.post(
            &format!("/v1/performances/{performance_id}/check-in"),
            &body,
        )
        .await
    }

    /// `PATCH /v1/events/{id}`: replace the fields given.
    pub async fn update_event(&self, id: &str, u: &api::UpdateEvent) -> Result<api::Event> {
        self.send(Method::PATCH, &format!("/v1/events/{id}"), Some(u))
            .await
    }

    /// Block (or unblock) named seats of a performance.
    pub async fn block_seats(
        &self,
        performance_id: &str,
        seats: Vec<String>,
        blocked: bool,
    ) -> Result<api::SeatsBlocked> {
        let body = api::BlockSeats { seats, blocked };
        self.post(
            &format!("/v1/performances/{performance_id}/blocked-seats"),
            &body,
        )
        .await
    }

    /// `GET /v1/reports/performances/{id}/sales` with `bucket_secs`-wide time buckets.
    pub async fn sales_report(
        &self,
        performance_id: &str,
        bucket_secs: Option<u64>,
    ) -> Result<api::SalesReport> {
        let query = bucket_secs
            .map(|b| vec![("bucket_secs", b.to_string())])
            .unwrap_or_default();
        self.get_query(
            &format!("/v1/reports/performances/{performance_id}/sales"),
            query,
        )
        .await
    }

    /// The same report as CSV text (`?format=csv`).
    pub async fn sales_report_csv(
        &self,
        performance_id: &str,
        bucket_secs: Option<u64>,
    ) -> Result<String> {
        let path = format!("/v1/reports/performances/{performance_id}/sales");
        let mut query = vec![("format", "csv".to_string())];
        if let Some(b) = bucket_secs {
            query.push(("bucket_secs", b.to_string()));
        }
        let bytes = self
            .execute(Call {
                method: Method::GET,
                path: &path,
                query,
                body: None,
                idempotency_key: None,
            })
            .await?;
        String::from_utf8(bytes).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    /// Refund the given tickets of a booking, or all of it when `tickets` is empty.
    pub async fn refund(&self, id: &str, tickets: Vec<String>) -> Result<api::Refunded> {
        let body = api::RefundRequest {
            tickets,
            refund_ref: None,
        };
        self.post(&format!("/v1/bookings/{id}/refund"), &body).await
    }

    pub async fn join_queue(&self, performance_id: &str) -> Result<api::QueueJoined> {
        let path = format!("/v1/performances/{performance_id}/queue");
        self.send::<(), _>(Method::POST, &path, None).await
    }

    /// A waiting-room entry; `?consistency=stale` when the client asks for it (a position
    /// a moment old is fine to wait on: the admission itself is checked by the leader when
    /// the buyer holds).
    pub async fn queue(&self, queue_id: &str) -> Result<api::QueueStatus> {
        self.get_catalog(&format!("/v1/queue/{queue_id}"), Vec::new())
            .await
    }
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text: String = String::from_utf8_lossy(bytes)
            .chars()
            .take(DETAIL_CHARS_MAX)
            .collect();
        Error::Decode(format!("{path}: {e}: {text}"))
    })
}

/// The problem in an error body, or one made up from the status when the body is not one
/// (a proxy's HTML page, a truncated body).
fn problem_of(status: StatusCode, bytes: &[u8]) -> api::Problem {
    serde_json::from_slice(bytes).unwrap_or_else(|_| api::Problem {
        type_: "about:blank".into(),
        title: status.to_string(),
        status: status.as_u16(),
        detail: String::from_utf8_lossy(bytes)
            .chars()
            .take(DETAIL_CHARS_MAX)
            .collect(),
        code: "http_error".into(),
        instance: None,
    })
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

/// Between half and all of `d`, so clients that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_128_bit_hex_and_differ() {
        let (a, b) = (new_idempotency_key(), new_idempotency_key());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn node_urls_are_normalized_and_checked() {
        let c = Client::new(["127.0.0.1:1/", " http://h:2 ", "https://x/base/"]);
        assert_eq!(
            c.nodes(),
            vec!["http://127.0.0.1:1", "http://h:2", "https://x/base"]
        );
        assert_eq!(
            c.url(2, "/v1/holds", &[("q", "a b&c".into())]).as_str(),
            "https://x/base/v1/holds?q=a+b%26c"
        );
        assert!(Client::try_new(Vec::<String>::new()).is_err());
        assert!(Client::try_new(["http://[::1"]).is_err());
    }

    #[test]
    fn a_body_that_is_not_a_problem_still_gives_one() {
        let p = problem_of(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!((p.status, p.code.as_str()), (502, "http_error"));
        assert!(p.detail.contains("bad gateway"));
    }
}
