//! Fairness of the waiting room, measured: over many sales (one seed each), the order of
//! those who joined before the opening is a uniform random permutation, and those who join
//! after it are queued behind them in join order, every time.
//!
//! The seeds are fixed (blake3 of the run number), so the test is deterministic: it cannot
//! flake, and a change to the shuffle that biases it fails here. The statistic is checked
//! to reject a biased table, so the test can fail.

mod common;

use common::*;
use ledger::*;

/// Sales simulated; 4 pre-queue buyers give 24 orders, 500 expected of each.
const RUNS: usize = 12_000;
const EARLY: usize = 4;
const LATE: usize = 2;
/// χ² critical values at p = 0.001: 23 degrees of freedom (24 permutations), and 9 for the
/// 4 × 4 table of buyer × position (margins fixed).
const CHI2_23_P001: f64 = 49.73;
const CHI2_9_P001: f64 = 27.88;

fn chi2(observed: &[u64], expected: f64) -> f64 {
    observed
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum()
}

fn permutation_index(order: &[u32]) -> usize {
    // Lehmer code of a permutation of 0..n.
    let mut idx = 0;
    for (i, &x) in order.iter().enumerate() {
        let smaller_after = order[i + 1..].iter().filter(|&&y| y < x).count();
        idx = idx * (order.len() - i) + smaller_after;
    }
    idx
}

fn buyer(f: &mut Fix, n: usize) -> Principal {
    match f.ok(
        Principal::System,
        Op::CreateUser {
            email: format!("fair{n}@x.io"),
            name: "F".into(),
            password_hash: vec![1],
            role: Role::Buyer,
        },
    ) {
        Reply::UserCreated { user } => Principal::User(user),
        r => panic!("{r:?}"),
    }
}

#[test]
fn the_prequeue_is_a_uniform_shuffle_and_late_joiners_are_fifo() {
    let mut base = fix();
    let buyers: Vec<Principal> = (0..EARLY + LATE).map(|n| buyer(&mut base, n)).collect();
    let mut perms = [0u64; 24];
    let mut by_position = [[0u64; EARLY]; EARLY];
    for run in 0..RUNS {
        let mut f = base.clone();
        let seed = *blake3::hash(&(run as u64).to_le_bytes()).as_bytes();
        let mut s = spec(f.event, f.venue, true);
        if let Some(w) = s.waiting_room.as_mut() {
            w.seed_commitment = *blake3::hash(&seed).as_bytes();
        }
        let Reply::PerformanceCreated { performance } = f.ok(f.org, Op::CreatePerformance(s))
        else {
            panic!()
        };
        for &b in &buyers[..EARLY] {
            f.ok(b, Op::JoinQueue { performance });
        }
        let org = f.org;
        f.ok(
            org,
            Op::SetSaleStatus {
                performance,
                status: SaleStatus::OnSale,
                seed: Some(seed),
            },
        );
        for &b in &buyers[EARLY..] {
            f.ok(b, Op::JoinQueue { performance });
        }
        let room = f.l.state().performances[&performance]
            .waiting_room
            .as_ref()
            .unwrap();
        let order: Vec<u32> = room.order.iter().copied().collect();
        // Joined after the opening: behind everyone, in join order.
        assert_eq!(
            order[EARLY..],
            (EARLY as u32..(EARLY + LATE) as u32).collect::<Vec<_>>()[..],
            "run {run}"
        );
        let early = &order[..EARLY];
        perms[permutation_index(early)] += 1;
        for (position, &j) in early.iter().enumerate() {
            by_position[j as usize][position] += 1;
        }
        if run == 0 {
            f.l.check_invariants().unwrap();
        }
    }
    let x_perm = chi2(&perms, RUNS as f64 / 24.0);
    let cells: Vec<u64> = by_position.iter().flatten().copied().collect();
    let x_pos = chi2(&cells, RUNS as f64 / EARLY as f64);
    println!("pre-queue orders over {RUNS} sales: {perms:?}");
    println!(
        "χ²(23) = {x_perm:.1} (critical {CHI2_23_P001}), buyer × position χ²(9) = {x_pos:.1} (critical {CHI2_9_P001})"
    );
    assert!(
        x_perm < CHI2_23_P001,
        "the pre-queue order is not uniform: χ² = {x_perm:.1}, counts {perms:?}"
    );
    assert!(
        x_pos < CHI2_9_P001,
        "a buyer's position depends on when it joined: χ² = {x_pos:.1}, {by_position:?}"
    );
    // The statistic does reject bias: first-come-first-served in the pre-queue, or one
    // order half again as often as the others, would have failed.
    let mut fifo = [0u64; 24];
    fifo[0] = RUNS as u64;
    assert!(chi2(&fifo, RUNS as f64 / 24.0) > CHI2_23_P001);
    let mut skewed = [(RUNS / 24) as u64; 24];
    skewed[5] += skewed[5] / 2;
    assert!(chi2(&skewed, RUNS as f64 / 24.0) > CHI2_23_P001);
}

#[test]
fn permutation_indexes_are_a_bijection() {
    let mut seen = std::collections::BTreeSet::new();
    for a in 0..4u32 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let p = [a, b, c, d];
                    let mut s = p;
                    s.sort();
                    if s == [0, 1, 2, 3] {
                        assert!(seen.insert(permutation_index(&p)));
                    }
                }
            }
        }
    }
    assert_eq!(seen, (0..24).collect());
}
