//! The fixture shared by the ledger's integration tests: a bootstrapped ledger with two
//! organizers, three buyers, a payment service key, a venue of 10 seats in two rows plus a
//! 5-place GA section, one performance on sale without a waiting room (`p`) and one draft
//! performance with a waiting room committed to `blake3(SEED)` (`r`).
// Each test binary uses a different part of the fixture.
#![allow(dead_code)]

use ledger::*;

pub const T0: u64 = 1_700_000_000_000;
pub const OP: Principal = Principal::ApiKey(ApiKeyId(1));

#[derive(Clone)]
pub struct Fix {
    pub l: Ledger,
    pub i: u64,
    pub now: u64,
    pub org: Principal,
    pub org2: Principal,
    pub buyers: Vec<Principal>,
    pub svc: Principal,
    pub venue: VenueId,
    pub event: EventId,
    /// On sale, no waiting room.
    pub p: PerformanceId,
    /// Waiting room, draft.
    pub r: PerformanceId,
}

pub fn eur(amount_minor: u64) -> Money {
    Money {
        amount_minor,
        currency: Currency::parse("EUR").unwrap(),
    }
}

pub const SEED: [u8; 32] = [5; 32];

pub fn spec(event: EventId, venue: VenueId, room: bool) -> PerformanceSpec {
    PerformanceSpec {
        event,
        venue,
        starts_at_ms: T0 + 10_000_000,
        on_sale_at_ms: 0,
        sale_ends_at_ms: T0 + 10_000_000,
        hold_ttl_ms: 10_000,
        payment_grace_ms: 20_000,
        max_seats_per_order: 3,
        categories: vec!["adult".into(), "vip".into()],
        prices: vec![
            PriceSpec {
                section: SectionIdx(0),
                category: CategoryIdx(0),
                price: eur(1000),
            },
            PriceSpec {
                section: SectionIdx(1),
                category: CategoryIdx(0),
                price: eur(300),
            },
        ],
        waiting_room: room.then(|| WaitingRoomSpec {
            admission_rate_per_sec: 10,
            admission_ttl_ms: 10_000,
            max_active_admissions: 0,
            seed_commitment: *blake3::hash(&SEED).as_bytes(),
        }),
    }
}

impl Fix {
    pub fn run(&mut self, p: Principal, op: Op) -> Outcome {
        self.i += 1;
        self.l.apply(self.i, Command::new(self.now, p, op))
    }

    pub fn ok(&mut self, p: Principal, op: Op) -> Reply {
        match self.run(p, op) {
            Outcome::Ok(r) => r,
            Outcome::Rejected(r) => panic!("expected success: {r:?}"),
        }
    }

    /// Apply `cmd` and assert it is rejected with `code`, changing nothing else.
    pub fn rejects(&mut self, cmd: Command, code: Code) {
        let mut twin = self.l.clone();
        self.i += 1;
        twin.apply(
            self.i,
            Command::new(cmd.stamp_ms, Principal::System, Op::Tick),
        );
        let what = format!("{:?}", cmd.op);
        match self.l.apply(self.i, cmd) {
            Outcome::Rejected(r) => {
                assert_eq!(r.code, code, "{what}: {}", r.detail);
                assert!(!r.detail.is_empty());
            }
            o => panic!("{what}: expected {code:?}, got {o:?}"),
        }
        assert_eq!(
            self.l.state_hash(),
            twin.state_hash(),
            "{what}: the rejection changed the ledger"
        );
        self.l.check_invariants().unwrap();
    }

    pub fn no(&mut self, p: Principal, op: Op, code: Code) {
        self.rejects(Command::new(self.now, p, op), code);
    }

    pub fn hold(&mut self, b: usize, seats: &[u32]) -> HoldId {
        let what = HoldRequest::Seats(
            seats
                .iter()
                .map(|s| (SeatIdx(*s), CategoryIdx(0)))
                .collect(),
        );
        let p = self.p;
        match self.ok(
            self.buyers[b],
            Op::PlaceHold {
                performance: p,
                what,
            },
        ) {
            Reply::HoldPlaced(h) => h.hold,
            r => panic!("{r:?}"),
        }
    }

    pub fn confirm(&mut self, hold: HoldId, n: usize) -> BookingReceipt {
        match self.ok(
            self.svc,
            Op::ConfirmHold {
                hold,
                payment_ref: "pay".into(),
                code_seed: (self.i as u128).to_le_bytes(),
            },
        ) {
            Reply::BookingConfirmed(b) => {
                assert_eq!(b.tickets.len(), n, "one ticket per seat of the hold");
                b
            }
            r => panic!("{r:?}"),
        }
    }
}

pub fn fix() -> Fix {
    let mut f = Fix {
        l: Ledger::new(),
        i: 0,
        now: T0,
        org: OP,
        org2: OP,
        buyers: vec![],
        svc: OP,
        venue: VenueId(0),
        event: EventId(0),
        p: PerformanceId(0),
        r: PerformanceId(0),
    };
    f.ok(
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    );
    let user = |email: &str, role| Op::CreateUser {
        email: email.into(),
        name: "N".into(),
        password_hash: vec![1],
        role,
    };
    let Reply::UserCreated { user: o1 } = f.ok(OP, user("o1@x.io", Role::Organizer)) else {
        panic!()
    };
    let Reply::UserCreated { user: o2 } = f.ok(OP, user("o2@x.io", Role::Organizer)) else {
        panic!()
    };
    (f.org, f.org2) = (Principal::User(o1), Principal::User(o2));
    for b in 0..3 {
        let Reply::UserCreated { user } =
            f.ok(Principal::System, user(&format!("b{b}@x.io"), Role::Buyer))
        else {
            panic!()
        };
        f.buyers.push(Principal::User(user));
    }
    let Reply::ApiKeyCreated { key } = f.ok(
        OP,
        Op::CreateApiKey {
            name: "pay".into(),
            role: Role::Service,
            key_digest: [3; 32],
        },
    ) else {
        panic!()
    };
    f.svc = Principal::ApiKey(key);
    let rows = vec![
        RowSpec {
            label: "1".into(),
            seats: 5,
        },
        RowSpec {
            label: "2".into(),
            seats: 5,
        },
    ];
    let sections = vec![
        SectionSpec::Seated {
            name: "A".into(),
            rows,
        },
        SectionSpec::GeneralAdmission {
            name: "Floor".into(),
            capacity: 5,
        },
    ];
    let Reply::VenueCreated { venue, .. } = f.ok(
        f.org,
        Op::CreateVenue {
            name: "Hall".into(),
            sections,
        },
    ) else {
        panic!()
    };
    let Reply::EventCreated { event } = f.ok(
        f.org,
        Op::CreateEvent {
            name: "Show".into(),
            category: "music".into(),
            description: String::new(),
            media: vec![],
        },
    ) else {
        panic!()
    };
    (f.venue, f.event) = (venue, event);
    let Reply::PerformanceCreated { performance: p } =
        f.ok(f.org, Op::CreatePerformance(spec(event, venue, false)))
    else {
        panic!()
    };
    let Reply::PerformanceCreated { performance: r } =
        f.ok(f.org, Op::CreatePerformance(spec(event, venue, true)))
    else {
        panic!()
    };
    (f.p, f.r) = (p, r);
    f.ok(
        f.org,
        Op::SetSaleStatus {
            performance: p,
            status: SaleStatus::OnSale,
            seed: None,
        },
    );
    f
}
