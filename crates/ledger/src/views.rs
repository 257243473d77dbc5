//! Read helpers for the node: lookups through the derived indexes, which stay private.

use crate::ids::*;
use crate::ledger::Ledger;
use crate::outcome::FeedEntry;
use crate::state::*;

impl Ledger {
    /// The API key with this digest (revoked keys included: check `revoked`).
    pub fn api_key_by_digest(&self, digest: &Digest32) -> Option<&ApiKey> {
        self.ix
            .key_by_digest
            .get(digest)
            .and_then(|id| self.s.api_keys.get(id))
    }

    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.ix
            .user_by_email
            .get(&self.s.users, &email.to_ascii_lowercase())
            .and_then(|id| self.s.users.get(&id))
    }

    /// A buyer's entry in a performance's waiting room.
    pub fn queue_entry_of(&self, performance: PerformanceId, buyer: Principal) -> Option<QueueId> {
        self.ix
            .queue_by_buyer
            .get(&(performance, buyer))
            .map(|&join_index| QueueId {
                performance,
                join_index,
            })
    }

    pub fn queue_entry(&self, queue: QueueId) -> Option<(&QueueEntry, Option<u64>)> {
        let room = self
            .s
            .performances
            .get(&queue.performance)?
            .waiting_room
            .as_ref()?;
        let entry = room.entries.get(queue.join_index as usize)?;
        Some((entry, room.position(queue.join_index)))
    }

    /// The booking and ticket position holding a check-in code.
    pub fn ticket_by_code(&self, code: &CheckInCode) -> Option<(&Booking, usize)> {
        let (b, i) = self.ix.ticket_by_code.get(code)?;
        Some((self.s.bookings.get(b)?, *i as usize))
    }

    /// Change-feed entries with `log_index >= from`, oldest first; `None` when `from` is older
    /// than the oldest entry kept (the caller must resynchronize from a snapshot).
    pub fn feed_since(&self, from: u64) -> Option<impl Iterator<Item = &FeedEntry>> {
        if let Some(first) = self.s.feed.front()
            && first.log_index > from
            && from != 0
        {
            return None;
        }
        let start = self.s.feed.partition_point(|e| e.log_index < from);
        Some(self.s.feed.range(start..))
    }

    /// The earliest time something is due: a hold or admission expiry. The leader's tick
    /// proposes a `Tick` when this has passed or a waiting room is admitting.
    pub fn next_due_ms(&self) -> Option<u64> {
        let hold = self.s.hold_expiry.first().map(|e| e.0);
        let admission = self.s.admission_expiry.first().map(|e| e.0);
        match (hold, admission) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether some open waiting room has entries to admit (the tick must keep running).
    pub fn rooms_admitting(&self) -> bool {
        self.s.rooms_on_sale.iter().any(|p| {
            self.s
                .performances
                .get(p)
                .and_then(|p| p.waiting_room.as_ref())
                .is_some_and(|r| !r.order.is_empty())
        })
    }

    /// Holds whose checkout is open (started or captured), in id order, after `after`.
    pub fn open_checkouts(&self, after: Option<HoldId>) -> impl Iterator<Item = &Hold> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.ix
            .open_checkouts
            .range((from, Bound::Unbounded))
            .map(|id| &self.s.holds[id])
    }

    /// A buyer's bookings in id order, after `after`.
    pub fn bookings_of(
        &self,
        buyer: Principal,
        after: Option<BookingId>,
    ) -> impl Iterator<Item = &Booking> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Included((buyer, BookingId(0))), |a| {
            Bound::Excluded((buyer, a))
        });
        self.ix
            .bookings_by_buyer
            .range((from, Bound::Unbounded))
            .take_while(move |(b, _)| *b == buyer)
            .map(|(_, id)| &self.s.bookings[id])
    }

    /// A performance's bookings in id order, after `after`.
    pub fn bookings_for(
        &self,
        performance: PerformanceId,
        after: Option<BookingId>,
    ) -> impl Iterator<Item = &Booking> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Included((performance, BookingId(0))), |a| {
            Bound::Excluded((performance, a))
        });
        self.ix
            .bookings_by_performance
            .range((from, Bound::Unbounded))
            .take_while(move |(p, _)| *p == performance)
            .map(|(_, id)| &self.s.bookings[id])
    }

    /// The open-checkout index itself (for tests and metrics).
    pub fn ix_open_checkouts(&self) -> &std::collections::BTreeSet<HoldId> {
        &self.ix.open_checkouts
    }
}
