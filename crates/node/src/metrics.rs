//! A small Prometheus registry: counters and fixed-bucket histograms on atomics, rendered
//! as text exposition format. Gauges that mirror Raft or ledger state are read at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latency buckets in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
    1_024_000, 4_096_000,
];
/// Batch-size buckets (commands per proposal).
const BATCH_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024];

pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    counts: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: u64) {
        self.sum.fetch_add(v, Relaxed);
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
    }
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {acc}",
                *b as f64 * scale
            );
        }
        acc += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {acc}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum.load(Relaxed) as f64 * scale
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {acc}");
    }
}

/// Request classes for the latency histogram (a fixed set: label cardinality is bounded).
#[derive(Clone, Copy, Debug)]
pub enum Route {
    Write,
    Read,
    Admin,
}

pub struct Metrics {
    pub proposals: AtomicU64,
    pub proposals_forwarded: AtomicU64,
    pub proposals_rejected_overload: AtomicU64,
    pub ticks: AtomicU64,
    pub batch_size: Histogram<10>,
    latency: [Histogram<14>; 3],
    pub http_responses_4xx: AtomicU64,
    pub http_responses_5xx: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            proposals: AtomicU64::new(0),
            proposals_forwarded: AtomicU64::new(0),
            proposals_rejected_overload: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_BUCKETS),
            latency: std::array::from_fn(|_| Histogram::new(LATENCY_BUCKETS_US)),
            http_responses_4xx: AtomicU64::new(0),
            http_responses_5xx: AtomicU64::new(0),
        }
    }
}

/// Values read at scrape time from Raft and the ledger.
pub struct Gauges {
    pub node_id: u64,
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Last log index purged (only a snapshot can bring a node from behind it).
    pub purged_index: u64,
    pub holds_live: u64,
    pub seats_sold: u64,
    pub seats_held: u64,
    pub queue_waiting: u64,
}

impl Metrics {
    pub fn observe_latency(&self, route: Route, micros: u64) {
        self.latency[route as usize].observe(micros);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("ticketledger_node_id", "This node's Raft id.", g.node_id);
        gauge("ticketledger_raft_term", "Current Raft term.", g.term);
        gauge(
            "ticketledger_raft_is_leader",
            "1 on the leader.",
            u64::from(g.is_leader),
        );
        gauge(
            "ticketledger_raft_last_log_index",
            "Last log index on this node.",
            g.last_log_index,
        );
        gauge(
            "ticketledger_raft_committed_index",
            "Committed index known to this node.",
            g.committed_index,
        );
        gauge(
            "ticketledger_raft_applied_index",
            "Last index applied to the ledger.",
            g.applied_index,
        );
        gauge(
            "ticketledger_raft_purged_index",
            "Last log index purged behind a snapshot (a node behind it catches up by snapshot).",
            g.purged_index,
        );
        gauge(
            "ticketledger_raft_apply_lag",
            "Committed but not yet applied entries.",
            g.committed_index.saturating_sub(g.applied_index),
        );
        gauge(
            "ticketledger_holds_live",
            "Live holds in the ledger.",
            g.holds_live,
        );
        gauge(
            "ticketledger_seats_sold",
            "Seats and GA places sold, all performances.",
            g.seats_sold,
        );
        gauge(
            "ticketledger_seats_held",
            "Seats and GA places held, all performances.",
            g.seats_held,
        );
        gauge(
            "ticketledger_queue_waiting",
            "Buyers waiting in waiting rooms.",
            g.queue_waiting,
        );
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "ticketledger_proposals_total",
            "Commands proposed by this node as leader.",
            &self.proposals,
        );
        counter(
            "ticketledger_proposals_forwarded_total",
            "Commands forwarded to the leader.",
            &self.proposals_forwarded,
        );
        counter(
            "ticketledger_proposals_overloaded_total",
            "Writes refused with 503 because too many were in flight.",
            &self.proposals_rejected_overload,
        );
        counter(
            "ticketledger_ticks_total",
            "Tick commands proposed by this node.",
            &self.ticks,
        );
        counter(
            "ticketledger_http_responses_4xx_total",
            "HTTP responses with a 4xx status.",
            &self.http_responses_4xx,
        );
        counter(
            "ticketledger_http_responses_5xx_total",
            "HTTP responses with a 5xx status.",
            &self.http_responses_5xx,
        );
        let _ = writeln!(
            out,
            "# HELP ticketledger_proposal_batch_size Commands per Raft proposal.\n# TYPE ticketledger_proposal_batch_size histogram"
        );
        self.batch_size
            .render(&mut out, "ticketledger_proposal_batch_size", "", 1.0);
        let _ = writeln!(
            out,
            "# HELP ticketledger_request_seconds HTTP request latency.\n# TYPE ticketledger_request_seconds histogram"
        );
        for (route, h) in ["write", "read", "admin"].iter().zip(&self.latency) {
            h.render(
                &mut out,
                "ticketledger_request_seconds",
                &format!("route=\"{route}\""),
                1e-6,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_latency(Route::Write, 300);
        m.observe_latency(Route::Write, 10_000_000);
        m.batch_size.observe(3);
        let g = Gauges {
            node_id: 1,
            term: 2,
            is_leader: true,
            last_log_index: 9,
            committed_index: 9,
            applied_index: 8,
            holds_live: 0,
            seats_sold: 0,
            seats_held: 0,
            queue_waiting: 0,
            purged_index: 5,
        };
        let text = m.render(&g);
        assert!(text.contains("ticketledger_raft_apply_lag 1"));
        assert!(text.contains("ticketledger_raft_purged_index 5"));
        assert!(
            text.contains("ticketledger_request_seconds_bucket{route=\"write\",le=\"0.0005\"} 1")
        );
        assert!(text.contains("ticketledger_request_seconds_count{route=\"write\"} 2"));
        assert!(text.contains("ticketledger_proposal_batch_size_bucket{le=\"4\"} 1"));
    }
}
