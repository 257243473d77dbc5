//! The workload of `scripts/cluster-test.sh`: bookings through the client while the cluster is
//! restarted, partitioned and moved around, with every acknowledged booking recorded so that
//! none can go missing unnoticed.
//!
//! ```sh
//! cargo run -p client --example cluster_workload -- setup  --url U --key K --seats 5000 --state s.json
//! cargo run -p client --example cluster_workload -- run    --url U --state s.json --acked acked.log --stop-file STOP
//! cargo run -p client --example cluster_workload -- verify --url U --key K --acked acked.log
//! ```
//!
//! `run` books seats one after another on several workers (hold, then confirm); a booking is
//! written to the acked file only after the cluster acknowledged the confirm. A call that fails
//! (no node answered before the deadline) is counted as unknown and its seat abandoned: it is
//! not in the file, so nothing is claimed about it. `verify` reads every recorded booking back
//! (linearizable reads) and fails if one is missing or no longer names its seat.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::Client;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Seats per row of the workload's venue (one seated section `A`).
const SEATS_PER_ROW: u32 = 100;
/// The largest venue `setup` makes (the ledger allows 200,000 seats per venue).
const MAX_SEATS: u32 = 100_000;
/// Workers of `run`: each owns one API key, so the ledger's 4 live holds per buyer and
/// performance are never the bottleneck.
const MAX_WORKERS: usize = 16;
/// Most bookings `verify` reads at once.
const VERIFY_CONCURRENCY: usize = 8;
/// Most lines of an acked file `verify` accepts (a file that large is not ours).
const MAX_ACKED_LINES: usize = 1_000_000;

#[derive(Parser)]
#[command(about = "Bookings under faults, each acknowledged one recorded and read back.")]
struct Cli {
    /// Node URLs, comma-separated or repeated (any node will do).
    #[arg(
        long = "url",
        env = "TICKETLEDGER_URL",
        value_delimiter = ',',
        required = true
    )]
    urls: Vec<String>,
    /// Overall deadline of each call, over its retries across nodes, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a venue, an event and an open performance, and one operator key per worker.
    Setup {
        /// The operator key of the cluster.
        #[arg(long, env = "TICKETLEDGER_KEY", hide_env_values = true)]
        key: String,
        #[arg(long, default_value_t = 5_000)]
        seats: u32,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Where the performance id and worker keys go (JSON).
        #[arg(long)]
        state: PathBuf,
    },
    /// Book seats until the stop file appears, every seat was tried, or --max-seconds.
    Run {
        #[arg(long)]
        state: PathBuf,
        /// One line per acknowledged booking: `booking_id seat hold_id`.
        #[arg(long)]
        acked: PathBuf,
        #[arg(long)]
        stop_file: PathBuf,
        #[arg(long, default_value_t = 1_800)]
        max_seconds: u64,
        /// Pause between bookings of one worker, milliseconds (keeps the load moderate).
        #[arg(long, default_value_t = 20)]
        pause_ms: u64,
    },
    /// Read back every booking in the acked file; exit 1 if any is missing.
    Verify {
        #[arg(long, env = "TICKETLEDGER_KEY", hide_env_values = true)]
        key: String,
        #[arg(long)]
        acked: PathBuf,
        /// Fail unless the file holds at least this many bookings (proves the workload ran).
        #[arg(long, default_value_t = 1)]
        min: usize,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    performance_id: String,
    seats: u32,
    worker_keys: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let base = Client::try_new(cli.urls.clone())
        .map_err(anyhow::Error::msg)?
        .with_deadline(Duration::from_secs(cli.timeout_secs));
    match cli.cmd {
        Cmd::Setup {
            key,
            seats,
            workers,
            state,
        } => setup(base.with_key(key), seats, workers, &state).await,
        Cmd::Run {
            state,
            acked,
            stop_file,
            max_seconds,
            pause_ms,
        } => {
            let text = std::fs::read_to_string(&state)
                .with_context(|| format!("reading {}", state.display()))?;
            let s: State = serde_json::from_str(&text).context("parsing the state file")?;
            let opts = RunOptions {
                acked,
                stop_file,
                max: Duration::from_secs(max_seconds),
                pause: Duration::from_millis(pause_ms),
            };
            book(base, s, opts).await
        }
        Cmd::Verify { key, acked, min } => verify(base.with_key(key), &acked, min).await,
    }
}

fn seat_name(i: u32) -> String {
    format!("A:{}:{}", i / SEATS_PER_ROW + 1, i % SEATS_PER_ROW + 1)
}

async fn setup(cl: Client, seats: u32, workers: usize, out: &Path) -> anyhow::Result<()> {
    if seats == 0 || seats > MAX_SEATS || !seats.is_multiple_of(SEATS_PER_ROW) {
        bail!("--seats must be a multiple of {SEATS_PER_ROW} in 100..={MAX_SEATS}");
    }
    if workers == 0 || workers > MAX_WORKERS {
        bail!("--workers must be in 1..={MAX_WORKERS}");
    }
    let rows = (1..=seats / SEATS_PER_ROW)
        .map(|r| api::RowSpec {
            label: r.to_string(),
            seats: SEATS_PER_ROW,
        })
        .collect();
    let venue = cl
        .create_venue(&api::CreateVenue {
            name: "Cluster test hall".into(),
            sections: vec![api::SectionSpec::Seated {
                name: "A".into(),
                rows,
            }],
        })
        .await
        .context("creating the venue")?;
    let event = cl
        .create_event(&api::CreateEvent {
            name: "Cluster test".into(),
            category: "test".into(),
            description: "bookings under rolling restarts and partitions".into(),
            media: vec![],
        })
        .await
        .context("creating the event")?;
    let spec = api::CreatePerformance {
        venue_id: venue.venue_id.clone(),
        starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
        on_sale_at: api::TimeInput::UnixMs(0),
        sale_ends_at: None,
        // Long enough that a hold survives a leader change between hold and confirm.
        hold_ttl_secs: 120,
        payment_grace_secs: None,
        max_seats_per_order: None,
        categories: None,
        prices: vec![api::Price {
            section: "A".into(),
            category: None,
            amount_minor: 5_000,
            currency: "EUR".into(),
        }],
        waiting_room: None,
    };
    let perf = cl
        .create_performance(&event.event_id, &spec)
        .await
        .context("creating the performance")?;
    cl.update_performance(
        &perf.performance_id,
        &api::UpdatePerformance {
            status: "on_sale".into(),
            seed: None,
        },
    )
    .await
    .context("opening the sale")?;
    let mut worker_keys = Vec::new();
    for w in 0..workers {
        let k = cl
            .create_api_key(&format!("workload-{w}"), "operator")
            .await
            .context("creating a worker key")?;
        worker_keys.push(k.key);
    }
    let s = State {
        performance_id: perf.performance_id.clone(),
        seats,
        worker_keys,
    };
    std::fs::write(out, serde_json::to_vec_pretty(&s)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "performance {} on sale with {seats} seats; {workers} worker keys in {}",
        perf.performance_id,
        out.display()
    );
    Ok(())
}

struct RunOptions {
    acked: PathBuf,
    stop_file: PathBuf,
    max: Duration,
    pause: Duration,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    /// Calls that got no answer within the deadline: their outcome is unknown.
    unknown: AtomicU64,
    /// Definite rejections (e.g. the seat was taken by an earlier unknown attempt).
    rejected: AtomicU64,
}

async fn book(base: Client, s: State, o: RunOptions) -> anyhow::Result<()> {
    let acked = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&o.acked)
        .with_context(|| format!("opening {}", o.acked.display()))?;
    let acked = Arc::new(Mutex::new(acked));
    let next_seat = Arc::new(AtomicUsize::new(0));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let last_error = Arc::new(Mutex::new(String::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for key in &s.worker_keys {
        let w = Worker {
            cl: base.clone().with_key(key.clone()),
            performance_id: s.performance_id.clone(),
            seats: s.seats,
            next_seat: next_seat.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
            acked: acked.clone(),
            last_error: last_error.clone(),
            pause: o.pause,
        };
        workers.push(tokio::spawn(w.run()));
    }
    // Progress once a second: one line a script can log and a person can read.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_print = Instant::now();
    loop {
        tick.tick().await;
        let done = workers.iter().all(|w| w.is_finished());
        let asked_to_stop = o.stop_file.exists() || started.elapsed() >= o.max;
        if asked_to_stop {
            stop.store(true, Relaxed);
        }
        if done || last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let err = last_error.lock().expect("not poisoned").clone();
            println!(
                "[{:>5.1}s] acked={} unknown={} rejected={} tried={}{}",
                started.elapsed().as_secs_f64(),
                counters.acked.load(Relaxed),
                counters.unknown.load(Relaxed),
                counters.rejected.load(Relaxed),
                next_seat.load(Relaxed).min(s.seats as usize),
                if err.is_empty() {
                    String::new()
                } else {
                    format!(" last_error={err}")
                }
            );
        }
        if done {
            break;
        }
    }
    for w in workers {
        w.await.context("a worker panicked")??;
    }
    println!(
        "workload done: {} bookings acknowledged, {} unknown, {} rejected in {:.1}s",
        counters.acked.load(Relaxed),
        counters.unknown.load(Relaxed),
        counters.rejected.load(Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Worker {
    cl: Client,
    performance_id: String,
    seats: u32,
    next_seat: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<std::fs::File>>,
    last_error: Arc<Mutex<String>>,
    pause: Duration,
}

impl Worker {
    async fn run(self) -> anyhow::Result<()> {
        while !self.stop.load(Relaxed) {
            let i = self.next_seat.fetch_add(1, Relaxed);
            if i >= self.seats as usize {
                break;
            }
            let seat = seat_name(i as u32);
            if let Some(line) = self.book_one(&seat).await {
                // One write per line, so lines of concurrent workers never interleave.
                let mut f = self.acked.lock().expect("not poisoned");
                f.write_all(line.as_bytes())
                    .context("writing the acked file")?;
                self.counters.acked.fetch_add(1, Relaxed);
            }
            tokio::time::sleep(self.pause).await;
        }
        Ok(())
    }

    /// Hold one seat and confirm it: `Some(line)` once the confirm was acknowledged.
    async fn book_one(&self, seat: &str) -> Option<String> {
        let req = api::CreateHold {
            performance_id: self.performance_id.clone(),
            seats: Some(vec![seat.to_string()]),
            section: None,
            quantity: None,
            category: None,
        };
        let hold = match self.cl.hold(&req).await {
            Ok(h) => h,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        match self.cl.confirm(&hold.hold_id, &format!("pay-{seat}")).await {
            Ok(b) => Some(format!("{} {seat} {}\n", b.booking_id, hold.hold_id)),
            Err(e) => {
                self.failed(&e);
                // Give the seat back if the hold is still ours; it expires by itself otherwise.
                let _ = self.cl.release(&hold.hold_id).await;
                None
            }
        }
    }

    fn failed(&self, e: &client::Error) {
        match e {
            client::Error::Api { .. } => self.counters.rejected.fetch_add(1, Relaxed),
            _ => self.counters.unknown.fetch_add(1, Relaxed),
        };
        let text: String = e.to_string().chars().take(160).collect();
        *self.last_error.lock().expect("not poisoned") = text;
    }
}

struct Acked {
    booking_id: String,
    seat: String,
}

fn read_acked(path: &Path) -> anyhow::Result<Vec<Acked>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if out.len() >= MAX_ACKED_LINES {
            bail!("{} has more than {MAX_ACKED_LINES} lines", path.display());
        }
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some(b), Some(s), Some(_hold), None) => out.push(Acked {
                booking_id: b.into(),
                seat: s.into(),
            }),
            _ => bail!(
                "{} line {}: expected `booking_id seat hold_id`, got {line:?}",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(out)
}

async fn verify(cl: Client, acked: &Path, min: usize) -> anyhow::Result<()> {
    let all = read_acked(acked)?;
    if all.len() < min {
        bail!(
            "{} holds {} bookings, fewer than --min {min}: the workload did not run",
            acked.display(),
            all.len()
        );
    }
    let started = Instant::now();
    let all = Arc::new(all);
    let next = Arc::new(AtomicUsize::new(0));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..VERIFY_CONCURRENCY {
        let (cl, all, next, problems) = (cl.clone(), all.clone(), next.clone(), problems.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                let Some(a) = all.get(i) else { break };
                let problem = match cl.booking(&a.booking_id).await {
                    Ok(b)
                        if b.tickets.iter().any(|t| {
                            t.seat.as_deref() == Some(a.seat.as_str()) && t.state == "valid"
                        }) =>
                    {
                        None
                    }
                    Ok(b) => Some(format!(
                        "{} no longer holds a valid ticket for {}: {:?}",
                        a.booking_id, a.seat, b.tickets
                    )),
                    Err(e) => Some(format!("{} ({}): {e}", a.booking_id, a.seat)),
                };
                if let Some(p) = problem {
                    problems.lock().expect("not poisoned").push(p);
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a verify task panicked")?;
    }
    let problems = problems.lock().expect("not poisoned");
    println!(
        "verified {} of {} acknowledged bookings in {:.1}s",
        all.len() - problems.len(),
        all.len(),
        started.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("  missing: {p}");
        }
        bail!("{} acknowledged bookings were lost", problems.len());
    }
    Ok(())
}
