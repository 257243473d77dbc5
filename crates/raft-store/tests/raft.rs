//! The stores under a real (single-node) openraft: writes, a snapshot with the log purged
//! behind it, a restart, and openraft's own replay of the log after the snapshot.

use ledger::{Command, Op, Principal, Role};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use raft_store::{Node, Raft, Request, SnapshotData, TypeConfig as C};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Option<Duration> = Some(Duration::from_secs(20));
const T0: u64 = 1_700_000_000_000;

/// A one-node cluster never sends an RPC; any attempt is reported as an unreachable peer.
struct NoPeers;

fn unreachable() -> Unreachable<C> {
    Unreachable::new(&std::io::Error::other("single-node test: no peers"))
}

impl RaftNetworkFactory<C> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _target: u64, _node: &Node) -> NoPeers {
        NoPeers
    }
}

impl RaftNetworkV2<C> for NoPeers {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<C>,
        _snapshot: SnapshotOf<C, SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

/// Open the stores. After `Raft::shutdown` openraft's tasks drop their store handles
/// asynchronously (a few ms here), so a reopen in the same process waits for the RocksDB lock
/// to be released, with a deadline.
async fn open_stores(
    dir: &std::path::Path,
) -> (raft_store::LogStore, raft_store::StateMachineStore) {
    let t = std::time::Instant::now();
    loop {
        match raft_store::open(dir) {
            Err(raft_store::StoreError::Locked { .. }) if t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            r => return r.expect("open the stores"),
        }
    }
}

async fn start(dir: &std::path::Path) -> (Raft, raft_store::LedgerHandle) {
    let (log, sm) = open_stores(dir).await;
    let ledger = sm.ledger_handle();
    let config = openraft::Config {
        cluster_name: "raft-store-test".into(),
        // Snapshot by hand; purge everything behind a snapshot at once.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("valid config"));
    let raft = Raft::new(1, config, NoPeers, log, sm)
        .await
        .expect("raft starts");
    (raft, ledger)
}

fn user_command(i: u64) -> Command {
    Command::new(
        T0 + i,
        Principal::System,
        Op::CreateUser {
            email: format!("u{i}@x.io"),
            name: "U".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        },
    )
}

fn create_user(i: u64) -> Request {
    Request::command(user_command(i))
}

async fn write(raft: &Raft, req: Request) -> u64 {
    let resp = raft.client_write(req).await.expect("write commits");
    let outcome = resp
        .data
        .outcome
        .as_ref()
        .expect("a command has an outcome");
    assert!(outcome.is_ok(), "{outcome:?}");
    resp.log_id.index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_the_snapshot_and_replays_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (raft, ledger) = start(dir.path()).await;
    raft.initialize(BTreeMap::from([(1, Node::default())]))
        .await
        .unwrap();
    raft.wait(DEADLINE)
        .current_leader(1, "elected")
        .await
        .unwrap();
    let bootstrap = Request::command(Command::new(
        T0,
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    ));
    write(&raft, bootstrap).await;
    for i in 1..=40 {
        write(&raft, create_user(i)).await;
    }
    // Snapshot; openraft then purges the log behind it (max_in_snapshot_log_to_keep = 0).
    raft.trigger().snapshot().await.unwrap();
    let snap = raft
        .wait(DEADLINE)
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .unwrap()
        .snapshot
        .unwrap();
    raft.wait(DEADLINE)
        .purged(Some(snap), "log purged behind the snapshot")
        .await
        .unwrap();
    // After the snapshot, entries that carry several commands (as the node's proposer
    // writes them): one outcome per command, in order, a rejected one among them.
    let mut last = 0;
    for first in (41..=80).step_by(10) {
        let mut cmds: Vec<Command> = (first..first + 10).map(user_command).collect();
        cmds.insert(1, user_command(first)); // the same email again: refused, alone
        let resp = raft
            .client_write(Request::commands(cmds))
            .await
            .expect("write commits");
        assert!(resp.data.outcome.is_none());
        let outcomes = &resp.data.outcomes;
        assert_eq!(outcomes.len(), 11);
        for (k, o) in outcomes.iter().enumerate() {
            assert_eq!(
                o.is_ok(),
                k != 1,
                "command {k} of the entry at {first}: {o:?}"
            );
        }
        assert_eq!(resp.data.index, resp.log_id.index);
        last = resp.log_id.index;
    }
    assert_eq!(
        ledger.read(|l| l.state().users.len()),
        80,
        "40 users, then 40 more from four entries of ten"
    );
    let expected = ledger.state_hash();
    assert_eq!(ledger.last_applied_index(), last);
    raft.shutdown().await.unwrap();
    drop((raft, ledger));

    // Restart: the store loads the snapshot (and nothing more) ...
    let (_log, sm) = open_stores(dir.path()).await;
    assert_eq!(sm.ledger_handle().last_applied_index(), snap.index);
    drop((_log, sm));
    // ... and openraft replays the committed log after it.
    let (raft, ledger) = start(dir.path()).await;
    raft.wait(DEADLINE)
        .applied_index_at_least(Some(last), "replayed after the snapshot")
        .await
        .unwrap();
    assert_eq!(ledger.state_hash(), expected, "same as never stopping");
    // And it still accepts writes.
    raft.wait(DEADLINE)
        .current_leader(1, "leader again")
        .await
        .unwrap();
    write(&raft, create_user(81)).await;
    ledger.read(|l| l.check_invariants()).unwrap();
    raft.shutdown().await.unwrap();
}
