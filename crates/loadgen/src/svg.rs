//! Hand-written SVG charts: line panels (a series over time) and bar panels (one value per
//! system). No plotting crate: a chart is a few dozen elements.

use crate::record::RunResult;
use std::fmt::Write;

const PANEL_W: f64 = 560.0;
const PANEL_H: f64 = 220.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_T: f64 = 34.0;
const MARGIN_B: f64 = 36.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn axes(out: &mut String, x0: f64, y0: f64, title: &str, y_label: &str, y_max: f64) {
    let (w, h) = (PANEL_W - MARGIN_L - 20.0, PANEL_H - MARGIN_T - MARGIN_B);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        x0 + MARGIN_L,
        y0 + 20.0,
        esc(title)
    );
    for i in 0..=4 {
        let y = y0 + MARGIN_T + h - h * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + MARGIN_L,
            x0 + MARGIN_L + w,
            x0 + MARGIN_L - 6.0,
            y + 4.0,
            fmt_num(y_max * f64::from(i) / 4.0)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">{}</text>"#,
        x0 + 14.0,
        y0 + MARGIN_T + h / 2.0,
        x0 + 14.0,
        y0 + MARGIN_T + h / 2.0,
        esc(y_label)
    );
}

/// A panel of lines over x (seconds) at (x0, y0).
pub fn line_panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    y_label: &str,
    series: &[Series],
) {
    let (w, h) = (PANEL_W - MARGIN_L - 20.0, PANEL_H - MARGIN_T - MARGIN_B);
    let x_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    axes(out, x0, y0, title, y_label, y_max);
    for i in 0..=4 {
        let x = x0 + MARGIN_L + w * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            y0 + MARGIN_T + h + 16.0,
            fmt_num(x_max * f64::from(i) / 4.0)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">seconds</text>"#,
        x0 + MARGIN_L + w / 2.0,
        y0 + PANEL_H - 4.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    x0 + MARGIN_L + w * x / x_max,
                    y0 + MARGIN_T + h - h * (y / y_max).min(1.0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{color}">{}</text>"#,
            x0 + MARGIN_L + w - 150.0,
            y0 + MARGIN_T + 12.0 + 14.0 * i as f64,
            esc(&s.name)
        );
    }
}

/// A panel of labelled bars at (x0, y0).
pub fn bar_panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) {
    let (w, h) = (PANEL_W - MARGIN_L - 20.0, PANEL_H - MARGIN_T - MARGIN_B);
    let y_max = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    axes(out, x0, y0, title, y_label, y_max);
    let slot = w / bars.len().max(1) as f64;
    for (i, (name, v)) in bars.iter().enumerate() {
        let bh = h * (v / y_max).clamp(0.0, 1.0);
        let x = x0 + MARGIN_L + slot * i as f64 + slot * 0.15;
        let y = y0 + MARGIN_T + h - bh;
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            slot * 0.7,
            COLORS[i % COLORS.len()],
            x + slot * 0.35,
            y - 4.0,
            fmt_num(*v),
            x + slot * 0.35,
            y0 + MARGIN_T + h + 16.0,
            esc(name)
        );
    }
}

pub fn document(width: f64, height: f64, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// One run: completed requests per second and p99 per second (plus RSS when watched).
pub fn run_chart(r: &RunResult) -> String {
    let mut body = String::new();
    let title = format!("{} {} ({})", r.system, r.workload, r.mode);
    let done = Series {
        name: "completed/s".into(),
        points: r
            .per_second
            .iter()
            .map(|s| (f64::from(s.t_s), s.completed as f64))
            .collect(),
    };
    let pushed = Series {
        name: "429+503/s".into(),
        points: r
            .per_second
            .iter()
            .map(|s| (f64::from(s.t_s), s.pushed_back as f64))
            .collect(),
    };
    line_panel(
        &mut body,
        0.0,
        0.0,
        &format!("{title}: throughput"),
        "requests/s",
        &[done, pushed],
    );
    let p99 = Series {
        name: "p99".into(),
        points: r
            .per_second
            .iter()
            .map(|s| (f64::from(s.t_s), s.p99_us as f64 / 1000.0))
            .collect(),
    };
    let p50 = Series {
        name: "p50".into(),
        points: r
            .per_second
            .iter()
            .map(|s| (f64::from(s.t_s), s.p50_us as f64 / 1000.0))
            .collect(),
    };
    line_panel(
        &mut body,
        0.0,
        PANEL_H,
        "latency per second",
        "ms",
        &[p99, p50],
    );
    let mut height = 2.0 * PANEL_H;
    if !r.watched_pids.is_empty() {
        let rss: Vec<Series> = r
            .watched_pids
            .iter()
            .enumerate()
            .map(|(i, pid)| Series {
                name: format!("pid {pid}"),
                points: r
                    .per_second
                    .iter()
                    .filter_map(|s| {
                        s.rss_kib
                            .get(i)
                            .map(|k| (f64::from(s.t_s), *k as f64 / 1024.0))
                    })
                    .collect(),
            })
            .collect();
        line_panel(&mut body, 0.0, height, "resident memory", "MiB", &rss);
        height += PANEL_H;
    }
    document(PANEL_W, height, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(4_100.0), 5_000.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    #[test]
    fn panels_are_well_formed_and_escape_names() {
        let mut body = String::new();
        bar_panel(
            &mut body,
            0.0,
            0.0,
            "a<b",
            "x",
            &[("p&q".into(), 3.0), ("r".into(), 0.0)],
        );
        line_panel(
            &mut body,
            0.0,
            PANEL_H,
            "t",
            "y",
            &[Series {
                name: "s".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
        );
        let doc = document(PANEL_W, 2.0 * PANEL_H, &body);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("a&lt;b") && doc.contains("p&amp;q"));
        assert_eq!(doc.matches("<rect").count(), 3, "background + two bars");
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert!(!doc.contains("NaN") && !doc.contains("inf"));
    }
}
