//! The HTTP/JSON v1 API's wire types, shared by `ticketd` (crates/node) and its clients
//! (crates/client). Nothing here knows the ledger or openraft: these are the public contract.
//!
//! Conventions (DESIGN.md §5): ids are strings with a kind prefix (`p_12`, `h_7`); money is an
//! integer `amount_minor` plus an ISO 4217 `currency`; times are RFC 3339 strings in
//! responses and accepted as RFC 3339 or unix milliseconds in requests; a seat is
//! `"<section>:<row>:<number>"`. Errors are RFC 9457 `application/problem+json` ([`Problem`]).
#![forbid(unsafe_code)]

pub mod payments;

use serde::{Deserialize, Serialize};

pub mod feed;
mod manage;
pub use manage::*;
#[cfg(feature = "grpc")]
pub mod grpc;

/// Header carrying an idempotency key on mutating calls.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Media type of errors.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// An RFC 9457 problem: every 4xx/5xx body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `https://ticketledger.dev/problems/<code>`
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine code (`seat_unavailable`, `not_leader`, …).
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instance: Option<String>,
}

// ---------------------------------------------------------------- catalog

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateVenue {
    pub name: String,
    pub sections: Vec<SectionSpec>,
}

/// Seated: `{"name":"A","rows":[{"label":"1","seats":20}]}`; GA: `{"name":"Floor","capacity":5000}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum SectionSpec {
    Seated { name: String, rows: Vec<RowSpec> },
    GeneralAdmission { name: String, capacity: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RowSpec {
    pub label: String,
    pub seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VenueCreated {
    pub venue_id: String,
    pub seats: u32,
    pub ga_capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Venue {
    pub venue_id: String,
    pub name: String,
    pub seats: u32,
    pub sections: Vec<SectionSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateEvent {
    pub name: String,
    pub category: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub media: Vec<MediaItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MediaItem {
    pub kind: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventCreated {
    pub event_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub event_id: String,
    pub name: String,
    pub category: String,
    pub description: String,
    pub media: Vec<MediaItem>,
    pub performances: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    pub events: Vec<Event>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
}

/// A time in a request: RFC 3339 or unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum TimeInput {
    UnixMs(u64),
    Rfc3339(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatePerformance {
    pub venue_id: String,
    pub starts_at: TimeInput,
    pub on_sale_at: TimeInput,
    /// Default: `starts_at`.
    #[serde(default)]
    pub sale_ends_at: Option<TimeInput>,
    pub hold_ttl_secs: u64,
    /// Default 300.
    #[serde(default)]
    pub payment_grace_secs: Option<u64>,
    /// Default 10.
    #[serde(default)]
    pub max_seats_per_order: Option<u16>,
    /// Ticket categories; default `["adult"]`.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    pub prices: Vec<Price>,
    #[serde(default)]
    pub waiting_room: Option<WaitingRoomSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Price {
    pub section: String,
    /// Default: the first category.
    #[serde(default)]
    pub category: Option<String>,
    pub amount_minor: u64,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaitingRoomSpec {
    pub admission_rate_per_sec: u32,
    pub admission_ttl_secs: u64,
    #[serde(default)]
    pub max_active_admissions: u32,
    /// Hex of blake3(seed): the organizer keeps the seed and reveals it at opening.
    pub seed_commitment: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PerformanceCreated {
    pub performance_id: String,
}

/// `PATCH /v1/performances/{id}`: `status` is `on_sale`, `paused`, `closed` or `cancelled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdatePerformance {
    pub status: String,
    /// Hex seed, when opening a sale with a waiting room.
    #[serde(default)]
    pub seed: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Performance {
    pub performance_id: String,
    pub event_id: String,
    pub venue_id: String,
    pub starts_at: String,
    pub on_sale_at: String,
    pub sale_ends_at: String,
    pub status: String,
    pub hold_ttl_secs: u64,
    pub max_seats_per_order: u16,
    pub categories: Vec<String>,
    pub prices: Vec<Price>,
    pub sections: Vec<SectionAvailability>,
    pub totals: Availability,
    pub revenue_minor: u64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub waiting_room: Option<WaitingRoomStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SectionAvailability {
    pub section: String,
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    pub blocked: u32,
    /// The most seats one order can get together here now: the longest run of available
    /// seats side by side in one row (places left, in general admission), at most the
    /// performance's per-order limit. A best-available hold of up to this many succeeds
    /// unless someone is quicker; more is refused with `seat_unavailable`.
    #[serde(default)]
    pub together: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Availability {
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    pub blocked: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaitingRoomStatus {
    pub admission_rate_per_sec: u32,
    pub seed_commitment: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seed: Option<String>,
    pub joined: u32,
    pub waiting: u32,
    pub admitted_total: u32,
    pub active_admissions: u32,
    pub sold_out: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeatMap {
    pub seats: Vec<SeatStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeatStatus {
    pub seat: String,
    /// `available`, `held`, `sold` or `blocked`.
    pub state: String,
}

// ---------------------------------------------------------------- holds and bookings

/// `POST /v1/holds`: seats by name, or `section` and `quantity`: places of a general-admission
/// section, or in a seated section the best available seats side by side (front row first,
/// picked by the ledger when the hold is applied, so concurrent buyers never collide).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateHold {
    pub performance_id: String,
    #[serde(default)]
    pub seats: Option<Vec<String>>,
    #[serde(default)]
    pub section: Option<String>,
    #[serde(default)]
    pub quantity: Option<u16>,
    /// Ticket category for every seat; default the performance's first.
    #[serde(default)]
    pub category: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hold {
    pub hold_id: String,
    pub performance_id: String,
    pub seats: Vec<String>,
    pub quantity: u32,
    pub expires_at: String,
    pub expires_at_ms: u64,
    pub amount_minor: u64,
    pub currency: String,
    /// `live`, `released`, `expired` or `confirmed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub booking_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendHold {
    pub payment_ref: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfirmHold {
    pub payment_ref: String,
}

/// Where a hold's payment stands; `started` and `captured` are open (the payments service
/// still owes an outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckoutState {
    Started,
    Captured,
    Booked,
    Failed,
    Refunded,
}

/// The checkout of a hold that was extended with a `payment_ref`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Checkout {
    pub hold_id: String,
    pub payment_ref: String,
    pub performance_id: String,
    pub amount_minor: u64,
    pub currency: String,
    pub state: CheckoutState,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provider_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub booking_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// `live`, `released`, `expired` or `confirmed`.
    pub hold_state: String,
    pub hold_expires_at_ms: u64,
}

/// What the payment provider did with a checkout's money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PaymentEvent {
    /// `started` → `captured`: a booking or a refund must follow.
    Captured { provider_ref: String },
    /// `started` → `failed`: no money moved; releases the hold.
    Failed { reason: String },
    /// `started`/`captured` → `refunded`: releases the hold if it is still live.
    Refunded {
        provider_ref: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordPayment {
    pub payment_ref: String,
    pub event: PaymentEvent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckoutList {
    pub checkouts: Vec<Checkout>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Booking {
    pub booking_id: String,
    pub performance_id: String,
    pub hold_id: String,
    pub tickets: Vec<Ticket>,
    pub amount_minor: u64,
    pub refunded_minor: u64,
    pub currency: String,
    pub payment_ref: String,
    pub confirmed_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ticket {
    pub ticket_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seat: Option<String>,
    pub section: String,
    pub category: String,
    pub amount_minor: u64,
    /// The check-in code (hex); shown to the booking's owner and services.
    pub code: String,
    /// `valid`, `refunded` or `checked_in`.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefundRequest {
    /// Ticket ids; empty or absent refunds the whole booking.
    #[serde(default)]
    pub tickets: Vec<String>,
    #[serde(default)]
    pub refund_ref: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refunded {
    pub booking_id: String,
    pub tickets: Vec<String>,
    pub amount_minor: u64,
    pub currency: String,
}

// ---------------------------------------------------------------- waiting room

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueJoined {
    pub queue_id: String,
    /// Entries ahead; absent before the sale opens (the pre-queue is shuffled at opening).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStatus {
    pub queue_id: String,
    /// `pre_queue`, `waiting`, `admitted`, `expired` or `closed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub admitted_until: Option<String>,
}

// ---------------------------------------------------------------- accounts

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKey {
    pub name: String,
    /// `buyer`, `organizer`, `service` or `operator`.
    pub role: String,
}

/// `POST /v1/auth/signup`: a buyer account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Signup {
    pub email: String,
    /// 8..=256 bytes; hashed with Argon2id by the node, never stored or logged in clear.
    pub password: String,
    pub name: String,
}

/// `POST /v1/auth/login`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// A signup (201) or login (200): a bearer token for `Authorization: Bearer <token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    pub user_id: String,
    pub token: String,
    pub expires_at: String,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyCreated {
    pub key_id: String,
    /// The secret, shown once.
    pub key: String,
}

// ---------------------------------------------------------------- cluster (operator)

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InitCluster {
    /// The bootstrap operator key (≥ 16 characters); keep it secret.
    pub admin_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddLearner {
    pub node_id: u64,
    /// host:port of the node's gRPC (Raft) listener.
    pub grpc_addr: String,
    /// host:port of the node's HTTP listener.
    pub http_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeMembership {
    /// The complete set of voters after the change.
    pub voters: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferLeader {
    pub to: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub cluster_initialized: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatus {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown` or `unreachable`.
    pub role: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Hex blake3 of the ledger state: equal on replicas that applied the same log.
    pub state_hash: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotTaken {
    pub applied_index: u64,
}
