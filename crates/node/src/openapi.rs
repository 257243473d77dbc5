//! `GET /v1/openapi.json` (OpenAPI 3.1) and `GET /v1/docs` (a page that renders it).
//!
//! The document is generated: every schema comes from the `crates/api` wire types through
//! `utoipa::ToSchema` (the `openapi` feature of `api`), so a type change shows up here by
//! construction. Each route of the router has one `#[utoipa::path]` marker below, carrying its
//! method, path, parameters, request body and success response; [`Common`] then adds what
//! every operation of a kind shares (bearer security, the problems of bodies, parameters,
//! authentication, rate limits and unavailability) and the domain problems of [`ERRORS`].
//! A test (`routes_and_document_agree`) reads the router's `.route(...)` calls and fails
//! when one is not documented or a documented one is not routed.

use crate::app::App;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type,
};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// `/v1/openapi.json` and `/v1/docs`; neither needs a key (they describe, they do not read).
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/openapi.json", get(serve_openapi_json))
        .route("/v1/docs", get(serve_docs))
}

/// The document as JSON text, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

async fn serve_openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

async fn serve_docs() -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("docs.html"),
    )
        .into_response();
    // The page is self-contained: its own inline script and style, and the document from
    // this origin; nothing else may load.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    resp
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ticketledger API",
        version = "1",
        description = "The public HTTP/JSON v1 API of ticketd (docs/http-api.md). Every error is an \
RFC 9457 `application/problem+json` with a stable `code` (docs/errors.md). Any node accepts any \
call; reads are linearizable unless `?consistency=stale`; mutating calls take an \
`Idempotency-Key`."
    ),
    paths(
        healthz, readyz, metrics, openapi_json, docs,
        signup, login, create_api_key,
        create_venue, get_venue, create_event, list_events, get_event, update_event,
        create_performance, get_performance, update_performance, get_seats,
        block_seats, check_in, sales_report,
        join_queue, get_queue,
        create_hold, get_hold, release_hold, extend_hold, confirm_hold, confirm_late,
        record_payment, get_checkout, list_checkouts,
        list_bookings, get_booking, refund_booking, watch,
        cluster_init, cluster_status, cluster_add_learner, cluster_change_membership,
        cluster_transfer_leader, cluster_snapshot, cluster_backup, cluster_restore,
    ),
    components(schemas(api::Problem, api::feed::FeedEvent)),
    modifiers(&Common),
    tags(
        (name = "probes", description = "Liveness, readiness and metrics; no key"),
        (name = "docs", description = "This document and a page that renders it; no key"),
        (name = "accounts", description = "Buyer signup and login, API keys"),
        (name = "catalog", description = "Venues, events, performances, seat maps"),
        (name = "waiting room", description = "Joining a performance's queue and its status"),
        (name = "holds", description = "Holds, confirmation into bookings, checkouts"),
        (name = "bookings", description = "Bookings and refunds"),
        (name = "reports", description = "Sales reports for organizers"),
        (name = "watch", description = "The change feed as Server-Sent Events"),
        (name = "cluster", description = "Operator administration of the Raft cluster"),
    )
)]
pub struct ApiDoc;

// ---------------------------------------------------------------- shared parameters

/// `Idempotency-Key`: a retry with the same key returns the first outcome; the same key with
/// another request is 409 `idempotency_conflict`.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct Idempotency {
    /// 1..=128 visible ASCII bytes, unique per intended change (e.g. 128-bit hex).
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 128)]
    idempotency_key: Option<String>,
}

/// How a read is served.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ConsistencyLevel {
    /// After a read index from the leader (the default).
    Linearizable,
    /// From this node's applied state, possibly behind the leader.
    Stale,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ReadConsistency {
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventQuery {
    /// Only events of this category (exact).
    category: Option<String>,
    /// Only events whose name or description contains this text (case-insensitive).
    q: Option<String>,
    /// The `next` of the previous page: events after this id.
    after: Option<String>,
    /// Page size, 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SeatQuery {
    /// Only this section's seats.
    section: Option<String>,
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CheckoutQuery {
    /// `true` (default): only checkouts still owed a payment outcome; `false`: every kept one.
    open: Option<bool>,
    /// The `next` of the previous page: checkouts of holds after this hold id.
    after: Option<String>,
    /// Page size, 1..=500, default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct BookingQuery {
    /// A service or operator: one buyer's bookings (`u_5` an account, `k_3` an API key).
    buyer: Option<String>,
    /// A service or operator: one performance's bookings.
    performance: Option<String>,
    /// The `next` of the previous page: bookings after this id.
    after: Option<String>,
    /// Page size, 1..=200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

/// The format of a sales report.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ReportFormat {
    Json,
    Csv,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ReportQuery {
    /// `json` (default) or `csv`.
    #[param(inline)]
    format: Option<ReportFormat>,
    /// Width of each `over_time` bucket, 60..=2592000 seconds, default 3600.
    #[param(minimum = 60, maximum = 2592000)]
    bucket_secs: Option<u64>,
    /// Default `linearizable`.
    #[param(inline)]
    consistency: Option<ConsistencyLevel>,
}

/// A ledger snapshot file, as `GET /v1/cluster/backup` returns it.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct BackupFile(Vec<u8>);

// ---------------------------------------------------------------- operations
//
// One marker per route: utoipa reads the attribute, the function itself is never called (the
// handlers live in http.rs and admin.rs, whose route table the test below compares to this).

mod ops {
    #![allow(dead_code)]
    use super::*;
    use api::*;

    /// Liveness: 200 while the process serves.
    #[utoipa::path(get, path = "/healthz", tag = "probes",
        responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
    pub fn healthz() {}

    /// Readiness: a leader is known and this node applied what it knows committed (within
    /// 256 entries, so a write in flight does not count as unready).
    #[utoipa::path(get, path = "/readyz", tag = "probes",
        responses((status = 200, description = "`ready`", body = String, content_type = "text/plain")))]
    pub fn readyz() {}

    /// Prometheus metrics.
    #[utoipa::path(get, path = "/metrics", tag = "probes",
        responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
    pub fn metrics() {}

    /// This document (OpenAPI 3.1, generated from the wire types).
    #[utoipa::path(get, path = "/v1/openapi.json", tag = "docs",
        responses((status = 200, description = "the OpenAPI document", body = Object, content_type = "application/json")))]
    pub fn openapi_json() {}

    /// A page listing every operation of this document.
    #[utoipa::path(get, path = "/v1/docs", tag = "docs",
        responses((status = 200, description = "HTML", body = String, content_type = "text/html")))]
    pub fn docs() {}

    /// Create a buyer account and log it in (no `Idempotency-Key`: a retry is 409).
    #[utoipa::path(post, path = "/v1/auth/signup", tag = "accounts", request_body = Signup,
        responses((status = 201, description = "the account and a login token", body = Session)))]
    pub fn signup() {}

    /// Log in: a bearer token with an expiry (401 alike for a wrong email or password).
    #[utoipa::path(post, path = "/v1/auth/login", tag = "accounts", request_body = Login,
        responses((status = 200, description = "a login token", body = Session)))]
    pub fn login() {}

    /// Create an API key for a role (operator only); the secret is shown once.
    #[utoipa::path(post, path = "/v1/api-keys", tag = "accounts", request_body = CreateApiKey,
        params(Idempotency),
        responses((status = 201, description = "the key", body = ApiKeyCreated)))]
    pub fn create_api_key() {}

    /// Create a venue with seated and general-admission sections (organizer, operator).
    #[utoipa::path(post, path = "/v1/venues", tag = "catalog", request_body = CreateVenue,
        params(Idempotency),
        responses((status = 201, description = "the venue", body = VenueCreated)))]
    pub fn create_venue() {}

    /// Read a venue.
    #[utoipa::path(get, path = "/v1/venues/{id}", tag = "catalog",
        params(("id" = String, Path, description = "venue id, e.g. `v_2`"), ReadConsistency),
        responses((status = 200, description = "the venue", body = Venue)))]
    pub fn get_venue() {}

    /// Create an event (organizer, operator).
    #[utoipa::path(post, path = "/v1/events", tag = "catalog", request_body = CreateEvent,
        params(Idempotency),
        responses((status = 201, description = "the event", body = EventCreated)))]
    pub fn create_event() {}

    /// List events by id, filtered by category and text, a page at a time.
    #[utoipa::path(get, path = "/v1/events", tag = "catalog", params(EventQuery),
        responses((status = 200, description = "a page of events", body = EventList)))]
    pub fn list_events() {}

    /// Read an event and its performances.
    #[utoipa::path(get, path = "/v1/events/{id}", tag = "catalog",
        params(("id" = String, Path, description = "event id, e.g. `e_3`"), ReadConsistency),
        responses((status = 200, description = "the event", body = Event)))]
    pub fn get_event() {}

    /// Change an event's name, category, description or media (its owner, operator).
    #[utoipa::path(patch, path = "/v1/events/{id}", tag = "catalog", request_body = UpdateEvent,
        params(("id" = String, Path, description = "event id"), Idempotency),
        responses((status = 200, description = "the event after the change", body = Event)))]
    pub fn update_event() {}

    /// Create a performance of an event (its owner, operator).
    #[utoipa::path(post, path = "/v1/events/{id}/performances", tag = "catalog",
        request_body = CreatePerformance,
        params(("id" = String, Path, description = "event id"), Idempotency),
        responses((status = 201, description = "the performance", body = PerformanceCreated)))]
    pub fn create_performance() {}

    /// Read a performance with per-section availability.
    #[utoipa::path(get, path = "/v1/performances/{id}", tag = "catalog",
        params(("id" = String, Path, description = "performance id, e.g. `p_4`"), ReadConsistency),
        responses((status = 200, description = "the performance", body = Performance)))]
    pub fn get_performance() {}

    /// Open, pause, close or cancel a sale (owner, operator).
    #[utoipa::path(patch, path = "/v1/performances/{id}", tag = "catalog",
        request_body = UpdatePerformance,
        params(("id" = String, Path, description = "performance id"), Idempotency),
        responses((status = 200, description = "the performance after the change", body = Performance)))]
    pub fn update_performance() {}

    /// The seat map: every seat's state.
    #[utoipa::path(get, path = "/v1/performances/{id}/seats", tag = "catalog",
        params(("id" = String, Path, description = "performance id"), SeatQuery),
        responses((status = 200, description = "the seats", body = SeatMap)))]
    pub fn get_seats() {}

    /// Block or unblock named seats (the performance's owner, operator).
    #[utoipa::path(post, path = "/v1/performances/{id}/blocked-seats", tag = "catalog",
        request_body = BlockSeats,
        params(("id" = String, Path, description = "performance id"), Idempotency),
        responses((status = 200, description = "how many seats changed", body = SeatsBlocked)))]
    pub fn block_seats() {}

    /// Check a ticket in at the door by its code, exactly once (service, operator, owner).
    #[utoipa::path(post, path = "/v1/performances/{id}/check-in", tag = "bookings",
        request_body = CheckIn,
        params(("id" = String, Path, description = "performance id"), Idempotency),
        responses((status = 200, description = "the ticket admitted", body = CheckedIn)))]
    pub fn check_in() {}

    /// Sales of a performance: per section, by category, over time (its organizer, operator).
    #[utoipa::path(get, path = "/v1/reports/performances/{id}/sales", tag = "reports",
        params(("id" = String, Path, description = "performance id"), ReportQuery),
        responses(
            (status = 200, description = "the report (`format=csv`: as CSV)", content(
                (SalesReport = "application/json"),
                (String = "text/csv"),
            )),
        ))]
    pub fn sales_report() {}

    /// Join a performance's waiting room (buyer).
    #[utoipa::path(post, path = "/v1/performances/{id}/queue", tag = "waiting room",
        params(("id" = String, Path, description = "performance id"), Idempotency),
        responses((status = 201, description = "the queue entry", body = QueueJoined)))]
    pub fn join_queue() {}

    /// A queue entry's state and position (that buyer, operator).
    #[utoipa::path(get, path = "/v1/queue/{id}", tag = "waiting room",
        params(("id" = String, Path, description = "queue entry id, e.g. `q_9`"), ReadConsistency),
        responses((status = 200, description = "the entry", body = QueueStatus)))]
    pub fn get_queue() {}

    /// Hold seats by name, or a quantity of one section: general-admission places, or the
    /// best available seats side by side of a seated section (picked by the ledger).
    #[utoipa::path(post, path = "/v1/holds", tag = "holds", request_body = CreateHold,
        params(Idempotency),
        responses((status = 201, description = "the hold", body = Hold)))]
    pub fn create_hold() {}

    /// Read a hold (its buyer, service, operator).
    #[utoipa::path(get, path = "/v1/holds/{id}", tag = "holds",
        params(("id" = String, Path, description = "hold id, e.g. `h_5`"), ReadConsistency),
        responses((status = 200, description = "the hold", body = Hold)))]
    pub fn get_hold() {}

    /// Release a hold (idempotent).
    #[utoipa::path(delete, path = "/v1/holds/{id}", tag = "holds",
        params(("id" = String, Path, description = "hold id"), Idempotency),
        responses((status = 200, description = "the hold, released", body = Hold)))]
    pub fn release_hold() {}

    /// Extend a hold once by the payment grace, starting its checkout.
    #[utoipa::path(post, path = "/v1/holds/{id}/extend", tag = "holds", request_body = ExtendHold,
        params(("id" = String, Path, description = "hold id"), Idempotency),
        responses((status = 200, description = "the hold", body = Hold)))]
    pub fn extend_hold() {}

    /// Confirm a live hold into a booking with check-in codes (service, operator).
    #[utoipa::path(post, path = "/v1/holds/{id}/confirm", tag = "holds", request_body = ConfirmHold,
        params(("id" = String, Path, description = "hold id"), Idempotency),
        responses((status = 201, description = "the booking", body = Booking)))]
    pub fn confirm_hold() {}

    /// Confirm an expired hold in checkout whose seats are all still free (service, operator).
    #[utoipa::path(post, path = "/v1/holds/{id}/confirm-late", tag = "holds", request_body = ConfirmHold,
        params(("id" = String, Path, description = "hold id"), Idempotency),
        responses((status = 201, description = "the booking", body = Booking)))]
    pub fn confirm_late() {}

    /// Record what the payment provider did (service, operator).
    #[utoipa::path(post, path = "/v1/holds/{id}/payment", tag = "holds", request_body = RecordPayment,
        params(("id" = String, Path, description = "hold id"), Idempotency),
        responses((status = 200, description = "the checkout", body = Checkout)))]
    pub fn record_payment() {}

    /// A hold's checkout (404 if it was never extended).
    #[utoipa::path(get, path = "/v1/holds/{id}/checkout", tag = "holds",
        params(("id" = String, Path, description = "hold id"), ReadConsistency),
        responses((status = 200, description = "the checkout", body = Checkout)))]
    pub fn get_checkout() {}

    /// Checkouts in hold-id order, a page at a time (service, operator).
    #[utoipa::path(get, path = "/v1/checkouts", tag = "holds", params(CheckoutQuery),
        responses((status = 200, description = "a page of checkouts", body = CheckoutList)))]
    pub fn list_checkouts() {}

    /// The caller's bookings; a service or operator may list a buyer's, a performance's or all.
    #[utoipa::path(get, path = "/v1/bookings", tag = "bookings", params(BookingQuery),
        responses((status = 200, description = "a page of bookings", body = BookingList)))]
    pub fn list_bookings() {}

    /// Read a booking with its tickets (owner, service, operator).
    #[utoipa::path(get, path = "/v1/bookings/{id}", tag = "bookings",
        params(("id" = String, Path, description = "booking id, e.g. `b_6`"), ReadConsistency),
        responses((status = 200, description = "the booking", body = Booking)))]
    pub fn get_booking() {}

    /// Refund a whole booking or some of its tickets (service, operator); the body is optional.
    #[utoipa::path(post, path = "/v1/bookings/{id}/refund", tag = "bookings",
        request_body(content = Option<RefundRequest>, description = "absent or `{}`: the whole booking"),
        params(("id" = String, Path, description = "booking id"), Idempotency),
        responses((status = 200, description = "what was refunded", body = Refunded)))]
    pub fn refund_booking() {}

    /// The change feed from a log index, as Server-Sent Events: `id:` the log index,
    /// `event: change`, `data:` a `FeedEvent` (JSON); a problem ends a stream as `event: error`.
    #[utoipa::path(get, path = "/v1/watch", tag = "watch", params(
            ("from" = Option<u64>, Query, description = "the first log index to send (default 0: all this node keeps)"),
            ("Last-Event-ID" = Option<u64>, Header, description = "resume after this log index (the `id:` last received); wins over `from`"),
        ),
        responses((status = 200, description = "an endless event stream; each `data:` is a FeedEvent",
            body = String, content_type = "text/event-stream")))]
    pub fn watch() {}

    /// Create the cluster on this node with its bootstrap operator key (once; no key).
    #[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster", request_body = InitCluster,
        responses((status = 200, description = "the new cluster", body = ClusterStatus)))]
    pub fn cluster_init() {}

    /// Every member's role, term, log, applied index and state hash (operator).
    #[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster",
        responses((status = 200, description = "the cluster", body = ClusterStatus)))]
    pub fn cluster_status() {}

    /// Add a learner; returns once it caught up (operator).
    #[utoipa::path(post, path = "/v1/cluster/learners", tag = "cluster", request_body = AddLearner,
        responses((status = 200, description = "the cluster", body = ClusterStatus)))]
    pub fn cluster_add_learner() {}

    /// Set the voters (operator).
    #[utoipa::path(post, path = "/v1/cluster/membership", tag = "cluster", request_body = ChangeMembership,
        responses((status = 200, description = "the cluster", body = ClusterStatus)))]
    pub fn cluster_change_membership() {}

    /// Hand leadership to another voter (operator).
    #[utoipa::path(post, path = "/v1/cluster/transfer-leader", tag = "cluster", request_body = TransferLeader,
        responses((status = 200, description = "the cluster", body = ClusterStatus)))]
    pub fn cluster_transfer_leader() {}

    /// Take a snapshot on this node now (operator).
    #[utoipa::path(post, path = "/v1/cluster/snapshot", tag = "cluster",
        responses((status = 200, description = "the snapshot's index", body = SnapshotTaken)))]
    pub fn cluster_snapshot() {}

    /// A consistent copy of the ledger, after a read index (operator).
    #[utoipa::path(get, path = "/v1/cluster/backup", tag = "cluster",
        responses((status = 200, description = "a ledger snapshot", body = BackupFile, content_type = "application/octet-stream")))]
    pub fn cluster_backup() {}

    /// Restore a backup into a cluster with no catalog yet (operator, on the leader).
    #[utoipa::path(post, path = "/v1/cluster/restore", tag = "cluster",
        request_body(content = BackupFile, content_type = "application/octet-stream"),
        responses((status = 200, description = "the cluster", body = ClusterStatus)))]
    pub fn cluster_restore() {}
}
use ops::*;

// ---------------------------------------------------------------- what operations share

/// Routes that need no key.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/openapi.json",
    "/v1/docs",
    "/v1/auth/signup",
    "/v1/auth/login",
    "/v1/cluster/init",
];

/// Routes the rate limiter never counts (crate::ratelimit::exempt).
const PROBES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The domain problems each operation can answer besides those [`Common`] derives from its
/// shape (400/413/415/422 for a body, 400 for parameters, 401 for a key, 429, 503).
const ERRORS: &[(&str, &[u16])] = &[
    ("healthz", &[]),
    ("readyz", &[]),
    ("metrics", &[]),
    ("openapi_json", &[]),
    ("docs", &[]),
    ("signup", &[409]),
    ("login", &[401]),
    ("create_api_key", &[403, 409]),
    ("create_venue", &[403, 409]),
    ("get_venue", &[404]),
    ("create_event", &[403, 409]),
    ("list_events", &[]),
    ("get_event", &[404]),
    ("create_performance", &[403, 404, 409]),
    ("get_performance", &[404]),
    ("update_performance", &[403, 404, 409]),
    ("get_seats", &[404]),
    ("join_queue", &[403, 404, 409, 422]),
    ("get_queue", &[403, 404]),
    ("create_hold", &[403, 404, 409]),
    ("get_hold", &[403, 404]),
    ("release_hold", &[403, 404, 409, 410]),
    ("extend_hold", &[403, 404, 409, 410]),
    ("confirm_hold", &[403, 404, 409, 410]),
    ("confirm_late", &[403, 404, 409, 410]),
    ("record_payment", &[403, 404, 409, 410]),
    ("get_checkout", &[403, 404]),
    ("list_checkouts", &[403]),
    ("get_booking", &[403, 404]),
    ("list_bookings", &[403]),
    ("update_event", &[403, 404, 409]),
    ("block_seats", &[403, 404, 409]),
    ("check_in", &[403, 404, 409]),
    ("sales_report", &[403, 404]),
    ("watch", &[410]),
    ("refund_booking", &[403, 404, 409]),
    ("cluster_init", &[409]),
    ("cluster_status", &[403]),
    ("cluster_add_learner", &[403, 409]),
    ("cluster_change_membership", &[403, 409]),
    ("cluster_transfer_leader", &[403, 409]),
    ("cluster_snapshot", &[403]),
    ("cluster_backup", &[403]),
    ("cluster_restore", &[403, 409]),
];

/// What each status means here; the codes are docs/errors.md's.
fn problem_description(status: u16) -> &'static str {
    match status {
        400 => {
            "`bad_request`: a malformed body (JSON syntax or types), query parameter or header \
             (an unknown `consistency`, a `limit` outside 1..=500, an `Idempotency-Key` over 128 bytes)"
        }
        401 => {
            "`unauthenticated`: no, unknown, revoked or expired credential (or a wrong password)"
        }
        403 => {
            "`forbidden` (the role or owner may not) or `admission_required` (no waiting-room admission)"
        }
        404 => "`not_found`: no such id (a malformed id is not found either)",
        409 => {
            "a conflict with the current state: `seat_unavailable`, `sold_out`, `sale_not_open`, \
             `hold_not_live`, `invalid_state`, `ticket_used`, `already_exists` or \
             `idempotency_conflict` (the same Idempotency-Key with another request)"
        }
        410 => "`hold_expired`: the hold expired and its seats are back on sale",
        413 => "`payload_too_large`: the body is over the limit (1 MiB for JSON)",
        415 => "`unsupported_media_type`: send JSON with `Content-Type: application/json`",
        422 => "`invalid_input` (a value out of range, too long, or unknown) or `limit_exceeded`",
        429 => {
            "`rate_limited`: this principal or client address is over its rate; retry after `Retry-After` seconds"
        }
        503 => {
            "`no_leader`, `unavailable`, `overloaded`, `timeout`, `not_leader`, `not_ready` or \
             `not_initialized`: retry after `Retry-After` seconds, possibly on another node"
        }
        _ => "a problem",
    }
}

struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key, or a login token (`tl1.…`) from /v1/auth/signup or /v1/auth/login",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = PUBLIC.contains(&path.as_str());
            let probe = PROBES.contains(&path.as_str());
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ]
            .into_iter()
            .flatten()
            {
                shape_problems(op, public, probe);
            }
        }
    }
}

/// Add the problems an operation's shape implies and its row of [`ERRORS`].
fn shape_problems(op: &mut Operation, public: bool, probe: bool) {
    let id = op.operation_id.clone().unwrap_or_default();
    let mut statuses: Vec<u16> = ERRORS
        .iter()
        .find(|(name, _)| *name == id)
        .map(|(_, s)| s.to_vec())
        .unwrap_or_default();
    if let Some(body) = &op.request_body {
        if body.content.contains_key("application/json") {
            statuses.extend([400, 413, 415, 422]);
        } else {
            statuses.extend([413, 422]);
        }
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    if params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Header))
    {
        statuses.push(400);
    }
    if !public {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        statuses.push(401);
    }
    if !probe {
        statuses.push(429);
    }
    // Everything but the probes and the static documents reads or writes the ledger, which
    // can lack a leader or a quorum; readyz answers 503 when not ready.
    if !matches!(id.as_str(), "healthz" | "metrics" | "openapi_json" | "docs") {
        statuses.push(503);
    }
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let mut response = ResponseBuilder::new()
            .description(problem_description(status))
            .content(
                api::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
                    .build(),
            );
        if status == 429 || status == 503 {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )
                    .description(Some("seconds to wait before retrying"))
                    .build(),
            );
        }
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| response.build().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) of every `.route("path", method(..).method(..))` call in this crate's
    /// sources: the router as written, whichever file a route lives in.
    fn routed() -> BTreeSet<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut found = BTreeSet::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices(".route(") {
                let rest = &text[at + ".route(".len()..];
                let Some(open) = rest.find('"') else { continue };
                if !rest[..open].trim().is_empty() {
                    continue; // not a literal path: not a route table line
                }
                let close = open + 1 + rest[open + 1..].find('"').unwrap();
                let path = rest[open + 1..close].to_string();
                if !path.starts_with('/') {
                    continue;
                }
                // The handlers: up to the parenthesis closing `.route(`.
                let mut depth = 1;
                let mut end = close + 1;
                for (i, c) in rest[close + 1..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = close + 1 + i;
                        break;
                    }
                }
                let handlers = &rest[close + 1..end];
                for method in ["get", "post", "patch", "delete", "put"] {
                    let called = handlers.match_indices(method).any(|(i, _)| {
                        let before = handlers[..i].chars().last();
                        let after = handlers[i + method.len()..].chars().next();
                        matches!(before, Some(',' | '.' | ' ' | '\n' | '(')) && after == Some('(')
                    });
                    if called {
                        found.insert((method.to_string(), path.clone()));
                    }
                }
            }
        }
        found
    }

    fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                found.insert((method.clone(), path.clone()));
            }
        }
        found
    }

    #[test]
    fn routes_and_document_agree() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let routed = routed();
        let documented = documented(&doc);
        assert!(
            routed.len() >= 30,
            "the route scan found too little: {routed:?}"
        );
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routed but not in openapi.rs: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_has_its_error_row_and_problems_are_problem_json() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(
                    ERRORS.iter().any(|(n, _)| *n == id),
                    "{method} {path}: {id} has no row in ERRORS"
                );
                for (status, resp) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            resp["content"][api::PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
                let public = PUBLIC.contains(&path.as_str());
                assert_eq!(op.get("security").is_some(), !public, "{method} {path}");
                if !public {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
                ids.insert(id);
            }
        }
        let rows: BTreeSet<String> = ERRORS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            ids, rows,
            "ERRORS rows without an operation, or the reverse"
        );
    }

    /// Every `$ref` names a schema of the document (an unregistered one makes it invalid).
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100, "{} references", all.len());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling {r}"
            );
        }
    }

    #[test]
    fn schemas_follow_the_wire_format() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        let s = &doc["components"]["schemas"];
        // serde renames are honoured: the problem's `type`, the checkout state's snake case.
        assert!(
            s["Problem"]["properties"]["type"].is_object(),
            "{}",
            s["Problem"]
        );
        let required = s["Problem"]["required"].as_array().unwrap();
        assert!(!required.contains(&serde_json::json!("instance")));
        assert_eq!(
            s["CheckoutState"]["enum"],
            serde_json::json!(["started", "captured", "booked", "failed", "refunded"])
        );
        // A real hold body validates field by field against its schema's required list.
        let hold = serde_json::to_value(api::CreateHold {
            performance_id: "p_1".into(),
            seats: Some(vec!["A:1:1".into()]),
            section: None,
            quantity: None,
            category: None,
        })
        .unwrap();
        for field in s["CreateHold"]["required"].as_array().unwrap() {
            assert!(hold.get(field.as_str().unwrap()).is_some(), "{field}");
        }
        // Idempotency-Key is a header parameter on every write with a body of the ledger.
        let create = &doc["paths"]["/v1/holds"]["post"];
        assert!(
            create["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
            "{create}"
        );
        assert!(create["responses"]["429"]["headers"]["Retry-After"].is_object());
    }
}
