//! TLS on a real 3-node cluster (`ticketd --tls-cert --tls-key --tls-ca`), with a CA and
//! node certificates made by rcgen in the test's temp dir:
//!
//! - the nodes elect a leader and replicate over mutual TLS (their gRPC is TLS-only), and
//!   advertise `https://` addresses;
//! - a client that trusts the CA signs up, holds and confirms over HTTPS and over gRPC/TLS;
//! - a plain-text client and a client that does not trust the CA are refused, over both;
//! - node-to-node calls without a client certificate are refused (`UNAUTHENTICATED`), a client
//!   certificate from another CA fails the handshake, and a node whose certificate comes from
//!   another CA never joins: the cluster cannot verify it, and it cannot verify the cluster.

use client::dev::{DevTls, find_ticketd, free_ports};
use client::grpc::{GrpcClient, pb};
use cluster_tests::*;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const FAST_ARGON: [&str; 2] = ["--argon2-memory-kib=64", "--argon2-iterations=1"];

/// A CA and one certificate signed by it for 127.0.0.1 and localhost, usable by a server and
/// a client (every node of a test cluster serves it and presents it to its peers).
struct Pki {
    files: DevTls,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn make_pki(dir: &Path, ca_name: &str) -> anyhow::Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let node_key = KeyPair::generate()?;
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    node.distinguished_name
        .push(DnType::CommonName, format!("node of {ca_name}"));
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node.signed_by(&node_key, &issuer)?;

    let files = DevTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, node_cert.pem())?;
    std::fs::write(&files.key, node_key.serialize_pem())?;
    Ok(Pki {
        files,
        ca_pem: ca_cert.pem().into_bytes(),
        cert_pem: node_cert.pem().into_bytes(),
        key_pem: node_key.serialize_pem().into_bytes(),
    })
}

/// The whole error chain, where TLS failures say what they are.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_https_and_grpc_tls_and_refuses_plain_and_untrusted_clients() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(&certs.path().join("cluster"), "ticketledger test CA").unwrap();
    let other = make_pki(&certs.path().join("other"), "some other CA").unwrap();
    let t = TestCluster::start_tls(3, pki.files.clone(), &FAST_ARGON)
        .await
        .unwrap();

    // (a) A leader, three voters, every peer's status fetched over mutual TLS, and https://
    // addresses in the membership.
    let status = t.admin().status().await.unwrap();
    assert!(status.leader.is_some(), "{status:?}");
    assert_eq!(status.voters.len(), 3, "{status:?}");
    for n in &status.nodes {
        assert_ne!(
            n.role, "unreachable",
            "node {} over mTLS: {:?}",
            n.id, n.error
        );
        assert!(n.grpc_addr.starts_with("https://"), "{n:?}");
        assert!(n.http_addr.starts_with("https://"), "{n:?}");
    }
    // A write replicates: every node applies it with the same state hash.
    let before = status.nodes.iter().map(|n| n.applied_index).max().unwrap();
    let cat = catalog(&t, 2, 1).await.unwrap();
    let converged = t.converged(WAIT).await.unwrap();
    assert!(
        converged.nodes.iter().all(|n| n.applied_index > before),
        "{converged:?}"
    );

    // (b) Over HTTPS with the CA: signup, login, hold, confirm.
    let urls = t.c().http_urls();
    assert!(urls.iter().all(|u| u.starts_with("https://")), "{urls:?}");
    let anon = t.c().client_of(urls.clone());
    anon.signup("ada@example.com", "correct horse battery", "Ada")
        .await
        .unwrap();
    let session = anon
        .login("ada@example.com", "correct horse battery")
        .await
        .unwrap();
    let buyer = t.c().client_of(urls.clone()).with_key(session.token);
    let hold = buyer
        .hold(&seats_hold(&cat.performance, &["A:1:1", "A:1:2"]))
        .await
        .unwrap();
    let booking = cat
        .service
        .confirm(&hold.hold_id, "pay-https")
        .await
        .unwrap();
    assert_eq!(booking.tickets.len(), 2);
    assert_eq!(
        buyer.booking(&booking.booking_id).await.unwrap().hold_id,
        hold.hold_id
    );

    // ... and over gRPC/TLS with the CA.
    let grpc_urls: Vec<String> = t.c().nodes.iter().map(|n| t.c().grpc_url(n)).collect();
    let grpc = GrpcClient::new(grpc_urls.clone())
        .with_ca_cert(&pki.ca_pem)
        .unwrap();
    let s = grpc
        .signup(pb::SignupRequest {
            email: "grace@example.com".into(),
            password: "correct horse battery".into(),
            name: "Grace".into(),
        })
        .await
        .unwrap();
    let g_buyer = grpc.clone().with_key(s.token);
    let g_hold = g_buyer
        .place_hold(pb::PlaceHoldRequest {
            performance_id: cat.performance.clone(),
            seats: vec!["A:2:1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let service_key = cat.service.key().unwrap().to_string();
    let g_booking = grpc
        .clone()
        .with_key(service_key)
        .confirm_hold(pb::ConfirmHoldRequest {
            hold_id: g_hold.hold_id.clone(),
            payment_ref: "pay-grpc-tls".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(g_booking.tickets.len(), 1);

    // (c) Refused: plain HTTP to the TLS listener, and HTTPS from a client that trusts only
    // the system's roots or another CA. The same request with the CA works (the control).
    let node = &t.c().nodes[0];
    let trusting = client::tls::http_builder()
        .tls_certs_only(client::tls::ca_certificates(&pki.ca_pem).unwrap())
        .build()
        .unwrap();
    let https_health = format!("https://{}/healthz", node.http);
    let ok = trusting.get(&https_health).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let plain = client::tls::http_builder().build().unwrap();
    let e = plain
        .get(format!("http://{}/healthz", node.http))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect_err("plain HTTP to a TLS listener must not be answered");
    assert!(!e.is_status(), "{}", chain(&e));
    let system_roots = client::tls::http_builder().build().unwrap();
    let e =
        system_roots.get(&https_health).send().await.expect_err(
            "a node certificate from a private CA must not verify against system roots",
        );
    assert!(chain(&e).contains("certificate"), "{}", chain(&e));
    let other_ca = client::tls::http_builder()
        .tls_certs_only(client::tls::ca_certificates(&other.ca_pem).unwrap())
        .build()
        .unwrap();
    let e = other_ca.get(&https_health).send().await.unwrap_err();
    assert!(chain(&e).contains("certificate"), "{}", chain(&e));
    // Through the client library: no answer, so `Unavailable` at the deadline.
    let untrusting = client::Client::new(urls.clone())
        .with_deadline(Duration::from_secs(2))
        .with_key(cat.service.key().unwrap().to_string());
    let e = untrusting.booking(&booking.booking_id).await.unwrap_err();
    assert!(matches!(e, client::Error::Unavailable { .. }), "{e}");
    let plain_urls: Vec<String> = t
        .c()
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.http))
        .collect();
    let e = client::Client::new(plain_urls)
        .with_deadline(Duration::from_secs(2))
        .booking(&booking.booking_id)
        .await
        .unwrap_err();
    assert!(matches!(e, client::Error::Unavailable { .. }), "{e}");
    // gRPC: plain text, and TLS trusting another CA.
    let plain_grpc: Vec<String> = t
        .c()
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.grpc))
        .collect();
    for (what, c) in [
        ("plain text", GrpcClient::new(plain_grpc)),
        (
            "another CA",
            GrpcClient::new(grpc_urls.clone())
                .with_ca_cert(&other.ca_pem)
                .unwrap(),
        ),
    ] {
        let e = c
            .with_deadline(Duration::from_secs(2))
            .get_booking(pb::BookingRef {
                booking_id: g_booking.booking_id.clone(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(e, client::Error::Unavailable { .. }),
            "{what}: {e}"
        );
    }
}

/// A raw node-to-node client (the Raft service), trusting the cluster CA, presenting
/// `identity` if given.
fn raft_client(
    grpc: &str,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> node::net::pb::raft_client::RaftClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    node::net::pb::raft_client::RaftClient::new(channel)
}

async fn local_status(
    mut c: node::net::pb::raft_client::RaftClient<tonic::transport::Channel>,
) -> Result<api::NodeStatus, tonic::Status> {
    let mut r = tonic::Request::new(node::net::pb::Blob { data: vec![] });
    r.set_timeout(Duration::from_secs(3));
    let blob = c.local_status(r).await?.into_inner();
    Ok(serde_json::from_slice(&blob.data).expect("a node status"))
}

/// A `ticketd` started by hand (not in the cluster's membership), killed by pid on drop.
struct Stray(std::process::Child);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_without_the_cluster_ca_cannot_talk_raft_or_join() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(&certs.path().join("cluster"), "ticketledger test CA").unwrap();
    let other = make_pki(&certs.path().join("other"), "some other CA").unwrap();
    let t = TestCluster::start_tls(3, pki.files.clone(), &[])
        .await
        .unwrap();
    let leader = t.c().wait_leader(WAIT).await.unwrap();
    let grpc = t.c().node(leader).unwrap().grpc.clone();

    // The control: a node's own certificate is accepted on the Raft service.
    let s = local_status(raft_client(
        &grpc,
        &pki.ca_pem,
        Some((&pki.cert_pem, &pki.key_pem)),
    ))
    .await
    .unwrap();
    assert_eq!(s.id, leader);
    // No client certificate: the TLS connection is fine (the public API shares the port),
    // the Raft call is not.
    let e = local_status(raft_client(&grpc, &pki.ca_pem, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // A client certificate from another CA: the server aborts the handshake (under TLS 1.3
    // the client sees its connection closed), so the call never reaches the service.
    let e = local_status(raft_client(
        &grpc,
        &pki.ca_pem,
        Some((&other.cert_pem, &other.key_pem)),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        "a transport failure, not an answer of the service: {e:?}"
    );

    // A node whose certificate is from another CA, offered to the cluster as a learner.
    let ports = free_ports(2).unwrap();
    let (http4, grpc4) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let data = certs.path().join("stray-data");
    let log = std::fs::File::create(certs.path().join("stray.log")).unwrap();
    let stray = Stray(
        std::process::Command::new(find_ticketd().unwrap())
            .args(["--id", "4", "--data-dir"])
            .arg(&data)
            .args([
                "--http-addr",
                &http4,
                "--grpc-addr",
                &grpc4,
                "--heartbeat-ms=50",
            ])
            .arg("--tls-cert")
            .arg(&other.files.cert)
            .arg("--tls-key")
            .arg(&other.files.key)
            .arg("--tls-ca")
            .arg(&other.files.ca)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let stray_http = client::Client::new([format!("https://{http4}")])
        .with_ca_cert(&other.ca_pem)
        .unwrap()
        .with_deadline(Duration::from_secs(2));
    wait_until(WAIT, "the stray node answers /healthz", || {
        let c = stray_http.clone();
        async move { c.health().await.iter().all(|ok| *ok) }
    })
    .await
    .unwrap();
    // The membership change commits (openraft may or may not wait for the learner); what
    // matters is that nothing reaches the stray node.
    let _ = t
        .admin()
        .with_deadline(Duration::from_secs(5))
        .add_learner(4, &format!("https://{grpc4}"), &format!("https://{http4}"))
        .await;
    // The cluster cannot verify the stray's certificate: node 4 stays unreachable, and says
    // why.
    let admin = t.admin();
    wait_until(
        WAIT,
        "node 4 reported unreachable for its certificate",
        || {
            let admin = admin.clone();
            async move {
                admin.status().await.is_ok_and(|s| {
                    s.nodes.iter().any(|n| {
                        n.id == 4
                            && n.role == "unreachable"
                            && n.error
                                .as_deref()
                                .is_some_and(|e| e.contains("certificate"))
                    })
                })
            }
        },
    )
    .await
    .unwrap();
    // An absence has no condition to wait for: give the leader's replication (retried every
    // heartbeat, 50 ms) half a second of attempts, then check that none of it arrived: no
    // term, nothing applied, no leader.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stray_status = local_status(raft_client(
        &grpc4,
        &other.ca_pem,
        Some((&other.cert_pem, &other.key_pem)),
    ))
    .await
    .unwrap();
    assert_eq!(stray_status.applied_index, 0, "{stray_status:?}");
    assert_eq!(stray_status.term, 0, "{stray_status:?}");
    assert_eq!(stray_http.ready().await, vec![false]);
    // The cluster itself is unharmed: it still commits writes.
    t.admin()
        .create_api_key("after-the-stray", "service")
        .await
        .unwrap();
    drop(stray);
}
