//! The demo's payment side: the simulated provider and the payments service as real child
//! processes (the `payments` binary next to `ticketctl`), and the calls buyers make to them.

use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed (by pid, via its handle) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `payments` binary: `$PAYMENTS_BIN`, else next to this executable, else on PATH.
pub fn find_payments() -> anyhow::Result<PathBuf> {
    crate::dev::find_binary("payments", "PAYMENTS_BIN")
}

/// Start `payments <args>` and wait for its `listening on <url>` line (stderr to `log`).
pub fn spawn(
    name: &'static str,
    args: &[String],
    log: &std::path::Path,
) -> anyhow::Result<(ChildGuard, String)> {
    let bin = find_payments()?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --bins`, or set PAYMENTS_BIN)",
                bin.display()
            )
        })?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Drain the rest so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).with_context(|| {
        format!(
            "{name} did not say where it listens within 15 s (its log: {})",
            log.display()
        )
    })?;
    let url = line
        .strip_prefix("listening on ")
        .with_context(|| format!("{name} printed {line:?}"))?
        .trim()
        .to_string();
    Ok((guard, url))
}

/// What a buyer's checkout through the payments service came to.
pub enum Paid {
    Booked(String),
    /// Captured after the hold ended and its seats were gone: refunded at once.
    RefundedLate,
    Declined,
    /// The hold had ended before the checkout started: nothing charged.
    TooLate,
    /// Left to the payments service's resume.
    Pending,
    Failed(String),
}

pub async fn checkout(
    http: &reqwest::Client,
    payments: &str,
    token: &str,
    hold_id: &str,
    source: &str,
) -> Paid {
    use api::payments::{CheckoutOutcome, CheckoutResult, StartCheckout};
    // A 503 (the service shedding load) is retried: paying for the same hold again is
    // the same checkout.
    let mut attempt = 0u32;
    let resp = loop {
        let sent = http
            .post(format!("{payments}/v1/checkouts"))
            .bearer_auth(token)
            .json(&StartCheckout {
                hold_id: hold_id.into(),
                source: source.into(),
            })
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 503 && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            Ok(r) => break r,
            Err(e) => return Paid::Failed(format!("payments: {e}")),
        }
    };
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<CheckoutResult>(&body) {
        Ok(r) => match r.outcome {
            CheckoutOutcome::Booked => match r.booking_id {
                Some(b) => Paid::Booked(b),
                None => Paid::Failed("booked without a booking id".into()),
            },
            CheckoutOutcome::Refunded => Paid::RefundedLate,
            CheckoutOutcome::Declined => Paid::Declined,
            CheckoutOutcome::Expired => Paid::TooLate,
            CheckoutOutcome::Pending => Paid::Pending,
        },
        Err(_) => match serde_json::from_slice::<api::Problem>(&body) {
            Ok(p) => Paid::Failed(p.code),
            Err(_) => Paid::Failed(format!("payments http {status}")),
        },
    }
}

/// Refund a whole booking through the payments service (ledger and provider).
pub async fn refund(
    http: &reqwest::Client,
    payments: &str,
    token: &str,
    booking_id: &str,
) -> Result<(), String> {
    let r = http
        .post(format!("{payments}/v1/refunds"))
        .bearer_auth(token)
        .json(&api::payments::RefundBooking {
            booking_id: booking_id.into(),
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("payments: {e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        Err(serde_json::from_slice::<api::Problem>(&body)
            .map(|p| p.code)
            .unwrap_or_else(|_| format!("payments http {status}")))
    }
}

/// The provider's book (every charge and the money totals).
pub async fn provider_book(
    http: &reqwest::Client,
    sim: &str,
) -> anyhow::Result<api::payments::ProviderBook> {
    Ok(http
        .get(format!("{sim}/v1/charges"))
        .timeout(Duration::from_secs(60))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The payments service's outcome counters.
pub async fn service_stats(http: &reqwest::Client, payments: &str) -> serde_json::Value {
    match http.get(format!("{payments}/v1/stats")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Wait for a pending checkout to settle (the provider's callback, or the service's resume),
/// asking the payments service once a second, for at most `deadline`.
pub async fn wait_settled(
    http: &reqwest::Client,
    payments: &str,
    token: &str,
    hold_id: &str,
    deadline: Duration,
) -> Paid {
    use api::payments::{CheckoutOutcome, CheckoutResult};
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = http
            .get(format!("{payments}/v1/checkouts/{hold_id}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        if let Ok(r) = r
            && let Ok(c) = r.json::<CheckoutResult>().await
        {
            match (c.outcome, c.booking_id) {
                (CheckoutOutcome::Booked, Some(b)) => return Paid::Booked(b),
                (CheckoutOutcome::Refunded, _) => return Paid::RefundedLate,
                (CheckoutOutcome::Declined, _) => return Paid::Declined,
                (CheckoutOutcome::Expired, _) => return Paid::TooLate,
                _ => {}
            }
        }
        if start.elapsed() > deadline {
            return Paid::Pending;
        }
    }
}

/// Follow the change feed over gRPC from `from` and keep the changes a waiting-room audit
/// needs (performance creation, seed reveal, joins, admissions). Ends when told the last index
/// to wait for (`until`) and the stream has been quiet for 2 s past it, or on a feed error.
pub fn watch_room_feed(
    grpc: crate::grpc::GrpcClient,
    from: u64,
    mut until: tokio::sync::watch::Receiver<Option<u64>>,
) -> tokio::task::JoinHandle<Result<Vec<api::feed::FeedChange>, String>> {
    tokio::spawn(async move {
        let mut w = grpc.watch(from);
        let mut kept = Vec::new();
        loop {
            let target = *until.borrow();
            if let Some(t) = target
                && w.next_index() > t
            {
                return Ok(kept);
            }
            let quiet = if target.is_some() {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                ev = w.next() => match ev {
                    Ok(Some(ev)) => {
                        for c in ev.changes {
                            if matches!(
                                c.r#type.as_str(),
                                "performance_created" | "seed_revealed" | "queue_joined" | "queue_admitted"
                            ) {
                                let some = |s: String| (!s.is_empty()).then_some(s);
                                kept.push(api::feed::FeedChange {
                                    kind: c.r#type,
                                    performance_id: some(c.performance_id),
                                    queue_id: some(c.queue_id),
                                    seed: some(c.seed),
                                    count: Some(c.count),
                                    prequeue: Some(c.prequeue),
                                    ..api::feed::FeedChange::default()
                                });
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                },
                _ = until.changed() => {}
                _ = tokio::time::sleep(quiet) => {
                    if target.is_some() {
                        return Ok(kept);
                    }
                }
            }
        }
    })
}
