//! The waiting-room checker (`queue-order`): admission order against commit order, one entry
//! per buyer, and no hold on the room's performance without a valid admission.
//!
//! Evidence: the history (every join, queue read and hold attempt with its real-time interval)
//! and the change feed read back after the run (the ledger's own record of every join,
//! admission, admission expiry and hold, in log order). The admission order itself is audited
//! by `client::fairness::audit`, the same code anyone can run on the public feed: the
//! pre-queue in the ledger's seeded rank order (`prequeue_rank`), then later joins in commit
//! order. On top of it, this checker ties the feed to what clients saw:
//! - a join acknowledged before another was invoked has the smaller join index (commit order
//!   respects real time), and the pre-queue is exactly the joins committed before the opening;
//! - each buyer has at most one entry, and a second join by the same buyer is refused;
//! - every acknowledged join and hold is in the feed;
//! - every hold placed on the room's performance is by a buyer whose entry was admitted, not
//!   yet expired, at the hold's ledger time (feed), and no acknowledged hold was invoked after
//!   the admission's end as the buyer had read it, plus the late tolerance (history).

use super::{CheckResult, Params, describe};
use crate::history::{Completion, Logical, Op, Value};
use api::feed::FeedChange;
use std::collections::{BTreeMap, HashMap, HashSet};

/// `q_<performance>_<join index>` → join index.
fn join_index(queue: &str) -> Option<u32> {
    queue.rsplit('_').next()?.parse().ok()
}

pub fn check(
    ops: &[Logical],
    p: &Params,
    feed: Option<&Result<Vec<FeedChange>, String>>,
) -> CheckResult {
    let room_ops: Vec<&Logical> = ops
        .iter()
        .filter(|l| {
            matches!(
                l.op,
                Op::Join { .. }
                    | Op::QueueRead { .. }
                    | Op::WrHold { .. }
                    | Op::WrRelease { .. }
                    | Op::OpenRoom { .. }
            )
        })
        .collect();
    let Some(perf) = p.room_performance.as_deref() else {
        return CheckResult::new("queue-order", 0, Vec::new(), false);
    };
    if room_ops.is_empty() {
        return CheckResult::new("queue-order", 0, Vec::new(), false);
    }
    let mut problems = Vec::new();

    // ---- history alone: one entry per buyer.
    let mut queue_of: HashMap<u32, String> = HashMap::new();
    let mut join_op: HashMap<String, &Logical> = HashMap::new();
    for l in &room_ops {
        if let (Op::Join { buyer, .. }, Completion::Ok(Value::Queued { queue_id, .. })) =
            (&l.op, &l.outcome)
        {
            match queue_of.get(buyer) {
                Some(q) if q != queue_id => problems.push(format!(
                    "buyer {buyer} has two queue entries, {q} and {queue_id} ({})",
                    describe(l)
                )),
                Some(q) => problems.push(format!(
                    "buyer {buyer}'s second join (another idempotency key) was accepted as {q} instead of refused ({})",
                    describe(l)
                )),
                None => {
                    queue_of.insert(*buyer, queue_id.clone());
                    join_op.insert(queue_id.clone(), l);
                }
            }
        }
    }

    // ---- history alone: no acknowledged hold after the admission's end the buyer read.
    let mut reads: Vec<(u32, u64, u64)> = Vec::new(); // (buyer, complete us, until ms)
    for l in &room_ops {
        if let (
            Op::QueueRead { buyer, .. },
            Completion::Ok(Value::QueueState {
                admitted_until_ms: Some(u),
                ..
            }),
        ) = (&l.op, &l.outcome)
            && let Some(c) = l.complete_us
        {
            reads.push((*buyer, c, *u));
        }
    }
    for l in &room_ops {
        let (Op::WrHold { buyer, .. }, Completion::Ok(Value::Hold { hold_id, .. })) =
            (&l.op, &l.outcome)
        else {
            continue;
        };
        // The latest admission end this buyer had read before invoking the hold.
        let until = reads
            .iter()
            .filter(|(b, c, _)| b == buyer && *c < l.invoke_us)
            .map(|r| r.2)
            .max();
        if let Some(u) = until {
            let invoked_wall = p.start_wall_ms + (l.invoke_us / 1000) as i64;
            if invoked_wall > u as i64 + p.late_tolerance_ms {
                problems.push(format!(
                    "hold {hold_id} by buyer {buyer} was placed {:.1} s after its admission ended (read as {u} ms; tolerance {} ms) ({})",
                    (invoked_wall - u as i64) as f64 / 1e3,
                    p.late_tolerance_ms,
                    describe(l)
                ));
            }
        }
    }

    // ---- the feed.
    let feed = match feed {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            println!("  queue-order: the change feed could not be read back ({e})");
            return CheckResult::new("queue-order", room_ops.len(), problems, true);
        }
        None => return CheckResult::new("queue-order", room_ops.len(), problems, true),
    };
    let audit = client::fairness::audit(perf, feed);
    for pr in &audit.problems {
        problems.push(format!("admission order: {pr}"));
    }
    if audit.seed.is_none()
        && room_ops
            .iter()
            .any(|l| matches!(l.op, Op::OpenRoom { .. }) && matches!(l.outcome, Completion::Ok(_)))
    {
        problems.push("the sale was opened (acknowledged) but the feed has no seed reveal".into());
    }
    // Joins in the feed: one per buyer principal, each acknowledged join present.
    let mut joined: HashMap<String, (String, bool)> = HashMap::new(); // queue → (principal, prequeue)
    let mut entry_of: HashMap<String, String> = HashMap::new(); // principal → queue
    for c in feed.iter().filter(|c| c.kind == "queue_joined") {
        let (Some(q), Some(b)) = (&c.queue_id, &c.buyer) else {
            continue;
        };
        if let Some(other) = entry_of.get(b) {
            problems.push(format!(
                "principal {b} has two entries in the feed: {other} and {q}"
            ));
        }
        entry_of.insert(b.clone(), q.clone());
        joined.insert(q.clone(), (b.clone(), c.prequeue == Some(true)));
    }
    for (q, l) in &join_op {
        if !joined.contains_key(q) {
            problems.push(format!(
                "acknowledged join {q} is not in the change feed ({})",
                describe(l)
            ));
        }
    }
    // Pre-queue membership against the opening's real time.
    let open = room_ops
        .iter()
        .find(|l| matches!(l.op, Op::OpenRoom { .. }) && matches!(l.outcome, Completion::Ok(_)));
    if let Some(open) = open {
        let opened_by = open.complete_us.unwrap_or(u64::MAX);
        for (q, l) in &join_op {
            let Some((_, pre)) = joined.get(q) else {
                continue;
            };
            let done = l.complete_us.unwrap_or(u64::MAX);
            if done < open.invoke_us && !pre {
                problems.push(format!(
                    "join {q} was acknowledged before the opening was invoked but is not in the pre-queue ({})",
                    describe(l)
                ));
            }
            if l.invoke_us > opened_by && *pre {
                problems.push(format!(
                    "join {q} was invoked after the opening was acknowledged but is in the pre-queue ({})",
                    describe(l)
                ));
            }
        }
    }
    // Commit order respects real time among joins after the opening.
    let mut after: Vec<(&Logical, u32)> = join_op
        .iter()
        .filter(|(q, _)| joined.get(*q).is_some_and(|(_, pre)| !pre))
        .filter_map(|(q, l)| join_index(q).map(|j| (*l, j)))
        .collect();
    after.sort_by_key(|(l, _)| l.invoke_us);
    for (i, (a, ja)) in after.iter().enumerate() {
        let Some(done) = a.complete_us else { continue };
        for (b, jb) in &after[i + 1..] {
            if b.invoke_us > done && jb < ja {
                problems.push(format!(
                    "join index {jb} (invoked at {:.3} s) is ahead of {ja}, which was acknowledged before it was invoked ({:.3} s)",
                    b.invoke_us as f64 / 1e6,
                    done as f64 / 1e6
                ));
            }
        }
    }
    // Holds against admissions, in log order.
    let ttl = p.room_hold_ttl_ms;
    let mut admitted: HashMap<String, u64> = HashMap::new(); // queue → until ms
    let mut placed: HashMap<String, String> = HashMap::new(); // hold → principal
    for c in feed {
        match c.kind.as_str() {
            "queue_admitted" => {
                if let (Some(q), Some(u)) = (&c.queue_id, c.until_ms) {
                    admitted.insert(q.clone(), u);
                }
            }
            "admission_expired" => {
                if let Some(q) = &c.queue_id {
                    admitted.remove(q);
                }
            }
            "hold_placed" if c.performance_id.as_deref() == Some(perf) => {
                let (Some(h), Some(b)) = (&c.hold_id, &c.buyer) else {
                    continue;
                };
                placed.insert(h.clone(), b.clone());
                let stamp = c.until_ms.map(|u| u.saturating_sub(ttl));
                match entry_of.get(b) {
                    None => problems.push(format!(
                        "hold {h} on the waiting-room performance by {b}, who never joined its queue"
                    )),
                    Some(q) => match admitted.get(q) {
                        None => problems.push(format!(
                            "hold {h} by {b} ({q}) placed without a live admission"
                        )),
                        Some(&u) if stamp.is_some_and(|s| s >= u) => problems.push(format!(
                            "hold {h} by {b} ({q}) placed at ledger time {} ms, after its admission ended at {u} ms",
                            stamp.unwrap_or(0)
                        )),
                        Some(_) => {}
                    },
                }
            }
            _ => {}
        }
    }
    // Every acknowledged hold is in the feed, by the buyer whose entry the history knows.
    let principal_of_queue: BTreeMap<&String, &String> =
        joined.iter().map(|(q, (b, _))| (q, b)).collect();
    let mut seen_holds = HashSet::new();
    for l in &room_ops {
        let (Op::WrHold { buyer, .. }, Completion::Ok(Value::Hold { hold_id, .. })) =
            (&l.op, &l.outcome)
        else {
            continue;
        };
        seen_holds.insert(hold_id.clone());
        match placed.get(hold_id) {
            None => problems.push(format!(
                "acknowledged hold {hold_id} is not in the change feed ({})",
                describe(l)
            )),
            Some(b) => {
                let theirs = queue_of
                    .get(buyer)
                    .and_then(|q| principal_of_queue.get(q).copied());
                if theirs.is_some_and(|t| t != b) {
                    problems.push(format!(
                        "hold {hold_id} of buyer {buyer} is by {b} in the feed, not by the principal of its queue entry"
                    ));
                }
            }
        }
    }
    let checked = room_ops.len() + feed.len();
    CheckResult::new("queue-order", checked, problems, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::tests_support::{entry, params};
    use crate::history::{Type, logical};

    fn ch(kind: &str) -> FeedChange {
        FeedChange {
            kind: kind.into(),
            ..FeedChange::default()
        }
    }

    fn joined(j: u32, buyer: &str, pre: bool) -> FeedChange {
        FeedChange {
            queue_id: Some(format!("q_9_{j}")),
            buyer: Some(buyer.into()),
            prequeue: Some(pre),
            ..ch("queue_joined")
        }
    }

    fn admitted(j: u32, until: u64) -> FeedChange {
        FeedChange {
            queue_id: Some(format!("q_9_{j}")),
            until_ms: Some(until),
            ..ch("queue_admitted")
        }
    }

    fn placed(h: &str, buyer: &str, expires: u64) -> FeedChange {
        FeedChange {
            performance_id: Some("p_9".into()),
            hold_id: Some(h.into()),
            buyer: Some(buyer.into()),
            until_ms: Some(expires),
            ..ch("hold_placed")
        }
    }

    fn room_params() -> Params {
        Params {
            room_performance: Some("p_9".into()),
            room_hold_ttl_ms: 10_000,
            ..params()
        }
    }

    /// Two later joiners, admitted in join order, each holding while admitted: valid. Then a
    /// hold without admission (the canary's bug), a hold after the admission's end, two
    /// entries for one buyer, and admissions out of order: each invalid.
    #[test]
    fn the_queue_checker_accepts_a_fair_room_and_catches_each_violation() {
        let ja = Op::Join {
            buyer: 1,
            key: "a".into(),
        };
        let jb = Op::Join {
            buyer: 2,
            key: "b".into(),
        };
        let ha = Op::WrHold {
            buyer: 1,
            key: "ha".into(),
            admitted: true,
        };
        let q = |j: u32| {
            Some(Value::Queued {
                queue_id: format!("q_9_{j}"),
                position: Some(0),
            })
        };
        let hold = Some(Value::Hold {
            hold_id: "h_5".into(),
            expires_at_ms: 1_015_000,
            quantity: 1,
        });
        let es = vec![
            entry(Type::Invoke, 1, 0, &ja, None, None, None),
            entry(Type::Ok, 1, 10, &ja, q(0), None, None),
            entry(Type::Invoke, 2, 20, &jb, None, None, None),
            entry(Type::Ok, 2, 30, &jb, q(1), None, None),
            entry(Type::Invoke, 3, 4000, &ha, None, None, None),
            entry(Type::Ok, 3, 4010, &ha, hold, None, None),
        ];
        let ops = logical(&es);
        let seed = [3u8; 32];
        let created = FeedChange {
            performance_id: Some("p_9".into()),
            seed: Some(blake3::hash(&seed).to_hex().to_string()),
            ..ch("performance_created")
        };
        let revealed = FeedChange {
            performance_id: Some("p_9".into()),
            seed: Some(seed.iter().map(|b| format!("{b:02x}")).collect()),
            count: Some(0),
            ..ch("seed_revealed")
        };
        let mut good = vec![
            created.clone(),
            joined(0, "k_1", false),
            joined(1, "k_2", false),
            admitted(0, 1_010_000),
            admitted(1, 1_010_000),
            placed("h_5", "k_1", 1_015_000),
        ];
        good.insert(1, revealed.clone());
        let good = good;
        let p = room_params();
        let r = check(&ops, &p, Some(&Ok(good.clone())));
        assert_eq!(r.valid, crate::checker::Valid::Valid, "{r:#?}");

        // The hold placed before any admission (what canary-skip-admission lets through).
        let mut bad = good.clone();
        bad.swap(4, 6);
        bad.swap(5, 6);
        let r = check(&ops, &p, Some(&Ok(bad)));
        assert_eq!(r.valid, crate::checker::Valid::Invalid);
        assert!(
            r.problems
                .iter()
                .any(|x| x.contains("without a live admission")),
            "{r:#?}"
        );

        // Placed at ledger time 1_005_000 after an admission that ended at 1_004_000.
        let mut late = good.clone();
        late[4] = admitted(0, 1_004_000);
        let r = check(&ops, &p, Some(&Ok(late)));
        assert_eq!(r.valid, crate::checker::Valid::Invalid);

        // Admitted out of join order.
        let mut swapped = good.clone();
        swapped.swap(4, 5);
        let r = check(&ops, &p, Some(&Ok(swapped)));
        assert_eq!(r.valid, crate::checker::Valid::Invalid, "{r:#?}");

        // One buyer with two entries.
        let mut twice = good.clone();
        twice[3] = joined(1, "k_1", false);
        let r = check(&ops, &p, Some(&Ok(twice)));
        assert_eq!(r.valid, crate::checker::Valid::Invalid);

        // A join acknowledged first but committed second.
        let ops2 = logical(&[
            entry(Type::Invoke, 1, 0, &ja, None, None, None),
            entry(Type::Ok, 1, 10, &ja, q(1), None, None),
            entry(Type::Invoke, 2, 20, &jb, None, None, None),
            entry(Type::Ok, 2, 30, &jb, q(0), None, None),
        ]);
        let fe = vec![
            created,
            revealed,
            joined(0, "k_2", false),
            joined(1, "k_1", false),
        ];
        let r = check(&ops2, &p, Some(&Ok(fe)));
        assert_eq!(r.valid, crate::checker::Valid::Invalid, "{r:#?}");

        // No feed: unknown, never valid.
        let r = check(&ops, &p, Some(&Err("unreachable".into())));
        assert_eq!(r.valid, crate::checker::Valid::Unknown);
    }
}
