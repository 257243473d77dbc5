//! PostgreSQL, one node, `synchronous_commit=on` and `fsync=on` (checked at connect time).
//! A seat is a row; a hold is one statement that locks the free rows of the hold's seats in
//! seat order and updates them only if the count of free rows equals the seats asked for, so
//! a hold is all or nothing in one round trip and one commit.

use super::run_tag;
use crate::record::Outcome;
use crate::workload::{Op, Plan, Seats};
use anyhow::{Context, bail};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use tokio_postgres::{Client, NoTls, Statement};

/// Connections at most (PostgreSQL's default `max_connections` is 100).
pub const MAX_CONNECTIONS: usize = 90;

const HOLD_SQL: &str = "WITH free AS (
    SELECT seat FROM seats WHERE perf = $1 AND seat = ANY($2) AND state = 'free'
    ORDER BY seat FOR UPDATE)
UPDATE seats SET state = 'held', hold = $3
WHERE perf = $1 AND seat IN (SELECT seat FROM free)
  AND (SELECT count(*) FROM free) = cardinality($2)";
const CONFIRM_SQL: &str = "UPDATE seats SET state = 'sold' WHERE perf = $1 AND seat = ANY($2) AND hold = $3 AND state = 'held'";
const JOIN_SQL: &str = "INSERT INTO queue (room, buyer) VALUES ($1, $2) ON CONFLICT DO NOTHING";
const READ_SQL: &str = "SELECT state FROM seats WHERE perf = $1 AND seat = $2";

struct Conn {
    client: Client,
    hold: Statement,
    confirm: Statement,
    join: Statement,
    read: Statement,
}

pub struct Postgres {
    conns: Vec<Conn>,
    next: AtomicUsize,
    holds: AtomicI64,
    /// The performance number of the read seats (one past the hold performances).
    read_perf: i32,
    read_slots: u32,
    pub notes: Vec<String>,
}

impl Postgres {
    /// Connect `connections` times to `url` (a libpq-style string), create and fill the tables.
    pub async fn setup(url: &str, connections: usize, plan: &Plan) -> anyhow::Result<Self> {
        let n = connections.clamp(1, MAX_CONNECTIONS);
        let mut raw = Vec::new();
        for _ in 0..n {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    eprintln!("postgres connection ended: {e}");
                }
            });
            raw.push(client);
        }
        let durability = check_durability(&raw[0]).await?;
        let read_perf = plan.layout.performances as i32;
        fill(&raw[0], plan, read_perf).await?;
        let mut conns = Vec::new();
        for client in raw {
            conns.push(Conn {
                hold: client.prepare(HOLD_SQL).await?,
                confirm: client.prepare(CONFIRM_SQL).await?,
                join: client.prepare(JOIN_SQL).await?,
                read: client.prepare(READ_SQL).await?,
                client,
            });
        }
        Ok(Postgres {
            conns,
            next: AtomicUsize::new(0),
            holds: AtomicI64::new(1),
            read_perf,
            read_slots: plan.read_slots,
            notes: vec![
                format!("{n} connections, prepared statements, autocommit"),
                format!("durability: {durability}"),
                "hold = one UPDATE of the free rows, all or none (row count checked)".into(),
            ],
        })
    }

    fn conn(&self) -> &Conn {
        &self.conns[self.next.fetch_add(1, Relaxed) % self.conns.len()]
    }

    pub async fn exec(&self, op: &Op) -> Outcome {
        match *op {
            Op::Hold { perf, seats, .. } => self.hold(perf, &seats).await.0,
            Op::HoldConfirm { perf, seats, .. } => match self.hold(perf, &seats).await {
                (Outcome::Ok, hold) => {
                    let c = self.conn();
                    let ids = seat_ids(&seats);
                    let r = c
                        .client
                        .execute(&c.confirm, &[&(perf as i32), &ids, &hold])
                        .await;
                    rows_outcome(r, ids.len())
                }
                (o, _) => o,
            },
            Op::Join { room, buyer } => {
                let c = self.conn();
                match c
                    .client
                    .execute(&c.join, &[&(room as i32), &(buyer as i32)])
                    .await
                {
                    Ok(1) => Outcome::Ok,
                    Ok(_) => Outcome::ClientError,
                    Err(e) => error_outcome(&e),
                }
            }
            Op::Read { slot } => {
                let c = self.conn();
                let seat = (slot % self.read_slots.max(1)) as i32;
                match c.client.query_opt(&c.read, &[&self.read_perf, &seat]).await {
                    Ok(Some(_)) => Outcome::Ok,
                    Ok(None) => Outcome::ClientError,
                    Err(e) => error_outcome(&e),
                }
            }
        }
    }

    async fn hold(&self, perf: u32, seats: &Seats) -> (Outcome, i64) {
        let hold = self.holds.fetch_add(1, Relaxed);
        let c = self.conn();
        let ids = seat_ids(seats);
        let r = c
            .client
            .execute(&c.hold, &[&(perf as i32), &ids, &hold])
            .await;
        (rows_outcome(r, ids.len()), hold)
    }
}

fn seat_ids(seats: &Seats) -> Vec<i32> {
    seats.as_slice().iter().map(|&s| s as i32).collect()
}

fn rows_outcome(r: Result<u64, tokio_postgres::Error>, want: usize) -> Outcome {
    match r {
        Ok(n) if n == want as u64 => Outcome::Ok,
        Ok(0) => Outcome::Conflict,
        // Partly applied would be a broken all-or-nothing statement: never a success.
        Ok(_) => Outcome::ServerError,
        Err(e) => error_outcome(&e),
    }
}

fn error_outcome(e: &tokio_postgres::Error) -> Outcome {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Outcome::Conflict
        }
        Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS => Outcome::Unavailable,
        Some(_) => Outcome::ServerError,
        None if e.is_closed() => Outcome::Transport,
        None => Outcome::Transport,
    }
}

/// Refuse a server that would acknowledge commits before they are on disk.
async fn check_durability(c: &Client) -> anyhow::Result<String> {
    let mut facts = Vec::new();
    for setting in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "server_version",
    ] {
        let row = c
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .with_context(|| format!("SHOW {setting}"))?;
        let v: String = row.get(0);
        if (setting == "fsync" || setting == "synchronous_commit") && v != "on" {
            bail!(
                "PostgreSQL runs with {setting}={v}: the comparison needs it on (safest durability)"
            );
        }
        facts.push(format!("{setting}={v}"));
    }
    Ok(facts.join(" "))
}

/// Fresh tables: every seat of every performance free, plus the read seats held.
async fn fill(c: &Client, plan: &Plan, read_perf: i32) -> anyhow::Result<()> {
    let seats = plan.layout.seats_per_performance() as i64;
    eprintln!(
        "postgres: creating {} seat rows (tag {})",
        plan.layout.seats_total(),
        run_tag()
    );
    c.batch_execute(
        "DROP TABLE IF EXISTS seats; DROP TABLE IF EXISTS queue;
         CREATE TABLE seats (perf int NOT NULL, seat int NOT NULL, state text NOT NULL,
                             hold bigint, PRIMARY KEY (perf, seat));
         CREATE TABLE queue (room int NOT NULL, buyer int NOT NULL,
                             position bigserial NOT NULL, PRIMARY KEY (room, buyer));",
    )
    .await
    .context("creating the tables")?;
    c.execute(
        "INSERT INTO seats SELECT p, s, 'free', NULL
         FROM generate_series(0, $1::int - 1) p, generate_series(0, $2::bigint - 1) s",
        &[&(plan.layout.performances as i32), &seats],
    )
    .await
    .context("filling the seats")?;
    if plan.workload.needs_reads() {
        c.execute(
            "INSERT INTO seats SELECT $1::int, s, 'held', 0 FROM generate_series(0, $2::int - 1) s",
            &[&read_perf, &(plan.read_slots as i32)],
        )
        .await
        .context("creating the read seats")?;
    }
    c.batch_execute("ANALYZE seats; CHECKPOINT;")
        .await
        .context("analyze")?;
    Ok(())
}
