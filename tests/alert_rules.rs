//! The shipped alerting rules (alerts/database-pool.rules.yml): valid for
//! Debian's `promtool`, passing their unit tests
//! (alerts/database-pool.rules.test.yml), and naming exactly the alerts the
//! shipped playbooks match and the escalation matrix covers. The rules with
//! a real Prometheus and Alertmanager: tests/e2e.rs
//! (`a_shipped_rule_fires_in_a_real_prometheus_and_reaches_the_slack_report`).

mod common;

use std::path::PathBuf;
use std::process::Command;

const PROMTOOL: &str = "/usr/bin/promtool";

fn alerts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("alerts")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(alerts_dir())
        .output()
        .expect("promtool runs (Debian package prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// `alert:` names of the rules file, in order.
fn alert_names() -> Vec<String> {
    let text =
        std::fs::read_to_string(alerts_dir().join("database-pool.rules.yml")).expect("rules file");
    let rules: serde_json::Value = serde_saphyr::from_str(&text).expect("rules YAML");
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn promtool_accepts_the_shipped_rules() {
    let out = promtool(&["check", "rules", "database-pool.rules.yml"]);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_shipped_rules_pass() {
    let out = promtool(&["test", "rules", "database-pool.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_playbook_and_a_matrix_row_and_nothing_else_does() {
    let alerts = alert_names();
    assert_eq!(
        alerts,
        [
            "DatabasePoolExhaustionCritical",
            "DatabasePoolExhaustionWarning",
            "DatabaseLongRunningQueries",
            "DatabaseIdleInTransaction",
            "DatabasePoolOverflowHigh",
            "HighErrorRate5xx",
        ]
    );
    let mut matched = Vec::new();
    for entry in std::fs::read_dir(common::playbooks_dir()).expect("playbooks") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("playbook");
        let name = text
            .split("alertname=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{} matches no alertname", path.display()));
        matched.push(name.to_owned());
    }
    matched.sort();
    let mut sorted = alerts;
    sorted.sort();
    assert_eq!(matched, sorted, "playbooks and rules name the same alerts");

    let matrix = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/escalation.yaml"),
    )
    .expect("matrix");
    let matrix: serde_json::Value = serde_saphyr::from_str(&matrix).expect("matrix YAML");
    let mut rows: Vec<String> = matrix["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["alert"].as_str().map(str::to_owned))
        .collect();
    rows.sort();
    // The runbook's matrix has no row for the warning; the default covers it.
    let without_warning: Vec<String> = sorted
        .into_iter()
        .filter(|a| a != "DatabasePoolExhaustionWarning")
        .collect();
    assert_eq!(rows, without_warning);
}
