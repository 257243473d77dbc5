//! # client
//!
//! A typed Rust client for ticketledger's HTTP API v1 (docs/http-api.md), and the local
//! development cluster ([`dev`]) that `ticketctl dev` and the multi-node tests use.
//!
//! The client is leader-agnostic: give it every node's URL. On a connection error, a timeout
//! or a 503 it tries the next node, honouring `Retry-After`, until its deadline; every
//! mutating call carries one `Idempotency-Key` for all its attempts, so a retry after an
//! unknown outcome is applied once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! let c = client::Client::new(["http://127.0.0.1:8080", "http://127.0.0.1:8081"]).with_key("buyer-key");
//! let hold = c
//!     .hold(&api::CreateHold {
//!         performance_id: "p_4".into(),
//!         seats: Some(vec!["A:1:1".into()]),
//!         section: None,
//!         quantity: None,
//!         category: None,
//!     })
//!     .await?;
//! println!("{} until {}", hold.hold_id, hold.expires_at);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod demo;
pub mod dev;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster answered with a problem (4xx, or a 5xx after every retry).
    #[error("{} {}: {}", .problem.status, .problem.code, .problem.detail)]
    Api { problem: api::Problem },
    /// No node answered within the deadline.
    #[error("no node answered within {deadline:?}: {last}")]
    Unavailable { deadline: Duration, last: String },
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl Error {
    /// The problem's stable code, if the cluster answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { problem } => Some(&problem.code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { problem } => Some(problem.status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    nodes: Arc<Vec<String>>,
    key: Option<String>,
    deadline: Duration,
    attempt_timeout: Duration,
    preferred: Arc<AtomicUsize>,
}

/// A fresh idempotency key: 128 random bits in hex.
pub fn new_idempotency_key() -> String {
    rand::random::<u128>().to_string()
}

impl Client {
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Client {
        let nodes: Vec<String> = nodes
            .into_iter()
            .map(|n| {
                let n: String = n.into();
                let n = n.trim_end_matches('/').to_string();
                if n.starts_with("http://") || n.starts_with("https://") {
                    n
                } else {
                    format!("http://{n}")
                }
            })
            .collect();
        assert!(!nodes.is_empty(), "a client needs at least one node URL");
        Client {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("HTTP client"),
            nodes: Arc::new(nodes),
            key: None,
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(6),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Client {
        self.key = Some(key.into());
        self
    }

    /// Overall deadline of one call, over all its attempts.
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self.attempt_timeout = self.attempt_timeout.min(deadline);
        self
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// One attempt against one node, no retries: for tests that probe a specific node.
    pub async fn raw(
        &self,
        node: usize,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.nodes[node]))
            .timeout(self.attempt_timeout);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| Error::Unavailable {
            deadline: self.attempt_timeout,
            last: e.to_string(),
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Decode(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// Send with retries across nodes. Mutating calls get one idempotency key for all attempts.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let bytes = self
            .send_bytes(
                method,
                path,
                body.map(|b| serde_json::to_vec(b).expect("request serializes")),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(format!("{path}: {e}")))
    }

    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let idempotency_key = (method != Method::GET).then(new_idempotency_key);
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::from("no attempt");
        let n = self.nodes.len();
        let mut node = self.preferred.load(Ordering::Relaxed) % n;
        while start.elapsed() < self.deadline {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.nodes[node]))
                .timeout(
                    self.attempt_timeout.min(
                        self.deadline
                            .saturating_sub(start.elapsed())
                            .max(Duration::from_millis(50)),
                    ),
                );
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            if let Some(k) = &idempotency_key {
                req = req.header(api::IDEMPOTENCY_KEY_HEADER, k);
            }
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            let mut wait = backoff;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| Error::Decode(e.to_string()))?;
                    if status.is_success() {
                        self.preferred.store(node, Ordering::Relaxed);
                        return Ok(bytes.to_vec());
                    }
                    let problem: api::Problem =
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| api::Problem {
                            type_: "about:blank".into(),
                            title: status.to_string(),
                            status: status.as_u16(),
                            detail: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                            code: "http_error".into(),
                            instance: None,
                        });
                    if status != StatusCode::SERVICE_UNAVAILABLE
                        && status != StatusCode::TOO_MANY_REQUESTS
                    {
                        return Err(Error::Api { problem });
                    }
                    if let Some(s) = retry_after {
                        wait = wait.max(Duration::from_millis(s.min(5) * 1000 / 4));
                    }
                    last = format!("{} {}: {}", problem.status, problem.code, problem.detail);
                }
                Err(e) => last = format!("{}: {e}", self.nodes[node]),
            }
            node = (node + 1) % n;
            let left = self.deadline.saturating_sub(start.elapsed());
            tokio::time::sleep(wait.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
        Err(Error::Unavailable {
            deadline: self.deadline,
            last,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send::<(), T>(Method::GET, path, None).await
    }
    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(Method::POST, path, Some(body)).await
    }

    // ------------------------------------------------------------ cluster

    pub async fn init(&self, admin_key: &str) -> Result<api::ClusterStatus> {
        self.post(
            "/v1/cluster/init",
            &api::InitCluster {
                admin_key: admin_key.into(),
            },
        )
        .await
    }
    pub async fn status(&self) -> Result<api::ClusterStatus> {
        self.get("/v1/cluster/status").await
    }
    pub async fn add_learner(
        &self,
        node_id: u64,
        grpc_addr: &str,
        http_addr: &str,
    ) -> Result<api::ClusterStatus> {
        self.post(
            "/v1/cluster/learners",
            &api::AddLearner {
                node_id,
                grpc_addr: grpc_addr.into(),
                http_addr: http_addr.into(),
            },
        )
        .await
    }
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
    pub async fn backup(&self) -> Result<Vec<u8>> {
        self.send_bytes(Method::GET, "/v1/cluster/backup", None)
            .await
    }

    /// Restore a backup into a cluster with no catalog yet (sent to each node until the
    /// leader takes it).
    pub async fn restore(&self, backup: Vec<u8>) -> Result<api::ClusterStatus> {
        let bytes = self
            .send_bytes(Method::POST, "/v1/cluster/restore", Some(backup))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    // ------------------------------------------------------------ catalog

    pub async fn create_api_key(&self, name: &str, role: &str) -> Result<api::ApiKeyCreated> {
        self.post(
            "/v1/api-keys",
            &api::CreateApiKey {
                name: name.into(),
                role: role.into(),
            },
        )
        .await
    }
    pub async fn create_venue(&self, v: &api::CreateVenue) -> Result<api::VenueCreated> {
        self.post("/v1/venues", v).await
    }
    pub async fn create_event(&self, e: &api::CreateEvent) -> Result<api::EventCreated> {
        self.post("/v1/events", e).await
    }
    pub async fn create_performance(
        &self,
        event_id: &str,
        p: &api::CreatePerformance,
    ) -> Result<api::PerformanceCreated> {
        self.post(&format!("/v1/events/{event_id}/performances"), p)
            .await
    }
    pub async fn update_performance(
        &self,
        id: &str,
        u: &api::UpdatePerformance,
    ) -> Result<api::Performance> {
        self.send(Method::PATCH, &format!("/v1/performances/{id}"), Some(u))
            .await
    }
    pub async fn performance(&self, id: &str) -> Result<api::Performance> {
        self.get(&format!("/v1/performances/{id}")).await
    }
    pub async fn seats(&self, id: &str) -> Result<api::SeatMap> {
        self.get(&format!("/v1/performances/{id}/seats")).await
    }

    // ------------------------------------------------------------ on-sale

    pub async fn hold(&self, h: &api::CreateHold) -> Result<api::Hold> {
        self.post("/v1/holds", h).await
    }
    pub async fn get_hold(&self, id: &str) -> Result<api::Hold> {
        self.get(&format!("/v1/holds/{id}")).await
    }
    pub async fn release(&self, id: &str) -> Result<api::Hold> {
        self.send::<(), _>(Method::DELETE, &format!("/v1/holds/{id}"), None)
            .await
    }
    pub async fn extend(&self, id: &str, payment_ref: &str) -> Result<api::Hold> {
        self.post(
            &format!("/v1/holds/{id}/extend"),
            &api::ExtendHold {
                payment_ref: payment_ref.into(),
            },
        )
        .await
    }
    pub async fn confirm(&self, id: &str, payment_ref: &str) -> Result<api::Booking> {
        self.post(
            &format!("/v1/holds/{id}/confirm"),
            &api::ConfirmHold {
                payment_ref: payment_ref.into(),
            },
        )
        .await
    }
    pub async fn booking(&self, id: &str) -> Result<api::Booking> {
        self.get(&format!("/v1/bookings/{id}")).await
    }
    pub async fn refund(&self, id: &str, tickets: Vec<String>) -> Result<api::Refunded> {
        self.post(
            &format!("/v1/bookings/{id}/refund"),
            &api::RefundRequest {
                tickets,
                refund_ref: None,
            },
        )
        .await
    }
    pub async fn join_queue(&self, performance_id: &str) -> Result<api::QueueJoined> {
        self.send::<(), _>(
            Method::POST,
            &format!("/v1/performances/{performance_id}/queue"),
            None,
        )
        .await
    }
    pub async fn queue(&self, queue_id: &str) -> Result<api::QueueStatus> {
        self.get(&format!("/v1/queue/{queue_id}")).await
    }
}
