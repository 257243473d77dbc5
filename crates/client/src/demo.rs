//! `ticketctl demo`: a local 3-node cluster and an on-sale you watch sell out.
//!
//! Simulated buyers hold random free seats (1–4), some abandon (release), the rest are
//! confirmed by a service key; a live line shows sold / held / available, requests per
//! second and p99 latency; at the end the checks run: no seat sold twice (every seat is in
//! exactly one booking), sold + held + available = capacity, revenue = sum of bookings, and
//! every node's state hash equal. `--kill-leader` kills the leader mid-sale and restarts it.

use crate::Client;
use crate::dev::{DevCluster, Guard};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct DemoOptions {
    pub seats: u32,
    pub buyers: usize,
    pub kill_leader: bool,
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    holds: AtomicU64,
    conflicts: AtomicU64,
    confirmed: AtomicU64,
    abandoned: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl Stats {
    fn record(&self, started: Instant) {
        self.requests.fetch_add(1, Relaxed);
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let mut l = self.latencies_us.lock().expect("stats lock");
        if l.len() < 2_000_000 {
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
}

fn rnd(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub async fn run(o: DemoOptions) -> anyhow::Result<()> {
    if o.seats == 0 || o.seats > 100_000 {
        bail!("--seats must be 1..=100000");
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
    let cluster = DevCluster::up(&dir, 3, vec!["--log-level=warn".into()]).await?;
    let guard = Guard(cluster.clone());
    for n in &cluster.nodes {
        eprintln!("  node {} http={} grpc={}", n.id, n.http, n.grpc);
    }
    let admin = cluster.client();
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
    let perf = admin
        .create_performance(
            &event.event_id,
            &api::CreatePerformance {
                venue_id: venue.venue_id.clone(),
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 30,
                payment_grace_secs: Some(60),
                max_seats_per_order: Some(4),
                categories: None,
                prices: vec![api::Price {
                    section: "A".into(),
                    category: None,
                    amount_minor: 7_500,
                    currency: "EUR".into(),
                }],
                waiting_room: None,
            },
        )
        .await?;
    let pid = perf.performance_id.clone();
    admin
        .update_performance(
            &pid,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: None,
            },
        )
        .await?;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
    let service =
        Client::new(urls.clone()).with_key(admin.create_api_key("payments", "service").await?.key);
    eprint!("creating {} buyer keys… ", o.buyers);
    let mut buyers = Vec::with_capacity(o.buyers);
    for chunk in (0..o.buyers).collect::<Vec<_>>().chunks(64) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|i| {
                let (admin, name) = (admin.clone(), format!("buyer-{i}"));
                tokio::spawn(async move { admin.create_api_key(&name, "buyer").await })
            })
            .collect();
        for h in handles {
            buyers.push(Client::new(urls.clone()).with_key(h.await??.key));
        }
    }
    eprintln!("done");
    let seat_names: Arc<Vec<String>> = Arc::new(
        row_specs
            .iter()
            .flat_map(|r| (1..=r.seats).map(move |n| format!("A:{}:{}", r.label, n)))
            .collect(),
    );
    let stats = Arc::new(Stats::default());
    let sold_out = Arc::new(AtomicBool::new(false));
    let bookings: Arc<Mutex<HashMap<String, api::Booking>>> = Arc::default();
    let start = Instant::now();
    println!("on sale: {} seats, {} buyers", o.seats, o.buyers);
    let mut tasks = Vec::new();
    for (b, buyer) in buyers.into_iter().enumerate() {
        let (stats, sold_out, names, service, bookings, pid) = (
            stats.clone(),
            sold_out.clone(),
            seat_names.clone(),
            service.clone(),
            bookings.clone(),
            pid.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut r =
                0x9E37_79B9_7F4A_7C15u64 ^ (b as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut misses = 0;
            while !sold_out.load(Relaxed) {
                // Late in the sale, few seats are left side by side: ask for one.
                let want = if misses > 20 {
                    1
                } else {
                    1 + (rnd(&mut r) % 4) as usize
                };
                let first = (rnd(&mut r) % names.len() as u64) as usize;
                let seats: Vec<String> = (0..want)
                    .map(|k| names[(first + k) % names.len()].clone())
                    .collect();
                let t = Instant::now();
                let hold = buyer
                    .hold(&api::CreateHold {
                        performance_id: pid.clone(),
                        seats: Some(seats),
                        section: None,
                        quantity: None,
                        category: None,
                    })
                    .await;
                stats.record(t);
                match hold {
                    Ok(h) => {
                        misses = 0;
                        stats.holds.fetch_add(1, Relaxed);
                        let t = Instant::now();
                        if rnd(&mut r).is_multiple_of(10) {
                            let _ = buyer.release(&h.hold_id).await;
                            stats.record(t);
                            stats.abandoned.fetch_add(1, Relaxed);
                            continue;
                        }
                        match service
                            .confirm(&h.hold_id, &format!("demo-pay-{}", h.hold_id))
                            .await
                        {
                            Ok(bk) => {
                                stats.confirmed.fetch_add(1, Relaxed);
                                bookings
                                    .lock()
                                    .expect("lock")
                                    .insert(bk.booking_id.clone(), bk);
                            }
                            Err(_) => {
                                stats.errors.fetch_add(1, Relaxed);
                            }
                        }
                        stats.record(t);
                    }
                    Err(e)
                        if e.code() == Some("seat_unavailable") || e.code() == Some("sold_out") =>
                    {
                        stats.conflicts.fetch_add(1, Relaxed);
                        misses += 1;
                        if e.code() == Some("sold_out") || misses > 2_000 {
                            return;
                        }
                        if misses > 20 {
                            // Nothing free side by side: back off instead of hammering.
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // The live display; the optional leader kill halfway.
    let mut killed: Option<u64> = None;
    let mut last_requests = 0;
    let mut last_lat = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = admin
            .performance(&pid)
            .await
            .context("reading the performance")?;
        let requests = stats.requests.load(Relaxed);
        let lat_len = stats.latencies_us.lock().expect("lock").len();
        eprintln!(
            "[{:>5.1}s] sold {:>6}  held {:>5}  available {:>6}  | {:>5} req/s  p99 {:>6.1} ms  conflicts {:>6}  errors {}",
            start.elapsed().as_secs_f64(),
            p.totals.sold,
            p.totals.held,
            p.totals.available,
            requests - last_requests,
            stats.p99_ms(last_lat),
            stats.conflicts.load(Relaxed),
            stats.errors.load(Relaxed),
        );
        (last_requests, last_lat) = (requests, lat_len);
        if o.kill_leader && killed.is_none() && p.totals.sold * 2 >= p.totals.capacity {
            let leader = cluster.wait_leader(Duration::from_secs(5)).await?;
            eprintln!("--kill-leader: kill -9 of node {leader}, the leader");
            cluster.signal(leader, "KILL")?;
            killed = Some(leader);
        }
        if p.totals.available == 0 && p.totals.held == 0 || tasks.iter().all(|t| t.is_finished()) {
            sold_out.store(true, Relaxed);
            break;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed();
    if let Some(id) = killed {
        eprintln!("restarting node {id}");
        cluster.start(id)?;
        cluster.wait_healthy(id, Duration::from_secs(30)).await?;
    }
    let confirmed = bookings.lock().expect("lock").clone();
    let checks = verify(&cluster, &admin, &pid, o.seats, &confirmed).await?;
    let stats_total = stats.requests.load(Relaxed);
    println!("\nsummary");
    println!("  wall time to sell out     {:.1} s", wall.as_secs_f64());
    println!(
        "  requests                  {} ({:.0}/s)",
        stats_total,
        stats_total as f64 / wall.as_secs_f64()
    );
    println!("  holds placed              {}", stats.holds.load(Relaxed));
    println!(
        "  bookings confirmed        {}",
        stats.confirmed.load(Relaxed)
    );
    println!(
        "  holds abandoned           {}",
        stats.abandoned.load(Relaxed)
    );
    println!(
        "  seat conflicts (409)      {}",
        stats.conflicts.load(Relaxed)
    );
    println!("  p99 latency (all)         {:.1} ms", stats.p99_ms(0));
    println!("checks");
    for (name, ok) in &checks {
        println!("  [{}] {name}", if *ok { "ok" } else { "FAILED" });
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    if checks.iter().any(|(_, ok)| !ok) {
        bail!("a check failed");
    }
    Ok(())
}

async fn verify(
    cluster: &DevCluster,
    admin: &Client,
    pid: &str,
    seats: u32,
    bookings: &HashMap<String, api::Booking>,
) -> anyhow::Result<Vec<(String, bool)>> {
    let p = admin.performance(pid).await?;
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut twice = 0;
    let mut revenue = 0u64;
    for b in bookings.values() {
        revenue += b.amount_minor - b.refunded_minor;
        for t in &b.tickets {
            if let Some(seat) = &t.seat
                && owner.insert(seat.clone(), b.booking_id.clone()).is_some()
            {
                twice += 1;
            }
        }
    }
    let map = admin.seats(pid, None).await?;
    let sold_cells = map.seats.iter().filter(|s| s.state == "sold").count() as u32;
    // Wait for every node to apply the same index, then compare hashes.
    let deadline = Instant::now() + Duration::from_secs(20);
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
    let _ = cluster;
    Ok(vec![
        (
            format!(
                "no seat sold twice ({} seats in {} bookings)",
                owner.len(),
                bookings.len()
            ),
            twice == 0 && owner.len() as u32 == p.totals.sold,
        ),
        (
            format!(
                "sold {} + held {} + available {} + blocked {} = capacity {seats}",
                p.totals.sold, p.totals.held, p.totals.available, p.totals.blocked
            ),
            p.totals.sold + p.totals.held + p.totals.available + p.totals.blocked == seats
                && sold_cells == p.totals.sold,
        ),
        (
            format!(
                "revenue {} = sum of confirmed bookings minus refunds {revenue}",
                p.revenue_minor
            ),
            p.revenue_minor == revenue,
        ),
        ("every node's state hash is equal".to_string(), hashes_equal),
    ])
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
