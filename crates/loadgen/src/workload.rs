//! What to send, independent of the system it goes to: the seat pool, the buyers, and the
//! sequence of operations of each workload. Every system gets the same pool and the same
//! choices, so their results compare like with like.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Most seats one hold takes (the issue: 1-4 random seats per hold).
pub const MAX_SEATS_PER_HOLD: usize = 4;
/// Largest seat pool a run may ask for (every system pre-creates or indexes it).
pub const MAX_SEATS_TOTAL: u64 = 5_000_000;

/// The seat pool: `performances` performances, each with `sections` × `rows` × `seats_per_row`
/// seats named `S<section>:<row>:<seat>` (all from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub performances: u32,
    pub sections: u32,
    pub rows: u32,
    pub seats_per_row: u32,
}

impl Layout {
    pub fn seats_per_performance(&self) -> u32 {
        self.sections * self.rows * self.seats_per_row
    }

    pub fn seats_total(&self) -> u64 {
        u64::from(self.performances) * u64::from(self.seats_per_performance())
    }

    /// Checked once at start-up: every count positive and the pool within the limits.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.performances >= 1
                && self.sections >= 1
                && self.rows >= 1
                && self.seats_per_row >= 1,
            "--performances, --sections, --rows and --seats-per-row must all be at least 1"
        );
        anyhow::ensure!(
            self.sections <= 256 && self.rows <= 2_000 && self.seats_per_row <= 2_000,
            "at most 256 sections, 2,000 rows and 2,000 seats per row (the ledger's venue limits)"
        );
        anyhow::ensure!(
            self.seats_per_performance() <= 200_000,
            "at most 200,000 seats per performance (the ledger's venue limit); add performances instead"
        );
        anyhow::ensure!(
            self.seats_total() <= MAX_SEATS_TOTAL,
            "at most {MAX_SEATS_TOTAL} seats over all performances"
        );
        Ok(())
    }

    /// The name of seat `flat` (0-based within its performance), e.g. `S3:12:7`.
    pub fn seat_name(&self, flat: u32) -> String {
        let per_section = self.rows * self.seats_per_row;
        let section = flat / per_section + 1;
        let in_section = flat % per_section;
        let row = in_section / self.seats_per_row + 1;
        let seat = in_section % self.seats_per_row + 1;
        format!("S{section}:{row}:{seat}")
    }

    pub fn section_name(section: u32) -> String {
        format!("S{}", section + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Hold 1-4 random seats.
    Hold,
    /// Hold 1-4 random seats, then confirm the hold (two writes; latency is the pair's).
    HoldConfirm,
    /// Join a performance's waiting room (each buyer once per room).
    Queue,
    /// Read one hold linearizably.
    Read,
    /// The on-sale mix: 40% reads, 40% holds, 10% hold+confirm, 10% queue joins.
    Mix,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hold => "hold",
            Workload::HoldConfirm => "hold-confirm",
            Workload::Queue => "queue",
            Workload::Read => "read",
            Workload::Mix => "mix",
        }
    }

    pub fn needs_queues(self) -> bool {
        matches!(self, Workload::Queue | Workload::Mix)
    }

    pub fn needs_reads(self) -> bool {
        matches!(self, Workload::Read | Workload::Mix)
    }
}

/// Up to [`MAX_SEATS_PER_HOLD`] distinct seats of one performance, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seats {
    len: u8,
    flat: [u32; MAX_SEATS_PER_HOLD],
}

impl Seats {
    pub fn as_slice(&self) -> &[u32] {
        &self.flat[..usize::from(self.len)]
    }
}

/// One operation, as every system understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Hold { perf: u32, buyer: u32, seats: Seats },
    HoldConfirm { perf: u32, buyer: u32, seats: Seats },
    Join { room: u32, buyer: u32 },
    Read { slot: u32 },
}

impl Op {
    #[cfg(test)]
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Hold { .. } => "hold",
            Op::HoldConfirm { .. } => "hold-confirm",
            Op::Join { .. } => "queue",
            Op::Read { .. } => "read",
        }
    }
}

/// Sizes of what the systems set up before the run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub workload: Workload,
    pub layout: Layout,
    /// Distinct buyers (API keys on ticketledger). Holds go round-robin over performances
    /// and then buyers, so a buyer comes back to a performance only every
    /// `performances × buyers` holds (the ledger allows 4 live holds per buyer and performance).
    pub buyers: u32,
    /// Waiting rooms for queue joins; each buyer joins each room once.
    pub rooms: u32,
    /// Holds (seats on the peers) created before the run for the read workload.
    pub read_slots: u32,
}

/// Hands out operations; shared by every worker (the counters are atomics).
pub struct Generator {
    plan: Plan,
    holds: AtomicU64,
    joins: AtomicU64,
}

impl Generator {
    pub fn new(plan: Plan) -> Generator {
        Generator {
            plan,
            holds: AtomicU64::new(0),
            joins: AtomicU64::new(0),
        }
    }

    /// The next operation, or `None` when the workload ran out (every buyer joined every room).
    pub fn next(&self, rng: &mut impl Rng) -> Option<Op> {
        match self.plan.workload {
            Workload::Hold => Some(self.hold(rng, false)),
            Workload::HoldConfirm => Some(self.hold(rng, true)),
            Workload::Queue => self.join(),
            Workload::Read => Some(self.read(rng)),
            Workload::Mix => match rng.random_range(0..10u32) {
                0..4 => Some(self.read(rng)),
                4..8 => Some(self.hold(rng, false)),
                8 => Some(self.hold(rng, true)),
                _ => self.join(),
            },
        }
    }

    fn hold(&self, rng: &mut impl Rng, confirm: bool) -> Op {
        let n = self.holds.fetch_add(1, Relaxed);
        let perfs = u64::from(self.plan.layout.performances);
        let perf = (n % perfs) as u32;
        let buyer = ((n / perfs) % u64::from(self.plan.buyers)) as u32;
        let seats = pick_seats(rng, self.plan.layout.seats_per_performance());
        if confirm {
            Op::HoldConfirm { perf, buyer, seats }
        } else {
            Op::Hold { perf, buyer, seats }
        }
    }

    fn join(&self) -> Option<Op> {
        let n = self.joins.fetch_add(1, Relaxed);
        let buyers = u64::from(self.plan.buyers);
        let room = n / buyers;
        (room < u64::from(self.plan.rooms)).then(|| Op::Join {
            room: room as u32,
            buyer: (n % buyers) as u32,
        })
    }

    fn read(&self, rng: &mut impl Rng) -> Op {
        Op::Read {
            slot: rng.random_range(0..self.plan.read_slots.max(1)),
        }
    }
}

/// 1-4 distinct random seats out of `pool` (fewer when the pool is smaller).
pub fn pick_seats(rng: &mut impl Rng, pool: u32) -> Seats {
    let want = rng.random_range(1..=MAX_SEATS_PER_HOLD).min(pool as usize);
    let mut seats = Seats {
        len: 0,
        flat: [0; MAX_SEATS_PER_HOLD],
    };
    while usize::from(seats.len) < want {
        let s = rng.random_range(0..pool);
        if !seats.as_slice().contains(&s) {
            seats.flat[usize::from(seats.len)] = s;
            seats.len += 1;
        }
    }
    seats
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn layout() -> Layout {
        Layout {
            performances: 3,
            sections: 2,
            rows: 3,
            seats_per_row: 4,
        }
    }

    #[test]
    fn seat_names_cover_the_pool_once() {
        let l = layout();
        let names: std::collections::BTreeSet<String> = (0..l.seats_per_performance())
            .map(|f| l.seat_name(f))
            .collect();
        assert_eq!(names.len(), 24);
        assert_eq!(l.seat_name(0), "S1:1:1");
        assert_eq!(l.seat_name(5), "S1:2:2");
        assert_eq!(l.seat_name(23), "S2:3:4");
    }

    #[test]
    fn holds_take_one_to_four_distinct_seats() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut sizes = [0u32; 5];
        for _ in 0..10_000 {
            let s = pick_seats(&mut rng, 24);
            let v = s.as_slice();
            assert!((1..=4).contains(&v.len()));
            assert!(v.iter().all(|&x| x < 24));
            let mut d = v.to_vec();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), v.len(), "seats repeat in {v:?}");
            sizes[v.len()] += 1;
        }
        assert!(sizes[1..].iter().all(|&c| c > 2_000), "sizes {sizes:?}");
        assert_eq!(pick_seats(&mut rng, 1).as_slice(), &[0]);
    }

    #[test]
    fn a_buyer_returns_to_a_performance_only_after_every_other_pair() {
        let g = Generator::new(Plan {
            workload: Workload::Hold,
            layout: layout(),
            buyers: 5,
            rooms: 0,
            read_slots: 0,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashMap::new();
        for i in 0..15u32 {
            let Some(Op::Hold { perf, buyer, .. }) = g.next(&mut rng) else {
                panic!("hold expected")
            };
            assert!(
                seen.insert((perf, buyer), i).is_none(),
                "pair repeated early"
            );
        }
        let Some(Op::Hold { perf, buyer, .. }) = g.next(&mut rng) else {
            panic!("hold expected")
        };
        assert_eq!(seen[&(perf, buyer)], 0);
    }

    #[test]
    fn queue_joins_run_out_after_every_buyer_joined_every_room() {
        let g = Generator::new(Plan {
            workload: Workload::Queue,
            layout: layout(),
            buyers: 3,
            rooms: 2,
            read_slots: 0,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let joins: Vec<Op> = std::iter::from_fn(|| g.next(&mut rng)).collect();
        assert_eq!(joins.len(), 6);
        assert_eq!(joins[4], Op::Join { room: 1, buyer: 1 });
    }

    #[test]
    fn the_mix_has_every_kind() {
        let g = Generator::new(Plan {
            workload: Workload::Mix,
            layout: layout(),
            buyers: 1000,
            rooms: 1000,
            read_slots: 10,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..1000 {
            *kinds.entry(g.next(&mut rng).unwrap().kind()).or_insert(0) += 1;
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        assert!(kinds["read"] > 300 && kinds["hold"] > 300, "{kinds:?}");
    }

    #[test]
    fn layouts_past_the_limits_are_refused() {
        assert!(layout().validate().is_ok());
        let big = Layout {
            performances: 1,
            sections: 100,
            rows: 100,
            seats_per_row: 100,
        };
        assert!(big.validate().is_err());
        let zero = Layout {
            performances: 0,
            ..layout()
        };
        assert!(zero.validate().is_err());
    }
}
