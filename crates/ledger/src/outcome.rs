//! Outcomes of applying a command, and the domain events of the change feed.
//!
//! A rejection is a value with a stable code, not an error of the transport: a rejected
//! command is still a committed log entry that changed nothing but (maybe) the clock.

use crate::command::SaleStatus;
use crate::ids::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Reply),
    Rejected(Rejection),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
    pub fn code(&self) -> Option<Code> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Rejected(r) => Some(r.code),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: Code,
    /// A sentence for a person: what was wrong and what to do.
    pub detail: String,
}

impl Rejection {
    pub fn new(code: Code, detail: impl Into<String>) -> Rejection {
        let mut detail = detail.into();
        if detail.len() > crate::limits::MAX_DETAIL_LEN {
            let mut cut = crate::limits::MAX_DETAIL_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Rejection { code, detail }
    }
}

/// Stable machine codes of domain rejections. Never renumber or rename: clients match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Code {
    /// The request is malformed or out of range (bad name, zero quantity, unknown seat index).
    InvalidInput,
    NotFound,
    /// The principal is known but may not do this (wrong role, not the owner).
    Forbidden,
    /// The principal does not exist or was revoked.
    Unauthenticated,
    /// One of the seats is held, sold or blocked, or a GA section lacks the quantity.
    SeatUnavailable,
    /// The hold has expired (its seats are back on sale).
    HoldExpired,
    /// The hold was released or already confirmed.
    HoldNotLive,
    /// A named limit would be exceeded.
    LimitExceeded,
    /// The sale is not open (draft, paused, closed, cancelled, or outside its window).
    SaleNotOpen,
    /// The performance has a waiting room and the buyer has no valid admission.
    AdmissionRequired,
    /// Everything is sold.
    SoldOut,
    /// Something by this name or for this buyer exists already (email, queue entry, bootstrap).
    AlreadyExists,
    /// The same idempotency key was used with a different request.
    IdempotencyConflict,
    /// The change is not allowed from the current state (status transition, second extension).
    InvalidState,
    /// The ticket was already refunded or checked in.
    TicketUsed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidInput => "invalid_input",
            Code::NotFound => "not_found",
            Code::Forbidden => "forbidden",
            Code::Unauthenticated => "unauthenticated",
            Code::SeatUnavailable => "seat_unavailable",
            Code::HoldExpired => "hold_expired",
            Code::HoldNotLive => "hold_not_live",
            Code::LimitExceeded => "limit_exceeded",
            Code::SaleNotOpen => "sale_not_open",
            Code::AdmissionRequired => "admission_required",
            Code::SoldOut => "sold_out",
            Code::AlreadyExists => "already_exists",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::InvalidState => "invalid_state",
            Code::TicketUsed => "ticket_used",
        }
    }

    pub const ALL: [Code; 15] = [
        Code::InvalidInput,
        Code::NotFound,
        Code::Forbidden,
        Code::Unauthenticated,
        Code::SeatUnavailable,
        Code::HoldExpired,
        Code::HoldNotLive,
        Code::LimitExceeded,
        Code::SaleNotOpen,
        Code::AdmissionRequired,
        Code::SoldOut,
        Code::AlreadyExists,
        Code::IdempotencyConflict,
        Code::InvalidState,
        Code::TicketUsed,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Bootstrapped {
        operator_key: ApiKeyId,
    },
    /// A tick: how many holds and admissions expired and how many queue entries were admitted.
    Ticked {
        holds_expired: u32,
        admissions_expired: u32,
        admitted: u32,
    },
    UserCreated {
        user: UserId,
    },
    ApiKeyCreated {
        key: ApiKeyId,
    },
    ApiKeyRevoked,
    VenueCreated {
        venue: VenueId,
        seats: u32,
        ga_capacity: u32,
    },
    EventCreated {
        event: EventId,
    },
    EventUpdated,
    PerformanceCreated {
        performance: PerformanceId,
    },
    SaleStatusChanged {
        status: SaleStatus,
    },
    SeatsBlocked {
        changed: u32,
    },
    QueueJoined {
        queue: QueueId,
        position: Option<u64>,
    },
    HoldPlaced(HoldReceipt),
    HoldReleased,
    HoldExtended {
        expires_at_ms: u64,
    },
    BookingConfirmed(BookingReceipt),
    /// The checkout's state after a payment event (unchanged if the event was a repeat).
    PaymentRecorded {
        checkout: crate::state::Checkout,
    },
    Refunded {
        amount: Money,
        tickets: Vec<TicketId>,
    },
    CheckedIn {
        ticket: TicketId,
        booking: BookingId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReceipt {
    pub hold: HoldId,
    pub seats: Vec<SeatIdx>,
    pub quantity: u32,
    pub expires_at_ms: u64,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingReceipt {
    pub booking: BookingId,
    pub tickets: Vec<TicketReceipt>,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketReceipt {
    pub ticket: TicketId,
    pub seat: Option<SeatIdx>,
    pub section: SectionIdx,
    pub category: CategoryIdx,
    pub price: Money,
    pub code: CheckInCode,
}

/// A domain event and the log index of the command that produced it: the change feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub log_index: u64,
    pub at_ms: u64,
    pub change: Change,
}

/// The checkout states a payment event leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentState {
    Captured,
    Failed,
    Refunded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    PerformanceCreated {
        performance: PerformanceId,
        seed_commitment: Option<Digest32>,
    },
    SaleStatusChanged {
        performance: PerformanceId,
        status: SaleStatus,
    },
    /// The waiting room's seed, revealed at opening: with each pre-queue entry's id anyone can
    /// recompute the pre-queue order ([`crate::prequeue_rank`]).
    SeedRevealed {
        performance: PerformanceId,
        seed: Digest32,
        prequeue_len: u32,
    },
    QueueJoined {
        queue: QueueId,
        buyer: Principal,
        prequeue: bool,
    },
    QueueAdmitted {
        queue: QueueId,
        until_ms: u64,
    },
    AdmissionExpired {
        queue: QueueId,
    },
    /// Every seat is sold: those still waiting are told at once.
    QueueSoldOut {
        performance: PerformanceId,
        waiting: u32,
    },
    HoldPlaced {
        hold: HoldId,
        performance: PerformanceId,
        buyer: Principal,
        seats: u32,
        expires_at_ms: u64,
    },
    HoldReleased {
        hold: HoldId,
        performance: PerformanceId,
    },
    HoldExpired {
        hold: HoldId,
        performance: PerformanceId,
    },
    HoldExtended {
        hold: HoldId,
        expires_at_ms: u64,
    },
    BookingConfirmed {
        booking: BookingId,
        hold: HoldId,
        performance: PerformanceId,
        amount: Money,
        tickets: u32,
    },
    BookingRefunded {
        booking: BookingId,
        performance: PerformanceId,
        amount: Money,
        tickets: u32,
    },
    /// A checkout moved (`booked` shows as `BookingConfirmed`, `started` as `HoldExtended`).
    PaymentRecorded {
        hold: HoldId,
        performance: PerformanceId,
        state: PaymentState,
    },
    TicketCheckedIn {
        ticket: TicketId,
        booking: BookingId,
    },
}
