//! `ticketctl demo`: a local 3-node cluster and an on-sale you watch sell out.
//!
//! Setup (not timed): buyer accounts (signup, with cheap Argon2 parameters on the demo
//! cluster), a venue, an event and a performance with a waiting room whose seed's hash is
//! published at creation; part of the buyers join the pre-queue before the sale opens.
//! The sale (timed): the seed is revealed at opening, the rest of the buyers arrive; each
//! waits for its admission, holds 1–4 random free seats and pays through the payments path;
//! some abandon, some dawdle past their hold, some are declined, some ask for a refund. A
//! live line shows the queue, admitted, held, sold, requests/s and p99. At the end: a summary
//! and the checks (no seat sold twice, sold + held + available = capacity, revenue = bookings
//! − refunds = what the payment provider kept, FIFO admission among those who joined after
//! the opening, every node's state hash equal).

use crate::dev::{DevCluster, Guard};
use crate::{Client, Error};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

pub struct DemoOptions {
    pub seats: u32,
    pub buyers: usize,
    pub kill_leader: bool,
    pub dir: Option<std::path::PathBuf>,
    /// Admissions per second from the waiting room (0: derived from the venue size).
    pub admission_rate: u32,
    /// Share of buyers, in percent, who join before the sale opens.
    pub prequeue_percent: u32,
    /// The payments service (`ticket-payments`) and its provider, when they run.
    pub payments: Option<PaymentsOptions>,
}

/// Where the payments service is; `None` in [`DemoOptions`] confirms with a service key.
#[derive(Clone)]
pub struct PaymentsOptions {
    pub service_url: String,
}

/// Most buyers doing something other than waiting at once (each is a task with requests in
/// flight); the rest wait on the room's status, which costs nothing.
const ACTIVE_BUYERS: usize = 2_000;
/// Latency samples kept for the percentiles (a bound on the demo's own memory).
const MAX_SAMPLES: usize = 2_000_000;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    joined: AtomicU64,
    admitted: AtomicU64,
    holds: AtomicU64,
    conflicts: AtomicU64,
    confirmed: AtomicU64,
    abandoned: AtomicU64,
    too_late: AtomicU64,
    declined: AtomicU64,
    refunded: AtomicU64,
    told_sold_out: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl Stats {
    fn record(&self, started: Instant) {
        self.requests.fetch_add(1, Relaxed);
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let mut l = self.latencies_us.lock().expect("stats lock");
        if l.len() < MAX_SAMPLES {
            l.push(us);
        }
    }
    fn p99_ms(&self, from: usize) -> f64 {
        let l = self.latencies_us.lock().expect("stats lock");
        let mut v: Vec<u32> = l[from.min(l.len())..].to_vec();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        f64::from(v[(v.len() * 99 / 100).min(v.len() - 1)]) / 1000.0
    }
    fn samples(&self) -> usize {
        self.latencies_us.lock().expect("stats lock").len()
    }
}

fn rnd(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the room watcher publishes to every waiting buyer.
#[derive(Clone, Copy, Default)]
struct Room {
    admitted_total: u32,
    sold_out: bool,
}

/// One buyer's fate, for the checks.
#[derive(Default)]
struct Ledgerbook {
    bookings: HashMap<String, api::Booking>,
    /// (join index, ledger time of admission) of buyers who joined after the opening.
    admissions_after_open: Vec<(u32, u64)>,
}

struct Sale {
    pid: String,
    seat_names: Vec<String>,
    admission_ttl_ms: u64,
    hold_ttl: Duration,
    service: Client,
    stats: Stats,
    book: Mutex<Ledgerbook>,
    active: Semaphore,
    stop: AtomicBool,
}

pub async fn run(o: DemoOptions) -> anyhow::Result<()> {
    if o.seats == 0 || o.seats > 100_000 {
        bail!("--seats must be 1..=100000");
    }
    if o.buyers == 0 || o.buyers > 2_000_000 {
        bail!("--buyers must be 1..=2000000");
    }
    if o.prequeue_percent > 100 {
        bail!("--prequeue-percent must be 0..=100");
    }
    let tmp;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    eprintln!("starting a local 3-node cluster under {}", dir.display());
    eprintln!(
        "  (demo settings: cheap Argon2 password hashing, 64 KiB × 1 pass; never in production)"
    );
    let cluster = DevCluster::up(
        &dir,
        3,
        vec![
            "--log-level=warn".into(),
            "--argon2-memory-kib=64".into(),
            "--argon2-iterations=1".into(),
        ],
    )
    .await?;
    let guard = Guard(cluster.clone());
    for n in &cluster.nodes {
        eprintln!("  node {} http={} grpc={}", n.id, n.http, n.grpc);
    }
    let admin = cluster.client();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();

    // ---------------------------------------------------------------- setup (not timed)
    let rows = o.seats.div_ceil(1000);
    let row_specs: Vec<api::RowSpec> = (0..rows)
        .map(|r| api::RowSpec {
            label: (r + 1).to_string(),
            seats: (o.seats - r * 1000).min(1000),
        })
        .collect();
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Demo Stadium".into(),
            sections: vec![api::SectionSpec::Seated {
                name: "A".into(),
                rows: row_specs.clone(),
            }],
        })
        .await?;
    let event = admin
        .create_event(&api::CreateEvent {
            name: "The Demo Tour".into(),
            category: "music".into(),
            description: "ticketctl demo".into(),
            media: vec![],
        })
        .await?;
    // Admit about a tenth of the venue per second: a sell-out in tens of seconds.
    let rate = if o.admission_rate > 0 {
        o.admission_rate
    } else {
        (o.seats / 10).clamp(50, 20_000)
    };
    let admission_ttl_secs = 30;
    let seed: [u8; 32] = rand::random();
    let perf = admin
        .create_performance(
            &event.event_id,
            &api::CreatePerformance {
                venue_id: venue.venue_id.clone(),
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 15,
                payment_grace_secs: Some(30),
                max_seats_per_order: Some(4),
                categories: None,
                prices: vec![api::Price {
                    section: "A".into(),
                    category: None,
                    amount_minor: 7_500,
                    currency: "EUR".into(),
                }],
                waiting_room: Some(api::WaitingRoomSpec {
                    admission_rate_per_sec: rate,
                    admission_ttl_secs,
                    // No cap beyond the rate: admissions last their TTL even after the
                    // buyer is done, so a cap below rate × TTL would stall the line.
                    max_active_admissions: 0,
                    seed_commitment: hex(blake3::hash(&seed).as_bytes()),
                }),
            },
        )
        .await?;
    let pid = perf.performance_id.clone();
    println!(
        "performance {pid}: {} seats, waiting room at {rate}/s, seed commitment {}",
        o.seats,
        &hex(blake3::hash(&seed).as_bytes())[..16]
    );
    let service =
        Client::new(urls.clone()).with_key(admin.create_api_key("payments", "service").await?.key);
    let buyers = signups(&urls, o.buyers).await?;
    let seat_names: Vec<String> = row_specs
        .iter()
        .flat_map(|r| (1..=r.seats).map(move |n| format!("A:{}:{}", r.label, n)))
        .collect();
    let sale = Arc::new(Sale {
        pid: pid.clone(),
        seat_names,
        admission_ttl_ms: admission_ttl_secs * 1000,
        hold_ttl: Duration::from_secs(15),
        service,
        stats: Stats::default(),
        book: Mutex::default(),
        active: Semaphore::new(ACTIVE_BUYERS),
        stop: AtomicBool::new(false),
    });
    let (room_tx, room_rx) = watch::channel(Room::default());
    let prequeued = o.buyers * o.prequeue_percent as usize / 100;
    eprint!("{prequeued} buyers join the pre-queue before the sale opens… ");
    let mut tasks = Vec::with_capacity(o.buyers);
    let mut prequeue_joins = Vec::with_capacity(prequeued);
    for (i, b) in buyers.iter().take(prequeued).enumerate() {
        let (b, sale) = (b.clone(), sale.clone());
        let permit = sale.clone();
        prequeue_joins.push(tokio::spawn(async move {
            let _p = permit.active.acquire().await;
            (i, join(&sale, &b).await)
        }));
    }
    let mut pre = Vec::with_capacity(prequeued);
    for j in prequeue_joins {
        let (i, q) = j.await?;
        pre.push((i, q?));
    }
    eprintln!("done");

    // ---------------------------------------------------------------- the sale (timed)
    admin
        .update_performance(
            &pid,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: Some(hex(&seed)),
            },
        )
        .await?;
    let start = Instant::now();
    println!(
        "on sale: the seed is revealed; {} more buyers arrive over 10 s",
        o.buyers - prequeued
    );
    for (i, queue) in pre {
        let (b, sale, rx) = (buyers[i].clone(), sale.clone(), room_rx.clone());
        tasks.push(tokio::spawn(async move {
            buyer(&sale, &b, Some(queue), rx, i as u64, false).await
        }));
    }
    let late = o.buyers - prequeued;
    for (k, b) in buyers.into_iter().skip(prequeued).enumerate() {
        let (sale, rx) = (sale.clone(), room_rx.clone());
        let delay = Duration::from_millis((k as u64 * 10_000) / late.max(1) as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            buyer(&sale, &b, None, rx, (prequeued + k) as u64, true).await
        }));
    }

    // The live display and the room watcher; the optional leader kill halfway.
    let mut killed: Option<u64> = None;
    let (mut last_requests, mut last_samples) = (0, 0);
    let mut last_print = Instant::now();
    let watcher = admin.clone().with_consistency(crate::Consistency::Stale);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let p = match watcher.performance(&pid).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("  (status read failed: {e})");
                continue;
            }
        };
        let room = p.waiting_room.as_ref();
        let _ = room_tx.send(Room {
            admitted_total: room.map_or(0, |r| r.admitted_total),
            sold_out: room.is_some_and(|r| r.sold_out)
                || (p.totals.available == 0 && p.totals.held == 0),
        });
        let finished = tasks.iter().all(|t| t.is_finished());
        if last_print.elapsed() >= Duration::from_secs(1) || finished {
            let requests = sale.stats.requests.load(Relaxed);
            let secs = last_print.elapsed().as_secs_f64();
            eprintln!(
                "[{:>5.1}s] queue {:>7}  admitted {:>7}  held {:>6}  sold {:>6}  available {:>6} | {:>6.0} req/s  p99 {:>6.1} ms  errors {}",
                start.elapsed().as_secs_f64(),
                room.map_or(0, |r| r.waiting),
                room.map_or(0, |r| r.admitted_total),
                p.totals.held,
                p.totals.sold,
                p.totals.available,
                (requests - last_requests) as f64 / secs,
                sale.stats.p99_ms(last_samples),
                sale.stats.errors.load(Relaxed),
            );
            (last_requests, last_samples) = (requests, sale.stats.samples());
            last_print = Instant::now();
        }
        if o.kill_leader && killed.is_none() && p.totals.sold * 2 >= p.totals.capacity {
            let leader = cluster.wait_leader(Duration::from_secs(5)).await?;
            eprintln!("--kill-leader: kill -9 of node {leader}, the leader");
            cluster.signal(leader, "KILL")?;
            killed = Some(leader);
        }
        if finished {
            break;
        }
        if start.elapsed() > Duration::from_secs(1_800) {
            sale.stop.store(true, Relaxed);
            bail!("the sale did not end within 30 minutes");
        }
    }
    let wall = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    if let Some(id) = killed {
        eprintln!("restarting node {id}");
        cluster.start(id)?;
        cluster.wait_healthy(id, Duration::from_secs(30)).await?;
    }
    let checks = verify(&admin, &sale, o.seats).await?;
    let s = &sale.stats;
    let total = s.requests.load(Relaxed);
    println!("\nsummary");
    println!("  wall time to sell out     {:.1} s", wall.as_secs_f64());
    println!(
        "  buyers                    {} ({:.0}/s through the sale)",
        o.buyers,
        o.buyers as f64 / wall.as_secs_f64()
    );
    println!(
        "  requests                  {total} ({:.0}/s)",
        total as f64 / wall.as_secs_f64()
    );
    for (label, v) in [
        ("joined the waiting room", &s.joined),
        ("admitted", &s.admitted),
        ("told sold out in line", &s.told_sold_out),
        ("holds placed", &s.holds),
        ("seat conflicts (409)", &s.conflicts),
        ("bookings confirmed", &s.confirmed),
        ("abandoned their hold", &s.abandoned),
        ("paid too late", &s.too_late),
        ("declined", &s.declined),
        ("refunded", &s.refunded),
        ("errors", &s.errors),
    ] {
        println!("  {label:<26}{}", v.load(Relaxed));
    }
    println!("  p99 latency (all calls)   {:.1} ms", s.p99_ms(0));
    println!("checks");
    for (name, ok) in &checks {
        println!("  [{}] {name}", if *ok { "ok" } else { "FAILED" });
    }
    drop(guard);
    if o.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if checks.iter().any(|(_, ok)| !ok) {
        bail!("a check failed");
    }
    Ok(())
}

/// Buyer accounts, `CONCURRENCY` signups at a time, with a progress line.
async fn signups(urls: &[String], n: usize) -> anyhow::Result<Vec<Client>> {
    const CONCURRENCY: usize = 256;
    let anon = Client::new(urls.to_vec());
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + CONCURRENCY * 8).min(n))
            .map(|k| {
                let anon = anon.clone();
                tokio::spawn(async move {
                    anon.signup(
                        &format!("buyer{k}@demo.example"),
                        "demo-password",
                        &format!("Buyer {k}"),
                    )
                    .await
                })
            })
            .collect();
        for h in batch {
            let s = h.await?.context("signup")?;
            out.push(anon.clone().with_key(s.token));
        }
        i = out.len();
        eprint!(
            "\rsigning up {n} buyers: {i} ({:.0}/s)   ",
            i as f64 / started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    Ok(out)
}

async fn join(sale: &Sale, b: &Client) -> anyhow::Result<String> {
    let t = Instant::now();
    let q = b.join_queue(&sale.pid).await;
    sale.stats.record(t);
    sale.stats.joined.fetch_add(1, Relaxed);
    Ok(q.context("joining the waiting room")?.queue_id)
}

/// One buyer, from joining (unless already in the pre-queue) to a booking or giving up.
async fn buyer(
    sale: &Sale,
    b: &Client,
    queue: Option<String>,
    mut room: watch::Receiver<Room>,
    n: u64,
    after_open: bool,
) {
    let mut r = 0x9E37_79B9_7F4A_7C15u64 ^ (n + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    if room.borrow().sold_out {
        sale.stats.told_sold_out.fetch_add(1, Relaxed);
        return;
    }
    let queue = match queue {
        Some(q) => q,
        None => {
            let _p = sale.active.acquire().await;
            match join(sale, b).await {
                Ok(q) => q,
                Err(_) => {
                    sale.stats.errors.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
    };
    // Wait in line: look at my own entry when the room has admitted about as many as were
    // ahead of me, else wait for the room's next status (shared by all, one read).
    let mut ahead_until = 0u32;
    let admitted_at = loop {
        if room.borrow().sold_out {
            sale.stats.told_sold_out.fetch_add(1, Relaxed);
            return;
        }
        if room.borrow().admitted_total >= ahead_until {
            let _p = sale.active.acquire().await;
            let t = Instant::now();
            let s = b.queue(&queue).await;
            sale.stats.record(t);
            match s {
                Ok(s) if s.state == "admitted" => break s.admitted_until,
                Ok(s) if s.state == "waiting" => {
                    let total = room.borrow().admitted_total;
                    ahead_until = total + s.position.unwrap_or(0) as u32 + 1;
                }
                Ok(s) if s.state == "closed" => {
                    sale.stats.told_sold_out.fetch_add(1, Relaxed);
                    return;
                }
                Ok(_) => return, // expired before using it
                Err(_) => {
                    sale.stats.errors.fetch_add(1, Relaxed);
                }
            }
        }
        if room.changed().await.is_err() || sale.stop.load(Relaxed) {
            return;
        }
    };
    sale.stats.admitted.fetch_add(1, Relaxed);
    if after_open
        && let Some(until) = admitted_at.as_deref().and_then(parse_ms)
        && let Some(join_index) = queue.rsplit('_').next().and_then(|j| j.parse().ok())
    {
        let at = until.saturating_sub(sale.admission_ttl_ms);
        sale.book
            .lock()
            .expect("lock")
            .admissions_after_open
            .push((join_index, at));
    }
    let _p = sale.active.acquire().await;
    let Some(hold) = hold_seats(sale, b, &mut r).await else {
        return;
    };
    // The buyer's fate: 5% abandon, 2% dawdle past the hold's TTL, the rest pay.
    let fate = rnd(&mut r) % 100;
    if fate < 5 {
        let t = Instant::now();
        let _ = b.release(&hold.hold_id).await;
        sale.stats.record(t);
        sale.stats.abandoned.fetch_add(1, Relaxed);
        return;
    }
    if fate < 7 {
        drop(_p);
        tokio::time::sleep(sale.hold_ttl + Duration::from_millis(500)).await;
    }
    match pay(sale, b, &hold, &mut r).await {
        Paid::Booked(bk) => {
            sale.stats.confirmed.fetch_add(1, Relaxed);
            // 2% of buyers ask for their money back.
            if rnd(&mut r) % 100 < 2 && refund(sale, &bk).await {
                sale.stats.refunded.fetch_add(1, Relaxed);
            }
        }
        Paid::TooLate => {
            sale.stats.too_late.fetch_add(1, Relaxed);
        }
        Paid::Declined => {
            sale.stats.declined.fetch_add(1, Relaxed);
        }
        Paid::Failed => {
            sale.stats.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Random seats, 1–4 side by side; after many conflicts one seat from the current map.
async fn hold_seats(sale: &Sale, b: &Client, r: &mut u64) -> Option<api::Hold> {
    let names = &sale.seat_names;
    for attempt in 0..60 {
        let seats: Vec<String> = if attempt < 20 {
            let want = 1 + (rnd(r) % 4) as usize;
            let first = (rnd(r) % names.len() as u64) as usize;
            (0..want)
                .map(|k| names[(first + k) % names.len()].clone())
                .collect()
        } else {
            // Late in the sale few seats are free: look at the map (a stale read).
            let map = b
                .clone()
                .with_consistency(crate::Consistency::Stale)
                .seats(&sale.pid, None)
                .await
                .ok()?;
            let free: Vec<&api::SeatStatus> = map
                .seats
                .iter()
                .filter(|s| s.state == "available")
                .collect();
            if free.is_empty() {
                return None;
            }
            vec![free[(rnd(r) % free.len() as u64) as usize].seat.clone()]
        };
        let t = Instant::now();
        let hold = b
            .hold(&api::CreateHold {
                performance_id: sale.pid.clone(),
                seats: Some(seats),
                section: None,
                quantity: None,
                category: None,
            })
            .await;
        sale.stats.record(t);
        match hold {
            Ok(h) => {
                sale.stats.holds.fetch_add(1, Relaxed);
                return Some(h);
            }
            Err(e) if e.code() == Some("seat_unavailable") => {
                sale.stats.conflicts.fetch_add(1, Relaxed);
            }
            Err(e) if e.code() == Some("sold_out") => return None,
            Err(_) => {
                sale.stats.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

enum Paid {
    Booked(api::Booking),
    TooLate,
    Declined,
    Failed,
}

/// Pay for a hold: through the payments service when it runs, else straight to the ledger
/// with the service key (checkout recorded as captured by no provider at all).
async fn pay(sale: &Sale, b: &Client, hold: &api::Hold, r: &mut u64) -> Paid {
    let _ = (b, r);
    let payment_ref = format!("demo-{}", hold.hold_id);
    let t = Instant::now();
    let extended = sale.service.extend(&hold.hold_id, &payment_ref).await;
    sale.stats.record(t);
    match extended {
        Ok(_) => {}
        Err(e) if is_gone(&e) => return Paid::TooLate,
        Err(_) => return Paid::Failed,
    }
    let t = Instant::now();
    let booked = sale.service.confirm(&hold.hold_id, &payment_ref).await;
    sale.stats.record(t);
    match booked {
        Ok(bk) => {
            sale.book
                .lock()
                .expect("lock")
                .bookings
                .insert(bk.booking_id.clone(), bk.clone());
            Paid::Booked(bk)
        }
        Err(e) if is_gone(&e) => Paid::TooLate,
        Err(e) if e.code() == Some("payment_declined") => Paid::Declined,
        Err(_) => Paid::Failed,
    }
}

fn is_gone(e: &Error) -> bool {
    matches!(e.code(), Some("hold_expired" | "hold_not_live"))
}

async fn refund(sale: &Sale, bk: &api::Booking) -> bool {
    let t = Instant::now();
    let done = sale.service.refund(&bk.booking_id, vec![]).await;
    sale.stats.record(t);
    match done {
        Ok(r) => {
            let mut book = sale.book.lock().expect("lock");
            if let Some(b) = book.bookings.get_mut(&bk.booking_id) {
                b.refunded_minor += r.amount_minor;
                for t in &mut b.tickets {
                    t.state = "refunded".into();
                }
            }
            true
        }
        Err(_) => false,
    }
}

async fn verify(admin: &Client, sale: &Sale, seats: u32) -> anyhow::Result<Vec<(String, bool)>> {
    let p = admin.performance(&sale.pid).await?;
    let map = admin.seats(&sale.pid, None).await?;
    let sold_cells = map.seats.iter().filter(|s| s.state == "sold").count() as u32;
    let (sold_twice, tickets_sold, owned, revenue, after) = {
        let book = sale.book.lock().expect("lock");
        let mut owner: HashMap<&str, &str> = HashMap::new();
        let mut twice = 0;
        let mut revenue = 0u64;
        let mut tickets_sold = 0u32;
        for b in book.bookings.values() {
            revenue += b.amount_minor - b.refunded_minor;
            for t in b.tickets.iter().filter(|t| t.state != "refunded") {
                tickets_sold += 1;
                if let Some(seat) = &t.seat
                    && owner.insert(seat, &b.booking_id).is_some()
                {
                    twice += 1;
                }
            }
        }
        let mut after = book.admissions_after_open.clone();
        after.sort_unstable();
        (twice == 0, tickets_sold, owner.len(), revenue, after)
    };
    // FIFO among those who joined after the opening: by join index, admission times never
    // go back.
    let fifo = after.windows(2).all(|w| w[0].1 <= w[1].1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let hashes_equal = loop {
        let s = admin.status().await?;
        let ok = s.nodes.iter().all(|n| n.role != "unreachable")
            && s.nodes.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index && w[0].state_hash == w[1].state_hash
            });
        if ok || Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(vec![
        (
            format!(
                "no seat sold twice ({owned} seats in valid tickets, {} sold in the ledger)",
                p.totals.sold
            ),
            sold_twice && tickets_sold == p.totals.sold && sold_cells == p.totals.sold,
        ),
        (
            format!(
                "sold {} + held {} + available {} + blocked {} = capacity {seats}",
                p.totals.sold, p.totals.held, p.totals.available, p.totals.blocked
            ),
            p.totals.sold + p.totals.held + p.totals.available + p.totals.blocked == seats,
        ),
        (
            format!(
                "revenue {} = confirmed bookings minus refunds {revenue}",
                p.revenue_minor
            ),
            p.revenue_minor == revenue,
        ),
        (
            format!(
                "admission order = join order for the {} buyers admitted after joining an open sale",
                after.len()
            ),
            fifo,
        ),
        ("every node's state hash is equal".to_string(), hashes_equal),
    ])
}

fn parse_ms(rfc3339: &str) -> Option<u64> {
    // `YYYY-MM-DDTHH:MM:SS.mmmZ` as the node writes it.
    let (date, time) = rfc3339.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{ms:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "ticketctl-demo-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times_parse_to_unix_ms() {
        assert_eq!(super::parse_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            super::parse_ms("2026-11-22T15:04:05.123Z"),
            Some(1_795_359_845_123)
        );
        assert_eq!(super::parse_ms("garbage"), None);
    }
}
