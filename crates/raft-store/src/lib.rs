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
#![warn(missing_docs)]

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

/// A node's id in the cluster.
pub type NodeId = u64;

/// How to reach a node: its gRPC (Raft) and HTTP listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the Raft gRPC listener.
    pub grpc_addr: String,
    /// `host:port` of the HTTP API.
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
    /// Ledger commands the leader proposed together: one entry, one log write and one
    /// replication round for all of them, applied in order at the entry's index, one outcome
    /// each ([`Response::outcomes`]). At most [`MAX_COMMANDS_PER_ENTRY`].
    Commands(Vec<Command>),
}

/// Commands one [`Request::Commands`] entry carries at most (an entry is replicated whole,
/// so this bounds an entry's size by the commands' own bounds).
pub const MAX_COMMANDS_PER_ENTRY: usize = 512;

impl Request {
    /// The payload for a ledger command.
    pub fn command(cmd: Command) -> Request {
        Request::Command(cmd)
    }

    /// The payload for commands proposed together (at most [`MAX_COMMANDS_PER_ENTRY`]).
    pub fn commands(cmds: Vec<Command>) -> Request {
        assert!(
            !cmds.is_empty() && cmds.len() <= MAX_COMMANDS_PER_ENTRY,
            "an entry carries 1..={MAX_COMMANDS_PER_ENTRY} commands, not {}",
            cmds.len()
        );
        Request::Commands(cmds)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Command(c) => write!(f, "{}@{}", c.op.name(), c.stamp_ms),
            Request::Restore(b) => write!(f, "restore({} bytes)", b.len()),
            Request::Commands(c) => match c.first() {
                Some(first) => write!(f, "{} commands@{}", c.len(), first.stamp_ms),
                None => write!(f, "0 commands"),
            },
        }
    }
}

/// What applying an entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The log index of the entry.
    pub index: u64,
    /// `None` for entries without a command (blank, membership, restore) and for
    /// [`Request::Commands`], whose outcomes are in `outcomes`.
    pub outcome: Option<Outcome>,
    /// For [`Request::Commands`]: one outcome per command, in order.
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    /// For a restore: `Ok` or why it was refused.
    #[serde(default)]
    pub restore: Option<Result<(), String>>,
}

impl Response {
    /// The ledger's outcome, `None` for entries without a command.
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

/// The Raft node over these stores.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
/// A snapshot in transit or in memory: the ledger's own snapshot bytes
/// (`Ledger::snapshot`), validated by [`snapshot_from_bytes`] before install.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
/// A log id (term, leader node, index) of this type config.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;

/// Why the stores could not be opened. Every variant says what to do; none is a panic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another store in this one) holds RocksDB's `LOCK` file.
    #[error(
        "the data directory {path} is in use by another process (RocksDB lock held); stop it or use another --data-dir"
    )]
    Locked {
        /// The RocksDB directory.
        path: PathBuf,
    },
    /// The directory cannot be created or read, or RocksDB refused it (corruption, I/O).
    #[error("cannot open the data directory {path}: {detail}")]
    Unreadable {
        /// The directory.
        path: PathBuf,
        /// RocksDB's or the OS's message.
        detail: String,
    },
    /// The store's `format_version` is newer than [`ENTRY_FORMAT_VERSION`].
    #[error(
        "the data directory {path} was written by a newer ticketd (format {found}, this build reads {supported}); upgrade ticketd"
    )]
    NewerFormat {
        /// The RocksDB directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The snapshot directory cannot be created, listed or read.
    #[error("snapshot directory {path}: {detail}")]
    Snapshots {
        /// The snapshot directory.
        path: PathBuf,
        /// The OS's message.
        detail: String,
    },
    /// The log was purged behind a snapshot that is now missing or damaged: the entries in
    /// between exist nowhere on this node, so its state cannot be rebuilt from its own files.
    #[error(
        "the log in {path} is purged up to index {purged_index} but the newest usable snapshot \
         reaches only {snapshot_index:?} (newer snapshot files are missing or damaged, see the log); \
         this node cannot rebuild its state: move the data directory aside and re-add the node \
         so that it receives a snapshot from the leader"
    )]
    SnapshotBehindLog {
        /// The data directory.
        path: PathBuf,
        /// The log is purged up to this index, inclusive.
        purged_index: u64,
        /// The last index the newest valid snapshot covers (`None`: no valid snapshot).
        snapshot_index: Option<u64>,
    },
}

/// Open (or create) the log and state machine stores under `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let log = LogStore::open(&dir.join("log"))?;
    let sm = StateMachineStore::open(&dir.join("snapshots"))?;
    // openraft only purges behind a persisted snapshot, so a gap means a snapshot file was
    // lost or damaged (open() then fell back to an older one). Replaying across the gap would
    // build a ledger that differs from every other replica; refuse instead.
    if let Some(purged_index) = log.purged_index()? {
        let snapshot_index = sm.ledger_handle().last_applied();
        if snapshot_index < Some(purged_index) {
            return Err(StoreError::SnapshotBehindLog {
                path: dir.to_path_buf(),
                purged_index,
                snapshot_index,
            });
        }
    }
    Ok((log, sm))
}
