//! The calls for bookings lists, door check-in, organizers' updates and sales reports, on a
//! real 3-node cluster: each call's answers, its paging, its bad input (a clear 4xx that
//! changes nothing) and what it does to the rest of the ledger.
//!
//! Needs the `ticketd` binary: `cargo build --bins`.

use client::{BookingQuery, Client};
use cluster_tests::*;
use reqwest::Method;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(20);

struct Setup {
    org: Client,
    service: Client,
    buyers: Vec<Client>,
    event: String,
    p: String,
}

async fn setup(t: &TestCluster) -> Setup {
    let admin = t.admin();
    let nodes = admin.nodes();
    let with = |key: String| Client::new(nodes.clone()).with_key(key);
    let org = with(admin.create_api_key("org", "organizer").await.unwrap().key);
    let service = with(admin.create_api_key("svc", "service").await.unwrap().key);
    let mut buyers = Vec::new();
    for i in 0..2 {
        let k = admin
            .create_api_key(&format!("b{i}"), "buyer")
            .await
            .unwrap();
        buyers.push(with(k.key));
    }
    let v = org
        .create_venue(&api::CreateVenue {
            name: "Hall".into(),
            sections: vec![
                api::SectionSpec::Seated {
                    name: "A".into(),
                    rows: (1..=3)
                        .map(|r| api::RowSpec {
                            label: r.to_string(),
                            seats: 10,
                        })
                        .collect(),
                },
                api::SectionSpec::GeneralAdmission {
                    name: "Floor".into(),
                    capacity: 50,
                },
            ],
        })
        .await
        .unwrap();
    let event = org
        .create_event(&api::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: "the first".into(),
            media: vec![api::MediaItem {
                kind: "image".into(),
                url: "https://example.com/a.png".into(),
            }],
        })
        .await
        .unwrap()
        .event_id;
    let p = org
        .create_performance(
            &event,
            &api::CreatePerformance {
                venue_id: v.venue_id,
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 1800,
                payment_grace_secs: None,
                max_seats_per_order: Some(4),
                categories: Some(vec!["adult".into(), "student".into()]),
                prices: vec![
                    api::Price {
                        section: "A".into(),
                        category: Some("adult".into()),
                        amount_minor: 5000,
                        currency: "EUR".into(),
                    },
                    api::Price {
                        section: "A".into(),
                        category: Some("student".into()),
                        amount_minor: 3000,
                        currency: "EUR".into(),
                    },
                    api::Price {
                        section: "Floor".into(),
                        category: Some("adult".into()),
                        amount_minor: 2000,
                        currency: "EUR".into(),
                    },
                ],
                waiting_room: None,
            },
        )
        .await
        .unwrap()
        .performance_id;
    org.update_performance(
        &p,
        &api::UpdatePerformance {
            status: "on_sale".into(),
            seed: None,
        },
    )
    .await
    .unwrap();
    Setup {
        org,
        service,
        buyers,
        event,
        p,
    }
}

fn hold_req(p: &str, seats: &[&str], category: Option<&str>) -> api::CreateHold {
    api::CreateHold {
        category: category.map(str::to_string),
        ..seats_hold(p, seats)
    }
}

/// One request to node 0 with the client's key, any path and query: the status.
async fn status_of(c: &Client, method: Method, path_and_query: &str, body: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path_and_query}", c.nodes()[0]))
        .bearer_auth(c.key().unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    req.send().await.unwrap().status().as_u16()
}

async fn status_code<T: std::fmt::Debug>(r: client::Result<T>) -> (u16, String) {
    let e = r.expect_err("a refusal");
    (e.status().unwrap_or(0), e.code().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bookings_check_in_organizer_updates_and_sales_reports() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let s = setup(&t).await;
    let (b0, b1, svc, org, p) = (&s.buyers[0], &s.buyers[1], &s.service, &s.org, &s.p);

    // Three bookings of buyer 0 (adult, student, GA), one of buyer 1.
    let mut mine = Vec::new();
    for (seats, cat) in [
        (vec!["A:1:1", "A:1:2"], None),
        (vec!["A:1:3"], Some("student")),
    ] {
        let h = b0.hold(&hold_req(p, &seats, cat)).await.unwrap();
        mine.push(svc.confirm(&h.hold_id, "pay").await.unwrap());
    }
    let ga = b0
        .hold(&api::CreateHold {
            performance_id: p.clone(),
            seats: None,
            section: Some("Floor".into()),
            quantity: Some(3),
            category: None,
        })
        .await
        .unwrap();
    mine.push(svc.confirm(&ga.hold_id, "pay").await.unwrap());
    let h = b1.hold(&seats_hold(p, &["A:2:1"])).await.unwrap();
    let theirs = svc.confirm(&h.hold_id, "pay").await.unwrap();
    let live = b1.hold(&seats_hold(p, &["A:2:2"])).await.unwrap();

    // ---- GET /v1/bookings: mine only, in id order, paged.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b0
            .bookings(&BookingQuery {
                after: after.clone(),
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.bookings.len() <= 2);
        seen.extend(page.bookings.into_iter().map(|b| b.booking_id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let want: Vec<String> = mine.iter().map(|b| b.booking_id.clone()).collect();
    assert_eq!(seen, want);
    let all_of_perf = svc
        .bookings(&BookingQuery {
            performance: Some(p.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all_of_perf.bookings.len(), 4);
    assert!(all_of_perf.next.is_none());
    let only_b1 = b1.bookings(&BookingQuery::default()).await.unwrap();
    assert_eq!(only_b1.bookings, vec![theirs.clone()]);
    for (q, want) in [
        ("limit=0", 400),
        ("limit=201", 400),
        ("after=h_1", 400),
        ("buyer=p_1", 400),
        ("performance=x", 400),
        ("nonsense=1", 400),
    ] {
        let st = status_of(svc, Method::GET, &format!("/v1/bookings?{q}"), None).await;
        assert_eq!(st, want, "{q}");
    }

    // ---- check-in: once per code; the organizer, at the door.
    let code = mine[0].tickets[0].code.clone();
    let done = org.check_in(p, &code).await.unwrap();
    assert_eq!(done.ticket_id, mine[0].tickets[0].ticket_id);
    assert_eq!(done.seat.as_deref(), Some("A:1:1"));
    assert_eq!(
        status_code(org.check_in(p, &code).await).await,
        (409, "ticket_used".into())
    );
    assert_eq!(
        status_code(svc.check_in(p, &"0".repeat(32)).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        status_code(org.check_in(p, "not-hex").await).await,
        (422, "invalid_input".into())
    );
    let b = b0.booking(&mine[0].booking_id).await.unwrap();
    assert_eq!(b.tickets[0].state, "checked_in");
    assert_eq!(b.tickets[1].state, "valid");
    // A checked-in ticket is not refunded; the rest of the booking is.
    let (st, code_str) = status_code(
        svc.refund(&mine[0].booking_id, vec![b.tickets[0].ticket_id.clone()])
            .await,
    )
    .await;
    assert_eq!(st / 100, 4, "{st} {code_str}");
    svc.refund(&mine[1].booking_id, vec![]).await.unwrap();

    // ---- PATCH /v1/events/{id}: the given fields change, the others stay.
    let e = org
        .update_event(
            &s.event,
            &api::UpdateEvent {
                name: Some("Show, renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.name, "Show, renamed");
    assert_eq!(
        (e.category.as_str(), e.description.as_str()),
        ("music", "the first")
    );
    assert_eq!(e.media.len(), 1);
    let e = org
        .update_event(
            &s.event,
            &api::UpdateEvent {
                media: Some(vec![]),
                category: Some("theatre".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (e.name.as_str(), e.category.as_str()),
        ("Show, renamed", "theatre")
    );
    assert!(e.media.is_empty());
    let before = org.event(&s.event).await.unwrap();
    let path = format!("/v1/events/{}", s.event);
    for (body, want) in [
        ("{}", 422),
        (r#"{"name":""}"#, 422),
        (
            &format!(r#"{{"name":"{}"}}"#, "x".repeat(10_000)) as &str,
            422,
        ),
        (r#"{"colour":"red"}"#, 400),
        ("not json", 400),
    ] {
        let st = status_of(org, Method::PATCH, &path, Some(body)).await;
        assert_eq!(st, want, "{body:.40}");
    }
    let st = status_of(
        org,
        Method::PATCH,
        "/v1/events/e_999999",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(org.event(&s.event).await.unwrap(), before);

    // ---- blocked seats: blocked ones cannot be held; held or sold ones cannot be blocked.
    let r = org
        .block_seats(p, vec!["A:3:1".into(), "A:3:2".into()], true)
        .await
        .unwrap();
    assert_eq!(r.changed, 2);
    let again = org
        .block_seats(p, vec!["A:3:1".into()], true)
        .await
        .unwrap();
    assert_eq!(again.changed, 0, "already blocked");
    let map = org.seats(p, Some("A")).await.unwrap();
    let state = |seat: &str| {
        map.seats
            .iter()
            .find(|s| s.seat == seat)
            .map(|s| s.state.clone())
    };
    assert_eq!(state("A:3:1").as_deref(), Some("blocked"));
    let (st, c) = status_code(b1.hold(&seats_hold(p, &["A:3:1"])).await).await;
    assert_eq!((st, c.as_str()), (409, "seat_unavailable"));
    let before = org.performance(p).await.unwrap();
    for (seats, want, code) in [
        (vec!["A:2:2"], 409, "seat_unavailable"),
        (vec!["A:1:1"], 409, "seat_unavailable"),
        (vec!["A:3:3", "Z:9:9"], 422, "invalid_input"),
        (vec![], 422, "invalid_input"),
    ] {
        let got = status_code(
            org.block_seats(p, seats.iter().map(|s| s.to_string()).collect(), true)
                .await,
        )
        .await;
        assert_eq!(got, (want, code.to_string()), "{seats:?}");
    }
    let too_many: Vec<String> = (0..10_001).map(|i| format!("A:1:{i}")).collect();
    let got = status_code(org.block_seats(p, too_many, true).await).await;
    assert_eq!(got, (422, "limit_exceeded".into()));
    assert_eq!(
        org.performance(p).await.unwrap(),
        before,
        "refusals changed nothing"
    );
    let r = org
        .block_seats(p, vec!["A:3:2".into()], false)
        .await
        .unwrap();
    assert_eq!(r.changed, 1);

    // ---- the sales report: what the performance says, split by category and time.
    let perf = org.performance(p).await.unwrap();
    let r = org.sales_report(p, Some(60)).await.unwrap();
    assert_eq!(r.totals, perf.totals);
    assert_eq!(r.sections, perf.sections);
    assert_eq!(r.revenue_minor, perf.revenue_minor);
    assert_eq!(r.bookings, 4);
    // Sold: 2 adult seats + 3 GA + 1 of buyer 1; refunded: the student seat.
    assert_eq!(
        (r.tickets_sold, r.tickets_refunded, r.tickets_checked_in),
        (6, 1, 1)
    );
    assert_eq!(r.revenue_minor, 2 * 5000 + 3 * 2000 + 5000);
    assert_eq!(r.refunded_minor, 3000);
    let adult = r
        .by_category
        .iter()
        .find(|c| c.category == "adult")
        .unwrap();
    let student = r
        .by_category
        .iter()
        .find(|c| c.category == "student")
        .unwrap();
    assert_eq!(
        (adult.tickets_sold, adult.revenue_minor),
        (6, r.revenue_minor)
    );
    assert_eq!(
        (student.tickets_refunded, student.refunded_minor),
        (1, 3000)
    );
    assert_eq!(r.totals.held, 1, "buyer 1's live hold");
    assert_eq!(r.totals.blocked, 1);
    assert_eq!(
        r.over_time.iter().map(|b| b.bookings).sum::<u32>(),
        4,
        "{:?}",
        r.over_time
    );
    assert_eq!(
        r.over_time.iter().map(|b| b.revenue_minor).sum::<u64>(),
        r.revenue_minor
    );
    assert!(
        r.over_time
            .windows(2)
            .all(|w| w[0].starts_at_ms < w[1].starts_at_ms)
    );
    assert!(r.over_time.iter().all(|b| b.starts_at_ms % 60_000 == 0));
    let csv = org.sales_report_csv(p, None).await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("kind,key,capacity,available,held,sold,blocked"));
    let columns = lines[0].split(',').count();
    assert!(
        lines.iter().all(|l| l.split(',').count() == columns),
        "{csv}"
    );
    assert!(lines[1].starts_with(&format!("total,{p},")), "{csv}");
    assert!(
        lines.iter().any(|l| l.starts_with("section,Floor,50,")),
        "{csv}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("category,student,")),
        "{csv}"
    );
    assert!(lines.iter().any(|l| l.starts_with("time,")), "{csv}");
    for q in [
        "format=xml",
        "bucket_secs=1",
        "bucket_secs=99999999999",
        "x=1",
    ] {
        let path = format!("/v1/reports/performances/{p}/sales?{q}");
        assert_eq!(status_of(org, Method::GET, &path, None).await, 400, "{q}");
    }
    let path = "/v1/reports/performances/p_99999/sales";
    assert_eq!(status_of(org, Method::GET, path, None).await, 404);
    drop(live);
    t.converged(CONVERGE).await.unwrap();
}
