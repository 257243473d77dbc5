//! loadgen: the same on-sale workloads against ticketledger and the systems people would use
//! instead (etcd, PostgreSQL, Redis), open or closed loop, with HDR latency histograms, a
//! per-second series, JSON results and SVG charts. `loadgen compare` turns several results
//! into the ratio table (ticketledger ÷ peer). See bench/README.md.
#![forbid(unsafe_code)]

mod compare;
mod record;
mod run;
mod svg;
mod systems;
mod workload;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use systems::System;
use workload::{Generator, Layout, Plan, Workload};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for ticketledger and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up one system and run one workload against it.
    Run(Box<RunArgs>),
    /// Compare results (JSON files of `run`): ratios ticketledger ÷ peer, a table, JSON, SVG.
    Compare {
        /// Result files; the ticketledger one of each workload is the numerator.
        results: Vec<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Print N free loopback TCP ports (for the scripts that start peers).
    FreePorts { n: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SystemKind {
    Ticketledger,
    Etcd,
    Postgres,
    Redis,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: SystemKind,
    #[arg(long, value_enum, default_value = "hold")]
    workload: Workload,
    /// Closed loop with this many clients (the default: 64).
    #[arg(long, conflicts_with = "rate")]
    clients: Option<u32>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Open loop: requests in flight at most (more due requests are counted as not sent).
    #[arg(long, default_value_t = 20_000)]
    max_inflight: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// A request without an answer after this is counted as a timeout.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Fail (exit 1) when fewer requests than this completed: a harness check for CI, not a
    /// performance threshold.
    #[arg(long, default_value_t = 0)]
    min_completed: u64,
    /// Also sample the RSS of these processes every second (e.g. each ticketd).
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,

    #[command(flatten)]
    layout: LayoutArgs,

    // ---- ticketledger
    /// A `ticketctl dev up` directory: its nodes and admin key (and pids, for --watch-cluster).
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// Node URLs, instead of --cluster-dir.
    #[arg(long = "tl-url")]
    tl_urls: Vec<String>,
    /// Operator key, with --tl-url.
    #[arg(long, env = "TICKETLEDGER_KEY", hide_env_values = true)]
    tl_key: Option<String>,
    #[arg(long, value_enum, default_value = "leader")]
    tl_target: systems::ticketledger::Target,
    /// How writes reach ticketledger: HTTP/1.1 JSON, gRPC (HTTP/2), or gRPC with holds and
    /// confirms pipelined on long-lived streams (grpc-pipeline).
    #[arg(long, value_enum, default_value = "http")]
    tl_protocol: systems::ticketledger::Protocol,
    /// gRPC connections per target node (requests are multiplexed over them).
    #[arg(long, default_value_t = 4)]
    tl_grpc_connections: usize,
    /// Watch the RSS of every ticketd of --cluster-dir.
    #[arg(long)]
    watch_cluster: bool,

    // ---- peers
    /// etcd client URLs, comma-separated (`http://127.0.0.1:2379,...`).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// PostgreSQL connection string (`host=127.0.0.1 port=5432 user=postgres dbname=postgres`).
    #[arg(long)]
    pg: Option<String>,
    #[arg(long, default_value_t = 64)]
    pg_connections: usize,
    /// Redis URL (`redis://127.0.0.1:6379`).
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, default_value_t = 8)]
    redis_connections: usize,
}

#[derive(Args)]
struct LayoutArgs {
    /// Performances holds are spread over (each its own seat pool).
    #[arg(long, default_value_t = 10)]
    performances: u32,
    #[arg(long, default_value_t = 10)]
    sections: u32,
    #[arg(long, default_value_t = 100)]
    rows: u32,
    #[arg(long, default_value_t = 100)]
    seats_per_row: u32,
    /// Distinct buyers (API keys on ticketledger). The ledger allows a buyer 4 live holds per
    /// performance: at the 10 s hold TTL, 16,000 buyers over 10 performances stay below that
    /// up to ~64,000 holds/s (4,000 hit it at ~16,000/s, and the refused holds were load).
    #[arg(long, default_value_t = 16_000)]
    buyers: u32,
    /// Waiting rooms for queue joins (each buyer joins each once).
    #[arg(long, default_value_t = 40)]
    rooms: u32,
    /// Holds created beforehand for the read workload.
    #[arg(long, default_value_t = 1_000)]
    read_slots: u32,
}

/// Setup sizes at most (each is created before the run).
const MAX_BUYERS: u32 = 50_000;
const MAX_ROOMS: u32 = 1_000;
const MAX_READ_SLOTS: u32 = 100_000;

/// mimalloc instead of glibc's malloc, as in ticketd (bench/README.md, the hot-path table).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(a) => rt.block_on(run_command(*a)),
        Command::Compare { results, json, svg } => {
            compare::compare(&results, json.as_deref(), svg.as_deref())
        }
        Command::FreePorts { n } => {
            anyhow::ensure!((1..=64).contains(&n), "free-ports: 1..=64");
            let ports = client::dev::free_ports(n)?;
            println!(
                "{}",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(())
        }
    }
}

fn plan_of(a: &RunArgs) -> anyhow::Result<Plan> {
    let l = &a.layout;
    let layout = Layout {
        performances: l.performances,
        sections: l.sections,
        rows: l.rows,
        seats_per_row: l.seats_per_row,
    };
    layout.validate()?;
    anyhow::ensure!(
        (1..=MAX_BUYERS).contains(&l.buyers),
        "--buyers must be 1..={MAX_BUYERS}"
    );
    anyhow::ensure!(
        (1..=MAX_ROOMS).contains(&l.rooms),
        "--rooms must be 1..={MAX_ROOMS}"
    );
    anyhow::ensure!(
        (1..=MAX_READ_SLOTS).contains(&l.read_slots),
        "--read-slots must be 1..={MAX_READ_SLOTS}"
    );
    Ok(Plan {
        workload: a.workload,
        layout,
        buyers: l.buyers,
        rooms: l.rooms,
        read_slots: l.read_slots,
    })
}

fn mode_of(a: &RunArgs) -> anyhow::Result<run::Mode> {
    Ok(match a.rate {
        Some(rate) => {
            anyhow::ensure!(
                (1..=run::MAX_RATE).contains(&rate),
                "--rate must be 1..={}",
                run::MAX_RATE
            );
            anyhow::ensure!(
                (1..=run::MAX_INFLIGHT).contains(&a.max_inflight),
                "--max-inflight must be 1..={}",
                run::MAX_INFLIGHT
            );
            run::Mode::Open {
                rate_per_s: rate,
                max_inflight: a.max_inflight,
            }
        }
        None => {
            let clients = a.clients.unwrap_or(64);
            anyhow::ensure!(
                (1..=run::MAX_CLIENTS).contains(&clients),
                "--clients must be 1..={}",
                run::MAX_CLIENTS
            );
            run::Mode::Closed { clients }
        }
    })
}

fn secs(v: f64, what: &str, max: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && (0.0..=max).contains(&v),
        "{what} must be 0..={max}"
    );
    Ok(Duration::from_secs_f64(v))
}

async fn run_command(a: RunArgs) -> anyhow::Result<()> {
    let plan = plan_of(&a)?;
    let mode = mode_of(&a)?;
    let duration = secs(
        a.duration_secs,
        "--duration-secs",
        record::SECONDS_MAX as f64,
    )?;
    anyhow::ensure!(
        duration >= Duration::from_millis(100),
        "--duration-secs must be at least 0.1"
    );
    let warmup = secs(a.warmup_secs, "--warmup-secs", 600.0)?;
    anyhow::ensure!(
        (1..=600_000).contains(&a.timeout_ms),
        "--timeout-ms must be 1..=600000"
    );
    let timeout = Duration::from_millis(a.timeout_ms);
    let connections = match mode {
        run::Mode::Closed { clients } => clients as usize,
        run::Mode::Open { max_inflight, .. } => max_inflight.min(1024),
    };
    let mut watch = a.watch_pids.clone();
    let mut labels: Vec<String> = watch.iter().map(|p| format!("pid {p}")).collect();
    let mut node_of_label: Vec<Option<u64>> = vec![None; watch.len()];
    let system = match a.system {
        SystemKind::Ticketledger => {
            let (urls, key) = match (&a.cluster_dir, a.tl_urls.is_empty()) {
                (Some(dir), true) => {
                    let c = client::dev::DevCluster::load(dir)?;
                    if a.watch_cluster {
                        for n in &c.nodes {
                            if let Some(p) = c.pid(n.id) {
                                watch.push(p as u32);
                                labels.push(format!("n{}", n.id));
                                node_of_label.push(Some(n.id));
                            }
                        }
                    }
                    (
                        c.nodes.iter().map(|n| n.http.clone()).collect(),
                        c.admin_key.clone(),
                    )
                }
                (None, false) => (
                    a.tl_urls.clone(),
                    a.tl_key
                        .clone()
                        .context("--tl-url needs --tl-key (or TICKETLEDGER_KEY)")?,
                ),
                _ => bail!("give ticketledger either --cluster-dir or --tl-url (with --tl-key)"),
            };
            let o = systems::ticketledger::Options {
                urls,
                admin_key: key,
                target: a.tl_target,
                connections,
                protocol: a.tl_protocol,
                grpc_connections: a.tl_grpc_connections.clamp(1, 256),
            };
            System::Ticketledger(
                systems::ticketledger::Ticketledger::setup(o, &plan, timeout).await?,
            )
        }
        SystemKind::Etcd => {
            System::Etcd(systems::etcd::Etcd::setup(&a.etcd, &plan, timeout).await?)
        }
        SystemKind::Postgres => {
            let url = a.pg.as_deref().context("--system postgres needs --pg")?;
            System::Postgres(
                systems::postgres::Postgres::setup(url, a.pg_connections, &plan).await?,
            )
        }
        SystemKind::Redis => {
            let url = a.redis.as_deref().context("--system redis needs --redis")?;
            System::Redis(systems::redis::Redis::setup(url, a.redis_connections, &plan).await?)
        }
    };
    if let System::Ticketledger(t) = &system {
        for (label, node) in labels.iter_mut().zip(&node_of_label) {
            if let Some(id) = node {
                label.push_str(if *id == t.leader {
                    " leader"
                } else {
                    " follower"
                });
            }
        }
    }
    let what = match mode {
        run::Mode::Closed { clients } => format!("closed loop, {clients} clients"),
        run::Mode::Open { rate_per_s, .. } => format!("open loop, {rate_per_s}/s"),
    };
    eprintln!(
        "==> {} {}: {what}, {:.1} s warm-up + {:.1} s measured (dev profile)",
        system.name(),
        a.workload.name(),
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );
    let cfg = run::RunConfig {
        mode,
        warmup,
        duration,
        timeout,
        watch_pids: watch,
        watch_labels: labels,
        seed: a.seed,
    };
    let result = run::run(system, Generator::new(plan), cfg, a.workload.name()).await;
    println!("{}", compare::summary_line(&result));
    if let Some(line) = compare::cpu_line(&result) {
        println!("{line}");
    }
    if let Some(p) = &a.json {
        write_file(p, &serde_json::to_vec_pretty(&result)?)?;
    }
    if let Some(p) = &a.svg {
        write_file(p, svg::run_chart(&result).as_bytes())?;
    }
    if result.counts.completed() < a.min_completed {
        bail!(
            "only {} requests completed (--min-completed {}): {}",
            result.counts.completed(),
            a.min_completed,
            result.notes.join("; ")
        );
    }
    Ok(())
}

fn write_file(p: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}
