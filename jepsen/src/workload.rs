//! The workload: concurrent clients on a small hot set of seats (so conflicts are frequent)
//! and a small GA section, through the public API only. Each client is a process of the
//! history; it holds, releases, confirms, refunds, abandons holds to let them expire, reads
//! seat maps from one node (linearizable or stale), and retries unknown outcomes with the
//! same idempotency key.

use crate::cluster::Cluster;
use crate::history::{Completion, Op, Recorder, Value};
use anyhow::Context;
use client::{Client, Consistency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const HOT_SECTION: &str = "H";
pub const GA_SECTION: &str = "G";
/// Deadline of one call over all its attempts: short, so faults turn into `info` outcomes
/// rather than stalled clients.
pub const CALL_DEADLINE: Duration = Duration::from_secs(3);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1200);
/// Retries of one unknown outcome with its idempotency key before the client gives up on it.
pub const RETRIES_MAX: u32 = 3;

pub struct Catalog {
    pub performance: String,
    pub seats: Vec<String>,
    pub buyer_keys: Vec<String>,
    pub service_key: String,
}

/// A venue with one row of `seats` hot seats and a GA section, an on-sale performance.
pub async fn setup(
    cluster: &Cluster,
    seats: u32,
    ga_capacity: u32,
    ttl_secs: u64,
    clients: usize,
) -> anyhow::Result<Catalog> {
    let admin = cluster.admin().with_deadline(Duration::from_secs(20));
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Jepsen Hall".into(),
            sections: vec![
                api::SectionSpec::Seated {
                    name: HOT_SECTION.into(),
                    rows: vec![api::RowSpec {
                        label: "1".into(),
                        seats,
                    }],
                },
                api::SectionSpec::GeneralAdmission {
                    name: GA_SECTION.into(),
                    capacity: ga_capacity,
                },
            ],
        })
        .await
        .context("creating the venue")?;
    let event = admin
        .create_event(&api::CreateEvent {
            name: "Jepsen".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        })
        .await
        .context("creating the event")?;
    let price = |section: &str| api::Price {
        section: section.into(),
        category: None,
        amount_minor: 1000,
        currency: "EUR".into(),
    };
    let perf = admin
        .create_performance(
            &event.event_id,
            &api::CreatePerformance {
                venue_id: venue.venue_id,
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: ttl_secs,
                payment_grace_secs: None,
                max_seats_per_order: Some(4),
                categories: None,
                prices: vec![price(HOT_SECTION), price(GA_SECTION)],
                waiting_room: None,
            },
        )
        .await
        .context("creating the performance")?;
    admin
        .update_performance(
            &perf.performance_id,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: None,
            },
        )
        .await
        .context("opening the sale")?;
    let mut buyer_keys = Vec::new();
    for i in 0..clients {
        buyer_keys.push(
            admin
                .create_api_key(&format!("jepsen-buyer-{i}"), "buyer")
                .await?
                .key,
        );
    }
    let service_key = admin.create_api_key("jepsen-service", "service").await?.key;
    Ok(Catalog {
        performance: perf.performance_id,
        seats: (1..=seats)
            .map(|s| format!("{HOT_SECTION}:1:{s}"))
            .collect(),
        buyer_keys,
        service_key,
    })
}

/// What a client believes it owns.
enum Have {
    Nothing,
    Hold { id: String, seat: Option<String> },
}

pub struct Process {
    pub id: u32,
    rng: StdRng,
    buyer: Client,
    service: Client,
    /// (slot, linearizable client, stale client) of every node.
    readers: Vec<(usize, Client, Client)>,
    performance: String,
    seats: Vec<String>,
    rec: Arc<Recorder>,
    have: Have,
    bookings: Vec<(String, Option<String>)>,
    refund_ref_from_node: bool,
    /// `--pipeline`: holds and confirms on this stream, with these credentials (buyer,
    /// service) per call.
    pipe: Option<(client::grpc::Pipeline, String, String)>,
}

impl Process {
    pub fn new(
        id: u32,
        seed: u64,
        cluster: &Cluster,
        cat: &Catalog,
        rec: Arc<Recorder>,
        refund_ref_from_node: bool,
        pipeline: bool,
    ) -> Process {
        let urls: Vec<String> = cluster.slots().iter().map(|s| s.http.clone()).collect();
        let mk = |key: &str, urls: Vec<String>| {
            Client::new(urls)
                .with_key(key.to_string())
                .with_deadline(CALL_DEADLINE)
                .with_attempt_timeout(ATTEMPT_TIMEOUT)
        };
        let key = &cat.buyer_keys[id as usize % cat.buyer_keys.len()];
        let readers = cluster
            .slots()
            .iter()
            .map(|s| {
                let c = mk(key, vec![s.http.clone()]);
                (s.slot, c.clone(), c.with_consistency(Consistency::Stale))
            })
            .collect();
        Process {
            id,
            rng: StdRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x9e37_79b9),
            buyer: mk(key, urls.clone()),
            service: mk(&cat.service_key, urls),
            readers,
            performance: cat.performance.clone(),
            seats: cat.seats.clone(),
            rec,
            have: Have::Nothing,
            bookings: Vec::new(),
            refund_ref_from_node,
            pipe: pipeline.then(|| {
                let slots = cluster.slots();
                let p = client::grpc::GrpcClient::new(slots.iter().map(|s| s.grpc.clone()))
                    .with_deadline(CALL_DEADLINE)
                    .with_home_node(id as usize)
                    .pipeline();
                (
                    p,
                    format!("Bearer {key}"),
                    format!("Bearer {}", cat.service_key),
                )
            }),
        }
    }

    /// A hold over the pipeline: the same request and answer as over HTTP.
    async fn pipelined_hold(&self, body: api::CreateHold, key: &str) -> Option<Completion> {
        let (pipe, buyer, _) = self.pipe.as_ref()?;
        let req = client::grpc::pb::PlaceHoldRequest {
            performance_id: body.performance_id,
            seats: body.seats.unwrap_or_default(),
            section: body.section.unwrap_or_default(),
            quantity: body.quantity.map_or(0, u32::from),
            category: String::new(),
            request_id: key.to_string(),
        };
        Some(outcome(pipe.place_hold(buyer, req).await, |h| {
            Value::Hold {
                hold_id: h.hold_id,
                expires_at_ms: h.expires_at_ms,
                quantity: h.quantity,
            }
        }))
    }

    /// Run until `stop`; every operation is recorded.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let think = self.rng.random_range(5..30);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let op = self.next_op();
            if !self.perform(op).await {
                return;
            }
        }
    }

    fn key(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    fn next_op(&mut self) -> Op {
        let r: f64 = self.rng.random();
        match std::mem::replace(&mut self.have, Have::Nothing) {
            Have::Hold { id, seat } => {
                let key = self.key();
                if r < 0.45 {
                    return Op::Confirm {
                        hold: id,
                        seat,
                        key,
                    };
                }
                if r < 0.85 {
                    return Op::Release {
                        hold: id,
                        seat,
                        key,
                    };
                }
                // Abandon it: it must expire on its own.
            }
            Have::Nothing => {}
        }
        let r: f64 = self.rng.random();
        if !self.bookings.is_empty() && r < 0.15 {
            let i = self.rng.random_range(0..self.bookings.len());
            let (booking, seat) = self.bookings.swap_remove(i);
            let key = self.key();
            return Op::Refund { booking, seat, key };
        }
        let node = self.readers[self.rng.random_range(0..self.readers.len())].0 as u64;
        let stale = self.rng.random_bool(0.2);
        match r {
            r if r < 0.33 => Op::ReadSeats { node, stale },
            r if r < 0.40 => Op::ReadGa { node, stale },
            r if r < 0.52 => {
                let quantity = self.rng.random_range(1..=3);
                let key = self.key();
                Op::GaHold { quantity, key }
            }
            _ => {
                let seat = self.seats[self.rng.random_range(0..self.seats.len())].clone();
                let key = self.key();
                Op::Hold { seat, key }
            }
        }
    }

    /// Invoke, complete, retry unknown outcomes and sometimes repeat a success with the same
    /// key. `false` when the history is full.
    async fn perform(&mut self, op: Op) -> bool {
        let Some(root) = self.rec.invoke(self.id, &op, None) else {
            return false;
        };
        let mut done = self.call(&op).await;
        self.rec.complete(root, self.id, &op, &done, None);
        let mut tries = 0;
        while matches!(done, Completion::Info(_))
            && op.key().is_some()
            && tries < RETRIES_MAX
            && self.rng.random_bool(0.8)
        {
            tries += 1;
            let wait = self.rng.random_range(200..800);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let Some(id) = self.rec.invoke(self.id, &op, Some(root)) else {
                return false;
            };
            done = self.call(&op).await;
            self.rec.complete(id, self.id, &op, &done, Some(root));
        }
        if matches!(done, Completion::Ok(_)) && op.key().is_some() && self.rng.random_bool(0.08) {
            // A duplicate delivery: it must answer the same and change nothing.
            if let Some(id) = self.rec.invoke(self.id, &op, Some(root)) {
                let again = self.call(&op).await;
                self.rec.complete(id, self.id, &op, &again, Some(root));
            }
        }
        self.learn(&op, &done);
        true
    }

    fn learn(&mut self, op: &Op, done: &Completion) {
        match (op, done) {
            (Op::Hold { seat, .. }, Completion::Ok(Value::Hold { hold_id, .. })) => {
                self.have = Have::Hold {
                    id: hold_id.clone(),
                    seat: Some(seat.clone()),
                }
            }
            (Op::GaHold { .. }, Completion::Ok(Value::Hold { hold_id, .. })) => {
                self.have = Have::Hold {
                    id: hold_id.clone(),
                    seat: None,
                }
            }
            (Op::Confirm { seat, .. }, Completion::Ok(Value::Booking { booking_id })) => {
                self.bookings.push((booking_id.clone(), seat.clone()));
            }
            _ => {}
        }
    }

    async fn call(&self, op: &Op) -> Completion {
        match op {
            Op::Hold { seat, key } => {
                let body = api::CreateHold {
                    performance_id: self.performance.clone(),
                    seats: Some(vec![seat.clone()]),
                    section: None,
                    quantity: None,
                    category: None,
                };
                if let Some(done) = self.pipelined_hold(body.clone(), key).await {
                    return done;
                }
                hold_value(
                    self.buyer
                        .send_keyed(Method::POST, "/v1/holds", Some(&body), Some(key.clone()))
                        .await,
                )
            }
            Op::GaHold { quantity, key } => {
                let body = api::CreateHold {
                    performance_id: self.performance.clone(),
                    seats: None,
                    section: Some(GA_SECTION.into()),
                    quantity: Some(*quantity),
                    category: None,
                };
                if let Some(done) = self.pipelined_hold(body.clone(), key).await {
                    return done;
                }
                hold_value(
                    self.buyer
                        .send_keyed(Method::POST, "/v1/holds", Some(&body), Some(key.clone()))
                        .await,
                )
            }
            Op::Release { hold, key, .. } => {
                let r = self
                    .buyer
                    .send_keyed::<(), api::Hold>(
                        Method::DELETE,
                        &format!("/v1/holds/{hold}"),
                        None,
                        Some(key.clone()),
                    )
                    .await;
                outcome(r, |_| Value::Released)
            }
            Op::Confirm { hold, key, .. } => {
                let body = api::ConfirmHold {
                    payment_ref: format!("pay-{key}"),
                };
                if let Some((pipe, _, service)) = &self.pipe {
                    let req = client::grpc::pb::ConfirmHoldRequest {
                        hold_id: hold.clone(),
                        payment_ref: body.payment_ref,
                        request_id: key.clone(),
                    };
                    return outcome(pipe.confirm_hold(service, req).await, |b| Value::Booking {
                        booking_id: b.booking_id,
                    });
                }
                let r = self
                    .service
                    .send_keyed::<_, api::Booking>(
                        Method::POST,
                        &format!("/v1/holds/{hold}/confirm"),
                        Some(&body),
                        Some(key.clone()),
                    )
                    .await;
                outcome(r, |b| Value::Booking {
                    booking_id: b.booking_id,
                })
            }
            Op::Refund { booking, key, .. } => {
                // A refund without a refund_ref gets a random one from the node, so its
                // retries with the same idempotency key are answered idempotency_conflict
                // (found by this harness; `--refund-ref-from-node` reproduces it).
                let body = api::RefundRequest {
                    tickets: Vec::new(),
                    refund_ref: (!self.refund_ref_from_node).then(|| format!("refund-{key}")),
                };
                let r = self
                    .service
                    .send_keyed::<_, api::Refunded>(
                        Method::POST,
                        &format!("/v1/bookings/{booking}/refund"),
                        Some(&body),
                        Some(key.clone()),
                    )
                    .await;
                outcome(r, |_| Value::Refunded)
            }
            Op::ReadSeats { node, stale } => {
                let c = self.reader(*node, *stale);
                outcome(c.seats(&self.performance, Some(HOT_SECTION)).await, |m| {
                    Value::Seats {
                        seats: m
                            .seats
                            .into_iter()
                            .map(|s| (s.seat, s.state))
                            .collect::<BTreeMap<_, _>>(),
                    }
                })
            }
            Op::ReadGa { node, stale } => {
                let c = self.reader(*node, *stale);
                let r = c.performance(&self.performance).await;
                match r {
                    Ok(p) => match p.sections.iter().find(|s| s.section == GA_SECTION) {
                        Some(s) => Completion::Ok(Value::Ga {
                            capacity: s.capacity,
                            available: s.available,
                            held: s.held,
                            sold: s.sold,
                        }),
                        None => Completion::Fail("no_ga_section".into()),
                    },
                    Err(e) => classify(e),
                }
            }
            // The waiting room's operations are the room clients' (room.rs).
            _ => Completion::Info("not a seat-workload operation".into()),
        }
    }

    fn reader(&self, slot: u64, stale: bool) -> &Client {
        let r = self
            .readers
            .iter()
            .find(|r| r.0 as u64 == slot)
            .unwrap_or(&self.readers[0]);
        if stale { &r.2 } else { &r.1 }
    }
}

fn hold_value(r: client::Result<api::Hold>) -> Completion {
    outcome(r, |h| Value::Hold {
        hold_id: h.hold_id,
        expires_at_ms: h.expires_at_ms,
        quantity: h.quantity,
    })
}

fn outcome<T>(r: client::Result<T>, f: impl FnOnce(T) -> Value) -> Completion {
    match r {
        Ok(v) => Completion::Ok(f(v)),
        Err(e) => classify(e),
    }
}

/// A 4xx is the cluster's definite answer; anything else leaves the outcome unknown.
pub fn classify(e: client::Error) -> Completion {
    match e.problem() {
        Some(p) if p.status < 500 => Completion::Fail(p.code.clone()),
        _ => Completion::Info(e.to_string().chars().take(200).collect()),
    }
}
