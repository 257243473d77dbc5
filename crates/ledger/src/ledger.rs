//! `Ledger`: applies commands to the state. Every handler validates everything first and only
//! then mutates, so a rejection leaves the ledger as it was (apart from the clock, which every
//! committed command advances, and the expiries that the new time makes due).

use crate::command::*;
use crate::ids::*;
use crate::limits::*;
use crate::outcome::*;
use crate::state::*;
use std::collections::{BTreeMap, HashMap};

type Result<T> = std::result::Result<T, Rejection>;

fn reject<T>(code: Code, detail: impl Into<String>) -> Result<T> {
    Err(Rejection::new(code, detail))
}

/// The most a single price may be, in minor units (keeps every sum far from overflow).
pub const MAX_PRICE_MINOR: u64 = 1_000_000_000_000;

/// The replicated on-sale state machine. See the crate docs.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub(crate) s: State,
    pub(crate) ix: Indexes,
    /// Expiries done by the sweep of the command being applied (reported by a tick).
    swept: (u32, u32),
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// Who a principal is, once resolved against the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    System,
    Role(Role),
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            s: State {
                next_id: 1,
                ..State::default()
            },
            ix: Indexes::default(),
            swept: (0, 0),
        }
    }

    pub(crate) fn from_state(s: State) -> Ledger {
        let ix = Indexes::build(&s);
        Ledger {
            s,
            ix,
            swept: (0, 0),
        }
    }

    /// Read-only view of the whole state (for the node's reads).
    pub fn state(&self) -> &State {
        &self.s
    }
    pub fn clock_ms(&self) -> u64 {
        self.s.clock_ms
    }
    pub fn last_index(&self) -> u64 {
        self.s.last_index
    }
    pub fn live_holds(&self) -> usize {
        self.ix.live_hold_count
    }

    /// Apply one committed command at `log_index` (strictly after the last one applied).
    pub fn apply(&mut self, log_index: u64, cmd: Command) -> Outcome {
        self.advance_to(log_index);
        self.apply_command(cmd)
    }

    /// Apply the commands one log entry carries (writes the leader proposed together as one
    /// entry), in order, all at `log_index` (strictly after the last one applied): one outcome
    /// per command, each exactly as if it had been an entry of its own. Their changes share
    /// the index in the feed, in this order.
    pub fn apply_entry(&mut self, log_index: u64, cmds: Vec<Command>) -> Vec<Outcome> {
        self.advance_to(log_index);
        cmds.into_iter().map(|c| self.apply_command(c)).collect()
    }

    fn advance_to(&mut self, log_index: u64) {
        assert!(
            log_index > self.s.last_index,
            "log index {log_index} applied after {}",
            self.s.last_index
        );
        self.s.last_index = log_index;
    }

    fn apply_command(&mut self, cmd: Command) -> Outcome {
        self.s.clock_ms = self.s.clock_ms.max(cmd.stamp_ms);
        self.sweep();
        let Command {
            principal,
            idempotency_key,
            op,
            ..
        } = cmd;
        let outcome = match idempotency_key {
            None => self.dispatch(principal, op),
            Some(key) => self.apply_idempotent(principal, key, op),
        };
        // (The skip-hold-expiry canary breaks "live holds are unexpired" on purpose.)
        if cfg!(debug_assertions) && !cfg!(feature = "canary-skip-hold-expiry") && self.is_small() {
            // Cheap enough for small states: catches a broken handler at the step that broke it.
            if let Err(e) = self.check_invariants() {
                panic!("invariant broken at {}: {e}", self.s.last_index);
            }
        }
        outcome
    }

    /// Small enough that debug builds re-check every invariant after each command (the check
    /// is linear in the state, so big states would make tests and benchmarks quadratic).
    fn is_small(&self) -> bool {
        let s = &self.s;
        s.performances.len() <= 16
            && s.holds.len() + s.users.len() + s.bookings.len() + s.api_keys.len() < 2_048
            && s.performances.values().all(|p| {
                p.seats.len() <= 4_096
                    && p.waiting_room
                        .as_ref()
                        .is_none_or(|r| r.entries.len() < 1_024)
            })
    }

    /// Record that a log entry which carries no command (a Raft blank or membership entry)
    /// was applied, so `last_index` follows the log.
    pub fn skip_index(&mut self, log_index: u64) {
        assert!(log_index > self.s.last_index);
        self.s.last_index = log_index;
    }

    fn apply_idempotent(&mut self, principal: Principal, key: String, op: Op) -> Outcome {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Outcome::Rejected(Rejection::new(
                Code::InvalidInput,
                format!("idempotency key must be 1..={MAX_IDEMPOTENCY_KEY_LEN} bytes"),
            ));
        }
        let fingerprint = fingerprint(&op);
        let map_key = (principal, key);
        if let Some(rec) = self.s.idempotency.get(&map_key) {
            if rec.fingerprint == fingerprint {
                return rec.outcome.clone();
            }
            return Outcome::Rejected(Rejection::new(
                Code::IdempotencyConflict,
                "this idempotency key was used with a different request; use a new key",
            ));
        }
        let count = self
            .ix
            .idempotency_per_principal
            .get(&principal)
            .copied()
            .unwrap_or(0);
        if count >= MAX_IDEMPOTENCY_RECORDS_PER_PRINCIPAL {
            return Outcome::Rejected(Rejection::new(
                Code::LimitExceeded,
                "too many idempotency keys in the last 24 h for this principal",
            ));
        }
        let outcome = self.dispatch(principal, op);
        let at_ms = self.s.clock_ms;
        self.s
            .idempotency_order
            .push_back((at_ms, principal, map_key.1.clone()));
        self.s.idempotency.insert(
            map_key,
            IdempotencyRecord {
                fingerprint,
                at_ms,
                outcome: outcome.clone(),
            },
        );
        *self
            .ix
            .idempotency_per_principal
            .entry(principal)
            .or_default() += 1;
        outcome
    }

    fn dispatch(&mut self, p: Principal, op: Op) -> Outcome {
        let result = match op {
            Op::Bootstrap {
                operator_key_digest,
                token_secret,
            } => self.bootstrap(p, operator_key_digest, token_secret),
            Op::Tick => self.tick(p),
            Op::CreateUser {
                email,
                name,
                password_hash,
                role,
            } => self.create_user(p, email, name, password_hash, role),
            Op::CreateApiKey {
                name,
                role,
                key_digest,
            } => self.create_api_key(p, name, role, key_digest),
            Op::RevokeApiKey { key } => self.revoke_api_key(p, key),
            Op::CreateVenue { name, sections } => self.create_venue(p, name, sections),
            Op::CreateEvent {
                name,
                category,
                description,
                media,
            } => self.create_event(p, None, name, category, description, media),
            Op::UpdateEvent {
                event,
                name,
                category,
                description,
                media,
            } => self.create_event(p, Some(event), name, category, description, media),
            Op::CreatePerformance(spec) => self.create_performance(p, spec),
            Op::SetSaleStatus {
                performance,
                status,
                seed,
            } => self.set_sale_status(p, performance, status, seed),
            Op::SetSeatsBlocked {
                performance,
                seats,
                blocked,
            } => self.set_seats_blocked(p, performance, &seats, blocked),
            Op::JoinQueue { performance } => self.join_queue(p, performance),
            Op::PlaceHold { performance, what } => self.place_hold(p, performance, what),
            Op::ReleaseHold { hold } => self.release_hold(p, hold),
            Op::ExtendHold { hold, payment_ref } => self.extend_hold(p, hold, payment_ref),
            Op::ConfirmHold {
                hold,
                payment_ref,
                code_seed,
            } => self.confirm_hold(p, hold, payment_ref, code_seed),
            Op::ConfirmLate {
                hold,
                payment_ref,
                code_seed,
            } => self.confirm_late(p, hold, payment_ref, code_seed),
            Op::RecordPayment {
                hold,
                payment_ref,
                event,
            } => self.record_payment(p, hold, payment_ref, event),
            Op::Refund {
                booking,
                tickets,
                refund_ref,
            } => self.refund(p, booking, &tickets, refund_ref),
            Op::CheckIn { performance, code } => self.check_in(p, performance, code),
        };
        match result {
            Ok(reply) => Outcome::Ok(reply),
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    // ---------------------------------------------------------------- helpers

    fn next_id(&mut self) -> u64 {
        let id = self.s.next_id;
        assert!(id < MAX_ID, "id space exhausted");
        self.s.next_id += 1;
        id
    }

    fn emit(&mut self, change: Change) {
        if self.s.feed.len() >= MAX_FEED_EVENTS {
            self.s.feed.pop_front();
        }
        self.s.feed.push_back(FeedEntry {
            log_index: self.s.last_index,
            at_ms: self.s.clock_ms,
            change,
        });
    }

    fn actor(&self, p: Principal) -> Result<Actor> {
        match p {
            Principal::System => Ok(Actor::System),
            Principal::User(u) => match self.s.users.get(&u) {
                Some(user) => Ok(Actor::Role(user.role)),
                None => reject(Code::Unauthenticated, format!("unknown user {u}")),
            },
            Principal::ApiKey(k) => match self.s.api_keys.get(&k) {
                Some(key) if !key.revoked => Ok(Actor::Role(key.role)),
                Some(_) => reject(Code::Unauthenticated, format!("API key {k} was revoked")),
                None => reject(Code::Unauthenticated, format!("unknown API key {k}")),
            },
        }
    }

    /// The principal's role, which must be one of `allowed`.
    fn require(&self, p: Principal, allowed: &[Role], what: &str) -> Result<Role> {
        match self.actor(p)? {
            Actor::Role(r) if allowed.contains(&r) => Ok(r),
            Actor::Role(r) => reject(Code::Forbidden, format!("a {} may not {what}", r.as_str())),
            Actor::System => reject(Code::Forbidden, format!("the system may not {what}")),
        }
    }

    /// An operator, or the owner itself with one of `allowed`.
    fn require_owner(
        &self,
        p: Principal,
        owner: Principal,
        allowed: &[Role],
        what: &str,
    ) -> Result<()> {
        let role = self.require(p, allowed, what)?;
        if role == Role::Operator || p == owner {
            Ok(())
        } else {
            reject(Code::Forbidden, format!("only its owner may {what}"))
        }
    }

    fn performance(&self, id: PerformanceId) -> Result<&Performance> {
        match self.s.performances.get(&id) {
            Some(p) => Ok(p),
            None => reject(Code::NotFound, format!("no performance {id}")),
        }
    }

    // ---------------------------------------------------------------- time

    /// Expire what the clock made due and forget what retention allows; runs before every
    /// command, so no command ever sees an expired hold or admission as live.
    fn sweep(&mut self) {
        let now = self.s.clock_ms;
        let mut swept = (0u32, 0u32);
        while let Some(&(at, hold)) = self.s.hold_expiry.first() {
            // Canary (jepsen/, test-only): holds are never expired.
            if at > now || cfg!(feature = "canary-skip-hold-expiry") {
                break;
            }
            let performance = self.end_hold(hold, HoldState::Expired);
            self.emit(Change::HoldExpired { hold, performance });
            swept.0 += 1;
        }
        while let Some(&(at, queue)) = self.s.admission_expiry.first() {
            if at > now {
                break;
            }
            self.s.admission_expiry.pop_first();
            let room = self.room_mut(queue.performance);
            let e = &mut room.entries[queue.join_index as usize];
            assert_eq!(e.state, QueueState::Admitted);
            e.state = QueueState::Expired;
            room.active_admissions -= 1;
            self.emit(Change::AdmissionExpired { queue });
            swept.1 += 1;
        }
        while let Some(&(at, hold)) = self.s.ended_holds.front() {
            if at + ENDED_HOLD_RETENTION_MS > now && self.s.ended_holds.len() <= MAX_ENDED_HOLDS {
                break;
            }
            self.s.ended_holds.pop_front();
            let h = self
                .s
                .holds
                .remove(&hold)
                .expect("ended hold is kept until retention ends");
            assert_ne!(h.state, HoldState::Live);
        }
        while let Some((at, _, _)) = self.s.idempotency_order.front() {
            if at + IDEMPOTENCY_RETENTION_MS > now {
                break;
            }
            let (_, principal, key) = self.s.idempotency_order.pop_front().expect("front exists");
            self.s
                .idempotency
                .remove(&(principal, key))
                .expect("record kept until retention ends");
            let n = self
                .ix
                .idempotency_per_principal
                .get_mut(&principal)
                .expect("counted");
            *n -= 1;
            if *n == 0 {
                self.ix.idempotency_per_principal.remove(&principal);
            }
        }
        self.swept = swept;
    }

    fn room_mut(&mut self, performance: PerformanceId) -> &mut WaitingRoom {
        self.s
            .performances
            .get_mut(&performance)
            .and_then(|p| p.waiting_room.as_mut())
            .expect("queue ids name performances with a waiting room")
    }

    /// End a live hold as released or expired: its seats go back on sale.
    fn end_hold(&mut self, id: HoldId, state: HoldState) -> PerformanceId {
        assert!(matches!(state, HoldState::Released | HoldState::Expired));
        let now = self.s.clock_ms;
        let State {
            holds,
            performances,
            venues,
            hold_expiry,
            ended_holds,
            ..
        } = &mut self.s;
        let hold = holds.get_mut(&id).expect("hold exists");
        assert_eq!(hold.state, HoldState::Live);
        assert!(hold_expiry.remove(&(hold.expires_at_ms, id)));
        let perf = performances
            .get_mut(&hold.performance)
            .expect("hold's performance exists");
        let venue = &venues[&perf.venue];
        for &(seat, _) in &hold.seats {
            let cell = &mut perf.seats[seat.0 as usize];
            assert_eq!(cell.get(), SeatState::Held(id));
            *cell = SeatCell::AVAILABLE;
            let section = venue.section_of(seat).expect("seat in a section");
            perf.sections[section.0 as usize].held -= 1;
        }
        if let Some((section, quantity, _)) = hold.ga {
            perf.sections[section.0 as usize].held -= u32::from(quantity);
        }
        hold.state = state;
        hold.ended_at_ms = now;
        // An open checkout keeps its hold until the payments service settles it.
        if !hold.checkout.as_ref().is_some_and(Checkout::is_open) {
            ended_holds.push_back((now, id));
        }
        let key = (hold.performance, hold.buyer);
        let performance = hold.performance;
        self.forget_live_hold(key);
        self.reopen_sold_out_room(performance);
        performance
    }

    fn forget_live_hold(&mut self, key: (PerformanceId, Principal)) {
        let n = self.ix.live_holds.get_mut(&key).expect("live hold counted");
        *n -= 1;
        if *n == 0 {
            self.ix.live_holds.remove(&key);
        }
        self.ix.live_hold_count -= 1;
    }

    /// Seats came back to a sold-out performance's stock (refund): its waiting room admits again.
    fn reopen_sold_out_room(&mut self, performance: PerformanceId) {
        let perf = self.s.performances.get_mut(&performance).expect("exists");
        let available = perf.totals().available();
        let status = perf.status;
        if let Some(room) = perf.waiting_room.as_mut()
            && room.sold_out
            && available > 0
        {
            room.sold_out = false;
            if status == SaleStatus::OnSale {
                room.last_accrual_ms = self.s.clock_ms;
                self.s.rooms_on_sale.insert(performance);
            }
        }
    }

    // ---------------------------------------------------------------- cluster

    fn bootstrap(
        &mut self,
        p: Principal,
        digest: Digest32,
        token_secret: Digest32,
    ) -> Result<Reply> {
        if p != Principal::System {
            return reject(Code::Forbidden, "only the cluster bootstraps itself");
        }
        if self.s.token_secret.is_some() {
            return reject(Code::AlreadyExists, "the cluster is already bootstrapped");
        }
        if self.ix.key_by_digest.contains_key(&digest) {
            return reject(Code::AlreadyExists, "an API key with this digest exists");
        }
        self.s.token_secret = Some(token_secret);
        let key = self.insert_api_key("bootstrap".into(), Role::Operator, digest);
        Ok(Reply::Bootstrapped { operator_key: key })
    }

    fn tick(&mut self, p: Principal) -> Result<Reply> {
        if p != Principal::System {
            return reject(Code::Forbidden, "only the cluster ticks");
        }
        let (holds_expired, admissions_expired) = self.swept;
        let rooms: Vec<PerformanceId> = self.s.rooms_on_sale.iter().copied().collect();
        let mut admitted = 0;
        for performance in rooms {
            admitted += self.admit(performance);
        }
        Ok(Reply::Ticked {
            holds_expired,
            admissions_expired,
            admitted,
        })
    }

    // ---------------------------------------------------------------- accounts

    fn create_user(
        &mut self,
        p: Principal,
        email: String,
        name: String,
        password_hash: Vec<u8>,
        role: Role,
    ) -> Result<Reply> {
        if role != Role::Buyer {
            self.require(p, &[Role::Operator], "create accounts other than buyers")?;
        }
        let email = email.to_ascii_lowercase();
        check_text("email", &email, 3, MAX_EMAIL_LEN)?;
        if !email.contains('@') || email.contains(char::is_whitespace) {
            return reject(Code::InvalidInput, "email must look like name@example.com");
        }
        check_text("name", &name, 1, MAX_NAME_LEN)?;
        if password_hash.is_empty() || password_hash.len() > MAX_PASSWORD_HASH_LEN {
            return reject(Code::InvalidInput, "password hash must be 1..=512 bytes");
        }
        if self.ix.user_by_email.get(&self.s.users, &email).is_some() {
            return reject(
                Code::AlreadyExists,
                "an account with this email exists; log in instead",
            );
        }
        if self.s.users.len() >= MAX_USERS {
            return reject(Code::LimitExceeded, "too many accounts");
        }
        let id = UserId(self.next_id());
        self.ix.user_by_email.insert(&self.s.users, &email, id);
        let created_at_ms = self.s.clock_ms;
        self.s.users.insert(
            id,
            User {
                id,
                email,
                name,
                password_hash,
                role,
                created_at_ms,
            },
        );
        Ok(Reply::UserCreated { user: id })
    }

    fn create_api_key(
        &mut self,
        p: Principal,
        name: String,
        role: Role,
        digest: Digest32,
    ) -> Result<Reply> {
        self.require(p, &[Role::Operator], "create API keys")?;
        check_text("name", &name, 1, MAX_NAME_LEN)?;
        if self.ix.key_by_digest.contains_key(&digest) {
            return reject(Code::AlreadyExists, "an API key with this digest exists");
        }
        if self.s.api_keys.len() >= MAX_API_KEYS {
            return reject(Code::LimitExceeded, "too many API keys");
        }
        let key = self.insert_api_key(name, role, digest);
        Ok(Reply::ApiKeyCreated { key })
    }

    fn insert_api_key(&mut self, name: String, role: Role, digest: Digest32) -> ApiKeyId {
        let id = ApiKeyId(self.next_id());
        self.ix.key_by_digest.insert(digest, id);
        let created_at_ms = self.s.clock_ms;
        self.s.api_keys.insert(
            id,
            ApiKey {
                id,
                name,
                role,
                digest,
                revoked: false,
                created_at_ms,
            },
        );
        id
    }

    fn revoke_api_key(&mut self, p: Principal, key: ApiKeyId) -> Result<Reply> {
        self.require(p, &[Role::Operator], "revoke API keys")?;
        match self.s.api_keys.get_mut(&key) {
            Some(k) => {
                k.revoked = true;
                Ok(Reply::ApiKeyRevoked)
            }
            None => reject(Code::NotFound, format!("no API key {key}")),
        }
    }

    // ---------------------------------------------------------------- catalog

    fn create_venue(
        &mut self,
        p: Principal,
        name: String,
        specs: Vec<SectionSpec>,
    ) -> Result<Reply> {
        self.require(p, &[Role::Organizer, Role::Operator], "create venues")?;
        check_text("venue name", &name, 1, MAX_NAME_LEN)?;
        let sections = build_sections(specs)?;
        if self.s.venues.len() >= MAX_VENUES {
            return reject(Code::LimitExceeded, "too many venues");
        }
        let seats = sections
            .iter()
            .filter(|s| s.is_seated())
            .map(Section::capacity)
            .sum();
        let ga_capacity = sections
            .iter()
            .filter(|s| !s.is_seated())
            .map(Section::capacity)
            .sum();
        let id = VenueId(self.next_id());
        self.s.venues.insert(
            id,
            Venue {
                id,
                owner: p,
                name,
                sections,
                seats,
            },
        );
        Ok(Reply::VenueCreated {
            venue: id,
            seats,
            ga_capacity,
        })
    }

    fn create_event(
        &mut self,
        p: Principal,
        existing: Option<EventId>,
        name: String,
        category: String,
        description: String,
        media: Vec<MediaItem>,
    ) -> Result<Reply> {
        self.require(p, &[Role::Organizer, Role::Operator], "manage events")?;
        if let Some(id) = existing {
            let Some(event) = self.s.events.get(&id) else {
                return reject(Code::NotFound, format!("no event {id}"));
            };
            self.require_owner(
                p,
                event.owner,
                &[Role::Organizer, Role::Operator],
                "change this event",
            )?;
        }
        check_text("event name", &name, 1, MAX_NAME_LEN)?;
        check_text("category", &category, 1, MAX_NAME_LEN)?;
        check_text("description", &description, 0, MAX_DESCRIPTION_LEN)?;
        if media.len() > MAX_MEDIA_ITEMS_PER_EVENT {
            return reject(
                Code::LimitExceeded,
                format!("at most {MAX_MEDIA_ITEMS_PER_EVENT} media items"),
            );
        }
        for m in &media {
            check_text("media kind", &m.kind, 1, MAX_LABEL_LEN)?;
            check_text("media url", &m.url, 1, MAX_URL_LEN)?;
        }
        if let Some(id) = existing {
            let event = self.s.events.get_mut(&id).expect("checked above");
            (event.name, event.category, event.description, event.media) =
                (name, category, description, media);
            return Ok(Reply::EventUpdated);
        }
        if self.s.events.len() >= MAX_EVENTS {
            return reject(Code::LimitExceeded, "too many events");
        }
        let id = EventId(self.next_id());
        let created_at_ms = self.s.clock_ms;
        self.s.events.insert(
            id,
            Event {
                id,
                owner: p,
                name,
                category,
                description,
                media,
                created_at_ms,
            },
        );
        Ok(Reply::EventCreated { event: id })
    }

    fn create_performance(&mut self, p: Principal, spec: PerformanceSpec) -> Result<Reply> {
        let Some(event) = self.s.events.get(&spec.event) else {
            return reject(Code::NotFound, format!("no event {}", spec.event));
        };
        self.require_owner(
            p,
            event.owner,
            &[Role::Organizer, Role::Operator],
            "add performances to this event",
        )?;
        let Some(venue) = self.s.venues.get(&spec.venue) else {
            return reject(Code::NotFound, format!("no venue {}", spec.venue));
        };
        let currency = validate_performance(&spec, venue)?;
        if self.s.performances.len() >= MAX_PERFORMANCES {
            return reject(Code::LimitExceeded, "too many performances");
        }
        let sections = venue
            .sections
            .iter()
            .map(|s| SectionCounts {
                capacity: s.capacity(),
                ..SectionCounts::default()
            })
            .collect();
        let seats = vec![SeatCell::AVAILABLE; venue.seats as usize];
        let owner = event.owner;
        let id = PerformanceId(self.next_id());
        let seed_commitment = spec.waiting_room.map(|w| w.seed_commitment);
        let perf = Performance {
            id,
            event: spec.event,
            venue: spec.venue,
            owner,
            starts_at_ms: spec.starts_at_ms,
            on_sale_at_ms: spec.on_sale_at_ms,
            sale_ends_at_ms: spec.sale_ends_at_ms,
            hold_ttl_ms: spec.hold_ttl_ms,
            payment_grace_ms: spec.payment_grace_ms,
            max_seats_per_order: spec.max_seats_per_order,
            categories: spec.categories,
            prices: spec.prices,
            currency,
            status: SaleStatus::Draft,
            seats,
            sections,
            revenue_minor: 0,
            waiting_room: spec.waiting_room.map(WaitingRoom::new),
        };
        self.s.performances.insert(id, perf);
        self.emit(Change::PerformanceCreated {
            performance: id,
            seed_commitment,
        });
        Ok(Reply::PerformanceCreated { performance: id })
    }

    fn set_sale_status(
        &mut self,
        p: Principal,
        id: PerformanceId,
        status: SaleStatus,
        seed: Option<Digest32>,
    ) -> Result<Reply> {
        use SaleStatus::*;
        let perf = self.performance(id)?;
        self.require_owner(
            p,
            perf.owner,
            &[Role::Organizer, Role::Operator],
            "change this sale",
        )?;
        let from = perf.status;
        let allowed = matches!(
            (from, status),
            (Draft, OnSale | Cancelled)
                | (OnSale, Paused | Closed | Cancelled)
                | (Paused, OnSale | Closed | Cancelled)
                | (Closed, Cancelled)
        );
        if !allowed {
            return reject(
                Code::InvalidState,
                format!(
                    "a sale cannot go from {} to {}",
                    from.as_str(),
                    status.as_str()
                ),
            );
        }
        let reveal = from == Draft && status == OnSale && perf.waiting_room.is_some();
        match (reveal, seed) {
            (true, None) => {
                return reject(Code::InvalidInput, "opening a waiting room needs its seed");
            }
            (true, Some(seed)) => {
                let commitment = perf
                    .waiting_room
                    .as_ref()
                    .expect("reveal has a room")
                    .spec
                    .seed_commitment;
                if *blake3::hash(&seed).as_bytes() != commitment {
                    return reject(
                        Code::InvalidInput,
                        "the seed does not match the commitment made at creation",
                    );
                }
            }
            (false, Some(_)) => {
                return reject(
                    Code::InvalidInput,
                    "a seed is only given when a waiting room opens",
                );
            }
            (false, None) => {}
        }
        // Valid: mutate.
        let now = self.s.clock_ms;
        let perf = self.s.performances.get_mut(&id).expect("exists");
        perf.status = status;
        let on_sale_at_ms = perf.on_sale_at_ms;
        let mut revealed = None;
        if let Some(room) = perf.waiting_room.as_mut() {
            match status {
                OnSale => {
                    if let Some(seed) = seed {
                        revealed = Some((seed, open_room(room, id, seed)));
                    }
                    if !room.sold_out {
                        room.last_accrual_ms = now.max(on_sale_at_ms);
                        room.credit_milli = 0;
                        self.s.rooms_on_sale.insert(id);
                    }
                }
                Paused => {
                    self.s.rooms_on_sale.remove(&id);
                }
                Closed | Cancelled => {
                    self.s.rooms_on_sale.remove(&id);
                    close_room(room, id, &mut self.s.admission_expiry);
                }
                Draft => unreachable!("no transition goes back to draft"),
            }
        }
        if let Some((seed, prequeue_len)) = revealed {
            self.emit(Change::SeedRevealed {
                performance: id,
                seed,
                prequeue_len,
            });
        }
        if matches!(status, Closed | Cancelled) {
            let live: Vec<HoldId> = self
                .s
                .holds
                .values()
                .filter(|h| h.performance == id && h.state == HoldState::Live)
                .map(|h| h.id)
                .collect();
            for hold in live {
                self.end_hold(hold, HoldState::Released);
                self.emit(Change::HoldReleased {
                    hold,
                    performance: id,
                });
            }
        }
        self.emit(Change::SaleStatusChanged {
            performance: id,
            status,
        });
        Ok(Reply::SaleStatusChanged { status })
    }

    fn set_seats_blocked(
        &mut self,
        p: Principal,
        id: PerformanceId,
        seats: &[SeatIdx],
        blocked: bool,
    ) -> Result<Reply> {
        let perf = self.performance(id)?;
        self.require_owner(
            p,
            perf.owner,
            &[Role::Organizer, Role::Operator],
            "block seats",
        )?;
        if seats.is_empty() || seats.len() > MAX_SEATS_PER_VENUE as usize {
            return reject(Code::InvalidInput, "give 1..=200000 seats");
        }
        for &seat in seats {
            match perf.seats.get(seat.0 as usize).map(|c| c.get()) {
                None => {
                    return reject(
                        Code::InvalidInput,
                        format!("no seat {} in this venue", seat.0),
                    );
                }
                Some(SeatState::Available | SeatState::Blocked) => {}
                Some(_) => {
                    return reject(
                        Code::SeatUnavailable,
                        format!("seat {} is held or sold", seat.0),
                    );
                }
            }
        }
        let State {
            performances,
            venues,
            ..
        } = &mut self.s;
        let perf = performances.get_mut(&id).expect("exists");
        let venue = &venues[&perf.venue];
        let mut changed = 0;
        for &seat in seats {
            let cell = &mut perf.seats[seat.0 as usize];
            let was_blocked = cell.get() == SeatState::Blocked;
            if was_blocked == blocked {
                continue;
            }
            *cell = SeatCell::new(if blocked {
                SeatState::Blocked
            } else {
                SeatState::Available
            });
            let counts =
                &mut perf.sections[venue.section_of(seat).expect("seat in a section").0 as usize];
            if blocked {
                counts.blocked += 1;
            } else {
                counts.blocked -= 1;
            }
            changed += 1;
        }
        if !blocked {
            self.reopen_sold_out_room(id);
        }
        Ok(Reply::SeatsBlocked { changed })
    }

    // ---------------------------------------------------------------- waiting room

    fn join_queue(&mut self, p: Principal, id: PerformanceId) -> Result<Reply> {
        let perf = self.performance(id)?;
        self.require(p, &[Role::Buyer], "join a waiting room")?;
        let Some(room) = &perf.waiting_room else {
            return reject(
                Code::InvalidInput,
                "this performance has no waiting room; place holds directly",
            );
        };
        let prequeue = match perf.status {
            SaleStatus::Draft => true,
            SaleStatus::OnSale | SaleStatus::Paused => false,
            SaleStatus::Closed | SaleStatus::Cancelled => {
                return reject(Code::SaleNotOpen, "this sale is closed");
            }
        };
        if room.sold_out {
            return reject(Code::SoldOut, "this performance is sold out");
        }
        if let Some(&j) = self.ix.queue_by_buyer.get(&(id, p)) {
            let queue = QueueId {
                performance: id,
                join_index: j,
            };
            return reject(
                Code::AlreadyExists,
                format!("you are already in this waiting room as {queue}"),
            );
        }
        if room.entries.len() >= MAX_QUEUE_LENGTH as usize {
            return reject(Code::LimitExceeded, "the waiting room is full");
        }
        let room = self.room_mut(id);
        let join_index = room.entries.len() as u32;
        let mut entry = QueueEntry {
            buyer: p,
            state: QueueState::PreQueue,
            seq: 0,
            admitted_until_ms: 0,
        };
        if prequeue {
            room.prequeue.push(join_index);
        } else {
            entry.state = QueueState::Waiting;
            entry.seq = room.next_seq;
            room.next_seq += 1;
            room.order.push_back(join_index);
        }
        room.entries.push(entry);
        let position = room.position(join_index);
        self.ix.queue_by_buyer.insert((id, p), join_index);
        let queue = QueueId {
            performance: id,
            join_index,
        };
        self.emit(Change::QueueJoined {
            queue,
            buyer: p,
            prequeue,
        });
        Ok(Reply::QueueJoined { queue, position })
    }

    /// Admit from one room at its rate, while there is stock to sell.
    fn admit(&mut self, id: PerformanceId) -> u32 {
        let now = self.s.clock_ms;
        let perf = self
            .s
            .performances
            .get_mut(&id)
            .expect("rooms on sale exist");
        let totals = perf.totals();
        let (on_sale_at_ms, sale_ends_at_ms) = (perf.on_sale_at_ms, perf.sale_ends_at_ms);
        let room = perf
            .waiting_room
            .as_mut()
            .expect("rooms on sale have a room");
        if now < on_sale_at_ms || now >= sale_ends_at_ms {
            return 0;
        }
        if totals.available() == 0 {
            // Everything is held: pause without banking credit. Nothing held either: sold out.
            room.last_accrual_ms = now;
            room.credit_milli = 0;
            if totals.held == 0 {
                let waiting = close_room(room, id, &mut self.s.admission_expiry);
                room.sold_out = true;
                self.s.rooms_on_sale.remove(&id);
                self.emit(Change::QueueSoldOut {
                    performance: id,
                    waiting,
                });
            }
            return 0;
        }
        let rate = u64::from(room.spec.admission_rate_per_sec);
        let elapsed = now.saturating_sub(room.last_accrual_ms);
        room.last_accrual_ms = now;
        // At most one second's worth of credit, so a quiet spell does not release a burst.
        room.credit_milli = (room.credit_milli + elapsed * rate).min(rate * 1000);
        let mut n = (room.credit_milli / 1000).min(u64::from(MAX_ADMISSIONS_PER_TICK)) as usize;
        n = n.min(room.order.len());
        if room.spec.max_active_admissions > 0 {
            n = n.min(
                room.spec
                    .max_active_admissions
                    .saturating_sub(room.active_admissions) as usize,
            );
        }
        room.credit_milli -= n as u64 * 1000;
        let until_ms = now + room.spec.admission_ttl_ms;
        let mut admitted = Vec::with_capacity(n);
        for _ in 0..n {
            let j = room.order.pop_front().expect("n <= order.len()");
            let e = &mut room.entries[j as usize];
            e.state = QueueState::Admitted;
            e.admitted_until_ms = until_ms;
            room.active_admissions += 1;
            room.admitted_total += 1;
            let queue = QueueId {
                performance: id,
                join_index: j,
            };
            self.s.admission_expiry.insert((until_ms, queue));
            admitted.push(queue);
        }
        for &queue in &admitted {
            self.emit(Change::QueueAdmitted { queue, until_ms });
        }
        n as u32
    }

    // ---------------------------------------------------------------- holds

    fn place_hold(&mut self, p: Principal, id: PerformanceId, what: HoldRequest) -> Result<Reply> {
        let now = self.s.clock_ms;
        let perf = self.performance(id)?;
        self.require(p, &[Role::Buyer, Role::Operator], "hold seats")?;
        if !perf.sale_open_at(now) {
            return reject(
                Code::SaleNotOpen,
                format!("the sale is {} or outside its window", perf.status.as_str()),
            );
        }
        if let Some(room) = &perf.waiting_room {
            let admitted = self
                .ix
                .queue_by_buyer
                .get(&(id, p))
                .is_some_and(|&j| room.entries[j as usize].state == QueueState::Admitted);
            // (The skip-admission canary lets holds through without an admission on purpose.)
            if !admitted && !cfg!(feature = "canary-skip-admission") {
                return reject(
                    Code::AdmissionRequired,
                    "join the waiting room and wait for your admission",
                );
            }
        }
        let totals = perf.totals();
        if totals.available() == 0 {
            return if totals.held == 0 {
                reject(Code::SoldOut, "this performance is sold out")
            } else {
                reject(
                    Code::SeatUnavailable,
                    "every seat is held right now; try again in a few minutes",
                )
            };
        }
        let live = self.ix.live_holds.get(&(id, p)).copied().unwrap_or(0);
        if live >= MAX_HOLDS_PER_BUYER_PER_PERFORMANCE {
            return reject(
                Code::LimitExceeded,
                "you have too many holds on this performance; release one",
            );
        }
        if self.ix.live_hold_count >= MAX_LIVE_HOLDS {
            return reject(
                Code::LimitExceeded,
                "too many holds in the ledger; try again shortly",
            );
        }
        let venue = &self.s.venues[&perf.venue];
        let what = match what {
            HoldRequest::BestAvailable {
                section,
                quantity,
                category,
            } => HoldRequest::Seats(best_available(perf, venue, section, quantity, category)?),
            other => other,
        };
        let amount_minor = validate_hold_request(perf, venue, &what)?;
        // Valid: mutate.
        let hold_id = HoldId(self.next_id());
        let State {
            performances,
            venues,
            holds,
            hold_expiry,
            ..
        } = &mut self.s;
        let perf = performances.get_mut(&id).expect("exists");
        let venue = &venues[&perf.venue];
        let (mut seats, mut ga) = (Vec::new(), None);
        match what {
            HoldRequest::Seats(list) => {
                for &(seat, _) in &list {
                    perf.seats[seat.0 as usize] = SeatCell::new(SeatState::Held(hold_id));
                    perf.sections[venue.section_of(seat).expect("validated").0 as usize].held += 1;
                }
                seats = list;
            }
            HoldRequest::GeneralAdmission {
                section,
                quantity,
                category,
            } => {
                perf.sections[section.0 as usize].held += u32::from(quantity);
                ga = Some((section, quantity, category));
            }
            HoldRequest::BestAvailable { .. } => {
                unreachable!("validate_hold_request refuses an unresolved best-available hold")
            }
        }
        let expires_at_ms = now + perf.hold_ttl_ms;
        let amount = Money {
            amount_minor,
            currency: perf.currency,
        };
        let hold = Hold {
            id: hold_id,
            performance: id,
            buyer: p,
            seats,
            ga,
            amount,
            placed_at_ms: now,
            expires_at_ms,
            extended: false,
            payment_ref: None,
            state: HoldState::Live,
            ended_at_ms: 0,
            checkout: None,
        };
        let receipt = HoldReceipt {
            hold: hold_id,
            seats: hold.seats.iter().map(|s| s.0).collect(),
            quantity: hold.quantity(),
            expires_at_ms,
            amount,
        };
        hold_expiry.insert((expires_at_ms, hold_id));
        holds.insert(hold_id, hold);
        *self.ix.live_holds.entry((id, p)).or_default() += 1;
        self.ix.live_hold_count += 1;
        self.emit(Change::HoldPlaced {
            hold: hold_id,
            performance: id,
            buyer: p,
            seats: receipt.quantity,
            expires_at_ms,
        });
        Ok(Reply::HoldPlaced(receipt))
    }

    /// A hold that exists and that this principal may act on (the holder, a service, an operator).
    fn hold_for(&self, p: Principal, id: HoldId, what: &str) -> Result<&Hold> {
        let Some(hold) = self.s.holds.get(&id) else {
            return reject(Code::NotFound, format!("no hold {id}"));
        };
        if hold.buyer != p {
            self.require(p, &[Role::Service, Role::Operator], what)?;
        } else {
            self.actor(p)?;
        }
        Ok(hold)
    }

    fn release_hold(&mut self, p: Principal, id: HoldId) -> Result<Reply> {
        let hold = self.hold_for(p, id, "release another buyer's hold")?;
        match hold.state {
            HoldState::Live => {
                let performance = self.end_hold(id, HoldState::Released);
                self.emit(Change::HoldReleased {
                    hold: id,
                    performance,
                });
                Ok(Reply::HoldReleased)
            }
            // Releasing is idempotent: the seats are already back on sale.
            HoldState::Released | HoldState::Expired => Ok(Reply::HoldReleased),
            HoldState::Confirmed(b) => {
                reject(Code::HoldNotLive, format!("hold {id} became booking {b}"))
            }
        }
    }

    fn extend_hold(&mut self, p: Principal, id: HoldId, payment_ref: String) -> Result<Reply> {
        let hold = self.hold_for(p, id, "extend another buyer's hold")?;
        live_state(hold)?;
        if hold.extended {
            return reject(Code::InvalidState, "a hold is extended once only");
        }
        check_text("payment_ref", &payment_ref, 1, MAX_REF_LEN)?;
        if self.ix.open_checkouts.len() >= MAX_OPEN_CHECKOUTS {
            return reject(
                Code::LimitExceeded,
                "too many checkouts are waiting for their payment outcome",
            );
        }
        let grace = self.s.performances[&hold.performance].payment_grace_ms;
        let old = hold.expires_at_ms;
        let new = old.max(self.s.clock_ms + grace);
        let hold = self.s.holds.get_mut(&id).expect("exists");
        hold.extended = true;
        hold.payment_ref = Some(payment_ref);
        hold.checkout = Some(Checkout::Started);
        hold.expires_at_ms = new;
        self.ix.open_checkouts.insert(id);
        assert!(self.s.hold_expiry.remove(&(old, id)));
        self.s.hold_expiry.insert((new, id));
        self.emit(Change::HoldExtended {
            hold: id,
            expires_at_ms: new,
        });
        Ok(Reply::HoldExtended { expires_at_ms: new })
    }

    fn confirm_hold(
        &mut self,
        p: Principal,
        id: HoldId,
        payment_ref: String,
        code_seed: CodeSeed,
    ) -> Result<Reply> {
        self.require(p, &[Role::Service, Role::Operator], "confirm holds")?;
        let Some(hold) = self.s.holds.get(&id) else {
            return reject(Code::NotFound, format!("no hold {id}"));
        };
        live_state(hold)?;
        check_checkout_payment(hold, &payment_ref)?;
        self.validate_booking(&payment_ref)?;
        let codes = derive_codes(
            &code_seed,
            hold.quantity() as usize,
            &self.ix.ticket_by_code,
        );
        // Valid: mutate.
        let quantity = u64::from(hold.quantity());
        let booking_id = BookingId(self.next_id());
        let first_ticket = self.s.next_id;
        self.s.next_id += quantity;
        let now = self.s.clock_ms;
        let State {
            holds,
            performances,
            venues,
            hold_expiry,
            ended_holds,
            bookings,
            ..
        } = &mut self.s;
        let hold = holds.get_mut(&id).expect("exists");
        assert!(hold_expiry.remove(&(hold.expires_at_ms, id)));
        let perf = performances.get_mut(&hold.performance).expect("exists");
        let venue = &venues[&perf.venue];
        let mut tickets = Vec::with_capacity(codes.len());
        let mut codes = codes.into_iter();
        let mut ticket_id = first_ticket;
        for &(seat, category) in &hold.seats {
            let cell = &mut perf.seats[seat.0 as usize];
            assert_eq!(cell.get(), SeatState::Held(id));
            *cell = SeatCell::new(SeatState::Sold(booking_id));
            let section = venue.section_of(seat).expect("held seats exist");
            let counts = &mut perf.sections[section.0 as usize];
            counts.held -= 1;
            counts.sold += 1;
            let price_minor = perf
                .price(section, category)
                .expect("validated at hold time");
            tickets.push(Ticket {
                id: TicketId(ticket_id),
                seat: Some(seat),
                section,
                category,
                price_minor,
                code: codes.next().expect("one code per ticket"),
                state: TicketState::Valid,
            });
            ticket_id += 1;
        }
        if let Some((section, quantity, category)) = hold.ga {
            let counts = &mut perf.sections[section.0 as usize];
            counts.held -= u32::from(quantity);
            counts.sold += u32::from(quantity);
            let price_minor = perf
                .price(section, category)
                .expect("validated at hold time");
            for _ in 0..quantity {
                tickets.push(Ticket {
                    id: TicketId(ticket_id),
                    seat: None,
                    section,
                    category,
                    price_minor,
                    code: codes.next().expect("one code per ticket"),
                    state: TicketState::Valid,
                });
                ticket_id += 1;
            }
        }
        perf.revenue_minor += hold.amount.amount_minor;
        hold.state = HoldState::Confirmed(booking_id);
        hold.ended_at_ms = now;
        ended_holds.push_back((now, id));
        if hold.checkout.is_some() {
            hold.checkout = Some(Checkout::Booked);
            self.ix.open_checkouts.remove(&id);
        }
        let receipt = BookingReceipt {
            booking: booking_id,
            tickets: tickets
                .iter()
                .map(|t| TicketReceipt {
                    ticket: t.id,
                    seat: t.seat,
                    section: t.section,
                    category: t.category,
                    price: Money {
                        amount_minor: t.price_minor,
                        currency: perf.currency,
                    },
                    code: t.code,
                })
                .collect(),
            amount: hold.amount,
        };
        for (i, t) in tickets.iter().enumerate() {
            self.ix
                .ticket_by_code
                .insert(t.code, (booking_id, i as u32));
            self.ix.ticket_by_id.insert(t.id, (booking_id, i as u32));
        }
        let (performance, buyer, amount) = (hold.performance, hold.buyer, hold.amount);
        let count = tickets.len() as u32;
        self.ix.bookings_by_buyer.insert((buyer, booking_id));
        self.ix
            .bookings_by_performance
            .insert((performance, booking_id));
        bookings.insert(
            booking_id,
            Booking {
                id: booking_id,
                performance,
                buyer,
                hold: id,
                tickets,
                amount,
                refunded_minor: 0,
                payment_ref,
                confirmed_at_ms: now,
            },
        );
        self.forget_live_hold((performance, buyer));
        self.emit(Change::BookingConfirmed {
            booking: booking_id,
            hold: id,
            performance,
            amount,
            tickets: count,
        });
        Ok(Reply::BookingConfirmed(receipt))
    }

    /// What a booking needs beyond a live hold: a reference, and room for it.
    fn validate_booking(&self, payment_ref: &str) -> Result<()> {
        check_text("payment_ref", payment_ref, 1, MAX_REF_LEN)?;
        if self.s.bookings.len() >= MAX_BOOKINGS {
            return reject(Code::LimitExceeded, "too many bookings");
        }
        Ok(())
    }

    fn confirm_late(
        &mut self,
        p: Principal,
        id: HoldId,
        payment_ref: String,
        code_seed: CodeSeed,
    ) -> Result<Reply> {
        self.require(p, &[Role::Service, Role::Operator], "confirm holds")?;
        let Some(hold) = self.s.holds.get(&id) else {
            return reject(Code::NotFound, format!("no hold {id}"));
        };
        match hold.state {
            HoldState::Expired => {}
            HoldState::Live => {
                return reject(
                    Code::InvalidState,
                    format!("hold {id} is live: confirm it instead"),
                );
            }
            _ => return live_state(hold).map(|()| unreachable!("ended holds are not live")),
        }
        if !hold.extended || hold.payment_ref.as_deref() != Some(payment_ref.as_str()) {
            return reject(
                Code::InvalidState,
                "only a hold extended into checkout with this payment_ref can be booked after it expired",
            );
        }
        check_checkout_payment(hold, &payment_ref)?;
        let perf = &self.s.performances[&hold.performance];
        if perf.status == SaleStatus::Cancelled {
            return reject(
                Code::SaleNotOpen,
                "the performance was cancelled; refund the payment",
            );
        }
        for &(seat, _) in &hold.seats {
            if perf.seats[seat.0 as usize].get() != SeatState::Available {
                return reject(
                    Code::SeatUnavailable,
                    "the seats were taken after the hold expired; refund the payment",
                );
            }
        }
        if let Some((section, quantity, _)) = hold.ga
            && perf.sections[usize::from(section.0)].available() < u32::from(quantity)
        {
            return reject(
                Code::SeatUnavailable,
                "the places were taken after the hold expired; refund the payment",
            );
        }
        self.validate_booking(&payment_ref)?;
        // Valid: put the seats back under the hold, then confirm it exactly as a live one.
        let revived_until_ms = self.s.clock_ms + 1;
        let State {
            holds,
            performances,
            venues,
            hold_expiry,
            ..
        } = &mut self.s;
        let hold = holds.get_mut(&id).expect("exists");
        let perf = performances.get_mut(&hold.performance).expect("exists");
        let venue = &venues[&perf.venue];
        for &(seat, _) in &hold.seats {
            perf.seats[seat.0 as usize] = SeatCell::new(SeatState::Held(id));
            perf.sections[venue.section_of(seat).expect("seat in a section").0 as usize].held += 1;
        }
        if let Some((section, quantity, _)) = hold.ga {
            perf.sections[usize::from(section.0)].held += u32::from(quantity);
        }
        hold.state = HoldState::Live;
        hold.expires_at_ms = revived_until_ms;
        hold_expiry.insert((hold.expires_at_ms, id));
        // An expired hold with an open checkout was never queued for forgetting (checked by
        // `check_invariants`), so nothing is taken out of `ended_holds` here.
        *self
            .ix
            .live_holds
            .entry((hold.performance, hold.buyer))
            .or_default() += 1;
        self.ix.live_hold_count += 1;
        let reply = self.confirm_hold(p, id, payment_ref, code_seed);
        assert!(
            reply.is_ok(),
            "confirm of a validated revived hold failed: {reply:?}"
        );
        reply
    }

    fn record_payment(
        &mut self,
        p: Principal,
        id: HoldId,
        payment_ref: String,
        event: PaymentEvent,
    ) -> Result<Reply> {
        self.require(p, &[Role::Service, Role::Operator], "record payments")?;
        // The event itself first: a malformed one is 422 whatever the checkout's state.
        match &event {
            PaymentEvent::Captured { provider_ref } => {
                check_text("provider_ref", provider_ref, 1, MAX_REF_LEN)?
            }
            PaymentEvent::Failed { reason } => check_text("reason", reason, 1, MAX_REF_LEN)?,
            PaymentEvent::Refunded {
                provider_ref,
                reason,
            } => {
                check_text("provider_ref", provider_ref, 1, MAX_REF_LEN)?;
                check_text("reason", reason, 1, MAX_REF_LEN)?;
            }
        }
        let Some(hold) = self.s.holds.get(&id) else {
            return reject(Code::NotFound, format!("no hold {id}"));
        };
        let Some(checkout) = &hold.checkout else {
            return reject(
                Code::InvalidState,
                format!("hold {id} is not in checkout: extend it with a payment_ref first"),
            );
        };
        if hold.payment_ref.as_deref() != Some(payment_ref.as_str()) {
            return reject(
                Code::InvalidState,
                format!("hold {id} is in checkout under another payment_ref"),
            );
        }
        let (next, state) = match (&event, checkout) {
            (PaymentEvent::Captured { provider_ref }, Checkout::Started) => (
                Checkout::Captured {
                    provider_ref: provider_ref.clone(),
                },
                PaymentState::Captured,
            ),
            (PaymentEvent::Failed { reason }, Checkout::Started) => (
                Checkout::Failed {
                    reason: reason.clone(),
                },
                PaymentState::Failed,
            ),
            (
                PaymentEvent::Refunded {
                    provider_ref,
                    reason,
                },
                Checkout::Started | Checkout::Captured { .. },
            ) => (
                Checkout::Refunded {
                    provider_ref: provider_ref.clone(),
                    reason: reason.clone(),
                },
                PaymentState::Refunded,
            ),
            // A repeat of the event that made the state: the same answer, no change.
            (
                PaymentEvent::Captured { provider_ref: a },
                Checkout::Captured { provider_ref: b },
            ) if a == b => {
                return Ok(Reply::PaymentRecorded {
                    checkout: checkout.clone(),
                });
            }
            (PaymentEvent::Failed { .. }, Checkout::Failed { .. })
            | (PaymentEvent::Refunded { .. }, Checkout::Refunded { .. }) => {
                return Ok(Reply::PaymentRecorded {
                    checkout: checkout.clone(),
                });
            }
            (_, current) => {
                return reject(
                    Code::InvalidState,
                    format!(
                        "checkout of hold {id} is {}: a {} payment does not fit",
                        current.name(),
                        event.name()
                    ),
                );
            }
        };
        // Valid: mutate.
        let (live, performance) = (hold.state == HoldState::Live, hold.performance);
        let closes = !next.is_open();
        self.s.holds.get_mut(&id).expect("exists").checkout = Some(next.clone());
        if closes {
            self.ix.open_checkouts.remove(&id);
            if live {
                // No booking will come: the seats go back on sale now.
                self.end_hold(id, HoldState::Released);
                self.emit(Change::HoldReleased {
                    hold: id,
                    performance,
                });
            } else {
                // It ended while the checkout was open: forget it in due course.
                self.s.ended_holds.push_back((self.s.clock_ms, id));
            }
        }
        self.emit(Change::PaymentRecorded {
            hold: id,
            performance,
            state,
        });
        Ok(Reply::PaymentRecorded { checkout: next })
    }

    fn refund(
        &mut self,
        p: Principal,
        id: BookingId,
        tickets: &[TicketId],
        refund_ref: String,
    ) -> Result<Reply> {
        self.require(p, &[Role::Service, Role::Operator], "refund bookings")?;
        let Some(booking) = self.s.bookings.get(&id) else {
            return reject(Code::NotFound, format!("no booking {id}"));
        };
        check_text("refund_ref", &refund_ref, 1, MAX_REF_LEN)?;
        let positions: Vec<usize> = if tickets.is_empty() {
            let valid: Vec<usize> = (0..booking.tickets.len())
                .filter(|&i| booking.tickets[i].state == TicketState::Valid)
                .collect();
            if valid.is_empty() {
                return reject(
                    Code::TicketUsed,
                    "every ticket of this booking is refunded or checked in",
                );
            }
            valid
        } else {
            if tickets.len() > booking.tickets.len() {
                return reject(Code::InvalidInput, "more tickets than the booking has");
            }
            let mut positions = Vec::with_capacity(tickets.len());
            for (i, t) in tickets.iter().enumerate() {
                if tickets[..i].contains(t) {
                    return reject(Code::InvalidInput, format!("ticket {t} is listed twice"));
                }
                let Some(pos) = booking.tickets.iter().position(|x| x.id == *t) else {
                    return reject(Code::NotFound, format!("booking {id} has no ticket {t}"));
                };
                if booking.tickets[pos].state != TicketState::Valid {
                    return reject(
                        Code::TicketUsed,
                        format!("ticket {t} is already refunded or checked in"),
                    );
                }
                positions.push(pos);
            }
            positions
        };
        // Valid: mutate.
        let State {
            bookings,
            performances,
            venues,
            ..
        } = &mut self.s;
        let booking = bookings.get_mut(&id).expect("exists");
        let perf = performances.get_mut(&booking.performance).expect("exists");
        let venue = &venues[&perf.venue];
        let mut amount_minor = 0;
        let mut refunded = Vec::with_capacity(positions.len());
        for pos in positions {
            let t = &mut booking.tickets[pos];
            t.state = TicketState::Refunded;
            amount_minor += t.price_minor;
            refunded.push(t.id);
            let counts = &mut perf.sections[t.section.0 as usize];
            counts.sold -= 1;
            if let Some(seat) = t.seat {
                let cell = &mut perf.seats[seat.0 as usize];
                assert_eq!(cell.get(), SeatState::Sold(id));
                *cell = SeatCell::AVAILABLE;
                debug_assert_eq!(venue.section_of(seat), Some(t.section));
            }
        }
        perf.revenue_minor -= amount_minor;
        booking.refunded_minor += amount_minor;
        let amount = Money {
            amount_minor,
            currency: perf.currency,
        };
        let performance = booking.performance;
        let count = refunded.len() as u32;
        self.reopen_sold_out_room(performance);
        self.emit(Change::BookingRefunded {
            booking: id,
            performance,
            amount,
            tickets: count,
        });
        Ok(Reply::Refunded {
            amount,
            tickets: refunded,
        })
    }

    fn check_in(
        &mut self,
        p: Principal,
        performance: PerformanceId,
        code: CheckInCode,
    ) -> Result<Reply> {
        let perf = self.performance(performance)?;
        let role = self.require(
            p,
            &[Role::Organizer, Role::Service, Role::Operator],
            "check tickets in",
        )?;
        if role == Role::Organizer && p != perf.owner {
            return reject(
                Code::Forbidden,
                "only the performance's organizer checks its tickets in",
            );
        }
        let found = self.ix.ticket_by_code.get(&code).copied();
        let Some((booking, pos)) =
            found.filter(|(b, _)| self.s.bookings[b].performance == performance)
        else {
            return reject(
                Code::NotFound,
                "no ticket with this code for this performance",
            );
        };
        let t = &mut self.s.bookings.get_mut(&booking).expect("indexed").tickets[pos as usize];
        if t.state != TicketState::Valid {
            return reject(Code::TicketUsed, "this ticket was already used or refunded");
        }
        t.state = TicketState::CheckedIn;
        let ticket = t.id;
        self.emit(Change::TicketCheckedIn { ticket, booking });
        Ok(Reply::CheckedIn { ticket, booking })
    }
}

// -------------------------------------------------------------------- pure helpers

/// `Ok` for a live hold; the right rejection for an ended one.
/// A hold in checkout is booked only under its own payment reference, and only while the
/// checkout is open (not after its payment failed or was refunded).
fn check_checkout_payment(hold: &Hold, payment_ref: &str) -> Result<()> {
    match &hold.checkout {
        None => Ok(()),
        Some(_) if hold.payment_ref.as_deref() != Some(payment_ref) => reject(
            Code::InvalidState,
            format!("hold {} is in checkout under another payment_ref", hold.id),
        ),
        Some(c) if !c.is_open() => reject(
            Code::InvalidState,
            format!(
                "checkout of hold {} is {}: it cannot be booked",
                hold.id,
                c.name()
            ),
        ),
        Some(_) => Ok(()),
    }
}

fn live_state(hold: &Hold) -> Result<()> {
    match hold.state {
        HoldState::Live => Ok(()),
        HoldState::Expired => reject(
            Code::HoldExpired,
            format!("hold {} expired; its seats are back on sale", hold.id),
        ),
        HoldState::Released => reject(Code::HoldNotLive, format!("hold {} was released", hold.id)),
        HoldState::Confirmed(b) => reject(
            Code::HoldNotLive,
            format!("hold {} is already booking {b}", hold.id),
        ),
    }
}

/// Text must be `min..=max` bytes and free of control characters.
fn check_text(field: &str, s: &str, min: usize, max: usize) -> Result<()> {
    if s.len() < min || s.len() > max {
        return reject(
            Code::InvalidInput,
            format!("{field} must be {min}..={max} bytes"),
        );
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return reject(
            Code::InvalidInput,
            format!("{field} must not contain control characters"),
        );
    }
    Ok(())
}

fn build_sections(specs: Vec<SectionSpec>) -> Result<Vec<Section>> {
    if specs.is_empty() || specs.len() > MAX_SECTIONS_PER_VENUE {
        return reject(
            Code::InvalidInput,
            format!("a venue has 1..={MAX_SECTIONS_PER_VENUE} sections"),
        );
    }
    let mut sections: Vec<Section> = Vec::with_capacity(specs.len());
    let mut next_seat: u32 = 0;
    for spec in specs {
        let (name, kind) = match spec {
            SectionSpec::Seated { name, rows } => {
                if rows.is_empty() || rows.len() > MAX_ROWS_PER_SECTION {
                    return reject(
                        Code::InvalidInput,
                        format!("section {name:?} needs 1..={MAX_ROWS_PER_SECTION} rows"),
                    );
                }
                let first_seat = next_seat;
                let mut built: Vec<Row> = Vec::with_capacity(rows.len());
                for r in rows {
                    check_text("row label", &r.label, 1, MAX_LABEL_LEN)?;
                    if r.label.contains(':') {
                        return reject(Code::InvalidInput, "row labels must not contain ':'");
                    }
                    if built.iter().any(|b| b.label == r.label) {
                        return reject(
                            Code::InvalidInput,
                            format!("row {:?} appears twice in {name:?}", r.label),
                        );
                    }
                    if r.seats == 0 || r.seats > MAX_SEATS_PER_ROW {
                        return reject(
                            Code::InvalidInput,
                            format!("a row has 1..={MAX_SEATS_PER_ROW} seats"),
                        );
                    }
                    if next_seat + r.seats > MAX_SEATS_PER_VENUE {
                        return reject(
                            Code::LimitExceeded,
                            format!("a venue has at most {MAX_SEATS_PER_VENUE} seats"),
                        );
                    }
                    built.push(Row {
                        label: r.label,
                        first_seat: next_seat,
                        seats: r.seats,
                    });
                    next_seat += r.seats;
                }
                (
                    name,
                    SectionKind::Seated {
                        first_seat,
                        seats: next_seat - first_seat,
                        rows: built,
                    },
                )
            }
            SectionSpec::GeneralAdmission { name, capacity } => {
                if capacity == 0 || capacity > MAX_GA_CAPACITY_PER_SECTION {
                    return reject(
                        Code::InvalidInput,
                        format!("GA capacity is 1..={MAX_GA_CAPACITY_PER_SECTION}"),
                    );
                }
                (name, SectionKind::GeneralAdmission { capacity })
            }
        };
        check_text("section name", &name, 1, MAX_NAME_LEN)?;
        if name.contains(':') {
            return reject(Code::InvalidInput, "section names must not contain ':'");
        }
        if sections.iter().any(|s| s.name == name) {
            return reject(
                Code::InvalidInput,
                format!("section {name:?} appears twice"),
            );
        }
        sections.push(Section { name, kind });
    }
    Ok(sections)
}

/// Checks a performance spec against its venue; returns the one currency of its prices.
fn validate_performance(spec: &PerformanceSpec, venue: &Venue) -> Result<Currency> {
    if spec.on_sale_at_ms >= spec.sale_ends_at_ms {
        return reject(Code::InvalidInput, "the sale must open before it ends");
    }
    if !(MIN_HOLD_TTL_MS..=MAX_HOLD_TTL_MS).contains(&spec.hold_ttl_ms) {
        return reject(
            Code::InvalidInput,
            format!("hold TTL is {MIN_HOLD_TTL_MS}..={MAX_HOLD_TTL_MS} ms"),
        );
    }
    if spec.payment_grace_ms > MAX_PAYMENT_GRACE_MS {
        return reject(
            Code::InvalidInput,
            format!("payment grace is at most {MAX_PAYMENT_GRACE_MS} ms"),
        );
    }
    if spec.max_seats_per_order == 0 || spec.max_seats_per_order > MAX_SEATS_PER_ORDER {
        return reject(
            Code::InvalidInput,
            format!("max seats per order is 1..={MAX_SEATS_PER_ORDER}"),
        );
    }
    if spec.categories.is_empty() || spec.categories.len() > MAX_CATEGORIES_PER_PERFORMANCE {
        return reject(
            Code::InvalidInput,
            format!("give 1..={MAX_CATEGORIES_PER_PERFORMANCE} ticket categories"),
        );
    }
    for (i, c) in spec.categories.iter().enumerate() {
        check_text("category", c, 1, MAX_LABEL_LEN)?;
        if spec.categories[..i].contains(c) {
            return reject(Code::InvalidInput, format!("category {c:?} appears twice"));
        }
    }
    let Some(first) = spec.prices.first() else {
        return reject(Code::InvalidInput, "give at least one price");
    };
    let currency = first.price.currency;
    let max_prices = venue.sections.len() * spec.categories.len();
    if spec.prices.len() > max_prices {
        return reject(Code::InvalidInput, "more prices than sections × categories");
    }
    for (i, p) in spec.prices.iter().enumerate() {
        if usize::from(p.section.0) >= venue.sections.len() {
            return reject(
                Code::InvalidInput,
                format!("the venue has no section {}", p.section.0),
            );
        }
        if usize::from(p.category.0) >= spec.categories.len() {
            return reject(
                Code::InvalidInput,
                format!("no ticket category {}", p.category.0),
            );
        }
        if !p.price.currency.is_valid() || p.price.currency != currency {
            return reject(
                Code::InvalidInput,
                "all prices of a performance share one ISO 4217 currency",
            );
        }
        if p.price.amount_minor > MAX_PRICE_MINOR {
            return reject(
                Code::InvalidInput,
                format!("a price is at most {MAX_PRICE_MINOR} minor units"),
            );
        }
        if spec.prices[..i]
            .iter()
            .any(|q| q.section == p.section && q.category == p.category)
        {
            return reject(
                Code::InvalidInput,
                "a section and category are priced twice",
            );
        }
    }
    if let Some(w) = &spec.waiting_room {
        if w.admission_rate_per_sec == 0 || w.admission_rate_per_sec > MAX_ADMISSION_RATE_PER_SEC {
            return reject(
                Code::InvalidInput,
                format!("admission rate is 1..={MAX_ADMISSION_RATE_PER_SEC} per second"),
            );
        }
        if !(MIN_ADMISSION_TTL_MS..=MAX_ADMISSION_TTL_MS).contains(&w.admission_ttl_ms) {
            return reject(
                Code::InvalidInput,
                format!("admission TTL is {MIN_ADMISSION_TTL_MS}..={MAX_ADMISSION_TTL_MS} ms"),
            );
        }
    }
    Ok(currency)
}

/// Checks a hold request against the inventory; returns its amount in minor units.
fn validate_hold_request(perf: &Performance, venue: &Venue, what: &HoldRequest) -> Result<u64> {
    let max = usize::from(perf.max_seats_per_order);
    let category_ok = |c: CategoryIdx| usize::from(c.0) < perf.categories.len();
    match what {
        HoldRequest::Seats(list) => {
            if list.is_empty() {
                return reject(Code::InvalidInput, "name at least one seat");
            }
            if list.len() > max {
                return reject(
                    Code::LimitExceeded,
                    format!("at most {max} seats per order"),
                );
            }
            let mut amount = 0u64;
            for (i, &(seat, category)) in list.iter().enumerate() {
                let Some(cell) = perf.seats.get(seat.0 as usize) else {
                    return reject(
                        Code::InvalidInput,
                        format!("no seat {} in this venue", seat.0),
                    );
                };
                if list[..i].iter().any(|(s, _)| *s == seat) {
                    return reject(
                        Code::InvalidInput,
                        format!("seat {} is named twice", seat.0),
                    );
                }
                if !category_ok(category) {
                    return reject(
                        Code::InvalidInput,
                        format!("no ticket category {}", category.0),
                    );
                }
                let section = venue
                    .section_of(seat)
                    .expect("every seat index is in a section");
                let Some(price) = perf.price(section, category) else {
                    return reject(
                        Code::InvalidInput,
                        "that ticket category is not sold in that section",
                    );
                };
                if cell.get() != SeatState::Available {
                    let name = venue
                        .seat_name(seat)
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    return reject(
                        Code::SeatUnavailable,
                        format!("seat {name} is not available"),
                    );
                }
                amount += price;
            }
            Ok(amount)
        }
        &HoldRequest::GeneralAdmission {
            section,
            quantity,
            category,
        } => {
            let Some(sec) = venue.sections.get(usize::from(section.0)) else {
                return reject(Code::InvalidInput, format!("no section {}", section.0));
            };
            if sec.is_seated() {
                return reject(Code::InvalidInput, "that section is seated: name the seats");
            }
            if quantity == 0 {
                return reject(Code::InvalidInput, "quantity must be at least 1");
            }
            if usize::from(quantity) > max {
                return reject(
                    Code::LimitExceeded,
                    format!("at most {max} places per order"),
                );
            }
            if !category_ok(category) {
                return reject(
                    Code::InvalidInput,
                    format!("no ticket category {}", category.0),
                );
            }
            let Some(price) = perf.price(section, category) else {
                return reject(
                    Code::InvalidInput,
                    "that ticket category is not sold in that section",
                );
            };
            if perf.sections[usize::from(section.0)].available() < u32::from(quantity) {
                return reject(
                    Code::SeatUnavailable,
                    format!("fewer than {quantity} places left in {}", sec.name),
                );
            }
            Ok(price * u64::from(quantity))
        }
        HoldRequest::BestAvailable { .. } => reject(
            Code::InvalidInput,
            "a best-available hold is resolved to seats before it is validated",
        ),
    }
}

/// The seats of a best-available hold: the first `quantity` free seats side by side in one
/// row of a seated section, front row first, then left to right. One scan of the section
/// (at most [`MAX_BEST_AVAILABLE_SECTION_SEATS`] seats); category and price are checked
/// afterwards as for named seats.
fn best_available(
    perf: &Performance,
    venue: &Venue,
    section: SectionIdx,
    quantity: u16,
    category: CategoryIdx,
) -> Result<Vec<(SeatIdx, CategoryIdx)>> {
    let Some(sec) = venue.sections.get(usize::from(section.0)) else {
        return reject(Code::InvalidInput, format!("no section {}", section.0));
    };
    let SectionKind::Seated { seats, rows, .. } = &sec.kind else {
        return reject(
            Code::InvalidInput,
            "that section is general admission: ask for places",
        );
    };
    if quantity == 0 {
        return reject(Code::InvalidInput, "quantity must be at least 1");
    }
    if quantity > perf.max_seats_per_order {
        return reject(
            Code::LimitExceeded,
            format!("at most {} seats per order", perf.max_seats_per_order),
        );
    }
    if *seats > MAX_BEST_AVAILABLE_SECTION_SEATS {
        return reject(
            Code::InvalidInput,
            format!(
                "best available is offered in sections of up to {MAX_BEST_AVAILABLE_SECTION_SEATS} seats; name the seats in {}",
                sec.name
            ),
        );
    }
    let want = u32::from(quantity);
    if perf.sections[usize::from(section.0)].available() < want {
        return reject(
            Code::SeatUnavailable,
            format!("fewer than {quantity} seats left in {}", sec.name),
        );
    }
    if let Some((first, _)) = perf.free_runs(rows).find(|&(_, len)| len >= want) {
        return Ok((first..first + want)
            .map(|s| (SeatIdx(s), category))
            .collect());
    }
    reject(
        Code::SeatUnavailable,
        format!(
            "no {quantity} seats side by side left in {}; ask for fewer",
            sec.name
        ),
    )
}

/// The rank that orders a pre-queue entry at opening: `blake3(domain ‖ seed ‖ queue id)`.
/// Public so anyone can recompute the order from the change feed.
pub fn prequeue_rank(seed: &Digest32, queue: QueueId) -> Digest32 {
    let mut h = blake3::Hasher::new();
    h.update(b"ticketledger/prequeue/v1");
    h.update(seed);
    h.update(&queue.performance.0.to_le_bytes());
    h.update(&queue.join_index.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Reveal the seed: the pre-queue is shuffled by rank and goes ahead of later joiners.
fn open_room(room: &mut WaitingRoom, id: PerformanceId, seed: Digest32) -> u32 {
    room.seed = Some(seed);
    let mut pre = std::mem::take(&mut room.prequeue);
    pre.sort_by_cached_key(|&j| {
        (
            prequeue_rank(
                &seed,
                QueueId {
                    performance: id,
                    join_index: j,
                },
            ),
            j,
        )
    });
    let n = pre.len() as u32;
    for j in pre {
        let e = &mut room.entries[j as usize];
        e.state = QueueState::Waiting;
        e.seq = room.next_seq;
        room.next_seq += 1;
        room.order.push_back(j);
    }
    n
}

/// Everyone still waiting (or admitted) is told the sale is over. Returns how many waited.
fn close_room(
    room: &mut WaitingRoom,
    id: PerformanceId,
    admission_expiry: &mut std::collections::BTreeSet<(u64, QueueId)>,
) -> u32 {
    let mut waiting = 0;
    for (j, e) in room.entries.iter_mut().enumerate() {
        match e.state {
            QueueState::PreQueue | QueueState::Waiting => waiting += 1,
            QueueState::Admitted => {
                let queue = QueueId {
                    performance: id,
                    join_index: j as u32,
                };
                assert!(admission_expiry.remove(&(e.admitted_until_ms, queue)));
                room.active_admissions -= 1;
            }
            QueueState::Expired | QueueState::Closed => continue,
        }
        e.state = QueueState::Closed;
    }
    room.order.clear();
    room.prequeue.clear();
    waiting
}

/// What identifies a request for idempotency: a digest of its canonical encoding. Values the
/// proposer draws at random (the check-in code seed) are not the client's request, so they are
/// left out: a retry drawn with a new seed is the same request.
fn fingerprint(op: &Op) -> [u8; 16] {
    let normalized;
    let op = match op {
        Op::ConfirmHold {
            hold, payment_ref, ..
        } => {
            normalized = Op::ConfirmHold {
                hold: *hold,
                payment_ref: payment_ref.clone(),
                code_seed: [0; 16],
            };
            &normalized
        }
        Op::ConfirmLate {
            hold, payment_ref, ..
        } => {
            normalized = Op::ConfirmLate {
                hold: *hold,
                payment_ref: payment_ref.clone(),
                code_seed: [0; 16],
            };
            &normalized
        }
        other => other,
    };
    let bytes = postcard::to_stdvec(op).expect("ops always encode");
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
    out
}

/// The check-in codes of a booking of `n` tickets: `blake3(seed, i)` for i = 0, 1, ...,
/// skipping any code a ticket already has, so they are unique and every replica derives the
/// same ones.
fn derive_codes(
    seed: &CodeSeed,
    n: usize,
    taken: &HashMap<CheckInCode, (BookingId, u32)>,
) -> Vec<CheckInCode> {
    let mut codes: Vec<CheckInCode> = Vec::with_capacity(n);
    let mut i: u64 = 0;
    while codes.len() < n {
        let mut h = blake3::Hasher::new();
        h.update(b"ticketledger check-in code v1");
        h.update(seed);
        h.update(&i.to_le_bytes());
        let mut code = [0u8; 16];
        code.copy_from_slice(&h.finalize().as_bytes()[..16]);
        if !taken.contains_key(&code) && !codes.contains(&code) {
            codes.push(code);
        }
        i += 1;
    }
    codes
}

/// Count of idempotency records per principal (for tests and metrics).
pub(crate) fn count_by_principal(s: &State) -> BTreeMap<Principal, usize> {
    let mut m = BTreeMap::new();
    for (p, _) in s.idempotency.keys() {
        *m.entry(*p).or_default() += 1;
    }
    m
}
