//! The operator's cluster API: init, status, membership, leader transfer, snapshot, backup.

use crate::app::{App, Consistency};
use crate::error::ApiError;
use crate::http::{Body, authenticate};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger::{Command, Op, Outcome, Principal, Reply, Role, hex};
use openraft::type_config::async_runtime::WatchReceiver as _;
use raft_store::{Node, Request};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

type Result<T> = std::result::Result<T, ApiError>;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/cluster/init", post(init))
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/membership", post(change_membership))
        .route("/v1/cluster/transfer-leader", post(transfer_leader))
        .route("/v1/cluster/snapshot", post(snapshot))
        .route("/v1/cluster/backup", get(backup))
        .route(
            "/v1/cluster/restore",
            post(restore).layer(axum::extract::DefaultBodyLimit::max(
                crate::net::MAX_MESSAGE_BYTES - 4096,
            )),
        )
}

/// Refuse anyone but an operator (HTTP and gRPC: `crate::grpc_admin`).
pub(crate) async fn operator(app: &App, headers: &HeaderMap) -> Result<()> {
    let p = authenticate(app, headers).await?;
    if app.role_of(p) == Some(Role::Operator) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "cluster administration needs an operator key",
        ))
    }
}

impl App {
    /// This node's applied index and the state hash of exactly that state. Hashing a large
    /// ledger takes a second of CPU (hundreds of MB at a million accounts): it runs on the
    /// blocking pool, one at a time, and is remembered until the next entry is applied.
    async fn applied_hash(&self) -> (u64, [u8; 32]) {
        let ledger = self.ledger.clone();
        let memo = self.hash_memo.clone();
        let hashed = tokio::task::spawn_blocking(move || {
            let mut memo = memo.lock().expect("hash memo lock");
            ledger.read(|l| {
                let index = l.state().last_index;
                match *memo {
                    Some((i, h)) if i == index => (i, h),
                    _ => {
                        let h = l.state_hash();
                        *memo = Some((index, h));
                        (index, h)
                    }
                }
            })
        })
        .await;
        match hashed {
            Ok(h) => h,
            // The hashing task panicked: that is a bug, not a status to report.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only while the runtime shuts down: no status is asked for after that.
            Err(e) => panic!("the state hash task was cancelled: {e}"),
        }
    }

    pub async fn local_status(&self) -> api::NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let node = m
            .membership_config
            .membership()
            .get_node(&self.cfg.id)
            .cloned();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.cfg.id);
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Shutdown => "shutdown",
            _ if node.is_some() && !is_voter => "learner",
            _ => "follower",
        };
        let (applied_index, state_hash) = self.applied_hash().await;
        api::NodeStatus {
            id: self.cfg.id,
            grpc_addr: node
                .as_ref()
                .map_or(self.cfg.advertise_grpc.clone(), |n| n.grpc_addr.clone()),
            http_addr: node
                .as_ref()
                .map_or(self.cfg.advertise_http.clone(), |n| n.http_addr.clone()),
            role: role.into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            // Read together, from the ledger itself, so the hash is the one of that index.
            applied_index,
            state_hash: hex(&state_hash),
            error: None,
        }
    }

    pub async fn cluster_status(&self) -> api::ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        // Every node at once: each may spend a while hashing its state.
        let asked = membership.nodes().map(|(id, node)| async move {
            if *id == self.cfg.id {
                return self.local_status().await;
            }
            match self.peers.status(&node.grpc_addr).await {
                Ok(s) => s,
                Err(e) => api::NodeStatus {
                    id: *id,
                    grpc_addr: node.grpc_addr.clone(),
                    http_addr: node.http_addr.clone(),
                    role: "unreachable".into(),
                    term: 0,
                    last_log_index: 0,
                    applied_index: 0,
                    state_hash: String::new(),
                    error: Some(e),
                },
            }
        });
        let mut nodes = futures::future::join_all(asked).await;
        if nodes.is_empty() {
            nodes.push(self.local_status().await);
        }
        api::ClusterStatus {
            cluster_initialized: !voters.is_empty(),
            leader: m.current_leader,
            voters,
            learners,
            nodes,
        }
    }
}

/// Create the cluster on this node (a one-member cluster that others join as learners) and
/// the bootstrap operator key. Allowed once, unauthenticated: nothing exists to authenticate.
async fn init(
    State(app): State<Arc<App>>,
    Body(b): Body<api::InitCluster>,
) -> Result<Json<api::ClusterStatus>> {
    init_cluster(&app, &b.admin_key).await.map(Json)
}

/// The body of [`init`], shared with gRPC's `Admin.InitCluster`.
pub(crate) async fn init_cluster(app: &App, admin_key: &str) -> Result<api::ClusterStatus> {
    if admin_key.len() < 16 || admin_key.len() > 256 {
        return Err(ApiError::invalid("admin_key must be 16..=256 characters"));
    }
    if app
        .raft
        .is_initialized()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "already_exists",
            "the cluster is already initialized",
        ));
    }
    let me = Node {
        grpc_addr: app.cfg.advertise_grpc.clone(),
        http_addr: app.cfg.advertise_http.clone(),
    };
    app.raft
        .initialize(BTreeMap::from([(app.cfg.id, me)]))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "already_exists",
                format!("cannot initialize: {e}"),
            )
        })?;
    app.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(app.cfg.id, "initialized")
        .await
        .map_err(|e| {
            ApiError::unavailable("no_leader", format!("this node did not become leader: {e}"))
        })?;
    let op = Op::Bootstrap {
        operator_key_digest: *blake3::hash(admin_key.as_bytes()).as_bytes(),
        token_secret: rand::random(),
    };
    let cmd = Command::new(app.now_ms(), Principal::System, op);
    let resp = app
        .raft
        .client_write(Request::command(cmd))
        .await
        .map_err(|e| ApiError::unavailable("unavailable", e.to_string()))?;
    match resp.data.outcome() {
        Some(Outcome::Ok(Reply::Bootstrapped { .. })) => Ok(app.cluster_status().await),
        other => Err(ApiError::internal(format!("bootstrap failed: {other:?}"))),
    }
}

async fn status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<api::ClusterStatus>> {
    operator(&app, &headers).await?;
    Ok(Json(app.cluster_status().await))
}

fn raft_error(e: impl std::fmt::Display) -> ApiError {
    let text = e.to_string();
    if text.contains("forward") || text.contains("leader") {
        ApiError::unavailable(
            "not_leader",
            format!("{text}; send cluster changes to the leader"),
        )
    } else {
        ApiError::new(axum::http::StatusCode::CONFLICT, "invalid_state", text)
    }
}

async fn add_learner(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Body(b): Body<api::AddLearner>,
) -> Result<Json<api::ClusterStatus>> {
    operator(&app, &headers).await?;
    add_learner_op(&app, b).await.map(Json)
}

/// The body of [`add_learner`] (after authorization), shared with gRPC.
pub(crate) async fn add_learner_op(app: &App, b: api::AddLearner) -> Result<api::ClusterStatus> {
    if b.node_id == 0 {
        return Err(ApiError::invalid("node_id must be positive"));
    }
    // Refuse an address this cluster could never reach (http:// under TLS and the reverse)
    // before it enters the membership.
    crate::net::peer_url(&b.grpc_addr, app.cfg.tls.is_some()).map_err(ApiError::invalid)?;
    let node = Node {
        grpc_addr: b.grpc_addr,
        http_addr: b.http_addr,
    };
    app.raft
        .add_learner(b.node_id, node, true)
        .await
        .map_err(raft_error)?;
    Ok(app.cluster_status().await)
}

async fn change_membership(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Body(b): Body<api::ChangeMembership>,
) -> Result<Json<api::ClusterStatus>> {
    operator(&app, &headers).await?;
    change_membership_op(&app, b.voters).await.map(Json)
}

/// The body of [`change_membership`] (after authorization), shared with gRPC.
pub(crate) async fn change_membership_op(
    app: &App,
    voters: Vec<u64>,
) -> Result<api::ClusterStatus> {
    let voters: BTreeSet<u64> = voters.into_iter().collect();
    if voters.is_empty() {
        return Err(ApiError::invalid("a cluster needs at least one voter"));
    }
    app.raft
        .change_membership(voters, false)
        .await
        .map_err(raft_error)?;
    Ok(app.cluster_status().await)
}

async fn transfer_leader(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Body(b): Body<api::TransferLeader>,
) -> Result<Json<api::ClusterStatus>> {
    operator(&app, &headers).await?;
    transfer_leader_op(&app, b.to).await.map(Json)
}

/// The body of [`transfer_leader`] (after authorization), shared with gRPC.
pub(crate) async fn transfer_leader_op(app: &App, to: u64) -> Result<api::ClusterStatus> {
    let b = api::TransferLeader { to };
    let voters: Vec<u64> = app.raft.voter_ids().collect();
    if !voters.contains(&b.to) {
        return Err(ApiError::invalid(format!(
            "node {} is not a voter ({voters:?})",
            b.to
        )));
    }
    app.raft
        .trigger()
        .transfer_leader(b.to)
        .await
        .map_err(raft_error)?;
    let _ = app
        .raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(b.to, "leader transferred")
        .await;
    Ok(app.cluster_status().await)
}

async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<api::SnapshotTaken>> {
    operator(&app, &headers).await?;
    snapshot_op(&app).await.map(Json)
}

/// The body of [`snapshot`] (after authorization), shared with gRPC.
pub(crate) async fn snapshot_op(app: &App) -> Result<api::SnapshotTaken> {
    let applied = app
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    app.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    app.raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            move |m| {
                m.snapshot
                    .as_ref()
                    .map_or(applied == 0, |l| l.index >= applied)
            },
            "snapshot",
        )
        .await
        .map_err(|e| ApiError::unavailable("timeout", format!("snapshot not finished: {e}")))?;
    Ok(api::SnapshotTaken {
        applied_index: applied,
    })
}

/// A consistent copy of the ledger (its snapshot format), after a read index.
async fn backup(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response> {
    operator(&app, &headers).await?;
    let bytes = backup_op(&app).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// The body of [`backup`] (after authorization), shared with gRPC.
pub(crate) async fn backup_op(app: &App) -> Result<Vec<u8>> {
    app.read(Consistency::Linearizable, |l| l.snapshot()).await
}

/// Restore a backup into this cluster, which must have no catalog yet. The backup travels
/// through the Raft log as one entry, so every replica replaces its ledger at the same index.
/// Afterwards the backup's own API keys are the valid ones.
async fn restore(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<api::ClusterStatus>> {
    operator(&app, &headers).await?;
    restore_op(&app, body.to_vec()).await.map(Json)
}

/// The body of [`restore`] (after authorization), shared with gRPC.
pub(crate) async fn restore_op(app: &App, body: Vec<u8>) -> Result<api::ClusterStatus> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "send the backup file as the request body",
        ));
    }
    ledger::Ledger::restore(&body)
        .map_err(|e| ApiError::invalid(format!("not a usable backup: {e}")))?;
    if !app.ledger.read(|l| l.has_no_catalog()) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_state",
            "the cluster already has a catalog; restore into a fresh cluster",
        ));
    }
    let resp = app
        .raft
        .client_write(Request::Restore(body))
        .await
        .map_err(|e| {
            if e.forward_to_leader().is_some() {
                ApiError::unavailable(
                    "not_leader",
                    "send the restore to the leader (any other node answers 503)",
                )
            } else {
                ApiError::unavailable("unavailable", e.to_string())
            }
        })?;
    match resp.data.restore {
        Some(Ok(())) => Ok(app.cluster_status().await),
        Some(Err(why)) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_state",
            why,
        )),
        None => Err(ApiError::internal(
            "the restore entry answered without a result",
        )),
    }
}
