//! What a run measured: outcome counts, HDR histograms of latency, a per-second series, and
//! the JSON result written at the end.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Latencies are recorded in microseconds up to this (longer ones saturate at it).
const LATENCY_US_MAX: u64 = 120_000_000;
/// Longest run the per-second series covers.
pub const SECONDS_MAX: usize = 3_600;

/// How one request ended, as far as the benchmark is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done as asked (2xx, a committed transaction).
    Ok,
    /// Answered "no": a seat was taken (409 `seat_unavailable`/`sold_out`, a failed compare).
    /// A completed request as far as latency and throughput go.
    Conflict,
    /// Another 4xx: the benchmark asked something the system refused.
    ClientError,
    /// 429: back-pressure.
    RateLimited,
    /// 503: back-pressure or no quorum.
    Unavailable,
    /// Another 5xx, or a server-side error of a peer.
    ServerError,
    /// No answer within the loadgen's request timeout.
    Timeout,
    /// A connection or protocol error.
    Transport,
}

impl Outcome {
    pub fn completed(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Conflict)
    }

    pub fn pushed_back(self) -> bool {
        matches!(self, Outcome::RateLimited | Outcome::Unavailable)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub conflict: u64,
    pub client_error: u64,
    pub rate_limited_429: u64,
    pub unavailable_503: u64,
    pub server_error: u64,
    pub timeout: u64,
    pub transport_error: u64,
    /// Open loop only: requests not sent because the loadgen's in-flight bound was reached.
    pub not_sent: u64,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::Conflict => self.conflict += 1,
            Outcome::ClientError => self.client_error += 1,
            Outcome::RateLimited => self.rate_limited_429 += 1,
            Outcome::Unavailable => self.unavailable_503 += 1,
            Outcome::ServerError => self.server_error += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Transport => self.transport_error += 1,
        }
    }

    pub fn completed(&self) -> u64 {
        self.ok + self.conflict
    }

    pub fn pushed_back(&self) -> u64 {
        self.rate_limited_429 + self.unavailable_503
    }

    pub fn failed(&self) -> u64 {
        self.client_error + self.server_error + self.timeout + self.transport_error
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.completed() + self.pushed_back() + self.failed()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One second of the run, by completion time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the measurement started (the end of the warm-up).
    pub t_s: u32,
    pub completed: u64,
    pub conflict: u64,
    pub pushed_back: u64,
    pub failed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Resident memory of each watched process at the end of this second, KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rss_kib: Vec<u64>,
}

/// The whole result of one run (the JSON loadgen writes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub system: String,
    pub workload: String,
    /// `closed` (fixed clients) or `open` (fixed arrival rate).
    pub mode: String,
    pub clients: Option<u32>,
    pub target_rate_per_s: Option<u64>,
    pub measured_s: f64,
    pub warmup_s: f64,
    pub counts: Counts,
    /// Completed (ok + conflict) requests that started in the measured window, per second.
    pub throughput_per_s: f64,
    /// Latency of completed requests (open loop: from their intended start, so queueing in
    /// the loadgen counts too: no coordinated omission).
    pub latency: Latency,
    /// Latency of 429/503 answers: back-pressure must be fast, not a timeout.
    pub pushed_back_latency: Latency,
    pub per_second: Vec<Second>,
    /// Watched processes (e.g. each ticketd) and the largest RSS seen, KiB.
    #[serde(default)]
    pub watched_pids: Vec<u32>,
    #[serde(default)]
    pub rss_max_kib: Vec<u64>,
    /// CPU time over the measured window of each watched process and of the loadgen itself
    /// (the last entry), and per completed request: robust to a shared machine, unlike
    /// throughput.
    #[serde(default)]
    pub cpu: Vec<CpuUse>,
    /// Free-form facts about the system under test (durability settings, endpoints, ...).
    pub notes: Vec<String>,
    /// Build profile of the loadgen (and, in the scripts, of ticketd): always `dev` here.
    pub profile: String,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("constant histogram bounds are valid")
}

struct SecondAcc {
    second: Second,
    latency: Histogram<u64>,
}

/// Collects results as they come; one per run, behind a mutex shared by the workers.
pub struct Recorder {
    window: Duration,
    counts: Counts,
    completed: Histogram<u64>,
    pushed_back: Histogram<u64>,
    seconds: Vec<SecondAcc>,
}

impl Recorder {
    /// A recorder for a measured window of `window` (starting when the warm-up ends).
    pub fn new(window: Duration) -> Recorder {
        Recorder {
            window,
            counts: Counts::default(),
            completed: histogram(),
            pushed_back: histogram(),
            seconds: Vec::new(),
        }
    }

    /// A request that was due at `started` (since the measurement began; negative ones are
    /// warm-up and ignored) and ended after `latency`.
    pub fn record(&mut self, started: Option<Duration>, latency: Duration, outcome: Outcome) {
        let Some(started) = started else { return };
        if started >= self.window {
            return;
        }
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.counts.add(outcome);
        if outcome.completed() {
            self.completed.saturating_record(us);
        } else if outcome.pushed_back() {
            self.pushed_back.saturating_record(us);
        }
        let t = (started + latency).as_secs() as usize;
        if t >= SECONDS_MAX {
            return;
        }
        while self.seconds.len() <= t {
            let t_s = self.seconds.len() as u32;
            self.seconds.push(SecondAcc {
                second: Second {
                    t_s,
                    ..Second::default()
                },
                latency: coarse_histogram(),
            });
        }
        let s = &mut self.seconds[t];
        if outcome.completed() {
            s.second.completed += 1;
            s.latency.saturating_record(us);
            if outcome == Outcome::Conflict {
                s.second.conflict += 1;
            }
        } else if outcome.pushed_back() {
            s.second.pushed_back += 1;
        } else {
            s.second.failed += 1;
        }
    }

    pub fn not_sent(&mut self, started: Option<Duration>) {
        if started.is_some_and(|s| s < self.window) {
            self.counts.not_sent += 1;
        }
    }

    /// Memory of the watched processes at the end of second `t`.
    pub fn rss(&mut self, t: usize, kib: Vec<u64>) {
        if let Some(s) = self.seconds.get_mut(t) {
            s.second.rss_kib = kib;
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// (completed, p99 µs) of the second that ended last, for the progress line.
    pub fn second(&self, t: usize) -> Option<(u64, u64)> {
        self.seconds.get(t).map(|s| {
            let p99 = if s.latency.is_empty() {
                0
            } else {
                s.latency.value_at_quantile(0.99)
            };
            (s.second.completed, p99)
        })
    }

    /// The series and summaries; `measured` is the window actually run.
    pub fn finish(self, measured: Duration) -> (Counts, f64, Latency, Latency, Vec<Second>) {
        let secs = measured.as_secs_f64().max(1e-3);
        let throughput = (self.counts.completed() as f64 / secs * 10.0).round() / 10.0;
        let whole = measured.as_secs() as usize;
        let per_second = self
            .seconds
            .into_iter()
            .take(whole.max(1))
            .map(|mut s| {
                if !s.latency.is_empty() {
                    s.second.p50_us = s.latency.value_at_quantile(0.5);
                    s.second.p99_us = s.latency.value_at_quantile(0.99);
                }
                s.second
            })
            .collect();
        (
            self.counts,
            throughput,
            Latency::of(&self.completed),
            Latency::of(&self.pushed_back),
            per_second,
        )
    }
}

/// One process's CPU over the measured window (user + system time from /proc/<pid>/stat).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// `pid <n> (<comm>)`, or `loadgen` for this process.
    pub process: String,
    pub pid: u32,
    /// CPU seconds (user + system) spent in the window.
    pub cpu_s: f64,
    /// Average cores used over the window (`cpu_s` ÷ window).
    pub cores: f64,
    /// CPU microseconds per completed request (`cpu_s` ÷ ok + conflict).
    pub us_per_completed: f64,
}

/// Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on every Linux ABI this
/// runs on; reading it needs sysconf, i.e. unsafe code, which this crate forbids).
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// User + system CPU time of a whole process (every thread), seconds; None if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ..., utime (14), stime (15) in proc(5)'s numbering.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_S)
}

/// A process's command name (`/proc/<pid>/comm`), for labels.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Resident set size of a process from /proc, KiB (None if it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn conflicts_complete_and_back_pressure_is_counted_apart() {
        let mut r = Recorder::new(Duration::from_secs(2));
        for i in 0..100u64 {
            r.record(Some(MS * i as u32), MS * (i as u32 + 1), Outcome::Ok);
        }
        r.record(Some(MS), MS * 500, Outcome::Conflict);
        r.record(Some(MS), MS, Outcome::Unavailable);
        r.record(Some(MS), MS, Outcome::RateLimited);
        r.record(Some(MS), Duration::from_secs(10), Outcome::Timeout);
        // Warm-up and after-the-window requests are not counted.
        r.record(None, MS, Outcome::Ok);
        r.record(Some(Duration::from_secs(3)), MS, Outcome::Ok);
        let (c, tput, lat, pushed, secs) = r.finish(Duration::from_secs(2));
        assert_eq!(c.completed(), 101);
        assert_eq!(c.conflict, 1);
        assert_eq!(c.pushed_back(), 2);
        assert_eq!(c.timeout, 1);
        assert_eq!(c.total(), 104);
        assert!((tput - 50.5).abs() < 1e-9, "{tput}");
        assert_eq!(lat.count, 101);
        assert!((50_000..=51_100).contains(&lat.p50_us), "{lat:?}");
        assert!(lat.max_us >= 499_000, "{lat:?}");
        assert_eq!(pushed.count, 2);
        assert_eq!(secs.len(), 2, "{secs:?}");
        assert_eq!(secs[0].completed, 101);
        assert_eq!(
            secs[1].completed + secs[1].failed,
            0,
            "the timeout ends past the window"
        );
        assert_eq!(secs[0].pushed_back, 2);
    }

    #[test]
    fn cpu_of_this_process_is_read_from_proc() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("own /proc stat");
        // Spin until the kernel has charged us 50 ms (the machine may be shared: no wall
        // time bound on how fast that happens, only a generous deadline).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_seconds(pid).expect("own /proc stat");
        }
        assert!(after - before >= 0.05, "{before} -> {after}");
        assert_eq!(cpu_seconds(u32::MAX), None);
        assert!(!comm(pid).is_empty());
    }

    #[test]
    fn rss_of_this_process_is_read_from_proc() {
        let kib = rss_kib(std::process::id()).expect("own /proc status");
        assert!(kib > 100, "{kib} KiB");
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
