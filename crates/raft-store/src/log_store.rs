//! The Raft log in RocksDB, with group commit.

use crate::{ENTRY_FORMAT_VERSION, LogId, StoreError, TypeConfig};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, VoteOf};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

type C = TypeConfig;

const CF_META: &str = "meta";
const CF_LOGS: &str = "logs";
const KEY_FORMAT: &[u8] = b"format_version";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Cloneable handle: the store, its reader and the flusher share one database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
}

/// The flusher thread and its queue. Dropped with the last handle: the queue closes, the
/// thread finishes what is queued and exits, and only then is the database closed, so a
/// store can be reopened as soon as the old one is gone.
struct Flusher {
    tx: std::sync::Mutex<Option<mpsc::Sender<IOFlushed<C>>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.lock().map(|mut t| t.take()));
        if let Some(h) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt log record: {e}"),
        )
    })
}

/// Classify RocksDB's open error. RocksDB reports a held lock as an I/O error naming the
/// `LOCK` file ("While lock file: <dir>/LOCK: Resource temporarily unavailable", or "lock hold
/// by current process" within one process); match that file, not the word "lock", which also
/// appears in corruption messages ("block checksum mismatch").
fn open_error(path: &Path, text: &str) -> StoreError {
    let names_lock_file = text.contains("/LOCK:");
    if names_lock_file && (text.contains("While lock file") || text.contains("lock hold by")) {
        StoreError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: text.to_string(),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// Open (or create) the RocksDB log at `path` and start its flusher thread. Prefer
    /// [`crate::open`], which also checks the log against the snapshots.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_META, CF_LOGS].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db =
            DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_error(path, e.as_ref()))?;
        let meta = db.cf_handle(CF_META).expect("created above");
        match db
            .get_cf(meta, KEY_FORMAT)
            .map_err(|e| StoreError::Unreadable {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })? {
            None => {
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.put_cf_opt(meta, KEY_FORMAT, ENTRY_FORMAT_VERSION.to_le_bytes(), &w)
                    .map_err(|e| StoreError::Unreadable {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })?;
            }
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .unwrap_or(u32::MAX);
                if found > ENTRY_FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: ENTRY_FORMAT_VERSION,
                    });
                }
            }
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<IOFlushed<C>>();
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || flusher(flush_db, rx))
            .map_err(|e| StoreError::Unreadable {
                path: path.to_path_buf(),
                detail: format!("spawning the flusher: {e}"),
            })?;
        let flusher = Flusher {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        };
        Ok(LogStore {
            db,
            flusher: Arc::new(flusher),
        })
    }

    /// The index the log is purged up to (inclusive), if any: the state machine's snapshot
    /// must reach at least this far, or the entries between are lost.
    pub fn purged_index(&self) -> Result<Option<u64>, StoreError> {
        let purged: Option<LogId> =
            self.meta_get(KEY_PURGED)
                .map_err(|e| StoreError::Unreadable {
                    path: self.db.path().to_path_buf(),
                    detail: e.to_string(),
                })?;
        Ok(purged.map(|l| l.index))
    }

    fn meta_get<T: DeserializeOwned>(&self, k: &[u8]) -> io::Result<Option<T>> {
        let cf = self.db.cf_handle(CF_META).expect("cf exists");
        match self.db.get_cf(cf, k).map_err(io_err)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn meta_put<T: Serialize>(&self, k: &[u8], v: &T, sync: bool) -> io::Result<()> {
        let cf = self.db.cf_handle(CF_META).expect("cf exists");
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        self.db.put_cf_opt(cf, k, encode(v)?, &w).map_err(io_err)
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let cf = self.db.cf_handle(CF_LOGS).expect("cf exists");
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(io_err)?;
                let e: EntryOf<C> = decode(&v)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

/// Group commit: wait for one append, take every append queued meanwhile, sync the WAL once,
/// then report all of them flushed. Entries are in RocksDB's memtable (readable) before they
/// reach here; durability is only claimed after `flush_wal(true)` returned.
fn flusher(db: Arc<DB>, rx: mpsc::Receiver<IOFlushed<C>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = db.flush_wal(true).map_err(|e| e.to_string());
        for cb in batch {
            cb.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e + 1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<C>>> {
        let (start, end) = bounds(&range);
        let cf = self.db.cf_handle(CF_LOGS).expect("cf exists");
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&key(start), Direction::Forward))
        {
            let (k, v) = item.map_err(io_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(io_err)?);
            if end.is_some_and(|e| index >= e) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<C>>> {
        self.meta_get(KEY_VOTE)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<C>> {
        let last_purged_log_id: Option<LogId> = self.meta_get(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    /// Durable before it returns: a vote must survive a crash.
    async fn save_vote(&mut self, vote: &VoteOf<C>) -> io::Result<()> {
        self.meta_put(KEY_VOTE, vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.meta_put(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.meta_get::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<C>> + Send,
        I::IntoIter: Send,
    {
        let cf = self.db.cf_handle(CF_LOGS).expect("cf exists");
        let mut batch = WriteBatch::default();
        for e in entries {
            batch.put_cf(cf, key(e.log_id.index), encode(&e)?);
        }
        // Not synced here: the flusher syncs once for every append waiting.
        self.db.write(batch).map_err(io_err)?;
        let tx = self
            .flusher
            .tx
            .lock()
            .map_err(|_| io_err("flusher lock poisoned"))?;
        tx.as_ref()
            .ok_or_else(|| io_err("the log flusher stopped"))?
            .send(callback)
            .map_err(|_| io_err("the log flusher stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let cf = self.db.cf_handle(CF_LOGS).expect("cf exists");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, key(from), key(u64::MAX));
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(batch, &w).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.meta_put(KEY_PURGED, &log_id, true)?;
        let cf = self.db.cf_handle(CF_LOGS).expect("cf exists");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, key(0), key(log_id.index + 1));
        self.db.write(batch).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_held_lock_file_is_reported_as_locked() {
        let dir = Path::new("/data/n1/log");
        let held = "IO error: While lock file: /data/n1/log/LOCK: Resource temporarily unavailable";
        assert!(matches!(open_error(dir, held), StoreError::Locked { .. }));
        let same_process = "IO error: lock hold by current process, acquire time 1700000000 \
            acquiring thread 1: /data/n1/log/LOCK: No locks available";
        assert!(matches!(
            open_error(dir, same_process),
            StoreError::Locked { .. }
        ));
        let corrupt = "Corruption: block checksum mismatch: stored = 1, computed = 2 in \
            /data/n1/log/000123.sst offset 0 size 4096";
        assert!(matches!(
            open_error(dir, corrupt),
            StoreError::Unreadable { .. }
        ));
    }
}
