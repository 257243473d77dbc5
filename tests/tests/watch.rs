//! The change feed (`GET /v1/watch` as Server-Sent Events and gRPC `Watch`) on a real
//! 3-node cluster: a subscriber that resumes from a log index, across a kill -9 and restart of
//! its node and across a switch to another node and to gRPC, gets every change exactly once,
//! compared with an uninterrupted subscriber and with the operations the test performed.

use cluster_tests::*;
use node::grpc::pb::{self, ledger_client::LedgerClient};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// One parsed SSE event.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// A minimal SSE reader over a reqwest response (the wire format of RFC 8895 / WHATWG).
struct SseStream {
    resp: reqwest::Response,
    buf: String,
}

impl SseStream {
    async fn open(
        http: &str,
        key: &str,
        query: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<Result<SseStream, (u16, String)>> {
        let mut req = reqwest::Client::new()
            .get(format!("http://{http}/v1/watch{query}"))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            let s = resp.status().as_u16();
            return Ok(Err((s, resp.text().await.unwrap_or_default())));
        }
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(Ok(SseStream {
            resp,
            buf: String::new(),
        }))
    }

    /// The next event (comments skipped), or `None` at the end of the stream.
    async fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<Sse>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse::default();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Ok(Some(ev));
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "no SSE event in time");
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Err(_) => anyhow::bail!("no SSE event in time"),
                Ok(chunk) => match chunk? {
                    Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    None => return Ok(None),
                },
            }
        }
    }

    /// The next change event as a feed event.
    async fn next_change(&mut self, deadline: Instant) -> anyhow::Result<api::feed::FeedEvent> {
        let ev = self
            .next(deadline)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        anyhow::ensure!(ev.event == "change", "not a change: {ev:?}");
        let fe: api::feed::FeedEvent = serde_json::from_str(&ev.data)?;
        assert_eq!(
            ev.id,
            Some(fe.log_index.to_string()),
            "id: is the log index"
        );
        Ok(fe)
    }
}

/// Ids (hold and booking ids) each change names, with its kind: what the test did.
fn facts(events: &[api::feed::FeedEvent]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in events {
        for c in &e.changes {
            let id = c
                .booking_id
                .clone()
                .or(c.hold_id.clone())
                .or(c.performance_id.clone())
                .unwrap_or_default();
            out.push((c.kind.clone(), id));
        }
    }
    out
}

/// Read events until `done` holds for what was collected.
async fn read_until(
    s: &mut SseStream,
    got: &mut Vec<api::feed::FeedEvent>,
    done: impl Fn(&[api::feed::FeedEvent]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done(got) {
        got.push(s.next_change(deadline).await?);
    }
    Ok(())
}

fn has_all(events: &[api::feed::FeedEvent], want: &BTreeSet<(String, String)>) -> bool {
    let seen: BTreeSet<(String, String)> = facts(events).into_iter().collect();
    want.is_subset(&seen)
}

/// A few holds (every other one confirmed, the rest released) through any node; returns the
/// changes they must produce.
async fn operate(cat: &Catalog, row: u32, n: u32) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut want = BTreeSet::new();
    for k in 1..=n {
        let buyer = &cat.buyers[(k as usize) % cat.buyers.len()];
        let seat = format!("A:{row}:{k}");
        let h = buyer.hold(&seats_hold(&cat.performance, &[&seat])).await?;
        want.insert(("hold_placed".to_string(), h.hold_id.clone()));
        if k % 2 == 0 {
            let b = cat
                .service
                .confirm(&h.hold_id, &format!("pay-{row}-{k}"))
                .await?;
            want.insert(("booking_confirmed".to_string(), b.booking_id));
        } else {
            buyer.release(&h.hold_id).await?;
            want.insert(("hold_released".to_string(), h.hold_id));
        }
    }
    Ok(want)
}

async fn key(t: &TestCluster, role: &str) -> String {
    t.admin()
        .create_api_key(&format!("watch-{role}"), role)
        .await
        .unwrap()
        .key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_across_a_restart_and_a_switch_of_node_with_nothing_lost_or_repeated() {
    // Snapshots every 10 entries: the restarted node rebuilds its ledger (and its feed) from a
    // snapshot plus the log after it.
    let t = TestCluster::start(3, &["--snapshot-every=10"])
        .await
        .unwrap();
    let cat = catalog(&t, 5, 3).await.unwrap();
    let key = key(&t, "service").await;
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    let others: Vec<_> = t.c().nodes.iter().filter(|n| n.id != leader).collect();
    let (restarted, switched_to) = (others[0].clone(), others[1].clone());
    let reference_node = t.c().node(leader).unwrap().http.clone();

    // The reference: one stream from the start that is never interrupted.
    let mut reference = SseStream::open(&reference_node, &key, "?from=0", None)
        .await
        .unwrap()
        .expect("watch opens");

    // Phase 1, seen by the resuming subscriber on the node that will restart.
    let mut want = operate(&cat, 1, 8).await.unwrap();
    let mut resumed: Vec<api::feed::FeedEvent> = Vec::new();
    let mut s = SseStream::open(&restarted.http, &key, "", None)
        .await
        .unwrap()
        .expect("watch opens");
    read_until(&mut s, &mut resumed, |e| has_all(e, &want))
        .await
        .unwrap();
    drop(s);
    let last_seen = resumed.last().unwrap().log_index;

    // kill -9 and restart that node while phase 2 happens.
    let pid_before = t.c().pid(restarted.id).expect("running");
    t.c().signal(restarted.id, "KILL").unwrap();
    assert!(!t.c().alive(restarted.id));
    want.extend(operate(&cat, 2, 8).await.unwrap());
    t.c().start(restarted.id).unwrap();
    t.c().wait_healthy(restarted.id, WAIT).await.unwrap();
    assert_ne!(t.c().pid(restarted.id), Some(pid_before), "a new process");
    // Resume as a reconnecting EventSource does: Last-Event-ID wins over ?from.
    let mut s = SseStream::open(&restarted.http, &key, "?from=0", Some(last_seen))
        .await
        .unwrap()
        .expect("watch reopens after the restart");
    read_until(&mut s, &mut resumed, |e| has_all(e, &want))
        .await
        .unwrap();
    drop(s);
    let last_seen = resumed.last().unwrap().log_index;

    // Switch to another node, over gRPC this time, from the next index.
    want.extend(operate(&cat, 3, 6).await.unwrap());
    let mut g = LedgerClient::connect(format!("http://{}", switched_to.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::WatchRequest {
        from_index: last_seen + 1,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let mut stream = g.watch(req).await.unwrap().into_inner();
    let deadline = Instant::now() + WAIT;
    while !has_all(&resumed, &want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .expect("gRPC watch event in time")
            .unwrap()
            .expect("stream open");
        resumed.push(api::feed::FeedEvent {
            log_index: ev.log_index,
            at_ms: ev.at_ms,
            changes: ev
                .changes
                .into_iter()
                .map(|c| api::feed::FeedChange {
                    kind: c.r#type,
                    performance_id: Some(c.performance_id).filter(|s| !s.is_empty()),
                    hold_id: Some(c.hold_id).filter(|s| !s.is_empty()),
                    booking_id: Some(c.booking_id).filter(|s| !s.is_empty()),
                    ..Default::default()
                })
                .collect(),
        });
    }
    let last = resumed.last().unwrap().log_index;

    // The reference up to the same index.
    let mut all: Vec<api::feed::FeedEvent> = Vec::new();
    read_until(&mut reference, &mut all, |e| {
        e.last().is_some_and(|x| x.log_index >= last)
    })
    .await
    .unwrap();

    // Nothing repeated: strictly increasing indexes, each change once.
    let indexes: Vec<u64> = resumed.iter().map(|e| e.log_index).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "log indexes repeat or go back: {indexes:?}"
    );
    let counts = facts(&resumed)
        .into_iter()
        .fold(BTreeMap::new(), |mut m, f| {
            *m.entry(f).or_insert(0) += 1;
            m
        });
    for w in &want {
        assert_eq!(
            counts.get(w),
            Some(&1),
            "{w:?} seen {:?} times",
            counts.get(w)
        );
    }
    // Nothing lost: the same log indexes (and changes) as the uninterrupted stream.
    let reference_indexes: Vec<u64> = all.iter().map(|e| e.log_index).collect();
    assert_eq!(indexes, reference_indexes);
    assert_eq!(facts(&resumed), facts(&all));
    assert!(
        want.len() >= 22,
        "the test did {} operations, too few to mean anything",
        want.len()
    );
    t.converged(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_refuses_buyers_bad_input_and_indexes_beyond_the_log() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let node = t.c().nodes[0].http.clone();
    let buyer = key(&t, "buyer").await;
    let service = key(&t, "service").await;
    let code = |r: Result<SseStream, (u16, String)>| match r {
        Ok(_) => panic!("the watch should have been refused"),
        Err((status, body)) => {
            let p: api::Problem = serde_json::from_str(&body).expect("a problem body");
            (status, p.code)
        }
    };
    assert_eq!(
        code(SseStream::open(&node, &buyer, "", None).await.unwrap()),
        (403, "forbidden".to_string())
    );
    assert_eq!(
        code(SseStream::open(&node, "nope", "", None).await.unwrap()),
        (401, "unauthenticated".to_string())
    );
    assert_eq!(
        code(
            SseStream::open(&node, &service, "?from=abc", None)
                .await
                .unwrap()
        ),
        (400, "bad_request".to_string())
    );
    assert_eq!(
        code(
            SseStream::open(&node, &service, "?since=1", None)
                .await
                .unwrap()
        ),
        (400, "bad_request".to_string())
    );
    assert_eq!(
        code(
            SseStream::open(&node, &service, "?from=1000000000", None)
                .await
                .unwrap()
        ),
        (422, "invalid_input".to_string())
    );
    // gRPC says the same with its codes.
    let mut g = LedgerClient::connect(format!("http://{}", t.c().nodes[1].grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::WatchRequest { from_index: 0 });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {buyer}").parse().unwrap());
    let err = g.watch(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.metadata().get("x-ticketledger-code").unwrap(),
        "forbidden"
    );
    // A watch from the next index sees the next change and nothing before it.
    let mut s = SseStream::open(&node, &service, "?from=0", None)
        .await
        .unwrap()
        .unwrap();
    let first = s.next_change(Instant::now() + WAIT).await.unwrap();
    assert_eq!(first.changes[0].kind, "performance_created");
    let status = t.admin().status().await.unwrap();
    let next = status.nodes.iter().map(|n| n.applied_index).max().unwrap() + 1;
    let mut s = SseStream::open(&node, &service, &format!("?from={next}"), None)
        .await
        .unwrap()
        .expect("watch from the end of the log opens and waits");
    let h = cat.buyers[0]
        .hold(&seats_hold(&cat.performance, &["A:2:2"]))
        .await
        .unwrap();
    let ev = s.next_change(Instant::now() + WAIT).await.unwrap();
    assert!(ev.log_index >= next);
    assert_eq!(ev.changes[0].kind, "hold_placed");
    assert_eq!(ev.changes[0].hold_id.as_deref(), Some(h.hold_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_clients_watch_reconnects_to_another_node_by_itself() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 3, 2).await.unwrap();
    let key = key(&t, "service").await;
    let leader = t.c().wait_leader(Duration::from_secs(5)).await.unwrap();
    // The client starts at the first address it is given: a follower, killed mid-stream.
    let victim = t.c().nodes.iter().find(|n| n.id != leader).unwrap().clone();
    let mut addrs = vec![victim.grpc.clone()];
    addrs.extend(
        t.c()
            .nodes
            .iter()
            .filter(|n| n.id != victim.id)
            .map(|n| n.grpc.clone()),
    );
    let c = client::grpc::GrpcClient::new(addrs)
        .with_key(key.clone())
        .with_deadline(WAIT);
    let mut reference = SseStream::open(&t.c().node(leader).unwrap().http, &key, "", None)
        .await
        .unwrap()
        .unwrap();
    let mut w = c.watch(0);
    let mut got: Vec<api::feed::FeedEvent> = Vec::new();
    let mut pull = async |got: &mut Vec<api::feed::FeedEvent>,
                          want: &BTreeSet<(String, String)>| {
        while !has_all(got, want) {
            let ev = tokio::time::timeout(WAIT, w.next())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("the watch goes on");
            got.push(api::feed::FeedEvent {
                log_index: ev.log_index,
                at_ms: ev.at_ms,
                changes: ev
                    .changes
                    .into_iter()
                    .map(|c| api::feed::FeedChange {
                        kind: c.r#type,
                        performance_id: Some(c.performance_id).filter(|s| !s.is_empty()),
                        hold_id: Some(c.hold_id).filter(|s| !s.is_empty()),
                        booking_id: Some(c.booking_id).filter(|s| !s.is_empty()),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
    };
    let mut want = operate(&cat, 1, 6).await.unwrap();
    pull(&mut got, &want).await;
    t.c().signal(victim.id, "KILL").unwrap();
    want.extend(operate(&cat, 2, 6).await.unwrap());
    pull(&mut got, &want).await;
    let last = got.last().unwrap().log_index;
    let mut all = Vec::new();
    read_until(&mut reference, &mut all, |e| {
        e.last().is_some_and(|x| x.log_index >= last)
    })
    .await
    .unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.log_index).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert_eq!(indexes, all.iter().map(|e| e.log_index).collect::<Vec<_>>());
    assert_eq!(facts(&got), facts(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_serves_at_most_256_watchers_and_frees_a_slot_when_one_leaves() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let key = key(&t, "service").await;
    let node = t.c().nodes[0].http.clone();
    let mut open = Vec::new();
    for i in 0..256 {
        let s = SseStream::open(&node, &key, "", None).await.unwrap();
        open.push(s.unwrap_or_else(|e| panic!("watcher {i} refused: {e:?}")));
    }
    let refused = SseStream::open(&node, &key, "", None).await.unwrap();
    match refused {
        Ok(_) => panic!("the 257th watcher was accepted"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("too_many_watchers"), "{body}");
        }
    }
    // Another node has its own slots.
    assert!(
        SseStream::open(&t.c().nodes[1].http, &key, "", None)
            .await
            .unwrap()
            .is_ok()
    );
    // A subscriber that leaves gives its slot back.
    open.pop();
    wait_until(WAIT, "a slot freed after a watcher left", || async {
        SseStream::open(&node, &key, "", None)
            .await
            .is_ok_and(|r| r.is_ok())
    })
    .await
    .unwrap();
}
