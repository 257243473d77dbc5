//! Node-to-node gRPC: openraft's RPCs (`RaftNetworkV2` over one channel per peer, snapshots
//! streamed in 1 MiB chunks) and the calls a follower makes to the leader (forwarded writes,
//! read indexes, status). Payloads are postcard-encoded serde types.

use crate::app::App;
use crate::error::ApiError;
use futures::StreamExt;
use ledger::{Op, Outcome, Principal};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::async_runtime::WatchReceiver as _;
use raft_store::{Node, NodeId, Raft, SnapshotData, TypeConfig as C};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("ticketledger.raft.v1");
}
use pb::raft_client::RaftClient;

/// Snapshot stream chunks, and the largest snapshot a node accepts.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const MAX_SNAPSHOT_BYTES: usize = 2 << 30;
/// gRPC messages (append batches) are bounded too.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("protocol messages always encode")
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(b)
        .map_err(|e| Status::invalid_argument(format!("undecodable message: {e}")))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub principal: Principal,
    pub idempotency_key: Option<String>,
    pub op: Op,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The outcome and the log index that produced it.
    Outcome(Outcome, u64),
    NotLeader,
    Failed(String),
}

/// Which connection to a peer a call takes (one each, connected lazily).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    Raft,
    Requests,
}

/// The lowest deadline of a Raft append (replication or heartbeat). openraft asks for one
/// heartbeat interval (100 ms by default); on a loaded 2-core machine a follower's answer
/// often takes longer, the timed-out append is sent again (more work for the busy follower),
/// the leader counts the follower unreachable and elections follow. A late answer is still
/// correct (openraft matches it to what it sent), so wait for it a while.
pub const RAFT_APPEND_MIN_DEADLINE: Duration = Duration::from_secs(1);

/// Lazily connected channels per peer address: one for Raft, one for forwarded requests.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
    timeout: Duration,
    /// Under TLS: trust only the cluster CA, and present this node's own certificate (the
    /// peer's gRPC server requires it on these calls: [`require_peer_certificate`]).
    tls: Option<ClientTlsConfig>,
}

/// The URL a peer's gRPC address is reached at. An address is `host:port` or a URL; under
/// TLS it must not be `http://` (nodes talk to each other only over mutual TLS), and without
/// TLS it cannot be `https://` (there is no CA to verify the peer with).
pub fn peer_url(addr: &str, tls: bool) -> Result<String, String> {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, addr),
    };
    match (scheme, tls) {
        (None | Some("http"), false) => Ok(format!("http://{rest}")),
        (None | Some("https"), true) => Ok(format!("https://{rest}")),
        (Some("https"), false) => Err(format!(
            "peer {addr} is https:// but this node has no --tls-cert/--tls-key/--tls-ca"
        )),
        (Some("http"), true) => Err(format!(
            "peer {addr} is http:// but this node runs TLS: nodes talk only over mutual TLS"
        )),
        (Some(other), _) => Err(format!(
            "peer address {addr:?}: scheme {other:?} is neither http nor https"
        )),
    }
}

impl Peers {
    pub fn new(timeout: Duration, tls: Option<&crate::config::Tls>) -> Peers {
        Peers {
            channels: Arc::default(),
            timeout,
            tls: tls.map(|t| {
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_pem))
                    .identity(Identity::from_pem(&t.cert_pem, &t.key_pem))
                    .timeout(Duration::from_secs(5))
            }),
        }
    }

    /// The channel for forwarded writes, read indexes and status calls to `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, String> {
        self.channel(addr, Lane::Requests)
    }

    /// The channel openraft's replication, heartbeats and votes to `addr` use: its own TCP
    /// connection, so forwarded client traffic never queues Raft's messages behind it (one
    /// shared HTTP/2 connection under load delayed heartbeats into elections).
    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, String> {
        self.channel(addr, Lane::Raft)
    }

    fn channel(&self, addr: &str, lane: Lane) -> Result<RaftClient<Channel>, String> {
        let mut map = self.channels.lock().expect("peer map lock");
        let channel = match map.get(&(addr.to_string(), lane)) {
            Some(c) => c.clone(),
            None => {
                let url = peer_url(addr, self.tls.is_some())?;
                let mut e = Endpoint::from_shared(url)
                    .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10));
                if let Some(tls) = &self.tls {
                    e = e
                        .tls_config(tls.clone())
                        .map_err(|e| format!("TLS to peer {addr:?}: {e}"))?;
                }
                let c = e.connect_lazy();
                map.insert((addr.to_string(), lane), c.clone());
                c
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn addr_of(raft: &Raft, id: NodeId) -> Option<Node> {
        raft.metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    fn leader_client(&self, raft: &Raft, leader: NodeId) -> Result<RaftClient<Channel>, ApiError> {
        let node = Self::addr_of(raft, leader).ok_or_else(|| {
            ApiError::unavailable(
                "no_leader",
                format!("leader {leader} is not in the membership"),
            )
        })?;
        self.client(&node.grpc_addr)
            .map_err(|e| ApiError::unavailable("unavailable", e))
    }

    /// Hand a write to the leader. A transport failure leaves the outcome unknown.
    pub async fn forward(
        &self,
        raft: &Raft,
        leader: NodeId,
        req: &ForwardRequest,
    ) -> Result<ForwardReply, ApiError> {
        let mut client = self.leader_client(raft, leader)?;
        let mut r = Request::new(pb::Blob { data: encode(req) });
        r.set_timeout(self.timeout);
        match client.forward(r).await {
            Ok(resp) => decode(&resp.into_inner().data)
                .map_err(|e| ApiError::internal(e.message().to_string())),
            Err(s) if s.code() == tonic::Code::Unavailable && s.message().contains("connect") => {
                // Never reached the leader: nothing was proposed.
                Err(ApiError::unavailable(
                    "no_leader",
                    format!("leader {leader} is unreachable"),
                ))
            }
            Err(s) => Err(ApiError::unavailable(
                "unavailable",
                format!(
                    "forwarding to leader {leader} failed ({}); outcome unknown: retry with the same Idempotency-Key",
                    s.message()
                ),
            )),
        }
    }

    pub async fn read_index(&self, raft: &Raft, leader: NodeId) -> Result<u64, ApiError> {
        let mut client = self.leader_client(raft, leader)?;
        let mut r = Request::new(pb::Blob { data: Vec::new() });
        r.set_timeout(self.timeout);
        let resp = client.read_index(r).await.map_err(|s| {
            ApiError::unavailable(
                "no_leader",
                format!("read index from leader {leader}: {}", s.message()),
            )
        })?;
        let reply: Result<u64, String> = decode(&resp.into_inner().data)
            .map_err(|e| ApiError::internal(e.message().to_string()))?;
        reply.map_err(|e| ApiError::unavailable("no_leader", e))
    }

    pub async fn status(&self, addr: &str) -> Result<api::NodeStatus, String> {
        let mut client = self.client(addr)?;
        let mut r = Request::new(pb::Blob { data: Vec::new() });
        // Long enough for a peer to hash a large state (about a second at 1M accounts).
        r.set_timeout(Duration::from_secs(5));
        let resp = client
            .local_status(r)
            .await
            .map_err(|s| s.message().to_string())?;
        serde_json::from_slice(&resp.into_inner().data).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- openraft client side

pub struct NetworkFactory {
    pub peers: Peers,
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConn {
        PeerConn {
            target,
            client: self.peers.raft_client(&node.grpc_addr),
        }
    }
}

pub struct PeerConn {
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
}

fn unreachable<E: std::fmt::Display>(target: NodeId, e: E) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "node {target}: {e}"
    ))))
}

fn network<E: std::fmt::Display>(target: NodeId, e: E) -> NetworkError<C> {
    NetworkError::new(&std::io::Error::other(format!("node {target}: {e}")))
}

impl PeerConn {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let target = self.target;
        let client = self.client.as_mut().map_err(|e| unreachable(target, e))?;
        let mut r = Request::new(pb::Blob { data: encode(req) });
        let deadline = match method {
            "append" => option.hard_ttl().max(RAFT_APPEND_MIN_DEADLINE),
            _ => option.hard_ttl(),
        };
        r.set_timeout(deadline);
        let result = match method {
            "append" => client.append_entries(r).await,
            "vote" => client.vote(r).await,
            _ => client.transfer_leader(r).await,
        };
        let blob = result.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                unreachable(target, s.message())
            }
            _ => RPCError::Network(network(target, s.message())),
        })?;
        let reply: Result<Resp, String> = postcard::from_bytes(&blob.into_inner().data)
            .map_err(|e| RPCError::Network(network(target, e)))?;
        reply.map_err(|e| RPCError::Network(network(target, e)))
    }
}

impl RaftNetworkV2<C> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call("append", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call("vote", &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call("transfer", &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::type_config::alias::VoteOf<C>,
        snapshot: openraft::type_config::alias::SnapshotOf<C, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let target = self.target;
        let client = self.client.as_mut().map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone())))
        })?;
        let bytes = raft_store::snapshot_bytes(&snapshot.snapshot);
        let meta = encode(&(vote, snapshot.meta));
        let mut chunks = vec![pb::SnapshotChunk {
            meta,
            data: Vec::new(),
        }];
        chunks.extend(
            bytes
                .chunks(SNAPSHOT_CHUNK_BYTES)
                .map(|c| pb::SnapshotChunk {
                    meta: Vec::new(),
                    data: c.to_vec(),
                }),
        );
        let mut r = Request::new(tokio_stream::iter(chunks));
        r.set_timeout(option.hard_ttl().max(Duration::from_secs(60)));
        let send = client.install_snapshot(r);
        let blob = tokio::select! {
            res = send => res.map_err(|s| StreamingError::Network(network(target, s.message())))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply: Result<SnapshotResponse<C>, String> =
            postcard::from_bytes(&blob.into_inner().data)
                .map_err(|e| StreamingError::Network(network(target, e)))?;
        reply.map_err(|e| StreamingError::Network(network(target, e)))
    }
}

// ---------------------------------------------------------------- server side

pub struct RaftService {
    pub app: Arc<App>,
}

/// Under TLS every node-to-node call must come with a client certificate that the TLS layer
/// verified against the cluster CA. The gRPC listener accepts connections without one (buyers
/// have no certificates and the public API shares the port), so the rule is enforced here,
/// per call: the public services never ask, this service always does.
pub fn require_peer_certificate<T>(tls: bool, req: &Request<T>) -> Result<(), Status> {
    if tls && req.peer_certs().is_none_or(|certs| certs.is_empty()) {
        return Err(Status::unauthenticated(
            "node-to-node calls need a client certificate signed by the cluster CA (--tls-ca)",
        ));
    }
    Ok(())
}

impl RaftService {
    fn peer<T>(&self, req: &Request<T>) -> Result<(), Status> {
        require_peer_certificate(self.app.cfg.tls.is_some(), req)
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<pb::Blob>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    Ok(Response::new(pb::Blob { data: encode(&r) }))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let rpc: AppendEntriesRequest<C> = decode(&req.into_inner().data)?;
        reply(self.app.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let rpc: VoteRequest<C> = decode(&req.into_inner().data)?;
        reply(self.app.raft.vote(rpc).await)
    }

    async fn transfer_leader(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let rpc: TransferLeaderRequest<C> = decode(&req.into_inner().data)?;
        reply(self.app.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        type Meta = (
            openraft::type_config::alias::VoteOf<C>,
            openraft::type_config::alias::SnapshotMetaOf<C>,
        );
        let (vote, meta): Meta = decode(&first.meta)?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(
                    "snapshot larger than this node accepts",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        // Validate before handing it to openraft: an install error would stop the node.
        let snapshot = raft_store::snapshot_from_bytes(data)
            .map_err(|e| Status::invalid_argument(format!("refused snapshot: {e}")))?;
        let snapshot = openraft::Snapshot { meta, snapshot };
        reply(self.app.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn forward(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let request: ForwardRequest = decode(&req.into_inner().data)?;
        let r = match tokio::time::timeout(self.app.cfg.request_timeout, self.app.propose(request))
            .await
        {
            Ok(Ok((o, index))) => ForwardReply::Outcome(o, index),
            Ok(Err(crate::app::WriteFailure::NotLeader)) => ForwardReply::NotLeader,
            Ok(Err(crate::app::WriteFailure::Other(e))) => ForwardReply::Failed(e.detail),
            Err(_) => {
                ForwardReply::Failed("not committed within the deadline; outcome unknown".into())
            }
        };
        Ok(Response::new(pb::Blob { data: encode(&r) }))
    }

    async fn read_index(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        reply(self.app.read_index().await.map_err(|e| e.detail))
    }

    async fn local_status(&self, req: Request<pb::Blob>) -> Result<Response<pb::Blob>, Status> {
        self.peer(&req)?;
        let s = self.app.local_status().await;
        Ok(Response::new(pb::Blob {
            data: serde_json::to_vec(&s).expect("status serializes"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::peer_url;

    #[test]
    fn peer_urls_follow_the_tls_setting_and_refuse_a_mismatch() {
        assert_eq!(
            peer_url("10.0.0.1:9090", false).unwrap(),
            "http://10.0.0.1:9090"
        );
        assert_eq!(
            peer_url("10.0.0.1:9090", true).unwrap(),
            "https://10.0.0.1:9090"
        );
        assert_eq!(peer_url("http://h:1", false).unwrap(), "http://h:1");
        assert_eq!(peer_url("https://h:1", true).unwrap(), "https://h:1");
        assert!(
            peer_url("http://h:1", true)
                .unwrap_err()
                .contains("mutual TLS")
        );
        assert!(
            peer_url("https://h:1", false)
                .unwrap_err()
                .contains("--tls")
        );
        assert!(peer_url("ftp://h:1", false).is_err());
    }
}
