use ledger::*;
use std::time::Instant;
fn main() {
    if std::env::args().nth(1).as_deref() == Some("load") {
        let snap = std::fs::read("/tmp/prof/big.snap").unwrap();
        let st: State = postcard::from_bytes(&snap[52..]).unwrap();
        for _ in 0..5 {
            let t = Instant::now();
            let ix = Indexes::build(&st);
            println!("build {:?}", t.elapsed());
            std::mem::forget(ix);
        }
        for _ in 0..0 {
            let t = Instant::now();
            let r = Ledger::restore(&snap).unwrap();
            println!("restore {:?}", t.elapsed());
            std::mem::forget(r);
        }
        return;
    }
    let mut l = Ledger::new();
    let mut i = 0u64;
    let mut run = |l: &mut Ledger, p: Principal, op: Op| {
        i += 1;
        let o = l.apply(i, Command::new(1_700_000_000_000 + i, p, op));
        assert!(o.is_ok(), "{o:?}");
        o
    };
    run(
        &mut l,
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [1; 32],
            token_secret: [2; 32],
        },
    );
    let op = Principal::ApiKey(ApiKeyId(1));
    let rows = (0..100)
        .map(|r| RowSpec {
            label: r.to_string(),
            seats: 1000,
        })
        .collect();
    run(
        &mut l,
        op,
        Op::CreateVenue {
            name: "S".into(),
            sections: vec![SectionSpec::Seated {
                name: "A".into(),
                rows,
            }],
        },
    );
    run(
        &mut l,
        op,
        Op::CreateEvent {
            name: "E".into(),
            category: "c".into(),
            description: String::new(),
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
            starts_at_ms: u64::MAX / 2,
            on_sale_at_ms: 0,
            sale_ends_at_ms: u64::MAX,
            hold_ttl_ms: 600_000,
            payment_grace_ms: 0,
            max_seats_per_order: 4,
            categories: vec!["a".into()],
            prices: vec![PriceSpec {
                section: SectionIdx(0),
                category: CategoryIdx(0),
                price: Money {
                    amount_minor: 5000,
                    currency: eur,
                },
            }],
            waiting_room: Some(WaitingRoomSpec {
                admission_rate_per_sec: 1000,
                admission_ttl_ms: 600_000,
                max_active_admissions: 0,
                seed_commitment: [0; 32],
            }),
        }),
    );
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |s| s.parse().unwrap());
    let mut buyers = vec![];
    for b in 0..n {
        let Outcome::Ok(Reply::UserCreated { user }) = run(
            &mut l,
            Principal::System,
            Op::CreateUser {
                email: format!("q{b}@x.io"),
                name: "Q".into(),
                password_hash: vec![1],
                role: Role::Buyer,
            },
        ) else {
            panic!()
        };
        buyers.push(Principal::User(user));
    }
    for b in buyers {
        run(
            &mut l,
            b,
            Op::JoinQueue {
                performance: PerformanceId(4),
            },
        );
    }
    let snap = l.snapshot();
    std::fs::write("/tmp/prof/big.snap", &snap).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let h = blake3::hash(&snap[52..]);
        let a = t.elapsed();
        let t = Instant::now();
        let s: State = postcard::from_bytes(&snap[52..]).unwrap();
        let b = t.elapsed();
        let t = Instant::now();
        let ix = Indexes::build(&s);
        println!("indexes {:?}", t.elapsed());
        drop(ix);
        let t = Instant::now();
        drop(s);
        println!("drop state {:?}", t.elapsed());
        let _ = h;
        let t = Instant::now();
        let r = Ledger::restore_body(&snap[52..]).unwrap();
        let c = t.elapsed();
        let t = Instant::now();
        r.check_invariants().unwrap();
        let d = t.elapsed();
        let t = Instant::now();
        drop(r);
        let e = t.elapsed();
        println!(
            "blake3 {a:?} decode {b:?} restore_body {c:?} (of which invariants ~{d:?}) drop {e:?}"
        );
    }
}
