//! `check_invariants`: recomputes everything derived and compares (DESIGN.md §3). Run by tests
//! after every step, by debug builds after every command on small states, and on every restored
//! snapshot before it is used.

use crate::ids::*;
use crate::ledger::Ledger;
use crate::state::*;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ledger invariant violated: {0}")]
pub struct InvariantViolation(pub String);

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(InvariantViolation(format!($($arg)*)));
        }
    };
}

impl Ledger {
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check(true)
    }

    /// The check for a ledger whose indexes were just built from its state (a restore). Looking
    /// every user, ticket and queue entry up again in an index built from those same entries
    /// proves nothing that comparing sizes does not (a duplicate email, code or queued buyer
    /// shrinks the map), and those lookups were a fifth of restoring a 1M-buyer on-sale.
    pub(crate) fn check_invariants_of_fresh_indexes(&self) -> Result<(), InvariantViolation> {
        self.check(false)
    }

    /// `lookups`: also look each entry up in the incrementally maintained indexes.
    fn check(&self, lookups: bool) -> Result<(), InvariantViolation> {
        let s = &self.s;
        let now = s.clock_ms;
        ensure!(s.next_id >= 1, "next_id is zero");

        // Holds: live ones are unexpired, indexed by expiry, and own their seats.
        let mut live_per_buyer: crate::state::IdMap<(PerformanceId, Principal), u16> =
            Default::default();
        let mut expiry = BTreeSet::new();
        // Sums over decoded data are u64 and checked: a snapshot must not be able to overflow them.
        let mut held: HashMap<(PerformanceId, u16), u64> = HashMap::new();
        for (id, h) in &s.holds {
            ensure!(
                *id == h.id && id.0 < s.next_id,
                "hold {id} keyed or numbered wrongly"
            );
            let Some(perf) = s.performances.get(&h.performance) else {
                return Err(InvariantViolation(format!(
                    "hold {id} names a missing performance"
                )));
            };
            if h.state != HoldState::Live {
                continue;
            }
            ensure!(
                h.expires_at_ms > now,
                "live hold {id} expired at {} but clock is {now}",
                h.expires_at_ms
            );
            ensure!(h.quantity() > 0, "live hold {id} holds nothing");
            expiry.insert((h.expires_at_ms, *id));
            // Checked: a decoded snapshot may list any number of holds.
            let n = live_per_buyer.entry((h.performance, h.buyer)).or_default();
            *n = n
                .checked_add(1)
                .ok_or_else(|| InvariantViolation(format!("buyer of hold {id} has too many")))?;
            let venue = &s.venues[&perf.venue];
            let mut amount = Some(0u64);
            for &(seat, cat) in &h.seats {
                let cell = perf.seats.get(seat.0 as usize).map(|c| c.get());
                ensure!(
                    cell == Some(SeatState::Held(*id)),
                    "hold {id} lists seat {} in state {cell:?}",
                    seat.0
                );
                let sec = venue.section_of(seat).expect("seat in a section");
                *held.entry((h.performance, sec.0)).or_default() += 1;
                amount = amount
                    .zip(perf.price(sec, cat))
                    .and_then(|(a, p)| a.checked_add(p));
            }
            if let Some((sec, q, cat)) = h.ga {
                *held.entry((h.performance, sec.0)).or_default() += u64::from(q);
                let price = perf.price(sec, cat);
                amount = amount
                    .zip(price.and_then(|p| p.checked_mul(u64::from(q))))
                    .and_then(|(a, p)| a.checked_add(p));
            }
            ensure!(
                amount == Some(h.amount.amount_minor),
                "hold {id} amount {} != priced {amount:?} (None: unpriced or overflowing)",
                h.amount.amount_minor
            );
        }
        ensure!(
            expiry == s.hold_expiry,
            "hold expiry index disagrees with live holds"
        );
        ensure!(
            live_per_buyer == self.ix.live_holds,
            "per-buyer live hold counts disagree"
        );
        ensure!(
            self.ix.live_hold_count == s.hold_expiry.len(),
            "live hold count {} != {}",
            self.ix.live_hold_count,
            s.hold_expiry.len()
        );
        // Checkouts: one per extended hold; open ones are indexed and keep their hold.
        let mut open = BTreeSet::new();
        for h in s.holds.values() {
            let extended = h.payment_ref.is_some();
            ensure!(
                h.extended == extended && h.checkout.is_some() == extended,
                "hold {}: extension, payment_ref and checkout disagree",
                h.id
            );
            let Some(c) = &h.checkout else { continue };
            let fits = match (c, h.state) {
                // Released: the buyer let go while the payment ran; the payments service
                // still settles it (a capture is then refunded).
                (Checkout::Started | Checkout::Captured { .. }, st) => {
                    !matches!(st, HoldState::Confirmed(_))
                }
                (Checkout::Booked, HoldState::Confirmed(_)) => true,
                (Checkout::Failed { .. } | Checkout::Refunded { .. }, st) => {
                    matches!(st, HoldState::Released | HoldState::Expired)
                }
                _ => false,
            } && (c == &Checkout::Booked) == matches!(h.state, HoldState::Confirmed(_));
            ensure!(
                fits,
                "hold {}: checkout {} in hold state {:?}",
                h.id,
                c.name(),
                h.state
            );
            if c.is_open() {
                open.insert(h.id);
            }
        }
        ensure!(
            open == self.ix.open_checkouts,
            "open-checkout index disagrees with the holds"
        );
        // Retention: every ended hold is queued for forgetting once, unless its checkout is
        // still open.
        let ended: BTreeSet<HoldId> = s.ended_holds.iter().map(|e| e.1).collect();
        let not_live: BTreeSet<HoldId> = s
            .holds
            .values()
            .filter(|h| h.state != HoldState::Live && !open.contains(&h.id))
            .map(|h| h.id)
            .collect();
        ensure!(
            ended == not_live && ended.len() == s.ended_holds.len(),
            "ended-hold retention list disagrees"
        );

        // Bookings: valid tickets own their seats; revenue is the sum of valid tickets.
        let mut sold: HashMap<(PerformanceId, u16), u64> = HashMap::new();
        let mut revenue: HashMap<PerformanceId, u64> = HashMap::new();
        let mut codes = 0usize;
        for (id, b) in &s.bookings {
            ensure!(*id == b.id, "booking {id} keyed wrongly");
            ensure!(
                !lookups
                    || (self.ix.bookings_by_buyer.contains(&(b.buyer, *id))
                        && self
                            .ix
                            .bookings_by_performance
                            .contains(&(b.performance, *id))),
                "booking {id} not indexed by buyer and performance"
            );
            let Some(perf) = s.performances.get(&b.performance) else {
                return Err(InvariantViolation(format!(
                    "booking {id} names a missing performance"
                )));
            };
            let mut refunded = 0u64;
            let mut total = 0u64;
            let overflow = || InvariantViolation(format!("booking {id} amounts overflow"));
            for (i, t) in b.tickets.iter().enumerate() {
                codes += 1;
                ensure!(
                    !lookups || self.ix.ticket_by_code.get(&t.code) == Some(&(*id, i as u32)),
                    "ticket {} code not indexed",
                    t.id
                );
                total = total.checked_add(t.price_minor).ok_or_else(overflow)?;
                if t.state == TicketState::Refunded {
                    refunded = refunded.checked_add(t.price_minor).ok_or_else(overflow)?;
                    continue;
                }
                *sold.entry((b.performance, t.section.0)).or_default() += 1;
                let rev = revenue.entry(b.performance).or_default();
                *rev = rev.checked_add(t.price_minor).ok_or_else(overflow)?;
                if let Some(seat) = t.seat {
                    let cell = perf.seats.get(seat.0 as usize).map(|c| c.get());
                    ensure!(
                        cell == Some(SeatState::Sold(*id)),
                        "booking {id} seat {} in state {cell:?}",
                        seat.0
                    );
                }
            }
            ensure!(
                refunded == b.refunded_minor,
                "booking {id} refunded {} != {refunded}",
                b.refunded_minor
            );
            ensure!(
                total == b.amount.amount_minor,
                "booking {id} amount {} != {total}",
                b.amount.amount_minor
            );
            let hold = s.holds.get(&b.hold);
            ensure!(
                hold.is_none_or(|h| h.state == HoldState::Confirmed(*id)),
                "booking {id}'s hold is not confirmed into it"
            );
        }
        ensure!(
            codes == self.ix.ticket_by_code.len(),
            "check-in code index has extra codes"
        );
        ensure!(
            self.ix.bookings_by_buyer.len() == s.bookings.len()
                && self.ix.bookings_by_performance.len() == s.bookings.len(),
            "booking indexes have extra entries"
        );

        // Seats: every held or sold cell points at its owner; section counts add up.
        for (pid, perf) in &s.performances {
            let venue = &s.venues[&perf.venue];
            ensure!(
                perf.seats.len() == venue.seats as usize,
                "performance {pid} seat count differs from venue"
            );
            ensure!(
                perf.sections.len() == venue.sections.len(),
                "performance {pid} section count differs"
            );
            let mut blocked = vec![0u32; perf.sections.len()];
            let mut cells_held = vec![0u32; perf.sections.len()];
            let mut cells_sold = vec![0u32; perf.sections.len()];
            for (i, cell) in perf.seats.iter().enumerate() {
                let sec = venue
                    .section_of(SeatIdx(i as u32))
                    .expect("seat in a section")
                    .0 as usize;
                match cell.get() {
                    SeatState::Available => {}
                    SeatState::Blocked => blocked[sec] += 1,
                    SeatState::Held(h) => {
                        let ok = s.holds.get(&h).is_some_and(|h| {
                            h.state == HoldState::Live
                                && h.performance == *pid
                                && h.seats.iter().any(|x| x.0.0 == i as u32)
                        });
                        ensure!(ok, "seat {i} of {pid} held by {h} which does not hold it");
                        cells_held[sec] += 1;
                    }
                    SeatState::Sold(b) => {
                        let ok = s.bookings.get(&b).is_some_and(|b| {
                            b.performance == *pid
                                && b.tickets.iter().any(|t| {
                                    t.seat == Some(SeatIdx(i as u32))
                                        && t.state != TicketState::Refunded
                                })
                        });
                        ensure!(
                            ok,
                            "seat {i} of {pid} sold by {b} which has no valid ticket for it"
                        );
                        cells_sold[sec] += 1;
                    }
                }
            }
            for (k, c) in perf.sections.iter().enumerate() {
                let key = (*pid, k as u16);
                ensure!(
                    c.capacity == venue.sections[k].capacity(),
                    "{pid} section {k} capacity differs"
                );
                ensure!(
                    u64::from(c.held) == held.get(&key).copied().unwrap_or(0),
                    "{pid} section {k} held count {} wrong",
                    c.held
                );
                ensure!(
                    u64::from(c.sold) == sold.get(&key).copied().unwrap_or(0),
                    "{pid} section {k} sold count {} wrong",
                    c.sold
                );
                ensure!(
                    u64::from(c.held) + u64::from(c.sold) + u64::from(c.blocked)
                        <= u64::from(c.capacity),
                    "{pid} section {k} over capacity"
                );
                if venue.sections[k].is_seated() {
                    ensure!(
                        c.blocked == blocked[k],
                        "{pid} section {k} blocked count wrong"
                    );
                    ensure!(
                        c.held == cells_held[k] && c.sold == cells_sold[k],
                        "{pid} section {k} cells disagree"
                    );
                } else {
                    ensure!(c.blocked == 0, "{pid} GA section {k} has blocked places");
                }
            }
            let rev = revenue.get(pid).copied().unwrap_or(0);
            ensure!(
                perf.revenue_minor == rev,
                "{pid} revenue {} != sum of bookings {rev}",
                perf.revenue_minor
            );
            if let Some(room) = &perf.waiting_room {
                check_room(*pid, room, s, &self.ix, lookups)?;
            } else {
                ensure!(
                    !s.rooms_on_sale.contains(pid),
                    "{pid} has no room but is in rooms_on_sale"
                );
            }
        }
        ensure!(
            s.admission_expiry
                .iter()
                .all(|(at, q)| *at > now && s.performances.contains_key(&q.performance)),
            "an admission outlived its TTL"
        );
        // Each admitted entry is in the expiry index (check_room), and nothing else is: the
        // sweep expects every entry it expires to be admitted.
        let admitted: u64 = s
            .performances
            .values()
            .filter_map(|p| p.waiting_room.as_ref())
            .map(|r| u64::from(r.active_admissions))
            .sum();
        ensure!(
            admitted == s.admission_expiry.len() as u64,
            "{} admissions in the expiry index for {admitted} admitted entries",
            s.admission_expiry.len()
        );

        // Accounts and idempotency. Keyed by their own ids: lookups by id and by email (which
        // compares the stored email of the user the id names) both rely on it.
        ensure!(
            s.users.iter().all(|(id, u)| *id == u.id)
                && s.api_keys.iter().all(|(id, k)| *id == k.id)
                && s.events.iter().all(|(id, e)| *id == e.id),
            "a user, API key or event is keyed by another id"
        );
        ensure!(
            self.ix.user_by_email.len() == s.users.len(),
            "email index size differs"
        );
        for u in s.users.values().filter(|_| lookups) {
            ensure!(
                self.ix.user_by_email.get(&s.users, &u.email) == Some(u.id),
                "user {} not indexed by email",
                u.id
            );
        }
        for k in s.api_keys.values() {
            ensure!(
                self.ix.key_by_digest.get(&k.digest) == Some(&k.id),
                "API key {} not indexed",
                k.id
            );
        }
        // One index entry per queue entry: entries are never removed, and a buyer queues once.
        let queued: usize = s
            .performances
            .values()
            .filter_map(|p| p.waiting_room.as_ref())
            .map(|r| r.entries.len())
            .sum();
        ensure!(
            self.ix.queue_by_buyer.len() == queued,
            "queue index has {} entries for {queued} queue entries",
            self.ix.queue_by_buyer.len()
        );
        ensure!(
            s.idempotency.len() == s.idempotency_order.len(),
            "idempotency order list differs"
        );
        let counts = crate::ledger::count_by_principal(s);
        ensure!(
            counts.len() == self.ix.idempotency_per_principal.len()
                && counts
                    .iter()
                    .all(|(p, n)| self.ix.idempotency_per_principal.get(p) == Some(n)),
            "idempotency counts per principal differ"
        );
        ensure!(
            s.feed
                .iter()
                .all(|e| e.log_index <= s.last_index && e.at_ms <= now),
            "change feed has an event from the future"
        );
        ensure!(
            s.feed
                .iter()
                .zip(s.feed.iter().skip(1))
                .all(|(a, b)| a.log_index <= b.log_index && a.at_ms <= b.at_ms),
            "change feed is out of order"
        );
        Ok(())
    }
}

fn check_room(
    pid: PerformanceId,
    room: &WaitingRoom,
    s: &State,
    ix: &Indexes,
    lookups: bool,
) -> Result<(), InvariantViolation> {
    let mut active = 0;
    for (j, e) in room.entries.iter().enumerate() {
        ensure!(
            !lookups || ix.queue_by_buyer.get(&(pid, e.buyer)) == Some(&(j as u32)),
            "{pid} queue entry {j} not indexed"
        );
        if e.state == QueueState::Admitted {
            active += 1;
            let q = QueueId {
                performance: pid,
                join_index: j as u32,
            };
            ensure!(
                s.admission_expiry.contains(&(e.admitted_until_ms, q)),
                "admission {q} not in expiry index"
            );
        }
    }
    ensure!(
        active == room.active_admissions,
        "{pid} active admissions {} != {active}",
        room.active_admissions
    );
    // Positions are a permutation: waiting entries' seqs are consecutive in `order`.
    let waiting = room
        .entries
        .iter()
        .filter(|e| e.state == QueueState::Waiting)
        .count();
    ensure!(
        waiting == room.order.len(),
        "{pid} waiting entries {waiting} != order {}",
        room.order.len()
    );
    if let Some(&head) = room.order.front() {
        // u64: decoded seqs may sit anywhere in u32's range.
        let head_seq = room
            .entries
            .get(head as usize)
            .map_or(0, |e| u64::from(e.seq));
        for (k, &j) in room.order.iter().enumerate() {
            let e = room.entries.get(j as usize);
            ensure!(
                e.is_some_and(
                    |e| e.state == QueueState::Waiting && u64::from(e.seq) == head_seq + k as u64
                ),
                "{pid} queue order broken at {k}"
            );
        }
        ensure!(
            head_seq + room.order.len() as u64 == u64::from(room.next_seq),
            "{pid} next_seq out of step"
        );
    }
    let pre = room
        .entries
        .iter()
        .filter(|e| e.state == QueueState::PreQueue)
        .count();
    ensure!(pre == room.prequeue.len(), "{pid} pre-queue list differs");
    ensure!(
        room.prequeue.iter().all(|&j| room
            .entries
            .get(j as usize)
            .is_some_and(|e| e.state == QueueState::PreQueue)),
        "{pid} pre-queue lists a non-pre-queue entry"
    );
    ensure!(
        pre == 0 || room.seed.is_none(),
        "{pid} has a pre-queue after its seed was revealed"
    );
    Ok(())
}
