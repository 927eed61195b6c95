//! Golden renderings of the six runbook playbooks' reports on Slack and
//! Discord (from their `remedy test` cases), each checked against the
//! platforms' limits. `REMEDY_UPDATE_GOLDEN=1 cargo nextest run --test
//! golden` rewrites the files under tests/golden/ after a deliberate change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use remedy::chat::report::{ChatReport, EVIDENCE_ROWS};
use remedy::chat::{discord, slack};
use remedy::engine::diagnose::approval_requests;
use remedy::playbook::testing::{TestFile, case_report};
use remedy::playbook::{self, References};
use remedy::store::{ApprovalView, IncidentRecord};
use serde_json::{Value, json};
use sqlx::types::Json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn incident(id: i64, labels: &remedy::domain::Labels) -> IncidentRecord {
    IncidentRecord {
        id,
        status: remedy::domain::IncidentStatus::Firing,
        alertname: labels.get("alertname").cloned().unwrap_or_default(),
        severity: labels.get("severity").cloned().unwrap_or_default(),
        fingerprint: "0123456789abcdef".into(),
        starts_at: "2026-11-27T01:00:00Z".into(),
        ends_at: None,
        labels: Json(labels.clone()),
        annotations: Json(BTreeMap::default()),
        generator_url: String::new(),
        receiver: "remedy".into(),
        group_key: String::new(),
        opened_at: 0,
        last_seen_at: 0,
        seen_count: 1,
        resolved_at: None,
        report: None,
        storm_id: None,
    }
}

/// The first case of each playbook's tests, as the chat report remedy
/// would post (approval ids numbered from 1).
fn reports() -> Vec<(String, ChatReport)> {
    let mut settings_probes = BTreeMap::new();
    settings_probes.insert("pms".to_owned(), "http://qloapps".to_owned());
    let refs = References {
        targets: ["main".to_owned()].into(),
        programs: [PathBuf::from("/usr/bin/docker")].into(),
        probes: ["pms".to_owned()].into(),
    };
    let playbooks = playbook::load_dir(&root().join("playbooks"), &refs).expect("playbooks load");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("playbooks/tests"))
        .expect("tests dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let tests: TestFile =
                serde_saphyr::from_str(&std::fs::read_to_string(&file).expect("read"))
                    .expect("parse");
            let case = &tests.cases[0];
            let pb = playbook::find(&playbooks, &case.labels).expect("a playbook matches");
            let report = case_report(pb, case, &settings_probes);
            let approvals: Vec<ApprovalView> = approval_requests(&report, 0)
                .into_iter()
                .enumerate()
                .map(|(n, a)| ApprovalView {
                    id: i64::try_from(n + 1).expect("small"),
                    seq: a.seq,
                    key: a.key,
                    action_id: a.action_id,
                    title: a.title,
                    risk: a.risk,
                    roles: a.roles,
                    quorum: a.quorum,
                    digest: a.digest,
                    state: remedy::domain::ApprovalState::Pending,
                    expires_at: 0,
                    decisions: Vec::new(),
                })
                .collect();
            let id = i64::try_from(i + 1).expect("small");
            let chat = ChatReport::build(&incident(id, &case.labels), &report, &approvals, &[], "")
                .with_escalation(Some(escalation()));
            (tests.playbook.clone(), chat)
        })
        .collect()
}

/// The escalation part every golden report shows: responder, next timer,
/// and the Acknowledge / Snooze / Silence controls.
fn escalation() -> remedy::chat::report::ReportEscalation {
    remedy::chat::report::ReportEscalation {
        responder: "On-Call Engineer".into(),
        mentions: vec!["<@U0ONCALL>".into(), "<!subteam^S0ONCALL>".into()],
        ping_users: vec!["1001".into()],
        ping_roles: vec!["2001".into()],
        acked_by: None,
        escalated_to: None,
        // 2026-11-27 03:15 UTC
        next: Some(("escalates to Team Lead".into(), 1_795_749_300_000)),
        snoozed_until: None,
        silenced: None,
        snooze: vec![900, 3600],
        silence: vec![3600, 14_400],
    }
}

fn check_slack_limits(name: &str, body: &Value) {
    let blocks = body["blocks"].as_array().expect("blocks");
    assert!(
        blocks.len() <= slack::MAX_BLOCKS,
        "{name}: {} blocks",
        blocks.len()
    );
    for b in blocks {
        if let Some(t) = b["text"]["text"].as_str() {
            assert!(
                t.chars().count() <= slack::MAX_SECTION,
                "{name}: section too long"
            );
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            if e["type"] == "button" {
                assert!(e["action_id"].as_str().expect("action_id").len() <= slack::MAX_ACTION_ID);
                assert!(
                    e["value"].as_str().expect("value").chars().count() <= slack::MAX_BUTTON_VALUE
                );
                assert!(
                    e["text"]["text"].as_str().expect("text").chars().count()
                        <= slack::MAX_BUTTON_TEXT
                );
            }
        }
    }
}

fn check_discord_limits(name: &str, body: &Value) {
    let content = body["content"].as_str().expect("content");
    assert!(
        content.chars().count() <= discord::MAX_CONTENT,
        "{name}: content too long"
    );
    let rows = body["components"].as_array().expect("rows");
    assert!(
        rows.len() <= discord::MAX_ROWS,
        "{name}: {} rows",
        rows.len()
    );
    for row in rows {
        let buttons = row["components"].as_array().expect("buttons");
        assert!(buttons.len() <= discord::MAX_BUTTONS_PER_ROW);
        for b in buttons {
            assert!(b["custom_id"].as_str().expect("custom_id").len() <= discord::MAX_CUSTOM_ID);
            assert!(b["label"].as_str().expect("label").chars().count() <= discord::MAX_LABEL);
        }
    }
    // Nothing is parsed into a ping; only the initial responder's users
    // and roles (from the settings) may be notified by a first post.
    let allowed = &body["allowed_mentions"];
    assert!(
        allowed["parse"] == json!([]) || allowed.get("parse").is_none(),
        "{name}: pings {allowed}"
    );
    for (key, ids) in [("users", json!(["1001"])), ("roles", json!(["2001"]))] {
        assert!(
            allowed.get(key).is_none() || allowed[key] == ids,
            "{name}: {key} {allowed}"
        );
    }
}

fn compare_golden(file: &str, actual: &Value) {
    let path = root().join("tests/golden").join(file);
    let pretty = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("REMEDY_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &pretty).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with REMEDY_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(pretty, expected, "{file} differs from the golden file");
}

#[test]
fn each_runbook_report_renders_as_its_golden_slack_and_discord_message() {
    let reports = reports();
    assert_eq!(reports.len(), 6, "six runbook playbooks");
    for (name, report) in &reports {
        assert!(!report.findings.is_empty(), "{name}: no findings");
        let slack_body = slack::render(report);
        check_slack_limits(name, &slack_body);
        compare_golden(&format!("slack/{name}.json"), &slack_body);
        let discord_body = discord::create_body(report);
        check_discord_limits(name, &discord_body);
        compare_golden(&format!("discord/{name}.json"), &discord_body);
        // Every action the playbook offered has its buttons on both.
        let slack_text = slack_body.to_string();
        for a in &report.actions {
            assert!(
                slack_text.contains(&format!("Approve {}", a.key)),
                "{name}: {}",
                a.key
            );
        }
    }
}

#[test]
fn a_huge_report_is_cut_within_every_limit_and_says_what_was_cut() {
    let (_, base) = reports().into_iter().next().expect("a report");
    let mut report = base.clone();
    let finding = report.findings[0].clone();
    report.findings = (0..80)
        .map(|i| {
            let mut f = finding.clone();
            f.text = format!("finding {i}: {}", "x".repeat(400));
            f.evidence = (0..EVIDENCE_ROWS)
                .map(|r| format!("row {r} {}", "y".repeat(900)))
                .collect();
            f.more_rows = 200;
            f
        })
        .collect();
    let action = base.actions.first().cloned().expect("an action");
    report.actions = (0..40)
        .map(|i| {
            let mut a = action.clone();
            a.approval_id = i + 1;
            a.key = format!("{}#{}", a.key, i + 1);
            a.title = format!("{} {}", a.title, "z".repeat(300));
            a
        })
        .collect();
    let slack_body = slack::render(&report);
    check_slack_limits("huge", &slack_body);
    let text = slack_body.to_string();
    assert!(text.contains("more rows"), "cut evidence is announced");
    assert!(text.contains("more actions"), "cut actions are announced");
    assert!(
        text.contains("remedy incidents show"),
        "the full report is pointed to"
    );
    let discord_body = discord::create_body(&report);
    check_discord_limits("huge", &discord_body);
    let content = discord_body["content"].as_str().expect("content");
    assert!(content.contains("more"), "{content}");
    assert_eq!(
        discord_body["components"].as_array().expect("rows").len(),
        discord::MAX_ROWS
    );
}
