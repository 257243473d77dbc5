//! Several results side by side: per workload, ticketledger ÷ each peer for throughput (higher
//! is better for ticketledger) and p99 (lower is better), as a table, JSON and an SVG.

use crate::record::RunResult;
use crate::svg;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Results one comparison reads at most.
const MAX_RESULTS: usize = 64;

#[derive(Debug, Serialize, PartialEq)]
pub struct Ratio {
    /// ticketledger's throughput ÷ the peer's (> 1: ticketledger does more per second).
    pub throughput: f64,
    /// ticketledger's p99 ÷ the peer's (< 1: ticketledger's tail is shorter).
    pub p99: f64,
}

#[derive(Debug, Serialize)]
pub struct WorkloadComparison {
    pub workload: String,
    pub systems: Vec<Summary>,
    /// Per peer: ticketledger ÷ peer.
    pub ratio: BTreeMap<String, Ratio>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub system: String,
    pub mode: String,
    pub clients: Option<u32>,
    pub target_rate_per_s: Option<u64>,
    pub throughput_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub completed: u64,
    pub conflict: u64,
    pub pushed_back: u64,
    pub failed: u64,
    /// CPU µs per completed request summed over the watched server processes (0: none
    /// watched), and the loadgen's own.
    pub server_cpu_us_per_completed: f64,
    pub loadgen_cpu_us_per_completed: f64,
    pub notes: Vec<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    profile: &'a str,
    cores: usize,
    generated_at_unix_ms: u128,
    workloads: &'a [WorkloadComparison],
    results: &'a [RunResult],
}

fn summary(r: &RunResult) -> Summary {
    Summary {
        system: r.system.clone(),
        mode: r.mode.clone(),
        clients: r.clients,
        target_rate_per_s: r.target_rate_per_s,
        throughput_per_s: r.throughput_per_s,
        p50_us: r.latency.p50_us,
        p99_us: r.latency.p99_us,
        p999_us: r.latency.p999_us,
        completed: r.counts.completed(),
        conflict: r.counts.conflict,
        pushed_back: r.counts.pushed_back(),
        failed: r.counts.failed(),
        server_cpu_us_per_completed: server_cpu(r),
        loadgen_cpu_us_per_completed: r
            .cpu
            .iter()
            .find(|c| c.process == "loadgen")
            .map_or(0.0, |c| c.us_per_completed),
        notes: r.notes.clone(),
    }
}

fn server_cpu(r: &RunResult) -> f64 {
    // Folded from +0.0: an empty f64 sum is -0.0, which would print as "-0.0".
    let sum = r
        .cpu
        .iter()
        .filter(|c| c.process != "loadgen")
        .fold(0.0, |acc, c| acc + c.us_per_completed);
    (sum * 10.0).round() / 10.0
}

/// `cpu µs per completed: n1 leader 61.2 (0.85 cores), ...`, when CPU was measured.
pub fn cpu_line(r: &RunResult) -> Option<String> {
    if r.cpu.is_empty() {
        return None;
    }
    let parts: Vec<String> = r
        .cpu
        .iter()
        .map(|c| {
            format!(
                "{} {:.1} ({:.2} cores)",
                c.process, c.us_per_completed, c.cores
            )
        })
        .collect();
    let servers = r.cpu.iter().filter(|c| c.process != "loadgen").count();
    Some(match servers {
        0 => format!(
            "cpu µs per completed request: {} (no server process watched)",
            parts.join(", ")
        ),
        _ => format!(
            "cpu µs per completed request: {}; servers together {:.1}",
            parts.join(", "),
            server_cpu(r)
        ),
    })
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        (num / den * 100.0).round() / 100.0
    } else {
        f64::NAN
    }
}

/// Group by workload; the last ticketledger result of a workload is the numerator.
pub fn comparisons(results: &[RunResult]) -> Vec<WorkloadComparison> {
    let mut by_workload: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by_workload.entry(&r.workload).or_default().push(r);
    }
    by_workload
        .into_iter()
        .map(|(w, rs)| {
            let tl = rs.iter().rev().find(|r| r.system == "ticketledger");
            let ratio = rs
                .iter()
                .filter(|r| r.system != "ticketledger")
                .filter_map(|p| {
                    let tl = tl?;
                    Some((
                        p.system.clone(),
                        Ratio {
                            throughput: ratio(tl.throughput_per_s, p.throughput_per_s),
                            p99: ratio(tl.latency.p99_us as f64, p.latency.p99_us as f64),
                        },
                    ))
                })
                .collect();
            WorkloadComparison {
                workload: w.to_string(),
                systems: rs.iter().map(|r| summary(r)).collect(),
                ratio,
            }
        })
        .collect()
}

pub fn summary_line(r: &RunResult) -> String {
    let c = &r.counts;
    format!(
        "{} {}: {:.0}/s completed, p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; ok {} conflict {} 429 {} 503 {} 4xx {} 5xx {} timeout {} transport {} not sent {}",
        r.system,
        r.workload,
        r.throughput_per_s,
        r.latency.p50_us as f64 / 1000.0,
        r.latency.p99_us as f64 / 1000.0,
        r.latency.p999_us as f64 / 1000.0,
        c.ok,
        c.conflict,
        c.rate_limited_429,
        c.unavailable_503,
        c.client_error,
        c.server_error,
        c.timeout,
        c.transport_error,
        c.not_sent,
    )
}

pub fn table(cs: &[WorkloadComparison]) -> String {
    let mut out = String::new();
    for c in cs {
        let _ = writeln!(out, "\nworkload {}", c.workload);
        let _ = writeln!(
            out,
            "{:<13} {:>16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} | {:>12} {:>10}",
            "system",
            "load",
            "done/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "conflict%",
            "errors",
            "cpu µs/op",
            "tput ratio",
            "p99 ratio"
        );
        for s in &c.systems {
            let load = match (s.clients, s.target_rate_per_s) {
                (Some(n), _) => format!("{n} clients"),
                (_, Some(r)) => format!("{r}/s open"),
                _ => String::new(),
            };
            let conflict = if s.completed > 0 {
                100.0 * s.conflict as f64 / s.completed as f64
            } else {
                0.0
            };
            let (t, p) = match c.ratio.get(&s.system) {
                Some(r) => (format!("{:.2}x", r.throughput), format!("{:.2}x", r.p99)),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<13} {:>16} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.1} {:>8} {:>10} | {:>12} {:>10}",
                s.system,
                load,
                s.throughput_per_s,
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0,
                s.p999_us as f64 / 1000.0,
                conflict,
                s.pushed_back + s.failed,
                if s.server_cpu_us_per_completed > 0.0 {
                    format!("{:.1}", s.server_cpu_us_per_completed)
                } else {
                    "-".into()
                },
                t,
                p
            );
        }
    }
    out.push_str("\nratios are ticketledger ÷ peer: throughput above 1 and p99 below 1 favour ticketledger (dev profile); cpu µs/op: the watched server processes' CPU per completed request\n");
    out
}

fn chart(cs: &[WorkloadComparison], results: &[RunResult]) -> String {
    let mut body = String::new();
    let mut y = 0.0;
    for c in cs {
        let tput: Vec<(String, f64)> = c
            .systems
            .iter()
            .map(|s| (s.system.clone(), s.throughput_per_s))
            .collect();
        let p99: Vec<(String, f64)> = c
            .systems
            .iter()
            .map(|s| (s.system.clone(), s.p99_us as f64 / 1000.0))
            .collect();
        svg::bar_panel(
            &mut body,
            0.0,
            y,
            &format!("{}: completed per second", c.workload),
            "per s",
            &tput,
        );
        svg::bar_panel(
            &mut body,
            560.0,
            y,
            &format!("{}: p99 latency", c.workload),
            "ms",
            &p99,
        );
        let series: Vec<svg::Series> = results
            .iter()
            .filter(|r| r.workload == c.workload)
            .map(|r| svg::Series {
                name: r.system.clone(),
                points: r
                    .per_second
                    .iter()
                    .map(|s| (f64::from(s.t_s), s.completed as f64))
                    .collect(),
            })
            .collect();
        svg::line_panel(
            &mut body,
            1120.0,
            y,
            &format!("{}: per second over the run", c.workload),
            "per s",
            &series,
        );
        y += 220.0;
    }
    svg::document(1680.0, y.max(220.0), &body)
}

pub fn compare(
    paths: &[PathBuf],
    json: Option<&Path>,
    svg_path: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(!paths.is_empty(), "give the result files to compare");
    anyhow::ensure!(
        paths.len() <= MAX_RESULTS,
        "at most {MAX_RESULTS} result files"
    );
    let mut results = Vec::new();
    for p in paths {
        let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let r: RunResult = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a loadgen result", p.display()))?;
        results.push(r);
    }
    let cs = comparisons(&results);
    print!("{}", table(&cs));
    if let Some(p) = json {
        let report = Report {
            profile: "dev",
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            generated_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            workloads: &cs,
            results: &results,
        };
        crate::write_file(p, &serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = svg_path {
        crate::write_file(p, chart(&cs, &results).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Counts, Latency};

    fn result(system: &str, workload: &str, tput: f64, p99_us: u64) -> RunResult {
        RunResult {
            system: system.into(),
            workload: workload.into(),
            mode: "closed".into(),
            clients: Some(64),
            target_rate_per_s: None,
            measured_s: 10.0,
            warmup_s: 1.0,
            counts: Counts {
                ok: 10,
                ..Counts::default()
            },
            throughput_per_s: tput,
            latency: Latency {
                p99_us,
                ..Latency::default()
            },
            pushed_back_latency: Latency::default(),
            per_second: Vec::new(),
            watched_pids: Vec::new(),
            rss_max_kib: Vec::new(),
            cpu: Vec::new(),
            notes: Vec::new(),
            profile: "dev".into(),
        }
    }

    #[test]
    fn ratios_are_ticketledger_over_each_peer_per_workload() {
        let rs = vec![
            result("etcd", "hold", 2_000.0, 40_000),
            result("ticketledger", "hold", 16_000.0, 10_000),
            result("redis", "hold", 8_000.0, 5_000),
            result("redis", "read", 1.0, 1),
        ];
        let cs = comparisons(&rs);
        assert_eq!(cs.len(), 2);
        let hold = cs.iter().find(|c| c.workload == "hold").unwrap();
        assert_eq!(
            hold.ratio["etcd"],
            Ratio {
                throughput: 8.0,
                p99: 0.25
            }
        );
        assert_eq!(
            hold.ratio["redis"],
            Ratio {
                throughput: 2.0,
                p99: 2.0
            }
        );
        assert!(!hold.ratio.contains_key("ticketledger"));
        let read = cs.iter().find(|c| c.workload == "read").unwrap();
        assert!(read.ratio.is_empty(), "no ticketledger result to divide");
        let t = table(&cs);
        assert!(t.contains("8.00x") && t.contains("0.25x"), "{t}");
        let svg = chart(&cs, &rs);
        assert!(svg.starts_with("<svg") && !svg.contains("NaN"));
    }
}
