//! Multi-node tests with real ticketd processes on free ports (issue 5).

use client::Client;
use cluster_tests::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_elected_writes_replicate_and_hashes_agree() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 5, 2).await.unwrap();
    let hold = cat.buyers[0]
        .hold(&seats_hold(&cat.performance, &["A:1:1", "A:1:2"]))
        .await
        .unwrap();
    assert_eq!(hold.quantity, 2);
    let booking = cat.service.confirm(&hold.hold_id, "pay-1").await.unwrap();
    assert_eq!(booking.tickets.len(), 2);
    let s = t.converged(CONVERGE).await.unwrap();
    assert_eq!(s.nodes.len(), 3);
    // Every node serves the booking (linearizable read through each node).
    for n in &t.c().nodes {
        let c = t.c().node_client(n.id).unwrap();
        assert_eq!(
            c.booking(&booking.booking_id).await.unwrap().tickets.len(),
            2,
            "node {}",
            n.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_seat_is_409_on_every_node_and_concurrent_holds_have_one_winner() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 5, 8).await.unwrap();
    cat.buyers[0]
        .hold(&seats_hold(&cat.performance, &["A:2:5"]))
        .await
        .unwrap();
    for n in &t.c().nodes {
        let key = t.c().node_client(n.id).unwrap();
        let _ = key; // node clients use the admin key; use a buyer pinned to this node instead
        let (status, body) = cat.buyers[1]
            .raw(
                n.id as usize - 1,
                reqwest::Method::POST,
                "/v1/holds",
                Some(serde_json::to_vec(&seats_hold(&cat.performance, &["A:2:5"])).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(
            status.as_u16(),
            409,
            "node {}: {}",
            n.id,
            String::from_utf8_lossy(&body)
        );
        assert!(String::from_utf8_lossy(&body).contains("seat_unavailable"));
    }
    // Two buyers race for each of 20 seats through two different nodes: exactly one wins each.
    for k in 1..=20 {
        let seat = format!("A:3:{k}");
        let body = serde_json::to_vec(&seats_hold(&cat.performance, &[&seat])).unwrap();
        let (a, b) = tokio::join!(
            cat.buyers[2 + (k % 3)].raw(0, reqwest::Method::POST, "/v1/holds", Some(body.clone())),
            cat.buyers[5 + (k % 3)].raw(1, reqwest::Method::POST, "/v1/holds", Some(body.clone())),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let codes = [a.0.as_u16(), b.0.as_u16()];
        let wins = codes.iter().filter(|c| **c == 201).count();
        // The winner releases, so no buyer reaches its live-hold limit.
        for (resp, buyer) in [
            (&a, &cat.buyers[2 + (k % 3)]),
            (&b, &cat.buyers[5 + (k % 3)]),
        ] {
            if resp.0.as_u16() == 201 {
                let h: api::Hold = serde_json::from_slice(&resp.1).unwrap();
                buyer.release(&h.hold_id).await.unwrap();
            }
        }
        assert_eq!(wins, 1, "seat {seat}: statuses {codes:?}");
        assert!(codes.contains(&409), "seat {seat}: statuses {codes:?}");
    }
    t.converged(CONVERGE).await.unwrap();
}

/// Best available: buyers asking at once through every node for seats side by side in the
/// same section all get distinct adjacent seats (the ledger picks at apply), until none are
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_best_available_holds_never_collide() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 11).await.unwrap();
    let best = api::CreateHold {
        performance_id: cat.performance.clone(),
        seats: None,
        section: Some("A".into()),
        quantity: Some(4),
        category: None,
    };
    // 2 rows of 20: exactly ten holds of four.
    let holds = futures::future::join_all(cat.buyers[..10].iter().map(|b| b.hold(&best))).await;
    let mut taken = BTreeSet::new();
    for h in holds {
        let h = h.expect("a best-available hold while seats are left");
        assert_eq!(h.seats.len(), 4, "{h:?}");
        let at: Vec<(u32, u32)> = h
            .seats
            .iter()
            .map(|s| {
                let mut p = s.split(':').skip(1).map(|x| x.parse::<u32>().unwrap());
                (p.next().unwrap(), p.next().unwrap())
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[1] == (w[0].0, w[0].1 + 1)),
            "side by side in one row: {:?}",
            h.seats
        );
        for s in h.seats {
            assert!(taken.insert(s.clone()), "seat {s} held twice");
        }
    }
    assert_eq!(taken.len(), 40);
    let e = cat.buyers[10].hold(&best).await.unwrap_err();
    assert!(is_conflict(&e), "{e}");
    t.converged(CONVERGE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_a_clear_4xx_and_changes_nothing() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let before = t.converged(CONVERGE).await.unwrap();
    let p = &cat.performance;
    let big = format!(
        "{{\"performance_id\":\"{p}\",\"seats\":[\"{}\"]}}",
        "x".repeat(2 << 20)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed JSON", "{\"performance_id\":".into(), 400),
        (
            "wrong types",
            format!("{{\"performance_id\":\"{p}\",\"seats\":7}}"),
            400,
        ),
        (
            "unknown seat",
            format!("{{\"performance_id\":\"{p}\",\"seats\":[\"Z:9:9\"]}}"),
            422,
        ),
        (
            "seat out of row",
            format!("{{\"performance_id\":\"{p}\",\"seats\":[\"A:1:99\"]}}"),
            422,
        ),
        (
            "too many seats",
            format!(
                "{{\"performance_id\":\"{p}\",\"seats\":[\"A:1:1\",\"A:1:2\",\"A:1:3\",\"A:1:4\",\"A:1:5\"]}}"
            ),
            422,
        ),
        (
            "unknown performance",
            "{\"performance_id\":\"p_999\",\"seats\":[\"A:1:1\"]}".into(),
            404,
        ),
        (
            "seats and quantity",
            format!("{{\"performance_id\":\"{p}\",\"seats\":[\"A:1:1\"],\"quantity\":2}}"),
            422,
        ),
        (
            "zero GA quantity",
            format!("{{\"performance_id\":\"{p}\",\"section\":\"Floor\",\"quantity\":0}}"),
            422,
        ),
        ("oversized body", big, 413),
    ];
    for (what, body, want) in cases {
        for node in 0..3 {
            let (status, resp) = cat.buyers[0]
                .raw(
                    node,
                    reqwest::Method::POST,
                    "/v1/holds",
                    Some(body.clone().into_bytes()),
                )
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&resp);
            assert_eq!(status.as_u16(), want, "{what} on node {node}: {text}");
            let problem: api::Problem = serde_json::from_slice(&resp)
                .unwrap_or_else(|e| panic!("{what}: not a problem ({e}): {text}"));
            assert!(
                !problem.detail.is_empty() && !problem.code.is_empty(),
                "{what}: {text}"
            );
        }
    }
    for (path, method) in [
        ("/v1/holds/h_x", reqwest::Method::GET),
        ("/v1/bookings/nope/refund", reqwest::Method::POST),
        ("/v1/nothing", reqwest::Method::GET),
    ] {
        let (status, _) = cat.buyers[0].raw(0, method, path, None).await.unwrap();
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let status = reqwest::Client::new()
        .post(format!("http://{}/v1/holds", t.c().nodes[0].http))
        .json(&seats_hold(p, &["A:1:1"]))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401, "no credentials");
    let after = t.converged(CONVERGE).await.unwrap();
    assert_eq!(
        (before.nodes[0].applied_index, &before.nodes[0].state_hash),
        (after.nodes[0].applied_index, &after.nodes[0].state_hash),
        "bad input changed the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_holds_loses_nothing_acknowledged() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = Arc::new(catalog(&t, 20, 40).await.unwrap());
    let stop = Instant::now() + Duration::from_secs(6);
    let acked_so_far = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // 40 buyers each hold one seat after another (and confirm every other one) until `stop`.
    let mut tasks = Vec::new();
    for b in 0..40usize {
        let cat = cat.clone();
        let acked_so_far = acked_so_far.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 0;
            while Instant::now() < stop && k < 8 {
                let row = 1 + (b / 2);
                let seat = format!("A:{row}:{}", 1 + (b % 2) * 10 + k);
                k += 1;
                match cat.buyers[b]
                    .hold(&seats_hold(&cat.performance, &[&seat]))
                    .await
                {
                    Ok(h) => {
                        let booking = if k % 2 == 0 {
                            cat.service
                                .confirm(&h.hold_id, "pay")
                                .await
                                .ok()
                                .map(|b| b.booking_id)
                        } else {
                            None
                        };
                        acked.push((h.hold_id, seat, booking));
                        acked_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => assert!(!is_conflict(&e), "no other buyer wants {seat}: {e}"),
                }
                if k % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            acked
        }));
    }
    // Kill the leader once the stream is flowing: after 30 acknowledged holds.
    wait_until(Duration::from_secs(20), "30 holds acknowledged", || {
        let acked_so_far = acked_so_far.clone();
        async move { acked_so_far.load(std::sync::atomic::Ordering::Relaxed) >= 30 }
    })
    .await
    .unwrap();
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    t.c().signal(leader, "KILL").unwrap();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert!(
        acked.len() > 40,
        "too few acknowledged holds ({}) to mean anything",
        acked.len()
    );
    let survivor = t
        .c()
        .node_client(
            t.c()
                .nodes
                .iter()
                .map(|n| n.id)
                .find(|id| *id != leader)
                .unwrap(),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = survivor.status().await.unwrap();
        if s.leader.is_some_and(|l| l != leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader after killing {leader}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every acknowledged hold and booking is there, on the survivors.
    let survivors: Vec<u64> = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    for id in &survivors {
        let c = t.c().node_client(*id).unwrap();
        for (hold, seat, booking) in &acked {
            let h = c
                .get_hold(hold)
                .await
                .unwrap_or_else(|e| panic!("node {id} lost hold {hold} on {seat}: {e}"));
            assert_eq!(&h.seats, &vec![seat.clone()]);
            if let Some(b) = booking {
                assert_eq!(h.state, "confirmed");
                c.booking(b)
                    .await
                    .unwrap_or_else(|e| panic!("node {id} lost booking {b}: {e}"));
            }
        }
    }
    // The killed leader comes back and catches up.
    t.c().start(leader).unwrap();
    t.c()
        .wait_healthy(leader, Duration::from_secs(20))
        .await
        .unwrap();
    t.converged(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_far_behind_is_caught_up_by_snapshot() {
    let t = TestCluster::start(3, &["--snapshot-every=100"])
        .await
        .unwrap();
    let cat = catalog(&t, 20, 20).await.unwrap();
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    let lagger = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    t.c().signal(lagger, "KILL").unwrap();
    let behind = node_gauge(&t, leader, "ticketledger_raft_applied_index")
        .await
        .unwrap();
    // Write until the leader has purged its log past everything the lagging node has: only
    // a snapshot can bring it back now. (Bounded: 5,000 writes is 50 snapshot intervals.)
    let mut purged = 0;
    for i in 0..2_500usize {
        let b = &cat.buyers[i % 20];
        let seat = format!("A:{}:{}", 1 + (i / 20) % 20, 1 + i % 20);
        let h = b
            .hold(&seats_hold(&cat.performance, &[&seat]))
            .await
            .unwrap();
        b.release(&h.hold_id).await.unwrap();
        if i % 50 == 49 {
            purged = node_gauge(&t, leader, "ticketledger_raft_purged_index")
                .await
                .unwrap();
            if purged > behind + 10 {
                break;
            }
        }
    }
    assert!(
        purged > behind + 10,
        "the leader never purged its log past {behind} (purged index {purged})"
    );
    t.c().start(lagger).unwrap();
    t.c()
        .wait_healthy(lagger, Duration::from_secs(20))
        .await
        .unwrap();
    t.converged(Duration::from_secs(30)).await.unwrap();
    let log =
        std::fs::read_to_string(t.c().dir.join(lagger.to_string()).join("ticketd.log")).unwrap();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "node {lagger} caught up without installing a snapshot; log:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
}

/// One gauge from a node's `/metrics`.
async fn node_gauge(t: &TestCluster, node: u64, name: &str) -> anyhow::Result<u64> {
    let text = t.c().node_client(node)?.metrics().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{name} not in node {node}'s metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_and_are_promoted_under_load_then_one_is_removed() {
    let mut t = TestCluster::start(3, &[]).await.unwrap();
    let cat = Arc::new(catalog(&t, 20, 10).await.unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (cat, done) = (cat.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let b = &cat.buyers[n % 10];
                let seat = format!("A:{}:{}", 1 + (n / 20) % 20, 1 + n % 20);
                if let Ok(h) = b.hold(&seats_hold(&cat.performance, &[&seat])).await {
                    let _ = b.release(&h.hold_id).await;
                }
                n += 1;
            }
            n
        })
    };
    let extra = vec![
        "--heartbeat-ms=50".to_string(),
        "--request-timeout-ms=3000".to_string(),
    ];
    let four = t.guard.0.add_node(extra.clone()).await.unwrap();
    let five = t.guard.0.add_node(extra).await.unwrap();
    let admin = t.admin();
    let s = admin
        .change_membership(vec![1, 2, 3, four, five])
        .await
        .unwrap();
    assert_eq!(
        s.voters.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3, four, five])
    );
    let s = admin
        .change_membership(vec![1, 2, four, five])
        .await
        .unwrap();
    assert!(!s.voters.contains(&3));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let ops = load.await.unwrap();
    assert!(ops > 10, "the load ran {ops} operations");
    // Node 3 left the membership; stop it and check the remaining four agree.
    t.c().signal(3, "KILL").unwrap();
    t.guard.0.nodes.retain(|n| n.id != 3);
    let s = t.converged(CONVERGE).await.unwrap();
    assert_eq!(s.nodes.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_get_503_with_retry_after_in_time() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    let others: Vec<u64> = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    for id in &others {
        t.c().signal(*id, "KILL").unwrap();
    }
    let idx = (leader - 1) as usize;
    let start = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/holds", t.c().nodes[idx].http))
        .bearer_auth(&t.c().admin_key)
        .json(&seats_hold(&cat.performance, &["A:1:1"]))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer, not a hang");
    let took = start.elapsed();
    assert_eq!(resp.status().as_u16(), 503, "{:?}", resp.text().await);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}; the request timeout is 3 s"
    );
    // The client library keeps retrying every node (two refuse connections, one answers 503)
    // and gives up at its own deadline, saying what the last attempt got.
    let deadline = Duration::from_secs(4);
    let start = Instant::now();
    let err = cat.buyers[0]
        .clone()
        .with_deadline(deadline)
        .hold(&seats_hold(&cat.performance, &["A:1:2"]))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, client::Error::Unavailable { attempts, .. } if attempts >= 2),
        "{err}"
    );
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(4),
        "gave up after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_fresh_cluster() {
    let a = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&a, 2, 1).await.unwrap();
    let hold = cat.buyers[0]
        .hold(&seats_hold(&cat.performance, &["A:1:3"]))
        .await
        .unwrap();
    let booking = cat.service.confirm(&hold.hold_id, "pay-9").await.unwrap();
    let backup = a.admin().backup().await.unwrap();
    let mut b = TestCluster::start(3, &[]).await.unwrap();
    let status = b.admin().restore(backup.clone()).await.unwrap();
    assert!(status.cluster_initialized);
    // The backup's keys are now the valid ones; the booking is there on every node.
    let old_admin = client::Client::new(b.c().nodes.iter().map(|n| n.http.clone()))
        .with_key(a.c().admin_key.clone());
    assert_eq!(
        old_admin
            .booking(&booking.booking_id)
            .await
            .unwrap()
            .tickets
            .len(),
        1
    );
    let err = b.admin().status().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some("unauthenticated"),
        "the fresh cluster's own key is gone: {err}"
    );
    b.guard.0.admin_key = a.c().admin_key.clone();
    b.converged(CONVERGE).await.unwrap();
    // A second restore over a catalog is refused.
    let err = old_admin.restore(backup).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_state"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_through_another_node_is_applied_once() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    // A buyer whose key the test holds, to send requests by hand with an idempotency key.
    let buyer_key = t
        .admin()
        .create_api_key("retrying", "buyer")
        .await
        .unwrap()
        .key;
    let key = client::new_idempotency_key();
    let http = reqwest::Client::new();
    let post = |node: usize, seat: &str| {
        http.post(format!("http://{}/v1/holds", t.c().nodes[node].http))
            .bearer_auth(&buyer_key)
            .header(api::IDEMPOTENCY_KEY_HEADER, &key)
            .json(&seats_hold(&cat.performance, &[seat]))
            .send()
    };
    let first = post(0, "A:1:1").await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first: api::Hold = first.json().await.unwrap();
    // The same request again, as a client retrying after a lost answer, through node 2.
    let again = post(1, "A:1:1").await.unwrap();
    assert!(again.status().is_success(), "{}", again.status());
    let again: api::Hold = again.json().await.unwrap();
    assert_eq!(
        again.hold_id, first.hold_id,
        "the retry returns the first outcome"
    );
    // The same key with another request, through node 3: refused, and nothing is held.
    let other = post(2, "A:1:2").await.unwrap();
    assert_eq!(other.status().as_u16(), 409);
    let problem: api::Problem = other.json().await.unwrap();
    assert_eq!(problem.code, "idempotency_conflict", "{problem:?}");
    let p = t.admin().performance(&cat.performance).await.unwrap();
    assert_eq!(p.totals.held, 1, "one hold, applied once: {:?}", p.totals);
    t.converged(CONVERGE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_routes_around_a_paused_follower_and_a_paused_leader() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    let follower = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    // A buyer whose first URL is the node that will be paused: every call starts there.
    let urls_from = |first: u64| {
        let mut urls: Vec<String> = t.c().nodes.iter().map(|n| n.http.clone()).collect();
        urls.rotate_left((first - 1) as usize);
        urls
    };
    let k = t
        .admin()
        .create_api_key("router", "buyer")
        .await
        .unwrap()
        .key;
    let buyer = |first: u64| {
        client::Client::new(urls_from(first))
            .with_key(k.clone())
            .with_deadline(Duration::from_secs(15))
            .with_attempt_timeout(Duration::from_millis(700))
    };

    t.c().signal(follower, "STOP").unwrap();
    let start = Instant::now();
    let h1 = buyer(follower)
        .hold(&seats_hold(&cat.performance, &["A:1:1"]))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a paused follower cost {:?}",
        start.elapsed()
    );
    t.c().signal(follower, "CONT").unwrap();
    t.converged(CONVERGE).await.unwrap();

    t.c().signal(leader, "STOP").unwrap();
    let h2 = buyer(leader)
        .hold(&seats_hold(&cat.performance, &["A:1:2"]))
        .await
        .unwrap();
    t.c().signal(leader, "CONT").unwrap();
    t.converged(CONVERGE).await.unwrap();
    for n in &t.c().nodes {
        let c = t.c().node_client(n.id).unwrap();
        for h in [&h1, &h2] {
            assert_eq!(
                c.get_hold(&h.hold_id).await.unwrap().state,
                "live",
                "node {}",
                n.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_catalog_and_admin_endpoints_is_a_4xx_and_changes_nothing() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let before = t.converged(CONVERGE).await.unwrap();
    let admin = t.admin();
    let p = &cat.performance;
    let perf = admin.performance(p).await.unwrap();
    let e = &perf.event_id;
    let patch = reqwest::Method::PATCH;
    let post = reqwest::Method::POST;
    let cases: Vec<(&str, reqwest::Method, String, String)> = vec![
        (
            "venue sections not a list",
            post.clone(),
            "/v1/venues".into(),
            r#"{"name":"X","sections":"A"}"#.into(),
        ),
        (
            "venue seats negative",
            post.clone(),
            "/v1/venues".into(),
            r#"{"name":"X","sections":[{"name":"A","rows":[{"label":"1","seats":-3}]}]}"#.into(),
        ),
        (
            "event without a name",
            post.clone(),
            "/v1/events".into(),
            r#"{"category":"music"}"#.into(),
        ),
        (
            "performance ttl not a number",
            post.clone(),
            format!("/v1/events/{e}/performances"),
            r#"{"venue_id":"v_1","starts_at":0,"on_sale_at":0,"hold_ttl_secs":"ten","prices":[]}"#
                .into(),
        ),
        (
            "unknown sale status",
            patch.clone(),
            format!("/v1/performances/{p}"),
            r#"{"status":"sold_to_me"}"#.into(),
        ),
        (
            "status not a string",
            patch,
            format!("/v1/performances/{p}"),
            r#"{"status":1}"#.into(),
        ),
        (
            "confirm without payment_ref",
            post.clone(),
            "/v1/holds/h_1/confirm".into(),
            "{}".into(),
        ),
        (
            "refund tickets not a list",
            post.clone(),
            "/v1/bookings/b_1/refund".into(),
            r#"{"tickets":"t_1"}"#.into(),
        ),
        (
            "membership voters not ids",
            post.clone(),
            "/v1/cluster/membership".into(),
            r#"{"voters":["one"]}"#.into(),
        ),
        (
            "learner id not a number",
            post.clone(),
            "/v1/cluster/learners".into(),
            r#"{"node_id":"x","grpc_addr":"a","http_addr":"b"}"#.into(),
        ),
        (
            "api key of an unknown role",
            post,
            "/v1/api-keys".into(),
            r#"{"name":"k","role":"emperor"}"#.into(),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, method, path, body) in cases {
        let (status, resp) = admin
            .raw(0, method, &path, Some(body.into_bytes()))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&resp).to_string();
        let problem: Option<api::Problem> = serde_json::from_slice(&resp).ok();
        let clear = problem.as_ref().is_some_and(|p| {
            !p.code.is_empty() && !p.detail.is_empty() && p.status == status.as_u16()
        });
        if !status.is_client_error() || !clear {
            wrong.push(format!("{what}: {status} {text}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not a clear 4xx problem:\n{}",
        wrong.join("\n")
    );
    let after = t.converged(CONVERGE).await.unwrap();
    assert_eq!(
        (before.nodes[0].applied_index, &before.nodes[0].state_hash),
        (after.nodes[0].applied_index, &after.nodes[0].state_hash),
        "bad input changed the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_is_recorded_listed_and_settled_over_http() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 2).await.unwrap();
    let (buyer, other, svc) = (&cat.buyers[0], &cat.buyers[1], &cat.service);
    let captured = |r: &str| api::PaymentEvent::Captured {
        provider_ref: format!("cap-{r}"),
    };
    // Captured, then confirmed: booked, and no longer listed as open.
    let h = buyer
        .hold(&seats_hold(&cat.performance, &["A:1:1"]))
        .await
        .unwrap();
    svc.extend(&h.hold_id, "pay-1").await.unwrap();
    let c = buyer.checkout(&h.hold_id).await.unwrap();
    assert_eq!(
        (c.state, c.payment_ref.as_str(), c.amount_minor),
        (api::CheckoutState::Started, "pay-1", 5000)
    );
    // Only a service records money, and only under the checkout's own reference.
    let e = buyer
        .record_payment(&h.hold_id, "pay-1", captured("1"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = svc
        .record_payment(&h.hold_id, "pay-X", captured("1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_state"), "{e}");
    let c = svc
        .record_payment(&h.hold_id, "pay-1", captured("1"))
        .await
        .unwrap();
    assert_eq!(c.state, api::CheckoutState::Captured);
    assert_eq!(c.provider_ref.as_deref(), Some("cap-1"));
    let open = svc.checkouts(true, None, 10).await.unwrap();
    assert_eq!(open.checkouts.len(), 1);
    assert_eq!(open.checkouts[0].hold_id, h.hold_id);
    assert!(
        other.checkouts(true, None, 10).await.unwrap_err().status() == Some(403),
        "a buyer lists checkouts"
    );
    // A live hold is confirmed, not booked late.
    let e = svc.confirm_late(&h.hold_id, "pay-1").await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_state"), "{e}");
    let b = svc.confirm(&h.hold_id, "pay-1").await.unwrap();
    let c = svc.checkout(&h.hold_id).await.unwrap();
    assert_eq!(
        (c.state, c.booking_id.as_deref()),
        (api::CheckoutState::Booked, Some(b.booking_id.as_str()))
    );
    assert!(
        svc.checkouts(true, None, 10)
            .await
            .unwrap()
            .checkouts
            .is_empty()
    );
    assert_eq!(
        svc.checkouts(false, None, 10)
            .await
            .unwrap()
            .checkouts
            .len(),
        1
    );
    // Declined: the hold is released at once and the seat can be held by someone else.
    let h2 = buyer
        .hold(&seats_hold(&cat.performance, &["A:1:2"]))
        .await
        .unwrap();
    svc.extend(&h2.hold_id, "pay-2").await.unwrap();
    let c = svc
        .record_payment(
            &h2.hold_id,
            "pay-2",
            api::PaymentEvent::Failed {
                reason: "declined".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (c.state, c.hold_state.as_str()),
        (api::CheckoutState::Failed, "released")
    );
    other
        .hold(&seats_hold(&cat.performance, &["A:1:2"]))
        .await
        .unwrap();
    // A hold that never went to checkout has none.
    let h3 = buyer
        .hold(&seats_hold(&cat.performance, &["A:1:3"]))
        .await
        .unwrap();
    assert_eq!(
        buyer.checkout(&h3.hold_id).await.unwrap_err().code(),
        Some("not_found")
    );
    t.converged(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buyers_sign_up_log_in_and_act_with_their_token_on_any_node() {
    let t = TestCluster::start(3, &["--argon2-memory-kib=64", "--argon2-iterations=1"])
        .await
        .unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let nodes: Vec<String> = t.c().nodes.iter().map(|n| n.http.clone()).collect();
    let anon = Client::new(nodes.clone());
    let s = anon
        .signup("Ana@Example.com", "correct horse", "Ana")
        .await
        .unwrap();
    // The same email again (any case) is a conflict, not a second account.
    let e = anon
        .signup("ana@example.com", "another pass", "Ana 2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("already_exists"), "{e}");
    for (email, pass) in [("ana@example.com", "wrong horse"), ("bob@example.com", "x")] {
        let e = anon.login(email, pass).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
    }
    let e = anon
        .signup("c@example.com", "short", "C")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    // A login on another node gives a token every node accepts.
    let login = Client::new(vec![nodes[2].clone()])
        .login("ana@example.com", "correct horse")
        .await
        .unwrap();
    assert_eq!(login.user_id, s.user_id);
    for (i, url) in nodes.iter().enumerate() {
        let ana = Client::new(vec![url.clone()]).with_key(&login.token);
        let seat = format!("A:1:{}", i + 1);
        let h = ana
            .hold(&seats_hold(&cat.performance, &[&seat]))
            .await
            .unwrap();
        ana.get_hold(&h.hold_id).await.unwrap();
        // Another buyer cannot see it; a forged or altered token is refused.
        let e = cat.buyers[0].get_hold(&h.hold_id).await.unwrap_err();
        assert_eq!(e.status(), Some(403), "{e}");
    }
    let forged = login.token.replacen(&login.user_id[2..], "999999", 1);
    let e = Client::new(nodes.clone())
        .with_key(forged)
        .get_hold("h_1")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    t.converged(Duration::from_secs(10)).await.unwrap();
}

/// A small tmpfs mounted on a directory for as long as it lives (lazily unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A follower whose Raft core stops by itself (its log's disk fills up, so an append fails:
/// openraft stops on a storage error) exits with the reason instead of lingering as a node
/// that answers but can never apply again; the other two go on. Needs root (a tmpfs of a few
/// MiB under the node's log directory); skips with a reason without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_raft_core_stops_exits_with_the_reason() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs under a node's log directory");
        return;
    }
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 5, 4).await.unwrap();
    let leader = t.c().wait_leader(Duration::from_secs(10)).await.unwrap();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    t.c().signal(victim, "KILL").unwrap();
    wait_until(Duration::from_secs(10), "the follower to die", || async {
        t.c().pid(victim).is_none()
    })
    .await
    .unwrap();
    // The follower's log on a tmpfs just larger than it is.
    let log = t.c().dir.join(victim.to_string()).join("log");
    let aside = log.with_extension("aside");
    std::fs::rename(&log, &aside).unwrap();
    std::fs::create_dir(&log).unwrap();
    let used: u64 = std::fs::read_dir(&aside)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let size = used + (8 << 20);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&log)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed");
    let _tmpfs = Tmpfs(log.clone());
    for e in std::fs::read_dir(&aside).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), log.join(e.file_name())).unwrap();
    }
    t.c().start(victim).unwrap();
    t.c()
        .wait_healthy(victim, Duration::from_secs(30))
        .await
        .unwrap();
    // Fill the tmpfs: the follower's next log appends fail.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(log.join("filler")).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..4096]).is_ok() {}
    }
    // Writes go on through the leader; each is appended on the follower too.
    let b = &cat.buyers[0];
    let mut n = 0;
    let start = Instant::now();
    while t.c().pid(victim).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node {victim} still runs {n} writes after its disk filled up"
        );
        let h = b
            .hold(&seats_hold(&cat.performance, &["A:1:1"]))
            .await
            .unwrap();
        b.release(&h.hold_id).await.unwrap();
        n += 1;
    }
    let status = t.c().exit_status(victim).expect("the node exited");
    assert!(!status.success(), "node {victim} exited with {status}");
    let text =
        std::fs::read_to_string(t.c().dir.join(victim.to_string()).join("ticketd.log")).unwrap();
    assert!(
        text.contains("the Raft core stopped"),
        "node {victim}'s log does not say why it exited:\n{}",
        &text[text.len().saturating_sub(3000)..]
    );
    // The two others go on.
    let h = b
        .hold(&seats_hold(&cat.performance, &["A:1:2"]))
        .await
        .unwrap();
    b.release(&h.hold_id).await.unwrap();
}
