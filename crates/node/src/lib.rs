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
pub mod grpc_admin;
pub mod http;
pub mod http_manage;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod ratelimit;
pub mod time;
pub mod tls;
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
        // An entry carries up to 512 batched writes (`raft_store::MAX_COMMANDS_PER_ENTRY`) of
        // under a kilobyte each (catalog writes go alone): 64 entries keep an append well
        // inside the 64 MiB message bound.
        max_payload_entries: 64,
        ..Default::default()
    };
    c.validate().context("invalid Raft timing")
}

/// Resets of not yet accepted gRPC streams tolerated per connection (see `run`).
const MAX_PENDING_RESET_STREAMS: usize = 4_096;
/// Streams (calls) open at once on one gRPC connection, announced in the HTTP/2 settings: a
/// client beyond it waits for a stream of its own before sending (tonic's default is no limit).
/// Followers forward writes to the leader on one connection each (`net::Lane::Requests`), so
/// this is also how many writes one follower has at the leader at once; the rest of its
/// admitted writes (`--max-inflight`) wait in its client within their deadline.
const MAX_CONCURRENT_STREAMS: u32 = 1_024;

/// Every accepted connection (HTTP, HTTPS, gRPC, Raft) sends at once: with Nagle's algorithm on, a
/// small response written while the previous one was unacknowledged waited for the peer's
/// delayed ACK (40 ms on Linux), which was the p999 of every benchmark (bench/README.md).
pub(crate) fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "setting TCP_NODELAY on an accepted connection");
    }
}

/// Open the store, start Raft, serve HTTP and gRPC until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (log_store, sm_store) = raft_store::open(&cfg.data_dir)
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let ledger = sm_store.ledger_handle();
    let peers = net::Peers::new(cfg.request_timeout, cfg.tls.as_ref());
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
    tracing::info!(node_id = cfg.id, http = %cfg.http_addr, grpc = %cfg.grpc_addr, tls = cfg.tls.is_some(), data_dir = %cfg.data_dir.display(), "ticketd serving");
    // One set of buckets for both protocols: a client cannot double its rate by switching.
    let limiter = ratelimit::Limiter::new(app.clone());

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
    // Peers cancel the calls whose deadline passed (forwarded writes, read indexes) with an
    // RST_STREAM. h2's default answer to more than 20 such resets pending is to close the
    // whole connection (rapid-reset protection), which took every replication and heartbeat
    // stream between two nodes down with it under load, and a leader with it: allow a
    // bounded number that a busy cluster can produce.
    // With no limit on the streams a connection may open, an overloaded leader (issue 9,
    // bench/README.md "Overload") had thousands of unanswered calls per connection pile up
    // behind its CPU; the client's deadlines then reset them by the thousand, past the bound
    // above, and h2 closed the connection with every call on it (ENHANCE_YOUR_CALM): 87% of
    // the load ended as transport errors. A bound on open streams makes the client wait
    // before sending instead, and keeps the server's per-connection state bounded.
    let mut grpc_server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS));
    if let Some(t) = &cfg.tls {
        grpc_server = grpc_server
            .tls_config(tls::grpc_server_config(t))
            .context("configuring the gRPC listener's TLS")?;
    }
    let grpc_task = tokio::spawn(
        grpc_server
            .add_service(svc)
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(grpc::pb::ledger_server::LedgerServer::with_interceptor(
                grpc::LedgerService::new(app.clone(), limiter.clone()),
                ratelimit::grpc_interceptor(limiter.clone()),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                grpc::pb::admin_server::AdminServer::new(grpc_admin::AdminService {
                    app: app.clone(),
                })
                .max_decoding_message_size(grpc_admin::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc_admin::MAX_MESSAGE_BYTES),
                ratelimit::grpc_interceptor(limiter.clone()),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc),
                    |accepted| accepted.inspect(no_delay),
                ),
                async move {
                    let _ = rx.changed().await;
                },
            ),
    );
    let mut rx = shutdown_rx.clone();
    let stopped = async move {
        let _ = rx.changed().await;
    };
    // The peer address feeds the per-address rate limit (crate::ratelimit).
    let routes = http::router_with(app.clone(), limiter)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let http_task = match &cfg.tls {
        None => {
            use axum::serve::ListenerExt as _;
            let listener = http.tap_io(|tcp| no_delay(tcp));
            let server = axum::serve(listener, routes).with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
        Some(t) => {
            use axum::serve::ListenerExt as _;
            let listener = tls::HttpsListener::new(http, tls::http_server_config(t)?)
                .context("starting the HTTPS listener")?
                // A tapped listener gets axum's ConnectInfo<SocketAddr> from its Addr.
                .tap_io(|_| ());
            let server = axum::serve(listener, routes).with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
    };
    let tick_task = tokio::spawn(app.clone().tick_loop(shutdown_rx.clone()));
    tokio::spawn(app.clone().proposer_loop());

    // A Raft core that stopped by itself (a storage error, a panic inside openraft) leaves a
    // process that still answers but can never vote, lead or apply again; as a leader it kept
    // the cluster leaderless until restarted (jepsen/README.md, a follower's lost WAL tail).
    // Exit instead, with the reason, so a supervisor restarts the node on its data and the
    // others elect a leader at once.
    let fatal = tokio::select! {
        () = wait_for_signal() => None,
        why = core_stopped(&app.raft) => Some(why),
    };
    match &fatal {
        None => tracing::info!("shutting down"),
        Some(why) => tracing::error!(
            "the Raft core stopped ({why}): exiting so that a supervisor restarts this node"
        ),
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = http_task.await;
        let _ = grpc_task.await;
        let _ = tick_task.await;
    })
    .await;
    if let Some(why) = fatal {
        anyhow::bail!("the Raft core stopped: {why}");
    }
    app.raft
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Returns once the Raft core has stopped without being asked to: its metrics report a fatal
/// error, or their channel closed (the core's task ended, as on a panic).
async fn core_stopped(raft: &raft_store::Raft) -> String {
    use openraft::type_config::async_runtime::WatchReceiver as _;
    let mut rx = raft.metrics();
    loop {
        if let Err(fatal) = &rx.borrow_watched().running_state {
            return fatal.to_string();
        }
        if rx.changed().await.is_err() {
            return "its task ended (a panic in openraft)".to_string();
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
