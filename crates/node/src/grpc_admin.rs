//! `ticketledger.v1.Admin`: the operator's cluster calls over gRPC, the twins of HTTP's
//! `/v1/cluster/...` (crate::admin), sharing their bodies, authorization and error codes.

use crate::admin;
use crate::app::App;
use crate::error::ApiError;
use crate::grpc::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Backups travel whole in one message; the same bound as node-to-node messages.
pub const MAX_MESSAGE_BYTES: usize = crate::net::MAX_MESSAGE_BYTES;

pub struct AdminService {
    pub app: Arc<App>,
}

type Result<T> = std::result::Result<Response<T>, Status>;

impl AdminService {
    async fn operator<T>(&self, req: &Request<T>) -> std::result::Result<(), ApiError> {
        admin::operator(&self.app, &req.metadata().clone().into_headers()).await
    }
}

fn status_pb(s: api::ClusterStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        cluster_initialized: s.cluster_initialized,
        leader: s.leader.unwrap_or(0),
        voters: s.voters,
        learners: s.learners,
        nodes: s
            .nodes
            .into_iter()
            .map(|n| pb::NodeStatus {
                id: n.id,
                grpc_addr: n.grpc_addr,
                http_addr: n.http_addr,
                role: n.role,
                term: n.term,
                last_log_index: n.last_log_index,
                applied_index: n.applied_index,
                state_hash: n.state_hash,
                error: n.error.unwrap_or_default(),
            })
            .collect(),
    }
}

fn ok(s: api::ClusterStatus) -> Result<pb::ClusterStatus> {
    Ok(Response::new(status_pb(s)))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn init_cluster(
        &self,
        req: Request<pb::InitClusterRequest>,
    ) -> Result<pb::ClusterStatus> {
        ok(admin::init_cluster(&self.app, &req.into_inner().admin_key).await?)
    }

    async fn get_cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<pb::ClusterStatus> {
        self.operator(&req).await?;
        ok(self.app.cluster_status().await)
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<pb::ClusterStatus> {
        self.operator(&req).await?;
        let r = req.into_inner();
        let b = api::AddLearner {
            node_id: r.node_id,
            grpc_addr: r.grpc_addr,
            http_addr: r.http_addr,
        };
        ok(admin::add_learner_op(&self.app, b).await?)
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<pb::ClusterStatus> {
        self.operator(&req).await?;
        ok(admin::change_membership_op(&self.app, req.into_inner().voters).await?)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<pb::ClusterStatus> {
        self.operator(&req).await?;
        ok(admin::transfer_leader_op(&self.app, req.into_inner().to).await?)
    }

    async fn take_snapshot(
        &self,
        req: Request<pb::TakeSnapshotRequest>,
    ) -> Result<pb::SnapshotTaken> {
        self.operator(&req).await?;
        let s = admin::snapshot_op(&self.app).await?;
        Ok(Response::new(pb::SnapshotTaken {
            applied_index: s.applied_index,
        }))
    }

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<pb::BackupData> {
        self.operator(&req).await?;
        let data = admin::backup_op(&self.app).await?;
        Ok(Response::new(pb::BackupData { data }))
    }

    async fn restore(&self, req: Request<pb::BackupData>) -> Result<pb::ClusterStatus> {
        self.operator(&req).await?;
        ok(admin::restore_op(&self.app, req.into_inner().data).await?)
    }
}
