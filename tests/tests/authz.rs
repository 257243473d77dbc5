//! Authorization on a real 3-node cluster (issue 6): every role (anonymous, a forged key, a
//! buyer, another buyer, an organizer, another organizer, a service, an operator) is tried
//! against every HTTP call it must not reach, each through a different node; the answer must
//! be the exact 401 or 403, and afterwards nothing the calls could have touched has changed.
//! Then: a confirm retried with the same idempotency key after a kill -9 of the leader is
//! applied once.
//!
//! Needs the `ticketd` binary: `cargo build --bins`.

use client::Client;
use cluster_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(20);

/// One HTTP call of the API, with arguments that would succeed for a role allowed to make it.
struct Call {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
}

fn call(name: &'static str, method: Method, path: String, body: Option<Value>) -> Call {
    Call {
        name,
        method,
        path,
        body,
    }
}

/// The world the calls act on: owned by `org1`, one booking and one live hold of `buyer1`,
/// one live hold of `buyer2`, a queue entry of `buyer1`, an event of `org2`.
struct World {
    venue: String,
    e1: String,
    e2: String,
    p: String,
    room: String,
    b1: String,
    code: String,
    h2: String,
    h3: String,
    q1: String,
    buyer1_id: String,
}

fn calls(w: &World) -> Vec<Call> {
    let venue = json!({"name": "Annex", "sections": [{"name": "Z", "capacity": 10}]});
    let perf = json!({
        "venue_id": w.venue, "starts_at": "2099-02-01T20:00:00Z", "on_sale_at": 0,
        "hold_ttl_secs": 600, "prices": [{"section": "A", "amount_minor": 100, "currency": "EUR"}]
    });
    let pay = json!({"payment_ref": "pay-x"});
    let p = &w.p;
    vec![
        call(
            "create_api_key",
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({"name": "x", "role": "operator"})),
        ),
        call(
            "create_venue",
            Method::POST,
            "/v1/venues".into(),
            Some(venue),
        ),
        call(
            "get_venue",
            Method::GET,
            format!("/v1/venues/{}", w.venue),
            None,
        ),
        call(
            "create_event",
            Method::POST,
            "/v1/events".into(),
            Some(json!({"name": "New", "category": "music"})),
        ),
        call("list_events", Method::GET, "/v1/events".into(), None),
        call(
            "get_event",
            Method::GET,
            format!("/v1/events/{}", w.e1),
            None,
        ),
        call(
            "update_event",
            Method::PATCH,
            format!("/v1/events/{}", w.e1),
            Some(json!({"name": "Renamed"})),
        ),
        call(
            "update_other_event",
            Method::PATCH,
            format!("/v1/events/{}", w.e2),
            Some(json!({"name": "Renamed"})),
        ),
        call(
            "create_performance",
            Method::POST,
            format!("/v1/events/{}/performances", w.e1),
            Some(perf),
        ),
        call(
            "get_performance",
            Method::GET,
            format!("/v1/performances/{p}"),
            None,
        ),
        call(
            "update_performance",
            Method::PATCH,
            format!("/v1/performances/{p}"),
            Some(json!({"status": "paused"})),
        ),
        call(
            "get_seats",
            Method::GET,
            format!("/v1/performances/{p}/seats"),
            None,
        ),
        call(
            "block_seats",
            Method::POST,
            format!("/v1/performances/{p}/blocked-seats"),
            Some(json!({"seats": ["A:3:1"], "blocked": true})),
        ),
        call(
            "check_in",
            Method::POST,
            format!("/v1/performances/{p}/check-in"),
            Some(json!({"code": w.code})),
        ),
        call(
            "join_queue",
            Method::POST,
            format!("/v1/performances/{}/queue", w.room),
            None,
        ),
        call(
            "get_queue",
            Method::GET,
            format!("/v1/queue/{}", w.q1),
            None,
        ),
        call(
            "create_hold",
            Method::POST,
            "/v1/holds".into(),
            Some(json!({"performance_id": p, "seats": ["A:3:2"]})),
        ),
        call("get_hold", Method::GET, format!("/v1/holds/{}", w.h2), None),
        call(
            "release_hold",
            Method::DELETE,
            format!("/v1/holds/{}", w.h2),
            None,
        ),
        call(
            "extend_hold",
            Method::POST,
            format!("/v1/holds/{}/extend", w.h2),
            Some(pay.clone()),
        ),
        call(
            "confirm_hold",
            Method::POST,
            format!("/v1/holds/{}/confirm", w.h2),
            Some(pay.clone()),
        ),
        call(
            "confirm_other_hold",
            Method::POST,
            format!("/v1/holds/{}/confirm", w.h3),
            Some(pay.clone()),
        ),
        call(
            "confirm_late",
            Method::POST,
            format!("/v1/holds/{}/confirm-late", w.h2),
            Some(pay),
        ),
        call(
            "record_payment",
            Method::POST,
            format!("/v1/holds/{}/payment", w.h2),
            Some(json!({"payment_ref": "pay-x", "event": {"kind": "failed", "reason": "r"}})),
        ),
        call(
            "get_checkout",
            Method::GET,
            format!("/v1/holds/{}/checkout", w.h2),
            None,
        ),
        call("list_checkouts", Method::GET, "/v1/checkouts".into(), None),
        call("list_bookings", Method::GET, "/v1/bookings".into(), None),
        call(
            "list_bookings_of_buyer1",
            Method::GET,
            format!("/v1/bookings?buyer={}", w.buyer1_id),
            None,
        ),
        call(
            "list_bookings_of_performance",
            Method::GET,
            format!("/v1/bookings?performance={p}"),
            None,
        ),
        call(
            "get_booking",
            Method::GET,
            format!("/v1/bookings/{}", w.b1),
            None,
        ),
        call(
            "refund",
            Method::POST,
            format!("/v1/bookings/{}/refund", w.b1),
            Some(json!({})),
        ),
        call(
            "sales_report",
            Method::GET,
            format!("/v1/reports/performances/{p}/sales"),
            None,
        ),
        call(
            "sales_report_csv",
            Method::GET,
            format!("/v1/reports/performances/{p}/sales?format=csv"),
            None,
        ),
        call("watch", Method::GET, "/v1/watch?from=0".into(), None),
        call(
            "cluster_status",
            Method::GET,
            "/v1/cluster/status".into(),
            None,
        ),
        call(
            "cluster_snapshot",
            Method::POST,
            "/v1/cluster/snapshot".into(),
            None,
        ),
        call(
            "cluster_backup",
            Method::GET,
            "/v1/cluster/backup".into(),
            None,
        ),
        call(
            "cluster_transfer_leader",
            Method::POST,
            "/v1/cluster/transfer-leader".into(),
            Some(json!({"to": 1})),
        ),
        call(
            "cluster_membership",
            Method::POST,
            "/v1/cluster/membership".into(),
            Some(json!({"voters": [1, 2, 3]})),
        ),
        call(
            "cluster_learners",
            Method::POST,
            "/v1/cluster/learners".into(),
            Some(json!({"node_id": 9, "grpc_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"})),
        ),
    ]
}

/// What the buyer-side and service-side roles must never reach, besides the cluster calls.
const NOT_FOR_BUYERS: &[&str] = &[
    "create_api_key",
    "create_venue",
    "create_event",
    "update_event",
    "update_other_event",
    "create_performance",
    "update_performance",
    "block_seats",
    "check_in",
    "confirm_hold",
    "confirm_other_hold",
    "confirm_late",
    "record_payment",
    "list_checkouts",
    "list_bookings_of_performance",
    "refund",
    "sales_report",
    "sales_report_csv",
    "watch",
];
/// What belongs to `buyer1` and no other buyer.
const BUYER1S: &[&str] = &[
    "get_hold",
    "release_hold",
    "extend_hold",
    "get_checkout",
    "get_queue",
    "get_booking",
    "list_bookings_of_buyer1",
];
/// What no organizer reaches, whatever it owns.
const NOT_FOR_ORGANIZERS: &[&str] = &[
    "create_api_key",
    "join_queue",
    "create_hold",
    "get_hold",
    "release_hold",
    "extend_hold",
    "confirm_hold",
    "confirm_other_hold",
    "confirm_late",
    "record_payment",
    "get_checkout",
    "list_checkouts",
    "get_queue",
    "list_bookings_of_buyer1",
    "list_bookings_of_performance",
    "get_booking",
    "refund",
    "watch",
];
/// What `org1` owns and `org2` must not reach.
const ORG1S: &[&str] = &[
    "update_event",
    "create_performance",
    "update_performance",
    "block_seats",
    "check_in",
    "sales_report",
    "sales_report_csv",
];
const NOT_FOR_SERVICES: &[&str] = &[
    "create_api_key",
    "create_venue",
    "create_event",
    "update_event",
    "update_other_event",
    "create_performance",
    "update_performance",
    "block_seats",
    "join_queue",
    "get_queue",
    "create_hold",
    "sales_report",
    "sales_report_csv",
];
const CLUSTER: &[&str] = &[
    "cluster_status",
    "cluster_snapshot",
    "cluster_backup",
    "cluster_transfer_leader",
    "cluster_membership",
    "cluster_learners",
];

fn denied(lists: &[&[&'static str]]) -> Vec<&'static str> {
    let mut v: Vec<&str> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    v.sort();
    v.dedup();
    v
}

/// Everything the denied calls could change, read as the operator.
async fn world_state(admin: &Client, w: &World) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let get = |path: String| {
        let admin = admin.clone();
        async move {
            let v: Value = admin
                .send::<(), _>(Method::GET, &path, None)
                .await
                .unwrap_or_else(|e| panic!("reading {path}: {e}"));
            v.to_string()
        }
    };
    out.insert(
        "performance",
        get(format!("/v1/performances/{}", w.p)).await,
    );
    out.insert("room", get(format!("/v1/performances/{}", w.room)).await);
    out.insert(
        "seats",
        get(format!("/v1/performances/{}/seats", w.p)).await,
    );
    out.insert("e1", get(format!("/v1/events/{}", w.e1)).await);
    out.insert("e2", get(format!("/v1/events/{}", w.e2)).await);
    out.insert("events", get("/v1/events".into()).await);
    out.insert("h2", get(format!("/v1/holds/{}", w.h2)).await);
    out.insert("h3", get(format!("/v1/holds/{}", w.h3)).await);
    out.insert("b1", get(format!("/v1/bookings/{}", w.b1)).await);
    out.insert("bookings", get("/v1/bookings".into()).await);
    out.insert("queue", get(format!("/v1/queue/{}", w.q1)).await);
    let checkouts = admin.checkouts(false, None, 500).await.unwrap();
    out.insert("checkouts", format!("{checkouts:?}"));
    let s = admin.status().await.unwrap();
    out.insert("membership", format!("{:?} {:?}", s.voters, s.learners));
    out
}

async fn build_world(t: &TestCluster, org1: &Client, org2: &Client) -> (World, Client, Client) {
    let admin = t.admin();
    let v = org1
        .create_venue(&api::CreateVenue {
            name: "Hall".into(),
            sections: vec![api::SectionSpec::Seated {
                name: "A".into(),
                rows: (1..=3)
                    .map(|r| api::RowSpec {
                        label: r.to_string(),
                        seats: 10,
                    })
                    .collect(),
            }],
        })
        .await
        .unwrap();
    let event = |name: &str| api::CreateEvent {
        name: name.into(),
        category: "music".into(),
        description: String::new(),
        media: vec![],
    };
    let e1 = org1.create_event(&event("Mine")).await.unwrap().event_id;
    let e2 = org2.create_event(&event("Theirs")).await.unwrap().event_id;
    let perf = |room: bool| api::CreatePerformance {
        venue_id: v.venue_id.clone(),
        starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
        on_sale_at: api::TimeInput::UnixMs(0),
        sale_ends_at: None,
        // Long enough that no hold of the test expires while it runs.
        hold_ttl_secs: 1800,
        payment_grace_secs: None,
        max_seats_per_order: Some(4),
        categories: None,
        prices: vec![api::Price {
            section: "A".into(),
            category: None,
            amount_minor: 4000,
            currency: "EUR".into(),
        }],
        waiting_room: room.then(|| api::WaitingRoomSpec {
            admission_rate_per_sec: 10,
            admission_ttl_secs: 60,
            max_active_admissions: 0,
            seed_commitment: "ab".repeat(32),
        }),
    };
    let p = org1
        .create_performance(&e1, &perf(false))
        .await
        .unwrap()
        .performance_id;
    let room = org1
        .create_performance(&e1, &perf(true))
        .await
        .unwrap()
        .performance_id;
    org1.update_performance(
        &p,
        &api::UpdatePerformance {
            status: "on_sale".into(),
            seed: None,
        },
    )
    .await
    .unwrap();
    let nodes = t.c().client().nodes();
    let anon = Client::new(nodes.clone());
    let session = anon
        .signup("buyer1@example.com", "correct horse", "Buyer One")
        .await
        .unwrap();
    let buyer1 = Client::new(nodes.clone()).with_key(&session.token);
    let buyer2 = Client::new(nodes.clone())
        .with_key(admin.create_api_key("buyer2", "buyer").await.unwrap().key);
    let service = Client::new(nodes).with_key(
        admin
            .create_api_key("payments", "service")
            .await
            .unwrap()
            .key,
    );
    let booked = buyer1
        .hold(&seats_hold(&p, &["A:1:1", "A:1:2"]))
        .await
        .unwrap();
    let b1 = service.confirm(&booked.hold_id, "pay-1").await.unwrap();
    let h2 = buyer1.hold(&seats_hold(&p, &["A:1:3"])).await.unwrap();
    let h3 = buyer2.hold(&seats_hold(&p, &["A:2:1"])).await.unwrap();
    let q1 = buyer1.join_queue(&room).await.unwrap();
    let w = World {
        venue: v.venue_id,
        e1,
        e2,
        p,
        room,
        code: b1.tickets[0].code.clone(),
        b1: b1.booking_id,
        h2: h2.hold_id,
        h3: h3.hold_id,
        q1: q1.queue_id,
        buyer1_id: session.user_id,
    };
    (w, buyer1, buyer2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_is_refused_every_call_it_must_not_reach_and_nothing_changes() {
    let t = TestCluster::start(3, &["--argon2-memory-kib=64", "--argon2-iterations=1"])
        .await
        .unwrap();
    let admin = t.admin();
    let org_key = |name: &'static str| {
        let admin = admin.clone();
        async move { admin.create_api_key(name, "organizer").await.unwrap().key }
    };
    let (org1_key, org2_key) = (org_key("org1").await, org_key("org2").await);
    let svc_key = admin.create_api_key("svc", "service").await.unwrap().key;
    let nodes = admin.nodes();
    let org1 = Client::new(nodes.clone()).with_key(&org1_key);
    let org2 = Client::new(nodes.clone()).with_key(&org2_key);
    let (w, buyer1, buyer2) = build_world(&t, &org1, &org2).await;
    let buyer1_token = buyer1.key().unwrap().to_string();
    let buyer2_key = buyer2.key().unwrap().to_string();
    let all = calls(&w);
    let before = world_state(&admin, &w).await;

    // (role, bearer, calls refused, expected status)
    let every: Vec<&str> = all.iter().map(|c| c.name).collect();
    let roles: Vec<(&str, Option<String>, Vec<&str>, u16)> = vec![
        ("anonymous", None, every.clone(), 401),
        ("unknown key", Some("not-a-key-at-all".into()), every, 401),
        (
            "buyer",
            Some(buyer1_token),
            denied(&[NOT_FOR_BUYERS, CLUSTER]),
            403,
        ),
        (
            "another buyer",
            Some(buyer2_key),
            denied(&[NOT_FOR_BUYERS, BUYER1S, CLUSTER]),
            403,
        ),
        (
            "organizer",
            Some(org1_key.clone()),
            denied(&[NOT_FOR_ORGANIZERS, &["update_other_event"], CLUSTER]),
            403,
        ),
        (
            "another organizer",
            Some(org2_key.clone()),
            denied(&[NOT_FOR_ORGANIZERS, ORG1S, CLUSTER]),
            403,
        ),
        (
            "service",
            Some(svc_key.clone()),
            denied(&[NOT_FOR_SERVICES, CLUSTER]),
            403,
        ),
        // An operator may do everything but join a waiting room (buyers only).
        (
            "operator",
            Some(t.c().admin_key.clone()),
            vec!["join_queue"],
            403,
        ),
    ];
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    let mut tried = 0usize;
    for (role, bearer, names, want) in &roles {
        for (i, c) in all.iter().filter(|c| names.contains(&c.name)).enumerate() {
            tried += 1;
            // A different node each time: followers forward, and must refuse alike.
            let node = &t.c().nodes[(tried + i) % t.c().nodes.len()].http;
            let mut req = http
                .request(c.method.clone(), format!("http://{node}{}", c.path))
                .header(api::IDEMPOTENCY_KEY_HEADER, client::new_idempotency_key())
                .timeout(Duration::from_secs(10));
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            if let Some(body) = &c.body {
                req = req.json(body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let code = serde_json::from_str::<api::Problem>(&text)
                .map(|p| p.code)
                .unwrap_or_else(|_| format!("(not a problem: {text:.80})"));
            let want_code = if *want == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            };
            if status != *want || code != want_code {
                failures.push(format!(
                    "{role}: {} {} → {status} {code}, want {want} {want_code}",
                    c.method, c.path
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {tried} refusals wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(tried > 150, "only {tried} calls tried");
    let after = world_state(&admin, &w).await;
    for (what, b) in &before {
        assert_eq!(b, &after[what], "{what} changed under refused calls");
    }
    // The owner's own calls do work: the refusals above were about who, not about what.
    let report = org1.sales_report(&w.p, None).await.unwrap();
    assert_eq!(report.tickets_sold, 2);
    let mine = buyer1
        .bookings(&client::BookingQuery::default())
        .await
        .unwrap();
    assert_eq!(mine.bookings.len(), 1);
    assert!(
        buyer2
            .bookings(&client::BookingQuery::default())
            .await
            .unwrap()
            .bookings
            .is_empty()
    );
    t.converged(CONVERGE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirm_retried_after_a_leader_kill_is_applied_once() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let buyer = &cat.buyers[0];
    let seats = ["A:1:1", "A:1:2", "A:1:3"];
    let hold = buyer
        .hold(&seats_hold(&cat.performance, &seats))
        .await
        .unwrap();
    let key = client::new_idempotency_key();
    let body = api::ConfirmHold {
        payment_ref: "pay-retry".into(),
    };
    let path = format!("/v1/holds/{}/confirm", hold.hold_id);
    // The first attempt goes to the leader itself, so its kill is the worst moment for it.
    let leader = t.c().wait_leader(Duration::from_secs(10)).await.unwrap();
    let at_leader = Client::new(vec![t.c().node(leader).unwrap().http.clone()])
        .with_key(cat.service.key().unwrap());
    let first: api::Booking = at_leader
        .send_keyed(Method::POST, &path, Some(&body), Some(key.clone()))
        .await
        .unwrap();
    assert_eq!(first.tickets.len(), 3);
    let pid = t.c().pid(leader).expect("the leader's pid");
    t.c().signal(leader, "KILL").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the old leader is dead",
        || async { !t.c().alive(leader) },
    )
    .await
    .unwrap();
    eprintln!("killed leader {leader} (pid {pid}); retrying the confirm elsewhere");
    // The retry: same key, same request, through the surviving nodes (which elect a leader).
    let survivors: Vec<String> = t
        .c()
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.http.clone())
        .collect();
    let service = Client::new(survivors.clone())
        .with_key(cat.service.key().unwrap())
        .with_deadline(Duration::from_secs(30));
    let again: api::Booking = service
        .send_keyed(Method::POST, &path, Some(&body), Some(key.clone()))
        .await
        .unwrap();
    assert_eq!(again, first, "the retry answers the first outcome");
    // A confirm with a fresh key is a new request: the hold is already booked.
    let e = service
        .confirm(&hold.hold_id, "pay-retry")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    // Read back: one booking of the buyer, its seats sold once, revenue counted once.
    let as_buyer = Client::new(survivors.clone()).with_key(buyer.key().unwrap());
    let mine = as_buyer
        .bookings(&client::BookingQuery::default())
        .await
        .unwrap();
    assert_eq!(mine.bookings.len(), 1, "{mine:?}");
    assert_eq!(mine.bookings[0].booking_id, first.booking_id);
    let all = service
        .bookings(&client::BookingQuery {
            performance: Some(cat.performance.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.bookings.len(), 1, "{all:?}");
    let p = service.performance(&cat.performance).await.unwrap();
    assert_eq!((p.totals.sold, p.totals.held), (3, 0), "{:?}", p.totals);
    assert_eq!(p.revenue_minor, 3 * 5000);
    let map = service.seats(&cat.performance, Some("A")).await.unwrap();
    for s in seats {
        let st = map.seats.iter().find(|x| x.seat == s).unwrap();
        assert_eq!(st.state, "sold", "{s}");
    }
    // The old leader rejoins and agrees.
    t.c().start(leader).unwrap();
    t.converged(CONVERGE).await.unwrap();
}
