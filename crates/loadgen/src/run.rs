//! The load loops: closed (N clients, each sends its next request when the last one ended)
//! and open (requests due at a fixed rate, whether or not earlier ones ended; latency counts
//! from when a request was due, so a slow system cannot hide its queue). A progress line
//! every second; a bounded number of requests in flight.

use crate::record::{CpuUse, Recorder, RunResult, comm, cpu_seconds, rss_kib};
use crate::systems::System;
use crate::workload::Generator;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Most clients of a closed loop.
pub const MAX_CLIENTS: u32 = 4_096;
/// Highest target rate of an open loop, requests per second.
pub const MAX_RATE: u64 = 1_000_000;
/// Most requests an open loop keeps in flight; beyond it a due request is counted as not sent.
pub const MAX_INFLIGHT: usize = 100_000;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed {
        clients: u32,
    },
    Open {
        rate_per_s: u64,
        max_inflight: usize,
    },
}

pub struct RunConfig {
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request without an answer after this is a timeout.
    pub timeout: Duration,
    pub watch_pids: Vec<u32>,
    /// A label per watched pid (e.g. `n1 leader`); the pid and its command name otherwise.
    pub watch_labels: Vec<String>,
    pub seed: u64,
}

/// CPU seconds of each process at one instant (None: the process is gone).
fn cpu_sample(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|&p| cpu_seconds(p)).collect()
}

struct Shared {
    system: System,
    generator: Generator,
    recorder: Mutex<Recorder>,
    /// When the measured window begins (the warm-up ends).
    measure_from: Instant,
    exhausted: AtomicBool,
}

impl Shared {
    fn since_measure(&self, t: Instant) -> Option<Duration> {
        t.checked_duration_since(self.measure_from)
    }

    /// Run one operation and record it as due at `due`.
    async fn one(&self, due: Instant, op: crate::workload::Op, timeout: Duration) {
        let outcome = tokio::time::timeout(timeout, self.system.exec(&op))
            .await
            .unwrap_or(crate::record::Outcome::Timeout);
        let latency = due.elapsed();
        let started = self.since_measure(due);
        self.recorder
            .lock()
            .expect("recorder lock")
            .record(started, latency, outcome);
    }
}

pub async fn run(
    system: System,
    generator: Generator,
    cfg: RunConfig,
    workload: &str,
) -> RunResult {
    let begin = Instant::now();
    let measure_from = begin + cfg.warmup;
    let end = measure_from + cfg.duration;
    let shared = Arc::new(Shared {
        system,
        generator,
        recorder: Mutex::new(Recorder::new(cfg.duration)),
        measure_from,
        exhausted: AtomicBool::new(false),
    });
    let (inflight_probe, load): (Arc<dyn Fn() -> usize + Send + Sync>, _) = match cfg.mode {
        Mode::Closed { clients } => {
            let h = tokio::spawn(closed_loop(
                shared.clone(),
                clients,
                end,
                cfg.timeout,
                cfg.seed,
            ));
            (Arc::new(move || clients as usize), h)
        }
        Mode::Open {
            rate_per_s,
            max_inflight,
        } => {
            let permits = Arc::new(Semaphore::new(max_inflight));
            let p = permits.clone();
            let h = tokio::spawn(open_loop(
                shared.clone(),
                rate_per_s,
                max_inflight,
                permits,
                begin,
                end,
                cfg.timeout,
                cfg.seed,
            ));
            (Arc::new(move || max_inflight - p.available_permits()), h)
        }
    };
    // CPU of the watched processes and of the loadgen over the measured window.
    let mut cpu_pids = cfg.watch_pids.clone();
    cpu_pids.push(std::process::id());
    let cpu_start = {
        let pids = cpu_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            (Instant::now(), cpu_sample(&pids))
        })
    };
    let cpu_end = {
        let pids = cpu_pids.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end.into()).await;
            (Instant::now(), cpu_sample(&pids))
        })
    };
    let progress = tokio::spawn(progress(
        shared.clone(),
        cfg.watch_pids.clone(),
        end,
        inflight_probe,
    ));
    let _ = load.await;
    progress.abort();
    let cpu_window = match (cpu_start.await, cpu_end.is_finished()) {
        (Ok(start), true) => cpu_end.await.ok().map(|end| (start, end)),
        (Ok(start), false) => {
            // The workload ran out early: the window ends now.
            cpu_end.abort();
            Some((start, (Instant::now(), cpu_sample(&cpu_pids))))
        }
        (Err(_), _) => None,
    };
    let measured = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    let notes = shared.system.notes();
    let system_name = shared.system.name().to_string();
    // A request still running past its timeout's grace records into the fresh recorder.
    let recorder = std::mem::replace(
        &mut *shared.recorder.lock().expect("recorder lock"),
        Recorder::new(Duration::ZERO),
    );
    let (counts, throughput, latency, pushed_back_latency, per_second) = recorder.finish(measured);
    let rss_max_kib = cfg
        .watch_pids
        .iter()
        .enumerate()
        .map(|(i, _)| {
            per_second
                .iter()
                .filter_map(|s| s.rss_kib.get(i).copied())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let (mode, clients, rate) = match cfg.mode {
        Mode::Closed { clients } => ("closed", Some(clients), None),
        Mode::Open { rate_per_s, .. } => ("open", None, Some(rate_per_s)),
    };
    let completed = counts.completed();
    let cpu = cpu_window
        .map(|((t0, a), (t1, b))| {
            let window = t1.saturating_duration_since(t0).as_secs_f64().max(1e-3);
            cpu_pids
                .iter()
                .enumerate()
                .filter_map(|(i, &pid)| {
                    let used = b[i]? - a[i]?;
                    let process = if pid == std::process::id() {
                        "loadgen".to_string()
                    } else {
                        cfg.watch_labels
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("pid {pid} ({})", comm(pid)))
                    };
                    Some(CpuUse {
                        process,
                        pid,
                        cpu_s: round3(used),
                        cores: round3(used / window),
                        us_per_completed: if completed > 0 {
                            (used * 1e6 / completed as f64 * 10.0).round() / 10.0
                        } else {
                            0.0
                        },
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut notes = notes;
    if shared.exhausted.load(Relaxed) {
        notes.push(
            "the workload ran out before the end (every buyer joined every room): add --rooms"
                .into(),
        );
    }
    RunResult {
        system: system_name,
        workload: workload.to_string(),
        mode: mode.into(),
        clients,
        target_rate_per_s: rate,
        measured_s: (measured.as_secs_f64() * 1000.0).round() / 1000.0,
        warmup_s: cfg.warmup.as_secs_f64(),
        counts,
        throughput_per_s: throughput,
        latency,
        pushed_back_latency,
        per_second,
        watched_pids: cfg.watch_pids,
        rss_max_kib,
        cpu,
        notes,
        profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
        .into(),
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn closed_loop(
    shared: Arc<Shared>,
    clients: u32,
    end: Instant,
    timeout: Duration,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(c) << 32));
            while Instant::now() < end {
                let Some(op) = shared.generator.next(&mut rng) else {
                    shared.exhausted.store(true, Relaxed);
                    return;
                };
                shared.one(Instant::now(), op, timeout).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_loop(
    shared: Arc<Shared>,
    rate_per_s: u64,
    max_inflight: usize,
    permits: Arc<Semaphore>,
    begin: Instant,
    end: Instant,
    timeout: Duration,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let interval = Duration::from_secs_f64(1.0 / rate_per_s as f64);
    let mut sent: u64 = 0;
    'dispatch: loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due_count = ((now - begin).as_secs_f64() * rate_per_s as f64) as u64;
        while sent < due_count {
            let due = begin + interval.mul_f64(sent as f64);
            sent += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                shared
                    .recorder
                    .lock()
                    .expect("recorder lock")
                    .not_sent(shared.since_measure(due));
                continue;
            };
            let Some(op) = shared.generator.next(&mut rng) else {
                shared.exhausted.store(true, Relaxed);
                break 'dispatch;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.one(due, op, timeout).await;
                drop(permit);
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Wait for what is in flight (each request ends by its timeout at the latest).
    let all = u32::try_from(max_inflight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(timeout + Duration::from_secs(2), permits.acquire_many(all)).await;
}

/// Once a second: the progress line, and the RSS of the watched processes.
async fn progress(
    shared: Arc<Shared>,
    pids: Vec<u32>,
    end: Instant,
    inflight: Arc<dyn Fn() -> usize + Send + Sync>,
) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::from_std(shared.measure_from) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        every.tick().await;
        let now = Instant::now();
        let t = now.saturating_duration_since(shared.measure_from).as_secs() as usize;
        let rss: Vec<u64> = pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect();
        let (counts, last) = {
            let mut r = shared.recorder.lock().expect("recorder lock");
            if t >= 1 {
                r.rss(t - 1, rss.clone());
            }
            (r.counts(), r.second(t.saturating_sub(1)))
        };
        let (done, p99) = last.unwrap_or((0, 0));
        let rss_text = if rss.is_empty() {
            String::new()
        } else {
            let mib: Vec<String> = rss.iter().map(|k| format!("{}", k / 1024)).collect();
            format!(" rss MiB {}", mib.join("/"))
        };
        eprintln!(
            "[{t:>4}s] {done:>7} done/s p99 {:>8.1} ms | total ok {} conflict {} 429/503 {} failed {} not sent {} | in flight {}{rss_text}",
            p99 as f64 / 1000.0,
            counts.ok,
            counts.conflict,
            counts.pushed_back(),
            counts.failed(),
            counts.not_sent,
            inflight(),
        );
        if now >= end {
            return;
        }
    }
}
