//! Commands: everything that can change the ledger. A command carries every value that varies
//! (the leader's clock, random codes, password hashes, key digests), so applying it is a pure
//! function of the state and the command, and every replica computes the same state.

use crate::ids::*;
use serde::{Deserialize, Serialize};

/// One proposed change, as the leader stamped it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's wall clock (unix ms) when it built the command. The ledger clock becomes
    /// `max(clock, stamp_ms)`, so ledger time never goes backwards.
    pub stamp_ms: u64,
    /// Who asks; authenticated by the node, authorized by the ledger.
    pub principal: Principal,
    /// An `Idempotency-Key` (≤ [`crate::limits::MAX_IDEMPOTENCY_KEY_LEN`] bytes): a retry with the
    /// same key and the same op returns the first outcome without applying again.
    pub idempotency_key: Option<String>,
    pub op: Op,
}

impl Command {
    pub fn new(stamp_ms: u64, principal: Principal, op: Op) -> Command {
        Command {
            stamp_ms,
            principal,
            idempotency_key: None,
            op,
        }
    }
    pub fn with_key(mut self, key: impl Into<String>) -> Command {
        self.idempotency_key = Some(key.into());
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates the first operator API key and the cluster's token-signing secret. Once only.
    Bootstrap {
        operator_key_digest: Digest32,
        token_secret: Digest32,
    },
    /// Advances the clock; expires holds and admissions; admits from waiting rooms.
    Tick,

    /// Signup (role buyer) or, by an operator, an account of any role.
    CreateUser {
        email: String,
        name: String,
        password_hash: Vec<u8>,
        role: Role,
    },
    /// An operator creates an API key; the key is a principal of its own with that role.
    CreateApiKey {
        name: String,
        role: Role,
        key_digest: Digest32,
    },
    RevokeApiKey {
        key: ApiKeyId,
    },

    CreateVenue {
        name: String,
        sections: Vec<SectionSpec>,
    },
    CreateEvent {
        name: String,
        category: String,
        description: String,
        media: Vec<MediaItem>,
    },
    UpdateEvent {
        event: EventId,
        name: String,
        category: String,
        description: String,
        media: Vec<MediaItem>,
    },
    CreatePerformance(PerformanceSpec),
    /// Change the sale status. Opening a sale with a waiting room reveals its seed.
    SetSaleStatus {
        performance: PerformanceId,
        status: SaleStatus,
        seed: Option<Digest32>,
    },
    /// The organizer blocks or unblocks seats (house seats, broken seats).
    SetSeatsBlocked {
        performance: PerformanceId,
        seats: Vec<SeatIdx>,
        blocked: bool,
    },

    /// Join the waiting room of a performance (one entry per buyer).
    JoinQueue {
        performance: PerformanceId,
    },

    PlaceHold {
        performance: PerformanceId,
        what: HoldRequest,
    },
    ReleaseHold {
        hold: HoldId,
    },
    /// Extend a live hold once, into the performance's payment grace period.
    ExtendHold {
        hold: HoldId,
        payment_ref: String,
    },
    /// Turn a live hold into a booking. The tickets' check-in codes are derived from
    /// `code_seed`, drawn at random by the proposer (see [`CodeSeed`]).
    ConfirmHold {
        hold: HoldId,
        payment_ref: String,
        code_seed: CodeSeed,
    },
    /// The written rule for a payment that lands after its hold expired: book the same seats
    /// if every one is still free, else reject (and the payment service refunds at once).
    /// Only for a hold that was extended into checkout with this `payment_ref`.
    ConfirmLate {
        hold: HoldId,
        payment_ref: String,
        code_seed: CodeSeed,
    },
    /// The payments service records what happened to the money of a hold in checkout
    /// (extended with `payment_ref`). `Failed` and `Refunded` release the hold if it is live.
    RecordPayment {
        hold: HoldId,
        payment_ref: String,
        event: PaymentEvent,
    },
    /// Refund a whole booking (`tickets` empty) or some of its tickets.
    Refund {
        booking: BookingId,
        tickets: Vec<TicketId>,
        refund_ref: String,
    },
    /// Mark a ticket used at the door; a code is used exactly once.
    CheckIn {
        performance: PerformanceId,
        code: CheckInCode,
    },
}

impl PaymentEvent {
    pub fn name(&self) -> &'static str {
        match self {
            PaymentEvent::Captured { .. } => "captured",
            PaymentEvent::Failed { .. } => "failed",
            PaymentEvent::Refunded { .. } => "refunded",
        }
    }
}

impl Op {
    /// Catalog operations, whose encoding may run to a request body's size (a venue's seat
    /// map): the leader proposes each as an entry of its own, so an entry of batched writes
    /// stays as small as the sale's commands (a hold of 50 seats is under a kilobyte).
    pub fn may_be_large(&self) -> bool {
        matches!(
            self,
            Op::Bootstrap { .. }
                | Op::CreateVenue { .. }
                | Op::CreateEvent { .. }
                | Op::UpdateEvent { .. }
                | Op::CreatePerformance(_)
                | Op::SetSeatsBlocked { .. }
        )
    }

    /// Stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Bootstrap { .. } => "bootstrap",
            Op::Tick => "tick",
            Op::CreateUser { .. } => "create_user",
            Op::CreateApiKey { .. } => "create_api_key",
            Op::RevokeApiKey { .. } => "revoke_api_key",
            Op::CreateVenue { .. } => "create_venue",
            Op::CreateEvent { .. } => "create_event",
            Op::UpdateEvent { .. } => "update_event",
            Op::CreatePerformance(_) => "create_performance",
            Op::SetSaleStatus { .. } => "set_sale_status",
            Op::SetSeatsBlocked { .. } => "set_seats_blocked",
            Op::JoinQueue { .. } => "join_queue",
            Op::PlaceHold { .. } => "place_hold",
            Op::ReleaseHold { .. } => "release_hold",
            Op::ExtendHold { .. } => "extend_hold",
            Op::ConfirmHold { .. } => "confirm_hold",
            Op::ConfirmLate { .. } => "confirm_late",
            Op::RecordPayment { .. } => "record_payment",
            Op::Refund { .. } => "refund",
            Op::CheckIn { .. } => "check_in",
        }
    }
}

/// What the payment provider did with a checkout's money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// Money taken: `Started` → `Captured`. A booking or a refund must follow.
    Captured { provider_ref: String },
    /// Declined or voided, no money moved: `Started` → `Failed`.
    Failed { reason: String },
    /// Money given back because no booking could be made: `Started`/`Captured` → `Refunded`.
    Refunded {
        provider_ref: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SectionSpec {
    /// Rows of seats numbered 1..=seats.
    Seated {
        name: String,
        rows: Vec<RowSpec>,
    },
    GeneralAdmission {
        name: String,
        capacity: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSpec {
    pub label: String,
    pub seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaItem {
    pub kind: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerformanceSpec {
    pub event: EventId,
    pub venue: VenueId,
    pub starts_at_ms: u64,
    pub on_sale_at_ms: u64,
    pub sale_ends_at_ms: u64,
    pub hold_ttl_ms: u64,
    pub payment_grace_ms: u64,
    pub max_seats_per_order: u16,
    /// Names of ticket categories, indexed by [`CategoryIdx`].
    pub categories: Vec<String>,
    pub prices: Vec<PriceSpec>,
    pub waiting_room: Option<WaitingRoomSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceSpec {
    pub section: SectionIdx,
    pub category: CategoryIdx,
    pub price: Money,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRoomSpec {
    /// Entries admitted per second of ledger time.
    pub admission_rate_per_sec: u32,
    /// How long an admission lets its holder place holds.
    pub admission_ttl_ms: u64,
    /// At most this many unexpired admissions at once (0: no limit beyond the rate).
    pub max_active_admissions: u32,
    /// `blake3(seed)`, published now; the seed is revealed when the sale opens.
    pub seed_commitment: Digest32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SaleStatus {
    Draft,
    OnSale,
    Paused,
    Closed,
    Cancelled,
}

impl SaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Draft => "draft",
            SaleStatus::OnSale => "on_sale",
            SaleStatus::Paused => "paused",
            SaleStatus::Closed => "closed",
            SaleStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldRequest {
    /// Named seats, each with its ticket category.
    Seats(Vec<(SeatIdx, CategoryIdx)>),
    /// A quantity of general-admission places in one section.
    GeneralAdmission {
        section: SectionIdx,
        quantity: u16,
        category: CategoryIdx,
    },
    /// The best `quantity` seats side by side in a seated section, chosen at apply from what
    /// is free then (front row first, then left to right), so buyers asking at once never
    /// collide on the same seats. Held as named seats.
    BestAvailable {
        section: SectionIdx,
        quantity: u16,
        category: CategoryIdx,
    },
}
