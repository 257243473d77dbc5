//! Wire types of the payments service (`crates/payments`) and of the payment provider API it
//! speaks (which the simulated provider serves). They live here so the service, the demo and
//! the tests agree by construction; they are not part of the ledger's `/v1` API.

use serde::{Deserialize, Serialize};

/// `POST /v1/checkouts` on the payments service, with the buyer's bearer token: pay for a hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartCheckout {
    pub hold_id: String,
    /// The buyer's payment source at the provider (a card token).
    pub source: String,
}

/// Where a checkout ended, or that it is still owed an outcome (`pending`: the payments
/// service finishes it in the background, and `GET /v1/checkouts/{hold_id}` tells).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutOutcome {
    /// Captured and confirmed (possibly late, on the same seats): the booking exists.
    Booked,
    /// The provider declined, timed out without charging, or the checkout was interrupted
    /// before money moved: the hold was released.
    Declined,
    /// Money was captured but no booking could be made (the hold had ended and its seats were
    /// taken): the capture was refunded.
    Refunded,
    /// The hold had already ended before the checkout could start: nothing was charged.
    Expired,
    /// Not finished yet (the ledger or the provider did not answer in time).
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutResult {
    pub hold_id: String,
    pub payment_ref: String,
    pub outcome: CheckoutOutcome,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub booking_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// `POST /v1/refunds` on the payments service (service key): refund a whole booking in the
/// ledger and at the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundBooking {
    pub booking_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingRefunded {
    pub booking_id: String,
    pub refunded_minor: u64,
}

/// `POST /v1/charges` at the provider: authorize and capture in one step. The idempotency
/// key is the checkout's `payment_ref`: a repeat returns the first charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    pub amount_minor: u64,
    pub currency: String,
    pub source: String,
    /// Where the provider posts the charge's outcome (signed), possibly more than once.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub callback_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    /// Received, not decided yet.
    Pending,
    Captured,
    Declined,
    /// Cancelled before it was decided: it will never capture.
    Cancelled,
    /// Captured, then refunded in full.
    Refunded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub idempotency_key: String,
    pub charge_id: String,
    pub status: ChargeStatus,
    pub amount_minor: u64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// `GET /v1/charges` at the simulated provider: every charge it knows and the money totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderBook {
    pub charges: Vec<Charge>,
    /// Sum of every charge that was ever captured (refunded ones included).
    pub captured_minor: u64,
    pub refunded_minor: u64,
    pub callbacks_sent: u64,
}

/// What the provider posts to a charge's `callback_url`; the body is signed in the
/// [`SIGNATURE_HEADER`] with the shared secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeCallback {
    pub idempotency_key: String,
    pub charge_id: String,
    pub status: ChargeStatus,
}

/// Hex of `blake3::keyed_hash(blake3(secret), body)`.
pub const SIGNATURE_HEADER: &str = "x-provider-signature";
