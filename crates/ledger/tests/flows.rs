//! Happy paths, step by step: holds, bookings and refunds, expiry by ledger time, idempotency,
//! the waiting room (seeded pre-queue, FIFO, rate, expiry, caps, pause, sell-out) and
//! snapshots of a sale in progress. Every step is followed by `check_invariants`.

mod common;

use common::*;
use ledger::*;

impl Fix {
    /// Like `ok`, then check every invariant.
    fn step(&mut self, p: Principal, op: Op) -> Reply {
        let r = self.ok(p, op);
        self.l.check_invariants().unwrap();
        r
    }

    fn tick(&mut self) -> u32 {
        match self.step(Principal::System, Op::Tick) {
            Reply::Ticked { admitted, .. } => admitted,
            r => panic!("{r:?}"),
        }
    }

    fn new_buyer(&mut self, n: usize) -> Principal {
        let op = Op::CreateUser {
            email: format!("q{n}@x.io"),
            name: "Q".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        };
        match self.step(Principal::System, op) {
            Reply::UserCreated { user } => Principal::User(user),
            r => panic!("{r:?}"),
        }
    }

    fn cell(&self, perf: PerformanceId, seat: u32) -> SeatState {
        self.l.state().performances[&perf].seats[seat as usize].get()
    }

    fn hold_state(&self, h: HoldId) -> HoldState {
        self.l.state().holds[&h].state
    }

    fn room(&self, perf: PerformanceId) -> &WaitingRoom {
        self.l.state().performances[&perf]
            .waiting_room
            .as_ref()
            .unwrap()
    }

    /// Changes emitted at or after log index `from`.
    fn changes_since(&self, from: u64) -> Vec<Change> {
        self.l
            .state()
            .feed
            .iter()
            .filter(|e| e.log_index >= from)
            .map(|e| e.change.clone())
            .collect()
    }

    fn open(&mut self, perf: PerformanceId) {
        let org = self.org;
        self.step(
            org,
            Op::SetSaleStatus {
                performance: perf,
                status: SaleStatus::OnSale,
                seed: Some(SEED),
            },
        );
    }

    fn hold_on(&mut self, b: Principal, perf: PerformanceId, what: HoldRequest) -> HoldReceipt {
        match self.step(
            b,
            Op::PlaceHold {
                performance: perf,
                what,
            },
        ) {
            Reply::HoldPlaced(h) => h,
            r => panic!("{r:?}"),
        }
    }

    fn admitted(&self, perf: PerformanceId) -> Vec<u32> {
        let room = self.room(perf);
        (0..room.entries.len() as u32)
            .filter(|&j| room.entries[j as usize].state == QueueState::Admitted)
            .collect()
    }
}

fn ga(quantity: u16) -> HoldRequest {
    HoldRequest::GeneralAdmission {
        section: SectionIdx(1),
        quantity,
        category: CategoryIdx(0),
    }
}

fn seat(s: u32) -> HoldRequest {
    HoldRequest::Seats(vec![(SeatIdx(s), CategoryIdx(0))])
}

fn best(section: u16, quantity: u16) -> HoldRequest {
    HoldRequest::BestAvailable {
        section: SectionIdx(section),
        quantity,
        category: CategoryIdx(0),
    }
}

#[test]
fn best_available_holds_free_seats_side_by_side_front_row_first() {
    let mut f = fix();
    let (p, b0, b1, b2) = (f.p, f.buyers[0], f.buyers[1], f.buyers[2]);
    let seats = |h: &HoldReceipt| h.seats.iter().map(|s| s.0).collect::<Vec<_>>();
    // Row 1 is seats 0..5, row 2 seats 5..10. Seat 1 is taken by name.
    f.hold(0, &[1]);
    let h = f.hold_on(b1, p, best(0, 3));
    assert_eq!(seats(&h), [2, 3, 4], "the first free run in the front row");
    assert_eq!(
        h.amount.amount_minor,
        f.hold_on(b2, p, seat(7)).amount.amount_minor * 3
    );
    // Row 1 has seat 0 alone; row 2 has 5, 6 and 8, 9 free.
    let h = f.hold_on(b0, p, best(0, 2));
    assert_eq!(
        seats(&h),
        [5, 6],
        "the next row when the front one has no run"
    );
    f.no(
        b1,
        Op::PlaceHold {
            performance: p,
            what: best(0, 3),
        },
        Code::SeatUnavailable,
    );
    assert_eq!(seats(&f.hold_on(b1, p, best(0, 1))), [0]);
    // Refused without a change: a GA section, no section, zero or too many, sold out here.
    f.no(
        b2,
        Op::PlaceHold {
            performance: p,
            what: best(1, 1),
        },
        Code::InvalidInput,
    );
    f.no(
        b2,
        Op::PlaceHold {
            performance: p,
            what: best(9, 1),
        },
        Code::InvalidInput,
    );
    f.no(
        b2,
        Op::PlaceHold {
            performance: p,
            what: best(0, 0),
        },
        Code::InvalidInput,
    );
    f.no(
        b2,
        Op::PlaceHold {
            performance: p,
            what: best(0, 11),
        },
        Code::LimitExceeded,
    );
    f.no(
        b2,
        Op::PlaceHold {
            performance: p,
            what: best(0, 3),
        },
        Code::SeatUnavailable,
    );
    assert_eq!(seats(&f.hold_on(b2, p, best(0, 2))), [8, 9]);
    let held = f.l.state().performances[&p].sections[0];
    assert_eq!((held.held, held.available()), (10, 0));
    f.l.check_invariants().unwrap();
}

#[test]
fn together_is_the_most_a_best_available_hold_gets() {
    let mut f = fix();
    let p = f.p;
    let together = |f: &Fix, section: u16| {
        let perf = &f.l.state().performances[&p];
        let venue = &f.l.state().venues[&perf.venue];
        perf.together(&venue.sections[usize::from(section)], SectionIdx(section))
    };
    // Row 1 is seats 0..5, row 2 seats 5..10; the per-order limit is 3.
    assert_eq!(together(&f, 0), 3, "a whole free row, capped at the limit");
    // Fragment both rows by name: row 1 keeps 0, 2-3; row 2 keeps 5-7, 9.
    f.hold(0, &[1, 4, 8]);
    let mut placed = Vec::new();
    for turn in 0.. {
        let b = f.buyers[1 + turn % 2];
        let t = together(&f, 0);
        let free = f.l.state().performances[&p].sections[0].available();
        assert!(t <= free);
        // One more than `together` is refused and changes nothing…
        if t < 3 {
            f.no(
                b,
                Op::PlaceHold {
                    performance: p,
                    what: best(0, (t + 1) as u16),
                },
                Code::SeatUnavailable,
            );
        }
        if t == 0 {
            assert_eq!(free, 0);
            break;
        }
        // …and `together` itself is held, side by side.
        let h = f.hold_on(b, p, best(0, t as u16));
        let s: Vec<u32> = h.seats.iter().map(|s| s.0).collect();
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{s:?}");
        placed.push(t);
    }
    assert_eq!(placed, [3, 2, 1, 1], "runs 5-7, 2-3, then 0 and 9 alone");
    // General admission (5 places): the places left, up to the per-order limit.
    assert_eq!(together(&f, 1), 3);
    let b = f.buyers[0];
    f.hold_on(b, p, ga(3));
    assert_eq!(together(&f, 1), 2);
    f.l.check_invariants().unwrap();
}

#[test]
fn hold_confirm_refund_single_tickets_and_the_whole_booking() {
    let mut f = fix();
    let (p, svc, org) = (f.p, f.svc, f.org);
    let h = f.hold(0, &[0, 1, 2]);
    f.l.check_invariants().unwrap();
    for s in 0..3 {
        assert_eq!(f.cell(p, s), SeatState::Held(h));
    }
    assert_eq!(f.l.state().holds[&h].amount, eur(3000));
    let b = f.confirm(h, 3);
    f.l.check_invariants().unwrap();
    assert_eq!(b.amount, eur(3000));
    assert_eq!(f.hold_state(h), HoldState::Confirmed(b.booking));
    for s in 0..3 {
        assert_eq!(f.cell(p, s), SeatState::Sold(b.booking));
    }
    assert_eq!(f.l.state().performances[&p].revenue_minor, 3000);
    // One ticket: its seat is for sale again.
    let Reply::Refunded { amount, tickets } = f.step(
        svc,
        Op::Refund {
            booking: b.booking,
            tickets: vec![b.tickets[0].ticket],
            refund_ref: "r1".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!((amount, tickets), (eur(1000), vec![b.tickets[0].ticket]));
    assert_eq!(f.cell(p, 0), SeatState::Available);
    assert_eq!(f.l.state().performances[&p].revenue_minor, 2000);
    // Check in one ticket, exactly once; then the whole booking refunds what is left.
    f.step(
        org,
        Op::CheckIn {
            performance: p,
            code: b.tickets[1].code,
        },
    );
    let Reply::Refunded { amount, tickets } = f.step(
        svc,
        Op::Refund {
            booking: b.booking,
            tickets: vec![],
            refund_ref: "r2".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!((amount, tickets), (eur(1000), vec![b.tickets[2].ticket]));
    assert_eq!(f.cell(p, 1), SeatState::Sold(b.booking)); // checked in, not refunded
    assert_eq!(f.cell(p, 2), SeatState::Available);
    assert_eq!(f.l.state().performances[&p].revenue_minor, 1000);
    assert_eq!(f.l.state().bookings[&b.booking].refunded_minor, 2000);
    // The refunded seats sell again.
    let h2 = f.hold(1, &[0, 2]);
    f.confirm(h2, 2);
    f.l.check_invariants().unwrap();
}

#[test]
fn general_admission_holds_count_places() {
    let mut f = fix();
    let (p, b0, b1, b2) = (f.p, f.buyers[0], f.buyers[1], f.buyers[2]);
    let sec = |f: &Fix| f.l.state().performances[&p].sections[1];
    let h0 = f.hold_on(b0, p, ga(3));
    assert_eq!((h0.quantity, h0.seats.len()), (3, 0));
    assert_eq!(h0.amount, eur(900));
    let h1 = f.hold_on(b1, p, ga(2));
    assert_eq!((sec(&f).held, sec(&f).available()), (5, 0));
    assert_eq!(
        f.run(
            b2,
            Op::PlaceHold {
                performance: p,
                what: ga(1)
            }
        )
        .code(),
        Some(Code::SeatUnavailable)
    );
    f.step(b1, Op::ReleaseHold { hold: h1.hold });
    assert_eq!((sec(&f).held, sec(&f).available()), (3, 2));
    let b = f.confirm(h0.hold, 3);
    assert!(
        b.tickets
            .iter()
            .all(|t| t.seat.is_none() && t.section == SectionIdx(1))
    );
    assert_eq!((sec(&f).held, sec(&f).sold), (0, 3));
    f.hold_on(b2, p, ga(2));
    f.l.check_invariants().unwrap();
}

#[test]
fn a_hold_extends_once_into_the_payment_grace() {
    let mut f = fix();
    let (p, b0) = (f.p, f.buyers[0]);
    let h = f.hold(0, &[4]);
    let placed = f.now;
    assert_eq!(f.l.state().holds[&h].expires_at_ms, placed + 10_000);
    f.now += 5_000;
    let Reply::HoldExtended { expires_at_ms } = f.step(
        b0,
        Op::ExtendHold {
            hold: h,
            payment_ref: "pay".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!(expires_at_ms, placed + 5_000 + 20_000);
    // Past the original TTL it is still live...
    f.now = placed + 10_000;
    f.tick();
    assert_eq!(f.hold_state(h), HoldState::Live);
    f.now = expires_at_ms - 1;
    f.tick();
    assert_eq!(f.cell(p, 4), SeatState::Held(h));
    // ...and it ends at the extended time, not later.
    f.now = expires_at_ms;
    f.tick();
    assert_eq!(f.hold_state(h), HoldState::Expired);
    assert_eq!(f.cell(p, 4), SeatState::Available);
}

#[test]
fn a_hold_expires_by_ledger_time_for_every_read_and_write() {
    let mut f = fix();
    let (p, svc, b1) = (f.p, f.svc, f.buyers[1]);
    let h = f.hold(0, &[3, 4]);
    let expires = f.l.state().holds[&h].expires_at_ms;
    // One millisecond before, a hold by someone else on its seats is refused...
    f.now = expires - 1;
    assert_eq!(
        f.run(
            b1,
            Op::PlaceHold {
                performance: p,
                what: seat(3)
            }
        )
        .code(),
        Some(Code::SeatUnavailable)
    );
    // ...at expires_at == clock it is gone, whatever the command: no tick has run.
    f.now = expires;
    let at = f.i + 1;
    assert_eq!(
        f.run(
            svc,
            Op::ConfirmHold {
                hold: h,
                payment_ref: "late".into(),
                code_seed: [1; 16],
            }
        )
        .code(),
        Some(Code::HoldExpired)
    );
    assert_eq!(f.hold_state(h), HoldState::Expired);
    assert_eq!(
        (f.cell(p, 3), f.cell(p, 4)),
        (SeatState::Available, SeatState::Available)
    );
    assert!(f.changes_since(at).contains(&Change::HoldExpired {
        hold: h,
        performance: p
    }));
    assert_eq!(f.l.live_holds(), 0);
    f.l.check_invariants().unwrap();
    let again = f.hold_on(b1, p, seat(3));
    assert_eq!(again.expires_at_ms, expires + 10_000);
}

#[test]
fn idempotent_retries_return_the_first_outcome_for_24h() {
    let mut f = fix();
    let (p, b0) = (f.p, f.buyers[0]);
    let keyed = |f: &mut Fix, s: u32, key: &str| {
        f.i += 1;
        let cmd = Command::new(
            f.now,
            b0,
            Op::PlaceHold {
                performance: p,
                what: seat(s),
            },
        )
        .with_key(key);
        let o = f.l.apply(f.i, cmd);
        f.l.check_invariants().unwrap();
        o
    };
    let first = keyed(&mut f, 0, "k");
    let Outcome::Ok(Reply::HoldPlaced(h)) = &first else {
        panic!("{first:?}")
    };
    // The hold ends; a retry still answers with the first receipt and places nothing.
    f.step(b0, Op::ReleaseHold { hold: h.hold });
    f.now += 1_000;
    let holds = f.l.state().holds.len();
    assert_eq!(keyed(&mut f, 0, "k"), first);
    assert_eq!(f.l.state().holds.len(), holds);
    assert_eq!(f.l.live_holds(), 0);
    // A rejected first outcome is replayed too.
    f.hold(1, &[5]);
    let refused = keyed(&mut f, 5, "k2");
    assert_eq!(refused.code(), Some(Code::SeatUnavailable));
    assert_eq!(keyed(&mut f, 5, "k2"), refused);
    // Another request under the same key is a conflict.
    assert_eq!(
        keyed(&mut f, 1, "k").code(),
        Some(Code::IdempotencyConflict)
    );
    // After 24 h of ledger time the record is gone and the key is new again: the request
    // runs anew (the sale window has ended by then, so it is refused for that, not as a
    // conflict) and is the only record kept.
    f.now += limits::IDEMPOTENCY_RETENTION_MS;
    assert_eq!(keyed(&mut f, 1, "k").code(), Some(Code::SaleNotOpen));
    assert_eq!(f.l.state().idempotency.len(), 1);
    assert!(f.l.state().idempotency.values().all(|r| r.at_ms == f.now));
}

/// `n` buyers in the waiting room of `perf` (draft: pre-queue), in join order.
fn join(f: &mut Fix, perf: PerformanceId, from: usize, n: usize) -> Vec<Principal> {
    (from..from + n)
        .map(|k| {
            let b = f.new_buyer(k);
            f.step(b, Op::JoinQueue { performance: perf });
            b
        })
        .collect()
}

#[test]
fn the_prequeue_is_ordered_by_the_seeded_rank_then_fifo() {
    let mut f = fix();
    let r = f.r;
    let early = join(&mut f, r, 0, 20);
    assert!(
        f.room(r)
            .entries
            .iter()
            .all(|e| e.state == QueueState::PreQueue)
    );
    let at = f.i + 1;
    f.open(r);
    let mut expected: Vec<u32> = (0..20).collect();
    expected.sort_by_key(|&j| {
        prequeue_rank(
            &SEED,
            QueueId {
                performance: r,
                join_index: j,
            },
        )
    });
    assert_ne!(
        expected,
        (0..20).collect::<Vec<_>>(),
        "the shuffle moved someone"
    );
    assert!(f.changes_since(at).contains(&Change::SeedRevealed {
        performance: r,
        seed: SEED,
        prequeue_len: 20
    }));
    // Those who join after opening queue behind the pre-queue, in arrival order.
    let late = join(&mut f, r, 20, 5);
    expected.extend(20..25);
    let order: Vec<u32> = f.room(r).order.iter().copied().collect();
    assert_eq!(order, expected);
    for (k, &j) in expected.iter().enumerate() {
        let q = QueueId {
            performance: r,
            join_index: j,
        };
        assert_eq!(f.l.queue_entry(q).unwrap().1, Some(k as u64));
    }
    // And they are admitted in exactly that order (rate 10/s: one second admits 10).
    f.now += 1_000;
    assert_eq!(f.tick(), 10);
    let mut admitted = f.admitted(r);
    admitted.sort_by_key(|&j| expected.iter().position(|&x| x == j));
    assert_eq!(admitted, expected[..10]);
    assert_eq!((early.len(), late.len()), (20, 5));
}

#[test]
fn admission_follows_the_rate_and_banks_at_most_one_second() {
    let mut f = fix();
    let r = f.r;
    join(&mut f, r, 0, 40);
    f.open(r);
    f.now += 100;
    assert_eq!(f.tick(), 1);
    f.now += 400;
    assert_eq!(f.tick(), 4);
    f.now += 50;
    assert_eq!(f.tick(), 0); // half an entry of credit, kept
    f.now += 50;
    assert_eq!(f.tick(), 1);
    // A quiet spell of 5 s releases one second's worth, not five.
    f.now += 5_000;
    assert_eq!(f.tick(), 10);
    assert_eq!(f.room(r).admitted_total, 16);
    assert_eq!(f.room(r).active_admissions, 16);
    assert_eq!(f.room(r).order.len(), 24);
}

#[test]
fn an_admission_lets_its_holder_hold_until_it_expires() {
    let mut f = fix();
    let r = f.r;
    let b = join(&mut f, r, 0, 1)[0];
    f.open(r);
    f.now += 1_000;
    assert_eq!(f.tick(), 1);
    let q = QueueId {
        performance: r,
        join_index: 0,
    };
    let until = f.room(r).entries[0].admitted_until_ms;
    assert_eq!(until, f.now + 10_000);
    f.now = until - 1;
    let h = f.hold_on(b, r, seat(0));
    f.now = until;
    let at = f.i + 1;
    assert_eq!(
        f.run(
            b,
            Op::PlaceHold {
                performance: r,
                what: seat(1)
            }
        )
        .code(),
        Some(Code::AdmissionRequired)
    );
    assert_eq!(f.room(r).entries[0].state, QueueState::Expired);
    assert_eq!(f.room(r).active_admissions, 0);
    assert!(
        f.changes_since(at)
            .contains(&Change::AdmissionExpired { queue: q })
    );
    // The hold placed while admitted lives its own TTL.
    assert_eq!(f.hold_state(h.hold), HoldState::Live);
    f.l.check_invariants().unwrap();
}

#[test]
fn max_active_admissions_caps_the_admitted() {
    let mut f = fix();
    let (event, venue, org) = (f.event, f.venue, f.org);
    let mut s = spec(event, venue, true);
    s.waiting_room.as_mut().unwrap().max_active_admissions = 2;
    let Reply::PerformanceCreated { performance: m } = f.step(org, Op::CreatePerformance(s)) else {
        panic!()
    };
    join(&mut f, m, 0, 6);
    f.open(m);
    f.now += 1_000;
    assert_eq!(f.tick(), 2);
    f.now += 1_000;
    assert_eq!(f.tick(), 0);
    // When the two admissions run out, two more are let in.
    f.now += 10_000;
    assert_eq!(f.tick(), 2);
    assert_eq!(f.room(m).active_admissions, 2);
    assert_eq!(f.room(m).admitted_total, 4);
}

#[test]
fn admission_pauses_while_every_seat_is_held_and_the_sell_out_closes_the_room() {
    let mut f = fix();
    let (r, org, svc) = (f.r, f.org, f.svc);
    let q = join(&mut f, r, 0, 6);
    f.step(
        org,
        Op::SetSeatsBlocked {
            performance: r,
            seats: (0..10).map(SeatIdx).collect(),
            blocked: true,
        },
    );
    f.open(r);
    // Only the 5 GA places are for sale. Admit two, who hold all five.
    f.now += 200;
    assert_eq!(f.tick(), 2);
    let admitted = f.admitted(r);
    let who = |j: u32, f: &Fix| f.room(r).entries[j as usize].buyer;
    let (a, b) = (who(admitted[0], &f), who(admitted[1], &f));
    let ha = f.hold_on(a, r, ga(3));
    let hb = f.hold_on(b, r, ga(2));
    // Everything held: the tick admits nobody and banks no credit, but nobody is turned away.
    f.now += 2_000;
    assert_eq!(f.tick(), 0);
    assert_eq!(f.room(r).order.len(), 4);
    assert!(!f.room(r).sold_out);
    // A release reopens admission at the rate, from zero credit.
    f.step(b, Op::ReleaseHold { hold: hb.hold });
    f.now += 100;
    assert_eq!(f.tick(), 1);
    let next = *f
        .admitted(r)
        .iter()
        .find(|j| !admitted.contains(j))
        .unwrap();
    let c = who(next, &f);
    let hc = f.hold_on(c, r, ga(2));
    f.confirm(ha.hold, 3);
    f.confirm(hc.hold, 2);
    // Sold out: the next tick closes the room and says how many were still waiting.
    let at = f.i + 1;
    f.now += 100;
    assert_eq!(f.tick(), 0);
    assert!(f.changes_since(at).contains(&Change::QueueSoldOut {
        performance: r,
        waiting: 3
    }));
    assert!(f.room(r).sold_out);
    assert!(f.room(r).order.is_empty());
    assert_eq!(f.room(r).active_admissions, 0);
    assert!(
        f.room(r)
            .entries
            .iter()
            .all(|e| matches!(e.state, QueueState::Closed | QueueState::Expired))
    );
    let late = f.new_buyer(99);
    assert_eq!(
        f.run(late, Op::JoinQueue { performance: r }).code(),
        Some(Code::SoldOut)
    );
    assert_eq!(q.len(), 6);
    f.l.check_invariants().unwrap();
    // A refund puts stock back: the room admits again.
    let b =
        f.l.state()
            .bookings
            .values()
            .find(|b| b.hold == hc.hold)
            .unwrap()
            .id;
    f.step(
        svc,
        Op::Refund {
            booking: b,
            tickets: vec![],
            refund_ref: "r".into(),
        },
    );
    assert!(!f.room(r).sold_out);
    f.step(late, Op::JoinQueue { performance: r });
    f.now += 100;
    assert_eq!(f.tick(), 1);
}

#[test]
fn a_lower_stamp_leaves_the_clock_where_it_is() {
    let mut f = fix();
    let h = f.hold(0, &[0]);
    let expires = f.l.state().holds[&h].expires_at_ms;
    f.now = expires - 1;
    f.tick();
    let clock = f.l.clock_ms();
    // A new leader whose clock is behind stamps an older time: nothing is un-expired or
    // re-expired, and holds it places expire from the ledger clock, not from its stamp.
    f.now = T0;
    assert_eq!(f.tick(), 0);
    assert_eq!(f.l.clock_ms(), clock);
    let h2 = f.hold(1, &[1]);
    assert_eq!(f.l.state().holds[&h2].expires_at_ms, clock + 10_000);
    f.now = expires;
    f.tick();
    assert_eq!(f.hold_state(h), HoldState::Expired);
}

#[test]
fn a_restored_sale_in_progress_replays_identically() {
    let mut f = fix();
    let (r, svc) = (f.r, f.svc);
    join(&mut f, r, 0, 8);
    f.open(r);
    join(&mut f, r, 8, 3);
    f.now += 300;
    f.tick();
    let admitted = f.admitted(r);
    let first = f.room(r).entries[admitted[0] as usize].buyer;
    let h = f.hold_on(first, r, seat(2));
    f.confirm(h.hold, 1);
    let second = f.room(r).entries[admitted[1] as usize].buyer;
    f.hold_on(second, r, ga(2));
    let bytes = f.l.snapshot();
    let mut restored = Ledger::restore(&bytes).unwrap();
    assert_eq!(restored.state_hash(), f.l.state_hash());
    assert_eq!(restored.snapshot(), bytes);
    // The same further commands (admissions, an expiry, a refund, keyed retries) on both.
    let b = f.l.state().bookings.keys().next().copied().unwrap();
    let third = f.room(r).entries[admitted[2] as usize].buyer;
    let mut cmds = vec![
        Command::new(f.now + 500, Principal::System, Op::Tick),
        Command::new(
            f.now + 600,
            third,
            Op::PlaceHold {
                performance: r,
                what: seat(7),
            },
        )
        .with_key("x"),
        Command::new(
            f.now + 700,
            third,
            Op::PlaceHold {
                performance: r,
                what: seat(7),
            },
        )
        .with_key("x"),
        Command::new(
            f.now + 800,
            svc,
            Op::Refund {
                booking: b,
                tickets: vec![],
                refund_ref: "r".into(),
            },
        ),
    ];
    for k in 1..=30 {
        cmds.push(Command::new(f.now + 1_000 * k, Principal::System, Op::Tick));
    }
    for cmd in cmds {
        f.i += 1;
        assert_eq!(restored.apply(f.i, cmd.clone()), f.l.apply(f.i, cmd));
        assert_eq!(restored.state_hash(), f.l.state_hash());
    }
    restored.check_invariants().unwrap();
    assert!(
        restored
            .state()
            .holds
            .values()
            .any(|h| h.state == HoldState::Expired)
    );
}

#[test]
fn a_checkout_lives_in_the_ledger_until_the_payment_is_settled() {
    let mut f = fix();
    let (p, svc, b0, b1) = (f.p, f.svc, f.buyers[0], f.buyers[1]);
    let paid = |f: &mut Fix, h: HoldId, r: &str, event: PaymentEvent| {
        f.step(
            svc,
            Op::RecordPayment {
                hold: h,
                payment_ref: r.into(),
                event,
            },
        )
    };
    let captured = |r: &str| PaymentEvent::Captured {
        provider_ref: format!("cap-{r}"),
    };
    let extend = |f: &mut Fix, h: HoldId, r: &str| {
        f.step(
            svc,
            Op::ExtendHold {
                hold: h,
                payment_ref: r.into(),
            },
        );
    };
    // 1. Captured, then confirmed (under the checkout's own reference): closes as booked.
    let h1 = f.hold(0, &[1]);
    extend(&mut f, h1, "pay");
    assert_eq!(f.l.state().holds[&h1].checkout, Some(Checkout::Started));
    assert!(f.l.ix_open_checkouts().contains(&h1));
    let r = paid(&mut f, h1, "pay", captured("r1"));
    // A repeat is answered the same and changes nothing.
    assert_eq!(paid(&mut f, h1, "pay", captured("r1")), r);
    f.no(
        svc,
        Op::ConfirmHold {
            hold: h1,
            payment_ref: "other".into(),
            code_seed: [9; 16],
        },
        Code::InvalidState,
    );
    f.confirm(h1, 1);
    assert_eq!(f.l.state().holds[&h1].checkout, Some(Checkout::Booked));
    // A malformed event is invalid input whatever the checkout's state.
    f.no(
        svc,
        Op::RecordPayment {
            hold: h1,
            payment_ref: "pay".into(),
            event: PaymentEvent::Captured {
                provider_ref: String::new(),
            },
        },
        Code::InvalidInput,
    );
    assert!(!f.l.ix_open_checkouts().contains(&h1));
    // 2. Declined: the hold is released at once and the seat is on sale again.
    let h2 = f.hold(0, &[2]);
    extend(&mut f, h2, "r2");
    paid(
        &mut f,
        h2,
        "r2",
        PaymentEvent::Failed {
            reason: "declined".into(),
        },
    );
    assert_eq!(f.hold_state(h2), HoldState::Released);
    assert_eq!(f.cell(p, 2), SeatState::Available);
    // Money cannot be recorded on a failed checkout, nor a failed one booked.
    f.no(
        svc,
        Op::RecordPayment {
            hold: h2,
            payment_ref: "r2".into(),
            event: captured("r2"),
        },
        Code::InvalidState,
    );
    // 3. The payment lands after the hold expired: the ended hold is kept (not queued for
    //    forgetting) while its checkout is open, so the late rule can still book it...
    let h3 = f.hold(0, &[3]);
    extend(&mut f, h3, "r3");
    let until = f.l.state().holds[&h3].expires_at_ms;
    f.now = until;
    f.tick();
    assert_eq!(f.hold_state(h3), HoldState::Expired);
    assert!(!f.l.state().ended_holds.iter().any(|e| e.1 == h3));
    paid(&mut f, h3, "r3", captured("r3"));
    f.step(
        svc,
        Op::ConfirmLate {
            hold: h3,
            payment_ref: "r3".into(),
            code_seed: [3; 16],
        },
    );
    assert_eq!(f.l.state().holds[&h3].checkout, Some(Checkout::Booked));
    // 4. ...or, when someone else took the seat meanwhile, it is refused and refunded.
    let h4 = f.hold(0, &[4]);
    extend(&mut f, h4, "r4");
    f.now = f.l.state().holds[&h4].expires_at_ms;
    f.tick();
    f.hold_on(b1, p, seat(4));
    paid(&mut f, h4, "r4", captured("r4"));
    f.no(
        svc,
        Op::ConfirmLate {
            hold: h4,
            payment_ref: "r4".into(),
            code_seed: [4; 16],
        },
        Code::SeatUnavailable,
    );
    paid(
        &mut f,
        h4,
        "r4",
        PaymentEvent::Refunded {
            provider_ref: "ref-r4".into(),
            reason: "seats taken after expiry".into(),
        },
    );
    assert!(f.l.state().ended_holds.iter().any(|e| e.1 == h4));
    assert!(f.l.ix_open_checkouts().is_empty());
    // Only a service records payments; a buyer may not.
    let h5 = f.hold(0, &[5]);
    extend(&mut f, h5, "r5");
    f.no(
        b0,
        Op::RecordPayment {
            hold: h5,
            payment_ref: "r5".into(),
            event: captured("r5"),
        },
        Code::Forbidden,
    );
    // Snapshots carry open checkouts and rebuild their index.
    let snap = f.l.snapshot();
    let back = Ledger::restore(&snap).unwrap();
    assert_eq!(back.state_hash(), f.l.state_hash());
    assert!(back.ix_open_checkouts().contains(&h5));
}

/// The payments service retries a confirm under the same idempotency key when an answer is
/// lost; the node that proposes the retry draws a new check-in code seed. The retry is the
/// same request: it gets the first booking, never a conflict (which the service would take as
/// a refusal, and refund a booked order).
#[test]
fn a_confirm_retried_with_a_new_code_seed_gets_the_first_booking() {
    let mut f = fix();
    let svc = f.svc;
    let keyed = |f: &mut Fix, op: Op, key: &str| {
        f.i += 1;
        let o = f.l.apply(f.i, Command::new(f.now, svc, op).with_key(key));
        f.l.check_invariants().unwrap();
        o
    };
    let checkout = |f: &mut Fix, h: HoldId, r: &str| {
        f.step(
            svc,
            Op::ExtendHold {
                hold: h,
                payment_ref: r.into(),
            },
        );
        f.step(
            svc,
            Op::RecordPayment {
                hold: h,
                payment_ref: r.into(),
                event: PaymentEvent::Captured {
                    provider_ref: format!("cap-{r}"),
                },
            },
        );
    };
    // A live hold.
    let h1 = f.hold(0, &[1, 2]);
    checkout(&mut f, h1, "pay-1");
    let confirm = |seed: u8| Op::ConfirmHold {
        hold: h1,
        payment_ref: "pay-1".into(),
        code_seed: [seed; 16],
    };
    let first = keyed(&mut f, confirm(1), "c1");
    let Outcome::Ok(Reply::BookingConfirmed(b)) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(b.tickets.len(), 2);
    assert_eq!(keyed(&mut f, confirm(2), "c1"), first);
    // A hold booked after it expired (the written rule).
    let h2 = f.hold(0, &[3]);
    checkout(&mut f, h2, "pay-2");
    f.now = f.l.state().holds[&h2].expires_at_ms;
    f.tick();
    let late = |seed: u8| Op::ConfirmLate {
        hold: h2,
        payment_ref: "pay-2".into(),
        code_seed: [seed; 16],
    };
    let first = keyed(&mut f, late(1), "c2");
    assert!(
        matches!(first, Outcome::Ok(Reply::BookingConfirmed(_))),
        "{first:?}"
    );
    assert_eq!(keyed(&mut f, late(9), "c2"), first);
    // The same key with another hold is still a conflict.
    assert_eq!(
        keyed(&mut f, late(1), "c1").code(),
        Some(Code::IdempotencyConflict)
    );
}

#[test]
fn bookings_are_listed_per_buyer_and_per_performance_and_survive_a_restore() {
    let mut f = fix();
    let (b0, b1, p) = (f.buyers[0], f.buyers[1], f.p);
    let h1 = f.hold(0, &[0, 1]);
    let k1 = f.confirm(h1, 2).booking;
    let h2 = f.hold(1, &[2]);
    let k2 = f.confirm(h2, 1).booking;
    let h3 = f.hold(0, &[3]);
    let k3 = f.confirm(h3, 1).booking;
    f.l.check_invariants().unwrap();
    let ids = |it: &mut dyn Iterator<Item = &Booking>| it.map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(ids(&mut f.l.bookings_of(b0, None)), vec![k1, k3]);
    assert_eq!(ids(&mut f.l.bookings_of(b0, Some(k1))), vec![k3]);
    assert_eq!(ids(&mut f.l.bookings_of(b1, None)), vec![k2]);
    assert_eq!(ids(&mut f.l.bookings_of(f.buyers[2], None)), vec![]);
    assert_eq!(ids(&mut f.l.bookings_for(p, None)), vec![k1, k2, k3]);
    assert_eq!(ids(&mut f.l.bookings_for(p, Some(k2))), vec![k3]);
    assert_eq!(ids(&mut f.l.bookings_for(f.r, None)), vec![]);
    // A refund keeps the booking listed (with its refunded tickets).
    f.ok(
        f.svc,
        Op::Refund {
            booking: k1,
            tickets: vec![],
            refund_ref: "r".into(),
        },
    );
    let restored = Ledger::restore(&f.l.snapshot()).unwrap();
    restored.check_invariants().unwrap();
    assert_eq!(ids(&mut restored.bookings_of(b0, None)), vec![k1, k3]);
    assert_eq!(ids(&mut restored.bookings_for(p, None)), vec![k1, k2, k3]);
}
