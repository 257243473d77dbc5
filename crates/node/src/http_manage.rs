//! The HTTP calls for bookings lists, door check-in, organizers' catalog updates and sales
//! reports (docs/http-api.md). Like `http.rs`: parse and authorize at the edge, then propose
//! (writes) or read the local ledger after a read index (reads). The ledger authorizes every
//! write again; the reads here authorize themselves, against the same rules.

use crate::app::{App, Consistency};
use crate::convert::{booking_view, event_view, parse_id, performance_view};
use crate::error::ApiError;
use crate::http::{Body, authenticate, write_as};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

type Result<T> = std::result::Result<T, ApiError>;
type AppState = State<Arc<App>>;

/// Largest page of `GET /v1/bookings`.
const MAX_BOOKINGS_PAGE: usize = 200;
/// Most seats one `blocked-seats` call names (the body limit allows more; a venue-wide
/// change is a few calls, each a bounded log entry).
const MAX_BLOCK_SEATS_PER_CALL: usize = 10_000;
/// Most `over_time` buckets in one sales report.
const MAX_REPORT_BUCKETS: usize = 10_000;
const REPORT_BUCKET_SECS: std::ops::RangeInclusive<u64> = 60..=30 * 86_400;

fn consistency(given: Option<&str>) -> Result<Consistency> {
    match given {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable or stale, not {other:?}"
        ))),
    }
}

/// `u_5` (an account) or `k_3` (an API key).
fn parse_principal(s: &str) -> Result<Principal> {
    if s.starts_with("u_") {
        s.parse().map(Principal::User)
    } else if s.starts_with("k_") {
        s.parse().map(Principal::ApiKey)
    } else {
        return Err(ApiError::bad_request(
            "buyer must be an account id (u_…) or an API key id (k_…)",
        ));
    }
    .map_err(|_| ApiError::bad_request(format!("{s:?} is not an account or API key id")))
}

fn limit_exceeded(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", detail)
}

// ---------------------------------------------------------------- bookings

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingParams {
    buyer: Option<String>,
    performance: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

/// Which bookings a listing walks.
#[derive(Clone, Copy)]
enum Scope {
    Buyer(Principal),
    Performance(PerformanceId),
    All,
}

/// `GET /v1/bookings`: the caller's own bookings; a service or operator may name a buyer or
/// a performance, or list every booking. Pages in booking-id order.
pub async fn list_bookings(
    State(app): AppState,
    headers: HeaderMap,
    Query(q): Query<BookingParams>,
) -> Result<Json<api::BookingList>> {
    let principal = authenticate(&app, &headers).await?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_BOOKINGS_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={MAX_BOOKINGS_PAGE}"
        )));
    }
    let after: Option<BookingId> = match &q.after {
        Some(a) => Some(
            a.parse()
                .map_err(|_| ApiError::bad_request("after must be a booking id"))?,
        ),
        None => None,
    };
    let buyer = q.buyer.as_deref().map(parse_principal).transpose()?;
    let performance: Option<PerformanceId> = match &q.performance {
        Some(p) => Some(
            p.parse()
                .map_err(|_| ApiError::bad_request("performance must be a performance id"))?,
        ),
        None => None,
    };
    let privileged = app.is_service_or_operator(principal).await?;
    let scope = match (buyer, performance) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "filter by buyer or by performance, not both",
            ));
        }
        (Some(b), None) if privileged || b == principal => Scope::Buyer(b),
        (None, Some(p)) if privileged => Scope::Performance(p),
        (None, None) if privileged => Scope::All,
        (None, None) => Scope::Buyer(principal),
        _ => {
            return Err(ApiError::forbidden(
                "only a service or operator key lists other buyers' or a performance's bookings",
            ));
        }
    };
    let c = consistency(q.consistency.as_deref())?;
    let list = app
        .read(c, |l| {
            let mut page: Vec<&Booking> = match scope {
                Scope::Buyer(b) => l.bookings_of(b, after).take(limit + 1).collect(),
                Scope::Performance(p) => l.bookings_for(p, after).take(limit + 1).collect(),
                Scope::All => {
                    let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
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
            api::BookingList {
                next: more
                    .then(|| page.last().map(|b| b.id.to_string()))
                    .flatten(),
                bookings: page.into_iter().map(|b| booking_view(l, b)).collect(),
            }
        })
        .await?;
    Ok(Json(list))
}

// ---------------------------------------------------------------- check-in

fn parse_code(s: &str) -> Result<CheckInCode> {
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

/// `POST /v1/performances/{id}/check-in`: marks the ticket with this code used, once; a
/// second time is 409 `ticket_used`. The performance's organizer, a service or an operator.
pub async fn check_in(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::CheckIn>,
) -> Result<Json<api::CheckedIn>> {
    let performance: PerformanceId = parse_id(&id, "performance")?;
    let principal = authenticate(&app, &headers).await?;
    let code = parse_code(&b.code)?;
    let (ticket, booking) =
        match write_as(&app, &headers, principal, Op::CheckIn { performance, code }).await? {
            Reply::CheckedIn { ticket, booking } => (ticket, booking),
            other => return Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        };
    let view = app
        .read(Consistency::Stale, |l| {
            l.state().bookings.get(&booking).map(|b| booking_view(l, b))
        })
        .await?
        .ok_or_else(|| ApiError::internal("checked in but the booking is not readable"))?;
    let t = view
        .tickets
        .into_iter()
        .find(|t| t.ticket_id == ticket.to_string())
        .ok_or_else(|| ApiError::internal("checked in but the ticket is not in its booking"))?;
    Ok(Json(api::CheckedIn {
        ticket_id: t.ticket_id,
        booking_id: view.booking_id,
        seat: t.seat,
        section: t.section,
        category: t.category,
    }))
}

// ---------------------------------------------------------------- organizer updates

/// `PATCH /v1/events/{id}`: replace the given fields (the event's owner or an operator).
pub async fn update_event(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::UpdateEvent>,
) -> Result<Json<api::Event>> {
    let event: EventId = parse_id(&id, "event")?;
    let principal = authenticate(&app, &headers).await?;
    let op = update_event_op(&app, event, b).await?;
    let reply = write_as(&app, &headers, principal, op).await?;
    updated_event(&app, event, reply).await.map(Json)
}

/// The ledger op of an event update (HTTP and gRPC): the fields not given are today's, as
/// the op replaces all of them.
pub(crate) async fn update_event_op(app: &App, event: EventId, b: api::UpdateEvent) -> Result<Op> {
    if b == api::UpdateEvent::default() {
        return Err(ApiError::invalid(
            "give at least one of name, category, description, media",
        ));
    }
    let current = app
        .read(Consistency::Linearizable, |l| {
            l.state().events.get(&event).map(|e| event_view(l, e))
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no event {event}")))?;
    let media = b.media.unwrap_or(current.media);
    Ok(Op::UpdateEvent {
        event,
        name: b.name.unwrap_or(current.name),
        category: b.category.unwrap_or(current.category),
        description: b.description.unwrap_or(current.description),
        media: media
            .into_iter()
            .map(|m| MediaItem {
                kind: m.kind,
                url: m.url,
            })
            .collect(),
    })
}

/// The event as the update of `update_event_op` left it.
pub(crate) async fn updated_event(app: &App, event: EventId, reply: Reply) -> Result<api::Event> {
    match reply {
        Reply::EventUpdated => {}
        other => return Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
    app.read(Consistency::Stale, |l| {
        l.state().events.get(&event).map(|e| event_view(l, e))
    })
    .await?
    .ok_or_else(|| ApiError::internal("event updated but not readable"))
}

/// `POST /v1/performances/{id}/blocked-seats`: block or unblock named seats (the
/// performance's owner or an operator).
pub async fn block_seats(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(b): Body<api::BlockSeats>,
) -> Result<Json<api::SeatsBlocked>> {
    let performance: PerformanceId = parse_id(&id, "performance")?;
    let principal = authenticate(&app, &headers).await?;
    let op = block_seats_op(&app, performance, &b).await?;
    seats_blocked(write_as(&app, &headers, principal, op).await?).map(Json)
}

/// The ledger op of a blocked-seats call (HTTP and gRPC): the seats' names resolved in the
/// performance's venue.
pub(crate) async fn block_seats_op(
    app: &App,
    performance: PerformanceId,
    b: &api::BlockSeats,
) -> Result<Op> {
    if b.seats.is_empty() {
        return Err(ApiError::invalid("name at least one seat"));
    }
    if b.seats.len() > MAX_BLOCK_SEATS_PER_CALL {
        return Err(limit_exceeded(format!(
            "at most {MAX_BLOCK_SEATS_PER_CALL} seats per call"
        )));
    }
    let resolve = |l: &Ledger| -> Result<Vec<SeatIdx>> {
        let perf = l
            .state()
            .performances
            .get(&performance)
            .ok_or_else(|| ApiError::not_found(format!("no performance {performance}")))?;
        let venue = &l.state().venues[&perf.venue];
        b.seats
            .iter()
            .map(|name| {
                venue.seat_index(name).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "no seat {name:?} in this venue (seats are named section:row:number)"
                    ))
                })
            })
            .collect()
    };
    // Venues never change: only a performance too new to be here needs a read index.
    let seats = match app.read(Consistency::Stale, resolve).await? {
        Err(e) if e.code == "not_found" => app.read(Consistency::Linearizable, resolve).await??,
        other => other?,
    };
    Ok(Op::SetSeatsBlocked {
        performance,
        seats,
        blocked: b.blocked,
    })
}

pub(crate) fn seats_blocked(reply: Reply) -> Result<api::SeatsBlocked> {
    match reply {
        Reply::SeatsBlocked { changed } => Ok(api::SeatsBlocked { changed }),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

// ---------------------------------------------------------------- reports

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    format: Option<String>,
    bucket_secs: Option<u64>,
    consistency: Option<String>,
}

/// `GET /v1/reports/performances/{id}/sales[?format=csv]`: sold, held and available per
/// section; revenue by category and over time (the performance's organizer or an operator).
pub async fn sales_report(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReportParams>,
) -> Result<Response> {
    let performance: PerformanceId = parse_id(&id, "performance")?;
    let principal = authenticate(&app, &headers).await?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json or csv, not {other:?}"
            )));
        }
    };
    let c = consistency(q.consistency.as_deref())?;
    let report = sales_report_of(&app, principal, performance, q.bucket_secs, c).await?;
    if csv {
        Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            sales_csv(&report),
        )
            .into_response())
    } else {
        Ok(Json(report).into_response())
    }
}

/// A performance's sales report as `principal` may read it (HTTP and gRPC): its organizer
/// or an operator; `bucket_secs` None is an hour.
pub(crate) async fn sales_report_of(
    app: &App,
    principal: Principal,
    performance: PerformanceId,
    bucket_secs: Option<u64>,
    c: Consistency,
) -> Result<api::SalesReport> {
    let bucket_secs = bucket_secs.unwrap_or(3600);
    if !REPORT_BUCKET_SECS.contains(&bucket_secs) {
        return Err(ApiError::bad_request(format!(
            "bucket_secs must be {}..={}",
            REPORT_BUCKET_SECS.start(),
            REPORT_BUCKET_SECS.end()
        )));
    }
    let operator = app.is_operator(principal).await?;
    app.read(c, |l| {
        let p = l
            .state()
            .performances
            .get(&performance)
            .ok_or_else(|| ApiError::not_found(format!("no performance {performance}")))?;
        if !operator && p.owner != principal {
            return Err(ApiError::forbidden(
                "only the performance's organizer or an operator reads its sales",
            ));
        }
        sales_of(l, p, bucket_secs)
    })
    .await?
}

/// The report of one performance, from its bookings (one pass over the booking index).
fn sales_of(l: &Ledger, p: &Performance, bucket_secs: u64) -> Result<api::SalesReport> {
    let view = performance_view(l, p);
    let mut by_category: Vec<api::CategorySales> = p
        .categories
        .iter()
        .map(|c| api::CategorySales {
            category: c.clone(),
            tickets_sold: 0,
            revenue_minor: 0,
            tickets_refunded: 0,
            refunded_minor: 0,
        })
        .collect();
    let bucket_ms = bucket_secs * 1000;
    let mut buckets: BTreeMap<u64, api::SalesBucket> = BTreeMap::new();
    let (mut bookings, mut checked_in) = (0u32, 0u32);
    for b in l.bookings_for(p.id, None) {
        bookings += 1;
        let start = b.confirmed_at_ms - b.confirmed_at_ms % bucket_ms;
        if !buckets.contains_key(&start) && buckets.len() == MAX_REPORT_BUCKETS {
            return Err(limit_exceeded(format!(
                "more than {MAX_REPORT_BUCKETS} buckets: ask for a larger bucket_secs"
            )));
        }
        let bucket = buckets.entry(start).or_insert_with(|| api::SalesBucket {
            starts_at: crate::time::rfc3339(start),
            starts_at_ms: start,
            bookings: 0,
            tickets_sold: 0,
            revenue_minor: 0,
        });
        bucket.bookings += 1;
        for t in &b.tickets {
            let cat = &mut by_category[usize::from(t.category.0)];
            if t.state == TicketState::Refunded {
                cat.tickets_refunded += 1;
                cat.refunded_minor += t.price_minor;
                continue;
            }
            checked_in += u32::from(t.state == TicketState::CheckedIn);
            cat.tickets_sold += 1;
            cat.revenue_minor += t.price_minor;
            bucket.tickets_sold += 1;
            bucket.revenue_minor += t.price_minor;
        }
    }
    let sum = |f: fn(&api::CategorySales) -> u64| by_category.iter().map(f).sum::<u64>();
    Ok(api::SalesReport {
        performance_id: view.performance_id,
        event_id: view.event_id,
        status: view.status,
        currency: view.currency,
        as_of: crate::time::rfc3339(l.clock_ms()),
        totals: view.totals,
        sections: view.sections,
        bookings,
        tickets_sold: sum(|c| c.tickets_sold.into()) as u32,
        tickets_refunded: sum(|c| c.tickets_refunded.into()) as u32,
        tickets_checked_in: checked_in,
        revenue_minor: sum(|c| c.revenue_minor),
        refunded_minor: sum(|c| c.refunded_minor),
        by_category,
        bucket_secs,
        over_time: buckets.into_values().collect(),
    })
}

/// One table: a `kind` column says which part of the report a row is (`total`, `section`,
/// `category`, `time`); the columns a kind does not have stay empty.
pub(crate) fn sales_csv(r: &api::SalesReport) -> String {
    let mut out = String::from(
        "kind,key,capacity,available,held,sold,blocked,tickets_sold,revenue_minor,tickets_refunded,refunded_minor,bookings,currency\n",
    );
    let cur = &r.currency;
    let t = &r.totals;
    let _ = writeln!(
        out,
        "total,{},{},{},{},{},{},{},{},{},{},{},{cur}",
        r.performance_id,
        t.capacity,
        t.available,
        t.held,
        t.sold,
        t.blocked,
        r.tickets_sold,
        r.revenue_minor,
        r.tickets_refunded,
        r.refunded_minor,
        r.bookings
    );
    for s in &r.sections {
        let _ = writeln!(
            out,
            "section,{},{},{},{},{},{},,,,,,{cur}",
            csv_field(&s.section),
            s.capacity,
            s.available,
            s.held,
            s.sold,
            s.blocked
        );
    }
    for c in &r.by_category {
        let _ = writeln!(
            out,
            "category,{},,,,,,{},{},{},{},,{cur}",
            csv_field(&c.category),
            c.tickets_sold,
            c.revenue_minor,
            c.tickets_refunded,
            c.refunded_minor
        );
    }
    for b in &r.over_time {
        let _ = writeln!(
            out,
            "time,{},,,,,,{},{},,,{},{cur}",
            b.starts_at, b.tickets_sold, b.revenue_minor, b.bookings
        );
    }
    out
}

/// RFC 4180 quoting for names that contain a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_in_codes_are_32_hex_digits() {
        let code = parse_code("000102030405060708090a0b0c0d0e0F").unwrap();
        assert_eq!(code[1], 1);
        assert_eq!(code[15], 15);
        for bad in [
            "",
            "00",
            "zz0102030405060708090a0b0c0d0e0f",
            "é0102030405060708090a0b0c0d0e0",
        ] {
            assert_eq!(
                parse_code(bad).unwrap_err().code,
                "invalid_input",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn principals_parse_by_prefix() {
        assert_eq!(parse_principal("u_5").unwrap(), Principal::User(UserId(5)));
        assert_eq!(
            parse_principal("k_3").unwrap(),
            Principal::ApiKey(ApiKeyId(3))
        );
        for bad in ["5", "u_x", "p_1", ""] {
            assert!(parse_principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csv_names_are_quoted_when_they_must_be() {
        assert_eq!(csv_field("Floor"), "Floor");
        assert_eq!(csv_field("A, left"), "\"A, left\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
