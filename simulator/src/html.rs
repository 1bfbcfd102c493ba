//! `report.html`: one self-contained page (inline SVG, inline CSS, no script, no network) with the summary and
//! charts over time: nodes by capacity type, hourly cost, pending pods, utilisation, HPA replicas and load.
//!
//! The charts are plain SVG line charts written here: the charting crates need a font stack (font-kit or a
//! bundled TTF) to lay out text, which an offline report does not need; the browser draws SVG text itself.

use std::fmt::Write;

use crate::report::Report;

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const COLOURS: [&str; 8] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 × 10^k) giving about `ticks` intervals over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual < 1.5 {
        1.0
    } else if residual < 3.0 {
        2.0
    } else if residual < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn format_tick(value: f64) -> String {
    if value.abs() >= 1000.0 || value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// An SVG line chart with axes, ticks and a legend; x in hours.
fn line_chart(id: &str, title: &str, y_label: &str, series: &[Series]) -> String {
    let x_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0_f64, f64::max).max(1e-9);
    let y_max_raw = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let y_step = nice_step(y_max_raw.max(1e-9), 5.0);
    let y_max = (y_max_raw / y_step).ceil().max(1.0) * y_step;
    let x_step = nice_step(x_max, 8.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(svg, r#"<text x="{LEFT}" y="18" class="title">{}</text>"#, escape(title));
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y_max + y_step * 1e-6 {
        let py = sy(y);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            format_tick(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_max + x_step * 1e-6 {
        let px = sx(x);
        let _ = write!(
            svg,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{:.1}" class="grid"/><text x="{px:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            format_tick(x)
        );
        x += x_step;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">hours</text><text x="14" y="{:.1}" class="axis" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        for (x, y) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", sx(*x), sy(*y));
        }
        let _ = write!(
            svg,
            r#"<polyline class="series" data-series="{}" fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
            escape(&s.name),
            points.trim_end()
        );
        let lx = LEFT + 12.0 + (i as f64) * 170.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            TOP + 4.0,
            lx + 16.0,
            TOP + 9.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn hours(t_seconds: u64) -> f64 {
    t_seconds as f64 / 3600.0
}

/// The whole page for one or more variants of a scenario.
pub fn render(scenario: &str, description: &str, variants: &[(&str, &Report)]) -> String {
    let many = variants.len() > 1;
    let per_variant = |label: &str, f: &dyn Fn(&crate::report::Sample) -> f64| -> Vec<Series> {
        variants
            .iter()
            .map(|(name, r)| Series {
                name: if many { format!("{name} {label}") } else { label.to_owned() },
                points: r.samples.iter().map(|s| (hours(s.t_seconds), f(s))).collect(),
            })
            .collect()
    };
    let mut nodes = per_variant("spot", &|s| s.nodes_spot as f64);
    nodes.extend(per_variant("on-demand", &|s| s.nodes_on_demand as f64));
    let cost = per_variant("$/hour", &|s| s.cost_per_hour);
    let pending = per_variant("pending pods", &|s| s.pending_pods as f64);
    let mut utilization = per_variant("cpu", &|s| s.cpu_utilization * 100.0);
    utilization.extend(per_variant("memory", &|s| s.memory_utilization * 100.0));

    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cartwright simulation: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.chart {{ width: 100%; height: auto; margin: 0.5em 0 1.5em; }}
.chart .title {{ font-size: 14px; font-weight: 600; }}
.chart .tick, .chart .legend {{ font-size: 11px; fill: #444; }}
.chart .axis {{ font-size: 11px; fill: #666; }}
.chart .grid {{ stroke: #eee; stroke-width: 1; }}
</style></head><body>
<h1>Simulation: {title}</h1><p>{description}</p>
"#,
        title = escape(scenario),
        description = escape(description)
    );
    html.push_str("<h2>Summary</h2><table id=\"summary\"><tr><th></th>");
    for (name, _) in variants {
        let _ = write!(html, "<th>{}</th>", escape(name));
    }
    html.push_str("</tr>");
    let rows = crate::report::summary_rows();
    for (label, f) in rows {
        let _ = write!(html, "<tr><td>{label}</td>");
        for (_, r) in variants {
            let _ = write!(html, "<td>{}</td>", escape(&f(&r.summary)));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>\n<h2>Over time</h2>\n");
    html.push_str(&line_chart("chart-nodes", "Nodes by capacity type", "nodes", &nodes));
    html.push_str(&line_chart("chart-cost", "Cost per hour", "$ / hour", &cost));
    html.push_str(&line_chart("chart-pending", "Pending pods", "pods", &pending));
    html.push_str(&line_chart(
        "chart-utilization",
        "Requested / allocatable on ready nodes",
        "%",
        &utilization,
    ));

    // HPA: replicas (desired and ready) and load, per workload, for the first variant.
    if let Some((_, first)) = variants.first() {
        let mut workloads: Vec<&str> = first.hpa.iter().map(|p| p.workload.as_str()).collect();
        workloads.sort_unstable();
        workloads.dedup();
        for (i, w) in workloads.iter().enumerate() {
            let points = first.hpa.iter().filter(|p| p.workload == *w);
            let desired = Series {
                name: "desired replicas".into(),
                points: points.clone().map(|p| (hours(p.t_seconds), f64::from(p.desired_replicas))).collect(),
            };
            let ready = Series {
                name: "ready replicas".into(),
                points: points.clone().map(|p| (hours(p.t_seconds), f64::from(p.ready_replicas))).collect(),
            };
            let load = Series {
                name: "load".into(),
                points: points.map(|p| (hours(p.t_seconds), p.load)).collect(),
            };
            html.push_str(&line_chart(
                &format!("chart-hpa-{i}"),
                &format!("HPA {w}: replicas"),
                "replicas",
                &[desired, ready],
            ));
            html.push_str(&line_chart(
                &format!("chart-load-{i}"),
                &format!("{w}: offered load"),
                "load",
                &[load],
            ));
        }
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.abs().max(1.0);
        assert!(close(nice_step(100.0, 5.0), 20.0));
        assert!(close(nice_step(24.0, 8.0), 5.0), "3 per tick rounds to 5: {}", nice_step(24.0, 8.0));
        assert!(close(nice_step(0.7, 5.0), 0.1));
        assert!(close(nice_step(0.0, 5.0), 1.0));
    }

    #[test]
    fn a_chart_has_one_polyline_per_series_with_every_point_inside_the_plot() {
        let s = vec![
            Series { name: "a".into(), points: vec![(0.0, 0.0), (1.0, 5.0), (2.0, 3.0)] },
            Series { name: "b<c".into(), points: vec![(0.0, 1.0), (2.0, 1.0)] },
        ];
        let svg = line_chart("c", "T", "y", &s);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;c"), "names are escaped");
        for poly in svg.split("points=\"").skip(1) {
            for pair in poly.split('"').next().unwrap().split(' ') {
                let (x, y) = pair.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y),
                    "{x},{y}"
                );
            }
        }
    }
}
