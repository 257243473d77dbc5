//! The ledger as openraft's state machine, with snapshot files.

use crate::{LogId, Response, SnapshotData, StoreError, TypeConfig};
use futures::StreamExt;
use ledger::Ledger;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, StoredMembership};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

type C = TypeConfig;
type Meta = SnapshotMetaOf<C>;

/// Snapshot file: magic, format version, meta length, meta (postcard), blake3 of everything
/// after the checksum field, then the ledger's own (checksummed) snapshot bytes.
const FILE_MAGIC: &[u8; 8] = b"TLSMSNP\n";
const FILE_VERSION: u32 = 1;
/// Old snapshot files kept besides the newest (the fallback when the newest is damaged).
const SNAPSHOTS_KEPT: usize = 2;

struct Inner {
    ledger: Ledger,
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<C>,
    /// The newest snapshot: its meta and the ledger bytes.
    current: Option<(Meta, Arc<Vec<u8>>)>,
}

/// openraft's state machine: the ledger in memory, its snapshots in files. Clones share the
/// state (openraft's snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<RwLock<Inner>>,
    dir: PathBuf,
}

/// Read access to the ledger for the node's read path (cheap to clone; shares the store's
/// lock, so it always sees the state as of the last applied batch).
#[derive(Clone)]
pub struct LedgerHandle {
    inner: Arc<RwLock<Inner>>,
}

impl LedgerHandle {
    /// Run `f` on the ledger under the read lock. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.inner.read().expect("ledger lock poisoned").ledger)
    }
    /// The index of the last entry applied (0 before anything was applied).
    pub fn last_applied_index(&self) -> u64 {
        self.last_applied().unwrap_or(0)
    }

    /// The index of the last entry applied, `None` before anything was applied (index 0, the
    /// initial membership entry, is an entry too).
    pub fn last_applied(&self) -> Option<u64> {
        self.inner
            .read()
            .expect("ledger lock poisoned")
            .last_applied
            .as_ref()
            .map(|l| l.index)
    }

    /// The ledger's state hash: equal on replicas that applied the same entries.
    pub fn state_hash(&self) -> [u8; 32] {
        self.read(Ledger::state_hash)
    }
}

/// The bytes a snapshot carries over the network (the ledger's snapshot format).
pub fn snapshot_bytes(data: &SnapshotData) -> Vec<u8> {
    data.get_ref().clone()
}

/// Check received snapshot bytes before openraft installs them: a damaged snapshot is
/// refused here, where the error is the sender's problem, not a fatal storage error.
pub fn snapshot_from_bytes(bytes: Vec<u8>) -> Result<SnapshotData, ledger::SnapshotError> {
    Ledger::restore(&bytes)?;
    Ok(Cursor::new(bytes))
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn file_name(meta: &Meta) -> String {
    let (term, index) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    format!("snap-{index:020}-{term:010}.bin")
}

/// The file's header: magic, version, meta length, the checksum of meta + ledger, meta. The
/// ledger bytes follow it (written from where they are, not copied after the header).
fn encode_header(meta: &Meta, ledger_bytes: &[u8]) -> io::Result<Vec<u8>> {
    let meta_bytes = postcard::to_stdvec(meta).map_err(io_err)?;
    let mut h = blake3::Hasher::new();
    h.update(&meta_bytes);
    h.update(ledger_bytes);
    let mut out = Vec::with_capacity(60 + meta_bytes.len());
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(h.finalize().as_bytes());
    out.extend_from_slice(&meta_bytes);
    Ok(out)
}

/// Parse and fully validate a snapshot file: header, checksum, meta, and the ledger.
fn decode_file(bytes: &[u8]) -> Result<(Meta, Ledger, Vec<u8>), String> {
    if bytes.len() < 52 || &bytes[..8] != FILE_MAGIC {
        return Err("not a snapshot file (bad magic or truncated header)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FILE_VERSION {
        return Err(format!(
            "snapshot file format {version} is not supported (this build reads {FILE_VERSION})"
        ));
    }
    let meta_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let rest = &bytes[52..];
    if meta_len > rest.len() as u64 {
        return Err("truncated snapshot file".into());
    }
    if blake3::hash(rest).as_bytes() != &bytes[20..52] {
        return Err("snapshot file checksum mismatch (corrupted or truncated)".into());
    }
    let (meta_bytes, ledger_bytes) = rest.split_at(meta_len as usize);
    let meta: Meta = postcard::from_bytes(meta_bytes).map_err(|e| format!("snapshot meta: {e}"))?;
    let ledger = Ledger::restore(ledger_bytes).map_err(|e| e.to_string())?;
    Ok((meta, ledger, ledger_bytes.to_vec()))
}

/// Write a file atomically: temp file, fsync, rename, fsync the directory.
fn write_atomically(dir: &Path, name: &str, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        for part in parts {
            f.write_all(part)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A crash during `write_atomically` leaves its temp file behind; it was never renamed, so it
/// was never a snapshot. Remove it so that crashes do not fill the disk.
fn remove_partial_writes(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_temp = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".snap-") && n.ends_with(".tmp"));
        if is_temp {
            tracing::warn!(file = %path.display(), "removing a partly written snapshot");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn snapshot_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-") && n.ends_with(".bin"))
        })
        .collect();
    files.sort();
    files.reverse();
    Ok(files)
}

impl StateMachineStore {
    /// Open the snapshot directory and load the newest valid snapshot (a damaged newest one is
    /// reported and the previous one used); openraft replays the log after it.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        let err = |detail: String| StoreError::Snapshots {
            path: dir.to_path_buf(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        remove_partial_writes(dir).map_err(|e| err(e.to_string()))?;
        let mut inner = Inner {
            ledger: Ledger::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
        };
        for path in snapshot_files(dir).map_err(|e| err(e.to_string()))? {
            let bytes =
                std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            match decode_file(&bytes) {
                Ok((meta, ledger, ledger_bytes)) => {
                    tracing::info!(snapshot = %path.display(), last_log = ?meta.last_log_id, "loaded snapshot");
                    inner.ledger = ledger;
                    inner.last_applied = meta.last_log_id;
                    inner.membership = meta.last_membership.clone();
                    inner.current = Some((meta, Arc::new(ledger_bytes)));
                    break;
                }
                Err(e) => {
                    tracing::error!(snapshot = %path.display(), error = %e, "refusing a damaged snapshot; trying an older one");
                }
            }
        }
        Ok(StateMachineStore {
            inner: Arc::new(RwLock::new(inner)),
            dir: dir.to_path_buf(),
        })
    }

    /// A read handle on the ledger for the node (reads, state hash, last applied index).
    pub fn ledger_handle(&self) -> LedgerHandle {
        LedgerHandle {
            inner: self.inner.clone(),
        }
    }

    fn persist(&self, meta: &Meta, ledger_bytes: &[u8]) -> io::Result<()> {
        let header = encode_header(meta, ledger_bytes)?;
        let name = file_name(meta);
        write_atomically(&self.dir, &name, &[&header, ledger_bytes])?;
        for old in snapshot_files(&self.dir)?
            .into_iter()
            .skip(SNAPSHOTS_KEPT + 1)
        {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<C> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<C, SnapshotData>> {
        // Seconds of CPU for a large ledger (190 MB at 1M buyers): off the async workers, or a
        // 2-core node stops answering heartbeats while it serializes and loses its followers.
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build_snapshot_blocking())
            .await
            .map_err(io_err)?
    }
}

/// Snapshots up to this size are restored again right after they are built, in debug builds
/// (what we write must be what we can read back); larger ones are checked by the tests'
/// smaller ledgers and by every follower that installs one.
const CHECK_SNAPSHOTS_UP_TO: usize = 16 << 20;

impl StateMachineStore {
    fn build_snapshot_blocking(&self) -> io::Result<SnapshotOf<C, SnapshotData>> {
        let started = std::time::Instant::now();
        // Under the read lock only while serializing: apply waits for it.
        let (meta, bytes) = {
            let g = self.inner.read().expect("ledger lock poisoned");
            let meta = Meta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
            };
            (meta, g.ledger.snapshot())
        };
        let serialized = started.elapsed();
        if bytes.len() <= CHECK_SNAPSHOTS_UP_TO {
            debug_assert!(
                Ledger::restore(&bytes).is_ok(),
                "a fresh snapshot does not restore"
            );
        }
        self.persist(&meta, &bytes)?;
        let bytes = Arc::new(bytes);
        self.inner.write().expect("ledger lock poisoned").current =
            Some((meta.clone(), bytes.clone()));
        tracing::info!(
            last_log = ?meta.last_log_id,
            bytes = bytes.len(),
            serialize_ms = serialized.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(bytes.to_vec()),
        })
    }
}

/// The ledger's write lock for apply. While a snapshot is being encoded under the read lock
/// (a second at 1M accounts), waiting for it would block one of the runtime's few workers;
/// then the wait moves off the worker (`block_in_place`, on a multi-thread runtime).
fn write_without_stalling(lock: &RwLock<Inner>) -> std::sync::RwLockWriteGuard<'_, Inner> {
    if let Ok(g) = lock.try_write() {
        return g;
    }
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| lock.write().expect("ledger lock poisoned"))
    } else {
        lock.write().expect("ledger lock poisoned")
    }
}

/// Replace an empty ledger by a backup, or refuse (the same way on every replica).
fn restore_backup(ledger: &mut Ledger, bytes: &[u8], index: u64) -> Result<(), String> {
    let refused = if !ledger.has_no_catalog() {
        Some("the cluster already has a catalog; restore into a fresh cluster".to_string())
    } else {
        match Ledger::restore_backup_at(bytes, index) {
            Ok(restored) => {
                *ledger = restored;
                None
            }
            Err(e) => Some(format!("the backup is unusable: {e}")),
        }
    };
    match refused {
        None => Ok(()),
        Some(why) => {
            skip(ledger, index);
            Err(why)
        }
    }
}

/// Entries without a command still move the ledger's index along, except the initial
/// membership entry at index 0, which precedes everything.
fn skip(ledger: &mut Ledger, index: u64) {
    if index > ledger.last_index() {
        ledger.skip_index(index);
    }
}

impl RaftStateMachine<C> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembershipOf<C>)> {
        let g = self.inner.read().expect("ledger lock poisoned");
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures::Stream<Item = io::Result<EntryResponder<C>>> + Unpin + Send,
    {
        // Take what is ready as one batch under one lock; respond after releasing it.
        while let Some(first) = entries.next().await {
            let mut batch = vec![first?];
            while let Some(Some(next)) = futures::FutureExt::now_or_never(entries.next()) {
                batch.push(next?);
            }
            let mut replies = Vec::with_capacity(batch.len());
            {
                let mut g = write_without_stalling(&self.inner);
                for (entry, responder) in batch {
                    let index = entry.log_id.index;
                    let mut restore = None;
                    let mut outcomes = Vec::new();
                    let outcome = match entry.payload {
                        EntryPayload::Normal(crate::Request::Command(cmd)) => {
                            Some(g.ledger.apply(index, cmd))
                        }
                        EntryPayload::Normal(crate::Request::Commands(cmds)) => {
                            outcomes = g.ledger.apply_entry(index, cmds);
                            None
                        }
                        EntryPayload::Normal(crate::Request::Restore(bytes)) => {
                            restore = Some(restore_backup(&mut g.ledger, &bytes, index));
                            None
                        }
                        EntryPayload::Membership(m) => {
                            g.membership = StoredMembership::new(Some(entry.log_id), m);
                            skip(&mut g.ledger, index);
                            None
                        }
                        EntryPayload::Blank => {
                            skip(&mut g.ledger, index);
                            None
                        }
                    };
                    g.last_applied = Some(entry.log_id);
                    if let Some(r) = responder {
                        replies.push((
                            r,
                            Response {
                                index,
                                outcome,
                                outcomes,
                                restore,
                            },
                        ));
                    }
                }
            }
            for (r, resp) in replies {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: SnapshotData) -> io::Result<()> {
        let bytes = snapshot.into_inner();
        // Restoring and writing a large snapshot takes seconds: off the async workers.
        let (this, m) = (self.clone(), meta.clone());
        let (ledger, bytes) = tokio::task::spawn_blocking(move || {
            let ledger = Ledger::restore(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            this.persist(&m, &bytes)?;
            Ok::<_, io::Error>((ledger, bytes))
        })
        .await
        .map_err(io_err)??;
        let mut g = self.inner.write().expect("ledger lock poisoned");
        g.ledger = ledger;
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        let size = bytes.len();
        g.current = Some((meta.clone(), Arc::new(bytes)));
        drop(g);
        tracing::info!(last_log = ?meta.last_log_id, bytes = size, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<C, SnapshotData>>> {
        let g = self.inner.read().expect("ledger lock poisoned");
        Ok(g.current
            .as_ref()
            .map(|(meta, bytes)| SnapshotOf::<C, SnapshotData> {
                meta: meta.clone(),
                snapshot: Cursor::new(bytes.to_vec()),
            }))
    }
}
