//! The public gRPC API against a real 3-node cluster: the on-sale path, with the HTTP API's
//! codes (carried in `x-ticketledger-code`), through a follower as well as the leader.

use cluster_tests::*;
use node::grpc::pb::{self, ledger_client::LedgerClient};
use tonic::Request;

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn code(s: &tonic::Status) -> String {
    s.metadata()
        .get("x-ticketledger-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_serves_the_on_sale_path_with_the_same_codes() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let admin_key = t.c().admin_key.clone();
    let leader = t
        .c()
        .wait_leader(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let follower = t
        .c()
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .unwrap()
        .grpc
        .clone();
    let mut c = LedgerClient::connect(format!("http://{follower}"))
        .await
        .unwrap();
    let venue = c
        .create_venue(with_key(
            pb::CreateVenueRequest {
                name: "Hall".into(),
                sections: vec![
                    pb::Section {
                        name: "A".into(),
                        rows: vec![pb::Row {
                            label: "1".into(),
                            seats: 10,
                        }],
                        capacity: 0,
                    },
                    pb::Section {
                        name: "Floor".into(),
                        rows: vec![],
                        capacity: 50,
                    },
                ],
                request_id: String::new(),
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((venue.seats, venue.ga_capacity), (10, 50));
    let event = c
        .create_event(with_key(
            pb::CreateEventRequest {
                name: "Show".into(),
                category: "music".into(),
                description: String::new(),
                request_id: String::new(),
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let perf = c
        .create_performance(with_key(
            pb::CreatePerformanceRequest {
                event_id: event.event_id,
                venue_id: venue.venue_id,
                starts_at_ms: 4_102_444_800_000,
                on_sale_at_ms: 0,
                hold_ttl_secs: 60,
                prices: vec![pb::Price {
                    section: "A".into(),
                    category: String::new(),
                    amount_minor: 4000,
                    currency: "EUR".into(),
                }],
                ..Default::default()
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let opened = c
        .set_sale_status(with_key(
            pb::SetSaleStatusRequest {
                performance_id: perf.performance_id.clone(),
                status: "on_sale".into(),
                ..Default::default()
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status, "on_sale");
    let b1 = t.admin().create_api_key("b1", "buyer").await.unwrap().key;
    let b2 = t.admin().create_api_key("b2", "buyer").await.unwrap().key;
    let hold = |seat: &str, request_id: &str| pb::PlaceHoldRequest {
        performance_id: perf.performance_id.clone(),
        seats: vec![seat.into()],
        request_id: request_id.into(),
        ..Default::default()
    };
    let h = c
        .place_hold(with_key(hold("A:1:4", "r-1"), &b1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.seats, vec!["A:1:4".to_string()]);
    // The same request id is the same request: the first outcome again.
    let again = c
        .place_hold(with_key(hold("A:1:4", "r-1"), &b1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.hold_id, h.hold_id);
    let taken = c
        .place_hold(with_key(hold("A:1:4", ""), &b2))
        .await
        .unwrap_err();
    assert_eq!(
        (taken.code(), code(&taken).as_str()),
        (tonic::Code::FailedPrecondition, "seat_unavailable")
    );
    let bad = c
        .place_hold(with_key(hold("Z:1:1", ""), &b2))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    let anon = c
        .place_hold(Request::new(hold("A:1:5", "")))
        .await
        .unwrap_err();
    assert_eq!(anon.code(), tonic::Code::Unauthenticated);
    let forbidden = c
        .confirm_hold(with_key(
            pb::ConfirmHoldRequest {
                hold_id: h.hold_id.clone(),
                payment_ref: "p".into(),
                request_id: String::new(),
            },
            &b1,
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&forbidden), "forbidden");
    let booking = c
        .confirm_hold(with_key(
            pb::ConfirmHoldRequest {
                hold_id: h.hold_id.clone(),
                payment_ref: "pay-1".into(),
                request_id: String::new(),
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(booking.tickets.len(), 1);
    let read = c
        .get_booking(with_key(
            pb::BookingRef {
                booking_id: booking.booking_id.clone(),
            },
            &b1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.tickets[0].seat, "A:1:4");
    let other = c
        .get_booking(with_key(
            pb::BookingRef {
                booking_id: booking.booking_id.clone(),
            },
            &b2,
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&other), "forbidden");
    t.converged(std::time::Duration::from_secs(20))
        .await
        .unwrap();
}
