//! `jepsen`: attack a real ticketd cluster and get a verdict (DESIGN.md §8, jepsen/README.md).
//!
//! `jepsen run` starts 3 or 5 `ticketd` processes (each in its own network namespace when
//! root), drives a concurrent workload through the public API while nemeses inject faults on
//! a seeded schedule, heals everything, reads the cluster back, and checks the history.
//! Every run leaves a folder: `run.json` (options, seed), `history.jsonl`, `nemesis.jsonl`,
//! `audit.json`, `results.json`, `timeline.svg` and each node's `ticketd.log`.
#![forbid(unsafe_code)]

mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod report;
mod room;
mod workload;

use anyhow::{Context, bail};
use checker::{Audit, Params, Results, Valid};
use clap::{Args, Parser, Subcommand};
use cluster::Cluster;
use history::{Completion, Op, Recorder, Value};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(name = "jepsen", about = "Fault-injection harness for ticketledger")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: cluster, workload, nemeses, checks. Exit 0 valid, 1 invalid, 2 unknown, 3 error.
    Run(RunArgs),
    /// Re-check a stored run's history and audit.
    Check { dir: PathBuf },
    /// Run again with a stored run's options and seed (same schedule and choices; real
    /// processes make the timing differ).
    Replay {
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        ticketd: Option<PathBuf>,
    },
    /// Kill the processes in, and remove, every namespace the harness may have left behind.
    Cleanup,
}

#[derive(Args, Clone, Debug, Serialize, Deserialize)]
struct RunArgs {
    /// 3 or 5 nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Comma-separated: kill, pause, partition, netem, clock, jump, member, snapshot, wipe,
    /// corrupt, transfer; `all` or `none`.
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// Seeds the fault schedule and every client's choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients (history processes).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seats in the hot section.
    #[arg(long, default_value_t = 8)]
    seats: u32,
    #[arg(long, default_value_t = 8)]
    ga_capacity: u32,
    /// Hold TTL (the ledger's minimum is 10).
    #[arg(long, default_value_t = 10)]
    ttl_secs: u64,
    /// ticketd's --snapshot-every (small: logs are purged and lagging nodes get snapshots).
    #[arg(long, default_value_t = 300)]
    snapshot_every: u64,
    /// The run's folder (default: jepsen-runs/<unix time>-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The ticketd binary (default: next to this one, $TICKETD_BIN, or PATH).
    #[arg(long)]
    ticketd: Option<PathBuf>,
    /// Use loopback even as root (no partition or netem faults).
    #[arg(long)]
    loopback: bool,
    /// `valid` or `invalid`: exit 0 only if the verdict is this (for canary tests).
    #[arg(long)]
    expect: Option<String>,
    /// Refund without a refund_ref (the node picks one): shows that such refunds are not
    /// idempotent across retries (a finding of this harness).
    #[arg(long)]
    refund_ref_from_node: bool,
    /// Seat holds, GA holds and confirms over the gRPC `Ledger.Pipeline` (one attempt per
    /// call, each process's stream moving to the next node when it breaks) instead of HTTP
    /// with the client's retries.
    #[arg(long)]
    #[serde(default)]
    pipeline: bool,
    /// Keep the nodes' data directories (they are kept anyway when the run is invalid).
    #[arg(long)]
    keep_data: bool,
    /// The corrupt nemesis may also truncate the WAL's tail (lost acknowledged writes).
    #[arg(long)]
    #[serde(default)]
    corrupt_wal: bool,
    /// Clients of the waiting-room workload (0: none). Each serves one buyer after another.
    #[arg(long, default_value_t = 3)]
    #[serde(default = "default_room_clients")]
    room_clients: usize,
    /// Extra buyers who join the waiting room before the sale opens (the seeded pre-queue).
    #[arg(long, default_value_t = 8)]
    #[serde(default = "default_prequeue")]
    prequeue: u32,
}

fn default_room_clients() -> usize {
    0
}

fn default_prequeue() -> u32 {
    0
}

#[derive(Serialize, Deserialize)]
struct RunFile {
    args: RunArgs,
    seed: u64,
    ticketd: PathBuf,
    params: Params,
    net: cluster::Net,
    nodes: Vec<cluster::Slot>,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(args) => run_or_report(args).await,
            Cmd::Replay { dir, out, ticketd } => match load_run(&dir) {
                Ok(f) => {
                    let mut args = f.args;
                    args.seed = Some(f.seed);
                    args.out = out.or_else(|| Some(replay_dir(&dir)));
                    args.ticketd = ticketd.or(Some(f.ticketd));
                    println!("jepsen: replaying {} with seed {}", dir.display(), f.seed);
                    run_or_report(args).await
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    3
                }
            },
            Cmd::Check { dir } => match recheck(&dir) {
                Ok(r) => exit_code(r.valid, None),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    3
                }
            },
            Cmd::Cleanup => {
                let n = cluster::cleanup_all();
                println!("jepsen: removed {n} namespaces");
                0
            }
        }
    });
    std::process::exit(code);
}

fn replay_dir(dir: &Path) -> PathBuf {
    (1..)
        .map(|i| PathBuf::from(format!("{}-replay{i}", dir.display())))
        .find(|p| !p.exists())
        .expect("some name is free")
}

fn load_run(dir: &Path) -> anyhow::Result<RunFile> {
    let text = std::fs::read_to_string(dir.join("run.json"))
        .with_context(|| format!("no run.json in {}", dir.display()))?;
    serde_json::from_str(&text).context("reading run.json")
}

fn exit_code(valid: Valid, expect: Option<&str>) -> i32 {
    let got = match valid {
        Valid::Valid => "valid",
        Valid::Invalid => "invalid",
        Valid::Unknown => "unknown",
    };
    match expect {
        Some(want) => {
            if want == got {
                println!("jepsen: verdict {got}, as expected");
                0
            } else {
                println!("jepsen: verdict {got}, but {want} was expected");
                1
            }
        }
        None => match valid {
            Valid::Valid => 0,
            Valid::Invalid => 1,
            Valid::Unknown => 2,
        },
    }
}

async fn run_or_report(args: RunArgs) -> i32 {
    let expect = args.expect.clone();
    if let Some(e) = &expect
        && e != "valid"
        && e != "invalid"
    {
        eprintln!("error: --expect must be valid or invalid, not {e:?}");
        return 3;
    }
    let holder: Arc<std::sync::Mutex<Option<Arc<Cluster>>>> = Arc::default();
    let run = run(args, holder.clone());
    let result = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Whatever happened, no process or namespace outlives the run.
    if let Some(c) = holder.lock().unwrap_or_else(|e| e.into_inner()).take() {
        c.teardown();
    }
    match result {
        Ok(valid) => exit_code(valid, expect.as_deref()),
        Err(e) => {
            eprintln!("error: {e:#}");
            3
        }
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn run(
    args: RunArgs,
    holder: Arc<std::sync::Mutex<Option<Arc<Cluster>>>>,
) -> anyhow::Result<Valid> {
    if !(3..=5).contains(&args.nodes) {
        bail!("--nodes must be 3, 4 or 5");
    }
    if args.clients == 0 || args.clients > 64 || args.seats == 0 || args.seats > 64 {
        bail!("--clients and --seats must be 1..=64");
    }
    if !(1..=24 * 3600).contains(&args.time_limit) {
        bail!("--time-limit must be 1..=86400 seconds");
    }
    let faults = nemesis::parse(&args.nemesis)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("jepsen-runs/{}-{seed}", wall_ms() / 1000)));
    if out.join("history.jsonl").exists() {
        bail!("{} already holds a run: give another --out", out.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let ticketd = match &args.ticketd {
        Some(p) => p.clone(),
        None => client::dev::find_ticketd()?,
    };
    if !ticketd.is_file() {
        bail!(
            "no ticketd at {} (cargo build --bins, or --ticketd PATH)",
            ticketd.display()
        );
    }
    let ticketd = ticketd.canonicalize()?;
    println!(
        "jepsen: seed {seed}, {} nodes, {} clients, {} s, nemeses [{}], ticketd {}, out {}",
        args.nodes,
        args.clients,
        args.time_limit,
        faults.join(","),
        ticketd.display(),
        out.display()
    );
    let extra = vec![
        "--heartbeat-ms=50".to_string(),
        "--request-timeout-ms=2000".into(),
        format!("--snapshot-every={}", args.snapshot_every),
        "--log-level=info,openraft=warn".into(),
    ];
    let cluster = Arc::new(Cluster::create(
        &out,
        args.nodes,
        ticketd.clone(),
        extra,
        args.loopback,
    )?);
    *holder.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster.clone());
    if !cluster.network_faults()
        && let Some(f) = faults
            .iter()
            .find(|f| nemesis::NEEDS_NAMESPACES.contains(&f.as_str()))
    {
        bail!("the {f} nemesis needs network namespaces or the proxy (not --loopback)");
    }
    if faults.iter().any(|f| f == "jump") {
        let lib = cluster.enable_faketime()?;
        println!(
            "jepsen: every node runs with {} preloaded (jump nemesis)",
            lib.display()
        );
    }
    println!("jepsen: starting the cluster ({:?})", cluster.net);
    cluster.bootstrap().await.context("starting the cluster")?;
    let cat = workload::setup(
        &cluster,
        args.seats,
        args.ga_capacity,
        args.ttl_secs,
        args.clients,
    )
    .await?;
    let room = if args.room_clients > 0 {
        Some(room::setup(&cluster, seed, args.ttl_secs).await?)
    } else {
        None
    };
    let clock_ms = if faults.iter().any(|f| f == "clock" || f == "jump") {
        nemesis::CLOCK_OFFSET_MAX_MS
    } else {
        0
    };
    let start = Instant::now();
    let params = Params {
        start_wall_ms: wall_ms(),
        hold_ttl_ms: args.ttl_secs * 1000,
        seats: cat.seats.clone(),
        ga_capacity: args.ga_capacity,
        // Node clocks are the harness's (one machine) but for the clock nemesis's offsets;
        // the late side also covers the 100 ms tick and a commit under faults.
        early_tolerance_ms: 100 + clock_ms,
        late_tolerance_ms: 1500 + clock_ms,
        room_performance: room.as_ref().map(|r| r.performance.clone()),
        room_hold_ttl_ms: args.ttl_secs * 1000,
    };
    let run_file = RunFile {
        args: RunArgs {
            seed: Some(seed),
            ..args.clone()
        },
        seed,
        ticketd,
        params: params.clone(),
        net: cluster.net.clone(),
        nodes: cluster.slots(),
    };
    std::fs::write(out.join("run.json"), serde_json::to_vec_pretty(&run_file)?)?;
    let rec = Arc::new(Recorder::create(&out.join("history.jsonl"), start)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut procs = Vec::new();
    for p in 0..args.clients as u32 {
        let proc_ = workload::Process::new(
            p,
            seed,
            &cluster,
            &cat,
            rec.clone(),
            args.refund_ref_from_node,
            args.pipeline,
        );
        procs.push(tokio::spawn(proc_.run(stop.clone())));
    }
    if let Some(room) = &room {
        let next_buyer = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let slack = Duration::from_millis(clock_ms as u64);
        for i in 0..args.room_clients as u32 {
            let p = room::RoomProcess::new(
                args.clients as u32 + i,
                seed,
                cluster.clone(),
                room.clone(),
                rec.clone(),
                next_buyer.clone(),
                slack,
            );
            procs.push(tokio::spawn(p.run(stop.clone())));
        }
        let open_after = Duration::from_secs((args.time_limit / 5).clamp(1, 6));
        procs.push(tokio::spawn(room::open_after(
            (args.clients + args.room_clients) as u32,
            cluster.clone(),
            room.clone(),
            rec.clone(),
            open_after,
            start,
            seed,
            args.prequeue,
            next_buyer,
        )));
    }
    let log = std::fs::File::create(out.join("nemesis.jsonl"))?;
    let mut nem = nemesis::Nemesis::new(cluster.clone(), faults.clone(), seed, start, log);
    nem.corrupt_wal = args.corrupt_wal;
    let nem_stop = stop.clone();
    let nem_task = tokio::spawn(async move {
        nem.run(nem_stop).await;
        nem.bands
    });
    println!("jepsen: workload running for {} s", args.time_limit);
    let deadline = start + Duration::from_secs(args.time_limit);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5).min(deadline - Instant::now())).await;
        println!(
            "  {:>5.1}s: {} history entries",
            start.elapsed().as_secs_f64(),
            rec.entries().len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let bands = nem_task.await.unwrap_or_default();
    for p in procs {
        // A client finishes its current operation and retries (bounded by their deadlines).
        let _ = tokio::time::timeout(Duration::from_secs(30), p).await;
    }
    println!("jepsen: healing every fault and waiting for the replicas to converge");
    nemesis::heal_everything(&cluster)
        .await
        .context("healing the cluster")?;
    let (converged, nodes) = converge(&cluster, Duration::from_secs(60)).await;
    final_reads(&cluster, &cat, &rec, args.clients as u32).await;
    let mut audit = audit(&cluster, &rec, converged, nodes).await;
    audit.node_starts = cluster.starts_since(start);
    if let Some(room) = &room {
        let upto = audit.nodes.iter().map(|n| n.2).max().unwrap_or(0);
        println!("jepsen: reading the change feed back (to index {upto})");
        audit.feed = Some(room::read_feed(&cluster, &room.performance, upto).await);
    }
    rec.flush();
    std::fs::write(out.join("audit.json"), serde_json::to_vec_pretty(&audit)?)?;
    cluster.teardown();
    let entries = rec.entries();
    let results = check_and_report(&out, &entries, &bands, &params, Some(&audit), seed)?;
    if !args.keep_data && results.valid != Valid::Invalid {
        for s in cluster.slots() {
            let _ = std::fs::remove_dir_all(s.dir.join("data"));
        }
    }
    Ok(results.valid)
}

/// Wait until every member reports the same applied index and state hash.
async fn converge(c: &Cluster, deadline: Duration) -> (bool, Vec<(u64, String, u64, String)>) {
    let start = Instant::now();
    let admin = c.admin().with_deadline(Duration::from_secs(3));
    let mut last = Vec::new();
    while start.elapsed() < deadline {
        if let Ok(s) = admin.status().await {
            last = s
                .nodes
                .iter()
                .map(|n| (n.id, n.role.clone(), n.applied_index, n.state_hash.clone()))
                .collect();
            let live = s.nodes.iter().all(|n| n.role != "unreachable");
            let same = s.nodes.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index && w[0].state_hash == w[1].state_hash
            });
            if live && same && !s.nodes.is_empty() {
                return (true, last);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (false, last)
}

/// A linearizable read of every seat and of the GA counters on every node, recorded in the
/// history (so the checkers see the final state through each replica).
async fn final_reads(c: &Cluster, cat: &workload::Catalog, rec: &Recorder, process: u32) {
    for s in c.slots() {
        let one = client::Client::new([s.http.clone()])
            .with_key(cat.service_key.clone())
            .with_deadline(Duration::from_secs(10));
        let op = Op::ReadSeats {
            node: s.slot as u64,
            stale: false,
        };
        if let Some(id) = rec.invoke(process, &op, None) {
            let done = match one
                .seats(&cat.performance, Some(workload::HOT_SECTION))
                .await
            {
                Ok(m) => Completion::Ok(Value::Seats {
                    seats: m.seats.into_iter().map(|x| (x.seat, x.state)).collect(),
                }),
                Err(e) => Completion::Info(e.to_string()),
            };
            rec.complete(id, process, &op, &done, None);
        }
        let op = Op::ReadGa {
            node: s.slot as u64,
            stale: false,
        };
        if let Some(id) = rec.invoke(process, &op, None) {
            let done = match one.performance(&cat.performance).await {
                Ok(p) => match p
                    .sections
                    .iter()
                    .find(|x| x.section == workload::GA_SECTION)
                {
                    Some(x) => Completion::Ok(Value::Ga {
                        capacity: x.capacity,
                        available: x.available,
                        held: x.held,
                        sold: x.sold,
                    }),
                    None => Completion::Fail("no_ga_section".into()),
                },
                Err(e) => Completion::Info(e.to_string()),
            };
            rec.complete(id, process, &op, &done, None);
        }
    }
}

/// Read back every acknowledged hold and booking.
async fn audit(
    c: &Cluster,
    rec: &Recorder,
    converged: bool,
    nodes: Vec<(u64, String, u64, String)>,
) -> Audit {
    let admin = c.admin().with_deadline(Duration::from_secs(10));
    let mut a = Audit {
        at_wall_ms: wall_ms(),
        converged,
        nodes,
        ..Audit::default()
    };
    let entries = rec.entries();
    println!("jepsen: auditing acknowledged holds and bookings");
    for e in &entries {
        match &e.value {
            Some(Value::Hold { hold_id, .. }) if !a.holds.contains_key(hold_id) => {
                match admin.get_hold(hold_id).await {
                    Ok(h) => {
                        a.holds.insert(hold_id.clone(), Ok(h));
                    }
                    Err(err) if err.status().is_some() => {
                        a.holds.insert(hold_id.clone(), Err(err.to_string()));
                    }
                    Err(_) => {}
                }
            }
            Some(Value::Booking { booking_id }) if !a.bookings.contains_key(booking_id) => {
                match admin.booking(booking_id).await {
                    Ok(b) => {
                        a.bookings.insert(booking_id.clone(), Ok(b));
                    }
                    Err(err) if err.status().is_some() => {
                        a.bookings.insert(booking_id.clone(), Err(err.to_string()));
                    }
                    Err(_) => {}
                }
            }
            _ => {}
        }
    }
    a
}

fn check_and_report(
    out: &Path,
    entries: &[history::Entry],
    bands: &[nemesis::Band],
    params: &Params,
    audit: Option<&Audit>,
    seed: u64,
) -> anyhow::Result<Results> {
    let ops = history::logical(entries);
    println!(
        "jepsen: checking {} operations ({} history entries)",
        ops.len(),
        entries.len()
    );
    let results = checker::check_all(&ops, params, audit);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let title = format!(
        "seed {seed}: {} ops, {} faults, verdict {:?}",
        ops.len(),
        bands.len(),
        results.valid
    );
    std::fs::write(
        out.join("timeline.svg"),
        report::timeline(&ops, bands, &title),
    )?;
    let count = |f: &dyn Fn(&history::Logical) -> bool| ops.iter().filter(|o| f(o)).count();
    println!(
        "jepsen: {} ops: {} ok, {} fail, {} unknown; {} faults injected ({} failed to inject)",
        ops.len(),
        count(&|o| matches!(o.outcome, Completion::Ok(_))),
        count(&|o| matches!(o.outcome, Completion::Fail(_))),
        count(&|o| matches!(o.outcome, Completion::Info(_))),
        bands.len(),
        bands.iter().filter(|b| b.error.is_some()).count()
    );
    for c in &results.checks {
        println!(
            "  {:<22} {:<8} ({} checked)",
            c.checker,
            format!("{:?}", c.valid).to_lowercase(),
            c.checked
        );
        for p in &c.problems {
            println!("      {p}");
        }
        for w in &c.witness {
            println!("      | {w}");
        }
    }
    println!(
        "jepsen: verdict {} (results.json, timeline.svg, history.jsonl in {})",
        format!("{:?}", results.valid).to_lowercase(),
        out.display()
    );
    Ok(results)
}

fn recheck(dir: &Path) -> anyhow::Result<Results> {
    let f = load_run(dir)?;
    let entries = history::load(&dir.join("history.jsonl"))?;
    let bands: Vec<nemesis::Band> = std::fs::read_to_string(dir.join("nemesis.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let audit: Option<Audit> = std::fs::read(dir.join("audit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    check_and_report(dir, &entries, &bands, &f.params, audit.as_ref(), f.seed)
}
