//! gRPC parity with the HTTP API, through the typed gRPC client (`client::grpc::GrpcClient`)
//! on a real 3-node cluster: the calls beyond the on-sale path (accounts, catalog reads,
//! checkout), their authorization and stable codes; `grpc.health.v1.Health` following
//! readiness; reflection listing the services (what `grpcurl -plaintext host:port list` asks).

use client::grpc::{GrpcClient, pb};
use cluster_tests::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn grpc_addrs(t: &TestCluster) -> Vec<String> {
    t.c().nodes.iter().map(|n| n.grpc.clone()).collect()
}

fn code(e: &client::Error) -> (u16, String) {
    (e.status().unwrap_or(0), e.code().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_and_catalog_reads_over_grpc_match_http() {
    let t = TestCluster::start(3, &["--argon2-memory-kib=64", "--argon2-iterations=1"])
        .await
        .unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let admin = GrpcClient::new(grpc_addrs(&t)).with_key(t.c().admin_key.clone());
    let anon = GrpcClient::new(grpc_addrs(&t));

    // CreateApiKey: operator only; the key works at once.
    let org = admin
        .create_api_key(pb::CreateApiKeyRequest {
            name: "org".into(),
            role: "organizer".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(org.key_id.starts_with("k_"), "{org:?}");
    let organizer = GrpcClient::new(grpc_addrs(&t)).with_key(org.key.clone());
    let e = organizer
        .create_api_key(pb::CreateApiKeyRequest {
            name: "x".into(),
            role: "operator".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    let e = admin
        .create_api_key(pb::CreateApiKeyRequest {
            name: "x".into(),
            role: "king".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid_input".into()));

    // Signup and Login: a session whose token authenticates gRPC calls.
    let s = anon
        .signup(pb::SignupRequest {
            email: "Ada@example.com".into(),
            password: "correct horse battery".into(),
            name: "Ada".into(),
        })
        .await
        .unwrap();
    assert!(s.user_id.starts_with("u_") && s.expires_at_ms > 0, "{s:?}");
    let again = anon
        .signup(pb::SignupRequest {
            email: "ada@example.com".into(),
            password: "another password".into(),
            name: "Ada".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&again), (409, "already_exists".into()));
    let login = anon
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap();
    assert_eq!(login.user_id, s.user_id);
    let wrong = anon
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&wrong), (401, "unauthenticated".into()));
    let buyer = GrpcClient::new(grpc_addrs(&t)).with_key(login.token);

    // GetPerformance → GetEvent → GetVenue → GetSeats, as the buyer (any key may read).
    let perf = buyer
        .get_performance(pb::GetPerformanceRequest {
            performance_id: cat.performance.clone(),
            stale: false,
        })
        .await
        .unwrap();
    // `together` (the most seats side by side one order can get) is the same over both, and
    // on an untouched venue it is the per-order limit, or the GA places left if fewer.
    let http_perf = t.admin().performance(&cat.performance).await.unwrap();
    let together: Vec<u32> = perf.sections.iter().map(|s| s.together).collect();
    assert_eq!(
        together,
        http_perf
            .sections
            .iter()
            .map(|s| s.together)
            .collect::<Vec<_>>()
    );
    assert!(together.iter().all(|&n| n > 0), "{together:?}");
    let event = buyer
        .get_event(pb::EventRef {
            event_id: perf.event_id.clone(),
            stale: false,
        })
        .await
        .unwrap();
    assert_eq!(event.performances, vec![cat.performance.clone()]);
    let http_event = t.admin().event(&perf.event_id).await.unwrap();
    assert_eq!(
        (event.name.as_str(), event.category.as_str()),
        (http_event.name.as_str(), http_event.category.as_str())
    );
    let venue = buyer
        .get_venue(pb::VenueRef {
            venue_id: perf.venue_id.clone(),
            stale: true,
        })
        .await
        .unwrap();
    assert_eq!(venue.seats, 40);
    assert_eq!(
        venue
            .sections
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["A", "Floor"]
    );
    assert_eq!(venue.sections[1].capacity, 100);
    let e = buyer
        .get_venue(pb::VenueRef {
            venue_id: "v_999".into(),
            stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (404, "not_found".into()));
    cat.buyers[0]
        .hold(&seats_hold(&cat.performance, &["A:1:3"]))
        .await
        .unwrap();
    let seats = buyer
        .get_seats(pb::GetSeatsRequest {
            performance_id: cat.performance.clone(),
            section: "A".into(),
            stale: false,
        })
        .await
        .unwrap();
    assert_eq!(seats.seats.len(), 40);
    let http_seats = t.admin().seats(&cat.performance, Some("A")).await.unwrap();
    for (g, h) in seats.seats.iter().zip(&http_seats.seats) {
        assert_eq!((&g.seat, &g.state), (&h.seat, &h.state));
    }
    assert_eq!(
        seats
            .seats
            .iter()
            .find(|s| s.seat == "A:1:3")
            .unwrap()
            .state,
        "held"
    );
    let e = buyer
        .get_seats(pb::GetSeatsRequest {
            performance_id: cat.performance.clone(),
            section: "Nope".into(),
            stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s / 100), Some(4), "{e}");

    // ListEvents: filters and paging.
    for (name, category) in [
        ("Jazz night", "music"),
        ("Hamlet", "theatre"),
        ("Blues", "music"),
    ] {
        admin
            .create_event(pb::CreateEventRequest {
                name: name.into(),
                category: category.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let music = buyer
        .list_events(pb::ListEventsRequest {
            category: "music".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(music.events.len(), 3, "{music:?}");
    let page1 = buyer
        .list_events(pb::ListEventsRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.events.len(), 2);
    assert!(!page1.next.is_empty());
    let page2 = buyer
        .list_events(pb::ListEventsRequest {
            limit: 2,
            after: page1.next.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.events.len(), 2);
    assert!(page2.next.is_empty());
    let hamlet = buyer
        .list_events(pb::ListEventsRequest {
            q: "haml".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hamlet.events.len(), 1);
    let e = buyer
        .list_events(pb::ListEventsRequest {
            limit: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "bad_request".into()));
    t.converged(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_calls_over_grpc_with_request_ids_and_roles() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let service_key = t
        .admin()
        .create_api_key("pay", "service")
        .await
        .unwrap()
        .key;
    let buyer_key = t.admin().create_api_key("b", "buyer").await.unwrap().key;
    let service = GrpcClient::new(grpc_addrs(&t)).with_key(service_key);
    let buyer = GrpcClient::new(grpc_addrs(&t)).with_key(buyer_key);

    let hold = |seat: &str| pb::PlaceHoldRequest {
        performance_id: cat.performance.clone(),
        seats: vec![seat.into()],
        ..Default::default()
    };
    // ExtendHold with a payment_ref opens a checkout; GetCheckout shows it.
    let h = buyer.place_hold(hold("A:1:1")).await.unwrap();
    buyer
        .extend_hold(pb::ExtendHoldRequest {
            hold_id: h.hold_id.clone(),
            payment_ref: "pay-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = buyer
        .get_checkout(pb::HoldRef {
            hold_id: h.hold_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (c.state.as_str(), c.payment_ref.as_str()),
        ("started", "pay-1")
    );

    // RecordPayment: service only; the same request_id is the same request.
    let captured = |request_id: &str| pb::RecordPaymentRequest {
        hold_id: h.hold_id.clone(),
        payment_ref: "pay-1".into(),
        event: "captured".into(),
        provider_ref: "psp-1".into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let e = buyer.record_payment(captured("")).await.unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    let c = service.record_payment(captured("rp-1")).await.unwrap();
    assert_eq!(
        (c.state.as_str(), c.provider_ref.as_str()),
        ("captured", "psp-1")
    );
    let c2 = service.record_payment(captured("rp-1")).await.unwrap();
    assert_eq!(c2.state, "captured");
    let mut other = captured("rp-1");
    other.provider_ref = "psp-2".into();
    let e = service.record_payment(other).await.unwrap_err();
    assert_eq!(code(&e), (409, "idempotency_conflict".into()));
    let mut bad = captured("");
    bad.event = "stolen".into();
    let e = service.record_payment(bad).await.unwrap_err();
    assert_eq!(code(&e), (422, "invalid_input".into()));

    // ListCheckouts: open ones for the service; not for buyers.
    let open = service
        .list_checkouts(pb::ListCheckoutsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        open.checkouts
            .iter()
            .map(|c| c.hold_id.as_str())
            .collect::<Vec<_>>(),
        vec![h.hold_id.as_str()]
    );
    let e = buyer
        .list_checkouts(pb::ListCheckoutsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));

    // ConfirmLate: a live hold is not late (409 from the ledger); ConfirmHold books it, and
    // a confirm retried with its request_id returns the same booking.
    let e = service
        .confirm_late(pb::ConfirmHoldRequest {
            hold_id: h.hold_id.clone(),
            payment_ref: "pay-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    let confirm = pb::ConfirmHoldRequest {
        hold_id: h.hold_id.clone(),
        payment_ref: "pay-1".into(),
        request_id: "confirm-1".into(),
    };
    let b1 = service.confirm_hold(confirm.clone()).await.unwrap();
    let b2 = service.confirm_hold(confirm).await.unwrap();
    assert_eq!(b1.booking_id, b2.booking_id);
    let done = service
        .get_checkout(pb::HoldRef {
            hold_id: h.hold_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.booking_id.as_str()),
        ("booked", b1.booking_id.as_str())
    );
    // ListBookings: the buyer's own; other scopes need the service role.
    let mine = buyer
        .list_bookings(pb::ListBookingsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        mine.bookings
            .iter()
            .map(|b| b.booking_id.as_str())
            .collect::<Vec<_>>(),
        vec![b1.booking_id.as_str()]
    );
    let e = buyer
        .list_bookings(pb::ListBookingsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    let by_perf = service
        .list_bookings(pb::ListBookingsRequest {
            performance_id: cat.performance.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_perf.bookings.len(), 1);
    let e = service
        .list_bookings(pb::ListBookingsRequest {
            buyer: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "bad_request".into()));

    // CheckIn: once; the second time is ticket_used; a malformed code is invalid_input.
    let ticket = &b1.tickets[0];
    let door = pb::CheckInRequest {
        performance_id: cat.performance.clone(),
        code: ticket.code.clone(),
        ..Default::default()
    };
    let e = buyer.check_in(door.clone()).await.unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    let ok = service.check_in(door.clone()).await.unwrap();
    assert_eq!(
        (ok.ticket_id.as_str(), ok.seat.as_str()),
        (ticket.ticket_id.as_str(), "A:1:1")
    );
    let e = service.check_in(door).await.unwrap_err();
    assert_eq!(code(&e), (409, "ticket_used".into()));
    let e = service
        .check_in(pb::CheckInRequest {
            performance_id: cat.performance.clone(),
            code: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid_input".into()));

    let all = service
        .list_checkouts(pb::ListCheckoutsRequest {
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.checkouts.len(), 1);
    assert!(
        service
            .list_checkouts(pb::ListCheckoutsRequest::default())
            .await
            .unwrap()
            .checkouts
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_readiness_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let t = TestCluster::start(3, &[]).await.unwrap();
    // Watch a follower: a leader cut off from its quorum may go on believing it leads.
    let leader = t.c().wait_leader(WAIT).await.unwrap();
    let node = t.c().nodes.iter().find(|n| n.id != leader).unwrap().clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone());
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status())
        }
    };
    wait_until(WAIT, "the follower SERVING", || async {
        status("").await.ok() == Some(ServingStatus::Serving)
    })
    .await
    .unwrap();
    assert_eq!(
        status("ticketledger.v1.Ledger").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = status("no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection: the services a `grpcurl list` shows, and the descriptor of the API.
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::new(channel.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "ticketledger.v1.Ledger".into(),
                )),
            },
        ];
        let mut answers = r
            .server_reflection_info(futures::stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "ticketledger.v1.Ledger",
            "ticketledger.v1.Admin",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("a file descriptor");
        };
        assert!(!files.file_descriptor_proto.is_empty());
        let raw = &files.file_descriptor_proto[0];
        assert!(
            raw.windows(b"PlaceHold".len()).any(|w| w == b"PlaceHold")
                && raw.windows(b"Watch".len()).any(|w| w == b"Watch"),
            "the descriptor names the RPCs"
        );
    }

    // Without a quorum the follower has no leader, so it is not ready: NOT_SERVING.
    // Kill the other follower first: with the leader gone first, the two left could elect
    // the watched node, and a leader cut off from its quorum may go on believing it leads.
    let mut killed: Vec<u64> = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != node.id && *id != leader)
        .collect();
    killed.push(leader);
    for id in &killed {
        t.c().signal(*id, "KILL").unwrap();
    }
    wait_until(
        WAIT,
        "the follower NOT_SERVING without a quorum",
        || async { status("").await.ok() == Some(ServingStatus::NotServing) },
    )
    .await
    .unwrap();
    assert_eq!(
        status("ticketledger.v1.Ledger").await.unwrap(),
        ServingStatus::NotServing
    );
    // A quorum again: SERVING again, and the health answer agrees with /readyz.
    t.c().start(killed[0]).unwrap();
    let start = Instant::now();
    wait_until(WAIT, "the follower SERVING again", || async {
        status("").await.ok() == Some(ServingStatus::Serving)
    })
    .await
    .unwrap();
    assert!(start.elapsed() < WAIT);
    let ready = reqwest::get(format!("http://{}/readyz", node.http))
        .await
        .unwrap();
    assert!(ready.status().is_success());
}

/// The organizer calls (UpdateEvent, BlockSeats, GetSalesReport) over gRPC against their
/// HTTP twins: the same answers, another organizer refused alike, the same bad-input codes,
/// and a retry with the same request_id applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn organizer_calls_over_grpc_match_http() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let admin = t.admin();
    let nodes = admin.nodes();
    let org_key = admin.create_api_key("org", "organizer").await.unwrap().key;
    let rival_key = admin
        .create_api_key("rival", "organizer")
        .await
        .unwrap()
        .key;
    let buyer_key = admin.create_api_key("b", "buyer").await.unwrap().key;
    let org_http = client::Client::new(nodes.clone()).with_key(org_key.clone());
    let rival_http = client::Client::new(nodes.clone()).with_key(rival_key.clone());
    let org = GrpcClient::new(grpc_addrs(&t)).with_key(org_key);
    let rival = GrpcClient::new(grpc_addrs(&t)).with_key(rival_key);
    let buyer = GrpcClient::new(grpc_addrs(&t)).with_key(buyer_key);
    let operator = GrpcClient::new(grpc_addrs(&t)).with_key(t.c().admin_key.clone());

    let venue = org_http
        .create_venue(&api::CreateVenue {
            name: "Hall".into(),
            sections: vec![api::SectionSpec::Seated {
                name: "A".into(),
                rows: vec![api::RowSpec {
                    label: "1".into(),
                    seats: 10,
                }],
            }],
        })
        .await
        .unwrap();
    let event = org_http
        .create_event(&api::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: "the first".into(),
            media: vec![],
        })
        .await
        .unwrap()
        .event_id;
    let perf = org_http
        .create_performance(
            &event,
            &api::CreatePerformance {
                venue_id: venue.venue_id,
                starts_at: api::TimeInput::Rfc3339("2099-01-01T20:00:00Z".into()),
                on_sale_at: api::TimeInput::UnixMs(0),
                sale_ends_at: None,
                hold_ttl_secs: 600,
                payment_grace_secs: None,
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
        .await
        .unwrap()
        .performance_id;
    org_http
        .update_performance(
            &perf,
            &api::UpdatePerformance {
                status: "on_sale".into(),
                seed: None,
            },
        )
        .await
        .unwrap();

    // UpdateEvent: another organizer is refused as over HTTP; the owner's change is the
    // event HTTP then reads; the same request_id again is the same answer.
    let rename = |request_id: &str| pb::UpdateEventRequest {
        event_id: event.clone(),
        name: Some("Renamed".into()),
        replace_media: true,
        media: vec![pb::MediaItem {
            kind: "image".into(),
            url: "https://example.com/b.png".into(),
        }],
        request_id: request_id.into(),
        ..Default::default()
    };
    let e = rival.update_event(rename("")).await.unwrap_err();
    let http_e = rival_http
        .update_event(
            &event,
            &api::UpdateEvent {
                name: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    assert_eq!(code(&e), code(&http_e));
    let updated = org.update_event(rename("ue-1")).await.unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.description.as_str()),
        ("Renamed", "the first")
    );
    let http_event = org_http.event(&event).await.unwrap();
    assert_eq!(
        (
            http_event.name.as_str(),
            http_event.category.as_str(),
            http_event.description.as_str(),
            http_event.media.len(),
            http_event.media[0].url.as_str(),
        ),
        (
            updated.name.as_str(),
            updated.category.as_str(),
            updated.description.as_str(),
            updated.media.len(),
            updated.media[0].url.as_str(),
        )
    );
    let retried = org.update_event(rename("ue-1")).await.unwrap();
    assert_eq!(retried, updated);
    let e = org
        .update_event(pb::UpdateEventRequest {
            event_id: event.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let http_e = org_http
        .update_event(&event, &api::UpdateEvent::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid_input".into()));
    assert_eq!(code(&e), code(&http_e));

    // BlockSeats: refused to another organizer; a retry with its request_id is answered
    // as the first time (2 changed), a new call on the same seats changes none, over
    // either protocol; a seat not in the venue is the same code.
    let block = |request_id: &str| pb::BlockSeatsRequest {
        performance_id: perf.clone(),
        seats: vec!["A:1:1".into(), "A:1:2".into()],
        blocked: true,
        request_id: request_id.into(),
    };
    let e = rival.block_seats(block("")).await.unwrap_err();
    let http_e = rival_http
        .block_seats(&perf, vec!["A:1:1".into()], true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    assert_eq!(code(&e), code(&http_e));
    assert_eq!(org.block_seats(block("bs-1")).await.unwrap().changed, 2);
    assert_eq!(org.block_seats(block("bs-1")).await.unwrap().changed, 2);
    assert_eq!(org.block_seats(block("bs-2")).await.unwrap().changed, 0);
    let http_again = org_http
        .block_seats(&perf, vec!["A:1:1".into(), "A:1:2".into()], true)
        .await
        .unwrap();
    assert_eq!(http_again.changed, 0);
    let mut bad = block("");
    bad.seats = vec!["Z:9:9".into()];
    let e = org.block_seats(bad).await.unwrap_err();
    let http_e = org_http
        .block_seats(&perf, vec!["Z:9:9".into()], true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), (422, "invalid_input".into()));
    assert_eq!(code(&e), code(&http_e));
    let seats = buyer
        .get_seats(pb::GetSeatsRequest {
            performance_id: perf.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let blocked: Vec<&str> = seats
        .seats
        .iter()
        .filter(|s| s.state == "blocked")
        .map(|s| s.seat.as_str())
        .collect();
    assert_eq!(blocked, ["A:1:1", "A:1:2"]);

    // A sale, then GetSalesReport: the HTTP report's figures and its CSV table.
    let h = buyer
        .place_hold(pb::PlaceHoldRequest {
            performance_id: perf.clone(),
            seats: vec!["A:1:3".into(), "A:1:4".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    operator
        .confirm_hold(pb::ConfirmHoldRequest {
            hold_id: h.hold_id.clone(),
            payment_ref: "pay-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let report = |csv: bool| pb::SalesReportRequest {
        performance_id: perf.clone(),
        csv,
        ..Default::default()
    };
    let g = org.get_sales_report(report(true)).await.unwrap();
    let http = org_http.sales_report(&perf, None).await.unwrap();
    let totals = g.totals.unwrap();
    assert_eq!(
        (
            g.performance_id.as_str(),
            g.event_id.as_str(),
            g.status.as_str(),
            g.currency.as_str(),
            g.bookings,
            g.tickets_sold,
            g.revenue_minor,
            g.bucket_secs,
            (
                totals.capacity,
                totals.sold,
                totals.blocked,
                totals.available
            ),
        ),
        (
            http.performance_id.as_str(),
            http.event_id.as_str(),
            http.status.as_str(),
            http.currency.as_str(),
            http.bookings,
            http.tickets_sold,
            http.revenue_minor,
            http.bucket_secs,
            (
                http.totals.capacity,
                http.totals.sold,
                http.totals.blocked,
                http.totals.available
            ),
        )
    );
    assert_eq!(
        (g.bookings, g.tickets_sold, g.revenue_minor),
        (1, 2, 10_000)
    );
    assert_eq!((totals.sold, totals.blocked, totals.available), (2, 2, 6));
    assert_eq!(g.by_category.len(), http.by_category.len());
    assert_eq!(g.over_time.len(), http.over_time.len());
    assert_eq!(g.over_time[0].starts_at_ms, http.over_time[0].starts_at_ms);
    let http_csv = org_http.sales_report_csv(&perf, None).await.unwrap();
    assert_eq!(g.csv, http_csv);
    assert!(
        org.get_sales_report(report(false))
            .await
            .unwrap()
            .csv
            .is_empty()
    );
    let by_operator = operator.get_sales_report(report(false)).await.unwrap();
    assert_eq!(by_operator.tickets_sold, 2);
    let e = rival.get_sales_report(report(false)).await.unwrap_err();
    let http_e = rival_http.sales_report(&perf, None).await.unwrap_err();
    assert_eq!(code(&e), (403, "forbidden".into()));
    assert_eq!(code(&e), code(&http_e));
    let mut bad = report(false);
    bad.bucket_secs = 1;
    let e = org.get_sales_report(bad).await.unwrap_err();
    let http_e = org_http.sales_report(&perf, Some(1)).await.unwrap_err();
    assert_eq!(code(&e).0, 400);
    assert_eq!(code(&e), code(&http_e));
}
