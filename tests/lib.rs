//! Shared fixtures for the multi-node tests: a real cluster in a temp dir (killed by pid when
//! the test ends, whatever happens), a catalog with an on-sale performance, buyer keys, and
//! waits on conditions with deadlines.
//!
//! The tests need the `ticketd` binary: `cargo build --bins` (scripts/test.sh does it).

use anyhow::{Context, bail};
use client::dev::{DevCluster, Guard};
use client::{Client, Error};
use std::time::{Duration, Instant};

pub struct TestCluster {
    pub guard: Guard,
    pub _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Start `n` nodes with short Raft timings and a low snapshot threshold.
    pub async fn start(n: u64, extra: &[&str]) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let mut args: Vec<String> = vec![
            "--heartbeat-ms=50".into(),
            "--request-timeout-ms=3000".into(),
            "--log-level=info,openraft=warn".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let c = DevCluster::up(dir.path(), n, args)
            .await
            .context("starting the cluster (did you `cargo build --bins`?)")?;
        Ok(TestCluster {
            guard: Guard(c),
            _dir: dir,
        })
    }

    /// [`TestCluster::start`] with every node on TLS (mutual between nodes).
    pub async fn start_tls(
        n: u64,
        tls: client::dev::DevTls,
        extra: &[&str],
    ) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let mut args: Vec<String> = vec![
            "--heartbeat-ms=50".into(),
            "--request-timeout-ms=3000".into(),
            "--log-level=info,openraft=warn".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let c = DevCluster::up_tls(dir.path(), n, tls, args)
            .await
            .context("starting the TLS cluster (did you `cargo build --bins`?)")?;
        Ok(TestCluster {
            guard: Guard(c),
            _dir: dir,
        })
    }

    pub fn c(&self) -> &DevCluster {
        &self.guard.0
    }

    pub fn admin(&self) -> Client {
        self.c().client()
    }

    /// Wait until every reachable member has applied the same index with the same hash.
    pub async fn converged(&self, deadline: Duration) -> anyhow::Result<api::ClusterStatus> {
        let start = Instant::now();
        let admin = self.admin().with_deadline(Duration::from_secs(3));
        let mut last = String::new();
        while start.elapsed() < deadline {
            let status = admin.status().await;
            if let Err(e) = &status {
                last = format!("status failed: {e}");
            }
            if let Ok(s) = status {
                let live: Vec<_> = s.nodes.iter().filter(|n| n.role != "unreachable").collect();
                let same = live.windows(2).all(|w| {
                    w[0].applied_index == w[1].applied_index && w[0].state_hash == w[1].state_hash
                });
                if same && !live.is_empty() && live.len() == s.nodes.len() {
                    return Ok(s);
                }
                last = format!(
                    "{:?}",
                    s.nodes
                        .iter()
                        .map(|n| (n.id, &n.role, n.applied_index, n.state_hash.get(..8)))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("replicas did not converge within {deadline:?}: {last}")
    }
}

pub struct Catalog {
    pub performance: String,
    pub buyers: Vec<Client>,
    pub service: Client,
}

/// A venue with `rows` rows of 20 seats (section "A") and a GA section, an event, a
/// performance on sale with 60 s holds, and `buyers` buyer keys.
pub async fn catalog(t: &TestCluster, rows: u32, buyers: usize) -> anyhow::Result<Catalog> {
    let admin = t.admin();
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Hall".into(),
            sections: vec![
                api::SectionSpec::Seated {
                    name: "A".into(),
                    rows: (1..=rows)
                        .map(|r| api::RowSpec {
                            label: r.to_string(),
                            seats: 20,
                        })
                        .collect(),
                },
                api::SectionSpec::GeneralAdmission {
                    name: "Floor".into(),
                    capacity: 100,
                },
            ],
        })
        .await?;
    let event = admin
        .create_event(&api::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        })
        .await?;
    let perf = admin
        .create_performance(
            &event.event_id,
            &api::CreatePerformance {
                venue_id: venue.venue_id,
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 60,
                payment_grace_secs: None,
                max_seats_per_order: Some(4),
                categories: None,
                prices: vec![
                    api::Price {
                        section: "A".into(),
                        category: None,
                        amount_minor: 5000,
                        currency: "EUR".into(),
                    },
                    api::Price {
                        section: "Floor".into(),
                        category: None,
                        amount_minor: 2000,
                        currency: "EUR".into(),
                    },
                ],
                waiting_room: None,
            },
        )
        .await?;
    admin
        .update_performance(
            &perf.performance_id,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: None,
            },
        )
        .await?;
    let urls = t.c().http_urls();
    let mut keys = Vec::new();
    for i in 0..buyers {
        let k = admin.create_api_key(&format!("buyer-{i}"), "buyer").await?;
        keys.push(t.c().client_of(urls.clone()).with_key(k.key));
    }
    let s = admin.create_api_key("payments", "service").await?;
    Ok(Catalog {
        performance: perf.performance_id,
        buyers: keys,
        service: t.c().client_of(urls).with_key(s.key),
    })
}

pub fn seats_hold(performance: &str, seats: &[&str]) -> api::CreateHold {
    api::CreateHold {
        performance_id: performance.into(),
        seats: Some(seats.iter().map(|s| s.to_string()).collect()),
        section: None,
        quantity: None,
        category: None,
    }
}

pub fn is_conflict(e: &Error) -> bool {
    e.code() == Some("seat_unavailable")
}

/// Poll `cond` every 50 ms until it holds, or fail after `deadline` naming `what`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > deadline {
            bail!("not within {deadline:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
