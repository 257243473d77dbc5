//! `ticketctl demo`: a local 3-node cluster and an on-sale you watch sell out.
//!
//! Setup (not timed): buyer accounts (signup, with cheap Argon2 parameters on the demo
//! cluster), a venue, an event and a performance with a waiting room whose seed's hash is
//! published at creation; part of the buyers join the pre-queue before the sale opens.
//! The sale (timed): the seed is revealed at opening, the rest of the buyers arrive; each
//! waits for its admission, holds 1–4 seats side by side (mostly the best available in a
//! section, some picked on the map) and pays through the payments
//! service (`payments serve`, a real process and a client of the ledger) at the simulated
//! provider (`payments simulate`, its own HTTP server): most are captured and booked, some
//! are declined, some time out at the provider (cancelled, or booked if it had captured), some
//! pay by an asynchronous method whose capture lands after the hold expired (booked on the
//! same seats if they are still free, else refunded at once); some abandon, some dawdle past
//! their hold, some ask for a refund. A live line shows the queue, admitted, held, sold,
//! requests/s and p99. At the end: a summary and the checks (no seat sold twice; sold, held
//! and available add up to the capacity; revenue = bookings − refunds = what the provider
//! kept; every capture booked or refunded and every booking captured; FIFO admission among
//! those who joined after the opening; every node's state hash equal).

use crate::demo_payments::{self, Paid};
use crate::dev::{DevCluster, Guard};
use crate::{Client, Error};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot, watch};

pub struct DemoOptions {
    pub seats: u32,
    pub buyers: usize,
    pub kill_leader: bool,
    pub dir: Option<std::path::PathBuf>,
    /// Admissions per second from the waiting room (0: derived from the venue size).
    pub admission_rate: u32,
    /// Share of buyers, in percent, who join before the sale opens.
    pub prequeue_percent: u32,
    /// Where the report (`report.json`, `sales.svg`) goes.
    pub report_dir: std::path::PathBuf,
    /// Percent of ordinary card payments the simulated provider declines.
    pub decline_percent: u32,
    /// Percent of ordinary card payments the provider captures but answers too late for.
    pub timeout_percent: u32,
    /// A running cluster to use instead of starting one (`--url`), with an operator key.
    pub external: Option<(Vec<String>, String)>,
    /// How the buyers call the ledger (default HTTP; gRPC needs the demo's own cluster,
    /// as the demo does not know the gRPC addresses of one given by `--url`).
    pub protocol: Option<BuyerProtocol>,
}

/// The API the buyers' apps use for joining, looking at their turn, holding and releasing
/// (payments always go through the payments service's HTTP API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BuyerProtocol {
    /// The HTTP/JSON API, over the client's pool of HTTP/1.1 connections.
    Http,
    /// The gRPC API, every buyer's calls multiplexed on a few HTTP/2 connections per node.
    Grpc,
}

/// One point of the sale's time series (every 250 ms).
#[derive(Clone, Copy, serde::Serialize)]
struct Sample {
    t_ms: u64,
    sold: u32,
    held: u32,
    waiting: u32,
    admitted: u32,
    requests: u64,
}

/// Most buyers doing something other than waiting at once (each is a task with requests in
/// flight); the rest wait on the room's status, which costs nothing.
const ACTIVE_BUYERS: usize = 2_000;
/// Most joins in flight at once. Joins were most of the sale's requests: at 1,000 in flight
/// the 1M-buyer run joined 555,632 buyers and admitted 346,372 (235,714 admissions ran out
/// before their buyer's turn to shop); at 400 it joined 206,256 and sold out 48 s sooner; at
/// 700, 129.6 s against 400's 117.9 s, and 123 transport errors in the opening burst.
const JOINING_BUYERS: usize = 400;
/// Most looks at a queue entry in flight at once (apart from the buyers who act, so a
/// million waiting buyers never keep the admitted ones from their turn).
const POLLING_BUYERS: usize = 1_000;
/// HTTP/2 connections per node the gRPC buyers share (each carries at most 1,024 calls at
/// once, ticketd's stream bound).
const GRPC_CONNECTIONS: usize = 4;
/// Most requests the buyers have in flight at once (shopping, joining and polling).
const BUYER_REQUESTS_IN_FLIGHT: usize = ACTIVE_BUYERS + JOINING_BUYERS + POLLING_BUYERS;
/// The payment grace of the demo's performance: a checkout extends its hold to at least this.
const PAYMENT_GRACE_SECS: u64 = 10;
/// How long the payments service waits for the provider before cancelling the charge.
const PROVIDER_TIMEOUT_MS: u64 = 3_000;
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
    refunded_late: AtomicU64,
    pending: AtomicU64,
    checkouts: AtomicU64,
    refunded: AtomicU64,
    told_sold_out: AtomicU64,
    admission_expired: AtomicU64,
    /// Queue polls (stale reads from the buyer's home replica) that came before that replica
    /// applied the buyer's join: not an error, the buyer looks again at the room's next status.
    not_yet_replicated: AtomicU64,
    errors: AtomicU64,
    /// Errors by stable code (or HTTP status / transport), for the summary.
    error_codes: Mutex<std::collections::BTreeMap<String, u64>>,
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
    fn error(&self, e: &Error) {
        self.errors.fetch_add(1, Relaxed);
        let code = match (e.code(), e.status()) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("http {s}"),
            (None, None) => "transport".to_string(),
        };
        *self
            .error_codes
            .lock()
            .expect("stats lock")
            .entry(code)
            .or_default() += 1;
    }
    fn error_code(&self, code: &str) {
        self.errors.fetch_add(1, Relaxed);
        *self
            .error_codes
            .lock()
            .expect("stats lock")
            .entry(code.to_string())
            .or_default() += 1;
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

/// What the room watcher publishes to every buyer (one read for all, every 250 ms).
#[derive(Clone, Default)]
struct Room {
    admitted_total: u32,
    sold_out: bool,
    /// Seats available per section, in venue order.
    available: Arc<Vec<u32>>,
    /// The most seats side by side one order can get per section (the ledger's `together`),
    /// in venue order.
    together: Arc<Vec<u32>>,
}

/// Buyers waiting in line, by the admitted total their turn should come at. The room watcher
/// wakes only the buyers whose turn may have come, and all of them at the sell-out. (A watch
/// channel shared by every waiting buyer woke each of them at every status: at a million
/// buyers, four million wakeups a second, which made the demo's own process the bottleneck.)
#[derive(Default)]
struct Turns(Mutex<TurnsInner>);

#[derive(Default)]
struct TurnsInner {
    by_total: std::collections::BTreeMap<u32, Vec<oneshot::Sender<()>>>,
    /// After the sell-out (or a stop): nobody waits any more.
    closed: bool,
}

impl Turns {
    /// Resolves at the first status with at least `admitted_total` admitted (0: the next
    /// status), or at once with an error when the line is closed.
    fn wait(&self, admitted_total: u32) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut t = self.0.lock().expect("turns lock");
        if !t.closed {
            t.by_total.entry(admitted_total).or_default().push(tx);
        }
        rx
    }

    /// The room has admitted `total`: wake whoever waited for at most that.
    fn admitted(&self, total: u32) {
        let due = {
            let mut t = self.0.lock().expect("turns lock");
            let later = t.by_total.split_off(&total.saturating_add(1));
            std::mem::replace(&mut t.by_total, later)
        };
        for tx in due.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Nobody waits any more: wake everyone (their receivers see the sender dropped).
    fn close(&self) {
        let all = {
            let mut t = self.0.lock().expect("turns lock");
            t.closed = true;
            std::mem::take(&mut t.by_total)
        };
        drop(all);
    }
}

/// Counts a buyer out of the sale when its task ends, by return or by panic.
struct Leaving(Arc<AtomicUsize>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One buyer's fate, for the checks.
#[derive(Default)]
struct Ledgerbook {
    /// Every hold that went to payment: the checks read each back from the ledger, so a
    /// call whose answer was lost (a timeout that was applied) is counted as it happened.
    paid_holds: Vec<String>,
    /// (join index, ledger time of admission) of buyers who joined after the opening.
    admissions_after_open: Vec<(u32, u64)>,
}

struct Sale {
    pid: String,
    /// Section names and their rows' seat counts.
    sections: Vec<(String, Vec<u32>)>,
    admission_ttl_ms: u64,
    hold_ttl: Duration,
    payment_grace: Duration,
    service: Client,
    /// The payments service's URL and an HTTP client for it.
    payments: String,
    http: reqwest::Client,
    /// Percent of buyers whose asynchronous payment lands after the hold expired.
    slow_percent: u64,
    stats: Stats,
    book: Mutex<Ledgerbook>,
    /// Buyers with a request in flight while shopping (hold, pay).
    active: Semaphore,
    /// Buyers with a join in flight: a separate bound, so the stampede of arrivals does not
    /// queue in front of admitted buyers who are shopping. An arriving buyer becomes a task
    /// only once it holds one of these (the arrivals wait in line for it as plain data).
    joining: Arc<Semaphore>,
    /// Buyers looking at their queue entry.
    polling: Semaphore,
    /// Buyers waiting for their turn in line.
    turns: Turns,
    stop: AtomicBool,
    /// The gRPC clients (no key) the buyers' gRPC clients are cloned from, one connection
    /// each per node; empty when the buyers speak HTTP.
    grpc: Vec<crate::grpc::GrpcClient>,
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
    if o.decline_percent + o.timeout_percent > 50 {
        bail!("--decline-percent + --timeout-percent must be at most 50");
    }
    if o.kill_leader && o.external.is_some() {
        bail!("--kill-leader needs the demo's own cluster (not --url)");
    }
    let protocol = match (o.protocol, &o.external) {
        (Some(BuyerProtocol::Grpc), Some(_)) => bail!(
            "--protocol grpc needs the demo's own cluster (one given by --url is reached over HTTP)"
        ),
        (Some(p), _) => p,
        // Not gRPC by default: in the 1M-buyer run it made the buyers' calls cheaper for
        // the leader but not for the demo itself, and let nearly every buyer join
        // (921,036 against ~460,000), so the sale was no faster (bench/README.md).
        (None, _) => BuyerProtocol::Http,
    };
    let tmp;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let (cluster, guard, admin, urls) = match &o.external {
        None => {
            eprintln!("starting a local 3-node cluster under {}", dir.display());
            // A snapshot costs about the size of the state (~200 bytes per buyer, 200 MB at
            // a million), the log since the last one ~300 bytes per entry: snapshot about
            // as often as the log has grown to the state's size, not every 50k entries.
            let snapshot_every = (o.buyers as u64 / 2).max(50_000);
            eprintln!(
                "  (demo settings: cheap Argon2 password hashing, 64 KiB × 1 pass, never in production; a snapshot every {snapshot_every} entries)"
            );
            let cluster = DevCluster::up(
                &dir,
                3,
                vec![
                    "--log-level=warn".into(),
                    "--argon2-memory-kib=64".into(),
                    "--argon2-iterations=1".into(),
                    format!("--snapshot-every={snapshot_every}"),
                ],
            )
            .await?;
            for n in &cluster.nodes {
                eprintln!("  node {} http={} grpc={}", n.id, n.http, n.grpc);
            }
            let urls: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
            (
                Some(cluster.clone()),
                Some(Guard(cluster.clone())),
                cluster.client(),
                urls,
            )
        }
        Some((urls, key)) => {
            eprintln!(
                "using the running cluster at {} (signups there pay its own Argon2 cost)",
                urls.join(",")
            );
            let admin = Client::try_new(urls.clone())
                .map_err(|e| anyhow::anyhow!("--url: {e}"))?
                .with_key(key.clone());
            (None, None, admin, urls.clone())
        }
    };

    // ---------------------------------------------------------------- setup (not timed)
    // Sections of up to 1,000 seats (20 rows of 50), front ones dearer.
    let sections = layout(o.seats);
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Demo Stadium".into(),
            sections: sections
                .iter()
                .map(|(name, rows)| api::SectionSpec::Seated {
                    name: name.clone(),
                    rows: rows
                        .iter()
                        .enumerate()
                        .map(|(r, &seats)| api::RowSpec {
                            label: (r + 1).to_string(),
                            seats,
                        })
                        .collect(),
                })
                .collect(),
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
    // The change feed from here on, over gRPC, so that the admission order can be recomputed
    // from it alone at the end (the seed commitment, the reveal, every join and admission).
    let (feed_until_tx, feed_until) = watch::channel(None);
    let feed = match &cluster {
        Some(c) => {
            let from = patient(&admin)
                .status()
                .await?
                .nodes
                .iter()
                .map(|n| n.last_log_index)
                .max()
                .unwrap_or(0);
            let grpc = crate::grpc::GrpcClient::new(c.nodes.iter().map(|n| n.grpc.clone()))
                .with_key(c.admin_key.clone());
            Some(demo_payments::watch_room_feed(grpc, from, feed_until))
        }
        None => None,
    };
    // Admit a fortieth of the venue per second (buyers take 2.5 seats on average): a
    // sell-out in some tens of seconds, at a pace the cluster serves without a backlog.
    let rate = if o.admission_rate > 0 {
        o.admission_rate
    } else {
        (o.seats / 40).clamp(50, 20_000)
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
                payment_grace_secs: Some(PAYMENT_GRACE_SECS),
                max_seats_per_order: Some(4),
                categories: None,
                prices: sections
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| api::Price {
                        section: name.clone(),
                        category: None,
                        amount_minor: 12_000u64.saturating_sub(250 * i as u64).max(4_000),
                        currency: "EUR".into(),
                    })
                    .collect(),
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
    let service_key = admin.create_api_key("payments", "service").await?.key;
    let service = Client::new(urls.clone()).with_key(service_key.clone());
    // The payment side, as real processes: the simulated provider, then the payments service
    // (a client of the ledger with its own service key).
    let secret = hex(&rand::random::<[u8; 16]>());
    let (sim_guard, sim_url) = demo_payments::spawn(
        "provider",
        &[
            "simulate".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--decline-percent={}", o.decline_percent),
            format!("--timeout-percent={}", o.timeout_percent),
            format!("--hang-ms={}", PROVIDER_TIMEOUT_MS + 2_000),
            "--duplicate-callbacks=1".into(),
            format!("--callback-secret={secret}"),
            format!("--seed={}", rand::random::<u32>() | 1),
        ],
        &dir.join("provider.log"),
    )?;
    let (payments_guard, payments_url) = demo_payments::spawn(
        "payments",
        &[
            "serve".into(),
            format!("--ledger={}", urls.join(",")),
            format!("--key={service_key}"),
            format!("--provider={sim_url}"),
            "--listen=127.0.0.1:0".into(),
            format!("--callback-secret={secret}"),
            format!("--provider-timeout-ms={PROVIDER_TIMEOUT_MS}"),
        ],
        &dir.join("payments.log"),
    )?;
    eprintln!(
        "payments service {payments_url}, simulated provider {sim_url} ({}% declined, {}% timing out)",
        o.decline_percent, o.timeout_percent
    );
    let buyers = signups(&urls, o.buyers).await?;
    let sale = Arc::new(Sale {
        pid: pid.clone(),
        sections: sections.clone(),
        admission_ttl_ms: admission_ttl_secs * 1000,
        hold_ttl: Duration::from_secs(15),
        payment_grace: Duration::from_secs(PAYMENT_GRACE_SECS),
        service,
        payments: payments_url.clone(),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(ACTIVE_BUYERS)
            .build()?,
        slow_percent: 2,
        stats: Stats::default(),
        book: Mutex::default(),
        active: Semaphore::new(ACTIVE_BUYERS),
        joining: Arc::new(Semaphore::new(JOINING_BUYERS)),
        polling: Semaphore::new(POLLING_BUYERS),
        turns: Turns::default(),
        stop: AtomicBool::new(false),
        grpc: match (&cluster, protocol) {
            (Some(c), BuyerProtocol::Grpc) => (0..GRPC_CONNECTIONS)
                .map(|_| crate::grpc::GrpcClient::new(c.nodes.iter().map(|n| n.grpc.clone())))
                .collect(),
            _ => Vec::new(),
        },
    });
    eprintln!(
        "the buyers join, look at their turn, hold and release over {}",
        match protocol {
            BuyerProtocol::Grpc => format!("gRPC ({GRPC_CONNECTIONS} HTTP/2 connections per node)"),
            BuyerProtocol::Http => "HTTP/JSON".to_string(),
        }
    );
    let (room_tx, room_rx) = watch::channel(Room::default());
    let prequeued = o.buyers * o.prequeue_percent as usize / 100;
    eprint!("{prequeued} buyers join the pre-queue before the sale opens… ");
    let mut prequeue_joins = Vec::with_capacity(prequeued);
    for (i, b) in buyers.iter().take(prequeued).enumerate() {
        let (b, sale) = (Buyer::new(&sale, b.clone(), i), sale.clone());
        let permit = sale.clone();
        prequeue_joins.push(tokio::spawn(async move {
            let _p = permit.joining.acquire().await;
            (i, join(&sale, &b).await.map(|(q, _)| q))
        }));
    }
    let mut pre = Vec::with_capacity(prequeued);
    for j in prequeue_joins {
        let (i, q) = j.await?;
        pre.push((i, q.context("joining the pre-queue")?));
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
    // The buyers arrive from a task of their own, each when it is due (a few thousand
    // arrivals per 10 ms tick), so the room watcher below starts at once: buyers in line are
    // woken only by it. (Spawning a million sleeping tasks up front delayed its first status
    // by 13-20 s at 1M buyers, and every admitted buyer waited for it.) An arrival becomes a
    // task once it has a join permit: spawned when due, 98k arriving buyers a second kept
    // the runtime's run queue thousands deep at the opening, and the status line came every
    // 2-4 s instead of every second while admitted buyers waited for the watcher.
    let live = Arc::new(AtomicUsize::new(o.buyers));
    {
        let (sale, room_rx, live) = (sale.clone(), room_rx.clone(), live.clone());
        tokio::spawn(async move {
            let spawn = |b: Client, entry: Entry, n: usize| {
                let (sale, rx, left) = (sale.clone(), room_rx.clone(), Leaving(live.clone()));
                tokio::spawn(async move {
                    let _left = left;
                    let b = Buyer::new(&sale, b, n);
                    buyer(&sale, &b, entry, rx, n as u64).await
                });
            };
            // The pre-queue holds buyers 0..prequeued, in order.
            let mut arriving = buyers.into_iter();
            for (k, ((i, queue), b)) in pre.into_iter().zip(arriving.by_ref()).enumerate() {
                assert_eq!(i, k, "the pre-queue is the first buyers, in order");
                spawn(b, Entry::PreQueued(queue), i);
            }
            let late = arriving.len();
            let arrival = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0;
            while next < late {
                ticks.tick().await;
                let due = ((arrival.elapsed().as_millis() as usize).saturating_mul(late) / 10_000)
                    .clamp(next + 1, late);
                for (k, b) in (next..due).zip(arriving.by_ref()) {
                    // Arrivals wait the rest of the sale for a permit at 1M buyers: one whose turn comes
                    // after the sell-out sees the room's sold-out status, as its app would,
                    // instead of asking.
                    if room_rx.borrow().sold_out {
                        sale.stats.told_sold_out.fetch_add(1, Relaxed);
                        live.fetch_sub(1, Relaxed);
                        continue;
                    }
                    let permit = sale.joining.clone().acquire_owned().await;
                    let permit = permit.expect("the join semaphore is never closed");
                    spawn(b, Entry::Arriving(permit), prequeued + k);
                }
                next = due;
            }
        });
    }

    // The live display and the room watcher; the optional leader kill halfway.
    let mut killed: Option<u64> = None;
    let (mut last_requests, mut last_samples) = (0, 0);
    let mut last_print = Instant::now();
    let watcher = admin.clone().with_consistency(crate::Consistency::Stale);
    let mut series: Vec<Sample> = Vec::new();
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
        let status = Room {
            admitted_total: room.map_or(0, |r| r.admitted_total),
            sold_out: room.is_some_and(|r| r.sold_out)
                || (p.totals.available == 0 && p.totals.held == 0),
            available: Arc::new(p.sections.iter().map(|s| s.available).collect()),
            together: Arc::new(p.sections.iter().map(|s| s.together).collect()),
        };
        let (admitted_total, sold_out) = (status.admitted_total, status.sold_out);
        let _ = room_tx.send(status);
        if sold_out {
            sale.turns.close();
        } else {
            sale.turns.admitted(admitted_total);
        }
        if series.len() < 100_000 {
            series.push(Sample {
                t_ms: start.elapsed().as_millis() as u64,
                sold: p.totals.sold,
                held: p.totals.held,
                waiting: room.map_or(0, |r| r.waiting),
                admitted: room.map_or(0, |r| r.admitted_total),
                requests: sale.stats.requests.load(Relaxed),
            });
        }
        let finished = live.load(Relaxed) == 0;
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
        if let Some(cluster) = &cluster
            && o.kill_leader
            && killed.is_none()
            && p.totals.sold * 2 >= p.totals.capacity
        {
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
            sale.turns.close();
            bail!("the sale did not end within 30 minutes");
        }
    }
    let wall = start.elapsed();
    if let (Some(id), Some(cluster)) = (killed, &cluster) {
        eprintln!("restarting node {id}");
        cluster.start(id)?;
        cluster.wait_healthy(id, Duration::from_secs(30)).await?;
    }
    let mut checks = verify(&admin, &sale, o.seats, &sim_url).await?;
    let last = patient(&admin)
        .status()
        .await?
        .nodes
        .iter()
        .map(|n| n.applied_index)
        .max()
        .unwrap_or(0);
    let _ = feed_until_tx.send(Some(last));
    checks.push(match feed {
        Some(task) => match task.await? {
            Ok(changes) => {
                let a = crate::fairness::audit(&pid, &changes);
                for p in a.problems.iter().take(5) {
                    eprintln!("  feed audit: {p}");
                }
                (
                    format!(
                        "the admission order recomputed from the change feed alone: seed matches its commitment, {} pre-queue entries ranked by the seed, then {} later joins in commit order, {} admissions as the rule says",
                        a.prequeue, a.joined_after_open, a.admitted
                    ),
                    a.fair(),
                )
            }
            Err(e) => (format!("the admission order recomputed from the change feed: the feed ended early ({e})"), false),
        },
        None => (
            "the admission order recomputed from the change feed: not measured (a cluster given by --url has no gRPC address here)".to_string(),
            true,
        ),
    });
    let pay_stats = demo_payments::service_stats(&sale.http, &payments_url).await;
    let s = &sale.stats;
    let total = s.requests.load(Relaxed);
    // When 99%, 99.9% and every seat were sold: the last seats wait on holds that run out (a
    // dawdler's TTL, an asynchronous payment's grace) and on refunds, each returned seat sold
    // again by a later buyer who may be slow too, so the last seat comes generations of holds
    // after the bulk.
    let sold_share_at = |per_mille: u64| {
        series
            .iter()
            .find(|x| u64::from(x.sold) * 1000 >= u64::from(o.seats) * per_mille)
            .map(|x| x.t_ms as f64 / 1000.0)
    };
    let (at_99, at_999, sold_out_at) =
        (sold_share_at(990), sold_share_at(999), sold_share_at(1000));
    println!("\nsummary");
    for (label, t) in [("99% sold at", at_99), ("99.9% sold at", at_999)] {
        if let Some(t) = t {
            println!("  {label:<26}{t:.1} s");
        }
    }
    match sold_out_at {
        Some(t) => println!("  time to sell out          {t:.1} s (every seat sold)"),
        None => println!("  time to sell out          not sold out"),
    }
    println!(
        "  wall time of the sale     {:.1} s (until the last buyer left)",
        wall.as_secs_f64()
    );
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
        ("admission ran out", &s.admission_expired),
        ("holds placed", &s.holds),
        ("seat conflicts (409)", &s.conflicts),
        ("checkouts", &s.checkouts),
        ("bookings confirmed", &s.confirmed),
        ("declined or timed out", &s.declined),
        ("refunded at checkout", &s.refunded_late),
        ("paid asynchronously", &s.pending),
        ("abandoned their hold", &s.abandoned),
        ("came back too late", &s.too_late),
        ("refunded on request", &s.refunded),
        ("polls before replication", &s.not_yet_replicated),
        ("errors", &s.errors),
    ] {
        println!("  {label:<26}{}", v.load(Relaxed));
    }
    println!(
        "  payments service          booked late {}, provider timeouts {}, callbacks {}, resumed {}",
        pay_stats["booked_late"],
        pay_stats["provider_timeouts"],
        pay_stats["callbacks"],
        pay_stats["resumed"]
    );
    println!("  p99 latency (all calls)   {:.1} ms", s.p99_ms(0));
    for (code, n) in s.error_codes.lock().expect("lock").iter() {
        println!("    error {code:<20}{n}");
    }
    println!("checks");
    for (name, ok) in &checks {
        println!("  [{}] {name}", if *ok { "ok" } else { "FAILED" });
    }
    let summary: Vec<(&str, u64)> = vec![
        ("seats", u64::from(o.seats)),
        ("buyers", o.buyers as u64),
        ("wall_ms", wall.as_millis() as u64),
        (
            "sold_out_ms",
            sold_out_at.map_or(0, |t| (t * 1000.0) as u64),
        ),
        ("sold_99_ms", at_99.map_or(0, |t| (t * 1000.0) as u64)),
        ("sold_999_ms", at_999.map_or(0, |t| (t * 1000.0) as u64)),
        ("requests", total),
        ("joined", s.joined.load(Relaxed)),
        ("admitted", s.admitted.load(Relaxed)),
        ("told_sold_out", s.told_sold_out.load(Relaxed)),
        ("admission_expired", s.admission_expired.load(Relaxed)),
        ("not_yet_replicated", s.not_yet_replicated.load(Relaxed)),
        ("holds", s.holds.load(Relaxed)),
        ("conflicts", s.conflicts.load(Relaxed)),
        ("confirmed", s.confirmed.load(Relaxed)),
        ("abandoned", s.abandoned.load(Relaxed)),
        ("too_late", s.too_late.load(Relaxed)),
        ("checkouts", s.checkouts.load(Relaxed)),
        ("declined", s.declined.load(Relaxed)),
        ("refunded_late", s.refunded_late.load(Relaxed)),
        ("pending", s.pending.load(Relaxed)),
        (
            "booked_late",
            pay_stats["booked_late"].as_u64().unwrap_or(0),
        ),
        (
            "provider_timeouts",
            pay_stats["provider_timeouts"].as_u64().unwrap_or(0),
        ),
        ("refunded", s.refunded.load(Relaxed)),
        ("errors", s.errors.load(Relaxed)),
        ("p99_us", (s.p99_ms(0) * 1000.0) as u64),
    ];
    write_report(&o.report_dir, &summary, &checks, &series, o.seats)?;
    println!(
        "report: {} (report.json, sales.svg)",
        o.report_dir.display()
    );
    drop(payments_guard);
    drop(sim_guard);
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
    const CONCURRENCY: usize = 1_024;
    // Every buyer's client is a clone of this one and shares its pool: as many idle
    // connections as buyers have requests in flight, so none is opened per request.
    let anon = Client::try_new(urls.to_vec())
        .and_then(|c| c.with_idle_connections(CONCURRENCY.max(BUYER_REQUESTS_IN_FLIGHT)))
        .map_err(|e| anyhow::anyhow!(e))?;
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + CONCURRENCY * 8).min(n))
            .map(|k| {
                let anon = anon.clone();
                tokio::spawn(async move {
                    let email = format!("buyer{k}@demo.example");
                    match anon
                        .signup(&email, "demo-password", &format!("Buyer {k}"))
                        .await
                    {
                        // A retried signup whose first attempt was applied (its answer lost
                        // to a timeout): the account is ours, log in.
                        Err(e) if e.code() == Some("already_exists") => {
                            anon.login(&email, "demo-password").await
                        }
                        other => other,
                    }
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

/// One buyer's way to the ledger: its HTTP client, which carries its token (the payments
/// service is called with it too), and, when the buyers speak gRPC, a gRPC client with the
/// same token on one of the shared connections.
#[derive(Clone)]
struct Buyer {
    http: Client,
    grpc: Option<crate::grpc::GrpcClient>,
}

/// A buyer's queue entry as it looked.
struct Turn {
    state: String,
    position: Option<u64>,
    admitted_until_ms: Option<u64>,
}

impl Buyer {
    fn new(sale: &Sale, http: Client, n: usize) -> Buyer {
        let grpc = (!sale.grpc.is_empty()).then(|| {
            let g = sale.grpc[n % sale.grpc.len()].clone();
            match http.key() {
                Some(k) => g.with_key(k),
                None => g,
            }
        });
        Buyer { http, grpc }
    }

    /// The same buyer reading from its home replica, without a read index.
    fn reader(&self, home: usize) -> Buyer {
        Buyer {
            http: self
                .http
                .clone()
                .with_consistency(crate::Consistency::Stale)
                .with_home_node(home),
            grpc: self.grpc.clone().map(|g| g.with_home_node(home)),
        }
    }

    /// Join the room: the entry, and how many wait ahead (none before the opening shuffle).
    async fn join(&self, pid: &str) -> Result<(String, Option<u64>), Error> {
        match &self.grpc {
            Some(g) => g
                .join_queue(crate::grpc::pb::JoinQueueRequest {
                    performance_id: pid.to_string(),
                    request_id: String::new(),
                })
                .await
                .map(|q| (q.queue_id, q.has_position.then_some(q.position))),
            None => self
                .http
                .join_queue(pid)
                .await
                .map(|q| (q.queue_id, q.position)),
        }
    }

    /// My queue entry (a stale read where this buyer was made a [`Buyer::reader`]).
    async fn turn(&self, queue: &str) -> Result<Turn, Error> {
        match &self.grpc {
            Some(g) => g
                .get_queue(crate::grpc::pb::QueueRef {
                    queue_id: queue.to_string(),
                    stale: true,
                })
                .await
                .map(|s| Turn {
                    state: s.state,
                    position: s.has_position.then_some(s.position),
                    admitted_until_ms: (s.admitted_until_ms > 0).then_some(s.admitted_until_ms),
                }),
            None => self.http.queue(queue).await.map(|s| Turn {
                state: s.state,
                position: s.position,
                admitted_until_ms: s.admitted_until.as_deref().and_then(parse_ms),
            }),
        }
    }

    /// Hold seats; the hold's id.
    async fn hold(&self, h: api::CreateHold) -> Result<String, Error> {
        match &self.grpc {
            Some(g) => g
                .place_hold(crate::grpc::pb::PlaceHoldRequest {
                    performance_id: h.performance_id,
                    seats: h.seats.unwrap_or_default(),
                    section: h.section.unwrap_or_default(),
                    quantity: h.quantity.map_or(0, u32::from),
                    category: h.category.unwrap_or_default(),
                    request_id: String::new(),
                })
                .await
                .map(|h| h.hold_id),
            None => self.http.hold(&h).await.map(|h| h.hold_id),
        }
    }

    async fn release(&self, hold_id: &str) -> Result<(), Error> {
        match &self.grpc {
            Some(g) => g
                .release_hold(crate::grpc::pb::HoldRef {
                    hold_id: hold_id.to_string(),
                    request_id: String::new(),
                })
                .await
                .map(|_| ()),
            None => self.http.release(hold_id).await.map(|_| ()),
        }
    }
}

/// Join the room: the entry, and how many wait ahead (none before the opening shuffle).
async fn join(sale: &Sale, b: &Buyer) -> Result<(String, Option<u64>), Error> {
    let t = Instant::now();
    let q = b.join(&sale.pid).await;
    sale.stats.record(t);
    let q = q?;
    sale.stats.joined.fetch_add(1, Relaxed);
    Ok(q)
}

/// The client for cluster status calls: each hashes every node's whole state (hundreds of MB
/// at a million accounts), so it gets a longer deadline per call.
fn patient(admin: &Client) -> Client {
    admin
        .clone()
        .with_deadline(Duration::from_secs(60))
        .with_attempt_timeout(Duration::from_secs(60))
}

/// How a buyer comes to the sale: already in the pre-queue, or arriving after the opening
/// with a permit to join.
enum Entry {
    PreQueued(String),
    Arriving(tokio::sync::OwnedSemaphorePermit),
}

/// One buyer, from joining (unless already in the pre-queue) to a booking or giving up.
async fn buyer(sale: &Sale, b: &Buyer, entry: Entry, room: watch::Receiver<Room>, n: u64) {
    let after_open = matches!(entry, Entry::Arriving(_));
    let mut r = 0x9E37_79B9_7F4A_7C15u64 ^ (n + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    if room.borrow().sold_out {
        sale.stats.told_sold_out.fetch_add(1, Relaxed);
        return;
    }
    let (queue, ahead) = match entry {
        Entry::PreQueued(q) => (q, None),
        Entry::Arriving(_permit) => match Box::pin(join(sale, b)).await {
            Ok(q) => q,
            Err(e) if e.code() == Some("sold_out") => {
                sale.stats.told_sold_out.fetch_add(1, Relaxed);
                return;
            }
            Err(e) => {
                sale.stats.error(&e);
                return;
            }
        },
    };
    // Wait in line: look at my own entry when the room has admitted about as many as were
    // ahead of me (the join said how many), else wait for the room's next status (shared by
    // all, one read). Looking is a stale read from this buyer's home replica: the leader is
    // left to the writes, and the admission is checked by the ledger when the buyer holds.
    let reader = b.reader(n as usize);
    let mut ahead_until = ahead.map_or(0, |a| {
        room.borrow()
            .admitted_total
            .saturating_add(u32::try_from(a).unwrap_or(u32::MAX))
    });
    let admitted_at = loop {
        if room.borrow().sold_out {
            sale.stats.told_sold_out.fetch_add(1, Relaxed);
            return;
        }
        let total = room.borrow().admitted_total;
        // Until when to wait: the admitted total my turn should come at, or (0) the room's
        // next status, to look again after a poll that could not tell.
        let mut wait_for = ahead_until;
        if total >= ahead_until {
            wait_for = 0;
            let _p = sale.polling.acquire().await;
            let t = Instant::now();
            let s = Box::pin(reader.turn(&queue)).await;
            sale.stats.record(t);
            match s {
                Ok(s) if s.state == "admitted" => break s.admitted_until_ms,
                Ok(s) if s.state == "waiting" => {
                    let total = room.borrow().admitted_total;
                    ahead_until = total + s.position.unwrap_or(0) as u32 + 1;
                    wait_for = ahead_until;
                }
                Ok(s) if s.state == "closed" => {
                    sale.stats.told_sold_out.fetch_add(1, Relaxed);
                    return;
                }
                Ok(_) => return, // expired before using it
                Err(e) if e.code() == Some("not_found") => {
                    sale.stats.not_yet_replicated.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    sale.stats.error(&e);
                }
            }
        }
        // Woken only when the room has admitted that many (or sold out, or the sale stopped).
        let _ = sale.turns.wait(wait_for).await;
        if sale.stop.load(Relaxed) {
            return;
        }
    };
    sale.stats.admitted.fetch_add(1, Relaxed);
    if after_open
        && let Some(until) = admitted_at
        && let Some(join_index) = queue.rsplit('_').next().and_then(|j| j.parse().ok())
    {
        let at = until.saturating_sub(sale.admission_ttl_ms);
        sale.book
            .lock()
            .expect("lock")
            .admissions_after_open
            .push((join_index, at));
    }
    let admitted_until = admitted_at;
    let mut permit = Some(sale.active.acquire().await);
    // A buyer whose admission ran out while waiting for a turn leaves at once: asking anyway
    // would only be refused, and would keep the turn from buyers still admitted.
    if admission_over(admitted_until) {
        sale.stats.admission_expired.fetch_add(1, Relaxed);
        return;
    }
    let Some(hold_id) = Box::pin(hold_seats(sale, b, &room, &mut r, admitted_until)).await else {
        return;
    };
    // The buyer's fate: 5% abandon, 2% dawdle past the hold's TTL, 2% pay by an asynchronous
    // method whose capture lands after the hold (and its grace) ended, the rest pay with a
    // card the provider declines or times out on at the configured rates.
    let fate = rnd(&mut r) % 100;
    if fate < 5 {
        let t = Instant::now();
        let _ = Box::pin(b.release(&hold_id)).await;
        sale.stats.record(t);
        sale.stats.abandoned.fetch_add(1, Relaxed);
        return;
    }
    if fate < 7 {
        permit = None;
        tokio::time::sleep(sale.hold_ttl + Duration::from_millis(500)).await;
    }
    let source = if (7..7 + sale.slow_percent).contains(&fate) {
        // Slower than the whole hold: its TTL and the payment grace, plus a margin.
        let ms = (sale.hold_ttl.max(sale.payment_grace) + Duration::from_secs(2)).as_millis();
        format!("tok_async_{ms}")
    } else {
        "tok_visa".to_string()
    };
    let token = b.http.key().unwrap_or_default().to_string();
    sale.book
        .lock()
        .expect("lock")
        .paid_holds
        .push(hold_id.clone());
    sale.stats.checkouts.fetch_add(1, Relaxed);
    let mut paid = Box::pin(demo_payments::checkout(
        &sale.http,
        &sale.payments,
        &token,
        &hold_id,
        &source,
    ))
    .await;
    if let Paid::Pending = paid {
        // An asynchronous payment: its outcome arrives by the provider's callback.
        sale.stats.pending.fetch_add(1, Relaxed);
        permit = None;
        paid = Box::pin(demo_payments::wait_settled(
            &sale.http,
            &sale.payments,
            &token,
            &hold_id,
            Duration::from_secs(120),
        ))
        .await;
    }
    match paid {
        Paid::Booked(booking_id) => {
            sale.stats.confirmed.fetch_add(1, Relaxed);
            // 2% of buyers ask for their money back.
            if rnd(&mut r) % 100 < 2 {
                match Box::pin(demo_payments::refund(
                    &sale.http,
                    &sale.payments,
                    &token,
                    &booking_id,
                ))
                .await
                {
                    Ok(()) => {
                        sale.stats.refunded.fetch_add(1, Relaxed);
                    }
                    Err(code) => sale.stats.error_code(&code),
                }
            }
        }
        Paid::TooLate => {
            sale.stats.too_late.fetch_add(1, Relaxed);
        }
        Paid::Declined => {
            sale.stats.declined.fetch_add(1, Relaxed);
        }
        Paid::RefundedLate => {
            sale.stats.refunded_late.fetch_add(1, Relaxed);
        }
        Paid::Pending => sale.stats.error_code("checkout still pending after 120 s"),
        Paid::Failed(code) => sale.stats.error_code(&code),
    }
    drop(permit);
}

/// 1–4 seats side by side in a section that has them (by the room's last availability: how
/// many seats side by side each section still has):
/// most buyers ask for the best available seats in a section (the ledger picks free seats
/// side by side at apply, so buyers asking at once never collide), a fifth pick seats on
/// the map; one whose pick was taken asks for the best available next, as a box office's
/// app offers. Fewer seats when no section has a run that long.
async fn hold_seats(
    sale: &Sale,
    b: &Buyer,
    room: &watch::Receiver<Room>,
    r: &mut u64,
    admitted_until: Option<u64>,
) -> Option<String> {
    let mut want = 1 + (rnd(r) % 4) as usize;
    let mut pick = rnd(r).is_multiple_of(5);
    let mut room = room.clone();
    for _attempt in 0..8 {
        if admission_over(admitted_until) {
            sale.stats.admission_expired.fetch_add(1, Relaxed);
            return None;
        }
        // Sections where `want` seats side by side were free a moment ago, as a box office's
        // app shows them (a cluster too old to say `together` is judged by the seats left).
        let (together, available) = {
            let room = room.borrow_and_update();
            if room.together.iter().any(|&t| t > 0) || room.available.iter().all(|&a| a == 0) {
                (room.together.clone(), room.available.clone())
            } else {
                (room.available.clone(), room.available.clone())
            }
        };
        let open: Vec<usize> = (0..sale.sections.len())
            .filter(|&i| together.get(i).is_some_and(|&t| t as usize >= want))
            .collect();
        if open.is_empty() {
            // Nowhere has that many together: ask for the most that some section has.
            match together.iter().copied().max() {
                Some(most) if most > 0 => want = want.min(most as usize),
                _ => return None,
            }
            continue;
        }
        // A section with more seats left draws more buyers, as a fuller map does: a section
        // down to its last run is rarely everyone's pick at once. (Choosing uniformly among
        // the open sections sent as many buyers to a section with 3 seats left as to one
        // with 900, and most of them were refused.)
        let weight = |i: usize| u64::from(available.get(i).copied().unwrap_or(0)).max(1);
        let mut ticket = rnd(r) % open.iter().map(|&i| weight(i)).sum::<u64>();
        let section = *open
            .iter()
            .find(|&&i| {
                let w = weight(i);
                if ticket < w {
                    return true;
                }
                ticket -= w;
                false
            })
            .expect("the ticket falls within the total weight");
        let (name, rows) = &sale.sections[section];
        let request = if pick {
            let row = (rnd(r) % rows.len() as u64) as usize;
            let len = rows[row] as usize;
            let first = (rnd(r) % (len.saturating_sub(want) + 1) as u64) as usize;
            api::CreateHold {
                performance_id: sale.pid.clone(),
                seats: Some(
                    (0..want.min(len))
                        .map(|k| format!("{name}:{}:{}", row + 1, first + k + 1))
                        .collect(),
                ),
                section: None,
                quantity: None,
                category: None,
            }
        } else {
            api::CreateHold {
                performance_id: sale.pid.clone(),
                seats: None,
                section: Some(name.clone()),
                quantity: Some(want as u16),
                category: None,
            }
        };
        let t = Instant::now();
        let hold = b.hold(request).await;
        sale.stats.record(t);
        match hold {
            Ok(h) => {
                sale.stats.holds.fetch_add(1, Relaxed);
                return Some(h);
            }
            Err(e) if e.code() == Some("seat_unavailable") => {
                sale.stats.conflicts.fetch_add(1, Relaxed);
                // A picked seat was taken: the best available next. No run that long in
                // that section (the room's availability is a moment old): maybe elsewhere,
                // else fewer seats.
                if pick {
                    pick = false;
                } else if rnd(r).is_multiple_of(2) && want > 1 {
                    want -= 1;
                }
                // Look again at the next availability (every 250 ms) before asking again,
                // as an app refreshes its map: asking at once from the same picture sent
                // the same buyers after the same last seats.
                let _ = tokio::time::timeout(Duration::from_millis(500), room.changed()).await;
            }
            Err(e) if e.code() == Some("sold_out") => return None,
            // The admission ran out between the check and the hold (a slow machine).
            Err(e) if e.code() == Some("admission_required") => {
                sale.stats.admission_expired.fetch_add(1, Relaxed);
                return None;
            }
            Err(e) => {
                sale.stats.error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

/// Sections of 20 rows of 50 seats (the last one shorter), named S1, S2, …
fn layout(seats: u32) -> Vec<(String, Vec<u32>)> {
    const ROWS: u32 = 20;
    const PER_ROW: u32 = 50;
    let mut left = seats;
    let mut out = Vec::new();
    while left > 0 {
        let mut rows = Vec::new();
        while left > 0 && rows.len() < ROWS as usize {
            let n = left.min(PER_ROW);
            rows.push(n);
            left -= n;
        }
        out.push((format!("S{}", out.len() + 1), rows));
    }
    out
}

async fn verify(
    admin: &Client,
    sale: &Sale,
    seats: u32,
    sim_url: &str,
) -> anyhow::Result<Vec<(String, bool)>> {
    let p = admin.performance(&sale.pid).await?;
    let map = admin.seats(&sale.pid, None).await?;
    let sold_cells = map.seats.iter().filter(|s| s.state == "sold").count() as u32;
    // The payments service finishes what was left open (its resume runs every 2 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let no_open_checkout = loop {
        let open = sale.service.checkouts(true, None, 10).await?;
        if open.checkouts.is_empty() || Instant::now() > deadline {
            break open.checkouts.is_empty();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let paid = ledger_payments(&sale.service, sale).await?;
    let bookings: Vec<&api::Booking> = paid.iter().filter_map(|p| p.booking.as_ref()).collect();
    let provider = demo_payments::provider_book(&sale.http, sim_url).await?;
    let mismatches = money_mismatches(&paid, &provider);
    for m in mismatches.iter().take(5) {
        eprintln!("  money mismatch: {m}");
    }
    let kept = provider.captured_minor - provider.refunded_minor.min(provider.captured_minor);
    let (sold_twice, tickets_sold, owned, revenue) = {
        let mut owner: HashMap<&str, &str> = HashMap::new();
        let mut twice = 0;
        let mut revenue = 0u64;
        let mut tickets_sold = 0u32;
        for b in &bookings {
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
        (twice == 0, tickets_sold, owner.len(), revenue)
    };
    let after = {
        let book = sale.book.lock().expect("lock");
        let mut after = book.admissions_after_open.clone();
        after.sort_unstable();
        after
    };
    // FIFO among those who joined after the opening: by join index, admission times never
    // go back.
    let fifo = after.windows(2).all(|w| w[0].1 <= w[1].1);
    // Each node reports its applied index with the hash of exactly that state. The nodes
    // agree once they applied the same log; the leader's tick may still be expiring
    // admissions and holds, so wait (bounded) for a moment when they are all at one index.
    // Equal indexes with different hashes is a divergence and fails at once.
    let deadline = Instant::now() + Duration::from_secs(120);
    // A call that times out is asked again.
    let status_reader = patient(admin);
    let (hashes_equal, hash_detail) = loop {
        let s = match status_reader.status().await {
            Ok(s) => s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("  (cluster status: {e}; asking again)");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => break (false, format!("no cluster status in 120 s: {e}")),
        };
        let reachable = s.nodes.iter().all(|n| n.role != "unreachable");
        let same_index = s
            .nodes
            .windows(2)
            .all(|w| w[0].applied_index == w[1].applied_index);
        let same_hash = s
            .nodes
            .windows(2)
            .all(|w| w[0].state_hash == w[1].state_hash);
        let at = s.nodes.first().map_or(0, |n| n.applied_index);
        if reachable && same_index {
            break (
                same_hash,
                if same_hash {
                    format!("at index {at}")
                } else {
                    format!("DIVERGED at index {at}")
                },
            );
        }
        if Instant::now() > deadline {
            let indexes: Vec<String> = s
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.id, n.applied_index))
                .collect();
            break (
                false,
                format!("no common index in 120 s: {}", indexes.join(" ")),
            );
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
            if after.len() < 2 {
                "admission order = join order after the opening: not measured (fewer than 2 such buyers admitted; lower --prequeue-percent)".to_string()
            } else {
                format!(
                    "admission order = join order for the {} buyers admitted after joining an open sale",
                    after.len()
                )
            },
            fifo,
        ),
        (
            format!(
                "the provider kept {kept} = the ledger's revenue {} (captured {}, refunded {})",
                p.revenue_minor, provider.captured_minor, provider.refunded_minor
            ),
            kept == p.revenue_minor,
        ),
        (
            format!(
                "every kept capture has its booking, every booking its capture ({} charges, {} paid holds, {} mismatches)",
                provider.charges.len(),
                paid.len(),
                mismatches.len()
            ),
            mismatches.is_empty(),
        ),
        (
            "no checkout left open (the payments service settled every one)".to_string(),
            no_open_checkout,
        ),
        (
            format!("every node's state hash is equal ({hash_detail})"),
            hashes_equal,
        ),
    ])
}

/// `report.json` (summary, checks, the time series) and `sales.svg` (sold and held seats,
/// and the waiting line, over the sale).
fn write_report(
    dir: &std::path::Path,
    summary: &[(&str, u64)],
    checks: &[(String, bool)],
    series: &[Sample],
    capacity: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::json!({
        "summary": summary.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "checks": checks.iter().map(|(name, ok)| serde_json::json!({"check": name, "ok": ok})).collect::<Vec<_>>(),
        "series": series,
    });
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(dir.join("sales.svg"), sales_svg(series, capacity))?;
    Ok(())
}

fn sales_svg(series: &[Sample], capacity: u32) -> String {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const PAD: f64 = 60.0;
    let t_max = series.last().map_or(1, |s| s.t_ms.max(1)) as f64;
    let waiting_max = series.iter().map(|s| s.waiting).max().unwrap_or(0).max(1) as f64;
    let cap = f64::from(capacity.max(1));
    let x = |t: u64| PAD + (t as f64 / t_max) * (W - 2.0 * PAD);
    let y = |v: f64, max: f64| H - PAD - (v / max) * (H - 2.0 * PAD);
    let line = |f: &dyn Fn(&Sample) -> f64, max: f64| -> String {
        series
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t_ms), y(f(s), max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="24" font-size="16">Sales over time: {capacity} seats</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>
<text x="{r}" y="{bl}" text-anchor="end">{secs:.1} s</text>
<text x="{PAD}" y="{bl}">0</text>
<text x="8" y="{PAD}">{capacity}</text>
"##,
        b = H - PAD,
        r = W - PAD,
        bl = H - PAD + 18.0,
        secs = t_max / 1000.0,
    );
    for (label, color, points, k) in [
        ("sold", "#1b7837", line(&|s| f64::from(s.sold), cap), 0.0),
        ("held", "#e08214", line(&|s| f64::from(s.held), cap), 1.0),
        (
            "waiting in line (own scale)",
            "#5e3c99",
            line(&|s| f64::from(s.waiting), waiting_max),
            2.0,
        ),
    ] {
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{points}\"/>\n<text x=\"{:.0}\" y=\"{:.0}\" fill=\"{color}\">{label}</text>\n",
            W - PAD - 200.0,
            PAD + 16.0 * k,
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// What the ledger holds for every hold that went to payment: its checkout (if it was
/// extended) and its booking (if confirmed), read back 64 at a time, linearizably.
async fn ledger_payments(service: &Client, sale: &Sale) -> anyhow::Result<Vec<PaidHold>> {
    let holds = sale.book.lock().expect("lock").paid_holds.clone();
    let mut out = Vec::new();
    for chunk in holds.chunks(64) {
        let reads: Vec<_> = chunk
            .iter()
            .map(|h| {
                let (service, h) = (service.clone(), h.clone());
                tokio::spawn(async move {
                    let hold = service.get_hold(&h).await?;
                    let checkout = match service.checkout(&h).await {
                        Ok(c) => Some(c),
                        Err(e) if e.code() == Some("not_found") => None,
                        Err(e) => return Err(e),
                    };
                    let booking = match &hold.booking_id {
                        Some(b) => Some(service.booking(b).await?),
                        None => None,
                    };
                    Ok(PaidHold {
                        hold,
                        checkout,
                        booking,
                    })
                })
            })
            .collect();
        for r in reads {
            out.push(r.await?.context("reading a hold back from the ledger")?);
        }
    }
    Ok(out)
}

struct PaidHold {
    hold: api::Hold,
    checkout: Option<api::Checkout>,
    booking: Option<api::Booking>,
}

/// Each paid hold against the provider's charge under its payment_ref: a kept capture ⇔ a
/// booking of the same amount; declined, cancelled or refunded ⇒ no booking. Returns the
/// holds that break it, described.
fn money_mismatches(paid: &[PaidHold], book: &api::payments::ProviderBook) -> Vec<String> {
    use api::payments::ChargeStatus as S;
    let charges: HashMap<&str, &api::payments::Charge> = book
        .charges
        .iter()
        .map(|c| (c.idempotency_key.as_str(), c))
        .collect();
    let mut bad = Vec::new();
    for p in paid {
        let key = format!("pay-{}", p.hold.hold_id);
        let charge = charges.get(key.as_str());
        let state = p.checkout.as_ref().map(|c| c.state);
        let ok = match (charge.map(|c| c.status), state, &p.booking) {
            (Some(S::Captured), Some(api::CheckoutState::Booked), Some(b)) => {
                b.amount_minor == charge.map_or(0, |c| c.amount_minor)
            }
            (Some(S::Refunded), Some(api::CheckoutState::Refunded), None) => true,
            // A booking refunded later through the payments service: money back, seats too.
            (Some(S::Refunded), Some(api::CheckoutState::Booked), Some(b)) => {
                b.refunded_minor == b.amount_minor
            }
            (
                Some(S::Declined | S::Cancelled) | None,
                Some(api::CheckoutState::Failed) | None,
                None,
            ) => true,
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "hold {}: provider {:?}, checkout {:?}, booking {:?}",
                p.hold.hold_id,
                charge.map(|c| c.status),
                state,
                p.booking.as_ref().map(|b| &b.booking_id)
            ));
        }
    }
    bad
}

/// Whether an admission ending at `until` (unix ms, ledger time: the leader's clock, on this
/// machine the same clock) has less than half a second left.
fn admission_over(until: Option<u64>) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    until.is_some_and(|u| now + 500 >= u)
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

    #[test]
    fn turns_wake_only_the_buyers_whose_turn_came() {
        use tokio::sync::oneshot::error::TryRecvError;
        let turns = super::Turns::default();
        let (mut next, mut at5, mut at10) = (turns.wait(0), turns.wait(5), turns.wait(10));
        turns.admitted(4);
        assert_eq!(next.try_recv(), Ok(()), "0 is the next status");
        assert_eq!(at5.try_recv(), Err(TryRecvError::Empty));
        turns.admitted(7);
        assert_eq!(at5.try_recv(), Ok(()));
        assert_eq!(at10.try_recv(), Err(TryRecvError::Empty));
        turns.close();
        assert_eq!(
            at10.try_recv(),
            Err(TryRecvError::Closed),
            "the sell-out wakes all"
        );
        let mut late = turns.wait(0);
        assert_eq!(
            late.try_recv(),
            Err(TryRecvError::Closed),
            "nobody waits after it"
        );
    }
}
