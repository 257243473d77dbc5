//! Wire types of the calls for buyers' booking lists, door check-in, organizers' catalog
//! updates and sales reports (docs/http-api.md): `GET /v1/bookings`,
//! `POST /v1/performances/{id}/check-in`, `PATCH /v1/events/{id}`,
//! `POST /v1/performances/{id}/blocked-seats`, `GET /v1/reports/performances/{id}/sales`.

use crate::{Availability, Booking, MediaItem, SectionAvailability};
use serde::{Deserialize, Serialize};

/// `GET /v1/bookings?after=&limit=`: a buyer's own bookings in id order; a service or an
/// operator may ask for one buyer's (`?buyer=u_5` or `k_3`), one performance's
/// (`?performance=p_4`), or every booking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BookingList {
    pub bookings: Vec<Booking>,
    /// Pass as `?after=` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<String>,
}

/// `POST /v1/performances/{id}/check-in`: the code printed on a ticket (32 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckIn {
    pub code: String,
}

/// The ticket a check-in code admitted; a second check-in of it is 409 `ticket_used`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckedIn {
    pub ticket_id: String,
    pub booking_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seat: Option<String>,
    pub section: String,
    pub category: String,
}

/// `PATCH /v1/events/{id}`: the fields given replace the event's; absent ones stay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateEvent {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media: Option<Vec<MediaItem>>,
}

/// `POST /v1/performances/{id}/blocked-seats`: block (house seats, broken seats) or unblock
/// named seats; a held or sold seat is 409 `seat_unavailable` and nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BlockSeats {
    pub seats: Vec<String>,
    pub blocked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeatsBlocked {
    /// Seats whose state changed (a seat already in the asked state does not count).
    pub changed: u32,
}

/// `GET /v1/reports/performances/{id}/sales[?format=csv][&bucket_secs=3600]` (the
/// performance's organizer or an operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SalesReport {
    pub performance_id: String,
    pub event_id: String,
    pub status: String,
    pub currency: String,
    /// The ledger time the report describes.
    pub as_of: String,
    pub totals: Availability,
    pub sections: Vec<SectionAvailability>,
    pub bookings: u32,
    /// Tickets booked and not refunded (checked-in ones included).
    pub tickets_sold: u32,
    pub tickets_refunded: u32,
    pub tickets_checked_in: u32,
    /// Revenue of the tickets sold, net of refunds.
    pub revenue_minor: u64,
    pub refunded_minor: u64,
    pub by_category: Vec<CategorySales>,
    /// Width of each `over_time` bucket.
    pub bucket_secs: u64,
    /// Tickets sold (net of refunds) by the time their booking was confirmed; only buckets
    /// with a booking are listed.
    pub over_time: Vec<SalesBucket>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CategorySales {
    pub category: String,
    pub tickets_sold: u32,
    pub revenue_minor: u64,
    pub tickets_refunded: u32,
    pub refunded_minor: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SalesBucket {
    pub starts_at: String,
    pub starts_at_ms: u64,
    pub bookings: u32,
    pub tickets_sold: u32,
    pub revenue_minor: u64,
}
