//! A typed gRPC client of `ticketledger.v1.Ledger` (crates/api/proto/ticketledger.proto), with
//! the rules of the HTTP [`crate::Client`]:
//!
//! - **Leader-agnostic**: give it every node's gRPC address; a call starts at the node that
//!   answered last and moves to the next on a transport error, an attempt timeout, or
//!   `UNAVAILABLE` (the HTTP 503s: `no_leader`, `overloaded`, `timeout`); that node is not
//!   asked again before its `retry-after`, and attempts back off exponentially with jitter.
//!   `RESOURCE_EXHAUSTED` with HTTP status 429 (a rate limit) holds back every node.
//! - **One `request_id` per logical call**: a mutating call without one gets 128 random bits
//!   in hex, kept for all its attempts, so a retry after an unknown outcome is applied once.
//! - **One deadline** bounds all attempts ([`GrpcClient::with_deadline`]); each attempt
//!   also sends it as the gRPC timeout.
//! - Errors are [`crate::Error`]: `Api` with the same [`api::Problem`] the HTTP API would
//!   give (status and stable code from the `x-ticketledger-status` / `x-ticketledger-code`
//!   metadata), `Unavailable` when no node answered in time.
//!
//! [`GrpcClient::watch`] follows the change feed and resumes by itself, on the next node,
//! from the index after the last event it returned: nothing is lost or repeated.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! use client::grpc::{GrpcClient, pb};
//! let c = GrpcClient::new(["127.0.0.1:9090", "127.0.0.1:9091"]).with_key("service-key");
//! let booking = c
//!     .confirm_hold(pb::ConfirmHoldRequest {
//!         hold_id: "h_12".into(),
//!         payment_ref: "pay-1".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("{} tickets", booking.tickets.len());
//! let mut feed = c.watch(0);
//! while let Some(event) = feed.next().await? {
//!     println!("{} {:?}", event.log_index, event.changes);
//! }
//! # Ok(()) }
//! ```

pub use api::grpc as pb;

mod pipeline;
pub use pipeline::{MAX_IN_FLIGHT as MAX_PIPELINE_IN_FLIGHT, NO_ANSWER, Pipeline};

use crate::{Error, Result, new_idempotency_key};
use pb::admin_client::AdminClient;
use pb::ledger_client::LedgerClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Largest message accepted from a node (seat maps of big venues are large).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);

/// A leader-agnostic gRPC client. Cheap to clone (clones share the channels, one per node,
/// and the remembered node that answered last).
#[derive(Clone)]
pub struct GrpcClient {
    nodes: Arc<Vec<(String, Channel)>>,
    key: Option<String>,
    deadline: Duration,
    attempt_timeout: Duration,
    preferred: Arc<AtomicUsize>,
}

fn ledger_client(channel: Channel) -> LedgerClient<Channel> {
    LedgerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn admin_client(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// One lazily connected channel per node URL; `https://` ones over TLS, verified against `ca`
/// (PEM) or else the system's roots.
fn channels(
    urls: &[String],
    ca: Option<&[u8]>,
) -> std::result::Result<Vec<(String, Channel)>, String> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let mut out = Vec::new();
    for url in urls {
        let mut e = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad node address {url:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let tls = match ca {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            e = e
                .tls_config(tls)
                .map_err(|e| format!("TLS for {url:?}: {e}"))?;
        }
        out.push((url.clone(), e.connect_lazy()));
    }
    Ok(out)
}

/// What one attempt got, as far as retrying is concerned.
enum Attempt<T> {
    Done(T),
    Answer(Box<api::Problem>),
    Retry {
        why: String,
        retry_after: Option<Duration>,
        every_node: bool,
    },
}

/// A request message whose `request_id` is its idempotency key.
pub trait Keyed {
    fn request_id(&mut self) -> &mut String;
}

macro_rules! keyed {
    ($($t:ty),* $(,)?) => {
        $(impl Keyed for $t {
            fn request_id(&mut self) -> &mut String {
                &mut self.request_id
            }
        })*
    };
}

keyed!(
    pb::CreateVenueRequest,
    pb::CreateEventRequest,
    pb::CreatePerformanceRequest,
    pb::SetSaleStatusRequest,
    pb::PlaceHoldRequest,
    pb::HoldRef,
    pb::ExtendHoldRequest,
    pb::ConfirmHoldRequest,
    pb::RefundRequest,
    pb::JoinQueueRequest,
    pb::CreateApiKeyRequest,
    pb::RecordPaymentRequest,
    pb::CheckInRequest,
    pb::UpdateEventRequest,
    pb::BlockSeatsRequest,
);

/// One unary RPC per method: `write` ones get a request_id for all their attempts.
macro_rules! rpc {
    ($(#[$doc:meta])* write $name:ident($req:ty) -> $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, mut req: $req) -> Result<$resp> {
            if Keyed::request_id(&mut req).is_empty() {
                *Keyed::request_id(&mut req) = new_idempotency_key();
            }
            self.call(req, |mut c, r| async move { c.$name(r).await }).await
        }
    };
    ($(#[$doc:meta])* read $name:ident($req:ty) -> $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$resp> {
            self.call(req, |mut c, r| async move { c.$name(r).await }).await
        }
    };
}

/// One unary RPC of `ticketledger.v1.Admin` per method.
macro_rules! admin_rpc {
    ($(#[$doc:meta])* $name:ident($req:ty) -> $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$resp> {
            self.call_admin(req, |mut c, r| async move { c.$name(r).await }).await
        }
    };
}

impl GrpcClient {
    /// A client of the nodes at these gRPC addresses (`host:port` or `http://host:port`).
    /// Panics on an empty list or an address that does not parse (configuration, checked
    /// once); must be called inside a Tokio runtime (channels connect lazily in the
    /// background).
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> GrpcClient {
        GrpcClient::try_new(nodes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`GrpcClient::new`] that reports bad addresses instead of panicking.
    pub fn try_new<S: Into<String>>(
        nodes: impl IntoIterator<Item = S>,
    ) -> std::result::Result<GrpcClient, String> {
        let mut urls = Vec::new();
        for n in nodes {
            let n: String = n.into();
            let n = n.trim().trim_end_matches('/');
            if n.is_empty() {
                continue;
            }
            urls.push(if n.contains("://") {
                n.to_string()
            } else {
                format!("http://{n}")
            });
        }
        if urls.is_empty() {
            return Err("a client needs at least one node address".into());
        }
        Ok(GrpcClient {
            nodes: Arc::new(channels(&urls, None)?),
            key: None,
            deadline: crate::DEADLINE_DEFAULT,
            attempt_timeout: crate::ATTEMPT_TIMEOUT_DEFAULT,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Trust only this CA (PEM) for `https://` nodes (a cluster run with `ticketd
    /// --tls-ca`); without it, `https://` is verified against the system's roots.
    pub fn with_ca_cert(mut self, pem: &[u8]) -> std::result::Result<GrpcClient, String> {
        crate::tls::ca_certificates(pem)?;
        let urls: Vec<String> = self.nodes.iter().map(|(u, _)| u.clone()).collect();
        self.nodes = Arc::new(channels(&urls, Some(pem))?);
        Ok(self)
    }

    /// The bearer API key or login token sent with every call.
    pub fn with_key(mut self, key: impl Into<String>) -> GrpcClient {
        self.key = Some(key.into());
        self
    }

    /// Start calls at node `index` (modulo the node count), remembered apart from the clients
    /// this one was cloned from (as [`crate::Client::with_home_node`]): stale readers
    /// spread this way share the load among the replicas.
    pub fn with_home_node(mut self, index: usize) -> GrpcClient {
        self.preferred = Arc::new(AtomicUsize::new(index % self.nodes.len()));
        self
    }

    /// Overall deadline of one call, over all its attempts and waits.
    pub fn with_deadline(mut self, deadline: Duration) -> GrpcClient {
        self.deadline = deadline;
        self.attempt_timeout = self.attempt_timeout.min(deadline);
        self
    }

    /// Timeout of one attempt against one node, after which the next node is tried.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> GrpcClient {
        self.attempt_timeout = timeout;
        self
    }

    fn request<T>(
        &self,
        msg: T,
        timeout: Duration,
    ) -> std::result::Result<tonic::Request<T>, Error> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        if let Some(k) = &self.key {
            let v = format!("Bearer {k}").parse().map_err(|_| Error::Api {
                problem: Box::new(local_problem(
                    "the API key is not valid metadata (visible ASCII only)",
                )),
            })?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }

    fn client(&self, node: usize) -> LedgerClient<Channel> {
        ledger_client(self.nodes[node].1.clone())
    }

    /// Run one logical call of `ticketledger.v1.Ledger`.
    async fn call<Req, Resp, F, Fut>(&self, req: Req, f: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(LedgerClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_with(ledger_client, req, f).await
    }

    /// Run one logical call of `ticketledger.v1.Admin`.
    async fn call_admin<Req, Resp, F, Fut>(&self, req: Req, f: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_with(admin_client, req, f).await
    }

    /// Run one logical call on the service `make` builds from a node's channel: attempts
    /// across nodes until an answer or the deadline.
    async fn call_with<C, Req, Resp, F, Fut>(
        &self,
        make: fn(Channel) -> C,
        req: Req,
        f: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let start = Instant::now();
        let n = self.nodes.len();
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
            let Some(ready) = (0..n)
                .map(|i| (node + i) % n)
                .find(|i| not_before[*i] <= now)
            else {
                let earliest = not_before.iter().min().copied().unwrap_or(now);
                tokio::time::sleep((earliest - now).min(left)).await;
                continue;
            };
            node = ready;
            attempts += 1;
            let timeout = self.attempt_timeout.min(left).max(Duration::from_millis(1));
            let r = self.request(req.clone(), timeout)?;
            let service = make(self.nodes[node].1.clone());
            let attempt = match tokio::time::timeout(timeout, f(service, r)).await {
                Ok(Ok(resp)) => Attempt::Done(resp.into_inner()),
                Ok(Err(status)) => classify(&status),
                Err(_) => Attempt::Retry {
                    why: format!("no answer within {timeout:?}"),
                    retry_after: None,
                    every_node: false,
                },
            };
            match attempt {
                Attempt::Done(v) => {
                    self.preferred.store(node, Ordering::Relaxed);
                    return Ok(v);
                }
                Attempt::Answer(problem) => return Err(Error::Api { problem }),
                Attempt::Retry {
                    why,
                    retry_after,
                    every_node,
                } => {
                    last = format!("{}: {why}", self.nodes[node].0);
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

    admin_rpc!(/// Create the cluster on the node this call reaches first (give one address), with
    /// the bootstrap operator key.
    init_cluster(pb::InitClusterRequest) -> pb::ClusterStatus);
    admin_rpc!(/// Membership, leader and every node's status (operator).
    get_cluster_status(pb::ClusterStatusRequest) -> pb::ClusterStatus);
    admin_rpc!(/// Add a node as a learner; returns once it has caught up (operator, leader).
    add_learner(pb::AddLearnerRequest) -> pb::ClusterStatus);
    admin_rpc!(/// Replace the set of voters (operator, leader).
    change_membership(pb::ChangeMembershipRequest) -> pb::ClusterStatus);
    admin_rpc!(/// Hand leadership to another voter (operator).
    transfer_leader(pb::TransferLeaderRequest) -> pb::ClusterStatus);
    admin_rpc!(/// Snapshot the node this call reaches, purging its log behind (operator).
    take_snapshot(pb::TakeSnapshotRequest) -> pb::SnapshotTaken);
    admin_rpc!(/// A consistent copy of the ledger (operator).
    backup(pb::BackupRequest) -> pb::BackupData);
    admin_rpc!(/// Restore a backup into a cluster with no catalog yet (operator, leader).
    restore(pb::BackupData) -> pb::ClusterStatus);

    rpc!(/// A buyer account and a first session. Not retried with a request_id (signups are
    /// anonymous): a retry after an unknown outcome gets `already_exists`; log in then.
    read signup(pb::SignupRequest) -> pb::Session);
    rpc!(/// A session token; use it with [`GrpcClient::with_key`].
    read login(pb::LoginRequest) -> pb::Session);
    rpc!(write create_api_key(pb::CreateApiKeyRequest) -> pb::ApiKeyCreated);
    rpc!(write create_venue(pb::CreateVenueRequest) -> pb::VenueCreated);
    rpc!(read get_venue(pb::VenueRef) -> pb::Venue);
    rpc!(write create_event(pb::CreateEventRequest) -> pb::EventCreated);
    rpc!(read get_event(pb::EventRef) -> pb::Event);
    rpc!(read list_events(pb::ListEventsRequest) -> pb::EventList);
    rpc!(write create_performance(pb::CreatePerformanceRequest) -> pb::PerformanceCreated);
    rpc!(/// Open, pause, close or cancel a sale.
    write set_sale_status(pb::SetSaleStatusRequest) -> pb::Performance);
    rpc!(read get_performance(pb::GetPerformanceRequest) -> pb::Performance);
    rpc!(read get_seats(pb::GetSeatsRequest) -> pb::SeatMap);
    rpc!(write place_hold(pb::PlaceHoldRequest) -> pb::Hold);
    rpc!(read get_hold(pb::HoldRef) -> pb::Hold);
    rpc!(/// Release a hold (idempotent).
    write release_hold(pb::HoldRef) -> pb::Hold);
    rpc!(write extend_hold(pb::ExtendHoldRequest) -> pb::Hold);
    rpc!(write confirm_hold(pb::ConfirmHoldRequest) -> pb::Booking);
    rpc!(write confirm_late(pb::ConfirmHoldRequest) -> pb::Booking);
    rpc!(write record_payment(pb::RecordPaymentRequest) -> pb::Checkout);
    rpc!(read get_checkout(pb::HoldRef) -> pb::Checkout);
    rpc!(read list_checkouts(pb::ListCheckoutsRequest) -> pb::CheckoutList);
    rpc!(read get_booking(pb::BookingRef) -> pb::Booking);
    rpc!(/// The caller's bookings, or (service, operator) a buyer's, a performance's or all.
    read list_bookings(pb::ListBookingsRequest) -> pb::BookingList);
    rpc!(/// Mark the ticket with this code used, once (`ticket_used` the second time).
    write check_in(pb::CheckInRequest) -> pb::CheckedIn);
    rpc!(/// Replace an event's given fields (its owner or an operator).
    write update_event(pb::UpdateEventRequest) -> pb::Event);
    rpc!(/// Block or unblock named seats (the performance's owner or an operator).
    write block_seats(pb::BlockSeatsRequest) -> pb::SeatsBlocked);
    rpc!(/// A performance's sales (its organizer or an operator), `csv` too when asked.
    read get_sales_report(pb::SalesReportRequest) -> pb::SalesReport);
    rpc!(write refund(pb::RefundRequest) -> pb::Refunded);
    rpc!(write join_queue(pb::JoinQueueRequest) -> pb::QueueStatus);
    rpc!(read get_queue(pb::QueueRef) -> pb::QueueStatus);

    /// Follow the change feed from `from_index` (0: the oldest change the node keeps).
    pub fn watch(&self, from_index: u64) -> Watch {
        Watch {
            client: self.clone(),
            next_index: from_index,
            stream: None,
            node: self.preferred.load(Ordering::Relaxed) % self.nodes.len(),
        }
    }
}

/// A change-feed subscription that survives node failures: on a transport error or
/// `UNAVAILABLE` it reconnects (to the next node, within the client's deadline per gap) from
/// the index after the last event returned.
pub struct Watch {
    client: GrpcClient,
    next_index: u64,
    stream: Option<tonic::Streaming<pb::FeedEvent>>,
    node: usize,
}

impl Watch {
    /// The index the next event will have at least.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The next event; `Ok(None)` if a node ended the stream cleanly (it does not, unless
    /// shutting down, and then this reconnects); `Err` for the cluster's refusal
    /// (`feed_truncated`, `forbidden`, …) or when no node could be reached within the
    /// deadline.
    pub async fn next(&mut self) -> Result<Option<pb::FeedEvent>> {
        let start = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut last = String::from("no attempt made");
        let mut attempts = 0u32;
        loop {
            if let Some(stream) = &mut self.stream {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        // The server never repeats; this guards the promise on our side.
                        if ev.log_index < self.next_index {
                            continue;
                        }
                        self.next_index = ev.log_index + 1;
                        return Ok(Some(ev));
                    }
                    Ok(None) => {
                        last = "the node ended the stream".into();
                        self.stream = None;
                    }
                    Err(status) => match classify::<()>(&status) {
                        Attempt::Answer(problem) => {
                            self.stream = None;
                            return Err(Error::Api { problem });
                        }
                        _ => {
                            last =
                                format!("{}: {}", self.client.nodes[self.node].0, status.message());
                            self.stream = None;
                            self.node = (self.node + 1) % self.client.nodes.len();
                        }
                    },
                }
            }
            if start.elapsed() >= self.client.deadline {
                return Err(Error::Unavailable {
                    deadline: self.client.deadline,
                    attempts,
                    last,
                });
            }
            if attempts > 0 {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            attempts += 1;
            let req = pb::WatchRequest {
                from_index: self.next_index,
            };
            // Only the opening has a deadline; the stream itself lasts.
            let mut r = self.client.request(req, self.client.attempt_timeout)?;
            r.metadata_mut().remove("grpc-timeout");
            let opened = tokio::time::timeout(
                self.client.attempt_timeout,
                self.client.client(self.node).watch(r),
            )
            .await;
            match opened {
                Ok(Ok(resp)) => self.stream = Some(resp.into_inner()),
                Ok(Err(status)) => match classify::<()>(&status) {
                    Attempt::Answer(problem) => return Err(Error::Api { problem }),
                    _ => {
                        last = format!("{}: {}", self.client.nodes[self.node].0, status.message());
                        self.node = (self.node + 1) % self.client.nodes.len();
                    }
                },
                Err(_) => {
                    last = format!("{}: no answer in time", self.client.nodes[self.node].0);
                    self.node = (self.node + 1) % self.client.nodes.len();
                }
            }
        }
    }
}

/// Whether a failed attempt is the cluster's answer or worth another try.
fn classify<T>(s: &tonic::Status) -> Attempt<T> {
    let md = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok());
    let code = md(pb::CODE_METADATA).map(str::to_string);
    let status = md(pb::STATUS_METADATA).and_then(|v| v.parse::<u16>().ok());
    let retry_after = md(pb::RETRY_AFTER_METADATA)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let why = format!("{:?}: {}", s.code(), s.message());
    match (s.code(), &code) {
        // A 503 of the node, or the transport's own UNAVAILABLE (connection refused/reset).
        (tonic::Code::Unavailable, _) => Attempt::Retry {
            why,
            retry_after,
            every_node: false,
        },
        (tonic::Code::ResourceExhausted, Some(_)) if status == Some(429) => Attempt::Retry {
            why,
            retry_after,
            every_node: true,
        },
        // Without our code the status came from the transport (a reset stream, a timeout
        // of the attempt, a dying node): the outcome is unknown, so try again.
        (
            tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
            | tonic::Code::Aborted,
            None,
        ) => Attempt::Retry {
            why,
            retry_after: None,
            every_node: false,
        },
        _ => Attempt::Answer(Box::new(problem_of(s, code, status))),
    }
}

/// The problem the HTTP API would have answered.
fn problem_of(s: &tonic::Status, code: Option<String>, status: Option<u16>) -> api::Problem {
    use tonic::Code as C;
    let status = status.unwrap_or(match s.code() {
        C::InvalidArgument => 400,
        C::Unauthenticated => 401,
        C::PermissionDenied => 403,
        C::NotFound => 404,
        C::AlreadyExists | C::FailedPrecondition | C::Aborted => 409,
        C::ResourceExhausted => 429,
        C::Unavailable => 503,
        C::Unimplemented => 501,
        _ => 500,
    });
    let code = code.unwrap_or_else(|| format!("grpc_{:?}", s.code()).to_lowercase());
    let detail = s
        .message()
        .strip_prefix(&format!("{code}: "))
        .unwrap_or(s.message())
        .to_string();
    api::Problem {
        type_: format!("https://ticketledger.dev/problems/{code}"),
        title: format!("{:?}", s.code()),
        status,
        detail,
        code,
        instance: None,
    }
}

fn local_problem(detail: &str) -> api::Problem {
    api::Problem {
        type_: "https://ticketledger.dev/problems/bad_request".into(),
        title: "Bad Request".into(),
        status: 400,
        detail: detail.into(),
        code: "bad_request".into(),
        instance: None,
    }
}

/// Between half and all of `d`, so clients that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, ours: Option<(&str, u16)>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "x: y");
        if let Some((c, st)) = ours {
            s.metadata_mut()
                .insert(pb::CODE_METADATA, c.parse().unwrap());
            s.metadata_mut().insert(pb::STATUS_METADATA, st.into());
        }
        s
    }

    #[test]
    fn answers_are_final_and_transport_failures_are_retried() {
        let retry = |s| matches!(classify::<()>(&s), Attempt::Retry { .. });
        assert!(retry(status(tonic::Code::Unavailable, None)));
        assert!(retry(status(
            tonic::Code::Unavailable,
            Some(("no_leader", 503))
        )));
        assert!(retry(status(tonic::Code::Unknown, None)));
        assert!(retry(status(
            tonic::Code::ResourceExhausted,
            Some(("rate_limited", 429))
        )));
        assert!(!retry(status(
            tonic::Code::FailedPrecondition,
            Some(("seat_unavailable", 409))
        )));
        assert!(!retry(status(
            tonic::Code::InvalidArgument,
            Some(("invalid_input", 422))
        )));
        match classify::<()>(&status(tonic::Code::FailedPrecondition, Some(("x", 410)))) {
            Attempt::Answer(p) => assert_eq!(
                (p.status, p.code.as_str(), p.detail.as_str()),
                (410, "x", "y")
            ),
            _ => panic!("an answer"),
        }
    }

    #[test]
    fn a_rate_limit_holds_back_every_node() {
        match classify::<()>(&status(
            tonic::Code::ResourceExhausted,
            Some(("rate_limited", 429)),
        )) {
            Attempt::Retry { every_node, .. } => assert!(every_node),
            _ => panic!("a retry"),
        }
    }
}
