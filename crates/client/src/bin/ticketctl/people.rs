//! `ticketctl` commands for buyers and organizers: accounts, the waiting room, bookings,
//! door check-in, seat blocking, event updates and sales reports.

use anyhow::bail;
use clap::Subcommand;
use client::{BookingQuery, Client};
use std::time::{Duration, Instant};

/// Most bookings `ticketctl bookings` fetches over all its pages.
const BOOKINGS_MAX: usize = 10_000;
/// How often `queue status --wait` asks.
const QUEUE_POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand)]
pub enum PeopleCmd {
    /// Create a buyer account; prints `export TICKETLEDGER_KEY=<token>` (eval it).
    Signup {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// Better given as TICKETLEDGER_PASSWORD than on the command line.
        #[arg(long, env = "TICKETLEDGER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Log in; prints `export TICKETLEDGER_KEY=<token>` (eval it).
    Login {
        #[arg(long)]
        email: String,
        #[arg(long, env = "TICKETLEDGER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// The waiting room of a performance (buyer).
    #[command(subcommand)]
    Queue(QueueCmd),
    /// List bookings: your own; with a service or operator key, a buyer's or a performance's
    /// (or every booking).
    Bookings {
        /// An account (u_…) or API key (k_…) id.
        #[arg(long, conflicts_with = "performance")]
        buyer: Option<String>,
        #[arg(long)]
        performance: Option<String>,
        /// Stop after this many bookings (at most 10000).
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Check a ticket in at the door by its code (organizer, service or operator).
    CheckIn {
        #[arg(long)]
        performance: String,
        code: String,
    },
    /// Block seats (house seats, broken seats), or unblock them with --unblock.
    Block {
        #[arg(long)]
        performance: String,
        #[arg(long = "seat", num_args = 1.., value_delimiter = ',', required = true)]
        seats: Vec<String>,
        #[arg(long)]
        unblock: bool,
    },
    /// The sales report of a performance (its organizer or an operator).
    Report {
        performance: String,
        /// CSV instead of a table (or JSON with --json).
        #[arg(long)]
        csv: bool,
        /// Width of the over-time buckets.
        #[arg(long, default_value_t = 3600)]
        bucket_secs: u64,
    },
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Join a performance's waiting room.
    Join { performance: String },
    /// Your place in the queue; --wait follows it until admitted (or expired/closed).
    Status {
        queue: String,
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
}

/// The fields of `ticketctl event update`.
pub struct EventUpdate<'a> {
    pub name: &'a Option<String>,
    pub category: &'a Option<String>,
    pub description: &'a Option<String>,
}

pub async fn update_event(
    cl: &Client,
    json: bool,
    event: &str,
    u: EventUpdate<'_>,
) -> anyhow::Result<()> {
    let body = api::UpdateEvent {
        name: u.name.clone(),
        category: u.category.clone(),
        description: u.description.clone(),
        media: None,
    };
    if body == api::UpdateEvent::default() {
        bail!("give at least one of --name, --category, --description");
    }
    let e = cl.update_event(event, &body).await?;
    super::print(json, &e, super::event_line);
    Ok(())
}

pub async fn run(cl: &Client, json: bool, cmd: &PeopleCmd) -> anyhow::Result<()> {
    match cmd {
        PeopleCmd::Signup {
            email,
            name,
            password,
        } => {
            let s = cl.signup(email, password, name).await?;
            super::print(json, &s, session_text);
        }
        PeopleCmd::Login { email, password } => {
            let s = cl.login(email, password).await?;
            super::print(json, &s, session_text);
        }
        PeopleCmd::Queue(QueueCmd::Join { performance }) => {
            let q = cl.join_queue(performance).await?;
            super::print(json, &q, |q| match q.position {
                Some(p) => format!("{} position={p}", q.queue_id),
                None => format!(
                    "{} in the pre-queue (shuffled when the sale opens)",
                    q.queue_id
                ),
            });
        }
        PeopleCmd::Queue(QueueCmd::Status {
            queue,
            wait,
            wait_secs,
        }) => {
            let q = if *wait {
                wait_for_admission(cl, queue, Duration::from_secs(*wait_secs)).await?
            } else {
                cl.queue(queue).await?
            };
            super::print(json, &q, queue_line);
        }
        PeopleCmd::Bookings {
            buyer,
            performance,
            max,
        } => {
            if *max == 0 || *max > BOOKINGS_MAX {
                bail!("--max must be 1..={BOOKINGS_MAX}");
            }
            let list = all_bookings(cl, buyer, performance, *max).await?;
            super::print(json, &list, |l| {
                if l.bookings.is_empty() {
                    return "no bookings".into();
                }
                let mut s: Vec<String> = l.bookings.iter().map(super::booking_text).collect();
                if l.next.is_some() {
                    s.push(format!("(stopped after {max}; more exist)"));
                }
                s.join("\n")
            });
        }
        PeopleCmd::CheckIn { performance, code } => {
            let t = cl.check_in(performance, code).await?;
            super::print(json, &t, |t| {
                format!(
                    "checked in {} of {} ({} {})",
                    t.ticket_id,
                    t.booking_id,
                    t.seat.as_deref().unwrap_or(&t.section),
                    t.category
                )
            });
        }
        PeopleCmd::Block {
            performance,
            seats,
            unblock,
        } => {
            let r = cl.block_seats(performance, seats.clone(), !unblock).await?;
            let verb = if *unblock { "unblocked" } else { "blocked" };
            super::print(json, &r, |r| format!("{verb} {} seats", r.changed));
        }
        PeopleCmd::Report {
            performance,
            csv,
            bucket_secs,
        } => {
            if *csv {
                print!(
                    "{}",
                    cl.sales_report_csv(performance, Some(*bucket_secs)).await?
                );
            } else {
                let r = cl.sales_report(performance, Some(*bucket_secs)).await?;
                super::print(json, &r, report_text);
            }
        }
    }
    Ok(())
}

/// Every page, up to `max` bookings.
async fn all_bookings(
    cl: &Client,
    buyer: &Option<String>,
    performance: &Option<String>,
    max: usize,
) -> anyhow::Result<api::BookingList> {
    let mut out = api::BookingList {
        bookings: Vec::new(),
        next: None,
    };
    let mut after = None;
    loop {
        let left = max - out.bookings.len();
        let page = cl
            .bookings(&BookingQuery {
                buyer: buyer.clone(),
                performance: performance.clone(),
                after: after.clone(),
                limit: Some(left.min(200) as u32),
            })
            .await?;
        out.bookings.extend(page.bookings);
        out.next = page.next.clone();
        match page.next {
            Some(n) if out.bookings.len() < max => after = Some(n),
            _ => return Ok(out),
        }
    }
}

/// Poll the entry until it is admitted, expired or closed, printing each change of position
/// to stderr.
async fn wait_for_admission(
    cl: &Client,
    queue: &str,
    deadline: Duration,
) -> anyhow::Result<api::QueueStatus> {
    let start = Instant::now();
    let mut last: Option<(String, Option<u64>)> = None;
    loop {
        let q = cl.queue(queue).await?;
        if q.state != "waiting" && q.state != "pre_queue" {
            return Ok(q);
        }
        let now = (q.state.clone(), q.position);
        if last.as_ref() != Some(&now) {
            eprintln!("{} after {}s", queue_line(&q), start.elapsed().as_secs());
            last = Some(now);
        }
        if start.elapsed() >= deadline {
            bail!(
                "{queue} still {} after {}s (--wait-secs)",
                q.state,
                deadline.as_secs()
            );
        }
        tokio::time::sleep(QUEUE_POLL).await;
    }
}

fn session_text(s: &api::Session) -> String {
    format!(
        "# {} until {}\nexport TICKETLEDGER_KEY={}",
        s.user_id, s.expires_at, s.token
    )
}

fn queue_line(q: &api::QueueStatus) -> String {
    let mut s = format!("{} {}", q.queue_id, q.state);
    if let Some(p) = q.position {
        s += &format!(" position={p}");
    }
    if let Some(u) = &q.admitted_until {
        s += &format!(" admitted_until={u}");
    }
    s
}

fn report_text(r: &api::SalesReport) -> String {
    let t = &r.totals;
    let mut s = format!(
        "{} ({}) as of {}\ncapacity={} sold={} held={} available={} blocked={}\nbookings={} tickets sold={} refunded={} checked in={} revenue={} {} refunded={}\n",
        r.performance_id,
        r.status,
        r.as_of,
        t.capacity,
        t.sold,
        t.held,
        t.available,
        t.blocked,
        r.bookings,
        r.tickets_sold,
        r.tickets_refunded,
        r.tickets_checked_in,
        r.revenue_minor,
        r.currency,
        r.refunded_minor
    );
    s += &format!(
        "  {:<12} {:>8} {:>12} {:>8} {:>12}\n",
        "CATEGORY", "SOLD", "REVENUE", "REFUNDED", "REFUNDED_AMT"
    );
    for c in &r.by_category {
        s += &format!(
            "  {:<12} {:>8} {:>12} {:>8} {:>12}\n",
            c.category, c.tickets_sold, c.revenue_minor, c.tickets_refunded, c.refunded_minor
        );
    }
    s += &format!(
        "  {:<22} {:>8} {:>8} {:>12}\n",
        "FROM", "BOOKINGS", "TICKETS", "REVENUE"
    );
    for b in &r.over_time {
        s += &format!(
            "  {:<22} {:>8} {:>8} {:>12}\n",
            b.starts_at, b.bookings, b.tickets_sold, b.revenue_minor
        );
    }
    s.trim_end().to_string()
}
