//! Every rejection path: the code, and that nothing changed but the clock and the index
//! (the ledger must equal a twin that applied a `Tick` with the same stamp instead).

mod common;

use common::*;
use ledger::*;

#[test]
fn cluster_and_accounts() {
    let mut f = fix();
    let b = f.buyers[0];
    f.no(
        b,
        Op::Bootstrap {
            operator_key_digest: [9; 32],
            token_secret: [9; 32],
        },
        Code::Forbidden,
    );
    f.no(
        Principal::System,
        Op::Bootstrap {
            operator_key_digest: [9; 32],
            token_secret: [9; 32],
        },
        Code::AlreadyExists,
    );
    f.no(b, Op::Tick, Code::Forbidden);
    let user = |email: &str, role, hash: Vec<u8>| Op::CreateUser {
        email: email.into(),
        name: "N".into(),
        password_hash: hash,
        role,
    };
    f.no(b, user("x@x.io", Role::Organizer, vec![1]), Code::Forbidden);
    f.no(
        Principal::User(UserId(999)),
        user("x@x.io", Role::Organizer, vec![1]),
        Code::Unauthenticated,
    );
    f.no(
        Principal::System,
        user("not-an-email", Role::Buyer, vec![1]),
        Code::InvalidInput,
    );
    f.no(
        Principal::System,
        user("x@x.io", Role::Buyer, vec![]),
        Code::InvalidInput,
    );
    f.no(
        Principal::System,
        user("B0@X.IO", Role::Buyer, vec![1]),
        Code::AlreadyExists,
    );
    f.no(
        f.org,
        Op::CreateApiKey {
            name: "k".into(),
            role: Role::Service,
            key_digest: [7; 32],
        },
        Code::Forbidden,
    );
    f.no(
        OP,
        Op::CreateApiKey {
            name: String::new(),
            role: Role::Service,
            key_digest: [7; 32],
        },
        Code::InvalidInput,
    );
    f.no(
        OP,
        Op::CreateApiKey {
            name: "dup".into(),
            role: Role::Service,
            key_digest: [3; 32],
        },
        Code::AlreadyExists,
    );
    f.no(OP, Op::RevokeApiKey { key: ApiKeyId(999) }, Code::NotFound);
    let svc = f.svc;
    let Principal::ApiKey(k) = svc else {
        unreachable!()
    };
    f.ok(OP, Op::RevokeApiKey { key: k });
    let h = f.hold(0, &[0]);
    f.no(
        svc,
        Op::ConfirmHold {
            hold: h,
            payment_ref: "p".into(),
            code_seed: [1; 16],
        },
        Code::Unauthenticated,
    );
}

#[test]
fn catalog() {
    let mut f = fix();
    let (b, org, org2) = (f.buyers[0], f.org, f.org2);
    let seated = |name: &str, rows: Vec<(&str, u32)>| SectionSpec::Seated {
        name: name.into(),
        rows: rows
            .into_iter()
            .map(|(l, s)| RowSpec {
                label: l.into(),
                seats: s,
            })
            .collect(),
    };
    f.no(
        b,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![seated("A", vec![("1", 1)])],
        },
        Code::Forbidden,
    );
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![],
        },
        Code::InvalidInput,
    );
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![seated("A:B", vec![("1", 1)])],
        },
        Code::InvalidInput,
    );
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![seated("A", vec![("1", 1), ("1", 2)])],
        },
        Code::InvalidInput,
    );
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![seated("A", vec![("1", 0)])],
        },
        Code::InvalidInput,
    );
    let huge: Vec<(String, u32)> = (0..101).map(|r| (r.to_string(), 2000)).collect();
    let rows = huge.iter().map(|(l, s)| (l.as_str(), *s)).collect();
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![seated("A", rows)],
        },
        Code::LimitExceeded,
    );
    f.no(
        org,
        Op::CreateVenue {
            name: "V".into(),
            sections: vec![SectionSpec::GeneralAdmission {
                name: "G".into(),
                capacity: 0,
            }],
        },
        Code::InvalidInput,
    );
    let ev = |media: usize| Op::CreateEvent {
        name: "E".into(),
        category: "c".into(),
        description: String::new(),
        media: (0..media)
            .map(|_| MediaItem {
                kind: "img".into(),
                url: "https://x".into(),
            })
            .collect(),
    };
    f.no(b, ev(0), Code::Forbidden);
    f.no(
        org,
        Op::CreateEvent {
            name: String::new(),
            category: "c".into(),
            description: String::new(),
            media: vec![],
        },
        Code::InvalidInput,
    );
    f.no(
        org,
        Op::CreateEvent {
            name: "bad\u{7}".into(),
            category: "c".into(),
            description: String::new(),
            media: vec![],
        },
        Code::InvalidInput,
    );
    f.no(org, ev(33), Code::LimitExceeded);
    let upd = |event| Op::UpdateEvent {
        event,
        name: "E2".into(),
        category: "c".into(),
        description: String::new(),
        media: vec![],
    };
    f.no(org, upd(EventId(999)), Code::NotFound);
    f.no(org2, upd(f.event), Code::Forbidden);
    let (event, venue) = (f.event, f.venue);
    let mut bad = spec(event, venue, false);
    bad.event = EventId(999);
    f.no(org, Op::CreatePerformance(bad), Code::NotFound);
    let mut bad = spec(event, venue, false);
    bad.venue = VenueId(999);
    f.no(org, Op::CreatePerformance(bad), Code::NotFound);
    f.no(
        org2,
        Op::CreatePerformance(spec(event, venue, false)),
        Code::Forbidden,
    );
    let variants: Vec<fn(&mut PerformanceSpec)> = vec![
        |s| s.hold_ttl_ms = 5,
        |s| s.sale_ends_at_ms = s.on_sale_at_ms,
        |s| s.prices.clear(),
        |s| s.prices[1].price.currency = Currency::parse("USD").unwrap(),
        |s| s.prices[0].section = SectionIdx(9),
        |s| s.prices[0].category = CategoryIdx(9),
        |s| s.prices[1].section = SectionIdx(0),
        |s| s.max_seats_per_order = 0,
        |s| s.categories = vec!["a".into(), "a".into()],
        |s| {
            s.waiting_room = Some(WaitingRoomSpec {
                admission_rate_per_sec: 0,
                admission_ttl_ms: 10_000,
                max_active_admissions: 0,
                seed_commitment: [0; 32],
            })
        },
    ];
    for v in variants {
        let mut s = spec(event, venue, false);
        v(&mut s);
        f.no(org, Op::CreatePerformance(s), Code::InvalidInput);
    }
    let (p, r) = (f.p, f.r);
    let st = |performance, status, seed| Op::SetSaleStatus {
        performance,
        status,
        seed,
    };
    f.no(
        org,
        st(PerformanceId(999), SaleStatus::Paused, None),
        Code::NotFound,
    );
    f.no(org2, st(p, SaleStatus::Paused, None), Code::Forbidden);
    f.no(org, st(r, SaleStatus::Paused, None), Code::InvalidState);
    f.no(org, st(r, SaleStatus::OnSale, None), Code::InvalidInput);
    f.no(
        org,
        st(r, SaleStatus::OnSale, Some([6; 32])),
        Code::InvalidInput,
    );
    f.no(
        org,
        st(p, SaleStatus::Paused, Some(SEED)),
        Code::InvalidInput,
    );
    let blk = |seats: Vec<u32>, blocked| Op::SetSeatsBlocked {
        performance: p,
        seats: seats.into_iter().map(SeatIdx).collect(),
        blocked,
    };
    f.no(org, blk(vec![99], true), Code::InvalidInput);
    f.no(org, blk(vec![], true), Code::InvalidInput);
    f.no(org2, blk(vec![1], true), Code::Forbidden);
    f.hold(0, &[1]);
    f.no(org, blk(vec![0, 1], true), Code::SeatUnavailable);
}

#[test]
fn holds() {
    let mut f = fix();
    let (b0, b1, p, r) = (f.buyers[0], f.buyers[1], f.p, f.r);
    let seats = |v: &[(u32, u8)]| {
        HoldRequest::Seats(
            v.iter()
                .map(|(s, c)| (SeatIdx(*s), CategoryIdx(*c)))
                .collect(),
        )
    };
    let place = |performance, what| Op::PlaceHold { performance, what };
    f.no(
        b0,
        place(PerformanceId(999), seats(&[(0, 0)])),
        Code::NotFound,
    );
    f.no(f.svc, place(p, seats(&[(0, 0)])), Code::Forbidden);
    f.no(b0, place(r, seats(&[(0, 0)])), Code::SaleNotOpen);
    f.no(b0, place(p, seats(&[])), Code::InvalidInput);
    f.no(
        b0,
        place(p, seats(&[(0, 0), (1, 0), (2, 0), (3, 0)])),
        Code::LimitExceeded,
    );
    f.no(b0, place(p, seats(&[(0, 0), (0, 0)])), Code::InvalidInput);
    f.no(b0, place(p, seats(&[(10, 0)])), Code::InvalidInput);
    f.no(b0, place(p, seats(&[(0, 5)])), Code::InvalidInput);
    f.no(b0, place(p, seats(&[(0, 1)])), Code::InvalidInput); // vip is not sold in A
    let ga = |q, c| HoldRequest::GeneralAdmission {
        section: SectionIdx(1),
        quantity: q,
        category: CategoryIdx(c),
    };
    f.no(b0, place(p, ga(0, 0)), Code::InvalidInput);
    f.no(b0, place(p, ga(4, 0)), Code::LimitExceeded);
    f.no(b0, place(p, ga(1, 1)), Code::InvalidInput);
    f.no(
        b0,
        place(
            p,
            HoldRequest::GeneralAdmission {
                section: SectionIdx(0),
                quantity: 1,
                category: CategoryIdx(0),
            },
        ),
        Code::InvalidInput,
    );
    let h = f.hold(0, &[0, 1]);
    f.no(b1, place(p, seats(&[(1, 0)])), Code::SeatUnavailable);
    f.ok(b1, place(p, ga(3, 0)));
    f.no(b0, place(p, ga(3, 0)), Code::SeatUnavailable);
    for s in [2, 3, 4] {
        f.hold(0, &[s]);
    }
    f.no(b0, place(p, seats(&[(5, 0)])), Code::LimitExceeded); // 5th live hold
    // Release, extend.
    f.no(b0, Op::ReleaseHold { hold: HoldId(999) }, Code::NotFound);
    f.no(b1, Op::ReleaseHold { hold: h }, Code::Forbidden);
    f.ok(
        b0,
        Op::ExtendHold {
            hold: h,
            payment_ref: "pay".into(),
        },
    );
    f.no(
        b0,
        Op::ExtendHold {
            hold: h,
            payment_ref: "pay".into(),
        },
        Code::InvalidState,
    );
    let h2 = f.hold(1, &[6]);
    f.no(
        b1,
        Op::ExtendHold {
            hold: h2,
            payment_ref: String::new(),
        },
        Code::InvalidInput,
    );
    f.ok(b1, Op::ReleaseHold { hold: h2 });
    f.ok(b1, Op::ReleaseHold { hold: h2 }); // idempotent
    f.no(
        b1,
        Op::ExtendHold {
            hold: h2,
            payment_ref: "p".into(),
        },
        Code::HoldNotLive,
    );
    // Confirm.
    let svc = f.svc;
    let confirm = |hold, seed: u8| Op::ConfirmHold {
        hold,
        payment_ref: "pay".into(),
        code_seed: [seed; 16],
    };
    f.no(b0, confirm(h, 1), Code::Forbidden);
    f.no(svc, confirm(HoldId(999), 0), Code::NotFound);
    f.no(svc, confirm(h2, 1), Code::HoldNotLive);
    let b = f.confirm(h, 2);
    f.no(svc, confirm(h, 8), Code::HoldNotLive);
    f.no(b0, Op::ReleaseHold { hold: h }, Code::HoldNotLive);
    // The check-in codes come from the seed; a seed used before still makes fresh codes.
    let h4 = f.hold(1, &[6]);
    let Reply::BookingConfirmed(b4) = f.ok(svc, confirm(h4, 7)) else {
        panic!()
    };
    let h5 = f.hold(1, &[5]);
    let Reply::BookingConfirmed(b5) = f.ok(svc, confirm(h5, 7)) else {
        panic!()
    };
    assert_ne!(b4.tickets[0].code, b5.tickets[0].code);
    assert!(!b.tickets.iter().any(|t| t.code == b5.tickets[0].code));
    let h3 = f.hold(1, &[7]);
    // Expiry by ledger time: a hold with expires_at <= clock is expired for every write.
    f.now += 10_000;
    f.no(svc, confirm(h3, 3), Code::HoldExpired);
    f.no(
        b1,
        Op::ExtendHold {
            hold: h3,
            payment_ref: "p".into(),
        },
        Code::HoldExpired,
    );
    assert_eq!(
        f.l.state().performances[&p].seats[7].get(),
        SeatState::Available
    );
    f.no(
        svc,
        Op::ConfirmLate {
            hold: h3,
            payment_ref: "p".into(),
            code_seed: [3; 16],
        },
        Code::InvalidState,
    );
}

#[test]
fn bookings_refunds_and_check_in() {
    let mut f = fix();
    let h = f.hold(0, &[0, 1]);
    let b = f.confirm(h, 2);
    let (svc, b0, org, org2, p) = (f.svc, f.buyers[0], f.org, f.org2, f.p);
    let refund = |booking, tickets: Vec<TicketId>| Op::Refund {
        booking,
        tickets,
        refund_ref: "r".into(),
    };
    let t = |k: usize| b.tickets[k].ticket;
    f.no(b0, refund(b.booking, vec![]), Code::Forbidden);
    f.no(svc, refund(BookingId(999), vec![]), Code::NotFound);
    f.no(svc, refund(b.booking, vec![TicketId(999)]), Code::NotFound);
    f.no(svc, refund(b.booking, vec![t(0), t(0)]), Code::InvalidInput);
    f.no(
        svc,
        refund(b.booking, vec![t(0), t(1), t(0)]),
        Code::InvalidInput,
    );
    f.no(
        svc,
        Op::Refund {
            booking: b.booking,
            tickets: vec![],
            refund_ref: String::new(),
        },
        Code::InvalidInput,
    );
    f.ok(svc, refund(b.booking, vec![t(0)]));
    f.no(svc, refund(b.booking, vec![t(0)]), Code::TicketUsed);
    let ci = |performance, code| Op::CheckIn { performance, code };
    f.no(org, ci(p, [0xee; 16]), Code::NotFound);
    f.no(org, ci(f.r, b.tickets[1].code), Code::NotFound);
    f.no(org2, ci(p, b.tickets[1].code), Code::Forbidden);
    f.no(b0, ci(p, b.tickets[1].code), Code::Forbidden);
    f.no(org, ci(p, b.tickets[0].code), Code::TicketUsed); // refunded
    f.ok(org, ci(p, b.tickets[1].code));
    f.no(org, ci(p, b.tickets[1].code), Code::TicketUsed); // exactly once
    f.no(svc, refund(b.booking, vec![]), Code::TicketUsed); // nothing left to refund
}

#[test]
fn waiting_room() {
    let mut f = fix();
    let (b0, b1, b2, org, p, r) = (f.buyers[0], f.buyers[1], f.buyers[2], f.org, f.p, f.r);
    f.no(b0, Op::JoinQueue { performance: p }, Code::InvalidInput);
    f.no(org, Op::JoinQueue { performance: r }, Code::Forbidden);
    f.no(
        b0,
        Op::JoinQueue {
            performance: PerformanceId(999),
        },
        Code::NotFound,
    );
    f.ok(b0, Op::JoinQueue { performance: r });
    f.no(b0, Op::JoinQueue { performance: r }, Code::AlreadyExists);
    f.ok(
        org,
        Op::SetSaleStatus {
            performance: r,
            status: SaleStatus::OnSale,
            seed: Some(SEED),
        },
    );
    let what = HoldRequest::Seats(vec![(SeatIdx(0), CategoryIdx(0))]);
    f.no(
        b1,
        Op::PlaceHold {
            performance: r,
            what: what.clone(),
        },
        Code::AdmissionRequired,
    );
    f.no(
        b0,
        Op::PlaceHold {
            performance: r,
            what: what.clone(),
        },
        Code::AdmissionRequired,
    ); // waiting, not admitted
    // Sell everything: block the seats, sell the 5 GA places to b0 once admitted.
    f.ok(
        org,
        Op::SetSeatsBlocked {
            performance: r,
            seats: (0..10).map(SeatIdx).collect(),
            blocked: true,
        },
    );
    f.now += 1_000;
    f.ok(Principal::System, Op::Tick);
    let ga = |q| HoldRequest::GeneralAdmission {
        section: SectionIdx(1),
        quantity: q,
        category: CategoryIdx(0),
    };
    for q in [3, 2] {
        let Reply::HoldPlaced(h) = f.ok(
            b0,
            Op::PlaceHold {
                performance: r,
                what: ga(q),
            },
        ) else {
            panic!()
        };
        f.confirm(h.hold, q as usize);
    }
    f.ok(b1, Op::JoinQueue { performance: r });
    f.ok(Principal::System, Op::Tick); // sold out: the room closes
    f.no(b2, Op::JoinQueue { performance: r }, Code::SoldOut);
    // The sell-out closed b0's admission too.
    f.no(
        b0,
        Op::PlaceHold {
            performance: r,
            what: ga(1),
        },
        Code::AdmissionRequired,
    );
    // Without a waiting room, a sold-out performance says so.
    f.ok(
        org,
        Op::SetSeatsBlocked {
            performance: p,
            seats: (0..10).map(SeatIdx).collect(),
            blocked: true,
        },
    );
    let Reply::HoldPlaced(h) = f.ok(
        b2,
        Op::PlaceHold {
            performance: p,
            what: ga(3),
        },
    ) else {
        panic!()
    };
    f.no(
        b1,
        Op::PlaceHold {
            performance: p,
            what: ga(3),
        },
        Code::SeatUnavailable,
    );
    let Reply::HoldPlaced(h2) = f.ok(
        b1,
        Op::PlaceHold {
            performance: p,
            what: ga(2),
        },
    ) else {
        panic!()
    };
    f.no(
        b1,
        Op::PlaceHold {
            performance: p,
            what: ga(1),
        },
        Code::SeatUnavailable,
    ); // all held
    f.confirm(h.hold, 3);
    f.confirm(h2.hold, 2);
    f.no(
        b1,
        Op::PlaceHold {
            performance: p,
            what: ga(1),
        },
        Code::SoldOut,
    );
    f.ok(
        org,
        Op::SetSaleStatus {
            performance: r,
            status: SaleStatus::Closed,
            seed: None,
        },
    );
    f.no(b2, Op::JoinQueue { performance: r }, Code::SaleNotOpen);
    f.no(
        org,
        Op::SetSaleStatus {
            performance: r,
            status: SaleStatus::OnSale,
            seed: None,
        },
        Code::InvalidState,
    );
    // An expired admission cannot place holds.
    let mut g = fix();
    let (b0, org, r) = (g.buyers[0], g.org, g.r);
    g.ok(b0, Op::JoinQueue { performance: r });
    g.ok(
        org,
        Op::SetSaleStatus {
            performance: r,
            status: SaleStatus::OnSale,
            seed: Some(SEED),
        },
    );
    g.now += 1_000;
    g.ok(Principal::System, Op::Tick);
    g.now += 10_000;
    // Tick first, so the twin's tick (which accrues admission credit) changes nothing more.
    g.ok(Principal::System, Op::Tick);
    g.no(
        b0,
        Op::PlaceHold {
            performance: r,
            what,
        },
        Code::AdmissionRequired,
    );
}

#[test]
fn idempotency() {
    let mut f = fix();
    let b0 = f.buyers[0];
    let p = f.p;
    let hold = |s| Op::PlaceHold {
        performance: p,
        what: HoldRequest::Seats(vec![(SeatIdx(s), CategoryIdx(0))]),
    };
    let first = f.run(b0, Command::new(0, b0, hold(0)).op);
    assert!(first.is_ok());
    f.i += 1;
    let keyed =
        f.l.apply(f.i, Command::new(f.now, b0, hold(1)).with_key("k1"));
    f.i += 1;
    assert_eq!(
        f.l.apply(f.i, Command::new(f.now, b0, hold(1)).with_key("k1")),
        keyed,
        "a retry returns the first outcome"
    );
    f.rejects(
        Command::new(f.now, b0, hold(2)).with_key("k1"),
        Code::IdempotencyConflict,
    );
    f.rejects(
        Command::new(f.now, b0, hold(2)).with_key("k".repeat(129)),
        Code::InvalidInput,
    );
    // Keys are per principal: the same key from another buyer is another request.
    f.i += 1;
    assert!(
        f.l.apply(
            f.i,
            Command::new(f.now, f.buyers[1], hold(3)).with_key("k1")
        )
        .is_ok()
    );
    // Kept 24 h of ledger time, then forgotten.
    f.now += limits::IDEMPOTENCY_RETENTION_MS;
    f.ok(Principal::System, Op::Tick);
    assert!(f.l.state().idempotency.is_empty());
}

#[test]
fn the_clock_never_goes_backwards() {
    let mut f = fix();
    let before = f.l.clock_ms();
    f.i += 1;
    f.l.apply(
        f.i,
        Command::new(before - 60_000, Principal::System, Op::Tick),
    );
    assert_eq!(f.l.clock_ms(), before);
}

#[test]
fn snapshots_round_trip_and_damaged_ones_are_clear_errors() {
    let mut f = fix();
    let h = f.hold(0, &[0, 1]);
    f.confirm(h, 2);
    let bytes = f.l.snapshot();
    let mut restored = Ledger::restore(&bytes).unwrap();
    assert_eq!(restored.state_hash(), f.l.state_hash());
    // Replaying the same commands on both gives the same state.
    let cmd = Command::new(
        f.now + 5,
        f.buyers[1],
        Op::PlaceHold {
            performance: f.p,
            what: HoldRequest::Seats(vec![(SeatIdx(3), CategoryIdx(0))]),
        },
    );
    f.i += 1;
    assert_eq!(restored.apply(f.i, cmd.clone()), f.l.apply(f.i, cmd));
    assert_eq!(restored.state_hash(), f.l.state_hash());
    let err = |b: &[u8]| Ledger::restore(b).expect_err("must be refused");
    assert!(matches!(err(&bytes[..10]), SnapshotError::TooShort { .. }));
    assert!(matches!(
        err(&bytes[..bytes.len() - 1]),
        SnapshotError::LengthMismatch { .. }
    ));
    let mut flipped = bytes.clone();
    let k = flipped.len() - 7;
    flipped[k] ^= 0x10;
    assert!(matches!(err(&flipped), SnapshotError::ChecksumMismatch));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(err(&magic), SnapshotError::BadMagic));
    let mut future = bytes.clone();
    future[8..12].copy_from_slice(&99u32.to_le_bytes());
    let e = err(&future);
    assert!(matches!(
        e,
        SnapshotError::UnsupportedVersion { found: 99, .. }
    ));
    assert!(e.to_string().contains("upgrade"), "{e}");
    // Bodies that decode but break a reference or an invariant are refused too.
    assert!(Ledger::restore_body(&bytes[52..bytes.len() - 3]).is_err());
}

/// Snapshot bodies crafted to overflow the sums and counters the restore path computes: each
/// panicked (arithmetic overflow) before those became checked; now each is a clear error.
#[test]
fn crafted_snapshots_that_overflow_counters_are_refused_without_panicking() {
    let mut f = fix();
    let h = f.hold(0, &[0, 1]);
    f.confirm(h, 2);
    let (b0, p) = (f.buyers[0], f.p);
    let ga = f.ok(
        b0,
        Op::PlaceHold {
            performance: p,
            what: HoldRequest::GeneralAdmission {
                section: SectionIdx(1),
                quantity: 2,
                category: CategoryIdx(0),
            },
        },
    );
    let Reply::HoldPlaced(ga) = ga else { panic!() };
    f.ok(
        f.org,
        Op::SetSaleStatus {
            performance: f.r,
            status: SaleStatus::OnSale,
            seed: Some(SEED),
        },
    );
    f.ok(f.buyers[1], Op::JoinQueue { performance: f.r });
    f.ok(f.buyers[2], Op::JoinQueue { performance: f.r });
    let good = f.l.state().clone();
    let restore = |s: &State| Ledger::restore_body(&postcard::to_stdvec(s).unwrap());
    assert!(restore(&good).is_ok());
    let refused = |what: &str, s: State| match restore(&s) {
        Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
        Ok(_) => panic!("{what}: restored"),
    };
    // Ticket prices summing past u64::MAX (booking total).
    let mut s = good.clone();
    let b = s.bookings.values_mut().next().unwrap();
    for t in &mut b.tickets {
        t.price_minor = u64::MAX / 2 + 1;
    }
    refused("ticket prices overflow", s);
    // A GA hold in a category with no price, for 65 535 places (the old code priced a
    // missing price at u64::MAX / 4 and multiplied).
    let mut s = good.clone();
    let hold = s.holds.get_mut(&ga.hold).unwrap();
    hold.ga = Some((SectionIdx(1), u16::MAX, CategoryIdx(1)));
    refused("unpriced GA hold", s);
    // Queue sequence numbers at the top of u32 (head_seq + k overflowed).
    let mut s = good.clone();
    let room = s
        .performances
        .get_mut(&f.r)
        .unwrap()
        .waiting_room
        .as_mut()
        .unwrap();
    for (k, e) in room.entries.iter_mut().enumerate() {
        e.seq = u32::MAX - 1 + k as u32 % 2;
    }
    room.next_seq = 5;
    refused("queue seqs overflow", s);
    // More live holds for one buyer than a u16 counts (the index build overflowed).
    let mut s = good.clone();
    let template = s.holds[&ga.hold].clone();
    for k in 0..=u64::from(u16::MAX) {
        let id = HoldId(s.next_id + k);
        s.holds.insert(
            id,
            Hold {
                id,
                ..template.clone()
            },
        );
    }
    s.next_id += 1 << 17;
    refused("65 536 live holds for one buyer", s);
    // Duplicates that only the index sizes reveal (restore skips per-entry index lookups).
    let mut s = good.clone();
    let email = s.users.values().next().unwrap().email.clone();
    s.users.values_mut().last().unwrap().email = email;
    refused("two users with one email", s);
    let mut s = good.clone();
    let b = s.bookings.values_mut().next().unwrap();
    b.tickets[1].code = b.tickets[0].code;
    refused("two tickets with one check-in code", s);
    let mut s = good.clone();
    let room = s
        .performances
        .get_mut(&f.r)
        .unwrap()
        .waiting_room
        .as_mut()
        .unwrap();
    room.entries[1].buyer = room.entries[0].buyer;
    refused("one buyer queued twice", s);
    // An admission in the expiry index for an entry that is only waiting: restore used to
    // accept it, and the next tick past that time panicked in the sweep.
    let mut s = good.clone();
    let q = QueueId {
        performance: f.r,
        join_index: 0,
    };
    s.admission_expiry.insert((s.clock_ms + 10, q));
    refused("an admission for a waiting entry", s);
}

/// `ConfirmLate`, the one rule for a payment that lands after its hold expired: every
/// refusal, then the booking of the same seats when they are still free.
#[test]
fn confirm_late() {
    let mut f = fix();
    let (b0, b1, b2, svc, p) = (f.buyers[0], f.buyers[1], f.buyers[2], f.svc, f.p);
    let late = |hold, payment_ref: &str, seed: u8| Op::ConfirmLate {
        hold,
        payment_ref: payment_ref.into(),
        code_seed: [seed; 16],
    };
    let extend = |hold| Op::ExtendHold {
        hold,
        payment_ref: "pay1".into(),
    };
    let h1 = f.hold(0, &[0, 1]);
    f.ok(b0, extend(h1));
    let ga = |quantity| Op::PlaceHold {
        performance: p,
        what: HoldRequest::GeneralAdmission {
            section: SectionIdx(1),
            quantity,
            category: CategoryIdx(0),
        },
    };
    let Reply::HoldPlaced(g) = f.ok(b2, ga(2)) else {
        panic!()
    };
    f.ok(b2, extend(g.hold));
    f.no(b0, late(h1, "pay1", 1), Code::Forbidden);
    f.no(svc, late(HoldId(999), "pay1", 1), Code::NotFound);
    f.no(svc, late(h1, "pay1", 1), Code::InvalidState); // still live
    let h2 = f.hold(1, &[2]);
    f.ok(b1, Op::ReleaseHold { hold: h2 });
    f.no(svc, late(h2, "pay1", 3), Code::HoldNotLive);
    // Both extended holds run out.
    f.now += 20_000;
    f.no(svc, late(h1, "other", 1), Code::InvalidState); // not this checkout's payment
    let h3 = f.hold(1, &[2]);
    f.no(svc, late(h3, "pay1", 3), Code::InvalidState); // never extended
    // Someone else took a seat, or the GA places, meanwhile: refused, the service refunds.
    let taken = f.hold(1, &[1]);
    f.no(svc, late(h1, "pay1", 1), Code::SeatUnavailable);
    f.ok(b1, Op::ReleaseHold { hold: taken });
    let Reply::HoldPlaced(blocker) = f.ok(b0, ga(3)) else {
        panic!()
    };
    f.ok(b1, ga(1));
    f.no(svc, late(g.hold, "pay1", 1), Code::SeatUnavailable);
    f.ok(b0, Op::ReleaseHold { hold: blocker.hold });
    // Still free: booked as if confirmed in time.
    let Reply::BookingConfirmed(b) = f.ok(svc, late(h1, "pay1", 1)) else {
        panic!()
    };
    assert_eq!(b.tickets.len(), 2);
    for s in [0, 1] {
        assert_eq!(
            f.l.state().performances[&p].seats[s].get(),
            SeatState::Sold(b.booking)
        );
    }
    let Reply::BookingConfirmed(_) = f.ok(svc, late(g.hold, "pay1", 4)) else {
        panic!()
    };
    f.l.check_invariants().unwrap();
    f.no(svc, late(h1, "pay1", 1), Code::HoldNotLive); // already booked
    // A cancelled performance books nothing.
    let mut g = fix();
    let (b0, svc, org, p) = (g.buyers[0], g.svc, g.org, g.p);
    let h = g.hold(0, &[0]);
    g.ok(b0, extend(h));
    g.now += 20_000;
    g.ok(
        org,
        Op::SetSaleStatus {
            performance: p,
            status: SaleStatus::Cancelled,
            seed: None,
        },
    );
    g.no(svc, late(h, "pay1", 1), Code::SaleNotOpen);
}

/// The paths the per-handler tests above leave out: each handler's remaining codes.
#[test]
fn remaining_paths() {
    let mut f = fix();
    let (b0, b1, org, p, event) = (f.buyers[0], f.buyers[1], f.org, f.p, f.event);
    f.no(b0, Op::RevokeApiKey { key: ApiKeyId(1) }, Code::Forbidden);
    let upd = |name: &str| Op::UpdateEvent {
        event,
        name: name.into(),
        category: "c".into(),
        description: String::new(),
        media: vec![],
    };
    f.no(b0, upd("E2"), Code::Forbidden);
    f.no(org, upd(""), Code::InvalidInput);
    f.no(
        org,
        Op::SetSeatsBlocked {
            performance: PerformanceId(999),
            seats: vec![SeatIdx(0)],
            blocked: true,
        },
        Code::NotFound,
    );
    let h = f.hold(0, &[0]);
    f.no(
        b1,
        Op::ExtendHold {
            hold: h,
            payment_ref: "p".into(),
        },
        Code::Forbidden,
    );
    f.no(
        Principal::User(UserId(999)),
        Op::JoinQueue { performance: f.r },
        Code::Unauthenticated,
    );
    f.no(
        Principal::ApiKey(ApiKeyId(999)),
        Op::PlaceHold {
            performance: p,
            what: HoldRequest::Seats(vec![(SeatIdx(1), CategoryIdx(0))]),
        },
        Code::Unauthenticated,
    );
}

/// Found by the fuzzer (snapshot_body): a user stored under another user's id restored, and
/// only the full invariant check (not the restore's) noticed its email lookup failing.
#[test]
fn a_user_keyed_by_another_id_is_refused() {
    let f = fix();
    let mut s = f.l.state().clone();
    let (&first, _) = s.users.iter().next().unwrap();
    let mut u = s.users.remove(&first).unwrap();
    u.id = UserId(first.0 + 1_000);
    s.users.insert(first, u);
    let body = postcard::to_stdvec(&s).unwrap();
    assert!(Ledger::restore_body(&body).is_err());
    // Restoring the fuzzer's input gives an error, not a ledger that fails its invariants.
    let crash = [
        0x84, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x04, 0x05, 0x01, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
        0x25, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x4f, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
        0x02, 0x08, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x82, 0x02, 0x02, 0x02, 0x31, 0x23, 0x01,
        0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
    ];
    if let Ok(l) = Ledger::restore_body(&crash) {
        l.check_invariants().unwrap();
    }
}
