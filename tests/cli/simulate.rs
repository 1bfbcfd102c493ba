//! `cartwright simulate`: the README's main job.

use serde_json::Value;

use super::{expect_failure, expect_success};

#[test]
fn default_scenario_runs_prints_a_summary_and_writes_the_report() {
    let dir = std::env::temp_dir().join(format!("cartwright-sim-{}", std::process::id()));
    let out = expect_success(&["simulate", "--output-dir", dir.to_str().unwrap()]);
    for line in
        ["scenario default", "cost total ($)", "pending p50 / p95 / p99 / max (s)", "report written to"]
    {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let summary = &report["summary"];
    for key in [
        "cost_total",
        "cost_per_hour",
        "cpu_utilization",
        "memory_utilization",
        "nodes_launched",
        "nodes_terminated",
        "interruptions",
        "unschedulable",
    ] {
        assert!(!summary[key].is_null(), "summary.{key} missing");
    }
    for key in ["p50", "p95", "p99", "max"] {
        assert!(summary["pending_seconds"][key].as_f64().is_some(), "pending_seconds.{key}");
    }
    assert!(summary["cost_total"].as_f64().unwrap() > 0.0);
    assert!(
        summary["interruptions"].as_u64().unwrap() >= 2,
        "the default scenario interrupts spot nodes at 9h and 15h30m"
    );
    assert_eq!(report["variants"][0]["name"], "cartwright");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compare_runs_each_solver_policy_on_the_same_workload() {
    let dir = std::env::temp_dir().join(format!("cartwright-sim-cmp-{}", std::process::id()));
    let scenario = format!("{}/examples/scenarios/small.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = expect_success(&[
        "simulate",
        &scenario,
        "--compare",
        "cartwright,karpenter-greedy",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.contains("karpenter-greedy"), "{out}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    let cost = |i: usize| variants[i]["summary"]["cost_total"].as_f64().unwrap();
    assert!(cost(0) > 0.0 && cost(1) > 0.0);
    for v in variants {
        // Same workload: every variant ends with the pods running and nothing left pending.
        assert_eq!(v["summary"]["still_pending"], 0, "{}", v["name"]);
        assert!(v["summary"]["pending_seconds"]["pods"].as_u64().unwrap() >= 3);
    }
    assert_eq!(variants[1]["name"], "karpenter-greedy");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_scenarios_and_variants_are_clear_errors() {
    let err = expect_failure(&["simulate", "/nonexistent/scenario.yaml"]);
    assert!(err.contains("reading /nonexistent/scenario.yaml"), "{err}");
    let err = expect_failure(&["simulate", "--compare", "fastest", "--output-dir", "/tmp/cartwright-never"]);
    assert!(err.contains("unknown variant `fastest`"), "{err}");
}

/// Headless Chromium, as installed by scripts/test.sh (Debian's `chromium`). Missing is a failure, not a skip.
fn chromium() -> std::path::PathBuf {
    let path = std::env::var_os("CARTWRIGHT_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(path.exists(), "{} not found: install Debian's chromium (scripts/test.sh does)", path.display());
    path
}

#[test]
fn html_report_renders_in_headless_chromium_with_every_chart() {
    let dir = std::env::temp_dir().join(format!("cartwright-sim-html-{}", std::process::id()));
    let scenario = format!("{}/examples/scenarios/small.yaml", env!("CARGO_MANIFEST_DIR"));
    expect_success(&[
        "simulate",
        &scenario,
        "--compare",
        "cartwright,ca-least-waste",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    let html = dir.join("report.html");
    let profile = dir.join("chromium-profile");
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("file://{}", html.display()),
        ])
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    // The browser parsed the page into a DOM holding every chart, each with its lines.
    for id in
        ["chart-nodes", "chart-cost", "chart-pending", "chart-utilization", "chart-hpa-0", "chart-load-0"]
    {
        let start =
            dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("{id} missing from the rendered DOM"));
        let chart = &dom[start..start + dom[start..].find("</svg>").expect("chart closed")];
        assert!(chart.contains("<polyline"), "{id} has no series");
    }
    // Both variants are charted side by side.
    assert!(
        dom.contains("data-series=\"cartwright $/hour\"")
            && dom.contains("data-series=\"ca-least-waste $/hour\"")
    );
    assert!(dom.contains("<table id=\"summary\">"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn seoul_example_compares_the_fixed_fleet_with_autoscaled_nodes_under_three_releases() {
    let dir = std::env::temp_dir().join(format!("cartwright-sim-seoul-{}", std::process::id()));
    let scenario = format!("{}/examples/seoul-bluegreen.yaml", env!("CARGO_MANIFEST_DIR"));
    let names = "fixed-rolling,fixed-bluegreen,fixed-canary,autoscaled-rolling,autoscaled-bluegreen,autoscaled-canary";
    expect_success(&[
        "simulate",
        &scenario,
        "--compare",
        names,
        "--output-dir",
        dir.to_str().unwrap(),
        "--quiet",
    ]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let variants = report["variants"].as_array().unwrap();
    let by_name = |n: &str| variants.iter().find(|v| v["name"] == n).unwrap_or_else(|| panic!("{n}"));
    let summary = |n: &str| &by_name(n)["summary"];
    // The fixed fleet costs its 7 on-demand nodes for 24 h: 2 t3.large + 2 t3.medium + 3 t3.small in Seoul.
    let fleet_per_hour = 2.0 * 0.104 + 2.0 * 0.052 + 3.0 * 0.026;
    for n in ["fixed-rolling", "fixed-bluegreen", "fixed-canary"] {
        let cost = summary(n)["cost_total"].as_f64().unwrap();
        assert!((cost - fleet_per_hour * 24.0).abs() < 1e-6, "{n}: {cost}");
        assert_eq!(summary(n)["nodes_launched"], 0);
    }
    // Blue/green runs a full second copy of the backend: twice its replicas at the peak.
    let peak_backend = |n: &str| {
        by_name(n)["report"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["workload_pods"]["backend"].as_u64().unwrap())
            .max()
            .unwrap()
    };
    let replicas_at_release = by_name("autoscaled-bluegreen")["report"]["hpa"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|p| p["workload"] == "backend" && p["t_seconds"].as_u64().unwrap() <= 11 * 3600)
        .unwrap()["desired_replicas"]
        .as_u64()
        .unwrap();
    assert!(
        peak_backend("autoscaled-bluegreen") >= 2 * replicas_at_release,
        "blue/green doubles the backend"
    );
    assert!(peak_backend("autoscaled-rolling") <= peak_backend("autoscaled-bluegreen"));
    // On the fixed fleet the green copy does not fit: pods wait for hours; autoscaled nodes take them in about
    // a minute.
    let p99 = |n: &str| summary(n)["pending_seconds"]["p99"].as_f64().unwrap();
    assert!(p99("fixed-bluegreen") > 3600.0, "{}", p99("fixed-bluegreen"));
    assert!(p99("autoscaled-bluegreen") < 300.0, "{}", p99("autoscaled-bluegreen"));
    assert!(!summary("fixed-bluegreen")["unschedulable"].as_array().unwrap().is_empty());
    assert!(summary("autoscaled-bluegreen")["nodes_launched"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(&dir).ok();
}
