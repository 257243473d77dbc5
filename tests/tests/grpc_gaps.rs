//! The gRPC API's operational parts on real clusters: health that follows the leader's
//! quorum, the HTTP rate limits applied to gRPC calls (shared buckets), and the operator's
//! `ticketledger.v1.Admin` service against its HTTP twin (`/v1/cluster/...`).

use client::grpc::{GrpcClient, pb};
use cluster_tests::*;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const WAIT: Duration = Duration::from_secs(30);

fn grpc_addrs(t: &TestCluster) -> Vec<String> {
    t.c().nodes.iter().map(|n| n.grpc.clone()).collect()
}

async fn health_of(grpc: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut h = HealthClient::new(channel);
    let mut r = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    r.set_timeout(Duration::from_secs(2));
    h.check(r).await.ok().map(|r| r.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_not_serving_on_a_leader_that_lost_its_quorum() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let leader = t.c().wait_leader(WAIT).await.unwrap();
    let grpc = t.c().node(leader).unwrap().grpc.clone();
    wait_until(WAIT, "the leader SERVING", || async {
        health_of(&grpc).await == Some(ServingStatus::Serving)
    })
    .await
    .unwrap();

    // Both followers gone: the leader keeps its title (nothing tells it otherwise) but can
    // commit nothing, so it must stop saying SERVING.
    let followers: Vec<u64> = t
        .c()
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        t.c().signal(*id, "KILL").unwrap();
    }
    wait_until(WAIT, "the isolated leader NOT_SERVING", || async {
        health_of(&grpc).await == Some(ServingStatus::NotServing)
    })
    .await
    .unwrap();
    // It still believes it leads: the health answer is about the quorum, not the title.
    let me = t
        .c()
        .node_client(leader)
        .unwrap()
        .with_deadline(Duration::from_secs(3));
    let s = me.status().await.unwrap();
    let own = s.nodes.iter().find(|n| n.id == leader).unwrap();
    assert_eq!(own.role, "leader", "{s:?}");

    // One follower back: a quorum of two, SERVING again.
    t.c().start(followers[0]).unwrap();
    t.c().wait_healthy(followers[0], WAIT).await.unwrap();
    wait_until(WAIT, "a leader with a quorum SERVING again", || async {
        let l = t.c().wait_leader(Duration::from_secs(5)).await;
        match l {
            Ok(l) => {
                let g = t.c().node(l).unwrap().grpc.clone();
                health_of(&g).await == Some(ServingStatus::Serving)
            }
            Err(_) => false,
        }
    })
    .await
    .unwrap();
}

/// One raw gRPC call (no client retries) with `key`: Ok, or the status.
async fn raw_list_events(
    c: &mut pb::ledger_client::LedgerClient<tonic::transport::Channel>,
    key: &str,
) -> Result<(), tonic::Status> {
    let mut r = tonic::Request::new(pb::ListEventsRequest::default());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    c.list_events(r).await.map(|_| ())
}

fn meta(s: &tonic::Status, k: &str) -> String {
    s.metadata()
        .get(k)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_calls_are_rate_limited_in_the_same_buckets_as_http() {
    // 1 request/s per principal with a bucket of 5; the address limit is off, so only the
    // principal's bucket counts.
    let t = TestCluster::start(1, &["--rate-limit-per-principal=1", "--rate-limit-burst=5"])
        .await
        .unwrap();
    let admin = t.admin();
    let a = admin.create_api_key("buyer-a", "buyer").await.unwrap().key;
    let b = admin.create_api_key("buyer-b", "buyer").await.unwrap().key;
    let node = t.c().nodes[0].clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::ledger_client::LedgerClient::new(channel.clone());

    // A's bucket empties over gRPC (5 tokens, and at most a few refilled meanwhile).
    let mut limited = None;
    for i in 0..40 {
        if let Err(s) = raw_list_events(&mut c, &a).await {
            limited = Some((i, s));
            break;
        }
    }
    let (i, s) = limited.expect("never limited over gRPC");
    assert!(i >= 5, "limited after {i} calls, under the burst of 5");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert_eq!(meta(&s, "x-ticketledger-code"), "rate_limited");
    assert_eq!(meta(&s, "x-ticketledger-status"), "429");
    let secs: u64 = meta(&s, "retry-after")
        .parse()
        .expect("retry-after seconds");
    assert!((1..=2).contains(&secs), "retry-after {secs}");

    // The same bucket over HTTP: A is limited there too (its own HTTP bucket would let 5
    // through; the shared one is empty, give or take one token refilled meanwhile).
    let http = client::tls::http_builder().build().unwrap();
    let mut http_statuses = Vec::new();
    for _ in 0..3 {
        let resp = http
            .get(format!("http://{}/v1/events", node.http))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        http_statuses.push(resp.status().as_u16());
    }
    assert!(
        http_statuses.contains(&429),
        "HTTP does not share the bucket: {http_statuses:?}"
    );

    // Another principal is not affected.
    raw_list_events(&mut c, &b).await.unwrap();
    // The typed client waits out the retry-after and then succeeds.
    let typed = GrpcClient::new(grpc_addrs(&t))
        .with_key(a.clone())
        .with_deadline(Duration::from_secs(10));
    typed
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap();
}

fn code(e: &client::Error) -> (u16, String) {
    (e.status().unwrap_or(0), e.code().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_over_grpc_match_http() {
    let t = TestCluster::start(3, &[]).await.unwrap();
    let http_admin = t.admin();
    let admin = GrpcClient::new(grpc_addrs(&t))
        .with_key(t.c().admin_key.clone())
        .with_deadline(Duration::from_secs(20));
    let buyer_key = http_admin
        .create_api_key("buyer", "buyer")
        .await
        .unwrap()
        .key;
    let buyer = GrpcClient::new(grpc_addrs(&t)).with_key(buyer_key);
    let anon = GrpcClient::new(grpc_addrs(&t));

    // Status: the same membership and leader as over HTTP.
    let h = t.converged(WAIT).await.unwrap();
    let g = admin
        .get_cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap();
    assert!(g.cluster_initialized);
    assert_eq!(g.voters, h.voters);
    assert_eq!(Some(g.leader), h.leader);
    let mut ids: Vec<u64> = g.nodes.iter().map(|n| n.id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(
        g.nodes
            .iter()
            .all(|n| n.role != "unreachable" && n.state_hash.len() == 64)
    );

    // Authorization: as over HTTP, 401 without a key and 403 for a buyer, on every call.
    for (who, c, want) in [
        ("anonymous", &anon, (401, "unauthenticated")),
        ("a buyer", &buyer, (403, "forbidden")),
    ] {
        let errs = [
            c.get_cluster_status(pb::ClusterStatusRequest {})
                .await
                .unwrap_err(),
            c.take_snapshot(pb::TakeSnapshotRequest {})
                .await
                .unwrap_err(),
            c.backup(pb::BackupRequest {}).await.unwrap_err(),
            c.transfer_leader(pb::TransferLeaderRequest { to: 1 })
                .await
                .unwrap_err(),
            c.change_membership(pb::ChangeMembershipRequest { voters: vec![1] })
                .await
                .unwrap_err(),
            c.add_learner(pb::AddLearnerRequest {
                node_id: 9,
                grpc_addr: "127.0.0.1:1".into(),
                http_addr: "127.0.0.1:2".into(),
            })
            .await
            .unwrap_err(),
            c.restore(pb::BackupData {
                data: vec![1, 2, 3],
            })
            .await
            .unwrap_err(),
        ];
        for e in &errs {
            assert_eq!(code(e), (want.0, want.1.to_string()), "{who}: {e}");
        }
    }
    // The same refusals over HTTP, for the record of parity.
    let e = t
        .c()
        .client_of(t.c().http_urls())
        .status()
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));

    // InitCluster on an initialized cluster: 409 `already_exists`; a short key: invalid.
    let e = anon
        .init_cluster(pb::InitClusterRequest {
            admin_key: "another-admin-key-123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "already_exists".into()), "{e}");
    let e = anon
        .init_cluster(pb::InitClusterRequest {
            admin_key: "short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 422, "{e}");

    // Snapshot and backup: a snapshot at the applied index; the gRPC backup is the HTTP one
    // (the same state, nothing written in between).
    let snap = admin
        .take_snapshot(pb::TakeSnapshotRequest {})
        .await
        .unwrap();
    assert!(snap.applied_index >= h.nodes.iter().map(|n| n.applied_index).min().unwrap());
    let g_backup = admin.backup(pb::BackupRequest {}).await.unwrap().data;
    let h_backup = http_admin.backup().await.unwrap();
    assert!(!g_backup.is_empty());
    assert_eq!(g_backup, h_backup, "the same ledger state, byte for byte");

    // Membership: a fourth node joins as a learner and becomes a voter over gRPC, then
    // leaves again; leadership moves to another voter.
    let ports = client::dev::free_ports(2).unwrap();
    let mut cluster = t.c().clone();
    cluster.nodes.push(client::dev::DevNode {
        id: 4,
        http: format!("127.0.0.1:{}", ports[0]),
        grpc: format!("127.0.0.1:{}", ports[1]),
        extra_args: t.c().nodes[0].extra_args.clone(),
    });
    let n4 = cluster.node(4).unwrap().clone();
    cluster.start(4).unwrap();
    let _kill4 = client::dev::Guard(cluster.clone());
    cluster.wait_healthy(4, WAIT).await.unwrap();
    let s = admin
        .add_learner(pb::AddLearnerRequest {
            node_id: 4,
            grpc_addr: n4.grpc.clone(),
            http_addr: n4.http.clone(),
        })
        .await
        .unwrap();
    assert_eq!(s.learners, vec![4], "{s:?}");
    let s = admin
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3, 4],
        })
        .await
        .unwrap();
    assert_eq!(s.voters, vec![1, 2, 3, 4], "{s:?}");
    let s = admin
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3],
        })
        .await
        .unwrap();
    assert_eq!(s.voters, vec![1, 2, 3], "{s:?}");
    assert!(!s.nodes.iter().any(|n| n.id == 4), "node 4 left: {s:?}");
    let leader = s.leader;
    let to = [1u64, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let s = admin
        .transfer_leader(pb::TransferLeaderRequest { to })
        .await
        .unwrap();
    assert_eq!(s.leader, to, "{s:?}");
    let e = admin
        .transfer_leader(pb::TransferLeaderRequest { to: 42 })
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 422, "{e}");

    // Restore: the backup into a fresh one-node cluster; its keys then work there.
    let fresh = TestCluster::start(1, &[]).await.unwrap();
    let fresh_admin = GrpcClient::new(grpc_addrs(&fresh))
        .with_key(fresh.c().admin_key.clone())
        .with_deadline(Duration::from_secs(20));
    let e = fresh_admin
        .restore(pb::BackupData {
            data: b"not a backup".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 422, "{e}");
    fresh_admin
        .restore(pb::BackupData { data: g_backup })
        .await
        .unwrap();
    let restored = GrpcClient::new(grpc_addrs(&fresh))
        .with_key(t.c().admin_key.clone())
        .with_deadline(Duration::from_secs(20));
    let s = restored
        .get_cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap();
    assert!(s.cluster_initialized);
}

/// The gRPC listener announces a bound on the calls open at once on one connection (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS), and a client with more calls than that waits for a
/// stream instead of failing: issue 9's overload run, where unbounded streams piled up behind
/// a busy leader until h2 closed the connection with every call on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_connections_announce_a_stream_bound_and_calls_beyond_it_wait() {
    let t = TestCluster::start(1, &[]).await.unwrap();
    t.c().wait_leader(WAIT).await.unwrap();
    let grpc = t.c().nodes[0].grpc.clone();

    // A raw HTTP/2 connection: the server's SETTINGS arrive with the handshake.
    let tcp = tokio::net::TcpStream::connect(&grpc).await.unwrap();
    let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let announced = loop {
        // Drive the connection a little so it reads the server's settings frame.
        if let Ok(end) = tokio::time::timeout(Duration::from_millis(50), &mut conn).await {
            panic!("the connection to {grpc} ended before its settings were read: {end:?}");
        }
        let n = conn.max_concurrent_send_streams();
        if n != usize::MAX || tokio::time::Instant::now() > deadline {
            break n;
        }
    };
    assert_eq!(
        announced, 1_024,
        "SETTINGS_MAX_CONCURRENT_STREAMS of {grpc}"
    );

    // More calls at once than the bound, on one connection: every one is answered.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = (0..1_500).map(|_| {
        let mut h = HealthClient::new(channel.clone());
        async move {
            let mut r = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            r.set_timeout(WAIT);
            h.check(r).await.map(|r| r.into_inner().status())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 1500 calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().ok() == Some(&ServingStatus::Serving))
    );
}
