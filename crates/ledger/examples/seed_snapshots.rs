//! Writes a few real snapshots (and their bodies) into a directory: the fuzzer's seed corpus.
//! `cargo run -p ledger --example seed_snapshots -- DIR`

use ledger::*;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seed_snapshots DIR");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let t0 = 1_700_000_000_000;
    let mut l = Ledger::new();
    let mut i = 0;
    let mut run = |l: &mut Ledger, p: Principal, op: Op| {
        i += 1;
        l.apply(i, Command::new(t0 + i, p, op))
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
                seed_commitment: *blake3_free_commitment(),
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
}

/// A fixed commitment (the seed is never revealed in the corpus).
fn blake3_free_commitment() -> &'static [u8; 32] {
    &[7; 32]
}
