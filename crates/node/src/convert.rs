//! Between the public API's JSON types and the ledger's commands and state. Names are
//! resolved to dense indices here, once, at the edge ("A:12:7" → `SeatIdx`).

use crate::error::ApiError;
use crate::time::{parse_rfc3339, rfc3339};
use ledger::*;
use std::str::FromStr;

pub fn parse_id<T: FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("no {what} {s:?}")))
}

pub fn time_ms(t: &api::TimeInput, field: &str) -> Result<u64, ApiError> {
    match t {
        api::TimeInput::UnixMs(ms) => Ok(*ms),
        api::TimeInput::Rfc3339(s) => parse_rfc3339(s).ok_or_else(|| {
            ApiError::invalid(format!("{field} must be RFC 3339 or unix milliseconds"))
        }),
    }
}

fn secs_to_ms(secs: u64, field: &str) -> Result<u64, ApiError> {
    secs.checked_mul(1000)
        .ok_or_else(|| ApiError::invalid(format!("{field} is too large")))
}

pub fn venue_op(v: api::CreateVenue) -> Op {
    let sections = v
        .sections
        .into_iter()
        .map(|s| match s {
            api::SectionSpec::Seated { name, rows } => SectionSpec::Seated {
                name,
                rows: rows
                    .into_iter()
                    .map(|r| RowSpec {
                        label: r.label,
                        seats: r.seats,
                    })
                    .collect(),
            },
            api::SectionSpec::GeneralAdmission { name, capacity } => {
                SectionSpec::GeneralAdmission { name, capacity }
            }
        })
        .collect();
    Op::CreateVenue {
        name: v.name,
        sections,
    }
}

fn media(m: Vec<api::MediaItem>) -> Vec<MediaItem> {
    m.into_iter()
        .map(|m| MediaItem {
            kind: m.kind,
            url: m.url,
        })
        .collect()
}

pub fn event_op(e: api::CreateEvent) -> Op {
    Op::CreateEvent {
        name: e.name,
        category: e.category,
        description: e.description,
        media: media(e.media),
    }
}

fn section_idx(venue: &Venue, name: &str) -> Result<SectionIdx, ApiError> {
    venue
        .sections
        .iter()
        .position(|s| s.name == name)
        .map(|i| SectionIdx(i as u16))
        .ok_or_else(|| ApiError::invalid(format!("the venue has no section {name:?}")))
}

fn category_idx(categories: &[String], name: Option<&str>) -> Result<CategoryIdx, ApiError> {
    match name {
        None => Ok(CategoryIdx(0)),
        Some(n) => categories
            .iter()
            .position(|c| c == n)
            .map(|i| CategoryIdx(i as u8))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "no ticket category {n:?}; categories are {categories:?}"
                ))
            }),
    }
}

pub fn performance_op(
    l: &Ledger,
    event: EventId,
    p: api::CreatePerformance,
) -> Result<Op, ApiError> {
    let venue_id: VenueId = parse_id(&p.venue_id, "venue")?;
    let venue = l
        .state()
        .venues
        .get(&venue_id)
        .ok_or_else(|| ApiError::not_found(format!("no venue {venue_id}")))?;
    let categories = p.categories.unwrap_or_else(|| vec!["adult".to_string()]);
    if categories.len() > limits::MAX_CATEGORIES_PER_PERFORMANCE {
        return Err(ApiError::invalid("too many ticket categories"));
    }
    let mut prices = Vec::with_capacity(p.prices.len());
    for price in &p.prices {
        let currency = Currency::parse(&price.currency).ok_or_else(|| {
            ApiError::invalid(format!(
                "{:?} is not an ISO 4217 currency code",
                price.currency
            ))
        })?;
        prices.push(PriceSpec {
            section: section_idx(venue, &price.section)?,
            category: category_idx(&categories, price.category.as_deref())?,
            price: Money {
                amount_minor: price.amount_minor,
                currency,
            },
        });
    }
    let waiting_room = match p.waiting_room {
        None => None,
        Some(w) => Some(WaitingRoomSpec {
            admission_rate_per_sec: w.admission_rate_per_sec,
            admission_ttl_ms: secs_to_ms(w.admission_ttl_secs, "admission_ttl_secs")?,
            max_active_admissions: w.max_active_admissions,
            seed_commitment: parse_hex::<32>(&w.seed_commitment).ok_or_else(|| {
                ApiError::invalid("seed_commitment must be 64 hex digits (blake3 of the seed)")
            })?,
        }),
    };
    let starts_at_ms = time_ms(&p.starts_at, "starts_at")?;
    Ok(Op::CreatePerformance(PerformanceSpec {
        event,
        venue: venue_id,
        starts_at_ms,
        on_sale_at_ms: time_ms(&p.on_sale_at, "on_sale_at")?,
        sale_ends_at_ms: match &p.sale_ends_at {
            Some(t) => time_ms(t, "sale_ends_at")?,
            None => starts_at_ms,
        },
        hold_ttl_ms: secs_to_ms(p.hold_ttl_secs, "hold_ttl_secs")?,
        payment_grace_ms: secs_to_ms(p.payment_grace_secs.unwrap_or(300), "payment_grace_secs")?,
        max_seats_per_order: p
            .max_seats_per_order
            .unwrap_or(limits::DEFAULT_SEATS_PER_ORDER),
        categories,
        prices,
        waiting_room,
    }))
}

pub fn status_op(performance: PerformanceId, u: &api::UpdatePerformance) -> Result<Op, ApiError> {
    let status = match u.status.as_str() {
        "on_sale" | "open" => SaleStatus::OnSale,
        "paused" | "pause" => SaleStatus::Paused,
        "closed" | "close" => SaleStatus::Closed,
        "cancelled" | "cancel" => SaleStatus::Cancelled,
        other => {
            return Err(ApiError::invalid(format!(
                "status must be on_sale, paused, closed or cancelled, not {other:?}"
            )));
        }
    };
    let seed = match &u.seed {
        None => None,
        Some(s) => Some(
            parse_hex::<32>(s).ok_or_else(|| ApiError::invalid("seed must be 64 hex digits"))?,
        ),
    };
    Ok(Op::SetSaleStatus {
        performance,
        status,
        seed,
    })
}

pub fn hold_op(l: &Ledger, h: &api::CreateHold) -> Result<Op, ApiError> {
    let performance: PerformanceId = parse_id(&h.performance_id, "performance")?;
    let perf = l
        .state()
        .performances
        .get(&performance)
        .ok_or_else(|| ApiError::not_found(format!("no performance {performance}")))?;
    let venue = &l.state().venues[&perf.venue];
    let category = category_idx(&perf.categories, h.category.as_deref())?;
    let what = match (&h.seats, &h.section, h.quantity) {
        (Some(seats), None, None) => {
            if seats.is_empty() {
                return Err(ApiError::invalid("name at least one seat"));
            }
            if seats.len() > usize::from(perf.max_seats_per_order) {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "limit_exceeded",
                    format!("at most {} seats per order", perf.max_seats_per_order),
                ));
            }
            let mut list = Vec::with_capacity(seats.len());
            for name in seats {
                let seat = venue.seat_index(name).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "no seat {name:?} in this venue (seats are named section:row:number)"
                    ))
                })?;
                if list.iter().any(|(s, _)| *s == seat) {
                    return Err(ApiError::invalid(format!("seat {name:?} is named twice")));
                }
                list.push((seat, category));
            }
            HoldRequest::Seats(list)
        }
        (None, Some(section), Some(quantity)) => {
            // Obvious mistakes are refused here, without a log entry; the ledger checks again.
            if quantity == 0 {
                return Err(ApiError::invalid("quantity must be at least 1"));
            }
            if quantity > perf.max_seats_per_order {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "limit_exceeded",
                    format!("at most {} places per order", perf.max_seats_per_order),
                ));
            }
            let section = section_idx(venue, section)?;
            // In a seated section: the best seats side by side, picked by the ledger.
            if venue.sections[usize::from(section.0)].is_seated() {
                HoldRequest::BestAvailable {
                    section,
                    quantity,
                    category,
                }
            } else {
                HoldRequest::GeneralAdmission {
                    section,
                    quantity,
                    category,
                }
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "give either `seats`, or `section` and `quantity`",
            ));
        }
    };
    Ok(Op::PlaceHold { performance, what })
}

// ---------------------------------------------------------------- views

fn section_specs(v: &Venue) -> Vec<api::SectionSpec> {
    v.sections
        .iter()
        .map(|s| match &s.kind {
            SectionKind::Seated { rows, .. } => api::SectionSpec::Seated {
                name: s.name.clone(),
                rows: rows
                    .iter()
                    .map(|r| api::RowSpec {
                        label: r.label.clone(),
                        seats: r.seats,
                    })
                    .collect(),
            },
            SectionKind::GeneralAdmission { capacity } => api::SectionSpec::GeneralAdmission {
                name: s.name.clone(),
                capacity: *capacity,
            },
        })
        .collect()
}

pub fn venue_view(v: &Venue) -> api::Venue {
    api::Venue {
        venue_id: v.id.to_string(),
        name: v.name.clone(),
        seats: v.seats,
        sections: section_specs(v),
    }
}

pub fn event_view(l: &Ledger, e: &Event) -> api::Event {
    let performances = l
        .state()
        .performances
        .values()
        .filter(|p| p.event == e.id)
        .map(|p| p.id.to_string())
        .collect();
    api::Event {
        event_id: e.id.to_string(),
        name: e.name.clone(),
        category: e.category.clone(),
        description: e.description.clone(),
        media: e
            .media
            .iter()
            .map(|m| api::MediaItem {
                kind: m.kind.clone(),
                url: m.url.clone(),
            })
            .collect(),
        performances,
    }
}

fn availability(c: &SectionCounts) -> api::Availability {
    api::Availability {
        capacity: c.capacity,
        available: c.available(),
        held: c.held,
        sold: c.sold,
        blocked: c.blocked,
    }
}

pub fn performance_view(l: &Ledger, p: &Performance) -> api::Performance {
    let venue = &l.state().venues[&p.venue];
    let sections = venue
        .sections
        .iter()
        .zip(&p.sections)
        .enumerate()
        .map(|(i, (s, c))| api::SectionAvailability {
            section: s.name.clone(),
            capacity: c.capacity,
            available: c.available(),
            held: c.held,
            sold: c.sold,
            blocked: c.blocked,
            together: p.together(s, SectionIdx(i as u16)),
        })
        .collect();
    let prices = p
        .prices
        .iter()
        .map(|x| api::Price {
            section: venue.sections[usize::from(x.section.0)].name.clone(),
            category: Some(p.categories[usize::from(x.category.0)].clone()),
            amount_minor: x.price.amount_minor,
            currency: x.price.currency.to_string(),
        })
        .collect();
    let waiting_room = p.waiting_room.as_ref().map(|r| api::WaitingRoomStatus {
        admission_rate_per_sec: r.spec.admission_rate_per_sec,
        seed_commitment: hex(&r.spec.seed_commitment),
        seed: r.seed.map(|s| hex(&s)),
        joined: r.entries.len() as u32,
        waiting: (r.order.len() + r.prequeue.len()) as u32,
        admitted_total: r.admitted_total,
        active_admissions: r.active_admissions,
        sold_out: r.sold_out,
    });
    api::Performance {
        performance_id: p.id.to_string(),
        event_id: p.event.to_string(),
        venue_id: p.venue.to_string(),
        starts_at: rfc3339(p.starts_at_ms),
        on_sale_at: rfc3339(p.on_sale_at_ms),
        sale_ends_at: rfc3339(p.sale_ends_at_ms),
        status: p.status.as_str().to_string(),
        hold_ttl_secs: p.hold_ttl_ms / 1000,
        max_seats_per_order: p.max_seats_per_order,
        categories: p.categories.clone(),
        prices,
        sections,
        totals: availability(&p.totals()),
        revenue_minor: p.revenue_minor,
        currency: p.currency.to_string(),
        waiting_room,
    }
}

pub fn seat_map(
    l: &Ledger,
    p: &Performance,
    section: Option<&str>,
) -> Result<api::SeatMap, ApiError> {
    let venue = &l.state().venues[&p.venue];
    let mut seats = Vec::new();
    for (k, s) in venue.sections.iter().enumerate() {
        if section.is_some_and(|name| name != s.name) {
            continue;
        }
        let SectionKind::Seated { rows, .. } = &s.kind else {
            continue;
        };
        for r in rows {
            for n in 0..r.seats {
                let idx = r.first_seat + n;
                let state = match p.seats[idx as usize].get() {
                    SeatState::Available => "available",
                    SeatState::Blocked => "blocked",
                    SeatState::Held(_) => "held",
                    SeatState::Sold(_) => "sold",
                };
                seats.push(api::SeatStatus {
                    seat: format!("{}:{}:{}", s.name, r.label, n + 1),
                    state: state.into(),
                });
            }
        }
        let _ = k;
    }
    if let Some(name) = section
        && !venue.sections.iter().any(|s| s.name == name)
    {
        return Err(ApiError::not_found(format!(
            "the venue has no section {name:?}"
        )));
    }
    Ok(api::SeatMap { seats })
}

fn seat_name(venue: &Venue, seat: SeatIdx) -> String {
    venue
        .seat_name(seat)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("#{}", seat.0))
}

pub fn hold_view(l: &Ledger, h: &Hold) -> api::Hold {
    let perf = &l.state().performances[&h.performance];
    let venue = &l.state().venues[&perf.venue];
    let (state, booking_id) = match h.state {
        HoldState::Live => ("live", None),
        HoldState::Released => ("released", None),
        HoldState::Expired => ("expired", None),
        HoldState::Confirmed(b) => ("confirmed", Some(b.to_string())),
    };
    api::Hold {
        hold_id: h.id.to_string(),
        performance_id: h.performance.to_string(),
        seats: h.seats.iter().map(|(s, _)| seat_name(venue, *s)).collect(),
        quantity: h.quantity(),
        expires_at: rfc3339(h.expires_at_ms),
        expires_at_ms: h.expires_at_ms,
        amount_minor: h.amount.amount_minor,
        currency: h.amount.currency.to_string(),
        state: state.into(),
        booking_id,
    }
}

/// The checkout of a hold, if it was extended into one.
pub fn checkout_view(h: &Hold) -> Option<api::Checkout> {
    let c = h.checkout.as_ref()?;
    let (state, provider_ref, reason) = match c {
        Checkout::Started => (api::CheckoutState::Started, None, None),
        Checkout::Captured { provider_ref } => {
            (api::CheckoutState::Captured, Some(provider_ref), None)
        }
        Checkout::Booked => (api::CheckoutState::Booked, None, None),
        Checkout::Failed { reason } => (api::CheckoutState::Failed, None, Some(reason)),
        Checkout::Refunded {
            provider_ref,
            reason,
        } => (
            api::CheckoutState::Refunded,
            Some(provider_ref),
            Some(reason),
        ),
    };
    let (hold_state, booking_id) = match h.state {
        HoldState::Live => ("live", None),
        HoldState::Released => ("released", None),
        HoldState::Expired => ("expired", None),
        HoldState::Confirmed(b) => ("confirmed", Some(b.to_string())),
    };
    Some(api::Checkout {
        hold_id: h.id.to_string(),
        payment_ref: h.payment_ref.clone().unwrap_or_default(),
        performance_id: h.performance.to_string(),
        amount_minor: h.amount.amount_minor,
        currency: h.amount.currency.to_string(),
        state,
        provider_ref: provider_ref.cloned(),
        booking_id,
        reason: reason.cloned(),
        hold_state: hold_state.into(),
        hold_expires_at_ms: h.expires_at_ms,
    })
}

pub fn payment_event(e: api::PaymentEvent) -> PaymentEvent {
    match e {
        api::PaymentEvent::Captured { provider_ref } => PaymentEvent::Captured { provider_ref },
        api::PaymentEvent::Failed { reason } => PaymentEvent::Failed { reason },
        api::PaymentEvent::Refunded {
            provider_ref,
            reason,
        } => PaymentEvent::Refunded {
            provider_ref,
            reason,
        },
    }
}

pub fn booking_view(l: &Ledger, b: &Booking) -> api::Booking {
    let perf = &l.state().performances[&b.performance];
    let venue = &l.state().venues[&perf.venue];
    let tickets = b
        .tickets
        .iter()
        .map(|t| api::Ticket {
            ticket_id: t.id.to_string(),
            seat: t.seat.map(|s| seat_name(venue, s)),
            section: venue.sections[usize::from(t.section.0)].name.clone(),
            category: perf.categories[usize::from(t.category.0)].clone(),
            amount_minor: t.price_minor,
            code: hex(&t.code),
            state: match t.state {
                TicketState::Valid => "valid",
                TicketState::Refunded => "refunded",
                TicketState::CheckedIn => "checked_in",
            }
            .into(),
        })
        .collect();
    api::Booking {
        booking_id: b.id.to_string(),
        performance_id: b.performance.to_string(),
        hold_id: b.hold.to_string(),
        tickets,
        amount_minor: b.amount.amount_minor,
        refunded_minor: b.refunded_minor,
        currency: b.amount.currency.to_string(),
        payment_ref: b.payment_ref.clone(),
        confirmed_at: rfc3339(b.confirmed_at_ms),
    }
}

pub fn queue_view(queue: QueueId, e: &QueueEntry, position: Option<u64>) -> api::QueueStatus {
    api::QueueStatus {
        queue_id: queue.to_string(),
        state: e.state.as_str().into(),
        position,
        admitted_until: (e.state == QueueState::Admitted).then(|| rfc3339(e.admitted_until_ms)),
    }
}
