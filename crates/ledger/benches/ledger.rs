//! `cargo bench -p ledger`: the ledger's hot path and its costs, for a 100k-seat on-sale.
//!
//! - hold+confirm of 2 random seats per hold, applied on one core (4 seat-state changes each);
//! - queue joins up to 1M entries;
//! - snapshot encode and decode of 100k seats + 1M queue entries, and its size;
//! - resident bytes per seat and per queue entry (a counting allocator).

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use ledger::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

/// Counts live heap bytes while `COUNTING` is on (only around the memory measurements, so
/// the timed runs pay for the system allocator alone, as ticketd does).
struct Counting;
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count(delta: isize) {
    if COUNTING.load(Relaxed) {
        LIVE_BYTES.fetch_add(delta, Relaxed);
    }
}

/// Heap bytes allocated (net) while `f` runs.
fn heap_delta<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE_BYTES.load(Relaxed);
    COUNTING.store(true, Relaxed);
    let out = f();
    COUNTING.store(false, Relaxed);
    (out, LIVE_BYTES.load(Relaxed) - before)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const T0: u64 = 1_700_000_000_000;
const SEATS: u32 = 100_000;
const OP: Principal = Principal::ApiKey(ApiKeyId(1));

struct Fixture {
    ledger: Ledger,
    index: u64,
    buyers: Vec<Principal>,
    service: Principal,
}

impl Fixture {
    fn apply(&mut self, p: Principal, op: Op) -> Outcome {
        self.index += 1;
        self.ledger
            .apply(self.index, Command::new(T0 + self.index, p, op))
    }
}

/// Bootstrap, a service key, `buyers` users, a 100k-seat venue (100 rows of 1000), an event,
/// and a performance on sale (with a waiting room in draft when `room`).
fn fixture(buyers: usize, room: bool) -> (Fixture, PerformanceId) {
    let mut f = Fixture {
        ledger: Ledger::new(),
        index: 0,
        buyers: Vec::new(),
        service: Principal::System,
    };
    f.apply(
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    );
    let Outcome::Ok(Reply::ApiKeyCreated { key }) = f.apply(
        OP,
        Op::CreateApiKey {
            name: "svc".into(),
            role: Role::Service,
            key_digest: [3; 32],
        },
    ) else {
        panic!()
    };
    f.service = Principal::ApiKey(key);
    for b in 0..buyers {
        let op = Op::CreateUser {
            email: format!("b{b}@x.io"),
            name: "B".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        };
        let Outcome::Ok(Reply::UserCreated { user }) = f.apply(Principal::System, op) else {
            panic!()
        };
        f.buyers.push(Principal::User(user));
    }
    let rows = (0..100)
        .map(|r| RowSpec {
            label: r.to_string(),
            seats: SEATS / 100,
        })
        .collect();
    let Outcome::Ok(Reply::VenueCreated { venue, .. }) = f.apply(
        OP,
        Op::CreateVenue {
            name: "Stadium".into(),
            sections: vec![SectionSpec::Seated {
                name: "A".into(),
                rows,
            }],
        },
    ) else {
        panic!()
    };
    let Outcome::Ok(Reply::EventCreated { event }) = f.apply(
        OP,
        Op::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        },
    ) else {
        panic!()
    };
    let eur = Currency::parse("EUR").unwrap();
    let spec = PerformanceSpec {
        event,
        venue,
        starts_at_ms: u64::MAX / 2,
        on_sale_at_ms: 0,
        sale_ends_at_ms: u64::MAX,
        hold_ttl_ms: 600_000,
        payment_grace_ms: 0,
        max_seats_per_order: 4,
        categories: vec!["adult".into()],
        prices: vec![PriceSpec {
            section: SectionIdx(0),
            category: CategoryIdx(0),
            price: Money {
                amount_minor: 5000,
                currency: eur,
            },
        }],
        waiting_room: room.then_some(WaitingRoomSpec {
            admission_rate_per_sec: 1000,
            admission_ttl_ms: 600_000,
            max_active_admissions: 0,
            seed_commitment: *blake3::hash(&[9; 32]).as_bytes(),
        }),
    };
    let Outcome::Ok(Reply::PerformanceCreated { performance }) =
        f.apply(OP, Op::CreatePerformance(spec))
    else {
        panic!()
    };
    if !room {
        assert!(
            f.apply(
                OP,
                Op::SetSaleStatus {
                    performance,
                    status: SaleStatus::OnSale,
                    seed: None
                }
            )
            .is_ok()
        );
    }
    (f, performance)
}

/// A deterministic shuffle (xorshift) of the seat pairs.
fn shuffled_pairs(n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..SEATS / 2).map(|i| i * 2).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v.truncate(n);
    v
}

fn bench_hold_confirm(c: &mut Criterion) {
    const N: usize = 20_000;
    let (f, perf) = fixture(1_000, false);
    let pairs = shuffled_pairs(N);
    let mut g = c.benchmark_group("hold_confirm");
    g.throughput(Throughput::Elements(4 * N as u64)); // seat-state changes
    g.sample_size(20);
    g.bench_function(
        "2_random_seats_x20000 (elements = seat-state changes)",
        |b| {
            b.iter_batched(
                || {
                    let mut cmds = Vec::with_capacity(2 * N);
                    for (k, &s) in pairs.iter().enumerate() {
                        let buyer = f.buyers[k % f.buyers.len()];
                        let what = HoldRequest::Seats(vec![
                            (SeatIdx(s), CategoryIdx(0)),
                            (SeatIdx(s + 1), CategoryIdx(0)),
                        ]);
                        cmds.push(Command::new(
                            T0 + 1_000_000,
                            buyer,
                            Op::PlaceHold {
                                performance: perf,
                                what,
                            },
                        ));
                    }
                    (f.ledger.clone(), cmds)
                },
                |(mut l, cmds)| {
                    let mut index = f.index;
                    for (k, cmd) in cmds.into_iter().enumerate() {
                        index += 1;
                        let Outcome::Ok(Reply::HoldPlaced(h)) = l.apply(index, cmd) else {
                            panic!("hold refused")
                        };
                        index += 1;
                        let code_seed = (k as u128).to_le_bytes();
                        let confirm = Command::new(
                            T0 + 1_000_000,
                            f.service,
                            Op::ConfirmHold {
                                hold: h.hold,
                                payment_ref: "p".into(),
                                code_seed,
                            },
                        );
                        assert!(l.apply(index, confirm).is_ok());
                    }
                    l
                },
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

fn bench_queue_joins(c: &mut Criterion) {
    const N: usize = 100_000;
    let (f, perf) = fixture(N, true);
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("join_x100000", |b| {
        b.iter_batched(
            || f.ledger.clone(),
            |mut l| {
                let mut index = f.index;
                for &buyer in &f.buyers {
                    index += 1;
                    assert!(
                        l.apply(
                            index,
                            Command::new(
                                T0 + 1_000_000,
                                buyer,
                                Op::JoinQueue { performance: perf }
                            )
                        )
                        .is_ok()
                    );
                }
                l
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), so a figure taken on a machine
/// shared with other builds says what the work costs, not how long it waited for a core.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Wall and on-CPU milliseconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let (cpu, t) = (thread_cpu_ns(), Instant::now());
    let out = f();
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu.zip(thread_cpu_ns()).map(|(a, b)| (b - a) as f64 / 1e6);
    (out, wall, cpu)
}

/// Snapshot cost and memory figures for 100k seats + 1M queue entries, printed as a table.
fn report_sizes() {
    let ((mut f, perf), perf_bytes) = heap_delta(|| fixture(0, true));
    println!(
        "100k-seat venue + performance: {:.1} bytes per seat (cells, counters, layout)",
        perf_bytes as f64 / f64::from(SEATS)
    );

    // 1M buyers: users cost memory of their own; measure joins separately.
    let t = Instant::now();
    for b in 0..1_000_000u32 {
        let op = Op::CreateUser {
            email: format!("q{b}@x.io"),
            name: "Q".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        };
        let Outcome::Ok(Reply::UserCreated { user }) = f.apply(Principal::System, op) else {
            panic!()
        };
        f.buyers.push(Principal::User(user));
    }
    println!("1M users created in {:.2} s", t.elapsed().as_secs_f64());
    let buyers = std::mem::take(&mut f.buyers);
    // Counted while timed: a join allocates only when a collection grows, so counting costs
    // nothing measurable here.
    let t = Instant::now();
    let ((), queue_bytes) = heap_delta(|| {
        for &buyer in &buyers {
            assert!(f.apply(buyer, Op::JoinQueue { performance: perf }).is_ok());
        }
    });
    let join_secs = t.elapsed().as_secs_f64();
    println!(
        "1M queue joins: {:.2} s ({:.0} joins/s); {:.1} bytes per queue entry (entry, order, buyer index, feed entry)",
        join_secs,
        1e6 / join_secs,
        queue_bytes as f64 / 1e6
    );
    // Three runs each on a shared machine: the first (cold: fresh pages) and the median, wall
    // clock and time on a CPU.
    let mut enc = Vec::new();
    let mut dec = Vec::new();
    let mut snap = Vec::new();
    for _ in 0..3 {
        let (s, wall, cpu) = timed(|| f.ledger.snapshot());
        snap = s;
        enc.push((wall, cpu.unwrap_or(f64::NAN)));
        let (restored, wall, cpu) = timed(|| Ledger::restore(&snap).expect("restores"));
        dec.push((wall, cpu.unwrap_or(f64::NAN)));
        assert_eq!(restored.state_hash(), f.ledger.state_hash());
    }
    let (restored, restored_bytes) = heap_delta(|| Ledger::restore(&snap).expect("restores"));
    drop(restored);
    let summary = |v: &[(f64, f64)]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        format!(
            "{:.0} ms first ({:.0} ms on CPU), {:.0} ms median of 3 ({:.0} ms on CPU)",
            v[0].0, v[0].1, sorted[1].0, sorted[1].1
        )
    };
    println!(
        "snapshot (100k seats, 1M users, 1M queue entries): {:.1} MB\n  encode {}\n  restore (decode + validate + invariants) {}\n  restored ledger: {:.0} MB of heap",
        snap.len() as f64 / 1e6,
        summary(&enc),
        summary(&dec),
        restored_bytes as f64 / 1e6,
    );
}

/// `Performance::together` at its worst: one 100k-seat section whose free seats are all in
/// runs of 2, shorter than the per-order limit (4), so no early stop and every cell is read.
/// This is the cost a performance read pays per fragmented section.
fn bench_together_worst_case(c: &mut Criterion) {
    let (mut f, perf) = fixture(25_000, false);
    // Seats 4k and 4k+1 held by name, 4k+2 and 4k+3 left free: 25,000 holds of 2.
    for k in 0..SEATS / 4 {
        let buyer = f.buyers[k as usize];
        let what = HoldRequest::Seats(vec![
            (SeatIdx(4 * k), CategoryIdx(0)),
            (SeatIdx(4 * k + 1), CategoryIdx(0)),
        ]);
        assert!(
            f.apply(
                buyer,
                Op::PlaceHold {
                    performance: perf,
                    what
                }
            )
            .is_ok()
        );
    }
    let state = f.ledger.state();
    let p = &state.performances[&perf];
    let section = &state.venues[&p.venue].sections[0];
    assert_eq!(p.together(section, SectionIdx(0)), 2);
    let mut g = c.benchmark_group("together");
    g.throughput(Throughput::Elements(u64::from(SEATS)));
    g.bench_function(
        "100k_seat_section_in_runs_of_2 (elements = seats read)",
        |b| b.iter(|| std::hint::black_box(p.together(section, SectionIdx(0)))),
    );
    g.finish();
}

criterion_group!(
    benches,
    bench_hold_confirm,
    bench_queue_joins,
    bench_together_worst_case
);

fn main() {
    // Under `cargo test --benches` (the CI smoke) criterion runs each bench once; skip the
    // 1M-entry report there.
    if !std::env::args().any(|a| a == "--test") {
        report_sizes();
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
