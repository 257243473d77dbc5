//! Storage benchmark: raw fsync rate of the data directory's disk, log appends per second at
//! several batch sizes (group commit), and snapshot build/install of a 100k-seat ledger.
//!
//! `cargo run -p raft-store --bin storebench -- [--dir DIR] [--seconds S] [--rounds N] [--json FILE]`
//! (the dev profile: a release build would compile RocksDB again for half an hour).

use ledger::*;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::{Entry, EntryPayload};
use raft_store::{Request, TypeConfig as C};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

const T0: u64 = 1_700_000_000_000;

fn hold_entry(index: u64) -> EntryOf<C> {
    let seat = (index % 99_000) as u32;
    let cmd = ledger::Command::new(
        T0 + index,
        Principal::User(UserId(1000 + index % 5000)),
        Op::PlaceHold {
            performance: PerformanceId(4),
            what: HoldRequest::Seats(vec![
                (SeatIdx(seat), CategoryIdx(0)),
                (SeatIdx(seat + 1), CategoryIdx(0)),
            ]),
        },
    );
    Entry {
        log_id: log_id::<C>(1, 1, index),
        payload: EntryPayload::Normal(Request::Command(cmd)),
    }
}

fn raw_fsync_rate(dir: &std::path::Path, seconds: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fsync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn appends_per_sec(dir: &std::path::Path, batch: usize, seconds: f64) -> (f64, f64) {
    use openraft::type_config::async_runtime::Oneshot;
    let (mut log, _sm) = raft_store::open(dir).expect("open store");
    let start = Instant::now();
    let mut next = 1u64;
    let mut batches = 0u64;
    // Keep a few batches in flight, as openraft does, so the flusher can group them.
    let mut inflight = std::collections::VecDeque::new();
    while start.elapsed().as_secs_f64() < seconds {
        let entries: Vec<_> = (next..next + batch as u64).map(hold_entry).collect();
        next += batch as u64;
        let (tx, rx) =
            <openraft::impls::TokioRuntime as openraft::AsyncRuntime>::Oneshot::channel();
        log.append(entries, IOFlushed::signal(tx))
            .await
            .expect("append");
        inflight.push_back(rx);
        batches += 1;
        if inflight.len() >= 4 {
            inflight
                .pop_front()
                .unwrap()
                .await
                .expect("callback")
                .expect("flushed");
        }
    }
    for rx in inflight {
        rx.await.expect("callback").expect("flushed");
    }
    let secs = start.elapsed().as_secs_f64();
    ((next - 1) as f64 / secs, batches as f64 / secs)
}

/// A 100k-seat on-sale with 20k holds and 10k bookings, built through commands.
fn big_ledger() -> Ledger {
    let mut l = Ledger::new();
    let mut i = 0u64;
    let mut apply = |l: &mut Ledger, p: Principal, op: Op| {
        i += 1;
        l.apply(i, ledger::Command::new(T0 + i, p, op))
    };
    apply(
        &mut l,
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    );
    let op = Principal::ApiKey(ApiKeyId(1));
    let rows = (0..100)
        .map(|r| RowSpec {
            label: r.to_string(),
            seats: 1000,
        })
        .collect();
    apply(
        &mut l,
        op,
        Op::CreateVenue {
            name: "Stadium".into(),
            sections: vec![SectionSpec::Seated {
                name: "A".into(),
                rows,
            }],
        },
    );
    apply(
        &mut l,
        op,
        Op::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        },
    );
    let eur = Currency::parse("EUR").unwrap();
    apply(
        &mut l,
        op,
        Op::CreatePerformance(PerformanceSpec {
            event: EventId(3),
            venue: VenueId(2),
            starts_at_ms: u64::MAX / 2,
            on_sale_at_ms: 0,
            sale_ends_at_ms: u64::MAX,
            hold_ttl_ms: 3_600_000,
            payment_grace_ms: 0,
            max_seats_per_order: 4,
            categories: vec!["adult".into()],
            prices: vec![PriceSpec {
                section: SectionIdx(0),
                category: CategoryIdx(0),
                price: Money {
                    amount_minor: 5000,
                    currency: eur,
                },
            }],
            waiting_room: None,
        }),
    );
    apply(
        &mut l,
        op,
        Op::SetSaleStatus {
            performance: PerformanceId(4),
            status: SaleStatus::OnSale,
            seed: None,
        },
    );
    for b in 0..10_000u32 {
        let user = match apply(
            &mut l,
            Principal::System,
            Op::CreateUser {
                email: format!("b{b}@x.io"),
                name: "B".into(),
                password_hash: vec![1],
                role: Role::Buyer,
            },
        ) {
            Outcome::Ok(Reply::UserCreated { user }) => user,
            o => panic!("{o:?}"),
        };
        for k in 0..2u32 {
            let seat = (b * 2 + k) * 2;
            let what = HoldRequest::Seats(vec![
                (SeatIdx(seat), CategoryIdx(0)),
                (SeatIdx(seat + 1), CategoryIdx(0)),
            ]);
            let Outcome::Ok(Reply::HoldPlaced(h)) = apply(
                &mut l,
                Principal::User(user),
                Op::PlaceHold {
                    performance: PerformanceId(4),
                    what,
                },
            ) else {
                panic!()
            };
            if k == 0 {
                // The check-in code seed (the node draws it at random).
                let mut code_seed = [0u8; 16];
                code_seed[..4].copy_from_slice(&b.to_le_bytes());
                assert!(
                    apply(
                        &mut l,
                        op,
                        Op::ConfirmHold {
                            hold: h.hold,
                            payment_ref: "p".into(),
                            code_seed
                        }
                    )
                    .is_ok()
                );
            }
        }
    }
    l
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut dir: Option<PathBuf> = None;
    let mut seconds = 2.0;
    let mut json: Option<PathBuf> = None;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--json" => json = args.next().map(PathBuf::from),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N (at least 1)")
            }
            _ => {
                eprintln!("usage: storebench [--dir DIR] [--seconds S] [--rounds N] [--json FILE]");
                std::process::exit(2);
            }
        }
    }
    let tmp = tempfile::tempdir_in(dir.as_deref().unwrap_or(std::path::Path::new(".")))
        .expect("temp dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "storebench in {} ({seconds} s per measurement)",
        tmp.path().display()
    );

    // The machine is shared: interleave the measurements in rounds, so that a burst of
    // someone else's I/O hits all of them alike, and report the median round.
    const BATCHES: [usize; 4] = [1, 16, 256, 1024];
    let mut fsyncs = Vec::new();
    let mut appends: Vec<Vec<(f64, f64)>> = vec![Vec::new(); BATCHES.len()];
    for round in 0..rounds {
        let f = raw_fsync_rate(tmp.path(), seconds);
        print!("round {}: fsync {f:.0}/s", round + 1);
        fsyncs.push(f);
        for (i, batch) in BATCHES.into_iter().enumerate() {
            let d = tmp.path().join(format!("log-{batch}-{round}"));
            let r = rt.block_on(appends_per_sec(&d, batch, seconds));
            print!(", b{batch} {:.0}/s", r.0);
            std::io::stdout().flush().ok();
            appends[i].push(r);
            let _ = std::fs::remove_dir_all(&d);
        }
        println!();
    }
    let fsync = median(fsyncs.clone());
    println!();
    println!("| measure (median of {rounds} rounds) | figure | × raw fsync |");
    println!("|---|---|---|");
    println!("| raw fsync (4 KiB write + fdatasync, one writer) | {fsync:.0} /s | 1.0 |");
    let mut rows = Vec::new();
    for (i, batch) in BATCHES.into_iter().enumerate() {
        let entries = median(appends[i].iter().map(|r| r.0).collect());
        let batches = median(appends[i].iter().map(|r| r.1).collect());
        let ratio = entries / fsync;
        println!(
            "| append, {batch} entries per batch ({batches:.0} batches/s) | {entries:.0} entries/s | {ratio:.1} |"
        );
        let all: Vec<String> = appends[i].iter().map(|r| format!("{:.0}", r.0)).collect();
        rows.push(format!(
            "{{\"batch\":{batch},\"entries_per_sec\":{entries:.0},\"batches_per_sec\":{batches:.0},\"ratio_to_fsync\":{ratio:.2},\"entries_per_sec_rounds\":[{}]}}",
            all.join(",")
        ));
    }
    let ratio_256 = median(appends[2].iter().map(|r| r.0).collect()) / fsync;
    println!(
        "target at 256 per batch: >= 50x raw fsync: {} ({ratio_256:.0}x)",
        if ratio_256 >= 50.0 { "met" } else { "MISSED" }
    );
    let fsync_rounds: Vec<String> = fsyncs.iter().map(|f| format!("{f:.0}")).collect();

    print!("building a 100k-seat ledger (10k bookings, 10k live holds)… ");
    std::io::stdout().flush().ok();
    let l = big_ledger();
    println!("done");
    let (snap_build_ms, snap_install_ms, snap_load_ms, snap_bytes) = rt.block_on(async {
        let src = tmp.path().join("sm-src");
        let (_log, mut sm) = raft_store::open(&src).expect("open");
        // Install the big ledger through the same path a follower uses.
        let bytes = l.snapshot();
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id::<C>(1, 1, l.last_index())),
            last_membership: Default::default(),
        };
        let t = Instant::now();
        let data = raft_store::snapshot_from_bytes(bytes.clone()).expect("valid");
        sm.install_snapshot(&meta, data).await.expect("install");
        let install = t.elapsed();
        let t = Instant::now();
        let snap = sm.build_snapshot().await.expect("build");
        let build = t.elapsed();
        let hash = sm.ledger_handle().state_hash();
        drop((_log, sm));
        // A restart: open loads the newest snapshot file (checksum, decode, validation).
        let t = Instant::now();
        let (_log, sm) = raft_store::open(&src).expect("reopen");
        let load = t.elapsed();
        assert_eq!(
            sm.ledger_handle().state_hash(),
            hash,
            "restart restores the state"
        );
        (
            build.as_secs_f64() * 1e3,
            install.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            raft_store::snapshot_bytes(&snap.snapshot).len(),
        )
    });
    println!();
    println!("| 100k-seat snapshot ({snap_bytes} bytes) | ms |");
    println!("|---|---|");
    println!("| validate + install + write (target < 2000) | {snap_install_ms:.0} |");
    println!("| build + write | {snap_build_ms:.0} |");
    println!("| load on restart (open) | {snap_load_ms:.0} |");
    let out = format!(
        "{{\"rounds\":{rounds},\"seconds_per_measurement\":{seconds},\"raw_fsync_per_sec\":{fsync:.0},\"raw_fsync_rounds\":[{}],\"appends\":[{}],\"snapshot_bytes\":{snap_bytes},\"snapshot_build_ms\":{snap_build_ms:.1},\"snapshot_install_ms\":{snap_install_ms:.1},\"snapshot_load_ms\":{snap_load_ms:.1}}}\n",
        fsync_rounds.join(","),
        rows.join(",")
    );
    if let Some(path) = json {
        std::fs::write(&path, &out).expect("write json");
        println!("wrote {}", path.display());
    }
}
