//! The waiting-room workload: a second performance with a waiting room (DESIGN.md §3). Buyers
//! join its queue (some before the sale opens: the seeded pre-queue), poll their entry, hold
//! and release one GA place once admitted, and also try to hold without an admission, or after
//! theirs ran out (the ledger must refuse both). One buyer per API key, a fresh key per turn
//! (one entry per buyer per performance); some buyers try to join twice. At the end the
//! harness reads the whole change feed back (gRPC `Watch`) for the queue checker.

use crate::cluster::Cluster;
use crate::history::{Completion, Op, Recorder, Value};
use crate::workload::{ATTEMPT_TIMEOUT, CALL_DEADLINE, RETRIES_MAX, classify};
use anyhow::Context;
use client::{Client, Consistency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ROOM_SECTION: &str = "W";
/// Places in the room performance's GA section: far more than are ever held at once, so
/// admission never pauses for stock.
const ROOM_CAPACITY: u32 = 10_000;
/// Admissions per second: below the rate buyers arrive, so a queue forms.
pub const ADMISSION_RATE: u32 = 2;
/// The ledger's minimum admission TTL.
pub const ADMISSION_TTL_SECS: u64 = 10;
/// A buyer who waited this long leaves (and a new one takes its client's turn).
const PATIENCE: Duration = Duration::from_secs(45);

#[derive(Clone)]
pub struct RoomCatalog {
    pub performance: String,
    pub seed_hex: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A venue with one big GA section and a performance with a waiting room, left in draft (so
/// joins before [`Op::OpenRoom`] form the pre-queue). The seed comes from the run's seed.
pub async fn setup(cluster: &Cluster, seed: u64, ttl_secs: u64) -> anyhow::Result<RoomCatalog> {
    let admin = cluster.admin().with_deadline(Duration::from_secs(20));
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Jepsen Room".into(),
            sections: vec![api::SectionSpec::GeneralAdmission {
                name: ROOM_SECTION.into(),
                capacity: ROOM_CAPACITY,
            }],
        })
        .await
        .context("creating the waiting-room venue")?;
    let event = admin
        .create_event(&api::CreateEvent {
            name: "Jepsen queue".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        })
        .await
        .context("creating the waiting-room event")?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x726f_6f6d);
    let room_seed: [u8; 32] = rng.random();
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
                prices: vec![api::Price {
                    section: ROOM_SECTION.into(),
                    category: None,
                    amount_minor: 500,
                    currency: "EUR".into(),
                }],
                waiting_room: Some(api::WaitingRoomSpec {
                    admission_rate_per_sec: ADMISSION_RATE,
                    admission_ttl_secs: ADMISSION_TTL_SECS,
                    max_active_admissions: 0,
                    seed_commitment: blake3::hash(&room_seed).to_hex().to_string(),
                }),
            },
        )
        .await
        .context("creating the waiting-room performance")?;
    Ok(RoomCatalog {
        performance: perf.performance_id,
        seed_hex: hex(&room_seed),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (the node always writes UTC with milliseconds) → unix ms.
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if s.as_bytes().get(19) == Some(&b'.') {
        num(20..23)?
    } else {
        0
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms;
    u64::try_from(t).ok()
}

fn mk(cluster: &Cluster, key: &str) -> Client {
    Client::new(cluster.slots().iter().map(|s| s.http.clone()))
        .with_key(key.to_string())
        .with_deadline(CALL_DEADLINE)
        .with_attempt_timeout(ATTEMPT_TIMEOUT)
}

/// One client of the room: buyers one after another.
pub struct RoomProcess {
    pub id: u32,
    rng: StdRng,
    cluster: Arc<Cluster>,
    cat: RoomCatalog,
    rec: Arc<Recorder>,
    next_buyer: Arc<AtomicU32>,
    /// The clock nemeses' offsets: a buyer waits this much longer past its admission's end.
    clock_slack: Duration,
    /// The buyer now served and its clients (all nodes; one node, linearizable and stale).
    buyer: u32,
    client: Option<Client>,
    readers: Vec<(u64, Client, Client)>,
}

impl RoomProcess {
    pub fn new(
        id: u32,
        seed: u64,
        cluster: Arc<Cluster>,
        cat: RoomCatalog,
        rec: Arc<Recorder>,
        next_buyer: Arc<AtomicU32>,
        clock_slack: Duration,
    ) -> RoomProcess {
        RoomProcess {
            id,
            rng: StdRng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x5175_6575),
            cluster,
            cat,
            rec,
            next_buyer,
            clock_slack,
            buyer: 0,
            client: None,
            readers: Vec::new(),
        }
    }

    fn key(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    /// A fresh buyer: an API key made by the operator (not part of the history).
    async fn new_buyer(&mut self, stop: &AtomicBool) -> bool {
        let n = self.next_buyer.fetch_add(1, Ordering::Relaxed);
        let admin = self.cluster.admin().with_deadline(Duration::from_secs(10));
        let start = Instant::now();
        let key = loop {
            if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(30) {
                return false;
            }
            match admin
                .create_api_key(&format!("jepsen-room-buyer-{n}"), "buyer")
                .await
            {
                Ok(k) => break k.key,
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        self.buyer = n;
        self.client = Some(mk(&self.cluster, &key));
        self.readers = self
            .cluster
            .slots()
            .iter()
            .map(|s| {
                let c = Client::new([s.http.clone()])
                    .with_key(key.clone())
                    .with_deadline(CALL_DEADLINE)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT);
                (
                    s.slot as u64,
                    c.clone(),
                    c.with_consistency(Consistency::Stale),
                )
            })
            .collect();
        true
    }

    /// Buyers until `stop` (the first ones join before the opening: the pre-queue).
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if !self.new_buyer(&stop).await {
                return;
            }
            if self.turn(&stop).await.is_none() {
                return;
            }
        }
    }

    /// One buyer's turn. `None` when the history is full.
    async fn turn(&mut self, stop: &AtomicBool) -> Option<()> {
        let buyer = self.buyer;
        let key = self.key();
        let (done, _) = self.perform(Op::Join { buyer, key }).await?;
        let queue = match done {
            Completion::Ok(Value::Queued { queue_id, .. }) => queue_id,
            // Refused (sold out, closed) or unknown after the retries: the next buyer.
            _ => return Some(()),
        };
        if self.rng.random_bool(0.15) {
            // A second entry for the same buyer: must be refused.
            let key = self.key();
            self.perform(Op::Join { buyer, key }).await?;
        }
        if self.rng.random_bool(0.3) {
            // At once, before any admission could be seen: refused unless it came meanwhile.
            let key = self.key();
            self.hold_and_release(key, false).await?;
        }
        let start = Instant::now();
        let until_ms = loop {
            if stop.load(Ordering::Relaxed) || start.elapsed() > PATIENCE {
                return Some(());
            }
            let wait = self.rng.random_range(150..400);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if self.rng.random_bool(0.15) {
                // Not admitted (as far as this buyer knows): a hold must be refused unless
                // the admission came meanwhile.
                let key = self.key();
                self.hold_and_release(key, false).await?;
                continue;
            }
            if self.rng.random_bool(0.1) {
                self.read_room().await?;
            }
            let node = self.readers[self.rng.random_range(0..self.readers.len())].0;
            let stale = self.rng.random_bool(0.2);
            let (done, _) = self
                .perform(Op::QueueRead {
                    buyer,
                    queue: queue.clone(),
                    node,
                    stale,
                })
                .await?;
            if let Completion::Ok(Value::QueueState {
                state,
                admitted_until_ms,
                ..
            }) = done
            {
                match state.as_str() {
                    "admitted" if !stale => break admitted_until_ms.unwrap_or(0),
                    "expired" | "closed" => return Some(()),
                    _ => {}
                }
            }
        };
        // Admitted: hold a place, release it; maybe once more.
        let key = self.key();
        self.hold_and_release(key, true).await?;
        if self.rng.random_bool(0.3) {
            let key = self.key();
            self.hold_and_release(key, true).await?;
        }
        if self.rng.random_bool(0.35) {
            // Wait until the admission has certainly run out, then try again: refused.
            let now = crate::wall_ms() as u64;
            let past = until_ms.saturating_sub(now) + 1500;
            let wait = Duration::from_millis(past) + self.clock_slack;
            let t0 = Instant::now();
            while t0.elapsed() < wait {
                if stop.load(Ordering::Relaxed) {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let key = self.key();
            self.hold_and_release(key, false).await?;
        }
        Some(())
    }

    async fn hold_and_release(&mut self, key: String, admitted: bool) -> Option<()> {
        let buyer = self.buyer;
        let (done, _) = self
            .perform(Op::WrHold {
                buyer,
                key,
                admitted,
            })
            .await?;
        if let Completion::Ok(Value::Hold { hold_id, .. }) = done {
            let think = self.rng.random_range(20..200);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let key = self.key();
            self.perform(Op::WrRelease {
                buyer,
                hold: hold_id,
                key,
            })
            .await?;
        }
        Some(())
    }

    async fn read_room(&mut self) -> Option<()> {
        let node = self.readers[self.rng.random_range(0..self.readers.len())].0;
        let stale = self.rng.random_bool(0.5);
        self.perform(Op::ReadRoom { node, stale }).await?;
        Some(())
    }

    /// Invoke, complete, retry an unknown outcome with the same key (as the seat workload).
    async fn perform(&mut self, op: Op) -> Option<(Completion, u64)> {
        let root = self.rec.invoke(self.id, &op, None)?;
        let mut done = self.call(&op).await;
        self.rec.complete(root, self.id, &op, &done, None);
        let mut tries = 0;
        while matches!(done, Completion::Info(_)) && op.key().is_some() && tries < RETRIES_MAX {
            tries += 1;
            let wait = self.rng.random_range(200..800);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let id = self.rec.invoke(self.id, &op, Some(root))?;
            done = self.call(&op).await;
            self.rec.complete(id, self.id, &op, &done, Some(root));
        }
        Some((done, root))
    }

    fn reader(&self, node: u64, stale: bool) -> &Client {
        let r = self
            .readers
            .iter()
            .find(|r| r.0 == node)
            .unwrap_or(&self.readers[0]);
        if stale { &r.2 } else { &r.1 }
    }

    async fn call(&self, op: &Op) -> Completion {
        let Some(buyer) = &self.client else {
            return Completion::Info("no buyer".into());
        };
        match op {
            Op::Join { key, .. } => {
                let r = buyer
                    .send_keyed::<(), api::QueueJoined>(
                        Method::POST,
                        &format!("/v1/performances/{}/queue", self.cat.performance),
                        None,
                        Some(key.clone()),
                    )
                    .await;
                match r {
                    Ok(q) => Completion::Ok(Value::Queued {
                        queue_id: q.queue_id,
                        position: q.position,
                    }),
                    Err(e) => classify(e),
                }
            }
            Op::QueueRead {
                queue, node, stale, ..
            } => match self.reader(*node, *stale).queue(queue).await {
                Ok(q) => Completion::Ok(Value::QueueState {
                    state: q.state,
                    position: q.position,
                    admitted_until_ms: q.admitted_until.as_deref().and_then(parse_rfc3339_utc),
                }),
                Err(e) => classify(e),
            },
            Op::WrHold { key, .. } => {
                let body = api::CreateHold {
                    performance_id: self.cat.performance.clone(),
                    seats: None,
                    section: Some(ROOM_SECTION.into()),
                    quantity: Some(1),
                    category: None,
                };
                match buyer
                    .send_keyed::<_, api::Hold>(
                        Method::POST,
                        "/v1/holds",
                        Some(&body),
                        Some(key.clone()),
                    )
                    .await
                {
                    Ok(h) => Completion::Ok(Value::Hold {
                        hold_id: h.hold_id,
                        expires_at_ms: h.expires_at_ms,
                        quantity: h.quantity,
                    }),
                    Err(e) => classify(e),
                }
            }
            Op::WrRelease { hold, key, .. } => {
                match buyer
                    .send_keyed::<(), api::Hold>(
                        Method::DELETE,
                        &format!("/v1/holds/{hold}"),
                        None,
                        Some(key.clone()),
                    )
                    .await
                {
                    Ok(_) => Completion::Ok(Value::Released),
                    Err(e) => classify(e),
                }
            }
            Op::ReadRoom { node, stale } => room_value(
                self.reader(*node, *stale)
                    .performance(&self.cat.performance)
                    .await,
            ),
            _ => Completion::Info("not a room operation".into()),
        }
    }
}

pub fn room_value(r: client::Result<api::Performance>) -> Completion {
    match r {
        Ok(p) => match p.waiting_room {
            Some(w) => Completion::Ok(Value::Room {
                joined: w.joined,
                admitted_total: w.admitted_total,
                waiting: w.waiting,
            }),
            None => Completion::Fail("no_waiting_room".into()),
        },
        Err(e) => classify(e),
    }
}

async fn join_call(buyer: &Client, path: &str, key: &str) -> Completion {
    match buyer
        .send_keyed::<(), api::QueueJoined>(Method::POST, path, None, Some(key.to_string()))
        .await
    {
        Ok(q) => Completion::Ok(Value::Queued {
            queue_id: q.queue_id,
            position: q.position,
        }),
        Err(e) => classify(e),
    }
}

async fn open_call(
    admin: &Client,
    path: &str,
    body: &api::UpdatePerformance,
    key: &str,
) -> Completion {
    match admin
        .send_keyed::<_, api::Performance>(Method::PATCH, path, Some(body), Some(key.to_string()))
        .await
    {
        Ok(_) => Completion::Ok(Value::Opened),
        Err(e) => classify(e),
    }
}

/// The opener: `prequeue` extra buyers join while the sale is still a draft (the seeded
/// pre-queue; they never come back, so their admissions run out unused), then at
/// `open_after` the sale is opened with the committed seed.
#[allow(clippy::too_many_arguments)]
pub async fn open_after(
    id: u32,
    cluster: Arc<Cluster>,
    cat: RoomCatalog,
    rec: Arc<Recorder>,
    open_after: Duration,
    start: Instant,
    seed: u64,
    prequeue: u32,
    next_buyer: Arc<AtomicU32>,
) {
    let admin = cluster
        .admin()
        .with_deadline(CALL_DEADLINE)
        .with_attempt_timeout(ATTEMPT_TIMEOUT);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f70_656e);
    for _ in 0..prequeue {
        if start.elapsed() >= open_after {
            break;
        }
        let n = next_buyer.fetch_add(1, Ordering::Relaxed);
        let Ok(k) = admin
            .create_api_key(&format!("jepsen-room-buyer-{n}"), "buyer")
            .await
        else {
            continue;
        };
        let buyer = mk(&cluster, &k.key);
        let key = format!("{:032x}", rng.random::<u128>());
        let op = Op::Join {
            buyer: n,
            key: key.clone(),
        };
        let path = format!("/v1/performances/{}/queue", cat.performance);
        let Some(root) = rec.invoke(id, &op, None) else {
            return;
        };
        let mut done = join_call(&buyer, &path, &key).await;
        rec.complete(root, id, &op, &done, None);
        let mut tries = 0;
        while matches!(done, Completion::Info(_)) && tries < RETRIES_MAX {
            tries += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let Some(again) = rec.invoke(id, &op, Some(root)) else {
                return;
            };
            done = join_call(&buyer, &path, &key).await;
            rec.complete(again, id, &op, &done, Some(root));
        }
    }
    if let Some(left) = open_after.checked_sub(start.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let key = format!("{:032x}", rng.random::<u128>());
    let op = Op::OpenRoom { key: key.clone() };
    let body = api::UpdatePerformance {
        status: "on_sale".into(),
        seed: Some(cat.seed_hex.clone()),
    };
    let path = format!("/v1/performances/{}", cat.performance);
    // Until a definite answer: the sale must open for the room to be exercised.
    let Some(root) = rec.invoke(id, &op, None) else {
        return;
    };
    let mut done = open_call(&admin, &path, &body, &key).await;
    rec.complete(root, id, &op, &done, None);
    let mut tries = 0;
    while matches!(done, Completion::Info(_)) && tries < 30 {
        tries += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(again) = rec.invoke(id, &op, Some(root)) else {
            return;
        };
        done = open_call(&admin, &path, &body, &key).await;
        rec.complete(again, id, &op, &done, Some(root));
    }
}

/// Every change of the room performance (and the joins, admissions and holds under it) from
/// the feed, read from index 0 through `upto` (the converged applied index).
pub async fn read_feed(
    cluster: &Cluster,
    performance: &str,
    upto: u64,
) -> Result<Vec<api::feed::FeedChange>, String> {
    let grpc = client::grpc::GrpcClient::try_new(cluster.slots().iter().map(|s| s.grpc.clone()))
        .map_err(|e| e.to_string())?
        .with_key(cluster.admin_key.clone())
        .with_deadline(Duration::from_secs(15));
    let mut w = grpc.watch(0);
    let mut kept = Vec::new();
    let prefix = format!(
        "q_{}_",
        performance.strip_prefix("p_").unwrap_or(performance)
    );
    let started = Instant::now();
    while w.next_index() <= upto {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the feed did not reach index {upto} within 120 s (at {})",
                w.next_index()
            ));
        }
        let ev = match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no feed event for 20 s at index {} (want {upto})",
                    w.next_index()
                ));
            }
        };
        for c in ev.changes {
            let mine = c.performance_id == performance || c.queue_id.starts_with(&prefix);
            if !mine {
                continue;
            }
            let some = |s: String| (!s.is_empty()).then_some(s);
            kept.push(api::feed::FeedChange {
                kind: c.r#type,
                performance_id: some(c.performance_id),
                hold_id: some(c.hold_id),
                queue_id: some(c.queue_id),
                buyer: some(c.buyer),
                count: Some(c.count),
                until_ms: (c.until_ms != 0).then_some(c.until_ms),
                seed: some(c.seed),
                prequeue: Some(c.prequeue),
                ..api::feed::FeedChange::default()
            });
        }
    }
    Ok(kept)
}
