//! The entities of the on-sale domain and the ledger's persistent state.
//!
//! `State` is what a snapshot holds and what `state_hash` covers; `Indexes` are lookups
//! derived from it (rebuilt after a restore, never serialized).

use crate::command::{MediaItem, PriceSpec, SaleStatus, WaitingRoomSpec};
use crate::ids::*;
use crate::outcome::{FeedEntry, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// One seat's state in one performance, packed in 8 bytes (no heap): the top two bits are the
/// tag (available, blocked, held, sold) and the rest the hold or booking id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeatCell(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatState {
    Available,
    Blocked,
    Held(HoldId),
    Sold(BookingId),
}

const TAG_SHIFT: u32 = 62;
const ID_MASK: u64 = (1 << TAG_SHIFT) - 1;
/// Ids must fit beside the seat tag.
pub const MAX_ID: u64 = ID_MASK;

impl SeatCell {
    pub const AVAILABLE: SeatCell = SeatCell(0);

    pub fn get(self) -> SeatState {
        let id = self.0 & ID_MASK;
        match self.0 >> TAG_SHIFT {
            0 => SeatState::Available,
            1 => SeatState::Blocked,
            2 => SeatState::Held(HoldId(id)),
            _ => SeatState::Sold(BookingId(id)),
        }
    }

    pub fn new(state: SeatState) -> SeatCell {
        let (tag, id) = match state {
            SeatState::Available => (0, 0),
            SeatState::Blocked => (1, 0),
            SeatState::Held(h) => (2, h.0),
            SeatState::Sold(b) => (3, b.0),
        };
        assert!(id <= ID_MASK, "id {id} does not fit in a seat cell");
        SeatCell(tag << TAG_SHIFT | id)
    }

    /// Whether a decoded cell is well formed (available and blocked carry no id).
    pub fn is_canonical(self) -> bool {
        let tag = self.0 >> TAG_SHIFT;
        tag >= 2 || self.0 & ID_MASK == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub password_hash: Vec<u8>,
    pub role: Role,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    pub digest: Digest32,
    pub revoked: bool,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Venue {
    pub id: VenueId,
    pub owner: Principal,
    pub name: String,
    pub sections: Vec<Section>,
    /// Seats over all seated sections; seat indices are `0..seats`.
    pub seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub name: String,
    pub kind: SectionKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SectionKind {
    Seated {
        first_seat: u32,
        seats: u32,
        rows: Vec<Row>,
    },
    GeneralAdmission {
        capacity: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub label: String,
    pub first_seat: u32,
    pub seats: u32,
}

impl Section {
    /// Seats (seated) or places (general admission).
    pub fn capacity(&self) -> u32 {
        match &self.kind {
            SectionKind::Seated { seats, .. } => *seats,
            SectionKind::GeneralAdmission { capacity } => *capacity,
        }
    }
    pub fn is_seated(&self) -> bool {
        matches!(self.kind, SectionKind::Seated { .. })
    }
}

/// A seat's human name, `"<section>:<row>:<number>"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatName<'a> {
    pub section: &'a str,
    pub row: &'a str,
    pub number: u32,
}

impl std::fmt::Display for SeatName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.section, self.row, self.number)
    }
}

impl Venue {
    /// Parse `"A:12:7"` into the seat's dense index: done once, at the edge.
    pub fn seat_index(&self, name: &str) -> Option<SeatIdx> {
        let mut parts = name.splitn(3, ':');
        let (section, row, number) = (parts.next()?, parts.next()?, parts.next()?);
        let number: u32 = number.parse().ok()?;
        let sec = self.sections.iter().find(|s| s.name == section)?;
        let SectionKind::Seated { rows, .. } = &sec.kind else {
            return None;
        };
        let row = rows.iter().find(|r| r.label == row)?;
        (1..=row.seats)
            .contains(&number)
            .then(|| SeatIdx(row.first_seat + number - 1))
    }

    /// The section holding a seat (binary search over seated sections' ranges).
    pub fn section_of(&self, seat: SeatIdx) -> Option<SectionIdx> {
        self.sections
            .iter()
            .position(|s| match s.kind {
                SectionKind::Seated {
                    first_seat, seats, ..
                } => seat.0 >= first_seat && seat.0 < first_seat + seats,
                SectionKind::GeneralAdmission { .. } => false,
            })
            .map(|i| SectionIdx(i as u16))
    }

    pub fn seat_name(&self, seat: SeatIdx) -> Option<SeatName<'_>> {
        let sec = &self.sections[self.section_of(seat)?.0 as usize];
        let SectionKind::Seated { rows, .. } = &sec.kind else {
            return None;
        };
        let at = rows.partition_point(|r| r.first_seat + r.seats <= seat.0);
        let row = rows.get(at)?;
        Some(SeatName {
            section: &sec.name,
            row: &row.label,
            number: seat.0 - row.first_seat + 1,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub owner: Principal,
    pub name: String,
    pub category: String,
    pub description: String,
    pub media: Vec<MediaItem>,
    pub created_at_ms: u64,
}

/// Per-section counters of one performance, kept in step with the seat cells and holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SectionCounts {
    pub capacity: u32,
    pub held: u32,
    pub sold: u32,
    pub blocked: u32,
}

impl SectionCounts {
    pub fn available(&self) -> u32 {
        self.capacity - self.held - self.sold - self.blocked
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Performance {
    pub id: PerformanceId,
    pub event: EventId,
    pub venue: VenueId,
    pub owner: Principal,
    pub starts_at_ms: u64,
    pub on_sale_at_ms: u64,
    pub sale_ends_at_ms: u64,
    pub hold_ttl_ms: u64,
    pub payment_grace_ms: u64,
    pub max_seats_per_order: u16,
    pub categories: Vec<String>,
    pub prices: Vec<PriceSpec>,
    pub currency: Currency,
    pub status: SaleStatus,
    /// One cell per seat of the venue, by [`SeatIdx`].
    pub seats: Vec<SeatCell>,
    /// One entry per venue section, by [`SectionIdx`].
    pub sections: Vec<SectionCounts>,
    /// Confirmed bookings minus refunds, in minor units of `currency`.
    pub revenue_minor: u64,
    pub waiting_room: Option<WaitingRoom>,
}

impl Performance {
    pub fn price(&self, section: SectionIdx, category: CategoryIdx) -> Option<u64> {
        self.prices
            .iter()
            .find(|p| p.section == section && p.category == category)
            .map(|p| p.price.amount_minor)
    }
    pub fn totals(&self) -> SectionCounts {
        self.sections
            .iter()
            .fold(SectionCounts::default(), |a, s| SectionCounts {
                capacity: a.capacity + s.capacity,
                held: a.held + s.held,
                sold: a.sold + s.sold,
                blocked: a.blocked + s.blocked,
            })
    }
    /// The runs of available seats side by side in `rows` (a seated section's), front row
    /// first, then left to right: `(first seat, length)` of each maximal run.
    pub fn free_runs<'a>(&'a self, rows: &'a [Row]) -> impl Iterator<Item = (u32, u32)> + 'a {
        let free = move |seat: u32| self.seats[seat as usize].get() == SeatState::Available;
        rows.iter().flat_map(move |row| {
            let end = row.first_seat + row.seats;
            let mut seat = row.first_seat;
            std::iter::from_fn(move || {
                while seat < end && !free(seat) {
                    seat += 1;
                }
                let first = seat;
                while seat < end && free(seat) {
                    seat += 1;
                }
                (seat > first).then_some((first, seat - first))
            })
        })
    }

    /// The most seats one order can hold together in `section` (of this performance's venue)
    /// right now: in a seated section the longest run of available seats side by side in one
    /// row, in general admission the places left; never more than the per-order limit. A
    /// best-available hold of at most this many seats succeeds (where the section is one
    /// best-available serves), one of more is refused, as long as nothing changes in between.
    /// The scan stops at the first run as long as the limit, so it reads few seats while a
    /// section still has room.
    pub fn together(&self, section: &Section, idx: SectionIdx) -> u32 {
        let cap = u32::from(self.max_seats_per_order);
        let available = self
            .sections
            .get(usize::from(idx.0))
            .map_or(0, SectionCounts::available);
        let SectionKind::Seated { rows, .. } = &section.kind else {
            return available.min(cap);
        };
        let mut best = 0;
        if available > 0 {
            for (_, len) in self.free_runs(rows) {
                best = best.max(len);
                if best >= cap || best >= available {
                    break;
                }
            }
        }
        best.min(cap)
    }

    pub fn sale_open_at(&self, clock_ms: u64) -> bool {
        self.status == SaleStatus::OnSale
            && clock_ms >= self.on_sale_at_ms
            && clock_ms < self.sale_ends_at_ms
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueState {
    /// Joined before the sale opened; placed by the seeded shuffle at opening.
    PreQueue,
    Waiting,
    Admitted,
    /// The admission ran out.
    Expired,
    /// The sale sold out, closed or was cancelled while this entry waited.
    Closed,
}

impl QueueState {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::PreQueue => "pre_queue",
            QueueState::Waiting => "waiting",
            QueueState::Admitted => "admitted",
            QueueState::Expired => "expired",
            QueueState::Closed => "closed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub buyer: Principal,
    pub state: QueueState,
    /// Place in admission order (assigned when the entry enters the FIFO).
    pub seq: u32,
    /// Admitted entries: when the admission ends.
    pub admitted_until_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRoom {
    pub spec: WaitingRoomSpec,
    /// Revealed at opening.
    pub seed: Option<Digest32>,
    /// Every entry ever made, by join index.
    pub entries: Vec<QueueEntry>,
    /// Join indices of pre-queue entries, in join order, until the opening shuffles them.
    pub prequeue: Vec<u32>,
    /// Join indices of waiting entries in admission order; their `seq`s are consecutive.
    pub order: VecDeque<u32>,
    /// The `seq` the next entry to enter `order` gets.
    pub next_seq: u32,
    pub active_admissions: u32,
    pub admitted_total: u32,
    /// Admission credit in thousandths of an entry, and when it was last accrued.
    pub credit_milli: u64,
    pub last_accrual_ms: u64,
    pub sold_out: bool,
}

impl WaitingRoom {
    pub fn new(spec: WaitingRoomSpec) -> WaitingRoom {
        WaitingRoom {
            spec,
            seed: None,
            entries: Vec::new(),
            prequeue: Vec::new(),
            order: VecDeque::new(),
            next_seq: 0,
            active_admissions: 0,
            admitted_total: 0,
            credit_milli: 0,
            last_accrual_ms: 0,
            sold_out: false,
        }
    }
    /// Entries ahead of this one (0 = next to be admitted), for waiting entries.
    pub fn position(&self, join_index: u32) -> Option<u64> {
        let e = self.entries.get(join_index as usize)?;
        if e.state != QueueState::Waiting {
            return None;
        }
        let head = self.entries[*self.order.front()? as usize].seq;
        Some(u64::from(e.seq - head))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Live,
    Released,
    Expired,
    Confirmed(BookingId),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: HoldId,
    pub performance: PerformanceId,
    pub buyer: Principal,
    /// Seated holds: the seats and each one's ticket category.
    pub seats: Vec<(SeatIdx, CategoryIdx)>,
    /// General-admission holds: section, quantity and category.
    pub ga: Option<(SectionIdx, u16, CategoryIdx)>,
    pub amount: Money,
    pub placed_at_ms: u64,
    pub expires_at_ms: u64,
    pub extended: bool,
    pub payment_ref: Option<String>,
    pub state: HoldState,
    /// When the hold stopped being live (for retention).
    pub ended_at_ms: u64,
    /// The checkout the payments service runs on this hold: `Some` from the extension
    /// (`extended` and `payment_ref` are set with it), so a restarted payments process
    /// finds every unfinished checkout in the ledger.
    pub checkout: Option<Checkout>,
}

/// Where a hold's payment stands. `Started` and `Captured` are open: the payments service
/// still owes the ledger an outcome, and an ended hold is kept (not forgotten) until then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checkout {
    /// The hold was extended into its payment grace; nothing is known of the money yet.
    Started,
    /// The provider captured the money (`provider_ref`); a booking or a refund must follow.
    Captured { provider_ref: String },
    /// The hold became a booking (the hold's state says which).
    Booked,
    /// The payment was declined or voided: no money moved; the hold was released.
    Failed { reason: String },
    /// The money was captured and given back, because no booking could be made.
    Refunded {
        provider_ref: String,
        reason: String,
    },
}

impl Checkout {
    pub fn is_open(&self) -> bool {
        matches!(self, Checkout::Started | Checkout::Captured { .. })
    }
    pub fn name(&self) -> &'static str {
        match self {
            Checkout::Started => "started",
            Checkout::Captured { .. } => "captured",
            Checkout::Booked => "booked",
            Checkout::Failed { .. } => "failed",
            Checkout::Refunded { .. } => "refunded",
        }
    }
}

impl Hold {
    /// Seats or GA places this hold covers.
    pub fn quantity(&self) -> u32 {
        self.seats.len() as u32 + self.ga.map_or(0, |g| u32::from(g.1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TicketState {
    Valid,
    Refunded,
    CheckedIn,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: TicketId,
    pub seat: Option<SeatIdx>,
    pub section: SectionIdx,
    pub category: CategoryIdx,
    pub price_minor: u64,
    pub code: CheckInCode,
    pub state: TicketState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub id: BookingId,
    pub performance: PerformanceId,
    pub buyer: Principal,
    pub hold: HoldId,
    pub tickets: Vec<Ticket>,
    pub amount: Money,
    pub refunded_minor: u64,
    pub payment_ref: String,
    pub confirmed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: [u8; 16],
    pub at_ms: u64,
    pub outcome: Outcome,
}

/// Everything a snapshot holds. Deterministic: ordered maps only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    /// Ledger time (unix ms): the maximum stamp seen.
    pub clock_ms: u64,
    /// Log index of the last applied command.
    pub last_index: u64,
    pub next_id: u64,
    pub token_secret: Option<Digest32>,
    #[serde(deserialize_with = "bulk_map::deserialize")]
    pub users: BTreeMap<UserId, User>,
    pub api_keys: BTreeMap<ApiKeyId, ApiKey>,
    pub venues: BTreeMap<VenueId, Venue>,
    pub events: BTreeMap<EventId, Event>,
    pub performances: BTreeMap<PerformanceId, Performance>,
    /// Live holds and, for a while, ended ones.
    #[serde(deserialize_with = "bulk_map::deserialize")]
    pub holds: BTreeMap<HoldId, Hold>,
    /// Live holds by expiry.
    pub hold_expiry: BTreeSet<(u64, HoldId)>,
    /// Ended holds in the order they ended, for retention. A hold whose checkout is still
    /// open joins when the checkout closes.
    pub ended_holds: VecDeque<(u64, HoldId)>,
    #[serde(deserialize_with = "bulk_map::deserialize")]
    pub bookings: BTreeMap<BookingId, Booking>,
    /// Unexpired admissions by expiry.
    pub admission_expiry: BTreeSet<(u64, QueueId)>,
    /// Waiting rooms whose sale is open (admitted from by the tick).
    pub rooms_on_sale: BTreeSet<PerformanceId>,
    pub idempotency: BTreeMap<(Principal, String), IdempotencyRecord>,
    pub idempotency_order: VecDeque<(u64, Principal, String)>,
    pub feed: VecDeque<FeedEntry>,
}

/// Decoding the big maps: serde's `BTreeMap` impl inserts pair by pair, and inserting keys
/// in order splits every node near its middle, so a restored map had half-full nodes (twice
/// the node allocations and memory of the original). Collecting the pairs first lets std
/// bulk-build full nodes from the sorted run. Same wire format; equal keys keep the last
/// value, as inserting did.
mod bulk_map {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        struct Pairs<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Pairs<K, V> {
            type Value = BTreeMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // The length comes from the input: never pre-allocate more than 1 MiB on it.
                let cap = (1 << 20) / std::mem::size_of::<(K, V)>().max(1);
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(cap));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(BTreeMap::from_iter(pairs))
            }
        }
        d.deserialize_map(Pairs(PhantomData))
    }
}

/// A fast hasher for indexes keyed by ledger-assigned ids (not by client-chosen strings,
/// which keep SipHash against collision floods). Multiply-rotate, as in rustc's FxHasher.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Users by email, without a copy of each email: a keyed 64-bit hash of the email names the
/// user, whose stored email is compared on every lookup; the rare email whose hash another
/// email already has is kept in full in `collided`. Copying every email into the index was a
/// third of building the indexes of a 1M-user restore, and half the index's memory. SipHash
/// with per-process random keys, so clients cannot aim for collisions; what is indexed never
/// depends on the keys, so replicas with different keys answer the same.
#[derive(Clone, Debug, Default)]
pub struct EmailIndex {
    keys: std::hash::RandomState,
    by_hash: IdMap<u64, UserId>,
    collided: HashMap<String, UserId>,
}

impl EmailIndex {
    fn hash(&self, email: &str) -> u64 {
        use std::hash::BuildHasher;
        self.keys.hash_one(email)
    }

    pub fn get(&self, users: &BTreeMap<UserId, User>, email: &str) -> Option<UserId> {
        if let Some(&id) = self.collided.get(email) {
            return Some(id);
        }
        let id = *self.by_hash.get(&self.hash(email))?;
        (users.get(&id)?.email == email).then_some(id)
    }

    /// Index `email` for `id`. An email that is indexed already is left as it is (so a
    /// duplicate in a snapshot shows as a size mismatch in the invariant check).
    pub fn insert(&mut self, users: &BTreeMap<UserId, User>, email: &str, id: UserId) {
        use std::collections::hash_map::Entry;
        let h = self.hash(email);
        match self.by_hash.entry(h) {
            Entry::Vacant(v) => {
                v.insert(id);
            }
            Entry::Occupied(o) => {
                let holder = users.get(o.get()).map(|u| u.email.as_str());
                if holder != Some(email) && !self.collided.contains_key(email) {
                    self.collided.insert(email.to_owned(), id);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lookups derived from [`State`]; rebuilt after a restore.
#[derive(Clone, Debug, Default)]
pub struct Indexes {
    pub user_by_email: EmailIndex,
    pub key_by_digest: HashMap<Digest32, ApiKeyId>,
    /// Live holds per (performance, buyer).
    pub live_holds: IdMap<(PerformanceId, Principal), u16>,
    pub live_hold_count: usize,
    /// Check-in code → (booking, ticket position in the booking). Codes are random, drawn by
    /// the proposer, so SipHash stays.
    pub ticket_by_code: HashMap<CheckInCode, (BookingId, u32)>,
    pub ticket_by_id: IdMap<TicketId, (BookingId, u32)>,
    /// Queue entry per (performance, buyer).
    pub queue_by_buyer: IdMap<(PerformanceId, Principal), u32>,
    pub idempotency_per_principal: IdMap<Principal, usize>,
    /// Holds whose checkout is open, in id order (the payments service pages through them).
    pub open_checkouts: BTreeSet<HoldId>,
    /// Bookings per buyer and per performance, in id order: "my bookings" and sales reports
    /// page through them without scanning every booking. Bookings are never removed.
    pub bookings_by_buyer: BTreeSet<(Principal, BookingId)>,
    pub bookings_by_performance: BTreeSet<(PerformanceId, BookingId)>,
}

impl Indexes {
    pub fn build(s: &State) -> Indexes {
        let mut ix = Indexes::default();
        ix.user_by_email.by_hash.reserve(s.users.len());
        let queued: usize = s
            .performances
            .values()
            .filter_map(|p| p.waiting_room.as_ref())
            .map(|r| r.entries.len())
            .sum();
        ix.queue_by_buyer.reserve(queued);
        for u in s.users.values() {
            ix.user_by_email.insert(&s.users, &u.email, u.id);
        }
        for k in s.api_keys.values() {
            ix.key_by_digest.insert(k.digest, k.id);
        }
        ix.open_checkouts = s
            .holds
            .values()
            .filter(|h| h.checkout.as_ref().is_some_and(Checkout::is_open))
            .map(|h| h.id)
            .collect();
        for h in s.holds.values().filter(|h| h.state == HoldState::Live) {
            // Saturating: a decoded snapshot may list any number; the invariant check refuses it.
            let n = ix.live_holds.entry((h.performance, h.buyer)).or_default();
            *n = n.saturating_add(1);
            ix.live_hold_count += 1;
        }
        for b in s.bookings.values() {
            ix.bookings_by_buyer.insert((b.buyer, b.id));
            ix.bookings_by_performance.insert((b.performance, b.id));
            for (i, t) in b.tickets.iter().enumerate() {
                ix.ticket_by_code.insert(t.code, (b.id, i as u32));
                ix.ticket_by_id.insert(t.id, (b.id, i as u32));
            }
        }
        for p in s.performances.values() {
            if let Some(room) = &p.waiting_room {
                for (j, e) in room.entries.iter().enumerate() {
                    ix.queue_by_buyer.insert((p.id, e.buyer), j as u32);
                }
            }
        }
        for (principal, _) in s.idempotency.keys() {
            *ix.idempotency_per_principal.entry(*principal).or_default() += 1;
        }
        ix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, email: &str) -> (UserId, User) {
        let u = User {
            id: UserId(id),
            email: email.into(),
            name: "N".into(),
            password_hash: vec![1],
            role: Role::Buyer,
            created_at_ms: 0,
        };
        (u.id, u)
    }

    /// Random keys make a real collision unreachable from a test, so plant one: `b`'s hash
    /// already names `a`'s user.
    #[test]
    fn the_email_index_keeps_colliding_emails_apart_and_refuses_duplicates() {
        let users: BTreeMap<UserId, User> = [user(1, "a@x.io"), user(2, "b@x.io")].into();
        let mut ix = EmailIndex::default();
        ix.insert(&users, "a@x.io", UserId(1));
        let hb = ix.hash("b@x.io");
        ix.by_hash.insert(hb, UserId(1));
        ix.insert(&users, "b@x.io", UserId(2));
        assert_eq!(ix.collided.len(), 1);
        assert_eq!(ix.get(&users, "a@x.io"), Some(UserId(1)));
        assert_eq!(ix.get(&users, "b@x.io"), Some(UserId(2)));
        assert_eq!(ix.get(&users, "c@x.io"), None);
        // A duplicate (as a damaged snapshot could list) is not indexed twice.
        let before = ix.len();
        ix.insert(&users, "a@x.io", UserId(3));
        ix.insert(&users, "b@x.io", UserId(4));
        assert_eq!(ix.len(), before);
        assert_eq!(ix.get(&users, "b@x.io"), Some(UserId(2)));
    }
}
