//! etcd v3 over its native gRPC API (the KV subset in proto/etcd_kv.proto). A seat is a key
//! that exists only while held or sold; a hold is one transaction that puts every seat only
//! if none of them exists. etcd acknowledges a write after a majority fsynced it (its
//! default; the benchmark never passes `--unsafe-no-fsync`).

use super::{progress_every, run_tag};
use crate::record::Outcome;
use crate::workload::{Op, Plan, Seats};
use anyhow::Context;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::request_op::Request;

pub struct Etcd {
    clients: Vec<KvClient<Channel>>,
    next: AtomicUsize,
    tag: String,
    holds: AtomicU64,
    read_slots: u32,
    pub notes: Vec<String>,
}

impl Etcd {
    /// Connect to every endpoint (`http://host:port`) and put the read targets.
    pub async fn setup(
        endpoints: &[String],
        plan: &Plan,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!endpoints.is_empty(), "--etcd needs at least one endpoint");
        let mut clients = Vec::new();
        for e in endpoints {
            let ch = Endpoint::from_shared(e.clone())
                .with_context(|| format!("bad etcd endpoint {e}"))?
                .timeout(timeout)
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to etcd at {e}"))?;
            clients.push(KvClient::new(ch));
        }
        let etcd = Etcd {
            clients,
            next: AtomicUsize::new(0),
            tag: run_tag(),
            holds: AtomicU64::new(1),
            read_slots: plan.read_slots,
            notes: vec![
                format!(
                    "{} members, requests round-robin over {}",
                    endpoints.len(),
                    endpoints.join(" ")
                ),
                "durability: etcd default (WAL fsync on a majority before the answer)".into(),
                "native gRPC KV.Txn / KV.Range (linearizable)".into(),
            ],
        };
        if plan.workload.needs_reads() {
            eprintln!("etcd: putting {} keys to read", plan.read_slots);
            for slot in 0..plan.read_slots {
                let key = etcd.read_key(slot);
                let put = pb::TxnRequest {
                    compare: Vec::new(),
                    success: vec![put(key, b"held".to_vec())],
                    failure: Vec::new(),
                };
                etcd.client().txn(put).await.context("putting a read key")?;
                progress_every("read keys", slot as usize + 1, plan.read_slots as usize);
            }
        }
        Ok(etcd)
    }

    fn client(&self) -> KvClient<Channel> {
        let i = self.next.fetch_add(1, Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    fn seat_key(&self, perf: u32, seat: u32) -> Vec<u8> {
        format!("{}/s/{perf}/{seat}", self.tag).into_bytes()
    }

    fn read_key(&self, slot: u32) -> Vec<u8> {
        format!("{}/r/{slot}", self.tag).into_bytes()
    }

    pub async fn exec(&self, op: &Op) -> Outcome {
        match *op {
            Op::Hold { perf, seats, .. } => self.hold(perf, &seats).await.0,
            Op::HoldConfirm { perf, seats, .. } => match self.hold(perf, &seats).await {
                (Outcome::Ok, value) => self.confirm(perf, &seats, value).await,
                (o, _) => o,
            },
            Op::Join { room, buyer } => {
                let key = format!("{}/q/{room}/{buyer}", self.tag).into_bytes();
                match self
                    .txn(
                        vec![absent(key.clone())],
                        vec![put(key, b"joined".to_vec())],
                    )
                    .await
                {
                    // Joining twice is the benchmark's mistake, not a seat conflict.
                    Outcome::Conflict => Outcome::ClientError,
                    o => o,
                }
            }
            Op::Read { slot } => {
                let req = pb::RangeRequest {
                    key: self.read_key(slot % self.read_slots.max(1)),
                    range_end: Vec::new(),
                    limit: 1,
                    serializable: false,
                };
                match self.client().range(req).await {
                    Ok(r) if r.get_ref().kvs.len() == 1 => Outcome::Ok,
                    Ok(_) => Outcome::ClientError,
                    Err(s) => grpc_outcome(&s),
                }
            }
        }
    }

    /// Put every seat with a fresh hold value if none of them exists.
    async fn hold(&self, perf: u32, seats: &Seats) -> (Outcome, Vec<u8>) {
        let value = format!("held:{}", self.holds.fetch_add(1, Relaxed)).into_bytes();
        let keys: Vec<Vec<u8>> = seats
            .as_slice()
            .iter()
            .map(|&s| self.seat_key(perf, s))
            .collect();
        let compare = keys.iter().map(|k| absent(k.clone())).collect();
        let success = keys.into_iter().map(|k| put(k, value.clone())).collect();
        (self.txn(compare, success).await, value)
    }

    /// Turn every seat of the hold into sold if each still carries the hold's value.
    async fn confirm(&self, perf: u32, seats: &Seats, held: Vec<u8>) -> Outcome {
        let mut sold = b"sold:".to_vec();
        sold.extend_from_slice(&held[5..]);
        let keys: Vec<Vec<u8>> = seats
            .as_slice()
            .iter()
            .map(|&s| self.seat_key(perf, s))
            .collect();
        let compare = keys
            .iter()
            .map(|k| pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::Value(held.clone())),
            })
            .collect();
        let success = keys.into_iter().map(|k| put(k, sold.clone())).collect();
        self.txn(compare, success).await
    }

    async fn txn(&self, compare: Vec<pb::Compare>, success: Vec<pb::RequestOp>) -> Outcome {
        let req = pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        match self.client().txn(req).await {
            Ok(r) if r.get_ref().succeeded => Outcome::Ok,
            Ok(_) => Outcome::Conflict,
            Err(s) => grpc_outcome(&s),
        }
    }
}

/// "This key does not exist" (it was never created, so its create revision is 0).
fn absent(key: Vec<u8>) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key,
        target_union: Some(TargetUnion::CreateRevision(0)),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest { key, value })),
    }
}

fn grpc_outcome(s: &tonic::Status) -> Outcome {
    use tonic::Code;
    match s.code() {
        Code::DeadlineExceeded | Code::Cancelled => Outcome::Timeout,
        Code::Unavailable => Outcome::Unavailable,
        // etcd's "too many requests" (its proposal backlog is full).
        Code::ResourceExhausted => Outcome::RateLimited,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Outcome::ClientError,
        _ => Outcome::ServerError,
    }
}
