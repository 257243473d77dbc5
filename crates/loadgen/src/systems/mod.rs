//! The systems under test. Each sets up the plan's seats, buyers, rooms and read targets its
//! own way and then runs [`Op`]s one request at a time, answering an [`Outcome`].

pub mod etcd;
pub mod postgres;
pub mod redis;
pub mod ticketledger;

use crate::record::Outcome;
use crate::workload::Op;

pub enum System {
    Ticketledger(ticketledger::Ticketledger),
    Etcd(etcd::Etcd),
    Postgres(postgres::Postgres),
    Redis(redis::Redis),
}

impl System {
    pub fn name(&self) -> &'static str {
        match self {
            System::Ticketledger(_) => "ticketledger",
            System::Etcd(_) => "etcd",
            System::Postgres(_) => "postgres",
            System::Redis(_) => "redis",
        }
    }

    pub async fn exec(&self, op: &Op) -> Outcome {
        match self {
            System::Ticketledger(s) => s.exec(op).await,
            System::Etcd(s) => s.exec(op).await,
            System::Postgres(s) => s.exec(op).await,
            System::Redis(s) => s.exec(op).await,
        }
    }

    /// What the result should say about how this system was run (durability, endpoints).
    pub fn notes(&self) -> Vec<String> {
        match self {
            System::Ticketledger(s) => s.notes(),
            System::Etcd(s) => s.notes.clone(),
            System::Postgres(s) => s.notes.clone(),
            System::Redis(s) => s.notes.clone(),
        }
    }
}

/// An HTTP status as a benchmark outcome (409 needs the body: see the ticketledger driver).
pub fn classify_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Ok,
        429 => Outcome::RateLimited,
        503 => Outcome::Unavailable,
        400..=499 => Outcome::ClientError,
        _ => Outcome::ServerError,
    }
}

/// A setup progress line every 10% (setup can take a while: thousands of keys or seats).
pub fn progress_every(what: &str, done: usize, total: usize) {
    let step = (total / 10).max(1);
    if done.is_multiple_of(step) || done == total {
        eprintln!("  {what}: {done}/{total}");
    }
}

/// A run-unique prefix for peers' keys, so a rerun against the same server starts clean.
pub fn run_tag() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("lg{ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify_status(201), Outcome::Ok);
        assert_eq!(classify_status(429), Outcome::RateLimited);
        assert_eq!(classify_status(503), Outcome::Unavailable);
        assert_eq!(classify_status(422), Outcome::ClientError);
        assert_eq!(classify_status(500), Outcome::ServerError);
        assert_eq!(classify_status(504), Outcome::ServerError);
    }
}
