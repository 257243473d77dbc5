//! The timeline chart: faults as bands, every operation as a dot at its invocation time and
//! latency (log scale), coloured by outcome; unknown outcomes along the top.

use crate::history::{Completion, Logical};
use crate::nemesis::Band;
use std::fmt::Write;

const W: f64 = 1400.0;
const H: f64 = 520.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const PLOT_H: f64 = 400.0;
/// Most dots drawn (the history may hold more; every n-th is drawn then).
const DOTS_MAX: usize = 30_000;

fn color(fault: &str) -> &'static str {
    match fault {
        "kill" => "#f4a6a6",
        "pause" => "#f6d28b",
        "partition" => "#a9c8f0",
        "netem" => "#c6e3b5",
        "clock" => "#e0b8e8",
        "member" => "#b8e8e0",
        "snapshot" => "#d8d8a0",
        "wipe" => "#e8c0a0",
        _ => "#dddddd",
    }
}

pub fn timeline(ops: &[Logical], bands: &[Band], title: &str) -> String {
    let end_us = ops
        .iter()
        .map(|o| o.complete_us.unwrap_or(o.invoke_us))
        .chain(bands.iter().map(|b| b.end_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let plot_w = W - LEFT - 20.0;
    let x = |us: u64| LEFT + us as f64 / end_us * plot_w;
    // Latency axis: 1 ms .. 10 s, log scale.
    let y = |lat_us: u64| {
        let l = (lat_us.max(1000) as f64 / 1000.0).log10().min(4.0);
        TOP + PLOT_H - l / 4.0 * PLOT_H
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for (i, b) in bands.iter().enumerate() {
        let (x0, x1) = (x(b.start_us), x(b.end_us));
        let _ = write!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{PLOT_H}" fill="{}" opacity="0.6"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            color(&b.fault),
            escape(&format!(
                "{}: {}{}",
                b.fault,
                b.detail,
                b.error
                    .as_deref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            ))
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            x0 + 2.0,
            TOP + 12.0 + (i % 3) as f64 * 12.0,
            escape(&b.fault)
        );
    }
    for (ms, label) in [
        (1u64, "1 ms"),
        (10, "10 ms"),
        (100, "100 ms"),
        (1000, "1 s"),
        (10_000, "10 s"),
    ] {
        let yy = y(ms * 1000);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eee"/>"##,
            W - 20.0
        );
        let _ = write!(s, r#"<text x="5" y="{:.1}">{label}</text>"#, yy + 4.0);
    }
    let step = ops.len().div_ceil(DOTS_MAX).max(1);
    for o in ops.iter().step_by(step) {
        let cx = x(o.invoke_us);
        let (cy, fill) = match (&o.outcome, o.complete_us) {
            (Completion::Ok(_), Some(c)) => (y(c - o.invoke_us), "#2a9d3a"),
            (Completion::Fail(_), Some(c)) => (y(c - o.invoke_us), "#e08a1e"),
            _ => (TOP - 6.0, "#d62828"),
        };
        let _ = write!(
            s,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="1.6" fill="{fill}"/>"#
        );
    }
    let secs = (end_us / 1e6).ceil() as u64;
    let tick = (secs / 10).max(1);
    for t in (0..=secs).step_by(tick as usize) {
        let xx = x(t * 1_000_000);
        let _ = write!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}">{t} s</text>"#,
            TOP + PLOT_H + 15.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{:.1}">dots: operations at invocation time, height = latency; green ok, orange fail (rejected), red on top = unknown outcome. Bands: faults (hover for details).</text>"##,
        TOP + PLOT_H + 40.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
