//! The public gRPC API (proto/ticketledger.proto): the on-sale path with the HTTP API's
//! semantics, reusing its conversions. Errors carry the same stable codes.

use crate::app::{App, Consistency};
use crate::convert::*;
use crate::error::ApiError;
use crate::http::authenticate;
use crate::http_manage;
use ledger::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The generated types and service of `ticketledger.v1` (compiled in crates/api).
pub mod pb {
    pub use api::grpc::*;
}

#[derive(Clone)]
pub struct LedgerService {
    app: Arc<App>,
    /// Shared with the interceptor and HTTP: a pipelined call takes its own tokens.
    limiter: Arc<crate::ratelimit::Limiter>,
    /// Pipelined calls in flight on this node, over all streams ([`MAX_PIPELINED_CALLS`]).
    pipelined: Arc<tokio::sync::Semaphore>,
}

/// Calls of one `Pipeline` stream in flight on the node at once; a call past it is answered
/// at once with 503 `overloaded`, as a unary write past `--max-inflight` is.
pub const MAX_PIPELINE_IN_FLIGHT: usize = 1024;
/// Pipelined calls in flight on one node over all its streams, the bound on the memory they
/// hold (each stream's answers wait in a channel of [`PIPELINE_ANSWERS_BUFFERED`]); past
/// it, 503 `overloaded` too.
pub const MAX_PIPELINED_CALLS: usize = 4096;
/// Answers of one stream decided but not yet taken by HTTP/2; when full (a caller that
/// does not read), the stream is not read either, and flow control holds the caller back.
const PIPELINE_ANSWERS_BUFFERED: usize = 256;

impl LedgerService {
    pub fn new(app: Arc<App>, limiter: Arc<crate::ratelimit::Limiter>) -> LedgerService {
        LedgerService {
            app,
            limiter,
            pipelined: Arc::new(tokio::sync::Semaphore::new(MAX_PIPELINED_CALLS)),
        }
    }
}

/// The status code a failure has over gRPC, from its HTTP status.
fn grpc_code(status: axum::http::StatusCode) -> tonic::Code {
    use axum::http::StatusCode as S;
    match status {
        S::BAD_REQUEST | S::UNPROCESSABLE_ENTITY | S::PAYLOAD_TOO_LARGE => {
            tonic::Code::InvalidArgument
        }
        S::UNAUTHORIZED => tonic::Code::Unauthenticated,
        S::FORBIDDEN => tonic::Code::PermissionDenied,
        S::NOT_FOUND => tonic::Code::NotFound,
        S::CONFLICT => tonic::Code::FailedPrecondition,
        S::GONE => tonic::Code::FailedPrecondition,
        S::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        S::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut s = Status::new(grpc_code(e.status), format!("{}: {}", e.code, e.detail));
        if let Ok(v) = e.code.parse() {
            s.metadata_mut().insert(pb::CODE_METADATA, v);
        }
        // The HTTP status and Retry-After too, so a client reports the same problem and
        // backs off the same way over either protocol.
        s.metadata_mut()
            .insert(pb::STATUS_METADATA, e.status.as_u16().into());
        if let Some(secs) = e.retry_after {
            s.metadata_mut()
                .insert(pb::RETRY_AFTER_METADATA, secs.into());
        }
        s
    }
}

type Result<T> = std::result::Result<Response<T>, Status>;

fn key(request_id: &str) -> std::result::Result<Option<String>, ApiError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > limits::MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::bad_request(
            "request_id must be at most 128 bytes",
        ));
    }
    Ok(Some(request_id.to_string()))
}

impl LedgerService {
    async fn principal<T>(&self, req: &Request<T>) -> std::result::Result<Principal, ApiError> {
        authenticate(&self.app, &req.metadata().clone().into_headers()).await
    }

    async fn write(
        &self,
        p: Principal,
        request_id: &str,
        op: Op,
    ) -> std::result::Result<Reply, ApiError> {
        match self.app.write(p, key(request_id)?, op).await? {
            Outcome::Ok(r) => Ok(r),
            Outcome::Rejected(r) => Err(r.into()),
        }
    }

    /// PlaceHold's work once the caller is known (unary and pipelined).
    async fn place_hold_as(
        &self,
        p: Principal,
        r: pb::PlaceHoldRequest,
    ) -> std::result::Result<pb::Hold, ApiError> {
        let body = api::CreateHold {
            performance_id: r.performance_id,
            seats: (!r.seats.is_empty()).then_some(r.seats),
            section: non_empty(&r.section),
            quantity: (r.quantity > 0).then(|| r.quantity.min(u32::from(u16::MAX)) as u16),
            category: non_empty(&r.category),
        };
        let op = match self
            .app
            .read(Consistency::Stale, |l| hold_op(l, &body))
            .await?
        {
            Err(e) if e.code == "not_found" => {
                self.app
                    .read(Consistency::Linearizable, |l| hold_op(l, &body))
                    .await??
            }
            other => other?,
        };
        match self.write(p, &r.request_id, op).await? {
            Reply::HoldPlaced(h) => self.hold(p, h.hold).await,
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// ConfirmHold's work once the caller is known (unary and pipelined).
    async fn confirm_hold_as(
        &self,
        p: Principal,
        r: pb::ConfirmHoldRequest,
    ) -> std::result::Result<pb::Booking, ApiError> {
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        match self
            .write(
                p,
                &r.request_id,
                Op::ConfirmHold {
                    hold,
                    payment_ref: r.payment_ref,
                    code_seed: rand::random::<CodeSeed>(),
                },
            )
            .await?
        {
            Reply::BookingConfirmed(b) => self.booking(p, b.booking, Consistency::Stale).await,
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// JoinQueue's work once the caller is known (unary and pipelined).
    async fn join_queue_as(
        &self,
        p: Principal,
        r: pb::JoinQueueRequest,
    ) -> std::result::Result<pb::QueueStatus, ApiError> {
        let performance: PerformanceId = parse_id(&r.performance_id, "performance")?;
        match self
            .write(p, &r.request_id, Op::JoinQueue { performance })
            .await?
        {
            Reply::QueueJoined { queue, position } => Ok(pb::QueueStatus {
                queue_id: queue.to_string(),
                state: if position.is_some() {
                    "waiting"
                } else {
                    "pre_queue"
                }
                .into(),
                has_position: position.is_some(),
                position: position.unwrap_or(0),
                admitted_until_ms: 0,
            }),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// GetHold's work once the caller is known: after a read index (unary and pipelined).
    async fn get_hold_as(
        &self,
        p: Principal,
        r: pb::HoldRef,
    ) -> std::result::Result<pb::Hold, ApiError> {
        let id: HoldId = parse_id(&r.hold_id, "hold")?;
        self.app.linearize().await?;
        self.hold(p, id).await
    }

    async fn hold(&self, p: Principal, id: HoldId) -> std::result::Result<pb::Hold, ApiError> {
        self.app
            .visible_hold(p, id, Consistency::Stale)
            .await
            .map(hold_pb)
    }

    /// A hold's checkout as its buyer, a service or an operator may see it.
    async fn checkout(
        &self,
        p: Principal,
        hold: HoldId,
        c: Consistency,
    ) -> std::result::Result<pb::Checkout, ApiError> {
        // Ownership first: the same answer (403/404) as reading the hold itself.
        self.app.visible_hold(p, hold, c).await?;
        self.app
            .read(Consistency::Stale, |l| {
                l.state().holds.get(&hold).and_then(checkout_view)
            })
            .await?
            .map(checkout_pb)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "hold {hold} has no checkout: it was never extended with a payment_ref"
                ))
            })
    }

    async fn booking(
        &self,
        p: Principal,
        id: BookingId,
        c: Consistency,
    ) -> std::result::Result<pb::Booking, ApiError> {
        self.app.visible_booking(p, id, c).await.map(booking_pb)
    }
}

fn hold_pb(h: api::Hold) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id,
        performance_id: h.performance_id,
        seats: h.seats,
        quantity: h.quantity,
        expires_at_ms: h.expires_at_ms,
        amount_minor: h.amount_minor,
        currency: h.currency,
        state: h.state,
        booking_id: h.booking_id.unwrap_or_default(),
    }
}

fn booking_pb(b: api::Booking) -> pb::Booking {
    pb::Booking {
        booking_id: b.booking_id,
        performance_id: b.performance_id,
        hold_id: b.hold_id,
        tickets: b
            .tickets
            .into_iter()
            .map(|t| pb::Ticket {
                ticket_id: t.ticket_id,
                seat: t.seat.unwrap_or_default(),
                section: t.section,
                category: t.category,
                amount_minor: t.amount_minor,
                code: t.code,
                state: t.state,
            })
            .collect(),
        amount_minor: b.amount_minor,
        refunded_minor: b.refunded_minor,
        currency: b.currency,
        payment_ref: b.payment_ref,
    }
}

fn performance_pb(l: &Ledger, p: &ledger::Performance) -> pb::Performance {
    let v = performance_view(l, p);
    pb::Performance {
        performance_id: v.performance_id,
        event_id: v.event_id,
        venue_id: v.venue_id,
        status: v.status,
        starts_at_ms: p.starts_at_ms,
        on_sale_at_ms: p.on_sale_at_ms,
        sale_ends_at_ms: p.sale_ends_at_ms,
        hold_ttl_ms: p.hold_ttl_ms,
        max_seats_per_order: u32::from(p.max_seats_per_order),
        categories: v.categories,
        sections: v.sections.into_iter().map(section_pb).collect(),
        revenue_minor: v.revenue_minor,
        currency: v.currency,
    }
}

fn section_pb(s: api::SectionAvailability) -> pb::SectionAvailability {
    pb::SectionAvailability {
        section: s.section,
        capacity: s.capacity,
        available: s.available,
        held: s.held,
        sold: s.sold,
        blocked: s.blocked,
        together: s.together,
    }
}

fn sales_report_pb(r: api::SalesReport, csv: String) -> pb::SalesReport {
    let t = r.totals;
    pb::SalesReport {
        performance_id: r.performance_id,
        event_id: r.event_id,
        status: r.status,
        currency: r.currency,
        as_of: r.as_of,
        totals: Some(pb::Availability {
            capacity: t.capacity,
            available: t.available,
            held: t.held,
            sold: t.sold,
            blocked: t.blocked,
        }),
        sections: r.sections.into_iter().map(section_pb).collect(),
        bookings: r.bookings,
        tickets_sold: r.tickets_sold,
        tickets_refunded: r.tickets_refunded,
        tickets_checked_in: r.tickets_checked_in,
        revenue_minor: r.revenue_minor,
        refunded_minor: r.refunded_minor,
        by_category: r
            .by_category
            .into_iter()
            .map(|c| pb::CategorySales {
                category: c.category,
                tickets_sold: c.tickets_sold,
                revenue_minor: c.revenue_minor,
                tickets_refunded: c.tickets_refunded,
                refunded_minor: c.refunded_minor,
            })
            .collect(),
        bucket_secs: r.bucket_secs,
        over_time: r
            .over_time
            .into_iter()
            .map(|b| pb::SalesBucket {
                starts_at: b.starts_at,
                starts_at_ms: b.starts_at_ms,
                bookings: b.bookings,
                tickets_sold: b.tickets_sold,
                revenue_minor: b.revenue_minor,
            })
            .collect(),
        csv,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn feed_event_pb(e: api::feed::FeedEvent) -> pb::FeedEvent {
    pb::FeedEvent {
        log_index: e.log_index,
        at_ms: e.at_ms,
        changes: e
            .changes
            .into_iter()
            .map(|c| pb::FeedChange {
                r#type: c.kind,
                performance_id: c.performance_id.unwrap_or_default(),
                hold_id: c.hold_id.unwrap_or_default(),
                booking_id: c.booking_id.unwrap_or_default(),
                queue_id: c.queue_id.unwrap_or_default(),
                ticket_id: c.ticket_id.unwrap_or_default(),
                buyer: c.buyer.unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                count: c.count.unwrap_or_default(),
                until_ms: c.until_ms.unwrap_or_default(),
                amount_minor: c.amount_minor.unwrap_or_default(),
                currency: c.currency.unwrap_or_default(),
                seed: c.seed.unwrap_or_default(),
                prequeue: c.prequeue.unwrap_or_default(),
            })
            .collect(),
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn venue_pb(v: api::Venue) -> pb::Venue {
    pb::Venue {
        venue_id: v.venue_id,
        name: v.name,
        seats: v.seats,
        sections: v
            .sections
            .into_iter()
            .map(|s| match s {
                api::SectionSpec::Seated { name, rows } => pb::Section {
                    name,
                    rows: rows
                        .into_iter()
                        .map(|r| pb::Row {
                            label: r.label,
                            seats: r.seats,
                        })
                        .collect(),
                    capacity: 0,
                },
                api::SectionSpec::GeneralAdmission { name, capacity } => pb::Section {
                    name,
                    rows: vec![],
                    capacity,
                },
            })
            .collect(),
    }
}

fn event_pb(e: api::Event) -> pb::Event {
    pb::Event {
        event_id: e.event_id,
        name: e.name,
        category: e.category,
        description: e.description,
        media: e
            .media
            .into_iter()
            .map(|m| pb::MediaItem {
                kind: m.kind,
                url: m.url,
            })
            .collect(),
        performances: e.performances,
    }
}

fn checkout_pb(c: api::Checkout) -> pb::Checkout {
    pb::Checkout {
        hold_id: c.hold_id,
        payment_ref: c.payment_ref,
        performance_id: c.performance_id,
        amount_minor: c.amount_minor,
        currency: c.currency,
        state: match c.state {
            api::CheckoutState::Started => "started",
            api::CheckoutState::Captured => "captured",
            api::CheckoutState::Booked => "booked",
            api::CheckoutState::Failed => "failed",
            api::CheckoutState::Refunded => "refunded",
        }
        .into(),
        provider_ref: c.provider_ref.unwrap_or_default(),
        booking_id: c.booking_id.unwrap_or_default(),
        reason: c.reason.unwrap_or_default(),
        hold_state: c.hold_state,
        hold_expires_at_ms: c.hold_expires_at_ms,
    }
}

/// Page sizes of the list calls (as over HTTP).
const MAX_PAGE: u32 = 500;

fn page_limit(given: u32, default: u32) -> std::result::Result<usize, ApiError> {
    match given {
        0 => Ok(default as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_PAGE} (0: {default}), not {n}"
        ))),
    }
}

/// The cluster's token secret (set at initialization).
async fn token_secret(app: &App) -> std::result::Result<Digest32, ApiError> {
    app.read(Consistency::Stale, |l| l.state().token_secret)
        .await?
        .ok_or_else(|| ApiError::unavailable("not_initialized", "the cluster is not initialized"))
}

fn session_pb(app: &App, secret: &Digest32, user: UserId) -> pb::Session {
    let expires_at_ms = app.now_ms() + app.cfg.token_ttl.as_millis() as u64;
    pb::Session {
        user_id: user.to_string(),
        token: crate::auth::mint(secret, user, expires_at_ms),
        expires_at_ms,
    }
}

type PipelineStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<pb::PipelineAnswer, Status>> + Send>,
>;

/// A pipelined call's failure, as the unary call's status would carry it.
fn call_error(e: ApiError) -> pb::CallError {
    pb::CallError {
        grpc_code: grpc_code(e.status) as i32,
        code: e.code.to_string(),
        message: format!("{}: {}", e.code, e.detail),
        http_status: u32::from(e.status.as_u16()),
        retry_after_secs: e.retry_after.unwrap_or(0),
    }
}

/// The answer to a pipelined call past the bounds: nothing done, retry shortly.
fn overloaded(id: u64) -> pb::PipelineAnswer {
    let e = ApiError::unavailable(
        "overloaded",
        "too many pipelined calls in flight on this node; retry shortly",
    );
    pb::PipelineAnswer {
        id,
        answer: Some(pb::pipeline_answer::Answer::Error(call_error(e))),
    }
}

impl LedgerService {
    /// One `Pipeline` stream: read calls, run them concurrently in this one task (no task
    /// per call), and send each answer as it is decided; a call past the stream's or the
    /// node's bound is refused at once (503 `overloaded`, nothing applied). Ends when the
    /// caller has sent its last call and every call is answered, or when the caller goes
    /// away (calls still pending are dropped, as unary calls whose client hung up: their
    /// outcome is unknown to it).
    async fn serve_pipeline(
        self,
        mut calls: tonic::Streaming<pb::PipelineCall>,
        peer: Option<std::net::SocketAddr>,
        stream_auth: Option<String>,
        tx: tokio::sync::mpsc::Sender<std::result::Result<pb::PipelineAnswer, Status>>,
    ) {
        use futures::StreamExt;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut reading = true;
        loop {
            if !reading && pending.is_empty() {
                return;
            }
            tokio::select! {
                call = calls.message(), if reading => {
                    match call {
                        Ok(Some(call)) => match self.pipeline_slot(pending.len()) {
                            Some(slot) => {
                                let auth = stream_auth.as_deref();
                                pending.push(self.pipelined(call, peer, auth, slot));
                            }
                            None => {
                                if tx.send(Ok(overloaded(call.id))).await.is_err() {
                                    return;
                                }
                            }
                        },
                        Ok(None) => reading = false,
                        Err(status) => {
                            // A malformed message or a broken stream: nothing more can be
                            // read; answer what is pending, then end with the error.
                            while let Some(answer) = pending.next().await {
                                if tx.send(Ok(answer)).await.is_err() {
                                    return;
                                }
                            }
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Some(answer) = pending.next(), if !pending.is_empty() => {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                else => return,
            }
        }
    }

    /// Room for one more call on a stream with `pending` calls in flight, within the
    /// stream's bound and the node's; `None` counts a refused write.
    fn pipeline_slot(&self, pending: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = match pending < MAX_PIPELINE_IN_FLIGHT {
            true => self.pipelined.clone().try_acquire_owned().ok(),
            false => None,
        };
        if slot.is_none() {
            self.app
                .metrics
                .proposals_rejected_overload
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        slot
    }

    /// One pipelined call, authenticated and rate-limited on its own.
    async fn pipelined(
        &self,
        call: pb::PipelineCall,
        peer: Option<std::net::SocketAddr>,
        stream_auth: Option<&str>,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) -> pb::PipelineAnswer {
        use pb::pipeline_answer::Answer;
        use pb::pipeline_call::Call;
        let pb::PipelineCall {
            id,
            authorization,
            call,
        } = call;
        let auth = match authorization.is_empty() {
            true => stream_auth,
            false => Some(authorization.as_str()),
        };
        let answer = async {
            let Some(auth) = auth else {
                return Err(ApiError::unauthenticated(
                    "send authorization: Bearer <api key> in the call or the stream's metadata",
                ));
            };
            self.limiter.check_call(peer, auth)?;
            let p = crate::http::authenticate_value(&self.app, Some(auth)).await?;
            match call {
                Some(Call::PlaceHold(r)) => self.place_hold_as(p, r).await.map(Answer::Hold),
                Some(Call::ConfirmHold(r)) => self.confirm_hold_as(p, r).await.map(Answer::Booking),
                Some(Call::JoinQueue(r)) => self.join_queue_as(p, r).await.map(Answer::Queue),
                Some(Call::GetHold(r)) => self.get_hold_as(p, r).await.map(Answer::Hold),
                None => Err(ApiError::bad_request(
                    "a pipelined call names place_hold, confirm_hold, join_queue or get_hold",
                )),
            }
        }
        .await;
        pb::PipelineAnswer {
            id,
            answer: Some(answer.unwrap_or_else(|e| Answer::Error(call_error(e)))),
        }
    }
}

type FeedStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<pb::FeedEvent, Status>> + Send>,
>;

/// Whether this node can serve the API now: a leader is known, this node applied what it knows
/// committed within `READY_MAX_LAG` entries (readiness, `/readyz`), and the leader still has a
/// quorum: on the leader itself, a quorum of voters acknowledged it within the election
/// timeout (an isolated leader keeps its title until it hears of a newer term, but can commit
/// nothing); on a follower, its leader is known (a follower that stops hearing from it starts
/// an election and forgets it within one election timeout).
pub fn can_serve(app: &App) -> std::result::Result<(), String> {
    use openraft::Instant as _;
    use openraft::type_config::async_runtime::WatchReceiver as _;
    app.readiness()?;
    let m = app.raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(app.cfg.id) {
        return Ok(());
    }
    if m.membership_config.membership().voter_ids().count() <= 1 {
        return Ok(());
    }
    let window = std::time::Duration::from_millis(app.cfg.heartbeat_ms * 6);
    match m.last_quorum_acked {
        Some(at) if at.elapsed() <= window => Ok(()),
        Some(at) => Err(format!(
            "leader without a quorum: last acknowledged {} ms ago",
            at.elapsed().as_millis()
        )),
        None => Err("leader not yet acknowledged by a quorum".into()),
    }
}

/// Keep `grpc.health.v1.Health` in step with [`can_serve`]: the overall status ("") and
/// `ticketledger.v1.Ledger` are SERVING while it holds, NOT_SERVING otherwise. Checked on every
/// Raft metrics change and at least every 200 ms, until shutdown.
pub async fn health_loop(
    app: Arc<App>,
    reporter: tonic_health::server::HealthReporter,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use openraft::type_config::async_runtime::WatchReceiver as _;
    use tonic::server::NamedService;
    let ledger_name = <pb::ledger_server::LedgerServer<LedgerService> as NamedService>::NAME;
    let mut metrics = app.raft.metrics();
    let mut last = None;
    loop {
        let status = if can_serve(&app).is_ok() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(ledger_name, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = metrics.changed() => {}
            // Losing the quorum changes no metric: the clock has to be looked at.
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = shutdown.changed() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                reporter.set_service_status(ledger_name, tonic_health::ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    type WatchStream = FeedStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<FeedStream> {
        use futures::StreamExt;
        let p = self.principal(&req).await?;
        let sub = crate::watch::subscribe(self.app.clone(), p, req.get_ref().from_index)
            .await
            .map_err(crate::watch::WatchError::into_status)?;
        let stream = sub.into_stream().filter_map(|item| async move {
            match item {
                crate::watch::Item::Event(e) => Some(Ok(feed_event_pb(e))),
                // HTTP/2 keeps the connection alive; nothing to send.
                crate::watch::Item::Heartbeat { .. } => None,
                crate::watch::Item::End(e) => Some(Err(e.into_status())),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_performance(
        &self,
        req: Request<pb::GetPerformanceRequest>,
    ) -> Result<pb::Performance> {
        self.principal(&req).await?;
        let r = req.into_inner();
        let id: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let c = if r.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let p = self
            .app
            .read(c, |l| {
                l.state()
                    .performances
                    .get(&id)
                    .map(|p| performance_pb(l, p))
            })
            .await?;
        p.map(Response::new)
            .ok_or_else(|| ApiError::not_found(format!("no performance {id}")).into())
    }

    async fn place_hold(&self, req: Request<pb::PlaceHoldRequest>) -> Result<pb::Hold> {
        let p = self.principal(&req).await?;
        Ok(Response::new(
            self.place_hold_as(p, req.into_inner()).await?,
        ))
    }

    type PipelineStream = PipelineStream;

    async fn pipeline(
        &self,
        req: Request<tonic::Streaming<pb::PipelineCall>>,
    ) -> Result<PipelineStream> {
        let peer = req.remote_addr();
        let stream_auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let calls = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(PIPELINE_ANSWERS_BUFFERED);
        tokio::spawn(self.clone().serve_pipeline(calls, peer, stream_auth, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_hold(&self, req: Request<pb::HoldRef>) -> Result<pb::Hold> {
        let p = self.principal(&req).await?;
        Ok(Response::new(self.get_hold_as(p, req.into_inner()).await?))
    }

    async fn release_hold(&self, req: Request<pb::HoldRef>) -> Result<pb::Hold> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        self.write(p, &r.request_id, Op::ReleaseHold { hold })
            .await?;
        Ok(Response::new(self.hold(p, hold).await?))
    }

    async fn extend_hold(&self, req: Request<pb::ExtendHoldRequest>) -> Result<pb::Hold> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        self.write(
            p,
            &r.request_id,
            Op::ExtendHold {
                hold,
                payment_ref: r.payment_ref,
            },
        )
        .await?;
        Ok(Response::new(self.hold(p, hold).await?))
    }

    async fn confirm_hold(&self, req: Request<pb::ConfirmHoldRequest>) -> Result<pb::Booking> {
        let p = self.principal(&req).await?;
        Ok(Response::new(
            self.confirm_hold_as(p, req.into_inner()).await?,
        ))
    }

    async fn get_booking(&self, req: Request<pb::BookingRef>) -> Result<pb::Booking> {
        let p = self.principal(&req).await?;
        let id: BookingId = parse_id(&req.get_ref().booking_id, "booking")?;
        Ok(Response::new(
            self.booking(p, id, Consistency::Linearizable).await?,
        ))
    }

    async fn refund(&self, req: Request<pb::RefundRequest>) -> Result<pb::Refunded> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let booking: BookingId = parse_id(&r.booking_id, "booking")?;
        let mut tickets = Vec::with_capacity(r.tickets.len());
        for t in &r.tickets {
            tickets.push(
                t.parse::<TicketId>()
                    .map_err(|_| ApiError::invalid(format!("{t:?} is not a ticket id")))?,
            );
        }
        // As over HTTP: named from the request_id when there is one, so a retry is the same.
        let refund_ref = match (non_empty(&r.refund_ref), r.request_id.is_empty()) {
            (Some(x), _) => x,
            (None, false) => crate::app::refund_ref_for_key(&booking.to_string(), &r.request_id),
            (None, true) => format!("refund-{}", crate::app::random_key()),
        };
        match self
            .write(
                p,
                &r.request_id,
                Op::Refund {
                    booking,
                    tickets,
                    refund_ref,
                },
            )
            .await?
        {
            Reply::Refunded { amount, tickets } => Ok(Response::new(pb::Refunded {
                booking_id: booking.to_string(),
                tickets: tickets.iter().map(|t| t.to_string()).collect(),
                amount_minor: amount.amount_minor,
                currency: amount.currency.to_string(),
            })),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn join_queue(&self, req: Request<pb::JoinQueueRequest>) -> Result<pb::QueueStatus> {
        let p = self.principal(&req).await?;
        Ok(Response::new(
            self.join_queue_as(p, req.into_inner()).await?,
        ))
    }

    async fn get_queue(&self, req: Request<pb::QueueRef>) -> Result<pb::QueueStatus> {
        let p = self.principal(&req).await?;
        let queue: QueueId = parse_id(&req.get_ref().queue_id, "queue entry")?;
        let found = self
            .app
            .read(consistency(req.get_ref().stale), |l| {
                l.queue_entry(queue).map(|(e, pos)| (*e, pos))
            })
            .await?;
        match found {
            Some((e, pos)) if e.buyer == p || self.app.is_operator(p).await? => {
                Ok(Response::new(pb::QueueStatus {
                    queue_id: queue.to_string(),
                    state: e.state.as_str().into(),
                    has_position: pos.is_some(),
                    position: pos.unwrap_or(0),
                    admitted_until_ms: if e.state == QueueState::Admitted {
                        e.admitted_until_ms
                    } else {
                        0
                    },
                }))
            }
            Some(_) => Err(ApiError::forbidden("this queue entry is another buyer's").into()),
            None => Err(ApiError::not_found(format!("no queue entry {queue}")).into()),
        }
    }

    async fn create_venue(&self, req: Request<pb::CreateVenueRequest>) -> Result<pb::VenueCreated> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let sections = r
            .sections
            .into_iter()
            .map(|s| {
                if s.rows.is_empty() {
                    api::SectionSpec::GeneralAdmission {
                        name: s.name,
                        capacity: s.capacity,
                    }
                } else {
                    api::SectionSpec::Seated {
                        name: s.name,
                        rows: s
                            .rows
                            .into_iter()
                            .map(|r| api::RowSpec {
                                label: r.label,
                                seats: r.seats,
                            })
                            .collect(),
                    }
                }
            })
            .collect();
        match self
            .write(
                p,
                &r.request_id,
                venue_op(api::CreateVenue {
                    name: r.name,
                    sections,
                }),
            )
            .await?
        {
            Reply::VenueCreated {
                venue,
                seats,
                ga_capacity,
            } => Ok(Response::new(pb::VenueCreated {
                venue_id: venue.to_string(),
                seats,
                ga_capacity,
            })),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn create_event(&self, req: Request<pb::CreateEventRequest>) -> Result<pb::EventCreated> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let op = event_op(api::CreateEvent {
            name: r.name,
            category: r.category,
            description: r.description,
            media: vec![],
        });
        match self.write(p, &r.request_id, op).await? {
            Reply::EventCreated { event } => Ok(Response::new(pb::EventCreated {
                event_id: event.to_string(),
            })),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn create_performance(
        &self,
        req: Request<pb::CreatePerformanceRequest>,
    ) -> Result<pb::PerformanceCreated> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let event: EventId = parse_id(&r.event_id, "event")?;
        let body = api::CreatePerformance {
            venue_id: r.venue_id,
            starts_at: api::TimeInput::UnixMs(r.starts_at_ms),
            on_sale_at: api::TimeInput::UnixMs(r.on_sale_at_ms),
            sale_ends_at: (r.sale_ends_at_ms > 0)
                .then_some(api::TimeInput::UnixMs(r.sale_ends_at_ms)),
            hold_ttl_secs: r.hold_ttl_secs,
            payment_grace_secs: (r.payment_grace_secs > 0).then_some(r.payment_grace_secs),
            max_seats_per_order: (r.max_seats_per_order > 0)
                .then(|| r.max_seats_per_order.min(u32::from(u16::MAX)) as u16),
            categories: (!r.categories.is_empty()).then_some(r.categories),
            prices: r
                .prices
                .into_iter()
                .map(|x| api::Price {
                    section: x.section,
                    category: non_empty(&x.category),
                    amount_minor: x.amount_minor,
                    currency: x.currency,
                })
                .collect(),
            waiting_room: (r.admission_rate_per_sec > 0).then(|| api::WaitingRoomSpec {
                admission_rate_per_sec: r.admission_rate_per_sec,
                admission_ttl_secs: r.admission_ttl_secs,
                max_active_admissions: r.max_active_admissions,
                seed_commitment: r.seed_commitment.clone(),
            }),
        };
        let op = self
            .app
            .read(Consistency::Linearizable, |l| {
                performance_op(l, event, body)
            })
            .await??;
        match self.write(p, &r.request_id, op).await? {
            Reply::PerformanceCreated { performance } => {
                Ok(Response::new(pb::PerformanceCreated {
                    performance_id: performance.to_string(),
                }))
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn set_sale_status(
        &self,
        req: Request<pb::SetSaleStatusRequest>,
    ) -> Result<pb::Performance> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let id: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let op = status_op(
            id,
            &api::UpdatePerformance {
                status: r.status,
                seed: non_empty(&r.seed),
            },
        )?;
        self.write(p, &r.request_id, op).await?;
        let perf = self
            .app
            .read(Consistency::Stale, |l| {
                l.state()
                    .performances
                    .get(&id)
                    .map(|x| performance_pb(l, x))
            })
            .await?;
        perf.map(Response::new)
            .ok_or_else(|| ApiError::not_found(format!("no performance {id}")).into())
    }

    async fn signup(&self, req: Request<pb::SignupRequest>) -> Result<pb::Session> {
        // As over HTTP: no request_id (anonymous signups would share it); a retry is
        // answered `already_exists`, then log in.
        let r = req.into_inner();
        let secret = token_secret(&self.app).await?;
        let password_hash = self.app.passwords.hash(r.password).await?;
        let op = Op::CreateUser {
            email: r.email,
            name: r.name,
            password_hash,
            role: Role::Buyer,
        };
        match self.write(Principal::System, "", op).await? {
            Reply::UserCreated { user } => Ok(Response::new(session_pb(&self.app, &secret, user))),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<pb::Session> {
        let r = req.into_inner();
        let secret = token_secret(&self.app).await?;
        let email = r.email.to_ascii_lowercase();
        let lookup = |l: &Ledger| {
            l.user_by_email(&email)
                .map(|u| (u.id, u.password_hash.clone()))
        };
        let found = match self.app.read(Consistency::Stale, lookup).await? {
            Some(u) => Some(u),
            None => self.app.read(Consistency::Linearizable, lookup).await?,
        };
        let wrong = || Status::from(ApiError::unauthenticated("wrong email or password"));
        let Some((user, stored)) = found else {
            // The same time as a real check, so timing does not tell which emails exist.
            let _ = self.app.passwords.hash("timing-equalizer".into()).await;
            return Err(wrong());
        };
        if self.app.passwords.verify(r.password, stored).await? {
            Ok(Response::new(session_pb(&self.app, &secret, user)))
        } else {
            Err(wrong())
        }
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<pb::ApiKeyCreated> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let role = Role::parse(&r.role).ok_or_else(|| {
            ApiError::invalid("role must be buyer, organizer, service or operator")
        })?;
        let secret = crate::app::random_key();
        let key_digest = *blake3::hash(secret.as_bytes()).as_bytes();
        let op = Op::CreateApiKey {
            name: r.name,
            role,
            key_digest,
        };
        match self.write(p, &r.request_id, op).await? {
            // A retry with the same request_id is answered with the first key's id, but the
            // secret was drawn anew here and was never stored: say so rather than hand out a
            // secret that does not work.
            Reply::ApiKeyCreated { key } => {
                let works = self
                    .app
                    .read(Consistency::Stale, |l| {
                        l.api_key_by_digest(&key_digest).map(|k| k.id) == Some(key)
                    })
                    .await?;
                if !works {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        "idempotency_conflict",
                        format!("this request_id already created key {key}, whose secret was shown once; create another key with a new request_id"),
                    )
                    .into());
                }
                Ok(Response::new(pb::ApiKeyCreated {
                    key_id: key.to_string(),
                    key: secret,
                }))
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn get_venue(&self, req: Request<pb::VenueRef>) -> Result<pb::Venue> {
        self.principal(&req).await?;
        let r = req.into_inner();
        let id: VenueId = parse_id(&r.venue_id, "venue")?;
        self.app
            .read(consistency(r.stale), |l| {
                l.state().venues.get(&id).map(venue_view)
            })
            .await?
            .map(|v| Response::new(venue_pb(v)))
            .ok_or_else(|| ApiError::not_found(format!("no venue {id}")).into())
    }

    async fn get_event(&self, req: Request<pb::EventRef>) -> Result<pb::Event> {
        self.principal(&req).await?;
        let r = req.into_inner();
        let id: EventId = parse_id(&r.event_id, "event")?;
        self.app
            .read(consistency(r.stale), |l| {
                l.state().events.get(&id).map(|e| event_view(l, e))
            })
            .await?
            .map(|e| Response::new(event_pb(e)))
            .ok_or_else(|| ApiError::not_found(format!("no event {id}")).into())
    }

    async fn list_events(&self, req: Request<pb::ListEventsRequest>) -> Result<pb::EventList> {
        self.principal(&req).await?;
        let r = req.into_inner();
        let limit = page_limit(r.limit, 50)?;
        let after: Option<EventId> = match non_empty(&r.after) {
            Some(a) => Some(
                a.parse()
                    .map_err(|_| ApiError::bad_request("after must be an event id"))?,
            ),
            None => None,
        };
        let needle = non_empty(&r.q).map(|q| q.to_lowercase());
        let category = non_empty(&r.category);
        let (events, next) = self
            .app
            .read(consistency(r.stale), |l| {
                let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                let mut events: Vec<api::Event> = l
                    .state()
                    .events
                    .range((from, std::ops::Bound::Unbounded))
                    .map(|(_, e)| e)
                    .filter(|e| category.as_ref().is_none_or(|c| &e.category == c))
                    .filter(|e| {
                        needle.as_ref().is_none_or(|n| {
                            e.name.to_lowercase().contains(n)
                                || e.description.to_lowercase().contains(n)
                        })
                    })
                    .take(limit + 1)
                    .map(|e| event_view(l, e))
                    .collect();
                let next = if events.len() > limit {
                    events.truncate(limit);
                    events
                        .last()
                        .map(|e| e.event_id.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                (events, next)
            })
            .await?;
        Ok(Response::new(pb::EventList {
            events: events.into_iter().map(event_pb).collect(),
            next,
        }))
    }

    async fn get_seats(&self, req: Request<pb::GetSeatsRequest>) -> Result<pb::SeatMap> {
        self.principal(&req).await?;
        let r = req.into_inner();
        let id: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let section = non_empty(&r.section);
        let map = self
            .app
            .read(consistency(r.stale), |l| {
                match l.state().performances.get(&id) {
                    Some(p) => seat_map(l, p, section.as_deref()),
                    None => Err(ApiError::not_found(format!("no performance {id}"))),
                }
            })
            .await??;
        Ok(Response::new(pb::SeatMap {
            seats: map
                .seats
                .into_iter()
                .map(|s| pb::SeatStatus {
                    seat: s.seat,
                    state: s.state,
                })
                .collect(),
        }))
    }

    async fn confirm_late(&self, req: Request<pb::ConfirmHoldRequest>) -> Result<pb::Booking> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        let op = Op::ConfirmLate {
            hold,
            payment_ref: r.payment_ref,
            code_seed: rand::random::<CodeSeed>(),
        };
        match self.write(p, &r.request_id, op).await? {
            Reply::BookingConfirmed(b) => Ok(Response::new(
                self.booking(p, b.booking, Consistency::Stale).await?,
            )),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn record_payment(&self, req: Request<pb::RecordPaymentRequest>) -> Result<pb::Checkout> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        let event = match r.event.as_str() {
            "captured" => api::PaymentEvent::Captured {
                provider_ref: r.provider_ref,
            },
            "failed" => api::PaymentEvent::Failed { reason: r.reason },
            "refunded" => api::PaymentEvent::Refunded {
                provider_ref: r.provider_ref,
                reason: r.reason,
            },
            other => {
                return Err(ApiError::invalid(format!(
                    "event must be captured, failed or refunded, not {other:?}"
                ))
                .into());
            }
        };
        let op = Op::RecordPayment {
            hold,
            payment_ref: r.payment_ref,
            event: payment_event(event),
        };
        match self.write(p, &r.request_id, op).await? {
            Reply::PaymentRecorded { .. } => {}
            other => return Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
        Ok(Response::new(
            self.checkout(p, hold, Consistency::Stale).await?,
        ))
    }

    async fn get_checkout(&self, req: Request<pb::HoldRef>) -> Result<pb::Checkout> {
        let p = self.principal(&req).await?;
        let hold: HoldId = parse_id(&req.get_ref().hold_id, "hold")?;
        Ok(Response::new(
            self.checkout(p, hold, Consistency::Linearizable).await?,
        ))
    }

    async fn list_checkouts(
        &self,
        req: Request<pb::ListCheckoutsRequest>,
    ) -> Result<pb::CheckoutList> {
        // A page scans at most this many holds (with `all`) and may come back short.
        const MAX_CHECKOUT_SCAN: usize = 100_000;
        let p = self.principal(&req).await?;
        if !self.app.is_service_or_operator(p).await? {
            return Err(
                ApiError::forbidden("listing checkouts needs a service or operator key").into(),
            );
        }
        let r = req.into_inner();
        let limit = page_limit(r.limit, 100)?;
        let after: Option<HoldId> = match non_empty(&r.after) {
            Some(a) => Some(
                a.parse()
                    .map_err(|_| ApiError::bad_request("after must be a hold id"))?,
            ),
            None => None,
        };
        let (checkouts, next) = self
            .app
            .read(consistency(r.stale), |l| {
                let mut out = Vec::with_capacity(limit.min(1024));
                let mut last_seen = None;
                let mut more = false;
                if r.all {
                    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                    let holds = l.state().holds.range((from, std::ops::Bound::Unbounded));
                    for (scanned, (_, h)) in holds.enumerate() {
                        if out.len() == limit || scanned == MAX_CHECKOUT_SCAN {
                            more = true;
                            break;
                        }
                        out.extend(checkout_view(h));
                        last_seen = Some(h.id);
                    }
                } else {
                    for h in l.open_checkouts(after) {
                        if out.len() == limit {
                            more = true;
                            break;
                        }
                        out.extend(checkout_view(h));
                        last_seen = Some(h.id);
                    }
                }
                let next = match (more, last_seen) {
                    (true, Some(h)) => h.to_string(),
                    _ => String::new(),
                };
                (out, next)
            })
            .await?;
        Ok(Response::new(pb::CheckoutList {
            checkouts: checkouts.into_iter().map(checkout_pb).collect(),
            next,
        }))
    }

    async fn list_bookings(
        &self,
        req: Request<pb::ListBookingsRequest>,
    ) -> Result<pb::BookingList> {
        const MAX_BOOKINGS_PAGE: u32 = 200;
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        if r.limit > MAX_BOOKINGS_PAGE {
            return Err(ApiError::bad_request(format!(
                "limit must be 1..={MAX_BOOKINGS_PAGE} (0: 50)"
            ))
            .into());
        }
        let limit = if r.limit == 0 { 50 } else { r.limit as usize };
        let after: Option<BookingId> = match non_empty(&r.after) {
            Some(a) => Some(
                a.parse()
                    .map_err(|_| ApiError::bad_request("after must be a booking id"))?,
            ),
            None => None,
        };
        let buyer = non_empty(&r.buyer)
            .map(|b| parse_principal(&b))
            .transpose()?;
        let performance: Option<PerformanceId> = non_empty(&r.performance_id)
            .map(|x| parse_id(&x, "performance"))
            .transpose()?;
        let privileged = self.app.is_service_or_operator(p).await?;
        let forbidden = || {
            Status::from(ApiError::forbidden(
                "only a service or operator key lists other buyers', a performance's or all bookings",
            ))
        };
        // Which bookings to walk: a buyer's, a performance's, or (None) every one.
        let scope = match (buyer, performance, r.all) {
            (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
                return Err(ApiError::bad_request(
                    "filter by buyer, by performance or all, one of them",
                )
                .into());
            }
            (Some(b), None, false) if privileged || b == p => Some(Ok(b)),
            (None, Some(x), false) if privileged => Some(Err(x)),
            (None, None, true) if privileged => None,
            (None, None, false) => Some(Ok(p)),
            _ => return Err(forbidden()),
        };
        let (bookings, next) = self
            .app
            .read(consistency(r.stale), |l| {
                let mut page: Vec<&ledger::Booking> = match scope {
                    Some(Ok(b)) => l.bookings_of(b, after).take(limit + 1).collect(),
                    Some(Err(x)) => l.bookings_for(x, after).take(limit + 1).collect(),
                    None => {
                        let from =
                            after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                        l.state()
                            .bookings
                            .range((from, std::ops::Bound::Unbounded))
                            .map(|(_, b)| b)
                            .take(limit + 1)
                            .collect()
                    }
                };
                let more = page.len() > limit;
                page.truncate(limit);
                let next = match (more, page.last()) {
                    (true, Some(b)) => b.id.to_string(),
                    _ => String::new(),
                };
                let views: Vec<api::Booking> =
                    page.into_iter().map(|b| booking_view(l, b)).collect();
                (views, next)
            })
            .await?;
        Ok(Response::new(pb::BookingList {
            bookings: bookings.into_iter().map(booking_pb).collect(),
            next,
        }))
    }

    async fn check_in(&self, req: Request<pb::CheckInRequest>) -> Result<pb::CheckedIn> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let performance: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let code = parse_code(&r.code)?;
        let (ticket, booking) = match self
            .write(p, &r.request_id, Op::CheckIn { performance, code })
            .await?
        {
            Reply::CheckedIn { ticket, booking } => (ticket, booking),
            other => return Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        };
        let b = self.booking(p, booking, Consistency::Stale).await;
        // The door (an organizer) may not read the buyer's booking: answer from the ledger.
        let view = match b {
            Ok(b) => Some(b),
            Err(_) => {
                self.app
                    .read(Consistency::Stale, |l| {
                        l.state()
                            .bookings
                            .get(&booking)
                            .map(|b| booking_pb(booking_view(l, b)))
                    })
                    .await?
            }
        }
        .ok_or_else(|| ApiError::internal("checked in but the booking is not readable"))?;
        let t = view
            .tickets
            .into_iter()
            .find(|t| t.ticket_id == ticket.to_string())
            .ok_or_else(|| ApiError::internal("checked in but the ticket is not in its booking"))?;
        Ok(Response::new(pb::CheckedIn {
            ticket_id: t.ticket_id,
            booking_id: view.booking_id,
            seat: t.seat,
            section: t.section,
            category: t.category,
        }))
    }

    async fn update_event(&self, req: Request<pb::UpdateEventRequest>) -> Result<pb::Event> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let event: EventId = parse_id(&r.event_id, "event")?;
        let update = api::UpdateEvent {
            name: r.name,
            category: r.category,
            description: r.description,
            media: r.replace_media.then(|| {
                r.media
                    .into_iter()
                    .map(|m| api::MediaItem {
                        kind: m.kind,
                        url: m.url,
                    })
                    .collect()
            }),
        };
        let op = http_manage::update_event_op(&self.app, event, update).await?;
        let reply = self.write(p, &r.request_id, op).await?;
        let e = http_manage::updated_event(&self.app, event, reply).await?;
        Ok(Response::new(event_pb(e)))
    }

    async fn block_seats(&self, req: Request<pb::BlockSeatsRequest>) -> Result<pb::SeatsBlocked> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let performance: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let b = api::BlockSeats {
            seats: r.seats,
            blocked: r.blocked,
        };
        let op = http_manage::block_seats_op(&self.app, performance, &b).await?;
        let done = http_manage::seats_blocked(self.write(p, &r.request_id, op).await?)?;
        Ok(Response::new(pb::SeatsBlocked {
            changed: done.changed,
        }))
    }

    async fn get_sales_report(
        &self,
        req: Request<pb::SalesReportRequest>,
    ) -> Result<pb::SalesReport> {
        let p = self.principal(&req).await?;
        let r = req.into_inner();
        let performance: PerformanceId = parse_id(&r.performance_id, "performance")?;
        let bucket_secs = (r.bucket_secs != 0).then_some(r.bucket_secs);
        let report = http_manage::sales_report_of(
            &self.app,
            p,
            performance,
            bucket_secs,
            consistency(r.stale),
        )
        .await?;
        let csv = if r.csv {
            http_manage::sales_csv(&report)
        } else {
            String::new()
        };
        Ok(Response::new(sales_report_pb(report, csv)))
    }
}

/// `u_5` (an account) or `k_3` (an API key), as over HTTP.
fn parse_principal(s: &str) -> std::result::Result<Principal, ApiError> {
    let bad =
        || ApiError::bad_request(format!("{s:?} is not an account (u_…) or API key (k_…) id"));
    if s.starts_with("u_") {
        s.parse().map(Principal::User).map_err(|_| bad())
    } else if s.starts_with("k_") {
        s.parse().map(Principal::ApiKey).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

/// A check-in code: 32 hex digits.
fn parse_code(s: &str) -> std::result::Result<CheckInCode, ApiError> {
    let bad = || ApiError::invalid("a check-in code is 32 hex digits");
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return Err(bad());
    }
    let mut code = [0u8; 16];
    for (i, byte) in code.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(code)
}
