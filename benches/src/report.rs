//! The load generator's outputs: `result.json` (everything measured) and
//! `report.html`, one self-contained page (inline SVG, no script, no
//! server) with the figures, the ratios to the baselines and two plots:
//! throughput over time and the latency distribution of each target.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::RunResult;

/// One ratio the report prints: `numerator / denominator` of two figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    /// What is compared, e.g. `vault get / rocksdb get (ops/s)`.
    pub name: String,
    /// The ratio.
    pub value: f64,
}

/// Everything a run of `vault-bench` measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Format version of `result.json`.
    pub version: u32,
    /// The command line, for repeating the run.
    pub command: String,
    /// Logical CPUs of the machine that ran the clients.
    pub cpus: usize,
    /// The options of the run.
    pub config: serde_json::Value,
    /// The vault first, then the baselines.
    pub runs: Vec<RunResult>,
    /// Target over baseline, per kind of operation.
    pub ratios: Vec<Ratio>,
}

impl Report {
    /// The ratios of the first run (the vault) to each other run, per kind
    /// of operation both did, and in total.
    pub fn ratios_of(runs: &[RunResult]) -> Vec<Ratio> {
        let Some((vault, baselines)) = runs.split_first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for b in baselines {
            for (kind, s) in &vault.ops {
                if let Some(base) = b.ops.get(kind) {
                    if base.ops_per_sec > 0.0 {
                        out.push(Ratio {
                            name: format!("{} {kind} / {} {kind} (ops/s)", vault.target, b.target),
                            value: s.ops_per_sec / base.ops_per_sec,
                        });
                    }
                }
            }
            if b.total.ops_per_sec > 0.0 {
                out.push(Ratio {
                    name: format!("{} all / {} all (ops/s)", vault.target, b.target),
                    value: vault.total.ops_per_sec / b.total.ops_per_sec,
                });
            }
        }
        out
    }

    /// One line per target whose operations failed (in any repeat): such
    /// a run is no measurement, whatever its figures say.
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.errors > 0)
            .map(|r| {
                let done: u64 = r.total.count;
                format!(
                    "{}: {} operations failed (the figures leave them out; {} succeeded in the median repeat)",
                    r.target, r.errors, done
                )
            })
            .collect()
    }

    /// The text summary printed at the end of a run.
    pub fn text(&self) -> String {
        let mut t = String::new();
        for r in &self.runs {
            let _ = writeln!(
                t,
                "{:<8} {:>3} clients {:>10.0} ops/s  p50 {:>6} µs  p95 {:>6} µs  p99 {:>6} µs  max {:>7} µs  errors {}",
                r.target, r.clients, r.total.ops_per_sec, r.total.p50_us, r.total.p95_us,
                r.total.p99_us, r.total.max_us, r.errors
            );
            if r.repeats.len() > 1 {
                let rates: Vec<String> = r
                    .repeats
                    .iter()
                    .map(|x| format!("{:.0}", x.ops_per_sec))
                    .collect();
                let _ = writeln!(
                    t,
                    "  median of {} repeats (ops/s: {})",
                    r.repeats.len(),
                    rates.join(", ")
                );
            }
            for (kind, s) in &r.ops {
                let _ = writeln!(
                    t,
                    "  {kind:<10} {:>10.0} ops/s  p50 {:>6} µs  p95 {:>6} µs  p99 {:>6} µs  max {:>7} µs",
                    s.ops_per_sec, s.p50_us, s.p95_us, s.p99_us, s.max_us
                );
            }
        }
        for ratio in &self.ratios {
            let _ = writeln!(t, "ratio {:<40} {:.3}", ratio.name, ratio.value);
        }
        t
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let mut h = String::new();
        h.push_str(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>vault-bench report</title><style>\
             body{font-family:sans-serif;margin:2em;max-width:1000px}\
             table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
             th:first-child,td:first-child{text-align:left}svg{border:1px solid #ddd;margin:1em 0}\
             </style></head><body>\n<h1>vault-bench report</h1>\n",
        );
        let _ = writeln!(
            h,
            "<p>Command: <code>{}</code><br>Client machine: {} logical CPUs</p>",
            escape(&self.command),
            self.cpus
        );
        for failure in self.failures() {
            let _ = writeln!(
                h,
                "<p style=\"color:#b00;font-weight:bold\">FAILED: {}</p>",
                escape(&failure)
            );
        }
        if let Some(r) = self.runs.iter().find(|r| r.repeats.len() > 1) {
            let _ = writeln!(
                h,
                "<p>Each target ran {} times; the figures are its median repeat's. \
                 Every repeat, ops/s: {}.</p>",
                r.repeats.len(),
                self.runs
                    .iter()
                    .map(|r| {
                        let rates: Vec<String> = r
                            .repeats
                            .iter()
                            .map(|x| format!("{:.0}", x.ops_per_sec))
                            .collect();
                        format!("{} {}", escape(&r.target), rates.join(" / "))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        h.push_str("<h2>Figures</h2>\n<table><tr><th>target / operation</th><th>clients</th><th>ops/s</th><th>p50 µs</th><th>p95 µs</th><th>p99 µs</th><th>max µs</th><th>errors</th></tr>\n");
        for r in &self.runs {
            let s = &r.total;
            let _ = writeln!(
                h,
                "<tr><th>{} (all)</th><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.target), r.clients, s.ops_per_sec, s.p50_us, s.p95_us, s.p99_us, s.max_us, r.errors
            );
            for (kind, s) in &r.ops {
                let _ = writeln!(
                    h,
                    "<tr><td>{} {}</td><td></td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td></tr>",
                    escape(&r.target), escape(kind), s.ops_per_sec, s.p50_us, s.p95_us, s.p99_us, s.max_us
                );
            }
        }
        h.push_str(
            "</table>\n<h2>Ratios</h2>\n<table><tr><th>comparison</th><th>ratio</th></tr>\n",
        );
        for r in &self.ratios {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.3}</td></tr>",
                escape(&r.name),
                r.value
            );
        }
        h.push_str("</table>\n<h2>Throughput over time</h2>\n");
        h.push_str(&self.throughput_svg());
        h.push_str("<h2>Latency distribution (share of operations at or below a latency)</h2>\n");
        h.push_str(&self.latency_svg());
        h.push_str("</body></html>\n");
        h
    }

    /// One panel per target, each on its own scale: a baseline a hundred
    /// times faster than the vault would flatten the vault's line to zero.
    fn throughput_svg(&self) -> String {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .runs
            .iter()
            .map(|r| {
                // Each bucket is 100 ms, but the last covers only what is
                // left of the run: scaled by its own width.
                let last = r.timeline.len().saturating_sub(1);
                let tail = (r.seconds * 10.0 - last as f64).clamp(0.05, 1.0);
                let pts = r
                    .timeline
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let width = if i == last { tail } else { 1.0 };
                        ((i as f64 + width) / 10.0, n as f64 * 10.0 / width)
                    })
                    .collect();
                (r.target.clone(), pts)
            })
            .collect();
        series
            .iter()
            .enumerate()
            .map(|(i, one)| plot(std::slice::from_ref(one), i, "seconds", "ops/s", false))
            .collect()
    }

    fn latency_svg(&self) -> String {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .runs
            .iter()
            .map(|r| {
                let total = r.total.count.max(1) as f64;
                let mut seen = 0u64;
                let pts = r
                    .total
                    .histogram
                    .iter()
                    .map(|&(bound, n)| {
                        seen += n;
                        ((bound as f64).log10(), seen as f64 / total)
                    })
                    .collect();
                (r.target.clone(), pts)
            })
            .collect();
        plot(&series, 0, "latency, µs (log10)", "share", true)
    }
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// A line chart of `series` in SVG, coloured from the `first_color`-th
/// colour on, its legend beside the plot (never over a line); `log_x`
/// labels x ticks as powers of 10.
fn plot(
    series: &[(String, Vec<(f64, f64)>)],
    first_color: usize,
    x_label: &str,
    y_label: &str,
    log_x: bool,
) -> String {
    const W: f64 = 800.0;
    const H: f64 = 320.0;
    /// Room for the legend, right of the plot.
    const LEGEND: f64 = 150.0;
    const L: f64 = 70.0;
    const B: f64 = 40.0;
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        x0 = 0.0;
        x1 = x1.max(1.0);
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - 20.0);
    let sy = |y: f64| H - B - y / y1 * (H - B - 20.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{H}\" viewBox=\"0 0 {} {H}\" font-size=\"12\">\n",
        W + LEGEND,
        W + LEGEND
    );
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/><line x1=\"{L}\" y1=\"20\" x2=\"{L}\" y2=\"{}\" stroke=\"#000\"/>",
        H - B, W - 20.0, H - B, H - B
    );
    for k in 0..=4 {
        let y = y1 * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            L - 5.0,
            sy(y) + 4.0,
            short(y)
        );
        let x = x0 + (x1 - x0) * f64::from(k) / 4.0;
        let label = if log_x {
            short(10f64.powf(x))
        } else {
            format!("{x:.1}")
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            sx(x),
            H - B + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        (W + L) / 2.0, H - 5.0, escape(x_label), H / 2.0, H / 2.0, escape(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[(first_color + i) % COLORS.len()];
        let line: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        let y = 30.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
            W + 5.0,
            y - 4.0,
            W + 25.0,
            y - 4.0,
            W + 30.0,
            y,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A number in few characters: 1234567 → 1.23M.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v if v >= 10.0 || v == 0.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// HTML-escapes text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{drive_threads, OpKind, Stop};

    #[test]
    fn failed_operations_are_reported_loudly() {
        let mut failing = drive_threads("vault", 1, Stop::Count(20), false, |_, i, _| {
            (OpKind::Get, i % 4 != 0)
        });
        failing.target = "vault".into();
        let fine = drive_threads("echo", 1, Stop::Count(20), false, |_, _, _| {
            (OpKind::Get, true)
        });
        let report = Report {
            version: 1,
            command: "vault-bench".into(),
            cpus: 2,
            config: serde_json::json!({}),
            ratios: Vec::new(),
            runs: vec![failing.clone(), fine],
        };
        let failures = report.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].starts_with(&format!("vault: {} operations failed", failing.errors)),
            "{failures:?}"
        );
        assert!(failing.errors > 0);
        assert!(report.html().contains("FAILED: vault:"));
    }

    #[test]
    fn reports_hold_every_run_and_ratio() {
        let run = |name: &str| {
            let mut r = drive_threads(name, 2, Stop::Count(50), false, |_, i, _| {
                (
                    if i.is_multiple_of(2) {
                        OpKind::Get
                    } else {
                        OpKind::Put
                    },
                    true,
                )
            });
            r.target = name.to_owned();
            r
        };
        let runs = vec![run("vault"), run("<rocksdb>")];
        let report = Report {
            version: 1,
            command: "vault-bench --clients 2".into(),
            cpus: 2,
            config: serde_json::json!({}),
            ratios: Report::ratios_of(&runs),
            runs,
        };
        assert_eq!(report.ratios.len(), 3, "get, put, all");
        assert!(report.ratios[0]
            .name
            .starts_with("vault get / <rocksdb> get"));
        let html = report.html();
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        // A throughput panel per run, each on its own scale, and the
        // latency plot; legends sit right of the plot area (x ≥ 800).
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("&lt;rocksdb&gt;") && !html.contains("<rocksdb>"));
        assert!(html.contains("<text x=\"830\" y=\"30.0\" fill=\"#d62728\">&lt;rocksdb&gt;</text>"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["runs"][1]["total"]["count"], 50);
        assert!(report.text().contains("ratio vault all / <rocksdb> all"));
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(0.5), "0.50");
    }
}
