//! The payments service against a real 3-node cluster and the simulated provider (its own
//! HTTP server on a real socket): checkouts that book, are declined, time out at the
//! provider, or pay after their hold expired (booked on the same seats if free, else refunded
//! at once); duplicate callbacks; and a `kill -9` of the payments process mid-checkout after
//! which a restarted process finishes every open checkout. After each: no booking without a
//! capture, no capture left without a booking or a refund.
//!
//! Needs `cargo build --bins` (ticketd and payments).

use anyhow::{Context, bail, ensure};
use api::payments::{ChargeStatus, CheckoutOutcome, CheckoutResult, ProviderBook, StartCheckout};
use client::Client;
use cluster_tests::{TestCluster, seats_hold, wait_until};
use payments::sim::SimConfig;
use payments::{HttpProvider, Payments};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Serve a router on a free loopback port; the server lives as long as the runtime.
async fn serve(router: axum::Router) -> anyhow::Result<String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, router).await });
    Ok(format!("http://{addr}"))
}

struct Sale {
    admin: Client,
    urls: Vec<String>,
    performance: String,
    service_key: String,
}

/// A venue with one section "A" (rows of 10), a performance on sale with the given hold TTL
/// and payment grace, and a service key.
async fn sale(t: &TestCluster, rows: u32, ttl_secs: u64, grace_secs: u64) -> anyhow::Result<Sale> {
    let admin = t.admin();
    let venue = admin
        .create_venue(&api::CreateVenue {
            name: "Hall".into(),
            sections: vec![api::SectionSpec::Seated {
                name: "A".into(),
                rows: (1..=rows)
                    .map(|r| api::RowSpec {
                        label: r.to_string(),
                        seats: 10,
                    })
                    .collect(),
            }],
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
                hold_ttl_secs: ttl_secs,
                payment_grace_secs: Some(grace_secs),
                max_seats_per_order: Some(4),
                categories: None,
                prices: vec![api::Price {
                    section: "A".into(),
                    category: None,
                    amount_minor: 5000,
                    currency: "EUR".into(),
                }],
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
    let service_key = admin.create_api_key("payments", "service").await?.key;
    Ok(Sale {
        urls: t.c().nodes.iter().map(|n| n.http.clone()).collect(),
        admin,
        performance: perf.performance_id,
        service_key,
    })
}

impl Sale {
    async fn buyer(&self) -> anyhow::Result<Client> {
        let k = self.admin.create_api_key("buyer", "buyer").await?;
        Ok(Client::new(self.urls.clone()).with_key(k.key))
    }
    fn service(&self) -> Client {
        Client::new(self.urls.clone()).with_key(self.service_key.clone())
    }
}

/// Pay for a hold through the payments service's HTTP API with the buyer's token.
async fn pay(
    http: &reqwest::Client,
    payments_url: &str,
    token: &str,
    hold_id: &str,
    source: &str,
) -> anyhow::Result<(u16, Option<CheckoutResult>)> {
    let r = http
        .post(format!("{payments_url}/v1/checkouts"))
        .bearer_auth(token)
        .json(&StartCheckout {
            hold_id: hold_id.into(),
            source: source.into(),
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.bytes().await?;
    Ok((status, serde_json::from_slice(&body).ok()))
}

async fn provider_book(http: &reqwest::Client, sim: &str) -> anyhow::Result<ProviderBook> {
    Ok(http
        .get(format!("{sim}/v1/charges"))
        .send()
        .await?
        .json()
        .await?)
}

/// The money check: every charge the provider knows against the ledger's checkout of its
/// hold. Captured (and kept) ⇔ a booking for that amount; refunded or never charged ⇒ no
/// booking; and no checkout of ours is still open. Returns (charges, booked) counts.
async fn check_money(
    service: &Client,
    book: &ProviderBook,
    holds: &BTreeSet<String>,
) -> anyhow::Result<(usize, usize)> {
    let charges: BTreeMap<&str, _> = book
        .charges
        .iter()
        .map(|c| (c.idempotency_key.as_str(), c))
        .collect();
    let mut booked = 0;
    for hold_id in holds {
        let pref = payments::payment_ref(hold_id);
        let charge = charges.get(pref.as_str());
        let checkout = match service.checkout(hold_id).await {
            Ok(c) => Some(c),
            Err(e) if e.code() == Some("not_found") => None,
            Err(e) => return Err(e).context("reading a checkout"),
        };
        let hold = service.get_hold(hold_id).await?;
        let state = checkout.as_ref().map(|c| c.state);
        match (charge.map(|c| c.status), state) {
            (Some(ChargeStatus::Captured), Some(api::CheckoutState::Booked)) => {
                let c = checkout.expect("some");
                let b = service
                    .booking(
                        c.booking_id
                            .as_deref()
                            .context("booked without a booking id")?,
                    )
                    .await?;
                ensure!(
                    b.amount_minor == charge.expect("some").amount_minor,
                    "booking {} of {} for a capture of {}",
                    b.booking_id,
                    b.amount_minor,
                    charge.expect("some").amount_minor
                );
                ensure!(
                    hold.state == "confirmed",
                    "hold {hold_id} booked but {}",
                    hold.state
                );
                booked += 1;
            }
            (Some(ChargeStatus::Refunded), Some(api::CheckoutState::Refunded))
            | (
                Some(ChargeStatus::Declined | ChargeStatus::Cancelled) | None,
                Some(api::CheckoutState::Failed) | None,
            ) => {
                ensure!(
                    hold.state != "confirmed",
                    "hold {hold_id} confirmed without a kept capture"
                );
            }
            (money, ledger) => {
                bail!("hold {hold_id}: provider says {money:?}, ledger checkout {ledger:?}")
            }
        }
    }
    let open = service.checkouts(true, None, 100).await?;
    ensure!(
        open.checkouts.is_empty(),
        "checkouts still open: {:?}",
        open.checkouts
    );
    Ok((charges.len(), booked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkouts_book_decline_time_out_and_pay_late_by_the_written_rule() -> anyhow::Result<()> {
    let t = TestCluster::start(3, &[]).await?;
    // Holds of 10 s (the shortest the ledger allows) with 1 s of payment grace.
    let s = sale(&t, 4, 10, 1).await?;
    let secret = "test-secret".to_string();
    let sim = serve(payments::sim::router(SimConfig {
        latency_ms: 10,
        jitter_ms: 10,
        hang_ms: 5_000,
        duplicate_callbacks: 2,
        callback_secret: secret.clone(),
        ..SimConfig::default()
    }))
    .await?;
    // The service, its HTTP API on a real socket (the provider's callbacks land there).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let purl = format!("http://{}", l.local_addr()?);
    let svc = Arc::new(Payments::new(
        s.service(),
        HttpProvider::new(sim.clone(), Duration::from_millis(800)),
        Some(format!("{purl}/v1/provider/callbacks")),
    ));
    let router = payments::http::router(svc.clone(), client::Client::new(s.urls.clone()), secret);
    tokio::spawn(async move { axum::serve(l, router).await });
    let http = reqwest::Client::new();
    let mut holds = BTreeSet::new();
    let hold = |b: Client, seats: &'static [&'static str]| {
        let p = s.performance.clone();
        async move { b.hold(&seats_hold(&p, seats)).await }
    };

    // Booked.
    let a = s.buyer().await?;
    let ha = hold(a.clone(), &["A:1:1", "A:1:2"]).await?;
    holds.insert(ha.hold_id.clone());
    let token = |c: &Client| c.key().expect("a key").to_string();
    let (st, r) = pay(&http, &purl, &token(&a), &ha.hold_id, "tok_ok").await?;
    let r = r.context("a checkout result")?;
    assert_eq!((st, r.outcome), (200, CheckoutOutcome::Booked), "{r:?}");
    let bk = s
        .service()
        .booking(r.booking_id.as_deref().expect("booked"))
        .await?;
    assert_eq!(bk.amount_minor, 10_000);

    // Another buyer cannot pay for (or see) that hold: the ledger's authorization answers.
    let intruder = s.buyer().await?;
    let (st, _) = pay(&http, &purl, &token(&intruder), &ha.hold_id, "tok_ok").await?;
    assert!(
        st == 403 || st == 404,
        "another buyer's checkout answered {st}"
    );
    let (st, _) = pay(&http, &purl, "not-a-token", &ha.hold_id, "tok_ok").await?;
    assert_eq!(st, 401);
    // Nor start paying for a live one: the extend made with their key is refused, nothing
    // is charged, and the holder still pays for it as if nothing happened.
    let owner = s.buyer().await?;
    let hl = hold(owner.clone(), &["A:1:9"]).await?;
    holds.insert(hl.hold_id.clone());
    let (st, _) = pay(&http, &purl, &token(&intruder), &hl.hold_id, "tok_ok").await?;
    assert!(
        st == 403 || st == 404,
        "a checkout of another's live hold answered {st}"
    );
    let after = s.service().checkout(&hl.hold_id).await;
    assert_eq!(
        after.as_ref().err().and_then(|e| e.code()),
        Some("not_found"),
        "the intruder's attempt started a checkout: {after:?}"
    );
    let (st, r) = pay(&http, &purl, &token(&owner), &hl.hold_id, "tok_ok").await?;
    assert_eq!(
        (st, r.context("a checkout result")?.outcome),
        (200, CheckoutOutcome::Booked)
    );

    // Declined: the hold is released and its seats are on sale again.
    let b = s.buyer().await?;
    let hb = hold(b.clone(), &["A:2:1"]).await?;
    holds.insert(hb.hold_id.clone());
    let (_, r) = pay(&http, &purl, &token(&b), &hb.hold_id, "tok_decline").await?;
    assert_eq!(r.context("result")?.outcome, CheckoutOutcome::Declined);
    assert_eq!(s.service().get_hold(&hb.hold_id).await?.state, "released");

    // The provider does not answer within our 800 ms and had not decided: the service
    // cancels, nothing is charged (the late decision finds the charge cancelled), and the
    // hold is released.
    let c = s.buyer().await?;
    let hc = hold(c.clone(), &["A:2:2"]).await?;
    holds.insert(hc.hold_id.clone());
    let (_, r) = pay(&http, &purl, &token(&c), &hc.hold_id, "tok_slow_2000").await?;
    let r = r.context("result")?;
    assert_eq!(r.outcome, CheckoutOutcome::Declined, "{r:?}");
    assert_eq!(s.service().get_hold(&hc.hold_id).await?.state, "released");

    // The provider captured but its answer came after our timeout: the cancel finds the
    // capture, which stands and is booked (a cancel never refunds).
    let c2 = s.buyer().await?;
    let hc2 = hold(c2.clone(), &["A:2:3"]).await?;
    holds.insert(hc2.hold_id.clone());
    let (_, r) = pay(&http, &purl, &token(&c2), &hc2.hold_id, "tok_timeout").await?;
    let r = r.context("result")?;
    assert_eq!(r.outcome, CheckoutOutcome::Booked, "{r:?}");
    assert_eq!(s.service().get_hold(&hc2.hold_id).await?.state, "confirmed");
    // A cancel arriving after the booking (a late duplicate) leaves the capture alone.
    let late = http
        .post(format!("{sim}/v1/charges/pay-{}/cancel", hc2.hold_id))
        .send()
        .await?
        .json::<api::payments::Charge>()
        .await?;
    assert_eq!(late.status, ChargeStatus::Captured);

    // Three holds at once, each outliving its 10 s TTL: D pays by an asynchronous method whose
    // capture lands (by callback) after the hold expired, seats still free: booked late. E
    // too, but F takes the seat meanwhile: refunded at once. G comes back after expiry:
    // nothing is charged.
    let (d, e, g) = (s.buyer().await?, s.buyer().await?, s.buyer().await?);
    let hd = hold(d.clone(), &["A:3:1"]).await?;
    let he = hold(e.clone(), &["A:3:2"]).await?;
    let hg = hold(g.clone(), &["A:4:1"]).await?;
    for h in [&hd, &he, &hg] {
        holds.insert(h.hold_id.clone());
    }
    let spawn_pay = |c: &Client, id: &str, source: &'static str| {
        let (http, purl, tok, id) = (http.clone(), purl.clone(), token(c), id.to_string());
        tokio::spawn(async move { pay(&http, &purl, &tok, &id, source).await })
    };
    let d_pay = spawn_pay(&d, &hd.hold_id, "tok_async_11000");
    let e_pay = spawn_pay(&e, &he.hold_id, "tok_async_12000");
    for p in [d_pay, e_pay] {
        let r = p.await??.1.context("result")?;
        assert_eq!(r.outcome, CheckoutOutcome::Pending, "{r:?}");
    }
    // Both are the provider's to decide, and left to its callbacks: a resume now settles
    // neither (every other checkout of this test has ended).
    assert_eq!(
        svc.resume(4).await?,
        0,
        "a resume asked again about checkouts the provider is deciding"
    );
    let f = s.buyer().await?;
    // Retake E's seat as soon as its hold expired (a deadline, not a sleep).
    let f_hold = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match f.hold(&seats_hold(&s.performance, &["A:3:2"])).await {
                Ok(h) => break h,
                Err(e)
                    if std::time::Instant::now() < deadline
                        && e.code() == Some("seat_unavailable") =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e).context("retaking the seat after the hold expired"),
            }
        }
    };
    let settled = |c: Client, id: String| {
        let (http, purl) = (http.clone(), purl.clone());
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let r: CheckoutResult = http
                    .get(format!("{purl}/v1/checkouts/{id}"))
                    .bearer_auth(c.key().expect("key"))
                    .send()
                    .await?
                    .json()
                    .await?;
                if r.outcome != CheckoutOutcome::Pending {
                    return anyhow::Ok(r);
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "{id} still pending: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let r = settled(d.clone(), hd.hold_id.clone()).await?;
    assert_eq!(r.outcome, CheckoutOutcome::Booked, "{r:?}");
    assert!(
        svc.stats
            .booked_late
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let r = settled(e.clone(), he.hold_id.clone()).await?;
    assert_eq!(r.outcome, CheckoutOutcome::Refunded, "{r:?}");
    assert_eq!(s.service().get_hold(&f_hold.hold_id).await?.state, "live");
    let svc_client = s.service();
    wait_until(Duration::from_secs(20), "the hold to expire", || {
        let (c, id) = (svc_client.clone(), hg.hold_id.clone());
        async move { c.get_hold(&id).await.is_ok_and(|h| h.state == "expired") }
    })
    .await?;
    let (_, r) = pay(&http, &purl, &token(&g), &hg.hold_id, "tok_ok").await?;
    assert_eq!(r.context("result")?.outcome, CheckoutOutcome::Expired);

    // Bad input to the simulator is a clear 4xx.
    let bad = http
        .post(format!("{sim}/v1/charges"))
        .json(&serde_json::json!({"idempotency_key": "k", "amount_minor": 0, "currency": "EUR", "source": "tok_ok"}))
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 422);

    // Duplicate callbacks arrived and changed nothing; the money agrees with the ledger.
    let book = provider_book(&http, &sim).await?;
    wait_until(Duration::from_secs(10), "the duplicate callbacks", || {
        let svc = svc.clone();
        async move {
            svc.stats
                .callbacks
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 6
        }
    })
    .await?;
    let (charges, booked) = check_money(&s.service(), &book, &holds).await?;
    assert_eq!((charges, booked), (7, 4), "charges and bookings");
    Ok(())
}

/// The `payments` binary next to this test's executable (`cargo build --bins`).
fn payments_bin() -> anyhow::Result<PathBuf> {
    client::dev::find_binary("payments", "PAYMENTS_BIN")
}

/// A `payments serve` process; killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_payments(s: &Sale, sim: &str, port: u16, secret: &str) -> anyhow::Result<Proc> {
    let child = std::process::Command::new(payments_bin()?)
        .args([
            "serve",
            "--ledger",
            &s.urls.join(","),
            "--key",
            &s.service_key,
            "--provider",
            sim,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--callback-secret",
            secret,
            "--provider-timeout-ms",
            "3000",
            "--resume-every-secs",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting payments")?;
    let proc = Proc(child);
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_until(Duration::from_secs(15), "payments to listen", || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    Ok(proc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_payments_process_resumes_every_checkout() -> anyhow::Result<()> {
    let t = TestCluster::start(3, &[]).await?;
    let s = sale(&t, 8, 60, 30).await?;
    let secret = "kill-secret";
    // Slow decisions, so the kill lands while charges are in flight; random declines and
    // duplicate callbacks on the random-fate source.
    let sim = serve(payments::sim::router(SimConfig {
        latency_ms: 800,
        jitter_ms: 1_500,
        decline_percent: 20,
        duplicate_callbacks: 1,
        callback_secret: secret.into(),
        seed: 7,
        ..SimConfig::default()
    }))
    .await?;
    let port = client::dev::free_port()?;
    let purl = format!("http://127.0.0.1:{port}");
    let mut proc = start_payments(&s, &sim, port, secret).await?;
    let http = reqwest::Client::new();
    let mut holds = BTreeSet::new();
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let b = s.buyer().await?;
        let seat = format!("A:{}:{}", 1 + i / 10, 1 + i % 10);
        let h = b
            .hold(&api::CreateHold {
                performance_id: s.performance.clone(),
                seats: Some(vec![seat]),
                section: None,
                quantity: None,
                category: None,
            })
            .await?;
        holds.insert(h.hold_id.clone());
        let (http, purl, tok) = (
            http.clone(),
            purl.clone(),
            b.key().expect("key").to_string(),
        );
        tasks.push(tokio::spawn(async move {
            pay(&http, &purl, &tok, &h.hold_id, "tok_visa").await
        }));
    }
    // Kill -9 once the provider has decided some charges (their outcome must still reach the
    // ledger after the restart) and others are still pending.
    wait_until(
        Duration::from_secs(20),
        "charges in flight at the provider",
        || {
            let (http, sim) = (http.clone(), sim.clone());
            async move {
                provider_book(&http, &sim).await.is_ok_and(|b| {
                    let pending = b
                        .charges
                        .iter()
                        .filter(|c| c.status == ChargeStatus::Pending)
                        .count();
                    let decided = b.charges.len() - pending;
                    pending >= 5 && decided >= 5
                })
            }
        },
    )
    .await?;
    proc.0.kill()?; // SIGKILL
    proc.0.wait()?;
    let mut interrupted = 0;
    for task in tasks {
        match task.await? {
            Ok((200, Some(_))) => {}
            _ => interrupted += 1,
        }
    }
    assert!(interrupted > 0, "the kill interrupted no checkout");
    // A new process finishes every open checkout from the ledger's records.
    let _proc = start_payments(&s, &sim, port, secret).await?;
    let service = s.service();
    wait_until(
        Duration::from_secs(45),
        "no open checkout in the ledger",
        || {
            let service = service.clone();
            async move {
                service
                    .checkouts(true, None, 100)
                    .await
                    .is_ok_and(|l| l.checkouts.is_empty())
            }
        },
    )
    .await?;
    // Charges still being decided when the process died were cancelled by the resume (or
    // decided since): none may stay pending.
    wait_until(
        Duration::from_secs(15),
        "no charge pending at the provider",
        || {
            let (http, sim) = (http.clone(), sim.clone());
            async move {
                provider_book(&http, &sim)
                    .await
                    .is_ok_and(|b| b.charges.iter().all(|c| c.status != ChargeStatus::Pending))
            }
        },
    )
    .await?;
    let book = provider_book(&http, &sim).await?;
    let (charges, booked) = check_money(&service, &book, &holds).await?;
    assert!(booked > 0, "nothing was booked");
    eprintln!(
        "{} checkouts, {interrupted} interrupted by kill -9, {charges} charges, {booked} booked",
        holds.len()
    );
    Ok(())
}

/// A refund asked for without a `refund_ref` and retried under the same Idempotency-Key is
/// the same request: the retry gets the first answer, not 409 (the node named the refund
/// randomly before; the jepsen harness found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_retried_with_its_key_gets_the_first_answer() -> anyhow::Result<()> {
    let t = TestCluster::start(3, &[]).await?;
    let s = sale(&t, 1, 60, 30).await?;
    let b = s.buyer().await?;
    let h = b.hold(&seats_hold(&s.performance, &["A:1:1"])).await?;
    let bk = s.service().confirm(&h.hold_id, "pay-direct").await?;
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for node in &s.urls {
        let r = http
            .post(format!(
                "http://{node}/v1/bookings/{}/refund",
                bk.booking_id
            ))
            .bearer_auth(&s.service_key)
            .header(api::IDEMPOTENCY_KEY_HEADER, "refund-retry-1")
            .json(&serde_json::json!({}))
            .send()
            .await?;
        answers.push((r.status().as_u16(), r.text().await?));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 200, "{answers:?}");
    Ok(())
}
