//! The change feed as `GET /v1/watch` sends it (Server-Sent Events): one SSE event per log
//! index (`id:` is the index, `event: change`, `data:` a [`FeedEvent`] as JSON), so that a
//! client resuming with `Last-Event-ID` or `?from=<index + 1>` gets every change exactly once.
//! The gRPC `Watch` stream carries the same events (`ticketledger.v1.FeedEvent`).

use serde::{Deserialize, Serialize};

/// The SSE event name of a change; errors that end a stream are sent as `event: error` with a
/// [`crate::Problem`] as data.
pub const SSE_CHANGE: &str = "change";
/// The SSE event name of the problem that ends a stream (`feed_truncated`, `watch_too_slow`).
pub const SSE_ERROR: &str = "error";

/// Every change one log entry made, in the order the ledger emitted them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedEvent {
    pub log_index: u64,
    /// Ledger time of the entry (the leader's stamp), unix ms.
    pub at_ms: u64,
    pub changes: Vec<FeedChange>,
}

/// One domain change. `type` names it (`hold_placed`, `booking_confirmed`, …); only the
/// fields that kind carries are present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedChange {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    /// The principal (`u_3`, `k_2`, `system`) of holds and queue entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer: Option<String>,
    /// Sale status (`on_sale`, …) or payment state (`captured`, `failed`, `refunded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Seats of a hold, tickets of a booking or refund, entries still waiting at sell-out,
    /// or the pre-queue's length at the seed reveal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// A hold's expiry or an admission's end, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Hex: a waiting room's seed commitment (created) or its revealed seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// A queue entry joined before the sale opened (the randomized pre-queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prequeue: Option<bool>,
}
