//! Crash tests with real files: drop without shutdown, `kill -9` mid-append, damaged snapshots.

use futures::stream;
use ledger::*;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::{Entry, EntryPayload};
use raft_store::{LogStore, Request, StateMachineStore, TypeConfig as C};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;

/// A realistic stream of commands: setup, then holds of 2 seats by many buyers, some confirmed.
fn commands(n: usize) -> Vec<ledger::Command> {
    let sys = Principal::System;
    let op_key = Principal::ApiKey(ApiKeyId(1));
    let mut v = vec![
        ledger::Command::new(
            T0,
            sys,
            Op::Bootstrap {
                operator_key_digest: [1; 32],
                token_secret: [2; 32],
            },
        ),
        ledger::Command::new(
            T0,
            op_key,
            Op::CreateVenue {
                name: "Arena".into(),
                sections: vec![SectionSpec::Seated {
                    name: "A".into(),
                    rows: (0..100)
                        .map(|r| RowSpec {
                            label: r.to_string(),
                            seats: 100,
                        })
                        .collect(),
                }],
            },
        ),
        ledger::Command::new(
            T0,
            op_key,
            Op::CreateEvent {
                name: "Show".into(),
                category: "music".into(),
                description: String::new(),
                media: vec![],
            },
        ),
        ledger::Command::new(
            T0,
            op_key,
            Op::CreatePerformance(PerformanceSpec {
                event: EventId(3),
                venue: VenueId(2),
                starts_at_ms: T0 + 1_000_000_000,
                on_sale_at_ms: 0,
                sale_ends_at_ms: u64::MAX,
                hold_ttl_ms: 600_000,
                payment_grace_ms: 0,
                max_seats_per_order: 4,
                categories: vec!["adult".into()],
                prices: vec![PriceSpec {
                    section: SectionIdx(0),
                    category: CategoryIdx(0),
                    price: Money {
                        amount_minor: 5000,
                        currency: Currency::parse("EUR").unwrap(),
                    },
                }],
                waiting_room: None,
            }),
        ),
        ledger::Command::new(
            T0,
            op_key,
            Op::SetSaleStatus {
                performance: PerformanceId(4),
                status: SaleStatus::OnSale,
                seed: None,
            },
        ),
    ];
    let mut i = 0u32;
    while v.len() < n {
        let user = v.len() as u64;
        v.push(ledger::Command::new(
            T0 + u64::from(i),
            sys,
            Op::CreateUser {
                email: format!("b{i}@x.io"),
                name: "B".into(),
                password_hash: vec![1],
                role: Role::Buyer,
            },
        ));
        let _ = user;
        i += 1;
    }
    v
}

/// Commands after the users: holds of 2 seats by user `u` (ids are assigned in order).
fn hold(buyer: u64, seat: u32, at: u64) -> ledger::Command {
    ledger::Command::new(
        at,
        Principal::User(UserId(buyer)),
        Op::PlaceHold {
            performance: PerformanceId(4),
            what: HoldRequest::Seats(vec![
                (SeatIdx(seat), CategoryIdx(0)),
                (SeatIdx(seat + 1), CategoryIdx(0)),
            ]),
        },
    )
}

fn entry(index: u64, cmd: ledger::Command) -> EntryOf<C> {
    Entry {
        log_id: log_id::<C>(1, 1, index),
        payload: EntryPayload::Normal(Request::Command(cmd)),
    }
}

/// The workload as log entries, starting at index 1.
fn workload(n_users: usize, n_holds: u64) -> Vec<EntryOf<C>> {
    let mut cmds = commands(5 + n_users);
    for k in 0..n_holds {
        // User ids are 6.. (ids 1-5 are the key, venue, event, performance... see commands()).
        let buyer = 6 + (k % n_users as u64);
        cmds.push(hold(buyer, (k as u32) * 2, T0 + 10_000 + k));
    }
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c))
        .collect()
}

async fn append_flushed(log: &mut LogStore, entries: Vec<EntryOf<C>>) {
    use openraft::type_config::async_runtime::Oneshot;
    let (tx, rx) = <openraft::impls::TokioRuntime as openraft::AsyncRuntime>::Oneshot::channel();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush callback").expect("flushed");
}

async fn apply_all(sm: &mut StateMachineStore, entries: Vec<EntryOf<C>>) {
    let items: Vec<std::io::Result<_>> = entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(stream::iter(items)).await.expect("apply");
}

fn hash(sm: &StateMachineStore) -> [u8; 32] {
    sm.ledger_handle().read(|l| l.state_hash())
}

#[tokio::test]
async fn reopen_after_drop_keeps_entries_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(50, 200);
    let (mut log, mut sm) = raft_store::open(dir.path()).unwrap();
    for chunk in entries.chunks(16) {
        append_flushed(&mut log, chunk.to_vec()).await;
    }
    apply_all(&mut sm, entries[..120].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    apply_all(&mut sm, entries[120..].to_vec()).await;
    let committed = Some(entries.last().unwrap().log_id);
    log.save_committed(committed).await.unwrap();
    let expected = hash(&sm);
    sm.ledger_handle().read(|l| l.check_invariants()).unwrap();
    drop((log, sm)); // no clean shutdown

    let (mut log, mut sm) = raft_store::open(dir.path()).unwrap();
    let stored = log.try_get_log_entries(1..).await.unwrap();
    assert_eq!(stored, entries, "every flushed entry is back, in order");
    assert_eq!(log.read_committed().await.unwrap(), committed);
    // Snapshot + replay of the log after it == never stopping.
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(120));
    apply_all(&mut sm, entries[120..].to_vec()).await;
    assert_eq!(hash(&sm), expected);
}

#[tokio::test]
async fn damaged_newest_snapshot_falls_back_to_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(20, 40);
    let (_log, mut sm) = raft_store::open(dir.path()).unwrap();
    apply_all(&mut sm, entries[..30].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    apply_all(&mut sm, entries[30..].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    drop(sm);
    let snaps = dir.path().join("snapshots");
    let mut files: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2);
    // Truncate the newest: refused, the older one is used.
    let newest = files.last().unwrap().clone();
    let len = std::fs::metadata(&newest).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let sm = StateMachineStore::open(&snaps).unwrap();
    let mut sm2 = sm.clone();
    assert_eq!(
        sm2.applied_state().await.unwrap().0.map(|l| l.index),
        Some(30)
    );
    // Flip one byte of the older one too: nothing valid remains, the store starts empty.
    let older = &files[0];
    let mut bytes = std::fs::read(older).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(older, bytes).unwrap();
    let mut sm3 = StateMachineStore::open(&snaps).unwrap();
    assert_eq!(sm3.applied_state().await.unwrap().0, None);
}

#[tokio::test]
async fn received_snapshots_are_validated_before_install() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(10, 10);
    let (_log, mut sm) = raft_store::open(dir.path()).unwrap();
    apply_all(&mut sm, entries).await;
    let snap = sm.build_snapshot().await.unwrap();
    let mut bytes = raft_store::snapshot_bytes(&snap.snapshot);
    assert!(raft_store::snapshot_from_bytes(bytes.clone()).is_ok());
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = raft_store::snapshot_from_bytes(bytes.clone()).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    bytes.truncate(10);
    assert!(raft_store::snapshot_from_bytes(bytes).is_err());
    // Install into a fresh store gives the same state.
    let dir2 = tempfile::tempdir().unwrap();
    let (_l2, mut sm2) = raft_store::open(dir2.path()).unwrap();
    sm2.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(hash(&sm2), hash(&sm));
}

#[test]
fn a_locked_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = raft_store::open(dir.path()).unwrap();
    let err = raft_store::open(dir.path())
        .err()
        .expect("second open fails")
        .to_string();
    assert!(err.contains("in use by another process"), "{err}");
}

/// The child half of the kill -9 test: append batches forever, printing each flushed index.
fn crash_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use openraft::type_config::async_runtime::Oneshot;
        let (mut log, _sm) = raft_store::open(dir).unwrap();
        let mut entries = workload(200, 20_000).into_iter().peekable();
        // As openraft does: several appends in flight, so the flusher groups them into one
        // sync. Batch sizes vary (1..=64); an index is printed only once its callback said
        // flushed.
        let mut inflight = std::collections::VecDeque::new();
        let mut size = 1;
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(size).collect();
            size = size % 64 + 7;
            let last = chunk.last().unwrap().log_id.index;
            let (tx, rx) =
                <openraft::impls::TokioRuntime as openraft::AsyncRuntime>::Oneshot::channel();
            log.append(chunk, IOFlushed::signal(tx)).await.unwrap();
            inflight.push_back((last, rx));
            if inflight.len() >= 8 {
                let (last, rx) = inflight.pop_front().unwrap();
                rx.await.unwrap().unwrap();
                println!("acked {last}");
            }
        }
        println!("done");
        std::thread::sleep(Duration::from_secs(60));
    });
}

#[test]
fn kill_9_mid_append_loses_no_acknowledged_entry() {
    if let Ok(dir) = std::env::var("RAFT_STORE_CRASH_CHILD") {
        return crash_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Proc::new(exe)
        .args([
            "--exact",
            "kill_9_mid_append_loses_no_acknowledged_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAFT_STORE_CRASH_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Kill it while it is appending: after a few hundred acknowledged batches.
    while let Some(Ok(line)) = lines.next() {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.trim().parse().unwrap();
            if acked >= 64 * 50 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "child too slow");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked > 0, "the child acknowledged nothing");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut log, _sm) = raft_store::open(dir.path()).unwrap();
        let stored = log.try_get_log_entries(1..).await.unwrap();
        assert!(
            stored.len() as u64 >= acked,
            "acked {acked} entries but only {} survived",
            stored.len()
        );
        let expected = workload(200, 20_000);
        assert_eq!(
            &stored[..],
            &expected[..stored.len()],
            "surviving entries are a prefix of what was written"
        );
    });
}

#[test]
fn a_store_from_a_newer_format_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    drop(raft_store::open(dir.path()).unwrap());
    {
        // Rewrite the format version as a future ticketd would.
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path().join("log"), ["meta", "logs"]).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", 99u32.to_le_bytes())
            .unwrap();
    }
    let err = raft_store::open(dir.path())
        .err()
        .map(|e| e.to_string())
        .expect("refused");
    assert!(err.contains("newer") && err.contains("99"), "{err}");
    // An unreadable directory is a clear error too.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = raft_store::open(&file)
        .err()
        .map(|e| e.to_string())
        .expect("refused");
    assert!(err.contains("cannot open"), "{err}");
}

#[tokio::test]
async fn truncate_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(20, 80);
    assert_eq!(entries.len(), 105);
    let (mut log, mut sm) = raft_store::open(dir.path()).unwrap();
    append_flushed(&mut log, entries.clone()).await;
    log.truncate_after(Some(entries[79].log_id)).await.unwrap();
    // openraft purges only behind a snapshot; keep that order here too.
    apply_all(&mut sm, entries[..30].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    log.purge(entries[29].log_id).await.unwrap();
    drop((log, sm));

    let (mut log, _sm) = raft_store::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(entries[29].log_id));
    assert_eq!(state.last_log_id, Some(entries[79].log_id));
    let stored = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(stored, entries[30..80]);
}

#[tokio::test]
async fn a_log_purged_past_the_usable_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(20, 40);
    let (mut log, mut sm) = raft_store::open(dir.path()).unwrap();
    append_flushed(&mut log, entries.clone()).await;
    apply_all(&mut sm, entries[..30].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    apply_all(&mut sm, entries[30..60].to_vec()).await;
    sm.build_snapshot().await.unwrap();
    log.purge(entries[59].log_id).await.unwrap();
    drop((log, sm));
    // Intact: opens, and the state is the snapshot at 60.
    let (_log, sm) = raft_store::open(dir.path()).unwrap();
    assert_eq!(sm.ledger_handle().last_applied(), Some(60));
    drop((_log, sm));

    // Damage the newest snapshot: the fallback (index 30) is behind the purged log (60).
    let snaps = dir.path().join("snapshots");
    let mut files: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let newest = files.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();
    let err = raft_store::open(dir.path()).err().expect("refused");
    assert!(
        matches!(
            err,
            raft_store::StoreError::SnapshotBehindLog {
                purged_index: 60,
                snapshot_index: Some(30),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("cannot rebuild its state"),
        "{err}"
    );
}

#[tokio::test]
async fn a_partly_written_snapshot_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let entries = workload(10, 10);
    let (_log, mut sm) = raft_store::open(dir.path()).unwrap();
    apply_all(&mut sm, entries.clone()).await;
    sm.build_snapshot().await.unwrap();
    drop((_log, sm));
    // What a crash in the middle of write_atomically leaves: a temp file, never renamed.
    let snaps = dir.path().join("snapshots");
    let partial = snaps.join(".snap-00000000000000000099-0000000001.bin.tmp");
    std::fs::write(&partial, b"TLSMSNP\n half").unwrap();
    let (_log, sm) = raft_store::open(dir.path()).unwrap();
    assert!(!partial.exists(), "the temp file is removed on open");
    assert_eq!(
        sm.ledger_handle().last_applied(),
        Some(entries.last().unwrap().log_id.index)
    );
}
