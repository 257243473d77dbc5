//! Per-seat linearizability: each seat of the hot section is an independent object whose
//! model is `available → held(h) → sold(b)`, back to available by a release, an expiry or a
//! refund. The search is Wing & Gong's, with Lowe's memoization of (linearized set, state)
//! as in Porcupine: ops are lifted out of a time-ordered list of call and return events as
//! they are linearized, and a return reached before its call was linearized backtracks.
//!
//! Unknown (`info`) operations may take effect at any time after their invocation, or never.
//! Expiry is a spontaneous transition: a hold may expire before an operation that can end
//! after `expires_at - early tolerance`, and must have expired before a write invoked after
//! `expires_at + late tolerance` (writes are stamped by the leader after they are invoked, and
//! the ledger sweeps expiries before every command). Reads are never forced: a read may see
//! a due hold until the next tick.

use std::collections::{HashMap, HashSet};

/// The model's reference to a hold or booking: one created in the checked history, or
/// [`EXT`], one created before it (only in the windows that explain a failure).
pub type Ref = u32;
pub const EXT: Ref = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seat {
    Free,
    Held(Ref),
    Sold(Ref),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fate {
    Live,
    Released,
    Expired,
    Confirmed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    seat: Seat,
    /// Fates of the holds that later operations still refer to (sorted by ref).
    fates: Vec<(Ref, Fate)>,
    /// Refunded bookings that later operations still refer to (sorted).
    refunded: Vec<Ref>,
}

impl State {
    fn fate(&self, h: Ref) -> Option<Fate> {
        self.fates.iter().find(|(r, _)| *r == h).map(|(_, f)| *f)
    }
    fn set_fate(&mut self, h: Ref, f: Fate) {
        match self.fates.iter_mut().find(|(r, _)| *r == h) {
            Some(e) => e.1 = f,
            None => {
                self.fates.push((h, f));
                self.fates.sort_unstable();
            }
        }
    }
}

/// What a rejection said, as far as the model cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `seat_unavailable`
    Unavailable,
    /// `hold_expired`
    Expired,
    /// `hold_not_live`
    NotLive,
    /// `ticket_used`
    Used,
    /// Any other code: not about this seat's state (limits, auth…); allowed in every state.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res<T> {
    Ok(T),
    Fail(Why),
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F {
    /// `expires_us`: the hold's expiry on the run's clock; for an unknown one, the earliest.
    Hold {
        h: Ref,
        res: Res<()>,
        expires_us: i64,
    },
    Release {
        h: Ref,
        res: Res<()>,
    },
    Confirm {
        h: Ref,
        b: Ref,
        res: Res<()>,
    },
    Refund {
        b: Ref,
        res: Res<()>,
    },
    /// 0 available, 1 held, 2 sold, 3 anything else.
    Read(u8),
}

#[derive(Clone, Debug)]
pub struct SeatOp {
    pub invoke_us: u64,
    /// `u64::MAX` when unknown.
    pub complete_us: u64,
    pub f: F,
    /// Index into the caller's list of logical operations (for reporting).
    pub src: usize,
}

impl SeatOp {
    fn is_write(&self) -> bool {
        !matches!(self.f, F::Read(_))
    }
    fn refs(&self) -> (Option<Ref>, Option<Ref>) {
        match self.f {
            F::Hold { h, .. } | F::Release { h, .. } => (Some(h), None),
            F::Confirm { h, b, .. } => (Some(h), Some(b)),
            F::Refund { b, .. } => (None, Some(b)),
            F::Read(_) => (None, None),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub early_us: i64,
    pub late_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// `stuck_us`: the return event the deepest search could not get past.
    Invalid {
        stuck_us: u64,
        stuck_src: usize,
    },
    /// The search budget ran out.
    Unknown,
}

pub struct Checker<'a> {
    ops: &'a [SeatOp],
    tol: Tolerance,
    /// Expiry of each hold created in `ops` (and whether it is known or only a lower bound).
    expiry: HashMap<Ref, (i64, bool)>,
}

/// Steps (events visited) before the search of one seat gives up with `Unknown`.
pub const STEP_BUDGET: u64 = 20_000_000;

impl<'a> Checker<'a> {
    pub fn new(ops: &'a [SeatOp], tol: Tolerance) -> Checker<'a> {
        let mut expiry = HashMap::new();
        for o in ops {
            if let F::Hold { h, res, expires_us } = o.f {
                expiry.insert(h, (expires_us, matches!(res, Res::Ok(()))));
            }
        }
        Checker { ops, tol, expiry }
    }

    /// Every state the seat can be in after `op` from `s` (empty: `op` cannot happen here).
    fn step(
        &self,
        s: &State,
        op: &SeatOp,
        left: &HashMap<Ref, u32>,
        bleft: &HashMap<Ref, u32>,
    ) -> Vec<State> {
        let mut bases = vec![s.clone()];
        if let Seat::Held(h) = s.seat {
            let (exp, known) = self.expiry.get(&h).copied().unwrap_or((i64::MIN, false));
            let may = op.complete_us == u64::MAX
                || op.complete_us as i64 >= exp.saturating_sub(self.tol.early_us);
            let must = known
                && op.is_write()
                && op.invoke_us as i64 >= exp.saturating_add(self.tol.late_us);
            let mut expired = s.clone();
            expired.seat = Seat::Free;
            if h != EXT && expired.fate(h).is_some() {
                expired.set_fate(h, Fate::Expired);
            }
            if must {
                bases = vec![expired];
            } else if may {
                bases.push(expired);
            }
        }
        let mut out = Vec::new();
        for b in bases {
            apply(&b, &op.f, &mut out);
        }
        // Forget what no later operation asks about, so equal futures share a cache entry.
        let (h, bk) = op.refs();
        for st in &mut out {
            st.fates
                .retain(|(r, _)| left.get(r).copied().unwrap_or(0) > 0 || Some(*r) != h);
            if let Some(bk) = bk {
                st.refunded
                    .retain(|r| *r != bk || bleft.get(r).copied().unwrap_or(0) > 0);
            }
        }
        out.dedup();
        out
    }

    /// Search from each initial seat state; valid if any succeeds.
    pub fn check(&self, initial: &[Seat]) -> Verdict {
        let mut worst = Verdict::Valid;
        for seat in initial {
            match self.search(*seat) {
                Verdict::Valid => return Verdict::Valid,
                v @ Verdict::Unknown => worst = v,
                v @ Verdict::Invalid { .. } => {
                    if worst == Verdict::Valid {
                        worst = v;
                    }
                }
            }
        }
        worst
    }

    fn search(&self, initial: Seat) -> Verdict {
        let n = self.ops.len();
        if n == 0 {
            return Verdict::Valid;
        }
        // Events: (time, is_return, op). Calls sort before returns at equal times.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, o) in self.ops.iter().enumerate() {
            events.push((o.invoke_us, false, i));
            events.push((o.complete_us, true, i));
        }
        events.sort_unstable();
        let len = events.len();
        // A doubly linked list over events with a head sentinel at index `len`.
        let head = len;
        let mut next: Vec<usize> = (1..=len).chain([usize::MAX]).collect();
        let mut prev: Vec<usize> = (0..=len)
            .map(|i| if i == 0 { head } else { i - 1 })
            .collect();
        next[head] = 0;
        next[len - 1] = usize::MAX;
        let mut call_at = vec![0usize; n];
        let mut ret_at = vec![0usize; n];
        for (pos, (_, is_ret, i)) in events.iter().enumerate() {
            if *is_ret {
                ret_at[*i] = pos;
            } else {
                call_at[*i] = pos;
            }
        }
        let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
            let (p, nx) = (prev[pos], next[pos]);
            next[p] = nx;
            if nx != usize::MAX {
                prev[nx] = p;
            }
        };
        let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
            let (p, nx) = (prev[pos], next[pos]);
            next[p] = pos;
            if nx != usize::MAX {
                prev[nx] = pos;
            }
        };
        let mut left: HashMap<Ref, u32> = HashMap::new();
        let mut bleft: HashMap<Ref, u32> = HashMap::new();
        for o in self.ops {
            let (h, b) = o.refs();
            if let Some(h) = h {
                *left.entry(h).or_default() += 1;
            }
            if let Some(b) = b {
                *bleft.entry(b).or_default() += 1;
            }
        }
        let words = n.div_ceil(64);
        let mut done = vec![0u64; words];
        let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
        let mut stack: Vec<(usize, State, usize)> = Vec::new();
        let mut state = State {
            seat: initial,
            fates: Vec::new(),
            refunded: Vec::new(),
        };
        let mut entry = next[head];
        let mut first_choice = 0usize;
        let mut steps = 0u64;
        let mut deepest = (0usize, 0u64, 0usize);
        while next[head] != usize::MAX {
            steps += 1;
            if steps > STEP_BUDGET {
                return Verdict::Unknown;
            }
            let (t, is_ret, i) = events[entry];
            if !is_ret {
                let op = &self.ops[i];
                let (h, b) = op.refs();
                if let Some(h) = h {
                    *left.get_mut(&h).expect("counted") -= 1;
                }
                if let Some(b) = b {
                    *bleft.get_mut(&b).expect("counted") -= 1;
                }
                let cands = self.step(&state, op, &left, &bleft);
                done[i / 64] |= 1 << (i % 64);
                let mut taken = None;
                for (c, cand) in cands.into_iter().enumerate().skip(first_choice) {
                    let key = (done.clone(), cand);
                    if !cache.contains(&key) {
                        taken = Some((c, key.1.clone()));
                        cache.insert(key);
                        break;
                    }
                }
                first_choice = 0;
                match taken {
                    Some((c, cand)) => {
                        stack.push((i, std::mem::replace(&mut state, cand), c));
                        lift(&mut next, &mut prev, call_at[i]);
                        lift(&mut next, &mut prev, ret_at[i]);
                        entry = next[head];
                    }
                    None => {
                        done[i / 64] &= !(1 << (i % 64));
                        if let Some(h) = h {
                            *left.get_mut(&h).expect("counted") += 1;
                        }
                        if let Some(b) = b {
                            *bleft.get_mut(&b).expect("counted") += 1;
                        }
                        entry = next[entry];
                    }
                }
            } else {
                if stack.len() >= deepest.0 {
                    deepest = (stack.len(), t, i);
                }
                let Some((j, old, c)) = stack.pop() else {
                    return Verdict::Invalid {
                        stuck_us: deepest.1,
                        stuck_src: self.ops[deepest.2].src,
                    };
                };
                let op = &self.ops[j];
                let (h, b) = op.refs();
                if let Some(h) = h {
                    *left.get_mut(&h).expect("counted") += 1;
                }
                if let Some(b) = b {
                    *bleft.get_mut(&b).expect("counted") += 1;
                }
                done[j / 64] &= !(1 << (j % 64));
                unlift(&mut next, &mut prev, ret_at[j]);
                unlift(&mut next, &mut prev, call_at[j]);
                state = old;
                entry = call_at[j];
                first_choice = c + 1;
            }
            if entry == usize::MAX {
                // Past the last event with ops left: only possible when every remaining
                // event was skipped; backtrack through the sentinel logic above.
                entry = next[head];
                if entry == usize::MAX {
                    break;
                }
            }
        }
        Verdict::Valid
    }
}

/// The model's transitions (no expiry; see [`Checker::step`]).
fn apply(s: &State, f: &F, out: &mut Vec<State>) {
    let with = |g: &dyn Fn(&mut State)| {
        let mut t = s.clone();
        g(&mut t);
        t
    };
    match *f {
        F::Hold { h, res, .. } => match res {
            Res::Ok(()) if s.seat == Seat::Free => out.push(with(&|t| {
                t.seat = Seat::Held(h);
                t.set_fate(h, Fate::Live);
            })),
            Res::Ok(()) => {}
            Res::Fail(Why::Unavailable) if s.seat != Seat::Free => out.push(s.clone()),
            Res::Fail(Why::Unavailable) => {}
            Res::Fail(_) => out.push(s.clone()),
            Res::Unknown => {
                out.push(s.clone());
                if s.seat == Seat::Free {
                    out.push(with(&|t| {
                        t.seat = Seat::Held(h);
                        t.set_fate(h, Fate::Live);
                    }));
                }
            }
        },
        F::Release { h, res } => {
            let releases = s.seat == Seat::Held(h);
            let freed = || {
                with(&|t| {
                    t.seat = Seat::Free;
                    if h != EXT {
                        t.set_fate(h, Fate::Released);
                    }
                })
            };
            match res {
                Res::Ok(()) if h == EXT => {
                    out.push(s.clone());
                    if releases {
                        out.push(freed());
                    }
                }
                Res::Ok(()) if releases => out.push(freed()),
                Res::Ok(()) => {
                    if matches!(s.fate(h), Some(Fate::Released | Fate::Expired)) {
                        out.push(s.clone());
                    }
                }
                Res::Fail(Why::NotLive) if h != EXT => {
                    if s.fate(h) == Some(Fate::Confirmed) {
                        out.push(s.clone());
                    }
                }
                Res::Fail(_) => out.push(s.clone()),
                Res::Unknown => {
                    out.push(s.clone());
                    if releases {
                        out.push(freed());
                    }
                }
            }
        }
        F::Confirm { h, b, res } => {
            let live = s.seat == Seat::Held(h);
            let sold = || {
                with(&|t| {
                    t.seat = Seat::Sold(b);
                    if h != EXT {
                        t.set_fate(h, Fate::Confirmed);
                    }
                })
            };
            match res {
                Res::Ok(()) if live => out.push(sold()),
                Res::Ok(()) => {}
                Res::Fail(Why::Expired) if h != EXT => {
                    if s.fate(h) == Some(Fate::Expired) {
                        out.push(s.clone());
                    }
                }
                Res::Fail(Why::NotLive) if h != EXT => {
                    if matches!(s.fate(h), Some(Fate::Released | Fate::Confirmed)) {
                        out.push(s.clone());
                    }
                }
                Res::Fail(_) => out.push(s.clone()),
                Res::Unknown => {
                    out.push(s.clone());
                    if live {
                        out.push(sold());
                    }
                }
            }
        }
        F::Refund { b, res } => {
            let valid = s.seat == Seat::Sold(b);
            let freed = || {
                with(&|t| {
                    t.seat = Seat::Free;
                    if b != EXT {
                        t.refunded.push(b);
                        t.refunded.sort_unstable();
                    }
                })
            };
            match res {
                Res::Ok(()) if valid => out.push(freed()),
                Res::Ok(()) => {}
                Res::Fail(Why::Used) if b != EXT => {
                    if s.refunded.contains(&b) {
                        out.push(s.clone());
                    }
                }
                Res::Fail(_) => out.push(s.clone()),
                Res::Unknown => {
                    out.push(s.clone());
                    if valid {
                        out.push(freed());
                    }
                }
            }
        }
        F::Read(k) => {
            let seen = match s.seat {
                Seat::Free => 0,
                Seat::Held(_) => 1,
                Seat::Sold(_) => 2,
            };
            if seen == k {
                out.push(s.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        early_us: 100_000,
        late_us: 500_000,
    };
    const FAR: i64 = 1_000_000_000;

    fn op(invoke_us: u64, complete_us: u64, f: F) -> SeatOp {
        SeatOp {
            invoke_us,
            complete_us,
            f,
            src: 0,
        }
    }
    fn hold(a: u64, b: u64, h: Ref, res: Res<()>, exp: i64) -> SeatOp {
        op(
            a,
            b,
            F::Hold {
                h,
                res,
                expires_us: exp,
            },
        )
    }
    fn check(ops: &[SeatOp]) -> Verdict {
        Checker::new(ops, TOL).check(&[Seat::Free])
    }

    #[test]
    fn sequential_hold_release_hold_is_valid() {
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
            hold(40, 50, 2, Res::Ok(()), FAR),
            op(60, 70, F::Read(1)),
        ];
        assert_eq!(check(&ops), Verdict::Valid);
    }

    #[test]
    fn two_overlapping_holds_of_one_seat_are_invalid() {
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            hold(20, 30, 2, Res::Ok(()), FAR),
        ];
        assert!(matches!(check(&ops), Verdict::Invalid { .. }));
    }

    #[test]
    fn concurrent_ops_may_linearize_in_either_order() {
        // The read overlaps the release: it may see the seat held or free.
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                50,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
            op(30, 40, F::Read(0)),
            op(30, 40, F::Read(1)),
        ];
        assert_eq!(check(&ops), Verdict::Valid);
        // After the release completed, a read that sees it held is stale.
        let stale = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
            op(40, 50, F::Read(1)),
        ];
        assert!(matches!(check(&stale), Verdict::Invalid { .. }));
    }

    #[test]
    fn a_rejection_must_be_explained_by_the_state() {
        let ops = [hold(0, 10, 1, Res::Fail(Why::Unavailable), FAR)];
        assert!(matches!(check(&ops), Verdict::Invalid { .. }));
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            hold(20, 30, 2, Res::Fail(Why::Unavailable), FAR),
        ];
        assert_eq!(check(&ops), Verdict::Valid);
    }

    #[test]
    fn unknown_ops_may_or_may_not_take_effect() {
        let happened = [
            hold(0, u64::MAX, 1, Res::Unknown, FAR),
            hold(20, 30, 2, Res::Fail(Why::Unavailable), FAR),
        ];
        assert_eq!(check(&happened), Verdict::Valid);
        let did_not = [
            hold(0, u64::MAX, 1, Res::Unknown, FAR),
            hold(20, 30, 2, Res::Ok(()), FAR),
        ];
        assert_eq!(check(&did_not), Verdict::Valid);
    }

    #[test]
    fn a_hold_must_be_gone_after_its_ttl_and_may_not_go_before() {
        // Hold expires at 1 s; a hold of another buyer invoked at 2 s must succeed.
        let ok = [
            hold(0, 10, 1, Res::Ok(()), 1_000_000),
            hold(2_000_000, 2_000_010, 2, Res::Ok(()), FAR),
        ];
        assert_eq!(check(&ok), Verdict::Valid);
        let stuck = [
            hold(0, 10, 1, Res::Ok(()), 1_000_000),
            hold(2_000_000, 2_000_010, 2, Res::Fail(Why::Unavailable), FAR),
        ];
        assert!(matches!(check(&stuck), Verdict::Invalid { .. }));
        // Confirming it after the TTL must fail with hold_expired.
        let late = [
            hold(0, 10, 1, Res::Ok(()), 1_000_000),
            op(
                2_000_000,
                2_000_010,
                F::Confirm {
                    h: 1,
                    b: 7,
                    res: Res::Ok(()),
                },
            ),
        ];
        assert!(matches!(check(&late), Verdict::Invalid { .. }));
        let expired = [
            hold(0, 10, 1, Res::Ok(()), 1_000_000),
            op(
                2_000_000,
                2_000_010,
                F::Confirm {
                    h: 1,
                    b: 7,
                    res: Res::Fail(Why::Expired),
                },
            ),
        ];
        assert_eq!(check(&expired), Verdict::Valid);
        // Gone too early: a hold by another buyer that completed at 0.5 s cannot succeed.
        let early = [
            hold(0, 10, 1, Res::Ok(()), 1_000_000),
            hold(400_000, 500_000, 2, Res::Ok(()), FAR),
        ];
        assert!(matches!(check(&early), Verdict::Invalid { .. }));
    }

    #[test]
    fn a_seat_sold_twice_is_invalid_and_refund_reopens_it() {
        let twice = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Confirm {
                    h: 1,
                    b: 10,
                    res: Res::Ok(()),
                },
            ),
            hold(40, 50, 2, Res::Ok(()), FAR),
            op(
                60,
                70,
                F::Confirm {
                    h: 2,
                    b: 11,
                    res: Res::Ok(()),
                },
            ),
        ];
        assert!(matches!(check(&twice), Verdict::Invalid { .. }));
        let refunded = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Confirm {
                    h: 1,
                    b: 10,
                    res: Res::Ok(()),
                },
            ),
            op(
                35,
                38,
                F::Refund {
                    b: 10,
                    res: Res::Ok(()),
                },
            ),
            op(
                39,
                39,
                F::Refund {
                    b: 10,
                    res: Res::Fail(Why::Used),
                },
            ),
            hold(40, 50, 2, Res::Ok(()), FAR),
            op(
                60,
                70,
                F::Confirm {
                    h: 2,
                    b: 11,
                    res: Res::Ok(()),
                },
            ),
            op(80, 90, F::Read(2)),
        ];
        assert_eq!(check(&refunded), Verdict::Valid);
    }

    #[test]
    fn releases_are_idempotent_but_not_after_a_confirm() {
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
            op(
                40,
                50,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
            op(
                60,
                70,
                F::Confirm {
                    h: 1,
                    b: 3,
                    res: Res::Fail(Why::NotLive),
                },
            ),
        ];
        assert_eq!(check(&ops), Verdict::Valid);
        let ops = [
            hold(0, 10, 1, Res::Ok(()), FAR),
            op(
                20,
                30,
                F::Confirm {
                    h: 1,
                    b: 3,
                    res: Res::Ok(()),
                },
            ),
            op(
                40,
                50,
                F::Release {
                    h: 1,
                    res: Res::Ok(()),
                },
            ),
        ];
        assert!(matches!(check(&ops), Verdict::Invalid { .. }));
    }

    #[test]
    fn an_unknown_past_explains_nothing_it_cannot() {
        // A window that starts with the seat in any state: a confirm of an older hold proves
        // it was held, so a read just after that sees it available is still invalid.
        let ops = [
            op(
                0,
                10,
                F::Confirm {
                    h: EXT,
                    b: 5,
                    res: Res::Ok(()),
                },
            ),
            op(20, 30, F::Read(0)),
        ];
        let all = [Seat::Free, Seat::Held(EXT), Seat::Sold(EXT)];
        assert!(matches!(
            Checker::new(&ops, TOL).check(&all),
            Verdict::Invalid { .. }
        ));
        let fine = [op(0, 10, F::Read(2)), op(20, 30, F::Read(2))];
        assert_eq!(Checker::new(&fine, TOL).check(&all), Verdict::Valid);
    }
}
