//! Recompute a waiting room's admission order from the public change feed alone, as anyone
//! may: the seed's commitment published when the performance was created, the seed revealed
//! at opening, every join (pre-queue or not) in commit order, and the admissions. The rule
//! (DESIGN.md §3): the pre-queue in order of `blake3("ticketledger/prequeue/v1" ‖ seed ‖
//! performance (u64 LE) ‖ join index (u32 LE))`, ties by join index, then everyone who joined
//! after the opening in commit order.

use api::feed::FeedChange;

/// What the feed showed and whether it agrees with the rule.
#[derive(Debug, Default)]
pub struct RoomAudit {
    pub commitment: Option<String>,
    pub seed: Option<String>,
    pub prequeue: u64,
    pub joined_after_open: u64,
    pub admitted: u64,
    /// Every way the feed disagrees with the rule (empty: it agrees).
    pub problems: Vec<String>,
}

impl RoomAudit {
    pub fn fair(&self) -> bool {
        self.problems.is_empty() && self.seed.is_some()
    }
}

/// The pre-queue rank of join `join_index` of performance `performance` under `seed`.
pub fn prequeue_rank(seed: &[u8; 32], performance: u64, join_index: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"ticketledger/prequeue/v1");
    h.update(seed);
    h.update(&performance.to_le_bytes());
    h.update(&join_index.to_le_bytes());
    *h.finalize().as_bytes()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `q_<performance>_<join index>` → (performance, join index).
fn queue_parts(id: &str) -> Option<(u64, u32)> {
    let rest = id.strip_prefix("q_")?;
    let (p, j) = rest.split_once('_')?;
    Some((p.parse().ok()?, j.parse().ok()?))
}

/// Audit performance `performance_id` (`p_<n>`) over `changes`, the feed's changes in log
/// order from before its creation on.
pub fn audit<'a>(
    performance_id: &str,
    changes: impl IntoIterator<Item = &'a FeedChange>,
) -> RoomAudit {
    let mut a = RoomAudit::default();
    let Some(perf) = performance_id
        .strip_prefix("p_")
        .and_then(|p| p.parse::<u64>().ok())
    else {
        a.problems
            .push(format!("{performance_id} is not a performance id"));
        return a;
    };
    let mut pre: Vec<u32> = Vec::new();
    let mut after: Vec<u32> = Vec::new();
    let mut admitted: Vec<u32> = Vec::new();
    let mut revealed = false;
    for c in changes {
        let mine_perf = c.performance_id.as_deref() == Some(performance_id);
        let queue = c.queue_id.as_deref().and_then(queue_parts);
        let mine_queue = queue.filter(|&(p, _)| p == perf).map(|(_, j)| j);
        match c.kind.as_str() {
            "performance_created" if mine_perf => a.commitment = c.seed.clone(),
            "seed_revealed" if mine_perf => {
                a.seed = c.seed.clone();
                revealed = true;
                if c.count.is_some_and(|n| n as usize != pre.len()) {
                    a.problems.push(format!(
                        "the reveal says {} in the pre-queue, the feed showed {}",
                        c.count.unwrap_or(0),
                        pre.len()
                    ));
                }
            }
            "queue_joined" => {
                if let Some(j) = mine_queue {
                    match (c.prequeue == Some(true), revealed) {
                        (true, false) => pre.push(j),
                        (false, _) => after.push(j),
                        (true, true) => a.problems.push(format!(
                            "join {j} is in the pre-queue after the seed reveal"
                        )),
                    }
                }
            }
            "queue_admitted" => {
                if let Some(j) = mine_queue {
                    admitted.push(j);
                }
            }
            _ => {}
        }
    }
    a.prequeue = pre.len() as u64;
    a.joined_after_open = after.len() as u64;
    a.admitted = admitted.len() as u64;
    let (Some(commitment), Some(seed_hex)) = (&a.commitment, &a.seed) else {
        if !pre.is_empty() {
            a.problems
                .push("a pre-queue but no commitment or no revealed seed in the feed".into());
        }
        return a;
    };
    let Some(seed) = unhex32(seed_hex) else {
        a.problems.push(format!(
            "the revealed seed {seed_hex} is not 32 bytes of hex"
        ));
        return a;
    };
    if blake3::hash(&seed).to_hex().as_str() != commitment {
        a.problems.push(format!(
            "the revealed seed does not hash to the commitment {commitment}"
        ));
    }
    pre.sort_by_cached_key(|&j| (prequeue_rank(&seed, perf, j), j));
    let expected: Vec<u32> = pre.into_iter().chain(after).collect();
    if admitted.len() > expected.len() {
        a.problems.push(format!(
            "{} admissions for {} entries",
            admitted.len(),
            expected.len()
        ));
    }
    if let Some(i) = admitted.iter().zip(&expected).position(|(x, y)| x != y) {
        a.problems.push(format!(
            "admission #{i} went to join {} where the rule says join {}",
            admitted[i], expected[i]
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: &str) -> FeedChange {
        FeedChange {
            kind: kind.into(),
            ..FeedChange::default()
        }
    }

    /// A room of 6 pre-queue and 3 later joins, admitted by the rule; then broken three ways.
    #[test]
    fn the_audit_accepts_the_rule_and_catches_each_departure() {
        let seed = [7u8; 32];
        let mut feed = vec![FeedChange {
            performance_id: Some("p_4".into()),
            seed: Some(blake3::hash(&seed).to_hex().to_string()),
            ..ch("performance_created")
        }];
        let join = |j: u32, pre: bool| FeedChange {
            queue_id: Some(format!("q_4_{j}")),
            prequeue: Some(pre),
            ..ch("queue_joined")
        };
        feed.extend((0..6).map(|j| join(j, true)));
        feed.push(FeedChange {
            performance_id: Some("p_4".into()),
            seed: Some(seed.iter().map(|b| format!("{b:02x}")).collect()),
            count: Some(6),
            ..ch("seed_revealed")
        });
        feed.extend((6..9).map(|j| join(j, false)));
        let mut pre: Vec<u32> = (0..6).collect();
        pre.sort_by_cached_key(|&j| (prequeue_rank(&seed, 4, j), j));
        let order: Vec<u32> = pre.iter().copied().chain(6..9).collect();
        assert_ne!(pre, (0..6).collect::<Vec<_>>(), "the seed shuffles");
        let admit = |j: u32| FeedChange {
            queue_id: Some(format!("q_4_{j}")),
            ..ch("queue_admitted")
        };
        let good: Vec<FeedChange> = feed
            .iter()
            .cloned()
            .chain(order.iter().map(|&j| admit(j)))
            .collect();
        let a = audit("p_4", &good);
        assert!(a.fair(), "{a:?}");
        assert_eq!((a.prequeue, a.joined_after_open, a.admitted), (6, 3, 9));

        // Admitted in join order (no shuffle): caught.
        let fifo: Vec<FeedChange> = feed.iter().cloned().chain((0..9).map(admit)).collect();
        assert!(!audit("p_4", &fifo).fair());
        // Two later joiners swapped: caught.
        let mut swapped = order.clone();
        swapped.swap(6, 7);
        let sw: Vec<FeedChange> = feed
            .iter()
            .cloned()
            .chain(swapped.iter().map(|&j| admit(j)))
            .collect();
        assert!(!audit("p_4", &sw).fair());
        // A seed that is not the committed one: caught.
        assert!(!audit("p_4", &good[..1]).fair());
        let mut lied = good.clone();
        lied[0].seed = Some(blake3::hash(b"another").to_hex().to_string());
        assert!(!audit("p_4", &lied).fair());
    }

    /// The same rank as the ledger's own, for a spread of inputs.
    #[test]
    fn the_rank_is_the_ledgers() {
        for (seed, p, j) in [
            ([0u8; 32], 1u64, 0u32),
            ([9; 32], 4, 17),
            ([255; 32], 1 << 40, u32::MAX),
        ] {
            let q = ledger::QueueId {
                performance: ledger::PerformanceId(p),
                join_index: j,
            };
            assert_eq!(prequeue_rank(&seed, p, j), ledger::prequeue_rank(&seed, q));
        }
    }
}
