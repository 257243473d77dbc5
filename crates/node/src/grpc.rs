//! The public gRPC API (proto/ticketledger.proto): the on-sale path with the HTTP API's
//! semantics, reusing its conversions. Errors carry the same stable codes.

use crate::app::{App, Consistency};
use crate::convert::*;
use crate::error::ApiError;
use crate::http::authenticate;
use ledger::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("ticketledger.v1");
}

pub struct LedgerService {
    pub app: Arc<App>,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        use axum::http::StatusCode as S;
        let code = match e.status {
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
        };
        let mut s = Status::new(code, format!("{}: {}", e.code, e.detail));
        if let Ok(v) = e.code.parse() {
            s.metadata_mut().insert("x-ticketledger-code", v);
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

    async fn hold(&self, p: Principal, id: HoldId) -> std::result::Result<pb::Hold, ApiError> {
        self.app
            .visible_hold(p, id, Consistency::Stale)
            .await
            .map(hold_pb)
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
        sections: v
            .sections
            .into_iter()
            .map(|s| pb::SectionAvailability {
                section: s.section,
                capacity: s.capacity,
                available: s.available,
                held: s.held,
                sold: s.sold,
                blocked: s.blocked,
            })
            .collect(),
        revenue_minor: v.revenue_minor,
        currency: v.currency,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
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
        let r = req.into_inner();
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
            Reply::HoldPlaced(h) => Ok(Response::new(self.hold(p, h.hold).await?)),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn get_hold(&self, req: Request<pb::HoldRef>) -> Result<pb::Hold> {
        let p = self.principal(&req).await?;
        let id: HoldId = parse_id(&req.get_ref().hold_id, "hold")?;
        self.app.linearize().await?;
        Ok(Response::new(self.hold(p, id).await?))
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
        let r = req.into_inner();
        let hold: HoldId = parse_id(&r.hold_id, "hold")?;
        let n = self
            .app
            .read(Consistency::Stale, |l| {
                l.state().holds.get(&hold).map(|h| h.quantity())
            })
            .await?;
        let codes = (0..n.unwrap_or(0))
            .map(|_| rand::random::<CheckInCode>())
            .collect();
        match self
            .write(
                p,
                &r.request_id,
                Op::ConfirmHold {
                    hold,
                    payment_ref: r.payment_ref,
                    codes,
                },
            )
            .await?
        {
            Reply::BookingConfirmed(b) => Ok(Response::new(
                self.booking(p, b.booking, Consistency::Stale).await?,
            )),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
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
        let refund_ref = non_empty(&r.refund_ref)
            .unwrap_or_else(|| format!("refund-{}", crate::app::random_key()));
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
        let r = req.into_inner();
        let performance: PerformanceId = parse_id(&r.performance_id, "performance")?;
        match self
            .write(p, &r.request_id, Op::JoinQueue { performance })
            .await?
        {
            Reply::QueueJoined { queue, position } => Ok(Response::new(pb::QueueStatus {
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
            })),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn get_queue(&self, req: Request<pb::QueueRef>) -> Result<pb::QueueStatus> {
        let p = self.principal(&req).await?;
        let queue: QueueId = parse_id(&req.get_ref().queue_id, "queue entry")?;
        let found = self
            .app
            .read(Consistency::Linearizable, |l| {
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
}
