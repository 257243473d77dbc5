//! `ticketd`'s library: the node that serves one replica of the ledger.
//!
//! - [`app`]: writes (stamped on the leader's clock, proposed through Raft, forwarded by
//!   followers), linearizable reads, the leader's tick.
//! - [`http`] and [`admin`]: the HTTP/JSON v1 API (docs/http-api.md).
//! - [`net`]: node-to-node gRPC (Raft RPCs, snapshot streaming, forwarding, read index).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod http;
pub mod http_manage;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod ratelimit;
pub mod time;
pub mod watch;

use anyhow::Context;
use app::App;
use config::Config;
use std::sync::Arc;

/// Raft timing derived from the heartbeat (elections at 3–6 heartbeats).
fn raft_config(cfg: &Config) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "ticketledger".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.heartbeat_ms * 3,
        election_timeout_max: cfg.heartbeat_ms * 6,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
        // Keep a whole snapshot interval of log behind the snapshot: if the newest snapshot
        // file is ever damaged, the previous one plus this log still rebuild the state.
        max_in_snapshot_log_to_keep: cfg.snapshot_every,
        purge_batch_size: 256,
        max_payload_entries: 1_024,
        ..Default::default()
    };
    c.validate().context("invalid Raft timing")
}

/// Open the store, start Raft, serve HTTP and gRPC until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (log_store, sm_store) = raft_store::open(&cfg.data_dir)
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let ledger = sm_store.ledger_handle();
    let peers = net::Peers::new(cfg.request_timeout);
    let raft = raft_store::Raft::new(
        cfg.id,
        Arc::new(raft_config(&cfg)?),
        net::NetworkFactory {
            peers: peers.clone(),
        },
        log_store,
        sm_store,
    )
    .await
    .context("starting Raft")?;
    let app = Arc::new(App::new(cfg.clone(), raft, ledger));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let http = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", cfg.http_addr))?;
    let grpc = tokio::net::TcpListener::bind(cfg.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC {}", cfg.grpc_addr))?;
    tracing::info!(node_id = cfg.id, http = %cfg.http_addr, grpc = %cfg.grpc_addr, data_dir = %cfg.data_dir.display(), "ticketd serving");

    let svc = net::pb::raft_server::RaftServer::new(net::RaftService { app: app.clone() })
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let (health, health_svc) = tonic_health::server::health_reporter();
    tokio::spawn(grpc::health_loop(app.clone(), health, shutdown_rx.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service")?;
    let mut rx = shutdown_rx.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(grpc::pb::ledger_server::LedgerServer::new(
                grpc::LedgerService { app: app.clone() },
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move {
                    let _ = rx.changed().await;
                },
            ),
    );
    let mut rx = shutdown_rx.clone();
    // The peer address feeds the per-address rate limit (crate::ratelimit).
    let routes =
        http::router(app.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(http, routes).with_graceful_shutdown(async move {
        let _ = rx.changed().await;
    });
    let http_task = tokio::spawn(async move { server.await });
    let tick_task = tokio::spawn(app.clone().tick_loop(shutdown_rx.clone()));
    tokio::spawn(app.clone().proposer_loop());

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = http_task.await;
        let _ = grpc_task.await;
        let _ = tick_task.await;
    })
    .await;
    app.raft
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
