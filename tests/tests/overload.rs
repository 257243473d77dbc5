//! Back-pressure on a real node (issue 9): past its write admission bound a node answers
//! 503 `overloaded` with `Retry-After`, and a refused write changes nothing in the ledger.

use cluster_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_past_the_admission_bound_get_503_and_change_nothing() {
    // One write in flight at a time: every other write arriving meanwhile is refused.
    let t = TestCluster::start(1, &["--max-inflight=1"]).await.unwrap();
    t.c().wait_leader(WAIT).await.unwrap();
    // 80 buyers sending 4 holds each: no buyer can pass the ledger's limit of 4 live holds
    // per performance, so every answer is 201, 409 (floor full) or 503.
    let cat = catalog(&t, 1, 80).await.unwrap();
    let url = t.c().http_urls()[0].clone();
    let http = reqwest::Client::new();

    // 320 one-seat holds on the general-admission floor (capacity 100) at once, each sent
    // once (a raw request: the client crate would retry the 503s).
    let calls = (0..320).map(|i| {
        let key = cat.buyers[i % cat.buyers.len()].key().unwrap().to_string();
        let body = serde_json::json!({
            "performance_id": cat.performance,
            "section": "Floor",
            "quantity": 1,
        });
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/holds"))
                .bearer_auth(key)
                .json(&body)
                .timeout(WAIT)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").cloned();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                v["code"].as_str().unwrap_or("").to_string(),
                retry_after,
            )
        }
    });
    let answers = futures::future::join_all(calls).await;

    let placed = answers.iter().filter(|a| a.0 == 201).count() as u32;
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    let other: Vec<_> = answers
        .iter()
        .filter(|a| a.0 != 201 && a.0 != 503 && a.0 != 409)
        .collect();
    eprintln!(
        "320 holds at once: {placed} placed, {} refused with 503, {} conflicts",
        refused.len(),
        answers.iter().filter(|a| a.0 == 409).count()
    );
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(
        !refused.is_empty(),
        "320 writes at once against --max-inflight=1 were all admitted"
    );
    for (_, code, retry_after) in &refused {
        assert_eq!(code, "overloaded");
        assert!(retry_after.is_some(), "a 503 without Retry-After");
    }
    assert!(placed > 0, "no write got through the bound at all");

    // The ledger holds exactly the seats of the holds it answered 201 for.
    let p = t.admin().performance(&cat.performance).await.unwrap();
    let floor = p
        .sections
        .iter()
        .find(|s| s.section == "Floor")
        .expect("the Floor section");
    assert_eq!(floor.held, placed, "held seats against 201 answers");
    assert_eq!(floor.held + floor.available, floor.capacity);

    // And the node counts what it refused.
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ticketledger_proposals_overloaded_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ticketledger_proposals_overloaded_total in /metrics");
    assert!(
        counted >= refused.len() as u64,
        "{counted} counted, {} refused",
        refused.len()
    );
}

/// The same bound for pipelined calls (`Ledger.Pipeline`): a call the node cannot take is
/// answered at once with 503 `overloaded` and a retry-after, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_writes_past_the_admission_bound_get_503_and_change_nothing() {
    use client::grpc::{GrpcClient, pb};
    let t = TestCluster::start(1, &["--max-inflight=1"]).await.unwrap();
    t.c().wait_leader(WAIT).await.unwrap();
    let cat = catalog(&t, 1, 80).await.unwrap();
    let pipe = GrpcClient::new(t.c().nodes.iter().map(|n| n.grpc.clone()))
        .with_deadline(WAIT)
        .pipeline();
    let calls = (0..320).map(|i| {
        let auth = format!("Bearer {}", cat.buyers[i % cat.buyers.len()].key().unwrap());
        let req = pb::PlaceHoldRequest {
            performance_id: cat.performance.clone(),
            section: "Floor".into(),
            quantity: 1,
            ..Default::default()
        };
        let pipe = pipe.clone();
        async move { pipe.place_hold(&auth, req).await }
    });
    let answers = futures::future::join_all(calls).await;
    let placed = answers.iter().filter(|a| a.is_ok()).count() as u32;
    let mut refused = 0;
    for e in answers.iter().filter_map(|a| a.as_ref().err()) {
        match (e.status(), e.code()) {
            (Some(503), Some("overloaded")) => refused += 1,
            (Some(409), _) => {}
            _ => panic!("unexpected answer: {e}"),
        }
    }
    eprintln!("320 pipelined holds at once: {placed} placed, {refused} refused with 503");
    assert!(
        refused > 0,
        "320 pipelined writes against --max-inflight=1 were all admitted"
    );
    assert!(
        placed > 0,
        "no pipelined write got through the bound at all"
    );
    let p = t.admin().performance(&cat.performance).await.unwrap();
    let floor = p.sections.iter().find(|s| s.section == "Floor").unwrap();
    assert_eq!(floor.held, placed, "held seats against successful answers");
}
