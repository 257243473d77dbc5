//! The checkers: each reads the history (and the final audit of the cluster) and says valid,
//! invalid (with the evidence) or unknown.

pub mod reads;
pub mod room;
pub mod seat_lin;

use crate::history::{Completion, Logical, Op, Value};
use seat_lin::{Checker, EXT, F, Res, Seat, SeatOp, Tolerance, Verdict, Why};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// What the checkers need to know about the run besides the history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    /// The wall clock (unix ms) at the run's time zero: converts `expires_at_ms`.
    pub start_wall_ms: i64,
    pub hold_ttl_ms: u64,
    pub seats: Vec<String>,
    pub ga_capacity: u32,
    /// A hold may be seen gone this long before its `expires_at` (clock offsets of nodes).
    pub early_tolerance_ms: i64,
    /// …and must be gone for writes this long after it (tick, commit, clock offsets).
    pub late_tolerance_ms: i64,
    /// The waiting-room performance (`None`: no room workload in this run).
    #[serde(default)]
    pub room_performance: Option<String>,
    #[serde(default)]
    pub room_hold_ttl_ms: u64,
}

/// The cluster's state read back after the run, once every fault was healed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Audit {
    pub at_wall_ms: i64,
    pub holds: BTreeMap<String, Result<api::Hold, String>>,
    pub bookings: BTreeMap<String, Result<api::Booking, String>>,
    pub converged: bool,
    /// (node id, role, applied index, state hash) of every member.
    pub nodes: Vec<(u64, String, u64, String)>,
    /// The waiting-room performance's changes from the feed, read back after the run (or why
    /// they could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<Result<Vec<api::feed::FeedChange>, String>>,
    /// (slot, µs since the run started) of every node process start during the workload: a
    /// restarted node may serve older stale reads than before.
    #[serde(default)]
    pub node_starts: Vec<(usize, u64)>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // Jepsen's three verdicts, by their usual names.
pub enum Valid {
    Valid,
    Unknown,
    Invalid,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    pub checker: String,
    pub valid: Valid,
    /// Operations (or objects) this checker looked at.
    pub checked: usize,
    pub problems: Vec<String>,
    /// For an invalid seat: the smallest window of operations that is not linearizable from
    /// any state the seat could have been in before it.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub witness: Vec<String>,
}

impl CheckResult {
    fn new(checker: &str, checked: usize, problems: Vec<String>, unknown: bool) -> CheckResult {
        let valid = if !problems.is_empty() {
            Valid::Invalid
        } else if unknown {
            Valid::Unknown
        } else {
            Valid::Valid
        };
        CheckResult {
            checker: checker.into(),
            valid,
            checked,
            problems,
            witness: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub valid: Valid,
    pub ops: usize,
    pub checks: Vec<CheckResult>,
}

/// How many problems one checker lists (the count is always complete).
const PROBLEMS_SHOWN: usize = 20;

pub fn check_all(ops: &[Logical], params: &Params, audit: Option<&Audit>) -> Results {
    let mut checks = vec![
        seat_linearizability(ops, params),
        reads::linearizable_reads(ops, params),
        reads::stale_reads(ops, params, audit.map(|a| a.node_starts.as_slice())),
        idempotency(ops),
        ga_capacity(ops, params),
    ];
    match audit {
        Some(a) => {
            checks.push(room::check(ops, params, a.feed.as_ref()));
            checks.push(acknowledged_not_lost(ops, params, a));
            checks.push(no_double_sale(ops, a));
            checks.push(final_state_hashes(a));
        }
        None => checks.push(CheckResult::new("audit", 0, Vec::new(), true)),
    }
    for c in &mut checks {
        let n = c.problems.len();
        if n > PROBLEMS_SHOWN {
            c.problems.truncate(PROBLEMS_SHOWN);
            c.problems
                .push(format!("… and {} more", n - PROBLEMS_SHOWN));
        }
    }
    let valid = checks
        .iter()
        .map(|c| c.valid)
        .max()
        .unwrap_or(Valid::Unknown);
    Results {
        valid,
        ops: ops.len(),
        checks,
    }
}

fn why(code: &str) -> Why {
    match code {
        "seat_unavailable" => Why::Unavailable,
        "hold_expired" => Why::Expired,
        "hold_not_live" => Why::NotLive,
        "ticket_used" => Why::Used,
        _ => Why::Other,
    }
}

fn res(c: &Completion) -> Res<()> {
    match c {
        Completion::Ok(_) => Res::Ok(()),
        Completion::Fail(code) => Res::Fail(why(code)),
        Completion::Info(_) => Res::Unknown,
    }
}

/// Interns hold and booking ids; ops whose id is unknown get a fresh one each.
#[derive(Default)]
struct Ids {
    holds: HashMap<String, u32>,
    bookings: HashMap<String, u32>,
    next: u32,
}

impl Ids {
    fn fresh(&mut self) -> u32 {
        self.next += 1;
        self.next
    }
    fn hold(&mut self, id: &str) -> u32 {
        if let Some(r) = self.holds.get(id) {
            return *r;
        }
        let r = self.fresh();
        self.holds.insert(id.to_string(), r);
        r
    }
    fn booking(&mut self, id: &str) -> u32 {
        if let Some(r) = self.bookings.get(id) {
            return *r;
        }
        let r = self.fresh();
        self.bookings.insert(id.to_string(), r);
        r
    }
}

/// The operations on one seat, in the model's terms.
fn seat_ops(ops: &[Logical], seat: &str, params: &Params) -> Vec<SeatOp> {
    let mut ids = Ids::default();
    let mut out = Vec::new();
    for (src, l) in ops.iter().enumerate() {
        let complete_us = l.complete_us.unwrap_or(u64::MAX);
        let f = match &l.op {
            Op::Hold { seat: s, .. } if s == seat => {
                let (h, expires_us) = match &l.outcome {
                    Completion::Ok(Value::Hold {
                        hold_id,
                        expires_at_ms,
                        ..
                    }) => (
                        ids.hold(hold_id),
                        (*expires_at_ms as i64 - params.start_wall_ms) * 1000,
                    ),
                    _ => (
                        ids.fresh(),
                        l.invoke_us as i64 + params.hold_ttl_ms as i64 * 1000,
                    ),
                };
                F::Hold {
                    h,
                    res: res(&l.outcome),
                    expires_us,
                }
            }
            Op::Release {
                hold,
                seat: Some(s),
                ..
            } if s == seat => F::Release {
                h: ids.hold(hold),
                res: res(&l.outcome),
            },
            Op::Confirm {
                hold,
                seat: Some(s),
                ..
            } if s == seat => {
                let b = match &l.outcome {
                    Completion::Ok(Value::Booking { booking_id }) => ids.booking(booking_id),
                    _ => ids.fresh(),
                };
                F::Confirm {
                    h: ids.hold(hold),
                    b,
                    res: res(&l.outcome),
                }
            }
            Op::Refund {
                booking,
                seat: Some(s),
                ..
            } if s == seat => F::Refund {
                b: ids.booking(booking),
                res: res(&l.outcome),
            },
            Op::ReadSeats { stale: false, .. } => match &l.outcome {
                Completion::Ok(Value::Seats { seats }) => {
                    F::Read(match seats.get(seat).map(String::as_str) {
                        Some("available") => 0,
                        Some("held") => 1,
                        Some("sold") => 2,
                        _ => 3,
                    })
                }
                _ => continue,
            },
            _ => continue,
        };
        out.push(SeatOp {
            invoke_us: l.invoke_us,
            complete_us,
            f,
            src,
        });
    }
    out
}

fn tolerance(p: &Params) -> Tolerance {
    Tolerance {
        early_us: p.early_tolerance_ms * 1000,
        late_us: p.late_tolerance_ms * 1000,
    }
}

fn seat_linearizability(ops: &[Logical], params: &Params) -> CheckResult {
    let tol = tolerance(params);
    let mut problems = Vec::new();
    let mut unknown = false;
    let mut checked = 0;
    let mut witness = Vec::new();
    for seat in &params.seats {
        let sops = seat_ops(ops, seat, params);
        checked += sops.len();
        let started = Instant::now();
        match Checker::new(&sops, tol).check(&[Seat::Free]) {
            Verdict::Valid => {}
            Verdict::Unknown => {
                unknown = true;
                println!(
                    "  seat {seat}: search budget exhausted ({} ops): unknown",
                    sops.len()
                );
            }
            Verdict::Invalid {
                stuck_us,
                stuck_src,
            } => {
                problems.push(format!(
                    "seat {seat}: not linearizable ({} ops, searched in {:?}); stuck at op {} ({} at {:.3} s)",
                    sops.len(),
                    started.elapsed(),
                    ops[stuck_src].id,
                    ops[stuck_src].op.name(),
                    stuck_us as f64 / 1e6
                ));
                if witness.is_empty() {
                    witness = smallest_window(ops, &sops, stuck_us, tol)
                        .into_iter()
                        .map(|i| describe(&ops[i]))
                        .collect();
                    witness.insert(0, format!("seat {seat}: these operations cannot be linearized from any earlier state of the seat:"));
                }
            }
        }
    }
    let mut r = CheckResult::new("seat-linearizability", checked, problems, unknown);
    r.witness = witness;
    r
}

/// The shortest window of operations ending at the stuck point that still fails from every
/// state the seat could be in before it (free, held or sold by an older hold or booking).
fn smallest_window(ops: &[Logical], sops: &[SeatOp], stuck_us: u64, tol: Tolerance) -> Vec<usize> {
    let mut starts: Vec<u64> = sops
        .iter()
        .filter(|o| o.invoke_us <= stuck_us)
        .map(|o| o.invoke_us)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let started = Instant::now();
    for &t1 in starts.iter().rev() {
        if started.elapsed().as_secs() > 20 {
            break;
        }
        let mut window = window_ops(sops, t1, stuck_us);
        let all = [Seat::Free, Seat::Held(EXT), Seat::Sold(EXT)];
        if let Verdict::Invalid { .. } = Checker::new(&window, tol).check(&all) {
            // Reads and rejections change nothing: dropping one only removes a constraint,
            // so a window still invalid without it is still a true witness.
            let mut i = window.len();
            while i > 0 && started.elapsed().as_secs() <= 20 {
                i -= 1;
                let inert = matches!(window[i].f, F::Read(_))
                    || matches!(
                        window[i].f,
                        F::Hold {
                            res: Res::Fail(_),
                            ..
                        } | F::Release {
                            res: Res::Fail(_),
                            ..
                        } | F::Confirm {
                            res: Res::Fail(_),
                            ..
                        } | F::Refund {
                            res: Res::Fail(_),
                            ..
                        }
                    );
                if !inert {
                    continue;
                }
                let mut fewer = window.clone();
                fewer.remove(i);
                if let Verdict::Invalid { .. } = Checker::new(&fewer, tol).check(&all) {
                    window = fewer;
                }
            }
            let mut srcs: Vec<usize> = window.iter().map(|o| o.src).collect();
            srcs.sort_unstable_by_key(|i| ops[*i].invoke_us);
            return srcs;
        }
    }
    Vec::new()
}

/// Ops in `[t1, t2]` (by invocation, plus earlier ones still running at t1), with references
/// to holds and bookings made before the window turned into [`EXT`].
fn window_ops(sops: &[SeatOp], t1: u64, t2: u64) -> Vec<SeatOp> {
    let mut made_h = std::collections::HashSet::new();
    let mut made_b = std::collections::HashSet::new();
    let inside: Vec<&SeatOp> = sops
        .iter()
        .filter(|o| o.invoke_us <= t2 && (o.invoke_us >= t1 || o.complete_us >= t1))
        .collect();
    for o in &inside {
        match o.f {
            F::Hold { h, .. } => {
                made_h.insert(h);
            }
            F::Confirm { b, .. } => {
                made_b.insert(b);
            }
            _ => {}
        }
    }
    let h = |r: u32| if made_h.contains(&r) { r } else { EXT };
    let b = |r: u32| if made_b.contains(&r) { r } else { EXT };
    inside
        .into_iter()
        .map(|o| {
            let f = match o.f {
                F::Release { h: x, res } => F::Release { h: h(x), res },
                F::Confirm { h: x, b: y, res } => F::Confirm { h: h(x), b: y, res },
                F::Refund { b: y, res } => F::Refund { b: b(y), res },
                f => f,
            };
            SeatOp { f, ..o.clone() }
        })
        .collect()
}

pub fn describe(l: &Logical) -> String {
    let end = l
        .complete_us
        .map(|c| format!("{:.3}", c as f64 / 1e6))
        .unwrap_or_else(|| "?".into());
    let outcome = match &l.outcome {
        Completion::Ok(v) => format!("ok {}", serde_json::to_string(v).unwrap_or_default()),
        Completion::Fail(c) => format!("fail {c}"),
        Completion::Info(w) => format!("info ({w})"),
    };
    format!(
        "op {} process {} [{:.3} s, {end} s] {} → {outcome}",
        l.id,
        l.process,
        l.invoke_us as f64 / 1e6,
        serde_json::to_string(&l.op).unwrap_or_default(),
    )
}

/// Every definite answer for one idempotency key is the same: a retry is applied once.
fn idempotency(ops: &[Logical]) -> CheckResult {
    let mut problems = Vec::new();
    let mut checked = 0;
    for l in ops.iter().filter(|l| l.attempts.len() > 1) {
        checked += 1;
        let first = &l.attempts[0];
        if let Some(other) = l.attempts.iter().find(|a| *a != first) {
            problems.push(format!(
                "key {}: answered {first:?} then {other:?} ({})",
                l.op.key().unwrap_or("?"),
                describe(l)
            ));
        }
    }
    CheckResult::new("idempotent-retries", checked, problems, false)
}

/// GA: no read shows more held and sold than the capacity, and acknowledged live holds
/// (from their ack to the earliest moment they could end) never add up to more than it.
fn ga_capacity(ops: &[Logical], p: &Params) -> CheckResult {
    let mut problems = Vec::new();
    let mut checked = 0;
    for l in ops {
        if let (
            Op::ReadGa { node, .. },
            Completion::Ok(Value::Ga {
                capacity,
                available,
                held,
                sold,
            }),
        ) = (&l.op, &l.outcome)
        {
            checked += 1;
            if held + sold > *capacity
                || available + held + sold > *capacity
                || *capacity != p.ga_capacity
            {
                problems.push(format!(
                    "node {node} at {:.3} s: capacity {capacity} (expected {}), available {available}, held {held}, sold {sold}",
                    l.invoke_us as f64 / 1e6,
                    p.ga_capacity
                ));
            }
        }
    }
    // Sweep over definite-live intervals of acknowledged GA holds.
    let mut ends: HashMap<&str, u64> = HashMap::new();
    for l in ops {
        match &l.op {
            Op::Release {
                hold, seat: None, ..
            } if !matches!(l.outcome, Completion::Fail(_)) => {
                let e = ends.entry(hold.as_str()).or_insert(u64::MAX);
                *e = (*e).min(l.invoke_us);
            }
            _ => {}
        }
    }
    let mut refunded: HashMap<&str, u64> = HashMap::new();
    let mut booking_of: HashMap<&str, &str> = HashMap::new();
    for l in ops {
        match (&l.op, &l.outcome) {
            (
                Op::Confirm {
                    hold, seat: None, ..
                },
                Completion::Ok(Value::Booking { booking_id }),
            ) => {
                booking_of.insert(hold.as_str(), booking_id.as_str());
            }
            (
                Op::Refund {
                    booking,
                    seat: None,
                    ..
                },
                o,
            ) if !matches!(o, Completion::Fail(_)) => {
                let e = refunded.entry(booking.as_str()).or_insert(u64::MAX);
                *e = (*e).min(l.invoke_us);
            }
            _ => {}
        }
    }
    let mut events: Vec<(u64, i64)> = Vec::new();
    for l in ops {
        if let (
            Op::GaHold { .. },
            Completion::Ok(Value::Hold {
                hold_id,
                expires_at_ms,
                quantity,
            }),
        ) = (&l.op, &l.outcome)
        {
            checked += 1;
            let start = l.complete_us.unwrap_or(u64::MAX);
            let end = match booking_of.get(hold_id.as_str()) {
                // Booked: its tickets count until a refund is asked for.
                Some(b) => refunded.get(b).copied().unwrap_or(u64::MAX),
                None => {
                    let expiry = ((*expires_at_ms as i64 - p.start_wall_ms - p.early_tolerance_ms)
                        * 1000)
                        .max(0) as u64;
                    ends.get(hold_id.as_str())
                        .copied()
                        .unwrap_or(u64::MAX)
                        .min(expiry)
                }
            };
            if start < end {
                events.push((start, *quantity as i64));
                events.push((end, -(*quantity as i64)));
            }
        }
    }
    events.sort_unstable_by_key(|(t, d)| (*t, *d));
    let mut live = 0i64;
    for (t, d) in events {
        live += d;
        if live > p.ga_capacity as i64 {
            problems.push(format!(
                "at {:.3} s acknowledged live GA holds and bookings add up to {live} > capacity {}",
                t as f64 / 1e6,
                p.ga_capacity
            ));
        }
    }
    CheckResult::new("ga-capacity", checked, problems, false)
}

/// Every acknowledged hold and booking is still there after the run, in the state the
/// history says it must be in; holds nobody ended are expired once their TTL passed.
fn acknowledged_not_lost(ops: &[Logical], p: &Params, a: &Audit) -> CheckResult {
    let mut problems = Vec::new();
    let mut checked = 0;
    // What was attempted on each hold and booking (any outcome but a rejection may have acted).
    let mut ended: HashMap<&str, Vec<&Logical>> = HashMap::new();
    let mut refunds: HashMap<&str, Vec<&Logical>> = HashMap::new();
    for l in ops {
        match &l.op {
            Op::Release { hold, .. } | Op::Confirm { hold, .. } => {
                ended.entry(hold).or_default().push(l)
            }
            Op::Refund { booking, .. } => refunds.entry(booking).or_default().push(l),
            _ => {}
        }
    }
    for l in ops {
        let (seat, hold_id, expires_at_ms) = match (&l.op, &l.outcome) {
            (
                Op::Hold { seat, .. },
                Completion::Ok(Value::Hold {
                    hold_id,
                    expires_at_ms,
                    ..
                }),
            ) => (Some(seat.clone()), hold_id, *expires_at_ms),
            (
                Op::GaHold { .. },
                Completion::Ok(Value::Hold {
                    hold_id,
                    expires_at_ms,
                    ..
                }),
            ) => (None, hold_id, *expires_at_ms),
            _ => continue,
        };
        checked += 1;
        let Some(found) = a.holds.get(hold_id) else {
            continue;
        };
        let h = match found {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!(
                    "acknowledged hold {hold_id} is gone: {e} ({})",
                    describe(l)
                ));
                continue;
            }
        };
        if let Some(seat) = &seat
            && h.seats != vec![seat.clone()]
        {
            problems.push(format!(
                "acknowledged hold {hold_id} of {seat} now holds {:?}",
                h.seats
            ));
        }
        let acts = ended.get(hold_id.as_str()).cloned().unwrap_or_default();
        let confirmed_ok = acts.iter().find_map(|x| match (&x.op, &x.outcome) {
            (Op::Confirm { .. }, Completion::Ok(Value::Booking { booking_id })) => {
                Some(booking_id.clone())
            }
            _ => None,
        });
        let may_act = |f: &str| {
            acts.iter()
                .any(|x| x.op.name() == f && !matches!(x.outcome, Completion::Fail(_)))
        };
        match h.state.as_str() {
            "confirmed" => {
                if let Some(b) = confirmed_ok
                    && h.booking_id.as_deref() != Some(b.as_str())
                {
                    problems.push(format!(
                        "hold {hold_id} was confirmed as {b} but is booking {:?}",
                        h.booking_id
                    ));
                }
                if !may_act("confirm") {
                    problems.push(format!(
                        "hold {hold_id} is confirmed but no confirm was attempted"
                    ));
                }
            }
            state => {
                if confirmed_ok.is_some() {
                    problems.push(format!("hold {hold_id} was confirmed (acknowledged) but is now {state}: booking lost"));
                }
                if state == "released" && !may_act("release") {
                    problems.push(format!(
                        "hold {hold_id} is released but no release was attempted"
                    ));
                }
                let due_ms = expires_at_ms as i64 + p.late_tolerance_ms;
                if state == "live" && a.at_wall_ms > due_ms {
                    problems.push(format!(
                        "hold {hold_id} is still live {:.1} s after it expired (TTL plus {} ms tolerance passed)",
                        (a.at_wall_ms - expires_at_ms as i64) as f64 / 1e3,
                        p.late_tolerance_ms
                    ));
                }
            }
        }
    }
    for l in ops {
        let (Op::Confirm { hold, seat, .. }, Completion::Ok(Value::Booking { booking_id })) =
            (&l.op, &l.outcome)
        else {
            continue;
        };
        checked += 1;
        match a.bookings.get(booking_id) {
            None => {}
            Some(Err(e)) => problems.push(format!(
                "acknowledged booking {booking_id} is gone: {e} ({})",
                describe(l)
            )),
            Some(Ok(b)) => {
                if &b.hold_id != hold {
                    problems.push(format!(
                        "booking {booking_id} is of hold {} not {hold}",
                        b.hold_id
                    ));
                }
                if let Some(seat) = seat
                    && b.tickets.iter().map(|t| t.seat.clone()).collect::<Vec<_>>()
                        != vec![Some(seat.clone())]
                {
                    problems.push(format!(
                        "booking {booking_id} of {seat} has tickets {:?}",
                        b.tickets
                    ));
                }
                let refund_tried = refunds
                    .get(booking_id.as_str())
                    .is_some_and(|v| v.iter().any(|x| !matches!(x.outcome, Completion::Fail(_))));
                if !refund_tried && b.tickets.iter().any(|t| t.state != "valid") {
                    problems.push(format!(
                        "booking {booking_id} has refunded tickets but no refund was attempted"
                    ));
                }
            }
        }
    }
    CheckResult::new("acknowledged-not-lost", checked, problems, false)
}

/// No seat has two valid tickets, over every booking the run made.
fn no_double_sale(ops: &[Logical], a: &Audit) -> CheckResult {
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, b) in &a.bookings {
        if let Ok(b) = b {
            for t in b.tickets.iter().filter(|t| t.state == "valid") {
                if let Some(seat) = &t.seat {
                    holders.entry(seat.clone()).or_default().push(id.clone());
                }
            }
        }
    }
    let problems: Vec<String> = holders
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(seat, v)| format!("seat {seat} is sold to {} bookings: {v:?}", v.len()))
        .collect();
    let confirms = ops
        .iter()
        .filter(|l| matches!(l.op, Op::Confirm { .. }))
        .count();
    CheckResult::new(
        "no-double-sale",
        a.bookings.len().max(confirms),
        problems,
        false,
    )
}

/// Every member applied the same log to the same state.
fn final_state_hashes(a: &Audit) -> CheckResult {
    let mut problems = Vec::new();
    let applied: Vec<_> = a.nodes.iter().map(|n| n.2).collect();
    let same_index = applied.windows(2).all(|w| w[0] == w[1]);
    if same_index {
        let hashes: std::collections::BTreeSet<_> = a.nodes.iter().map(|n| &n.3).collect();
        if hashes.len() > 1 {
            problems.push(format!(
                "replicas at one applied index have different state hashes: {:?}",
                a.nodes
            ));
        }
    }
    let unknown = !a.converged || a.nodes.is_empty();
    if unknown {
        println!(
            "  final state: replicas did not converge in time: {:?}",
            a.nodes
        );
    }
    CheckResult::new("final-state-hashes", a.nodes.len(), problems, unknown)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::history::{Entry, Type};

    pub fn params() -> Params {
        Params {
            start_wall_ms: 1_000_000,
            hold_ttl_ms: 10_000,
            seats: vec!["H:1:1".into()],
            ga_capacity: 4,
            early_tolerance_ms: 100,
            late_tolerance_ms: 1500,
            room_performance: None,
            room_hold_ttl_ms: 0,
        }
    }

    pub fn entry(
        kind: Type,
        id: u64,
        at_ms: u64,
        op: &Op,
        value: Option<Value>,
        error: Option<&str>,
        retry_of: Option<u64>,
    ) -> Entry {
        Entry {
            kind,
            id,
            process: 0,
            at_us: at_ms * 1000,
            op: op.clone(),
            value,
            error: error.map(str::to_string),
            retry_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Type, logical};

    use super::tests_support::{entry, params};

    fn hold_value(id: &str, qty: u32) -> Value {
        Value::Hold {
            hold_id: id.into(),
            expires_at_ms: 1_000_000 + 10_000,
            quantity: qty,
        }
    }

    fn verdict(r: &Results, name: &str) -> Valid {
        r.checks
            .iter()
            .find(|c| c.checker == name)
            .expect("checker ran")
            .valid
    }

    #[test]
    fn a_retry_after_an_unknown_outcome_completes_the_operation() {
        let op = Op::Hold {
            seat: "H:1:1".into(),
            key: "k".into(),
        };
        let es = [
            entry(Type::Invoke, 1, 0, &op, None, None, None),
            entry(Type::Info, 1, 3000, &op, None, Some("timeout"), None),
            entry(Type::Invoke, 2, 3500, &op, None, None, Some(1)),
            entry(
                Type::Ok,
                2,
                3600,
                &op,
                Some(hold_value("h_1", 1)),
                None,
                Some(1),
            ),
        ];
        let ops = logical(&es);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].invoke_us, 0);
        assert_eq!(ops[0].complete_us, Some(3_600_000));
        assert!(matches!(ops[0].outcome, Completion::Ok(_)));
        let r = check_all(&ops, &params(), None);
        assert_eq!(verdict(&r, "seat-linearizability"), Valid::Valid);
        // Without the audit the whole verdict cannot be valid.
        assert_eq!(r.valid, Valid::Unknown);
    }

    #[test]
    fn a_retry_answered_differently_is_a_violation() {
        let op = Op::Hold {
            seat: "H:1:1".into(),
            key: "k".into(),
        };
        let es = [
            entry(Type::Invoke, 1, 0, &op, None, None, None),
            entry(Type::Ok, 1, 10, &op, Some(hold_value("h_1", 1)), None, None),
            entry(Type::Invoke, 2, 20, &op, None, None, Some(1)),
            entry(
                Type::Ok,
                2,
                30,
                &op,
                Some(hold_value("h_2", 1)),
                None,
                Some(1),
            ),
        ];
        let r = check_all(&logical(&es), &params(), None);
        assert_eq!(verdict(&r, "idempotent-retries"), Valid::Invalid);
    }

    #[test]
    fn acknowledged_ga_holds_over_capacity_are_a_violation() {
        let a = Op::GaHold {
            quantity: 3,
            key: "a".into(),
        };
        let b = Op::GaHold {
            quantity: 2,
            key: "b".into(),
        };
        let es = [
            entry(Type::Invoke, 1, 0, &a, None, None, None),
            entry(Type::Ok, 1, 10, &a, Some(hold_value("h_1", 3)), None, None),
            entry(Type::Invoke, 2, 20, &b, None, None, None),
            entry(Type::Ok, 2, 30, &b, Some(hold_value("h_2", 2)), None, None),
        ];
        let r = check_all(&logical(&es), &params(), None);
        assert_eq!(verdict(&r, "ga-capacity"), Valid::Invalid);
        // Released in between: fine.
        let rel = Op::Release {
            hold: "h_1".into(),
            seat: None,
            key: "r".into(),
        };
        let es = [
            entry(Type::Invoke, 1, 0, &a, None, None, None),
            entry(Type::Ok, 1, 10, &a, Some(hold_value("h_1", 3)), None, None),
            entry(Type::Invoke, 3, 12, &rel, None, None, None),
            entry(Type::Ok, 3, 15, &rel, Some(Value::Released), None, None),
            entry(Type::Invoke, 2, 20, &b, None, None, None),
            entry(Type::Ok, 2, 30, &b, Some(hold_value("h_2", 2)), None, None),
        ];
        let r = check_all(&logical(&es), &params(), None);
        assert_eq!(verdict(&r, "ga-capacity"), Valid::Valid);
    }

    fn audited_hold(state: &str) -> api::Hold {
        api::Hold {
            hold_id: "h_1".into(),
            performance_id: "p_1".into(),
            seats: vec!["H:1:1".into()],
            quantity: 1,
            expires_at: String::new(),
            expires_at_ms: 1_010_000,
            amount_minor: 1000,
            currency: "EUR".into(),
            state: state.into(),
            booking_id: None,
        }
    }

    #[test]
    fn lost_and_overdue_holds_are_violations() {
        let op = Op::Hold {
            seat: "H:1:1".into(),
            key: "k".into(),
        };
        let es = [
            entry(Type::Invoke, 1, 0, &op, None, None, None),
            entry(Type::Ok, 1, 10, &op, Some(hold_value("h_1", 1)), None, None),
        ];
        let ops = logical(&es);
        let mut audit = Audit {
            at_wall_ms: 1_030_000,
            converged: true,
            nodes: vec![
                (1, "leader".into(), 9, "ab".into()),
                (2, "follower".into(), 9, "ab".into()),
            ],
            ..Audit::default()
        };
        audit
            .holds
            .insert("h_1".into(), Ok(audited_hold("expired")));
        let r = check_all(&ops, &params(), Some(&audit));
        assert_eq!(r.valid, Valid::Valid, "{r:#?}");
        audit.holds.insert("h_1".into(), Ok(audited_hold("live")));
        let r = check_all(&ops, &params(), Some(&audit));
        assert_eq!(verdict(&r, "acknowledged-not-lost"), Valid::Invalid);
        audit
            .holds
            .insert("h_1".into(), Err("404 not_found".into()));
        let r = check_all(&ops, &params(), Some(&audit));
        assert_eq!(verdict(&r, "acknowledged-not-lost"), Valid::Invalid);
        audit
            .holds
            .insert("h_1".into(), Ok(audited_hold("released")));
        let r = check_all(&ops, &params(), Some(&audit));
        assert_eq!(verdict(&r, "acknowledged-not-lost"), Valid::Invalid);
    }

    #[test]
    fn diverged_replicas_are_a_violation() {
        let audit = Audit {
            at_wall_ms: 0,
            converged: true,
            nodes: vec![
                (1, "leader".into(), 9, "ab".into()),
                (2, "follower".into(), 9, "cd".into()),
            ],
            ..Audit::default()
        };
        let r = check_all(&[], &params(), Some(&audit));
        assert_eq!(verdict(&r, "final-state-hashes"), Valid::Invalid);
    }

    #[test]
    fn the_failing_window_of_a_double_hold_is_small_and_self_contained() {
        // Ten quiet reads, then two holds of one seat that both succeed.
        let mut es = Vec::new();
        let read = Op::ReadSeats {
            node: 1,
            stale: false,
        };
        let free: Value = Value::Seats {
            seats: [("H:1:1".to_string(), "available".to_string())].into(),
        };
        for i in 0..10u64 {
            es.push(entry(Type::Invoke, i + 1, i * 10, &read, None, None, None));
            es.push(entry(
                Type::Ok,
                i + 1,
                i * 10 + 5,
                &read,
                Some(free.clone()),
                None,
                None,
            ));
        }
        let a = Op::Hold {
            seat: "H:1:1".into(),
            key: "a".into(),
        };
        let b = Op::Hold {
            seat: "H:1:1".into(),
            key: "b".into(),
        };
        es.push(entry(Type::Invoke, 20, 200, &a, None, None, None));
        es.push(entry(
            Type::Ok,
            20,
            210,
            &a,
            Some(hold_value("h_1", 1)),
            None,
            None,
        ));
        es.push(entry(Type::Invoke, 21, 220, &b, None, None, None));
        es.push(entry(
            Type::Ok,
            21,
            230,
            &b,
            Some(hold_value("h_2", 1)),
            None,
            None,
        ));
        let r = check_all(&logical(&es), &params(), None);
        let lin = r
            .checks
            .iter()
            .find(|c| c.checker == "seat-linearizability")
            .expect("ran");
        assert_eq!(lin.valid, Valid::Invalid);
        // The header line and the two holds: the quiet reads before them are not needed.
        assert_eq!(lin.witness.len(), 3, "{:#?}", lin.witness);
    }
}
