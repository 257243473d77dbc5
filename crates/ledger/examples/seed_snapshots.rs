//! Writes a few real snapshots (and their bodies) into a directory: the fuzzer's seed corpus.
//! `cargo run -p ledger --example seed_snapshots -- DIR`

use ledger::*;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seed_snapshots DIR");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let t0 = 1_700_000_000_000;
    let mut l = Ledger::new();
    // Log index and stamp advance together (stamp = t0 + index); a jump in one is a pause.
    let i = std::cell::Cell::new(0u64);
    let next = || {
        i.set(i.get() + 1);
        i.get()
    };
    let run = |l: &mut Ledger, p: Principal, op: Op| {
        let at = next();
        let outcome = l.apply(at, Command::new(t0 + at, p, op));
        assert!(outcome.is_ok(), "{outcome:?}");
    };
    let op = Principal::ApiKey(ApiKeyId(1));
    let write = |name: &str, l: &Ledger| {
        let snap = l.snapshot();
        std::fs::write(format!("{dir}/{name}.snap"), &snap).expect("write");
        std::fs::write(format!("{dir}/{name}.body"), &snap[52..]).expect("write");
    };
    write("empty", &l);
    run(
        &mut l,
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    );
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
    let sections = vec![
        SectionSpec::Seated {
            name: "A".into(),
            rows,
        },
        SectionSpec::GeneralAdmission {
            name: "G".into(),
            capacity: 3,
        },
    ];
    run(
        &mut l,
        op,
        Op::CreateVenue {
            name: "V".into(),
            sections,
        },
    );
    run(
        &mut l,
        op,
        Op::CreateEvent {
            name: "E".into(),
            category: "c".into(),
            description: "d".into(),
            media: vec![],
        },
    );
    let eur = Currency::parse("EUR").unwrap();
    run(
        &mut l,
        op,
        Op::CreatePerformance(PerformanceSpec {
            event: EventId(3),
            venue: VenueId(2),
            starts_at_ms: t0 + 1_000_000,
            on_sale_at_ms: 0,
            sale_ends_at_ms: t0 + 1_000_000,
            hold_ttl_ms: 60_000,
            payment_grace_ms: 0,
            max_seats_per_order: 4,
            categories: vec!["adult".into()],
            prices: vec![
                PriceSpec {
                    section: SectionIdx(0),
                    category: CategoryIdx(0),
                    price: Money {
                        amount_minor: 100,
                        currency: eur,
                    },
                },
                PriceSpec {
                    section: SectionIdx(1),
                    category: CategoryIdx(0),
                    price: Money {
                        amount_minor: 50,
                        currency: eur,
                    },
                },
            ],
            waiting_room: Some(WaitingRoomSpec {
                admission_rate_per_sec: 5,
                admission_ttl_ms: 60_000,
                max_active_admissions: 0,
                seed_commitment: *blake3::hash(&SEED).as_bytes(),
            }),
        }),
    );
    write("catalog", &l);
    run(
        &mut l,
        Principal::System,
        Op::CreateUser {
            email: "b@x.io".into(),
            name: "B".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        },
    );
    run(
        &mut l,
        Principal::User(UserId(5)),
        Op::JoinQueue {
            performance: PerformanceId(4),
        },
    );
    write("queue", &l);
    // A sale in progress, so the fuzzer starts from holds, bookings, refunds, check-ins,
    // admissions, idempotency records and a change feed, not only from a catalog.
    for b in ["c@x.io", "d@x.io"] {
        run(
            &mut l,
            Principal::System,
            Op::CreateUser {
                email: b.into(),
                name: "B".into(),
                password_hash: vec![1],
                role: Role::Buyer,
            },
        );
    }
    let svc = ApiKeyId(8);
    run(
        &mut l,
        op,
        Op::CreateApiKey {
            name: "pay".into(),
            role: Role::Service,
            key_digest: [3; 32],
        },
    );
    let (b5, b6, b7) = (
        Principal::User(UserId(5)),
        Principal::User(UserId(6)),
        Principal::User(UserId(7)),
    );
    let perf = PerformanceId(4);
    run(&mut l, b6, Op::JoinQueue { performance: perf });
    run(
        &mut l,
        op,
        Op::SetSaleStatus {
            performance: perf,
            status: SaleStatus::OnSale,
            seed: Some(SEED),
        },
    );
    run(&mut l, b7, Op::JoinQueue { performance: perf });
    i.set(i.get() + 1_000);
    run(&mut l, Principal::System, Op::Tick);
    let seats =
        |v: &[u32]| HoldRequest::Seats(v.iter().map(|&s| (SeatIdx(s), CategoryIdx(0))).collect());
    let hold = |l: &mut Ledger, b: Principal, what: HoldRequest, key: &str| {
        let at = next();
        match l.apply(
            at,
            Command::new(
                t0 + at,
                b,
                Op::PlaceHold {
                    performance: perf,
                    what,
                },
            )
            .with_key(key),
        ) {
            Outcome::Ok(Reply::HoldPlaced(h)) => h.hold,
            o => panic!("{o:?}"),
        }
    };
    let h1 = hold(&mut l, b5, seats(&[0, 1, 5]), "k1");
    let h2 = hold(
        &mut l,
        b6,
        HoldRequest::GeneralAdmission {
            section: SectionIdx(1),
            quantity: 2,
            category: CategoryIdx(0),
        },
        "k2",
    );
    let _h3 = hold(&mut l, b7, seats(&[2]), "k3");
    run(
        &mut l,
        b6,
        Op::ExtendHold {
            hold: h2,
            payment_ref: "p2".into(),
        },
    );
    run(
        &mut l,
        Principal::ApiKey(svc),
        Op::ConfirmHold {
            hold: h1,
            payment_ref: "p1".into(),
            code_seed: [1; 16],
        },
    );
    run(
        &mut l,
        Principal::ApiKey(svc),
        Op::ConfirmHold {
            hold: h2,
            payment_ref: "p2".into(),
            code_seed: [4; 16],
        },
    );
    write("sale", &l);
    let Some(b) = l.state().bookings.values().next().cloned() else {
        panic!("a booking")
    };
    run(
        &mut l,
        Principal::ApiKey(svc),
        Op::Refund {
            booking: b.id,
            tickets: vec![b.tickets[0].id],
            refund_ref: "r".into(),
        },
    );
    run(
        &mut l,
        op,
        Op::CheckIn {
            performance: perf,
            code: b.tickets[1].code,
        },
    );
    run(
        &mut l,
        op,
        Op::SetSeatsBlocked {
            performance: perf,
            seats: vec![SeatIdx(7)],
            blocked: true,
        },
    );
    write("refunded", &l);
    i.set(i.get() + 120_000);
    run(&mut l, Principal::System, Op::Tick);
    write("expired", &l);
}

/// The waiting room's seed, revealed when the sale opens.
const SEED: [u8; 32] = [7; 32];
