//! # raft-store
//!
//! openraft storage for ticketledger, durable in RocksDB:
//!
//! - [`LogStore`]: the Raft log, vote, committed index and purge point in their own column
//!   families. Appends are one `WriteBatch` each; a single flusher thread syncs the WAL once for
//!   every append that arrived meanwhile (group commit) and only then reports them flushed.
//! - [`StateMachineStore`]: `ledger::Ledger` as openraft's state machine. Committed entries
//!   are applied in order; snapshots are the ledger's own checksummed format, written
//!   atomically to `snapshots/`, validated before they are installed or loaded.
//!
//! The entry payload is [`Request`], versioned by [`ENTRY_FORMAT_VERSION`] (kept in the meta
//! column family and checked on open).
#![forbid(unsafe_code)]

mod log_store;
mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{LedgerHandle, StateMachineStore, snapshot_bytes, snapshot_from_bytes};

use ledger::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Bump when the encoding of log entries or metadata changes; a store written by a newer
/// version is refused rather than misread.
pub const ENTRY_FORMAT_VERSION: u32 = 1;

pub type NodeId = u64;

/// How to reach a node: its gRPC (Raft) and HTTP listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub grpc_addr: String,
    pub http_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

/// A log entry's application payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A ledger command, stamped by the leader.
    Command(Command),
    /// An operator's restore of a backup (a ledger snapshot) into a cluster that has no
    /// catalog yet. Applied deterministically: refused on every replica alike otherwise.
    Restore(Vec<u8>),
}

impl Request {
    pub fn command(cmd: Command) -> Request {
        Request::Command(cmd)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Command(c) => write!(f, "{}@{}", c.op.name(), c.stamp_ms),
            Request::Restore(b) => write!(f, "restore({} bytes)", b.len()),
        }
    }
}

/// What applying an entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub index: u64,
    /// `None` for entries without a command (blank, membership, restore).
    pub outcome: Option<Outcome>,
    /// For a restore: `Ok` or why it was refused.
    #[serde(default)]
    pub restore: Option<Result<(), String>>,
}

impl Response {
    pub fn outcome(self) -> Option<Outcome> {
        self.outcome
    }
}

openraft::declare_raft_types!(
    /// ticketledger's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
);

pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {path} is in use by another process (RocksDB lock held); stop it or use another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("cannot open the data directory {path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error(
        "the data directory {path} was written by a newer ticketd (format {found}, this build reads {supported}); upgrade ticketd"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("snapshot directory {path}: {detail}")]
    Snapshots { path: PathBuf, detail: String },
}

/// Open (or create) the log and state machine stores under `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let log = LogStore::open(&dir.join("log"))?;
    let sm = StateMachineStore::open(&dir.join("snapshots"))?;
    Ok((log, sm))
}
