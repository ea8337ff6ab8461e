//! The capacity plot: the main curves of a report over time, one panel per metric and one line per
//! kas replica, as a self-contained SVG (hand-written polylines, no dependencies).

use std::fmt::Write as _;

use super::report::Report;

const WIDTH: f64 = 960.0;
const PANEL_H: f64 = 170.0;
const MARGIN_L: f64 = 80.0;
const MARGIN_R: f64 = 150.0;
const MARGIN_T: f64 = 40.0;
const GAP: f64 = 45.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Renders the report's series as SVG.
pub fn svg(report: &Report) -> String {
    let panels: Vec<(&str, Vec<Vec<f64>>)> = vec![
        (
            "agent connections",
            report
                .series
                .iter()
                .map(|s| s.connections.iter().map(|v| *v as f64).collect())
                .collect(),
        ),
        (
            "open streams",
            report
                .series
                .iter()
                .map(|s| s.streams.iter().map(|v| *v as f64).collect())
                .collect(),
        ),
        (
            "pending requests",
            report
                .series
                .iter()
                .map(|s| s.pending.iter().map(|v| *v as f64).collect())
                .collect(),
        ),
        (
            "request latency p99 (ms, per sample interval)",
            report
                .series
                .iter()
                .map(|s| s.latency_p99_ms.clone())
                .collect(),
        ),
        (
            "tunnel bytes/s",
            report
                .series
                .iter()
                .map(|s| s.bytes_per_s.clone())
                .collect(),
        ),
    ];
    let height = MARGIN_T + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let t = &report.sample_times_s;
    let t_max = t.last().copied().unwrap_or(1.0).max(1e-9);
    let plot_w = WIDTH - MARGIN_L - MARGIN_R;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN_L}" y="22" font-size="15" font-weight="bold">{} — {} agents, {} kas, seed {}, trace {}</text>"#,
        escape(&report.scenario),
        report.agents,
        report.kas_replicas,
        report.seed,
        report.trace_hash
    );
    for (p, (title, lines)) in panels.iter().enumerate() {
        let top = MARGIN_T + p as f64 * (PANEL_H + GAP);
        let y_max = lines
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            out,
            r##"<rect x="{MARGIN_L}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{MARGIN_L}" y="{}" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(title)
        );
        for frac in [0.0, 0.5, 1.0] {
            let y = top + PANEL_H * (1.0 - frac);
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                MARGIN_L - 6.0,
                y + 4.0,
                human(y_max * frac)
            );
            if frac > 0.0 && frac < 1.0 {
                let _ = writeln!(
                    out,
                    r##"<line x1="{MARGIN_L}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##,
                    MARGIN_L + plot_w
                );
            }
        }
        for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let x = MARGIN_L + plot_w * frac;
            let _ = writeln!(
                out,
                r#"<text x="{x}" y="{}" text-anchor="middle">{:.0}s</text>"#,
                top + PANEL_H + 15.0,
                t_max * frac
            );
        }
        for (k, line) in lines.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let mut points = String::new();
            for (ti, v) in t.iter().zip(line) {
                let v = if v.is_finite() { *v } else { 0.0 };
                let x = MARGIN_L + plot_w * ti / t_max;
                let y = top + PANEL_H * (1.0 - v / y_max);
                let _ = write!(points, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.trim_end()
            );
            if p == 0 {
                let ly = top + 14.0 + k as f64 * 16.0;
                let lx = MARGIN_L + plot_w + 12.0;
                let _ = writeln!(
                    out,
                    r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{ly}">kas {k}</text>"#,
                    ly - 4.0,
                    lx + 20.0,
                    ly - 4.0,
                    lx + 26.0
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}
