//! `ticketctl`: run a local cluster, administer a cluster, and drive an on-sale from the shell.
//! Human tables by default, `--json` for scripts. Talks to any node (`--url`, repeatable or
//! comma-separated, or `TICKETLEDGER_URL`), failing over between them with the client library.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use client::Client;
use client::dev::DevCluster;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "ticketctl/people.rs"]
mod people;

const DEV_DIR_DEFAULT: &str = "./ticketledger-dev";

#[derive(Parser)]
#[command(
    name = "ticketctl",
    version,
    about = "Operate a ticketledger cluster and its on-sales.",
    after_help = "Examples:\n  ticketctl dev up --nodes 3 --dir ./dev\n  eval \"$(ticketctl dev env --dir ./dev)\"\n  ticketctl cluster status\n  ticketctl hold --performance p_1 --seat A:1:1 A:1:2"
)]
struct Cli {
    /// Node URLs (any node will do; give several for failover). Repeatable or comma-separated.
    #[arg(
        long = "url",
        env = "TICKETLEDGER_URL",
        value_delimiter = ',',
        global = true
    )]
    urls: Vec<String>,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, env = "TICKETLEDGER_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// The cluster's CA certificate (PEM), to verify `https://` nodes (a cluster run with
    /// `ticketd --tls-ca`); without it, `https://` is checked against the system's roots.
    #[arg(long, env = "TICKETLEDGER_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Overall deadline of each call, over its retries, in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    timeout_secs: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local 3-node cluster and an on-sale you watch sell out, with checks at the end.
    Demo {
        /// Seats in the venue (up to 100000).
        #[arg(long, default_value_t = 20_000)]
        seats: u32,
        /// Simulated buyers (each a signed-up account with one place in the waiting room).
        #[arg(long, default_value_t = 200_000)]
        buyers: usize,
        /// Kill the leader with SIGKILL when half is sold, restart it at the end.
        #[arg(long)]
        kill_leader: bool,
        /// Where the cluster's data goes (default: a temporary directory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Admissions per second from the waiting room (default: a fortieth of the seats,
        /// 50..=20000).
        #[arg(long, default_value_t = 0)]
        admission_rate: u32,
        /// Percent of buyers who join the pre-queue before the sale opens.
        #[arg(long, default_value_t = 2)]
        prequeue_percent: u32,
        /// The API the buyers use to join, look at their turn, hold and release (default
        /// http; grpc needs the demo's own cluster, not --url).
        #[arg(long, value_enum)]
        protocol: Option<client::demo::BuyerProtocol>,
        /// Where the report goes (report.json with the summary, checks and time series;
        /// sales.svg, a chart of sales over time).
        #[arg(long, default_value = "ticketctl-demo-report")]
        report: PathBuf,
        /// Percent of ordinary card payments the simulated provider declines.
        #[arg(long, default_value_t = 3)]
        decline_percent: u32,
        /// Percent of ordinary card payments the provider captures but answers too late
        /// for (the payments service's cancel then finds the capture, which stands).
        #[arg(long, default_value_t = 1)]
        timeout_percent: u32,
    },
    /// A local cluster of real ticketd processes.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Cluster administration (operator key).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// API keys (operator key).
    #[command(subcommand)]
    ApiKey(ApiKeyCmd),
    /// Venues (organizer or operator key).
    #[command(subcommand)]
    Venue(VenueCmd),
    /// Events (organizer or operator key).
    #[command(subcommand)]
    Event(EventCmd),
    /// Performances and their sales.
    #[command(subcommand)]
    Performance(PerformanceCmd),
    /// The seat map of a performance.
    Seats {
        performance: String,
        #[arg(long)]
        section: Option<String>,
    },
    /// Hold seats (`--seat A:1:1 A:1:2`) or GA places (`--section Floor --quantity 2`).
    Hold {
        #[arg(long)]
        performance: String,
        #[arg(long = "seat", num_args = 1.., value_delimiter = ',')]
        seats: Vec<String>,
        #[arg(long, conflicts_with = "seats", requires = "quantity")]
        section: Option<String>,
        #[arg(long, requires = "section")]
        quantity: Option<u16>,
        /// Ticket category of every seat (default: the performance's first).
        #[arg(long)]
        category: Option<String>,
    },
    /// Extend a hold into its payment grace period.
    Extend {
        hold: String,
        #[arg(long)]
        payment_ref: String,
    },
    /// Confirm a hold into a booking (service key).
    Confirm {
        hold: String,
        #[arg(long)]
        payment_ref: String,
    },
    /// Release a hold (idempotent).
    Release { hold: String },
    /// Refund a booking, or some of its tickets (`--ticket t_9`, repeatable).
    Refund {
        booking: String,
        #[arg(long = "ticket")]
        tickets: Vec<String>,
    },
    /// Bookings.
    #[command(subcommand)]
    Booking(BookingCmd),
    // Accounts, the waiting room, bookings lists, check-in, seat blocking, sales reports.
    #[command(flatten)]
    People(people::PeopleCmd),
    /// Probe every node given by --url: exit 0 when all are ready (`/readyz`: a leader is
    /// known and this node applied what is committed), or alive with --live (`/healthz`).
    /// For container health checks and scripts.
    Health {
        #[arg(long)]
        live: bool,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Start N nodes under DIR, initialize the cluster, print each node and the admin key.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
        /// Node i listens on HTTP port P+2(i-1) and gRPC port P+2(i-1)+1 (default: free ports).
        #[arg(long)]
        base_port: Option<u16>,
        /// Accepted for compatibility and ignored: one build profile serves everything.
        #[arg(long)]
        release: bool,
        /// Extra flags for every ticketd (e.g. `--ticketd-arg=--snapshot-every=500`).
        #[arg(long = "ticketd-arg", allow_hyphen_values = true)]
        ticketd_args: Vec<String>,
    },
    /// Stop every node (TERM, then KILL after 10 s). Data stays unless --purge.
    Down {
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
        /// Remove DIR (data and logs) too.
        #[arg(long)]
        purge: bool,
    },
    /// Signal one node: KILL (default), STOP, CONT or TERM.
    Kill {
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Restart one node (or every stopped node) on its data, with its saved arguments.
    Start {
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
        /// Default: every node that is not running.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Each node's pid (or "stopped") and addresses.
    Ps {
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
    },
    /// Shell lines that point ticketctl at the dev cluster: `eval "$(ticketctl dev env)"`.
    Env {
        #[arg(long, default_value = DEV_DIR_DEFAULT)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create the cluster on the node given by --url, with the bootstrap operator key.
    Init {
        #[arg(long)]
        admin_key: String,
    },
    /// Every member's role, term, last log, applied index, lag and state hash.
    Status,
    /// Add a node as a learner; returns once it has caught up.
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        grpc_addr: String,
        #[arg(long)]
        http_addr: String,
    },
    /// Make a learner a voter (membership = current voters + ID).
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a voter (membership = current voters - ID).
    Remove {
        #[arg(long)]
        id: u64,
    },
    TransferLeader {
        #[arg(long)]
        to: u64,
    },
    /// Take a snapshot now (the log is purged behind it).
    Snapshot,
    /// Write a backup (a ledger snapshot) to FILE.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a cluster that has no catalog yet.
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApiKeyCmd {
    /// `api-key create --name payments --role service` (buyer, organizer, service, operator).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum VenueCmd {
    /// From a JSON (`api::CreateVenue`) or CSV file: `section,row,seats` lines for seated
    /// rows, `section,,capacity` for general admission.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    Show {
        venue: String,
    },
}

#[derive(Subcommand)]
enum EventCmd {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        category: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Show {
        event: String,
    },
    /// Change an event's name, category or description (its organizer or an operator).
    Update {
        event: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List {
        #[arg(long)]
        category: Option<String>,
        /// Substring of the name or description.
        #[arg(long)]
        q: Option<String>,
    },
}

#[derive(Subcommand)]
enum PerformanceCmd {
    /// From a JSON file (`api::CreatePerformance`), or from flags.
    Create(CreatePerformanceArgs),
    /// Open the sale (`--seed HEX` reveals the waiting room's seed).
    Open(StatusArgs),
    Pause(StatusArgs),
    Close(StatusArgs),
    Cancel(StatusArgs),
    /// Details and availability per section.
    Show {
        performance: String,
    },
}

#[derive(Args)]
struct StatusArgs {
    performance: String,
    #[arg(long)]
    seed: Option<String>,
}

#[derive(Args)]
struct CreatePerformanceArgs {
    #[arg(long)]
    event: String,
    /// A JSON `api::CreatePerformance`; the other flags are then not used.
    #[arg(long, conflicts_with_all = ["venue", "starts_at", "prices"])]
    file: Option<PathBuf>,
    #[arg(long, required_unless_present = "file")]
    venue: Option<String>,
    /// RFC 3339 or unix ms.
    #[arg(long, required_unless_present = "file")]
    starts_at: Option<String>,
    /// RFC 3339 or unix ms (default 0: as soon as the sale is opened).
    #[arg(long, default_value = "0")]
    on_sale_at: String,
    #[arg(long, default_value_t = 600)]
    hold_ttl_secs: u64,
    #[arg(long)]
    max_seats_per_order: Option<u16>,
    /// `SECTION[/CATEGORY]=AMOUNT_MINOR`, repeatable: `--price A=5000 --price A/vip=9000`.
    #[arg(long = "price", required_unless_present = "file")]
    prices: Vec<String>,
    #[arg(long, default_value = "EUR")]
    currency: String,
}

#[derive(Subcommand)]
enum BookingCmd {
    Show { booking: String },
}

/// Exit status of a failed command; clap uses 2 for usage errors.
const EXIT_FAILED: u8 = 1;

/// mimalloc instead of glibc's malloc, as in ticketd (bench/README.md, the hot-path table).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with its causes, never a backtrace (whatever RUST_BACKTRACE says).
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Demo {
            seats,
            buyers,
            kill_leader,
            dir,
            admission_rate,
            prequeue_percent,
            report,
            decline_percent,
            timeout_percent,
            protocol,
        } => {
            // `--url` (or TICKETLEDGER_URL) runs the on-sale on that cluster, with `--key`.
            let external = match (cli.urls.is_empty(), &cli.key) {
                (true, _) => None,
                (false, Some(k)) => Some((cli.urls.clone(), k.clone())),
                (false, None) => bail!("demo on a running cluster (--url) needs an operator --key"),
            };
            client::demo::run(client::demo::DemoOptions {
                seats: *seats,
                buyers: *buyers,
                kill_leader: *kill_leader,
                dir: dir.clone(),
                admission_rate: *admission_rate,
                prequeue_percent: *prequeue_percent,
                report_dir: report.clone(),
                decline_percent: *decline_percent,
                timeout_percent: *timeout_percent,
                external,
                protocol: *protocol,
            })
            .await
        }
        Cmd::Dev(d) => dev(d, cli.json).await,
        Cmd::Cluster(c) => cluster(cli, c).await,
        Cmd::Health { live } => health(cli, *live).await,
        _ => onsale(cli).await,
    }
}

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    if cli.urls.is_empty() {
        bail!(
            "give --url (or TICKETLEDGER_URL) with one or more node addresses; for a dev cluster: eval \"$(ticketctl dev env --dir DIR)\""
        );
    }
    let mut c = Client::try_new(cli.urls.clone())
        .map_err(anyhow::Error::msg)?
        .with_deadline(Duration::from_secs(cli.timeout_secs));
    if let Some(path) = &cli.ca_cert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --ca-cert {}", path.display()))?;
        c = c.with_ca_cert(&pem).map_err(anyhow::Error::msg)?;
    }
    Ok(match &cli.key {
        Some(k) => c.with_key(k.clone()),
        None => c,
    })
}

fn print<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
    } else {
        println!("{}", human(v));
    }
}

async fn dev(d: &DevCmd, json: bool) -> anyhow::Result<()> {
    match d {
        DevCmd::Up {
            nodes,
            dir,
            base_port,
            release,
            ticketd_args,
        } => {
            if *release {
                eprintln!("note: --release is ignored; every command uses the one build profile");
            }
            eprintln!("starting {nodes} ticketd processes under {}", dir.display());
            let c = DevCluster::up_with(dir, *nodes, *base_port, ticketd_args.clone()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                for n in &c.nodes {
                    println!("node {} http={} grpc={}", n.id, n.http, n.grpc);
                }
                println!("admin_key={}", c.admin_key);
            }
        }
        DevCmd::Down { dir, purge } => {
            DevCluster::load(dir)?.down(*purge)?;
            eprintln!("stopped{}", if *purge { "; data removed" } else { "" });
        }
        DevCmd::Kill { dir, node, signal } => {
            DevCluster::load(dir)?.signal(*node, signal)?;
            eprintln!("sent {signal} to node {node}");
        }
        DevCmd::Start { dir, node } => {
            let c = DevCluster::load(dir)?;
            let ids: Vec<u64> = match node {
                Some(id) => vec![*id],
                None => c
                    .nodes
                    .iter()
                    .map(|n| n.id)
                    .filter(|id| !c.alive(*id))
                    .collect(),
            };
            for id in &ids {
                let pid = c.start(*id)?;
                eprintln!("node {id} starting (pid {pid})");
            }
            for id in &ids {
                c.wait_healthy(*id, Duration::from_secs(30)).await?;
                println!("node {id} started");
            }
        }
        DevCmd::Ps { dir } => {
            let c = DevCluster::load(dir)?;
            let rows: Vec<serde_json::Value> = c
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({"id": n.id, "pid": c.pid(n.id), "http": n.http, "grpc": n.grpc})
                })
                .collect();
            print(json, &rows, |_| {
                c.nodes
                    .iter()
                    .map(|n| {
                        let pid = c.pid(n.id).map_or("stopped".into(), |p| format!("pid {p}"));
                        format!("node {} {pid:<11} http={} grpc={}", n.id, n.http, n.grpc)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DevCmd::Env { dir } => {
            let c = DevCluster::load(dir)?;
            let urls: Vec<String> = c
                .nodes
                .iter()
                .map(|n| format!("http://{}", n.http))
                .collect();
            println!("export TICKETLEDGER_URL={}", urls.join(","));
            println!("export TICKETLEDGER_KEY={}", c.admin_key);
        }
    }
    Ok(())
}

/// One attempt per node (no failover: each node answers for itself), bounded by --timeout-secs.
async fn health(cli: &Cli, live: bool) -> anyhow::Result<()> {
    let cl = connect(cli)?.with_attempt_timeout(Duration::from_secs(cli.timeout_secs));
    let path = if live { "/healthz" } else { "/readyz" };
    let mut failed = Vec::new();
    for (i, url) in cl.nodes().iter().enumerate() {
        match cl.raw(i, reqwest::Method::GET, path, None).await {
            Ok((s, _)) if s.is_success() => println!("{url}{path}: ok"),
            Ok((s, body)) => {
                let body = String::from_utf8_lossy(&body);
                failed.push(format!(
                    "{url}{path}: {s} {}",
                    body.chars().take(300).collect::<String>()
                ));
            }
            Err(e) => failed.push(format!("{url}{path}: {e}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} not {}: {}",
            failed.len(),
            cl.nodes().len(),
            if live { "alive" } else { "ready" },
            failed.join("; ")
        );
    }
    Ok(())
}

async fn cluster(cli: &Cli, c: &ClusterCmd) -> anyhow::Result<()> {
    let cl = connect(cli)?;
    let json = cli.json;
    match c {
        ClusterCmd::Init { admin_key } => print(json, &cl.init(admin_key).await?, status_table),
        ClusterCmd::Status => print(json, &cl.status().await?, status_table),
        ClusterCmd::AddLearner {
            id,
            grpc_addr,
            http_addr,
        } => {
            eprintln!("adding node {id}; this returns once it has caught up");
            let s = cl.add_learner(*id, grpc_addr, http_addr).await?;
            print(json, &s, status_table)
        }
        ClusterCmd::Promote { id } => {
            let s = cl.status().await?;
            if !s.learners.contains(id) && !s.voters.contains(id) {
                bail!("node {id} is not a learner; add it first with `cluster add-learner`");
            }
            let mut voters = s.voters;
            if !voters.contains(id) {
                voters.push(*id);
            }
            print(json, &cl.change_membership(voters).await?, status_table)
        }
        ClusterCmd::Remove { id } => {
            let voters = cl.status().await?.voters;
            if !voters.contains(id) {
                bail!("node {id} is not a voter (voters: {voters:?})");
            }
            let voters = voters.into_iter().filter(|v| v != id).collect();
            print(json, &cl.change_membership(voters).await?, status_table)
        }
        ClusterCmd::TransferLeader { to } => {
            print(json, &cl.transfer_leader(*to).await?, status_table)
        }
        ClusterCmd::Snapshot => print(json, &cl.snapshot().await?, |s| {
            format!("snapshot at applied index {}", s.applied_index)
        }),
        ClusterCmd::Backup { out } => {
            let bytes = cl.backup().await?;
            std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            let v = serde_json::json!({"bytes": bytes.len(), "file": out});
            print(json, &v, |_| {
                format!("wrote {} bytes to {}", bytes.len(), out.display())
            })
        }
        ClusterCmd::Restore { from } => {
            let bytes =
                std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
            print(json, &cl.restore(bytes).await?, status_table)
        }
    }
    Ok(())
}

async fn onsale(cli: &Cli) -> anyhow::Result<()> {
    let cl = connect(cli)?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::ApiKey(ApiKeyCmd::Create { name, role }) => {
            print(json, &cl.create_api_key(name, role).await?, |k| {
                format!("key_id={}\nkey={}", k.key_id, k.key)
            })
        }
        Cmd::Venue(VenueCmd::Create { name, file }) => {
            let v = venue_from_file(name, file)?;
            print(json, &cl.create_venue(&v).await?, |v| {
                format!(
                    "{} ({} seats, {} GA places)",
                    v.venue_id, v.seats, v.ga_capacity
                )
            })
        }
        Cmd::Venue(VenueCmd::Show { venue }) => print(json, &cl.venue(venue).await?, |v| {
            format!("{} {:?} ({} seats)", v.venue_id, v.name, v.seats)
        }),
        Cmd::Event(EventCmd::Create {
            name,
            category,
            description,
        }) => {
            let e = api::CreateEvent {
                name: name.clone(),
                category: category.clone(),
                description: description.clone(),
                media: vec![],
            };
            print(json, &cl.create_event(&e).await?, |e| e.event_id.clone())
        }
        Cmd::Event(EventCmd::Show { event }) => print(json, &cl.event(event).await?, event_line),
        Cmd::Event(EventCmd::List { category, q }) => {
            let query = client::EventQuery {
                category: category.clone(),
                q: q.clone(),
                ..Default::default()
            };
            print(json, &cl.events(&query).await?, |l| {
                l.events
                    .iter()
                    .map(event_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Cmd::Performance(p) => performance(&cl, json, p).await?,
        Cmd::People(c) => people::run(&cl, json, c).await?,
        Cmd::Event(EventCmd::Update {
            event,
            name,
            category,
            description,
        }) => {
            let u = people::EventUpdate {
                name,
                category,
                description,
            };
            people::update_event(&cl, json, event, u).await?
        }
        Cmd::Seats {
            performance,
            section,
        } => print(
            json,
            &cl.seats(performance, section.as_deref()).await?,
            |m| {
                m.seats
                    .iter()
                    .map(|s| format!("{:<16} {}", s.seat, s.state))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        Cmd::Hold {
            performance,
            seats,
            section,
            quantity,
            category,
        } => {
            if seats.is_empty() && section.is_none() {
                bail!("give --seat A:1:1 ... or --section S --quantity N");
            }
            let h = api::CreateHold {
                performance_id: performance.clone(),
                seats: (!seats.is_empty()).then(|| seats.clone()),
                section: section.clone(),
                quantity: *quantity,
                category: category.clone(),
            };
            print(json, &cl.hold(&h).await?, hold_line)
        }
        Cmd::Extend { hold, payment_ref } => {
            print(json, &cl.extend(hold, payment_ref).await?, hold_line)
        }
        Cmd::Release { hold } => print(json, &cl.release(hold).await?, hold_line),
        Cmd::Confirm { hold, payment_ref } => {
            print(json, &cl.confirm(hold, payment_ref).await?, booking_text)
        }
        Cmd::Booking(BookingCmd::Show { booking }) => {
            print(json, &cl.booking(booking).await?, booking_text)
        }
        Cmd::Refund { booking, tickets } => {
            print(json, &cl.refund(booking, tickets.clone()).await?, |r| {
                format!(
                    "refunded {} {} for {}",
                    r.amount_minor,
                    r.currency,
                    r.tickets.join(" ")
                )
            })
        }
        Cmd::Demo { .. } | Cmd::Dev(_) | Cmd::Cluster(_) | Cmd::Health { .. } => {
            unreachable!("dispatched in main")
        }
    }
    Ok(())
}

async fn performance(cl: &Client, json: bool, p: &PerformanceCmd) -> anyhow::Result<()> {
    let (id, status, seed) = match p {
        PerformanceCmd::Create(a) => {
            let spec = performance_spec(a)?;
            let created = cl.create_performance(&a.event, &spec).await?;
            print(json, &created, |p| p.performance_id.clone());
            return Ok(());
        }
        PerformanceCmd::Show { performance } => {
            print(json, &cl.performance(performance).await?, performance_text);
            return Ok(());
        }
        PerformanceCmd::Open(a) => (&a.performance, "on_sale", &a.seed),
        PerformanceCmd::Pause(a) => (&a.performance, "paused", &a.seed),
        PerformanceCmd::Close(a) => (&a.performance, "closed", &a.seed),
        PerformanceCmd::Cancel(a) => (&a.performance, "cancelled", &a.seed),
    };
    let u = api::UpdatePerformance {
        status: status.into(),
        seed: seed.clone(),
    };
    print(json, &cl.update_performance(id, &u).await?, |p| {
        format!("{} is {}", p.performance_id, p.status)
    });
    Ok(())
}

fn time_input(s: &str) -> api::TimeInput {
    match s.parse::<u64>() {
        Ok(ms) => api::TimeInput::UnixMs(ms),
        Err(_) => api::TimeInput::Rfc3339(s.to_string()),
    }
}

fn performance_spec(a: &CreatePerformanceArgs) -> anyhow::Result<api::CreatePerformance> {
    if let Some(file) = &a.file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return serde_json::from_str(&text)
            .context("parsing the performance JSON (api::CreatePerformance)");
    }
    let mut prices = a
        .prices
        .iter()
        .map(|p| parse_price(p, &a.currency))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // With any category named, a price without one is for the default category ("adult"),
    // and the categories are listed in order of first mention.
    let mut categories: Vec<String> = Vec::new();
    if prices.iter().any(|p| p.category.is_some()) {
        for p in &mut prices {
            let c = p.category.get_or_insert_with(|| "adult".into()).clone();
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
    }
    Ok(api::CreatePerformance {
        venue_id: a
            .venue
            .clone()
            .expect("clap requires --venue without --file"),
        starts_at: time_input(a.starts_at.as_deref().expect("clap requires --starts-at")),
        on_sale_at: time_input(&a.on_sale_at),
        sale_ends_at: None,
        hold_ttl_secs: a.hold_ttl_secs,
        payment_grace_secs: None,
        max_seats_per_order: a.max_seats_per_order,
        categories: (!categories.is_empty()).then_some(categories),
        prices,
        waiting_room: None,
    })
}

/// `SECTION[/CATEGORY]=AMOUNT_MINOR`.
fn parse_price(s: &str, currency: &str) -> anyhow::Result<api::Price> {
    let (target, amount) = s
        .split_once('=')
        .with_context(|| format!("--price {s:?}: expected SECTION[/CATEGORY]=AMOUNT_MINOR"))?;
    let (section, category) = match target.split_once('/') {
        Some((s, c)) => (s, Some(c.to_string())),
        None => (target, None),
    };
    let amount_minor = amount
        .parse()
        .with_context(|| format!("--price {s:?}: {amount:?} is not an amount in minor units"))?;
    Ok(api::Price {
        section: section.into(),
        category,
        amount_minor,
        currency: currency.into(),
    })
}

fn status_table(s: &api::ClusterStatus) -> String {
    let mut out = format!(
        "leader: {}   voters: {:?}   learners: {:?}\n{:<4} {:<22} {:<11} {:>5} {:>9} {:>9} {:>5}  {}\n",
        s.leader.map_or("none".into(), |l| l.to_string()),
        s.voters,
        s.learners,
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LAST LOG",
        "APPLIED",
        "LAG",
        "STATE HASH"
    );
    let max_applied = s.nodes.iter().map(|n| n.applied_index).max().unwrap_or(0);
    for n in &s.nodes {
        out += &format!(
            "{:<4} {:<22} {:<11} {:>5} {:>9} {:>9} {:>5}  {}\n",
            n.id,
            n.http_addr,
            n.role,
            n.term,
            n.last_log_index,
            n.applied_index,
            max_applied - n.applied_index,
            n.state_hash
                .get(..16)
                .unwrap_or(n.error.as_deref().unwrap_or(""))
        );
    }
    out.trim_end().to_string()
}

fn venue_from_file(name: &str, path: &Path) -> anyhow::Result<api::CreateVenue> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let mut v: api::CreateVenue =
            serde_json::from_str(&text).context("parsing the venue JSON (api::CreateVenue)")?;
        v.name = name.into();
        return Ok(v);
    }
    venue_from_csv(name, &text)
}

/// `section,row,seats` lines (rows of one section gather in order), `section,,capacity` for
/// general admission; blank lines, `#` comments and a `section,...` header are skipped.
fn venue_from_csv(name: &str, text: &str) -> anyhow::Result<api::CreateVenue> {
    let mut sections: Vec<api::SectionSpec> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("section")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [section, row, count] = f[..] else {
            bail!(
                "line {}: expected `section,row,seats` or `section,,capacity`, got {line:?}",
                i + 1
            )
        };
        let n: u32 = count
            .parse()
            .with_context(|| format!("line {}: {count:?} is not a number", i + 1))?;
        if row.is_empty() {
            sections.push(api::SectionSpec::GeneralAdmission {
                name: section.into(),
                capacity: n,
            });
            continue;
        }
        let row = api::RowSpec {
            label: row.into(),
            seats: n,
        };
        match sections
            .iter_mut()
            .find(|s| matches!(s, api::SectionSpec::Seated { name, .. } if name == section))
        {
            Some(api::SectionSpec::Seated { rows, .. }) => rows.push(row),
            _ => sections.push(api::SectionSpec::Seated {
                name: section.into(),
                rows: vec![row],
            }),
        }
    }
    if sections.is_empty() {
        bail!("the venue file names no section");
    }
    Ok(api::CreateVenue {
        name: name.into(),
        sections,
    })
}

fn event_line(e: &api::Event) -> String {
    format!(
        "{:<8} {:<10} {}  performances: {}",
        e.event_id,
        e.category,
        e.name,
        e.performances.join(" ")
    )
}

fn performance_text(p: &api::Performance) -> String {
    let mut s = format!(
        "{} event={} venue={} status={} starts={} hold_ttl={}s max_seats={}\nsold={} held={} available={} revenue={} {}\n",
        p.performance_id,
        p.event_id,
        p.venue_id,
        p.status,
        p.starts_at,
        p.hold_ttl_secs,
        p.max_seats_per_order,
        p.totals.sold,
        p.totals.held,
        p.totals.available,
        p.revenue_minor,
        p.currency
    );
    s += &format!(
        "  {:<12} {:>8} {:>9} {:>7} {:>7} {:>7}\n",
        "SECTION", "CAPACITY", "AVAILABLE", "HELD", "SOLD", "BLOCKED"
    );
    for sec in &p.sections {
        s += &format!(
            "  {:<12} {:>8} {:>9} {:>7} {:>7} {:>7}\n",
            sec.section, sec.capacity, sec.available, sec.held, sec.sold, sec.blocked
        );
    }
    s.trim_end().to_string()
}

fn hold_line(h: &api::Hold) -> String {
    let what = if h.seats.is_empty() {
        format!("{} places", h.quantity)
    } else {
        h.seats.join(" ")
    };
    format!(
        "{} {} {what} until {} ({} {})",
        h.hold_id, h.state, h.expires_at, h.amount_minor, h.currency
    )
}

fn booking_text(b: &api::Booking) -> String {
    let mut s = format!(
        "{} hold={} ({} {}, refunded {})\n",
        b.booking_id, b.hold_id, b.amount_minor, b.currency, b.refunded_minor
    );
    for t in &b.tickets {
        s += &format!(
            "  {:<8} {:<14} {:<8} {:>8}  {:<10}  {}\n",
            t.ticket_id,
            t.seat.as_deref().unwrap_or(&t.section),
            t.category,
            t.amount_minor,
            t.state,
            t.code
        );
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn csv_venues_gather_rows_and_ga_sections() {
        let v =
            venue_from_csv("Hall", "section,row,seats\nA,1,20\nA,2,18\n\nFloor,,500\n").unwrap();
        assert_eq!(v.sections.len(), 2);
        match &v.sections[0] {
            api::SectionSpec::Seated { name, rows } => {
                assert_eq!((name.as_str(), rows.len(), rows[1].seats), ("A", 2, 18))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &v.sections[1],
            api::SectionSpec::GeneralAdmission { capacity: 500, .. }
        ));
        let err = venue_from_csv("Hall", "A,1\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(venue_from_csv("Hall", "A,1,x\n").is_err());
    }

    #[test]
    fn prices_parse_with_and_without_category() {
        let p = parse_price("A/vip=9000", "EUR").unwrap();
        assert_eq!(
            (p.section.as_str(), p.category.as_deref(), p.amount_minor),
            ("A", Some("vip"), 9000)
        );
        assert_eq!(parse_price("Floor=2000", "GBP").unwrap().currency, "GBP");
        assert!(parse_price("A", "EUR").is_err());
        assert!(parse_price("A=ten", "EUR").is_err());
    }

    #[test]
    fn hold_takes_several_seats_after_one_flag() {
        let cli = Cli::try_parse_from([
            "ticketctl",
            "hold",
            "--performance",
            "p_1",
            "--seat",
            "A:1:1",
            "A:1:2",
            "--seat",
            "A:1:3,A:1:4",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Hold { seats, .. } => assert_eq!(seats, ["A:1:1", "A:1:2", "A:1:3", "A:1:4"]),
            _ => panic!("not a hold"),
        }
    }
}
