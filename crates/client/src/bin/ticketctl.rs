//! `ticketctl`: run a local cluster, administer a cluster, and drive an on-sale from the shell.
//! Human tables by default, `--json` for scripts.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::Client;
use client::dev::DevCluster;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ticketctl",
    version,
    about = "Operate a ticketledger cluster and its on-sales."
)]
struct Cli {
    /// Node URLs (any node will do; give several for failover).
    #[arg(
        long = "url",
        env = "TICKETLEDGER_URL",
        value_delimiter = ',',
        global = true
    )]
    urls: Vec<String>,
    /// API key (Bearer).
    #[arg(long, env = "TICKETLEDGER_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local 3-node cluster and an on-sale you watch sell out, with checks at the end.
    Demo {
        /// Seats in the venue (up to 100000).
        #[arg(long, default_value_t = 2_000)]
        seats: u32,
        /// Concurrent simulated buyers.
        #[arg(long, default_value_t = 200)]
        buyers: usize,
        /// Kill the leader with SIGKILL when half is sold, restart it at the end.
        #[arg(long)]
        kill_leader: bool,
        /// Where the cluster's data goes (default: a temporary directory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A local cluster of real ticketd processes.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Cluster administration (operator key).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create an API key: `api-key --name payments --role service`.
    ApiKey {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
    },
    /// Create a venue from a JSON (`api::CreateVenue`) or CSV file (`section,row,seats` or `section,,capacity`).
    Venue {
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Create an event.
    Event {
        #[arg(long)]
        name: String,
        #[arg(long)]
        category: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Create a performance from a JSON file (`api::CreatePerformance`).
    Performance {
        #[arg(long)]
        event: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Show a performance and its availability.
    Show { performance: String },
    /// Open, pause, close or cancel a sale.
    Sale {
        performance: String,
        /// on_sale, paused, closed or cancelled.
        status: String,
        #[arg(long)]
        seed: Option<String>,
    },
    /// The seat map of a performance.
    Seats { performance: String },
    /// Hold seats (`--seat A:1:1 --seat A:1:2`) or GA places (`--section Floor --quantity 2`).
    Hold {
        #[arg(long)]
        performance: String,
        #[arg(long = "seat")]
        seats: Vec<String>,
        #[arg(long)]
        section: Option<String>,
        #[arg(long)]
        quantity: Option<u16>,
        #[arg(long)]
        category: Option<String>,
    },
    /// Release a hold.
    Release { hold: String },
    /// Confirm a hold into a booking (service key).
    Confirm {
        hold: String,
        #[arg(long)]
        payment_ref: String,
    },
    /// Show a booking.
    Booking { booking: String },
    /// Refund a booking, or some of its tickets (`--ticket t_9`).
    Refund {
        booking: String,
        #[arg(long = "ticket")]
        tickets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Start N nodes under DIR, initialize the cluster, print each node and the admin key.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = "./ticketledger-dev")]
        dir: PathBuf,
        /// Accepted for compatibility; one build profile serves everything.
        #[arg(long)]
        release: bool,
        /// Extra flags for every ticketd (e.g. `--ticketd-arg=--snapshot-every=500`).
        #[arg(long = "ticketd-arg", allow_hyphen_values = true)]
        ticketd_args: Vec<String>,
    },
    /// Stop every node (TERM, then KILL after 10 s).
    Down {
        #[arg(long, default_value = "./ticketledger-dev")]
        dir: PathBuf,
    },
    /// Signal one node: KILL, STOP, CONT or TERM.
    Kill {
        #[arg(long, default_value = "./ticketledger-dev")]
        dir: PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Restart one node on its data.
    Start {
        #[arg(long, default_value = "./ticketledger-dev")]
        dir: PathBuf,
        #[arg(long)]
        node: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    Init {
        #[arg(long)]
        admin_key: String,
    },
    Status,
    AddLearner {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        grpc_addr: String,
        #[arg(long)]
        http_addr: String,
    },
    Promote {
        #[arg(long)]
        id: u64,
    },
    Remove {
        #[arg(long)]
        id: u64,
    },
    TransferLeader {
        #[arg(long)]
        to: u64,
    },
    Snapshot,
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

fn print<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("serializes"));
    } else {
        println!("{}", human(v));
    }
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

fn venue_from_file(name: &str, path: &PathBuf) -> anyhow::Result<api::CreateVenue> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text).context("parsing the venue JSON (api::CreateVenue)");
    }
    let mut sections: Vec<api::SectionSpec> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("section")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [section, row, count] = f[..] else {
            bail!(
                "line {}: expected `section,row,seats` or `section,,capacity`",
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
    Ok(api::CreateVenue {
        name: name.into(),
        sections,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = || -> anyhow::Result<Client> {
        if cli.urls.is_empty() {
            bail!("give --url (or TICKETLEDGER_URL) with one or more node addresses");
        }
        let c = Client::new(cli.urls.clone());
        Ok(match &cli.key {
            Some(k) => c.with_key(k.clone()),
            None => c,
        })
    };
    let json = cli.json;
    match &cli.cmd {
        Cmd::Demo {
            seats,
            buyers,
            kill_leader,
            dir,
        } => {
            client::demo::run(client::demo::DemoOptions {
                seats: *seats,
                buyers: *buyers,
                kill_leader: *kill_leader,
                dir: dir.clone(),
            })
            .await?
        }
        Cmd::Dev(d) => match d {
            DevCmd::Up {
                nodes,
                dir,
                release,
                ticketd_args,
            } => {
                if *release {
                    eprintln!(
                        "note: --release is ignored; every command uses the one build profile"
                    );
                }
                eprintln!("starting {nodes} ticketd processes under {}", dir.display());
                let c = DevCluster::up(dir, *nodes, ticketd_args.clone()).await?;
                for n in &c.nodes {
                    println!("node {} http={} grpc={}", n.id, n.http, n.grpc);
                }
                println!("admin_key={}", c.admin_key);
            }
            DevCmd::Down { dir } => {
                DevCluster::load(dir)?.down()?;
                eprintln!("stopped");
            }
            DevCmd::Kill { dir, node, signal } => DevCluster::load(dir)?.signal(*node, signal)?,
            DevCmd::Start { dir, node } => {
                let c = DevCluster::load(dir)?;
                let pid = c.start(*node)?;
                c.wait_healthy(*node, Duration::from_secs(30)).await?;
                println!("node {node} started (pid {pid})");
            }
        },
        Cmd::Cluster(c) => {
            let cl = client()?;
            match c {
                ClusterCmd::Init { admin_key } => {
                    print(json, &cl.init(admin_key).await?, status_table)
                }
                ClusterCmd::Status => print(json, &cl.status().await?, status_table),
                ClusterCmd::AddLearner {
                    id,
                    grpc_addr,
                    http_addr,
                } => {
                    eprintln!("adding node {id}; this returns once it has caught up");
                    print(
                        json,
                        &cl.add_learner(*id, grpc_addr, http_addr).await?,
                        status_table,
                    )
                }
                ClusterCmd::Promote { id } => {
                    let mut voters = cl.status().await?.voters;
                    if !voters.contains(id) {
                        voters.push(*id);
                    }
                    print(json, &cl.change_membership(voters).await?, status_table)
                }
                ClusterCmd::Remove { id } => {
                    let voters: Vec<u64> = cl
                        .status()
                        .await?
                        .voters
                        .into_iter()
                        .filter(|v| v != id)
                        .collect();
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
                    std::fs::write(out, &bytes)
                        .with_context(|| format!("writing {}", out.display()))?;
                    println!("wrote {} bytes to {}", bytes.len(), out.display());
                }
                ClusterCmd::Restore { from } => {
                    let bytes = std::fs::read(from)
                        .with_context(|| format!("reading {}", from.display()))?;
                    print(json, &cl.restore(bytes).await?, status_table)
                }
            }
        }
        Cmd::ApiKey { name, role } => {
            print(json, &client()?.create_api_key(name, role).await?, |k| {
                format!("key_id={}\nkey={}", k.key_id, k.key)
            })
        }
        Cmd::Venue { name, file } => {
            let v = venue_from_file(name, file)?;
            print(json, &client()?.create_venue(&v).await?, |v| {
                format!(
                    "{} ({} seats, {} GA places)",
                    v.venue_id, v.seats, v.ga_capacity
                )
            })
        }
        Cmd::Event {
            name,
            category,
            description,
        } => {
            let e = api::CreateEvent {
                name: name.clone(),
                category: category.clone(),
                description: description.clone(),
                media: vec![],
            };
            print(json, &client()?.create_event(&e).await?, |e| {
                e.event_id.clone()
            })
        }
        Cmd::Performance { event, file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let p: api::CreatePerformance =
                serde_json::from_str(&text).context("parsing the performance JSON")?;
            print(json, &client()?.create_performance(event, &p).await?, |p| {
                p.performance_id.clone()
            })
        }
        Cmd::Show { performance } => print(json, &client()?.performance(performance).await?, |p| {
            let mut s = format!(
                "{} status={} sold={} held={} available={} revenue={} {}\n",
                p.performance_id,
                p.status,
                p.totals.sold,
                p.totals.held,
                p.totals.available,
                p.revenue_minor,
                p.currency
            );
            for sec in &p.sections {
                s += &format!(
                    "  {:<12} capacity {:>7}  available {:>7}  held {:>7}  sold {:>7}\n",
                    sec.section, sec.capacity, sec.available, sec.held, sec.sold
                );
            }
            s.trim_end().to_string()
        }),
        Cmd::Sale {
            performance,
            status,
            seed,
        } => {
            let u = api::UpdatePerformance {
                status: status.clone(),
                seed: seed.clone(),
            };
            print(
                json,
                &client()?.update_performance(performance, &u).await?,
                |p| format!("{} is {}", p.performance_id, p.status),
            )
        }
        Cmd::Seats { performance } => print(json, &client()?.seats(performance).await?, |m| {
            m.seats
                .iter()
                .map(|s| format!("{:<16} {}", s.seat, s.state))
                .collect::<Vec<_>>()
                .join("\n")
        }),
        Cmd::Hold {
            performance,
            seats,
            section,
            quantity,
            category,
        } => {
            let h = api::CreateHold {
                performance_id: performance.clone(),
                seats: (!seats.is_empty()).then(|| seats.clone()),
                section: section.clone(),
                quantity: *quantity,
                category: category.clone(),
            };
            print(json, &client()?.hold(&h).await?, |h| {
                format!(
                    "{} {:?} x{} until {} ({} {})",
                    h.hold_id, h.seats, h.quantity, h.expires_at, h.amount_minor, h.currency
                )
            })
        }
        Cmd::Release { hold } => print(json, &client()?.release(hold).await?, |h| {
            format!("{} {}", h.hold_id, h.state)
        }),
        Cmd::Confirm { hold, payment_ref } => print(
            json,
            &client()?.confirm(hold, payment_ref).await?,
            booking_text,
        ),
        Cmd::Booking { booking } => print(json, &client()?.booking(booking).await?, booking_text),
        Cmd::Refund { booking, tickets } => print(
            json,
            &client()?.refund(booking, tickets.clone()).await?,
            |r| {
                format!(
                    "refunded {} {} for {:?}",
                    r.amount_minor, r.currency, r.tickets
                )
            },
        ),
    }
    Ok(())
}

fn booking_text(b: &api::Booking) -> String {
    let mut s = format!(
        "{} ({} {}, refunded {})\n",
        b.booking_id, b.amount_minor, b.currency, b.refunded_minor
    );
    for t in &b.tickets {
        s += &format!(
            "  {:<8} {:<14} {:<8} {:>8}  {}  {}\n",
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
