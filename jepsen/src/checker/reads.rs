//! Reads, checked on their own terms (besides their place in `seat-linearizability`).
//!
//! `linearizable-reads`: a linearizable read must observe every write that completed before it
//! started. Per hot seat: take the last acknowledged write on the seat that completed before
//! the read was invoked; when no other write that may have taken effect could be ordered after
//! it (none overlaps it or falls between it and the read, acknowledged or unknown), the read
//! must show that write's result: `held` after a hold (or `available` once the hold may have
//! expired), `sold` after a confirm, `available` after a refund (a release is idempotent, so
//! it is not used as the reference). For the waiting room: `joined` counts at least every join
//! acknowledged before the read, `admitted_total` every entry a read had already shown
//! admitted, and both never decrease from one linearizable read to a later one.
//!
//! `stale-reads`: `?consistency=stale` is served from the node's own state with no bound on
//! its age (DESIGN.md §4, docs/http-api.md). What must hold anyway: no read from the future (a
//! seat shown held or sold has a hold or confirm of it invoked before the read returned; the
//! room's `joined` is at most the joins invoked so far), and per client and node, monotonic
//! reads while the node process lives: the room counters never go down, and a queue entry's
//! state never goes back (pre_queue → waiting → admitted → expired) between two reads of the
//! same node with no restart of that node in between.

use super::{CheckResult, Params, describe};
use crate::history::{Completion, Logical, Op, Value};
use std::collections::{BTreeSet, HashMap};

/// A write on one hot seat, in real time.
struct W<'a> {
    l: &'a Logical,
    /// The state an acknowledged write leaves the seat in (`None`: not a reference).
    after: Option<&'static str>,
    /// A hold's expiry in run µs (it may be seen `available` from then on).
    expires_us: Option<i64>,
}

fn seat_writes<'a>(ops: &'a [Logical], seat: &str, p: &Params) -> Vec<W<'a>> {
    let mut out = Vec::new();
    for l in ops {
        let on_seat = match &l.op {
            Op::Hold { seat: s, .. } => s == seat,
            Op::Release { seat: Some(s), .. }
            | Op::Confirm { seat: Some(s), .. }
            | Op::Refund { seat: Some(s), .. } => s == seat,
            _ => false,
        };
        if !on_seat || matches!(l.outcome, Completion::Fail(_)) {
            continue;
        }
        let (after, expires_us) = match (&l.op, &l.outcome) {
            (Op::Hold { .. }, Completion::Ok(Value::Hold { expires_at_ms, .. })) => (
                Some("held"),
                Some((*expires_at_ms as i64 - p.start_wall_ms - p.early_tolerance_ms) * 1000),
            ),
            (Op::Confirm { .. }, Completion::Ok(_)) => (Some("sold"), None),
            (Op::Refund { .. }, Completion::Ok(_)) => (Some("available"), None),
            _ => (None, None),
        };
        out.push(W {
            l,
            after,
            expires_us,
        });
    }
    out
}

fn room_counts(l: &Logical) -> Option<(u32, u32)> {
    match &l.outcome {
        Completion::Ok(Value::Room {
            joined,
            admitted_total,
            ..
        }) => Some((*joined, *admitted_total)),
        _ => None,
    }
}

pub fn linearizable_reads(ops: &[Logical], p: &Params) -> CheckResult {
    let mut problems = Vec::new();
    let mut checked = 0;
    for seat in &p.seats {
        let writes = seat_writes(ops, seat, p);
        for r in ops {
            let (Op::ReadSeats { stale: false, node }, Completion::Ok(Value::Seats { seats })) =
                (&r.op, &r.outcome)
            else {
                continue;
            };
            let Some(r_done) = r.complete_us else {
                continue;
            };
            // The last acknowledged write that completed before the read began.
            let Some(last) = writes
                .iter()
                .filter(|w| matches!(w.l.outcome, Completion::Ok(_)))
                .filter(|w| w.l.complete_us.is_some_and(|c| c < r.invoke_us))
                .max_by_key(|w| w.l.complete_us)
            else {
                continue;
            };
            let Some(after) = last.after else {
                continue;
            };
            // Any other write that may be ordered after it and before the read's end.
            let ambiguous = writes.iter().any(|x| {
                !std::ptr::eq(x.l, last.l)
                    && x.l.invoke_us < r_done
                    && x.l.complete_us.is_none_or(|c| c > last.l.invoke_us)
            });
            if ambiguous {
                continue;
            }
            checked += 1;
            let got = seats.get(seat).map(String::as_str).unwrap_or("missing");
            let may_have_expired = last.expires_us.is_some_and(|e| e <= r_done as i64);
            let ok = got == after || (may_have_expired && got == "available");
            if !ok {
                problems.push(format!(
                    "a linearizable read of node {node} shows seat {seat} {got}, but the last write before it left it {after}: {} then {}",
                    describe(last.l),
                    describe(r)
                ));
            }
        }
    }
    // The waiting room's counters.
    let mut joins: Vec<(u64, &str)> = Vec::new(); // (ack time, queue)
    let mut admitted_seen: Vec<(u64, &str)> = Vec::new(); // (read done, queue)
    for l in ops {
        match (&l.op, &l.outcome, l.complete_us) {
            (Op::Join { .. }, Completion::Ok(Value::Queued { queue_id, .. }), Some(c)) => {
                joins.push((c, queue_id))
            }
            (
                Op::QueueRead { queue, .. },
                Completion::Ok(Value::QueueState { state, .. }),
                Some(c),
            ) if state == "admitted" || state == "expired" => admitted_seen.push((c, queue)),
            _ => {}
        }
    }
    let mut lin: Vec<&Logical> = ops
        .iter()
        .filter(|l| matches!(l.op, Op::ReadRoom { stale: false, .. }) && room_counts(l).is_some())
        .collect();
    lin.sort_by_key(|l| l.invoke_us);
    for (i, r) in lin.iter().enumerate() {
        checked += 1;
        let (joined, admitted) = room_counts(r).unwrap_or_default();
        let acked: BTreeSet<&str> = joins
            .iter()
            .filter(|(c, _)| *c < r.invoke_us)
            .map(|x| x.1)
            .collect();
        if (joined as usize) < acked.len() {
            problems.push(format!(
                "a linearizable read shows {joined} joined, but {} joins were acknowledged before it began ({})",
                acked.len(),
                describe(r)
            ));
        }
        let seen: BTreeSet<&str> = admitted_seen
            .iter()
            .filter(|(c, _)| *c < r.invoke_us)
            .map(|x| x.1)
            .collect();
        if (admitted as usize) < seen.len() {
            problems.push(format!(
                "a linearizable read shows {admitted} admitted in all, but {} entries were read admitted before it began ({})",
                seen.len(),
                describe(r)
            ));
        }
        for earlier in &lin[..i] {
            if earlier.complete_us.is_some_and(|c| c < r.invoke_us) {
                let (j0, a0) = room_counts(earlier).unwrap_or_default();
                if joined < j0 || admitted < a0 {
                    problems.push(format!(
                        "linearizable room reads went back from ({j0} joined, {a0} admitted) to ({joined}, {admitted}): {} then {}",
                        describe(earlier),
                        describe(r)
                    ));
                    break;
                }
            }
        }
    }
    CheckResult::new("linearizable-reads", checked, problems, false)
}

fn queue_rank(state: &str) -> u8 {
    match state {
        "pre_queue" => 0,
        "waiting" => 1,
        "admitted" => 2,
        _ => 3,
    }
}

pub fn stale_reads(ops: &[Logical], p: &Params, starts: Option<&[(usize, u64)]>) -> CheckResult {
    let mut problems = Vec::new();
    let mut checked = 0;
    // No reads from the future, on the hot seats.
    for seat in &p.seats {
        let writes = seat_writes(ops, seat, p);
        for r in ops {
            let (Op::ReadSeats { stale: true, node }, Completion::Ok(Value::Seats { seats })) =
                (&r.op, &r.outcome)
            else {
                continue;
            };
            let Some(done) = r.complete_us else { continue };
            checked += 1;
            let got = seats.get(seat).map(String::as_str).unwrap_or("missing");
            let want = match got {
                "held" => "hold",
                "sold" => "confirm",
                _ => continue,
            };
            if !writes
                .iter()
                .any(|w| w.l.op.name() == want && w.l.invoke_us < done)
            {
                problems.push(format!(
                    "a stale read of node {node} shows seat {seat} {got} before any {want} of it was invoked ({})",
                    describe(r)
                ));
            }
        }
    }
    // No future room counters.
    let mut join_invokes: Vec<u64> = ops
        .iter()
        .filter(|l| matches!(l.op, Op::Join { .. }) && !matches!(l.outcome, Completion::Fail(_)))
        .map(|l| l.invoke_us)
        .collect();
    join_invokes.sort_unstable();
    for r in ops.iter().filter(|l| matches!(l.op, Op::ReadRoom { .. })) {
        let (Some((joined, admitted)), Some(done)) = (room_counts(r), r.complete_us) else {
            continue;
        };
        checked += 1;
        let invoked = join_invokes.partition_point(|t| *t < done);
        if joined as usize > invoked || admitted > joined {
            problems.push(format!(
                "a room read shows {joined} joined and {admitted} admitted, with {invoked} joins invoked by its end ({})",
                describe(r)
            ));
        }
    }
    // Monotonic per client and node, between restarts of that node.
    let restarted = |slot: u64, from: u64, to: u64| {
        starts.is_none_or(|s| {
            s.iter()
                .any(|(n, at)| *n as u64 == slot && *at >= from && *at <= to)
        })
    };
    let mut last_room: HashMap<(u32, u64), &Logical> = HashMap::new();
    let mut last_queue: HashMap<(u32, u64, &str), &Logical> = HashMap::new();
    let mut by_time: Vec<&Logical> = ops.iter().collect();
    by_time.sort_by_key(|l| l.invoke_us);
    for r in by_time {
        match (&r.op, &r.outcome) {
            (Op::ReadRoom { node, .. }, Completion::Ok(_)) => {
                let (j, a) = room_counts(r).unwrap_or_default();
                if let Some(prev) = last_room.get(&(r.process, *node)) {
                    let (j0, a0) = room_counts(prev).unwrap_or_default();
                    let from = prev.invoke_us;
                    if (j < j0 || a < a0)
                        && !restarted(*node, from, r.complete_us.unwrap_or(u64::MAX))
                    {
                        problems.push(format!(
                            "reads of node {node} by one client went back from ({j0} joined, {a0} admitted) to ({j}, {a}) with no restart of the node: {} then {}",
                            describe(prev),
                            describe(r)
                        ));
                    }
                }
                last_room.insert((r.process, *node), r);
            }
            (
                Op::QueueRead { queue, node, .. },
                Completion::Ok(Value::QueueState { state, .. }),
            ) => {
                checked += 1;
                let k = (r.process, *node, queue.as_str());
                if let Some(prev) = last_queue.get(&k)
                    && let Completion::Ok(Value::QueueState { state: s0, .. }) = &prev.outcome
                    && queue_rank(state) < queue_rank(s0)
                    && !restarted(*node, prev.invoke_us, r.complete_us.unwrap_or(u64::MAX))
                {
                    problems.push(format!(
                        "queue entry {queue} read from node {node} went back from {s0} to {state} with no restart of the node: {} then {}",
                        describe(prev),
                        describe(r)
                    ));
                }
                last_queue.insert(k, r);
            }
            _ => {}
        }
    }
    CheckResult::new("stale-reads", checked, problems, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::tests_support::{entry, params};
    use crate::history::{Type, logical};

    fn seats(state: &str) -> Option<Value> {
        Some(Value::Seats {
            seats: [("H:1:1".to_string(), state.to_string())].into(),
        })
    }

    /// A hold acknowledged, then a linearizable read that does not see it (what the
    /// stale-follower-reads canary does): invalid. Seeing it: valid.
    #[test]
    fn a_linearizable_read_missing_an_acknowledged_hold_is_a_violation() {
        let hold = Op::Hold {
            seat: "H:1:1".into(),
            key: "k".into(),
        };
        let read = Op::ReadSeats {
            node: 2,
            stale: false,
        };
        let hv = Some(Value::Hold {
            hold_id: "h_1".into(),
            expires_at_ms: 1_010_000,
            quantity: 1,
        });
        let es = |state: &str| {
            vec![
                entry(Type::Invoke, 1, 0, &hold, None, None, None),
                entry(Type::Ok, 1, 10, &hold, hv.clone(), None, None),
                entry(Type::Invoke, 2, 20, &read, None, None, None),
                entry(Type::Ok, 2, 25, &read, seats(state), None, None),
            ]
        };
        let r = linearizable_reads(&logical(&es("held")), &params());
        assert_eq!((r.valid, r.checked), (Valid::Valid, 1), "{r:#?}");
        let r = linearizable_reads(&logical(&es("available")), &params());
        assert_eq!(r.valid, Valid::Invalid);
        // The same read, stale: allowed (no bound on staleness), but not a future state.
        let stale = Op::ReadSeats {
            node: 2,
            stale: true,
        };
        let ok = [
            entry(Type::Invoke, 1, 0, &hold, None, None, None),
            entry(Type::Ok, 1, 10, &hold, hv.clone(), None, None),
            entry(Type::Invoke, 2, 20, &stale, None, None, None),
            entry(Type::Ok, 2, 25, &stale, seats("available"), None, None),
        ];
        assert_eq!(
            stale_reads(&logical(&ok), &params(), Some(&[])).valid,
            Valid::Valid
        );
        let future = [
            entry(Type::Invoke, 2, 0, &stale, None, None, None),
            entry(Type::Ok, 2, 5, &stale, seats("sold"), None, None),
        ];
        assert_eq!(
            stale_reads(&logical(&future), &params(), Some(&[])).valid,
            Valid::Invalid
        );
    }

    /// Room counters: a stale read going back on one node without a restart is invalid; with
    /// a restart of that node in between it is allowed. A linearizable read below the joins
    /// acknowledged before it is invalid.
    #[test]
    fn room_reads_must_be_monotonic_and_complete() {
        let join = Op::Join {
            buyer: 1,
            key: "j".into(),
        };
        let q = Some(Value::Queued {
            queue_id: "q_2_0".into(),
            position: Some(0),
        });
        let rs = Op::ReadRoom {
            node: 1,
            stale: true,
        };
        let room = |j: u32| {
            Some(Value::Room {
                joined: j,
                admitted_total: 0,
                waiting: j,
            })
        };
        let es = [
            entry(Type::Invoke, 1, 0, &join, None, None, None),
            entry(Type::Ok, 1, 10, &join, q.clone(), None, None),
            entry(Type::Invoke, 2, 20, &rs, None, None, None),
            entry(Type::Ok, 2, 25, &rs, room(1), None, None),
            entry(Type::Invoke, 3, 30, &rs, None, None, None),
            entry(Type::Ok, 3, 35, &rs, room(0), None, None),
        ];
        let ops = logical(&es);
        assert_eq!(
            stale_reads(&ops, &params(), Some(&[])).valid,
            Valid::Invalid
        );
        assert_eq!(
            stale_reads(&ops, &params(), Some(&[(1, 27_000)])).valid,
            Valid::Valid
        );
        let rl = Op::ReadRoom {
            node: 1,
            stale: false,
        };
        let es = [
            entry(Type::Invoke, 1, 0, &join, None, None, None),
            entry(Type::Ok, 1, 10, &join, q, None, None),
            entry(Type::Invoke, 2, 20, &rl, None, None, None),
            entry(Type::Ok, 2, 25, &rl, room(0), None, None),
        ];
        assert_eq!(
            linearizable_reads(&logical(&es), &params()).valid,
            Valid::Invalid
        );
    }
}
