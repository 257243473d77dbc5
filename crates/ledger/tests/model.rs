//! The ledger against a small reference model.
//!
//! The model keeps seats, holds, bookings, refunds and one waiting room in the plainest data
//! structures there are (arrays and vectors scanned linearly) and states the rules directly.
//! Proptest drives both with random sequences of valid and invalid commands, ticks and clock
//! jumps (backwards too); after every step the outcome codes and the important reply fields
//! must agree, and `check_invariants()` must hold. Snapshots are taken mid-run and must replay
//! to the same state hash.
//!
//! Validation order is part of the contract (which code wins when several apply); the model
//! states it in the order the checks appear in each rule below.

use ledger::*;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
const SEATS: usize = 8;
const GA_CAPACITY: u32 = 5;
const TTL: u64 = 10_000;
const GRACE: u64 = 20_000;
const MAX_ORDER: usize = 3;
const ADMISSION_TTL: u64 = 10_000;
const ADMISSION_RATE: u64 = 1;
const MAX_ACTIVE: u32 = 2;
const BUYERS: usize = 4;
/// Prices by (section, category): section 0 seated, section 1 GA; category 1 is not sold in GA.
const PRICES: [[Option<u64>; 2]; 2] = [[Some(1000), Some(500)], [Some(300), None]];
const SEED: [u8; 32] = [7; 32];

// ------------------------------------------------------------------ the model

#[derive(Clone, Copy, Debug, PartialEq)]
enum MSeat {
    Avail,
    Blocked,
    Held(usize),
    Sold(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MHoldState {
    Live,
    Released,
    Expired,
    Confirmed,
}

#[derive(Clone, Debug)]
struct MHold {
    id: HoldId,
    perf: usize,
    buyer: Principal,
    seats: Vec<(usize, usize)>,
    ga: u32,
    amount: u64,
    expires_at: u64,
    extended: bool,
    state: MHoldState,
    ended_at: u64,
}

#[derive(Clone, Debug)]
struct MTicket {
    id: TicketId,
    seat: Option<usize>,
    price: u64,
    valid: bool,
}

#[derive(Clone, Debug)]
struct MBooking {
    id: BookingId,
    perf: usize,
    tickets: Vec<MTicket>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MQ {
    Pre,
    Waiting,
    Admitted(u64),
    Expired,
    Closed,
}

#[derive(Clone, Debug)]
struct MPerf {
    id: PerformanceId,
    seats: [MSeat; SEATS],
    ga_held: u32,
    ga_sold: u32,
    on_sale: bool,
    revenue: u64,
}

impl MPerf {
    fn available(&self) -> u32 {
        self.seats.iter().filter(|s| **s == MSeat::Avail).count() as u32 + GA_CAPACITY
            - self.ga_held
            - self.ga_sold
    }
    fn held(&self) -> u32 {
        self.seats
            .iter()
            .filter(|s| matches!(s, MSeat::Held(_)))
            .count() as u32
            + self.ga_held
    }
}

#[derive(Clone, Debug)]
struct Model {
    clock: u64,
    perfs: [MPerf; 2],
    holds: Vec<MHold>,
    bookings: Vec<MBooking>,
    /// Perf 1's waiting room: (buyer, state), by join index; `order` holds waiting join indices.
    queue: Vec<(Principal, MQ)>,
    order: Vec<usize>,
    seed_revealed: bool,
    sold_out: bool,
    credit_milli: u64,
    last_accrual: u64,
    used_codes: Vec<CheckInCode>,
}

/// What the model expects: a rejection code, or success with the fields worth comparing.
#[derive(Debug, PartialEq)]
enum Expect {
    Reject(Code),
    Hold {
        amount: u64,
        expires_at: u64,
        quantity: u32,
    },
    Booking {
        amount: u64,
        tickets: usize,
    },
    Refund {
        amount: u64,
    },
    Extended {
        expires_at: u64,
    },
    Joined {
        position: Option<u64>,
    },
    Ok,
}

fn rej(c: Code) -> Expect {
    Expect::Reject(c)
}

impl Model {
    fn sweep(&mut self) {
        for h in 0..self.holds.len() {
            if self.holds[h].state == MHoldState::Live && self.holds[h].expires_at <= self.clock {
                self.end_hold(h, MHoldState::Expired);
            }
        }
        for e in &mut self.queue {
            if let MQ::Admitted(until) = e.1
                && until <= self.clock
            {
                e.1 = MQ::Expired;
            }
        }
    }

    fn end_hold(&mut self, h: usize, state: MHoldState) {
        let hold = &mut self.holds[h];
        hold.state = state;
        hold.ended_at = self.clock;
        let perf = &mut self.perfs[hold.perf];
        for &(s, _) in &hold.seats {
            perf.seats[s] = MSeat::Avail;
        }
        perf.ga_held -= hold.ga;
    }

    /// Ended holds are forgotten an hour after they end.
    fn hold_visible(&self, h: usize) -> bool {
        let hold = &self.holds[h];
        hold.state == MHoldState::Live
            || hold.ended_at + limits::ENDED_HOLD_RETENTION_MS > self.clock
    }

    fn live_holds(&self, perf: usize, buyer: Principal) -> usize {
        self.holds
            .iter()
            .filter(|h| h.perf == perf && h.buyer == buyer && h.state == MHoldState::Live)
            .count()
    }

    fn admitted(&self, buyer: Principal) -> bool {
        self.queue
            .iter()
            .any(|(b, s)| *b == buyer && matches!(s, MQ::Admitted(_)))
    }

    fn hold_rule(
        &self,
        who: Who,
        perf: usize,
        seats: &[(usize, usize)],
        ga: Option<(u32, usize)>,
    ) -> Expect {
        let Some(buyer) = who.buyer() else {
            return rej(Code::Forbidden);
        };
        let p = &self.perfs[perf];
        if !p.on_sale {
            return rej(Code::SaleNotOpen);
        }
        if perf == 1 && !self.admitted(buyer) {
            return rej(Code::AdmissionRequired);
        }
        if p.available() == 0 {
            return rej(if p.held() == 0 {
                Code::SoldOut
            } else {
                Code::SeatUnavailable
            });
        }
        if self.live_holds(perf, buyer) >= usize::from(limits::MAX_HOLDS_PER_BUYER_PER_PERFORMANCE)
        {
            return rej(Code::LimitExceeded);
        }
        let mut amount = 0;
        if let Some((qty, cat)) = ga {
            if qty == 0 {
                return rej(Code::InvalidInput);
            }
            if qty as usize > MAX_ORDER {
                return rej(Code::LimitExceeded);
            }
            if cat >= 2 {
                return rej(Code::InvalidInput);
            }
            let Some(price) = PRICES[1][cat] else {
                return rej(Code::InvalidInput);
            };
            if GA_CAPACITY - p.ga_held - p.ga_sold < qty {
                return rej(Code::SeatUnavailable);
            }
            return Expect::Hold {
                amount: price * u64::from(qty),
                expires_at: self.clock + TTL,
                quantity: qty,
            };
        }
        if seats.is_empty() {
            return rej(Code::InvalidInput);
        }
        if seats.len() > MAX_ORDER {
            return rej(Code::LimitExceeded);
        }
        for (i, &(s, cat)) in seats.iter().enumerate() {
            if s >= SEATS || seats[..i].iter().any(|x| x.0 == s) || cat >= 2 {
                return rej(Code::InvalidInput);
            }
            let Some(price) = PRICES[0][cat] else {
                return rej(Code::InvalidInput);
            };
            if p.seats[s] != MSeat::Avail {
                return rej(Code::SeatUnavailable);
            }
            amount += price;
        }
        Expect::Hold {
            amount,
            expires_at: self.clock + TTL,
            quantity: seats.len() as u32,
        }
    }

    fn place(
        &mut self,
        id: HoldId,
        who: Who,
        perf: usize,
        seats: Vec<(usize, usize)>,
        ga: Option<(u32, usize)>,
        amount: u64,
    ) {
        let h = self.holds.len();
        let p = &mut self.perfs[perf];
        for &(s, _) in &seats {
            p.seats[s] = MSeat::Held(h);
        }
        let ga = ga.map_or(0, |g| g.0);
        p.ga_held += ga;
        self.holds.push(MHold {
            id,
            perf,
            buyer: who.buyer().expect("only buyers hold"),
            seats,
            ga,
            amount,
            expires_at: self.clock + TTL,
            extended: false,
            state: MHoldState::Live,
            ended_at: 0,
        });
    }

    /// Release, extend: the holder, or a service.
    fn may_touch(&self, who: Who, h: usize) -> bool {
        who == Who::Service || who.buyer() == Some(self.holds[h].buyer)
    }

    fn live_code(&self, h: usize) -> Option<Code> {
        match self.holds[h].state {
            MHoldState::Live => None,
            MHoldState::Expired => Some(Code::HoldExpired),
            MHoldState::Released | MHoldState::Confirmed => Some(Code::HoldNotLive),
        }
    }

    fn tick(&mut self) {
        if !self.perfs[1].on_sale || self.sold_out {
            return;
        }
        let p = &self.perfs[1];
        if p.available() == 0 {
            self.last_accrual = self.clock;
            self.credit_milli = 0;
            if p.held() == 0 {
                self.sold_out = true;
                for e in &mut self.queue {
                    if matches!(e.1, MQ::Pre | MQ::Waiting | MQ::Admitted(_)) {
                        e.1 = MQ::Closed;
                    }
                }
                self.order.clear();
            }
            return;
        }
        let elapsed = self.clock - self.last_accrual;
        self.last_accrual = self.clock;
        self.credit_milli =
            (self.credit_milli + elapsed * ADMISSION_RATE).min(ADMISSION_RATE * 1000);
        let active = self
            .queue
            .iter()
            .filter(|e| matches!(e.1, MQ::Admitted(_)))
            .count() as u32;
        let n = ((self.credit_milli / 1000) as usize)
            .min(self.order.len())
            .min((MAX_ACTIVE - active) as usize);
        self.credit_milli -= n as u64 * 1000;
        for j in self.order.drain(..n) {
            self.queue[j].1 = MQ::Admitted(self.clock + ADMISSION_TTL);
        }
    }

    fn reopen_if_stock(&mut self) {
        if self.sold_out && self.perfs[1].available() > 0 {
            self.sold_out = false;
            self.last_accrual = self.clock;
        }
    }
}

// ------------------------------------------------------------------ steps

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Buyer(usize),
    Service,
    Organizer,
}

impl Who {
    fn buyer(self) -> Option<Principal> {
        match self {
            Who::Buyer(i) => Some(Principal::User(UserId(BUYER_IDS[i]))),
            _ => None,
        }
    }
}

/// Buyer user ids are fixed by the fixture's command order (asserted there).
const BUYER_IDS: [u64; BUYERS] = [4, 5, 6, 7];

#[derive(Clone, Debug)]
enum Step {
    /// Move the proposer's clock by `ms - 5000` (so sometimes backwards).
    Advance(u64),
    Tick,
    Hold {
        who: Who,
        perf: usize,
        seats: Vec<(usize, usize)>,
    },
    HoldGa {
        who: Who,
        perf: usize,
        qty: u32,
        cat: usize,
    },
    Release {
        who: Who,
        hold: usize,
    },
    Extend {
        who: Who,
        hold: usize,
    },
    Confirm {
        who: Who,
        hold: usize,
        /// The code seed: from a small range, so seeds repeat and the ledger must still
        /// make every ticket's code unique.
        seed: u8,
    },
    Refund {
        booking: usize,
        tickets: Vec<usize>,
    },
    Join {
        who: Who,
        perf: usize,
    },
    Open {
        good_seed: bool,
    },
    Block {
        perf: usize,
        seat: usize,
        blocked: bool,
    },
    /// Resubmit the n-th keyed command: the same op, or another op under the same key.
    Retry {
        n: usize,
        same: bool,
    },
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        8 => (0..BUYERS).prop_map(Who::Buyer),
        1 => Just(Who::Service),
        1 => Just(Who::Organizer),
    ]
}

const NONE: usize = usize::MAX;

/// Mostly one of the newest few holds or bookings; sometimes one that never existed.
fn hold_ref() -> impl Strategy<Value = usize> {
    prop_oneof![10 => 0..4usize, 1 => Just(NONE)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Whole seconds mostly, so stamps land exactly on expiry times (off-by-one bugs).
        3 => (0u64..17).prop_map(|s| Step::Advance(s * 1000)),
        1 => (0u64..16_000).prop_map(Step::Advance),
        3 => Just(Step::Tick),
        8 => (who(), 0..2usize, prop::collection::vec((0..SEATS + 1, prop_oneof![6 => 0..2usize, 1 => 2..3usize]), 0..5))
            .prop_map(|(who, perf, seats)| Step::Hold { who, perf, seats }),
        2 => (who(), 0..2usize, 0..5u32, 0..3usize).prop_map(|(who, perf, qty, cat)| Step::HoldGa { who, perf, qty, cat }),
        2 => (who(), hold_ref()).prop_map(|(who, hold)| Step::Release { who, hold }),
        2 => (who(), hold_ref()).prop_map(|(who, hold)| Step::Extend { who, hold }),
        5 => (prop_oneof![6 => Just(Who::Service), 1 => who()], hold_ref(), 0..4u8)
            .prop_map(|(who, hold, seed)| Step::Confirm { who, hold, seed }),
        3 => (hold_ref(), prop::collection::vec(0..4usize, 0..3)).prop_map(|(booking, tickets)| Step::Refund { booking, tickets }),
        3 => (who(), 0..2usize).prop_map(|(who, perf)| Step::Join { who, perf }),
        1 => prop::bool::weighted(0.8).prop_map(|good_seed| Step::Open { good_seed }),
        1 => (0..2usize, 0..SEATS + 1, any::<bool>()).prop_map(|(perf, seat, blocked)| Step::Block { perf, seat, blocked }),
        1 => (0..10usize, any::<bool>()).prop_map(|(n, same)| Step::Retry { n, same }),
    ]
}

// ------------------------------------------------------------------ the fixture

struct Harness {
    ledger: Ledger,
    model: Model,
    index: u64,
    now: u64,
    service: Principal,
    organizer: Principal,
    /// Keyed commands sent so far: (command, first outcome).
    keyed: Vec<(Command, Outcome)>,
    history: Vec<Command>,
    /// The outcome of each command of `history`.
    outcomes: Vec<Outcome>,
}

fn perf_spec(event: EventId, venue: VenueId, room: bool) -> PerformanceSpec {
    let eur = Currency::parse("EUR").unwrap();
    let mut prices = Vec::new();
    for (s, row) in PRICES.iter().enumerate() {
        for (c, p) in row.iter().enumerate() {
            if let Some(p) = p {
                prices.push(PriceSpec {
                    section: SectionIdx(s as u16),
                    category: CategoryIdx(c as u8),
                    price: Money {
                        amount_minor: *p,
                        currency: eur,
                    },
                });
            }
        }
    }
    PerformanceSpec {
        event,
        venue,
        starts_at_ms: T0 + 86_400_000,
        on_sale_at_ms: 0,
        sale_ends_at_ms: u64::MAX,
        hold_ttl_ms: TTL,
        payment_grace_ms: GRACE,
        max_seats_per_order: MAX_ORDER as u16,
        categories: vec!["adult".into(), "child".into()],
        prices,
        waiting_room: room.then(|| WaitingRoomSpec {
            admission_rate_per_sec: ADMISSION_RATE as u32,
            admission_ttl_ms: ADMISSION_TTL,
            max_active_admissions: MAX_ACTIVE,
            seed_commitment: *blake3::hash(&SEED).as_bytes(),
        }),
    }
}

impl Harness {
    fn send(&mut self, cmd: Command) -> Outcome {
        self.index += 1;
        self.history.push(cmd.clone());
        let outcome = self.ledger.apply(self.index, cmd);
        self.outcomes.push(outcome.clone());
        outcome
    }

    fn setup(&mut self, p: Principal, op: Op) -> Reply {
        match self.send(Command::new(self.now, p, op)) {
            Outcome::Ok(r) => r,
            Outcome::Rejected(r) => panic!("fixture step rejected: {r:?}"),
        }
    }

    fn new() -> Harness {
        let mut h = Harness {
            ledger: Ledger::new(),
            model: Model {
                clock: T0,
                perfs: [0, 1].map(|_| MPerf {
                    id: PerformanceId(0),
                    seats: [MSeat::Avail; SEATS],
                    ga_held: 0,
                    ga_sold: 0,
                    on_sale: false,
                    revenue: 0,
                }),
                holds: Vec::new(),
                bookings: Vec::new(),
                queue: Vec::new(),
                order: Vec::new(),
                seed_revealed: false,
                sold_out: false,
                credit_milli: 0,
                last_accrual: 0,
                used_codes: Vec::new(),
            },
            index: 0,
            now: T0,
            service: Principal::System,
            organizer: Principal::System,
            keyed: Vec::new(),
            history: Vec::new(),
            outcomes: Vec::new(),
        };
        let Reply::Bootstrapped { operator_key } = h.setup(
            Principal::System,
            Op::Bootstrap {
                operator_key_digest: [1; 32],
                token_secret: [2; 32],
            },
        ) else {
            unreachable!()
        };
        let op = Principal::ApiKey(operator_key);
        let Reply::ApiKeyCreated { key } = h.setup(
            op,
            Op::CreateApiKey {
                name: "payments".into(),
                role: Role::Service,
                key_digest: [3; 32],
            },
        ) else {
            unreachable!()
        };
        h.service = Principal::ApiKey(key);
        let user = |email: &str, role| Op::CreateUser {
            email: email.into(),
            name: "N".into(),
            password_hash: vec![1],
            role,
        };
        let Reply::UserCreated { user: org } = h.setup(op, user("org@x.io", Role::Organizer))
        else {
            unreachable!()
        };
        h.organizer = Principal::User(org);
        for (i, id) in BUYER_IDS.iter().enumerate() {
            let Reply::UserCreated { user } =
                h.setup(Principal::System, user(&format!("b{i}@x.io"), Role::Buyer))
            else {
                unreachable!()
            };
            assert_eq!(user, UserId(*id), "fixture ids moved: update BUYER_IDS");
        }
        let org = h.organizer;
        let rows = vec![
            RowSpec {
                label: "1".into(),
                seats: 4,
            },
            RowSpec {
                label: "2".into(),
                seats: 4,
            },
        ];
        let Reply::VenueCreated { venue, .. } = h.setup(
            org,
            Op::CreateVenue {
                name: "Hall".into(),
                sections: vec![
                    SectionSpec::Seated {
                        name: "S".into(),
                        rows,
                    },
                    SectionSpec::GeneralAdmission {
                        name: "G".into(),
                        capacity: GA_CAPACITY,
                    },
                ],
            },
        ) else {
            unreachable!()
        };
        let Reply::EventCreated { event } = h.setup(
            org,
            Op::CreateEvent {
                name: "Show".into(),
                category: "music".into(),
                description: String::new(),
                media: vec![],
            },
        ) else {
            unreachable!()
        };
        for (i, room) in [false, true].into_iter().enumerate() {
            let Reply::PerformanceCreated { performance } =
                h.setup(org, Op::CreatePerformance(perf_spec(event, venue, room)))
            else {
                unreachable!()
            };
            h.model.perfs[i].id = performance;
        }
        let a = h.model.perfs[0].id;
        h.setup(
            org,
            Op::SetSaleStatus {
                performance: a,
                status: SaleStatus::OnSale,
                seed: None,
            },
        );
        h.model.perfs[0].on_sale = true;
        h
    }

    fn principal(&self, who: Who) -> Principal {
        match who {
            Who::Buyer(_) => who.buyer().unwrap(),
            Who::Service => self.service,
            Who::Organizer => self.organizer,
        }
    }

    /// `n` counts back from the newest hold; `NONE` (or no holds) names a hold that never existed.
    fn hold_id(&self, n: usize) -> (Option<usize>, HoldId) {
        let len = self.model.holds.len();
        if n == NONE || len == 0 {
            return (None, HoldId(1 << 40));
        }
        let h = len - 1 - n % len;
        (Some(h), self.model.holds[h].id)
    }

    /// Run one step on both; compare.
    fn step(&mut self, step: &Step, keyed: bool) {
        if let Step::Advance(d) = step {
            self.now = (self.now + d).saturating_sub(5_000);
            return;
        }
        if let Step::Retry { n, same } = step {
            return self.retry(*n, *same);
        }
        // Time first, exactly as the ledger does it: clock = max(clock, stamp), then expiries.
        self.model.clock = self.model.clock.max(self.now);
        self.model.sweep();
        let (p, op, expect) = self.build(step);
        let mut cmd = Command::new(self.now, p, op);
        if keyed {
            cmd = cmd.with_key(format!("key-{}", self.keyed.len()));
        }
        let outcome = self.send(cmd.clone());
        self.compare(step, &expect, &outcome);
        if cmd.idempotency_key.is_some() {
            self.keyed.push((cmd, outcome));
        }
    }

    fn retry(&mut self, n: usize, same: bool) {
        if self.keyed.is_empty() {
            return;
        }
        let (first, first_outcome) = self.keyed[n % self.keyed.len()].clone();
        self.model.clock = self.model.clock.max(self.now);
        self.model.sweep();
        let mut cmd = first.clone();
        cmd.stamp_ms = self.now;
        if !same {
            cmd.op = Op::ReleaseHold {
                hold: HoldId(u64::MAX >> 8),
            };
        }
        let outcome = self.send(cmd);
        if same {
            assert_eq!(
                outcome, first_outcome,
                "a retry must return the first outcome"
            );
        } else {
            assert_eq!(outcome.code(), Some(Code::IdempotencyConflict));
        }
    }

    /// The command for a step and what the model expects of it; the model's state changes
    /// are made in `compare` once the ledger's ids are known.
    fn build(&mut self, step: &Step) -> (Principal, Op, Expect) {
        let m = &self.model;
        match step {
            Step::Tick => (Principal::System, Op::Tick, Expect::Ok),
            Step::Hold { who, perf, seats } => {
                let list = seats
                    .iter()
                    .map(|&(s, c)| (SeatIdx(s as u32), CategoryIdx(c as u8)))
                    .collect();
                let expect = m.hold_rule(*who, *perf, seats, None);
                (
                    self.principal(*who),
                    Op::PlaceHold {
                        performance: m.perfs[*perf].id,
                        what: HoldRequest::Seats(list),
                    },
                    expect,
                )
            }
            Step::HoldGa {
                who,
                perf,
                qty,
                cat,
            } => {
                let expect = m.hold_rule(*who, *perf, &[], Some((*qty, *cat)));
                let what = HoldRequest::GeneralAdmission {
                    section: SectionIdx(1),
                    quantity: *qty as u16,
                    category: CategoryIdx(*cat as u8),
                };
                (
                    self.principal(*who),
                    Op::PlaceHold {
                        performance: m.perfs[*perf].id,
                        what,
                    },
                    expect,
                )
            }
            Step::Release { who, hold } => {
                let (h, id) = self.hold_id(*hold);
                let expect = match h.filter(|&h| m.hold_visible(h)) {
                    None => rej(Code::NotFound),
                    Some(h) if !m.may_touch(*who, h) => rej(Code::Forbidden),
                    Some(h) if m.holds[h].state == MHoldState::Confirmed => rej(Code::HoldNotLive),
                    Some(_) => Expect::Ok,
                };
                (self.principal(*who), Op::ReleaseHold { hold: id }, expect)
            }
            Step::Extend { who, hold } => {
                let (h, id) = self.hold_id(*hold);
                let expect = match h.filter(|&h| m.hold_visible(h)) {
                    None => rej(Code::NotFound),
                    Some(h) if !m.may_touch(*who, h) => rej(Code::Forbidden),
                    Some(h) => match m.live_code(h) {
                        Some(c) => rej(c),
                        None if m.holds[h].extended => rej(Code::InvalidState),
                        None => Expect::Extended {
                            expires_at: m.holds[h].expires_at.max(m.clock + GRACE),
                        },
                    },
                };
                (
                    self.principal(*who),
                    Op::ExtendHold {
                        hold: id,
                        payment_ref: "pay-1".into(),
                    },
                    expect,
                )
            }
            Step::Confirm { who, hold, seed } => {
                let (h, id) = self.hold_id(*hold);
                let n = h.map_or(1, |h| m.holds[h].seats.len() + m.holds[h].ga as usize);
                let m = &self.model;
                let expect = if *who != Who::Service {
                    rej(Code::Forbidden)
                } else {
                    match h.filter(|&h| m.hold_visible(h)) {
                        None => rej(Code::NotFound),
                        Some(h) => match m.live_code(h) {
                            Some(c) => rej(c),
                            None => Expect::Booking {
                                amount: m.holds[h].amount,
                                tickets: n,
                            },
                        },
                    }
                };
                (
                    self.principal(*who),
                    Op::ConfirmHold {
                        hold: id,
                        payment_ref: "pay-1".into(),
                        code_seed: [*seed; 16],
                    },
                    expect,
                )
            }
            Step::Refund { booking, tickets } => {
                let len = m.bookings.len();
                let booking = &if *booking == NONE || len == 0 {
                    NONE
                } else {
                    len - 1 - booking % len
                };
                let b = m.bookings.get(*booking);
                let id = b.map_or(BookingId(1 << 40), |b| b.id);
                let ids: Vec<TicketId> = tickets
                    .iter()
                    .map(|&t| {
                        b.and_then(|b| b.tickets.get(t))
                            .map_or(TicketId(1 << 41), |t| t.id)
                    })
                    .collect();
                let expect = match b {
                    None => rej(Code::NotFound),
                    Some(b) if ids.is_empty() => {
                        let amount: u64 =
                            b.tickets.iter().filter(|t| t.valid).map(|t| t.price).sum();
                        if b.tickets.iter().any(|t| t.valid) {
                            Expect::Refund { amount }
                        } else {
                            rej(Code::TicketUsed)
                        }
                    }
                    Some(b) if ids.len() > b.tickets.len() => rej(Code::InvalidInput),
                    Some(b) => {
                        let mut result = None;
                        let mut amount = 0;
                        for (i, t) in ids.iter().enumerate() {
                            let found = b.tickets.iter().find(|x| x.id == *t);
                            let r = if ids[..i].contains(t) {
                                Some(Code::InvalidInput)
                            } else {
                                match found {
                                    None => Some(Code::NotFound),
                                    Some(x) if !x.valid => Some(Code::TicketUsed),
                                    Some(x) => {
                                        amount += x.price;
                                        None
                                    }
                                }
                            };
                            if r.is_some() {
                                result = r;
                                break;
                            }
                        }
                        result.map_or(Expect::Refund { amount }, rej)
                    }
                };
                let op = Op::Refund {
                    booking: id,
                    tickets: ids,
                    refund_ref: "r-1".into(),
                };
                (self.service, op, expect)
            }
            Step::Join { who, perf } => {
                let buyer = who.buyer();
                let expect = match buyer {
                    None => rej(Code::Forbidden),
                    Some(_) if *perf == 0 => rej(Code::InvalidInput),
                    Some(_) if m.sold_out => rej(Code::SoldOut),
                    Some(b) if m.queue.iter().any(|e| e.0 == b) => rej(Code::AlreadyExists),
                    Some(_) if !m.seed_revealed => Expect::Joined { position: None },
                    Some(_) => Expect::Joined {
                        position: Some(m.order.len() as u64),
                    },
                };
                (
                    self.principal(*who),
                    Op::JoinQueue {
                        performance: m.perfs[*perf].id,
                    },
                    expect,
                )
            }
            Step::Open { good_seed } => {
                let expect = if m.perfs[1].on_sale {
                    rej(Code::InvalidState)
                } else if !good_seed {
                    rej(Code::InvalidInput)
                } else {
                    Expect::Ok
                };
                let seed = Some(if *good_seed { SEED } else { [9; 32] });
                let op = Op::SetSaleStatus {
                    performance: m.perfs[1].id,
                    status: SaleStatus::OnSale,
                    seed,
                };
                (self.organizer, op, expect)
            }
            Step::Block {
                perf,
                seat,
                blocked,
            } => {
                let expect = match m.perfs[*perf].seats.get(*seat) {
                    None => rej(Code::InvalidInput),
                    Some(MSeat::Held(_) | MSeat::Sold(_)) => rej(Code::SeatUnavailable),
                    Some(_) => Expect::Ok,
                };
                let op = Op::SetSeatsBlocked {
                    performance: m.perfs[*perf].id,
                    seats: vec![SeatIdx(*seat as u32)],
                    blocked: *blocked,
                };
                (self.organizer, op, expect)
            }
            Step::Advance(_) | Step::Retry { .. } => unreachable!("handled in step"),
        }
    }

    /// Compare the ledger's outcome with the model's expectation, then update the model.
    fn compare(&mut self, step: &Step, expect: &Expect, outcome: &Outcome) {
        let got = match outcome {
            Outcome::Rejected(r) => Expect::Reject(r.code),
            Outcome::Ok(Reply::HoldPlaced(r)) => Expect::Hold {
                amount: r.amount.amount_minor,
                expires_at: r.expires_at_ms,
                quantity: r.quantity,
            },
            Outcome::Ok(Reply::BookingConfirmed(r)) => Expect::Booking {
                amount: r.amount.amount_minor,
                tickets: r.tickets.len(),
            },
            Outcome::Ok(Reply::Refunded { amount, .. }) => Expect::Refund {
                amount: amount.amount_minor,
            },
            Outcome::Ok(Reply::HoldExtended { expires_at_ms }) => Expect::Extended {
                expires_at: *expires_at_ms,
            },
            Outcome::Ok(Reply::QueueJoined { position, .. }) => Expect::Joined {
                position: *position,
            },
            Outcome::Ok(_) => Expect::Ok,
        };
        assert_eq!(&got, expect, "step {step:?}: ledger said {outcome:?}");
        if std::env::var_os("MODEL_STATS").is_some() {
            let kind = match outcome {
                Outcome::Rejected(r) => r.code.as_str().to_string(),
                Outcome::Ok(r) => format!("{r:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap_or("")
                    .to_string(),
            };
            eprintln!("STAT {kind}");
        }
        if matches!(expect, Expect::Reject(_)) {
            return;
        }
        // Resolve relative references before the model changes.
        let hold_ix = match step {
            Step::Release { hold, .. } | Step::Extend { hold, .. } | Step::Confirm { hold, .. } => {
                self.hold_id(*hold).0
            }
            _ => None,
        };
        let booking_ix = match step {
            Step::Refund { booking, .. } => {
                Some(self.model.bookings.len() - 1 - booking % self.model.bookings.len())
            }
            _ => None,
        };
        let m = &mut self.model;
        match (step, outcome) {
            (Step::Tick, _) => m.tick(),
            (Step::Hold { who, perf, seats }, Outcome::Ok(Reply::HoldPlaced(r))) => {
                let amount = r.amount.amount_minor;
                m.place(r.hold, *who, *perf, seats.clone(), None, amount);
            }
            (
                Step::HoldGa {
                    who,
                    perf,
                    qty,
                    cat,
                },
                Outcome::Ok(Reply::HoldPlaced(r)),
            ) => {
                let amount = r.amount.amount_minor;
                m.place(r.hold, *who, *perf, vec![], Some((*qty, *cat)), amount);
            }
            (Step::Release { .. }, _) => {
                let h = hold_ix.expect("released an existing hold");
                if m.holds[h].state == MHoldState::Live {
                    m.end_hold(h, MHoldState::Released);
                }
            }
            (Step::Extend { .. }, Outcome::Ok(Reply::HoldExtended { expires_at_ms })) => {
                let h = hold_ix.expect("extended an existing hold");
                m.holds[h].extended = true;
                m.holds[h].expires_at = *expires_at_ms;
            }
            (Step::Confirm { .. }, Outcome::Ok(Reply::BookingConfirmed(r))) => {
                let b = m.bookings.len();
                let hold = &mut m.holds[hold_ix.expect("confirmed an existing hold")];
                hold.state = MHoldState::Confirmed;
                hold.ended_at = m.clock;
                let perf = &mut m.perfs[hold.perf];
                for &(s, _) in &hold.seats {
                    perf.seats[s] = MSeat::Sold(b);
                }
                perf.ga_held -= hold.ga;
                perf.ga_sold += hold.ga;
                perf.revenue += hold.amount;
                let tickets = r
                    .tickets
                    .iter()
                    .map(|t| MTicket {
                        id: t.ticket,
                        seat: t.seat.map(|s| s.0 as usize),
                        price: t.price.amount_minor,
                        valid: true,
                    })
                    .collect();
                for t in &r.tickets {
                    assert!(
                        !m.used_codes.contains(&t.code),
                        "a check-in code was given twice"
                    );
                    m.used_codes.push(t.code);
                }
                m.bookings.push(MBooking {
                    id: r.booking,
                    perf: hold.perf,
                    tickets,
                });
            }
            (Step::Refund { .. }, Outcome::Ok(Reply::Refunded { tickets, amount })) => {
                let b = &mut m.bookings[booking_ix.expect("refunded an existing booking")];
                let perf = &mut m.perfs[b.perf];
                for t in b.tickets.iter_mut().filter(|t| tickets.contains(&t.id)) {
                    t.valid = false;
                    match t.seat {
                        Some(s) => perf.seats[s] = MSeat::Avail,
                        None => perf.ga_sold -= 1,
                    }
                }
                perf.revenue -= amount.amount_minor;
                if b.perf == 1 {
                    m.reopen_if_stock();
                }
            }
            (Step::Join { who, .. }, _) => {
                let buyer = who.buyer().unwrap();
                if m.seed_revealed {
                    m.order.push(m.queue.len());
                    m.queue.push((buyer, MQ::Waiting));
                } else {
                    m.queue.push((buyer, MQ::Pre));
                }
            }
            (Step::Open { .. }, _) => {
                let perf = m.perfs[1].id;
                let mut pre: Vec<usize> = (0..m.queue.len()).collect();
                pre.sort_by_key(|&j| {
                    (
                        prequeue_rank(
                            &SEED,
                            QueueId {
                                performance: perf,
                                join_index: j as u32,
                            },
                        ),
                        j,
                    )
                });
                for &j in &pre {
                    m.queue[j].1 = MQ::Waiting;
                }
                m.order = pre;
                m.seed_revealed = true;
                m.perfs[1].on_sale = true;
                m.last_accrual = m.clock;
                m.credit_milli = 0;
            }
            (
                Step::Block {
                    perf,
                    seat,
                    blocked,
                },
                _,
            ) => {
                m.perfs[*perf].seats[*seat] = if *blocked {
                    MSeat::Blocked
                } else {
                    MSeat::Avail
                };
                if *perf == 1 && !blocked {
                    m.reopen_if_stock();
                }
            }
            (s, o) => panic!("model has no update for {s:?} -> {o:?}"),
        }
    }

    /// Everything the model knows must match the ledger's state.
    fn check_state(&self) {
        self.ledger
            .check_invariants()
            .expect("invariants hold after every step");
        let s = self.ledger.state();
        assert_eq!(s.clock_ms, self.model.clock);
        for (mp, i) in self.model.perfs.iter().zip(0..) {
            let perf = &s.performances[&mp.id];
            for (k, seat) in mp.seats.iter().enumerate() {
                let want = match seat {
                    MSeat::Avail => SeatState::Available,
                    MSeat::Blocked => SeatState::Blocked,
                    MSeat::Held(h) => SeatState::Held(self.model.holds[*h].id),
                    MSeat::Sold(b) => SeatState::Sold(self.model.bookings[*b].id),
                };
                assert_eq!(perf.seats[k].get(), want, "perf {i} seat {k}");
            }
            assert_eq!(
                (perf.sections[1].held, perf.sections[1].sold),
                (mp.ga_held, mp.ga_sold),
                "perf {i} GA"
            );
            assert_eq!(perf.revenue_minor, mp.revenue, "perf {i} revenue");
        }
        let room = s.performances[&self.model.perfs[1].id]
            .waiting_room
            .as_ref()
            .unwrap();
        for (j, (buyer, st)) in self.model.queue.iter().enumerate() {
            let e = &room.entries[j];
            assert_eq!(e.buyer, *buyer);
            let want = match st {
                MQ::Pre => QueueState::PreQueue,
                MQ::Waiting => QueueState::Waiting,
                MQ::Admitted(until) => {
                    assert_eq!(e.admitted_until_ms, *until);
                    QueueState::Admitted
                }
                MQ::Expired => QueueState::Expired,
                MQ::Closed => QueueState::Closed,
            };
            assert_eq!(e.state, want, "queue entry {j}");
        }
        let order: Vec<usize> = room.order.iter().map(|&j| j as usize).collect();
        assert_eq!(order, self.model.order, "admission order");
        for h in &self.model.holds {
            if h.state == MHoldState::Live {
                assert_eq!(s.holds[&h.id].expires_at_ms, h.expires_at);
            }
        }
    }
}

fn run(steps: &[(Step, bool)]) {
    let mut h = Harness::new();
    let mut snapshot_at = None;
    for (i, (step, keyed)) in steps.iter().enumerate() {
        h.step(step, *keyed);
        h.check_state();
        if i == steps.len() / 2 {
            snapshot_at = Some((h.ledger.snapshot(), h.history.len()));
        }
    }
    // Restore the mid-run snapshot and replay the rest of the history: same state hash.
    if let Some((bytes, applied)) = snapshot_at {
        let mut restored = Ledger::restore(&bytes).expect("own snapshot restores");
        let first = restored.last_index() + 1;
        for (k, cmd) in h.history[applied..].iter().enumerate() {
            restored.apply(first + k as u64, cmd.clone());
        }
        assert_eq!(
            restored.state_hash(),
            h.ledger.state_hash(),
            "snapshot + replay diverged"
        );
    }
    // Replay the whole history with commands grouped into entries (as the leader proposes
    // writes that arrive together): the same outcome for every command and the same state,
    // but for the log indexes, which count entries instead of commands.
    let mut grouped = Ledger::new();
    let (mut at, mut index, mut size) = (0, 0, 1);
    while at < h.history.len() {
        let end = (at + size).min(h.history.len());
        index += 1;
        let outcomes = grouped.apply_entry(index, h.history[at..end].to_vec());
        assert_eq!(
            outcomes,
            h.outcomes[at..end],
            "commands {at}..{end} as one entry"
        );
        (at, size) = (end, size % 5 + 1);
    }
    assert_eq!(grouped.last_index(), index);
    let without_indexes = |l: &Ledger| {
        let mut s = l.state().clone();
        s.last_index = 0;
        s.feed.iter_mut().for_each(|e| e.log_index = 0);
        s
    };
    assert_eq!(
        without_indexes(&grouped),
        without_indexes(&h.ledger),
        "grouped replay diverged"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ledger_agrees_with_the_model(steps in prop::collection::vec((step(), prop::bool::weighted(0.2)), 1..80)) {
        run(&steps);
    }
}

/// A hand-written scenario through the whole flow, so a broken fixture fails loudly and early.
#[test]
fn scripted_on_sale() {
    use Step::*;
    let b0 = Who::Buyer(0);
    let b1 = Who::Buyer(1);
    run(&[
        (Join { who: b0, perf: 1 }, false),
        (Join { who: b1, perf: 1 }, true),
        (Open { good_seed: true }, false),
        (Advance(6_000), false),
        (Tick, false),
        (Advance(6_000), false),
        (Tick, false),
        (
            Hold {
                who: b0,
                perf: 1,
                seats: vec![(0, 0), (1, 1)],
            },
            false,
        ),
        (
            Hold {
                who: b1,
                perf: 0,
                seats: vec![(0, 0)],
            },
            true,
        ),
        (
            Confirm {
                who: Who::Service,
                hold: 0,
                seed: 0,
            },
            false,
        ),
        (
            Refund {
                booking: 0,
                tickets: vec![1],
            },
            false,
        ),
        (Advance(15_000), false),
        (
            Confirm {
                who: Who::Service,
                hold: 1,
                seed: 0,
            },
            false,
        ),
        (Retry { n: 1, same: true }, false),
        (Retry { n: 0, same: false }, false),
    ]);
}

/// A payment that lands after its hold expired: booked on the same seats when they are still
/// free, refused (so the payment is refunded) when someone took them.
#[test]
fn late_payment_books_free_seats_or_is_refused() {
    let mut h = Harness::new();
    let a = h.model.perfs[0].id;
    let buyer = Who::Buyer(0).buyer().unwrap();
    let place = |h: &mut Harness, seat: u32| -> HoldId {
        let what = HoldRequest::Seats(vec![(SeatIdx(seat), CategoryIdx(0))]);
        match h.send(Command::new(
            h.now,
            buyer,
            Op::PlaceHold {
                performance: a,
                what,
            },
        )) {
            Outcome::Ok(Reply::HoldPlaced(r)) => r.hold,
            o => panic!("{o:?}"),
        }
    };
    let (hold, other) = (place(&mut h, 0), place(&mut h, 1));
    let service = h.service;
    let late = |h: &mut Harness, hold: HoldId, r: &str| {
        let op = Op::ConfirmLate {
            hold,
            payment_ref: r.into(),
            code_seed: [hold.0 as u8; 16],
        };
        h.send(Command::new(h.now, service, op))
    };
    // A live hold is confirmed, not booked late; an unextended one cannot be booked late.
    assert_eq!(late(&mut h, hold, "pay-1").code(), Some(Code::InvalidState));
    let ext = |h: &mut Harness, hold| {
        h.send(Command::new(
            h.now,
            service,
            Op::ExtendHold {
                hold,
                payment_ref: "pay-1".into(),
            },
        ))
    };
    assert!(ext(&mut h, hold).is_ok());
    assert!(ext(&mut h, other).is_ok());
    h.now += 60_000;
    h.send(Command::new(h.now, Principal::System, Op::Tick));
    assert_eq!(h.ledger.state().holds[&hold].state, HoldState::Expired);
    // Someone else takes seat 1 meanwhile.
    let b1 = Who::Buyer(1).buyer().unwrap();
    let what = HoldRequest::Seats(vec![(SeatIdx(1), CategoryIdx(0))]);
    assert!(
        h.send(Command::new(
            h.now,
            b1,
            Op::PlaceHold {
                performance: a,
                what
            }
        ))
        .is_ok()
    );
    let before = h.ledger.clone();
    assert_eq!(
        late(&mut h, hold, "pay-other").code(),
        Some(Code::InvalidState),
        "wrong payment_ref"
    );
    assert_eq!(
        late(&mut h, other, "pay-1").code(),
        Some(Code::SeatUnavailable),
        "seat 1 was taken"
    );
    assert_eq!(
        h.ledger.state().holds,
        before.state().holds,
        "refusals change nothing"
    );
    match late(&mut h, hold, "pay-1") {
        Outcome::Ok(Reply::BookingConfirmed(b)) => {
            assert_eq!(b.tickets.len(), 1);
            let perf = &h.ledger.state().performances[&a];
            assert_eq!(perf.seats[0].get(), SeatState::Sold(b.booking));
        }
        o => panic!("late payment on free seats must book: {o:?}"),
    }
    assert_eq!(
        late(&mut h, hold, "pay-1").code(),
        Some(Code::HoldNotLive),
        "booked once only"
    );
    h.ledger.check_invariants().unwrap();
}
