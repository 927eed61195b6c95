//! Golden renderings of the six runbook playbooks' reports on Slack and
//! Discord (from their `remedy test` cases), each checked against the
//! platforms' limits. `REMEDY_UPDATE_GOLDEN=1 cargo nextest run --test
//! golden` rewrites the files under tests/golden/ after a deliberate change.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use remedy::chat::report::{ChatReport, EVIDENCE_ROWS};
use remedy::chat::{discord, mattermost, slack};
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
        redis: ["cache".to_owned()].into(),
        compose: [("app".to_owned(), "/usr/bin/docker".into())].into(),
        env_files: [(
            "app".to_owned(),
            vec![
                "POSTGRES_POOL_SIZE".to_owned(),
                "POSTGRES_MAX_OVERFLOW".to_owned(),
            ],
        )]
        .into(),
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
            let mut report = case_report(pb, case, &settings_probes);
            // What the diagnosis reads from the project's .env: the exact
            // lines an env_file action changes, shown with its buttons.
            for action in &mut report.actions {
                if action.kind == remedy::playbook::model::ActionKind::EnvFile {
                    action.changes = remedy::domain::env_file::plan(
                        "POSTGRES_POOL_SIZE=10  # default\nPOSTGRES_MAX_OVERFLOW=20\n",
                        &action.set,
                    )
                    .expect("plain values");
                }
            }
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

/// The hostile-label corpus: each value tries to break out of where the
/// renderer puts it (code span, bold, quote, table cell, terminal).
const HOSTILE: &[&str] = &[
    "a` *approved by team-lead (2 of 2)* `",
    "```\n*_~|> fenced",
    "<!here> <!channel> @everyone <!subteam^S1>",
    "<@U0ATTACKER> <@&999> <#C1>",
    "[click](http://evil.example/x) ![t](http://evil.example/t.png)",
    "line one\n# heading\n> quote\n| a | b |",
    "\u{202e}gnp.exe",
    "\u{1b}[31mred\u{1b}[0m \u{1b}]8;;http://x\u{7}link\u{1b}]8;;\u{7}",
    "<img src=x onerror=alert(1)> &amp;",
];

fn hostile_report() -> ChatReport {
    let (_, mut report) = reports().into_iter().next().expect("a report");
    report.labels = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("x{i}"), (*v).to_owned()))
        .collect();
    report.labels.push(("k`ey*".into(), "v".into()));
    report.summary = HOSTILE.join(" ");
    report.findings.truncate(1);
    report.findings[0].text = HOSTILE.join(" / ");
    report.findings[0].evidence = HOSTILE.iter().map(|v| (*v).to_owned()).collect();
    report.step_errors = vec![(HOSTILE[0].to_owned(), HOSTILE[7].to_owned())];
    report
}

/// Text inside Slack inline code spans (single backticks, outside ```
/// fences) never holds a backtick: pairs are split on every backtick.
fn assert_code_spans_closed(name: &str, text: &str) {
    let text = text.replace("\\`", "");
    for (n, block) in text.split("```").enumerate() {
        if n % 2 == 1 {
            continue; // inside a fence: checked by the fence rule below
        }
        for line in block.lines() {
            assert_eq!(
                line.matches('`').count() % 2,
                0,
                "{name}: unbalanced code span in {line:?}"
            );
        }
    }
    for fence in text.split("```").skip(1).step_by(2) {
        assert!(!fence.contains("``"), "{name}: backtick run in a fence");
    }
}

/// `name` "slack" skips the Markdown link checks: mrkdwn has no `[t](url)`
/// syntax, and `verbatim` keeps bare URLs unlinked.
fn assert_inert(name: &str, text: &str) {
    assert!(!text.contains('\u{1b}'), "{name}: raw ESC");
    assert!(!text.contains('\u{7}'), "{name}: raw BEL");
    assert!(!text.contains('\u{202e}'), "{name}: RTL override");
    if name == "console" {
        return; // a terminal has no markup or mentions, only the above
    }
    // Code spans show their text literally; elsewhere a backslash-escaped
    // character is literal too.
    let live = outside_code(text)
        .replace("\\<", "")
        .replace("\\[", "")
        .replace("\\]", "")
        .replace("\\!", "");
    for bad in [
        "<!",
        "<@U0ATTACKER",
        "<@&999",
        "<#C1",
        "@everyone",
        "<img",
        "](http",
        "![",
    ] {
        if name == "slack" && (bad == "](http" || bad == "![") {
            continue;
        }
        if name == "export" && bad == "@everyone" {
            continue; // a Markdown file notifies no one
        }
        assert!(!live.contains(bad), "{name}: {bad} survived");
    }
    // Outside code, the fake approval line's `*` may not open bold.
    assert!(
        !outside_code(text).replace("\\*", "").contains("*approved"),
        "{name}: fake bold line"
    );
}

/// The text outside ``` fences and `inline` code spans.
/// A backslash-escaped backtick is literal, not a delimiter.
fn outside_code(text: &str) -> String {
    text.replace("\\`", "")
        .split("```")
        .step_by(2)
        .flat_map(|part| part.split('`').step_by(2))
        .collect::<Vec<_>>()
        .join(" ")
}

fn text_of(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| text_of(v, out)),
        Value::Object(o) => o.values().for_each(|v| text_of(v, out)),
        _ => {}
    }
}

#[test]
fn the_hostile_label_corpus_renders_inertly_on_every_platform_and_the_export() {
    let mut report = hostile_report();
    // The golden escalation carries remedy's own mentions: keep them out
    // of the inertness check, which is about alert-derived text.
    report.escalation = None;

    let slack_body = slack::render(&report);
    check_slack_limits("hostile", &slack_body);
    compare_golden("hostile/slack.json", &slack_body);
    let mut texts = Vec::new();
    text_of(&slack_body, &mut texts);
    for t in &texts {
        assert_inert("slack", t);
        assert_code_spans_closed("slack", t);
    }
    for block in slack_body["blocks"].as_array().expect("blocks") {
        if block["text"]["type"] == "mrkdwn" {
            assert_eq!(block["text"]["verbatim"], true, "{block}");
        }
    }

    let discord_body = discord::create_body(&report);
    check_discord_limits("hostile", &discord_body);
    compare_golden("hostile/discord.json", &discord_body);
    let content = discord_body["content"].as_str().expect("content");
    assert_inert("discord", content);
    assert_code_spans_closed("discord", content);

    let console = remedy::chat::console_text(&report);
    compare_golden("hostile/console.json", &Value::String(console.clone()));
    assert_inert("console", &console);
    assert!(
        !console
            .lines()
            .any(|l| l.starts_with("# heading") || l.starts_with("> quote")),
        "console: alert text started a line"
    );

    let labels: remedy::domain::Labels = report.labels.iter().cloned().collect();
    let mut incident = incident(7, &labels);
    incident.alertname = HOSTILE[4].into();
    let record = remedy::postmortem::Record {
        incident,
        timeline: HOSTILE
            .iter()
            .enumerate()
            .map(|(n, v)| remedy::store::TimelineEntry {
                at: 1_795_749_300_000,
                source: "timeline",
                seq: i64::try_from(n).expect("small"),
                kind: "opened".into(),
                detail: json!({"summary": v}),
            })
            .chain([remedy::store::TimelineEntry {
                at: 1_795_749_300_000,
                source: "audit",
                seq: 99,
                kind: "execution_finished".into(),
                detail: json!({"outcome": "done", "output": HOSTILE.join("\n")}),
            }])
            .collect(),
        approvals: Vec::new(),
        executions: Vec::new(),
        escalation: None,
        pages: Vec::new(),
    };
    let settings = common::test_settings("sqlite::memory:", &[]);
    let matrix =
        remedy::escalation::load_file(&settings.escalation.file, &settings).expect("matrix");
    let md = remedy::postmortem::markdown(&record, &matrix);
    compare_golden("hostile/export.json", &Value::String(md.clone()));
    assert_inert("export", &md);
    for line in md.lines() {
        // Only remedy's own headings and table rows; every table row has
        // exactly its columns.
        if line.starts_with('#') {
            assert!(
                line.starts_with("# Incident #7") || line.starts_with("## "),
                "export: heading from alert text: {line}"
            );
        }
        if line.starts_with('|') {
            let cells = line.matches('|').count() - line.matches("\\|").count();
            assert_eq!(cells, 3, "export: table broken: {line}");
        }
        assert!(
            !line.starts_with('>'),
            "export: quote from alert text: {line}"
        );
    }
    assert_code_spans_closed("export", &md);
}

/// Escalation pings: remedy's own mentions of the role's members are real
/// mentions (Discord's `allowed_mentions` lists exactly them); alert text
/// in the ping forms none.
#[test]
fn pings_mention_the_role_and_nothing_from_the_alert() {
    let text = format!(
        "⏫ Escalation to DBA: {} (incident #7), query ran 5 m 12 s.",
        HOSTILE.join(" ")
    );
    let mentions = vec!["<@U0DBA>".to_owned(), "<!subteam^S0DBA>".to_owned()];
    let slack_body = slack::ping_body("C1", Some("1.2"), &mentions, &text);
    compare_golden("hostile/slack_ping.json", &slack_body);
    let t = slack_body["text"].as_str().expect("text");
    assert!(t.starts_with("<@U0DBA> <!subteam^S0DBA> ⏫"), "{t}");
    let alert_part = t.trim_start_matches("<@U0DBA> <!subteam^S0DBA> ");
    assert_inert("slack", alert_part);

    let members = remedy::config::RoleMembers {
        discord_users: vec!["1001".into()],
        discord_roles: vec!["2001".into()],
        ..Default::default()
    };
    let discord_body = discord::ping_body(Some("555"), Some(&members), &text);
    compare_golden("hostile/discord_ping.json", &discord_body);
    let c = discord_body["content"].as_str().expect("content");
    assert!(c.starts_with("<@1001> <@&2001> ⏫"), "{c}");
    assert_inert("discord", c.trim_start_matches("<@1001> <@&2001> "));
    assert_eq!(
        discord_body["allowed_mentions"],
        json!({"users": ["1001"], "roles": ["2001"]})
    );
}

/// An executed action's outcome in the thread: the people who approved it
/// (verified clickers, recorded as `<@ID>`) are real mentions, and on
/// Discord `allowed_mentions` lists exactly them; a person named in the
/// settings stays a name; the action's output (which may repeat alert or
/// database text) forms no mention or markup.
#[test]
fn outcome_replies_mention_the_clickers_and_nothing_from_the_output() {
    let output = HOSTILE.join(" ");
    let slack_reply = remedy::engine::notify::outcome_reply(
        "kill_stale#1",
        "succeeded",
        Some("effective"),
        &["<@U0APPROVER>".to_owned(), "olga".to_owned()],
        &output,
    );
    let slack_body = slack::reply_body("C1", "1.2", &slack_reply);
    compare_golden("hostile/slack_outcome.json", &slack_body);
    let t = slack_body["text"].as_str().expect("text");
    let head = "kill_stale#1: succeeded, effective — approved by <@U0APPROVER>, olga — ";
    assert!(t.starts_with(head), "{t}");
    assert_inert("slack", t.trim_start_matches(head));

    let discord_reply = remedy::engine::notify::outcome_reply(
        "kill_stale#1",
        "succeeded",
        None,
        &["<@1001>".to_owned(), "<@1002>".to_owned()],
        &output,
    );
    let discord_body = discord::reply_body("555", &discord_reply);
    compare_golden("hostile/discord_outcome.json", &discord_body);
    let c = discord_body["content"].as_str().expect("content");
    let head = "kill\\_stale\\#1: succeeded — approved by <@1001>, <@1002> — ";
    assert!(c.starts_with(head), "{c}");
    assert_inert("discord", c.trim_start_matches(head));
    assert_eq!(
        discord_body["allowed_mentions"],
        json!({"parse": [], "users": ["1001", "1002"]})
    );

    // Something that only looks like a clicker is text.
    let forged = remedy::engine::notify::outcome_reply(
        "k",
        "failed",
        None,
        &["<!channel>".to_owned(), "<@U1> <!here>".to_owned()],
        "",
    );
    let t = slack::reply_body("C1", "1.2", &forged)["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(!t.contains("<!") && !t.contains("<@U1>"), "{t}");
    assert_eq!(
        discord::reply_body("5", &forged)["allowed_mentions"]["users"],
        json!([])
    );
}

/// Evidence measured again while the incident fires says when, on every
/// platform, within the platforms' limits.
#[test]
fn re_measured_evidence_says_as_of_when() {
    let (name, mut report) = reports().into_iter().next().expect("a report");
    // 2026-11-27 03:15:07 UTC
    report.findings[0].as_of = Some(1_795_749_307_000);
    let line = "measured again: as of 03:15:07 UTC";
    let slack_body = slack::render(&report);
    check_slack_limits(&name, &slack_body);
    assert!(slack_body.to_string().contains(line), "{slack_body}");
    let discord_body = discord::create_body(&report);
    check_discord_limits(&name, &discord_body);
    assert!(discord_body.to_string().contains(line), "{discord_body}");
    assert!(remedy::chat::console_text(&report).contains(line));
}

/// The Silence confirmations show the exact matchers, and a hostile
/// label value in them stays inert: Slack's confirm dialog (plain_text,
/// entities) and Discord's ephemeral confirmation (inline code).
#[test]
fn silence_confirmations_show_hostile_matchers_inertly() {
    let mut report = hostile_report();
    report.silence_matchers = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, v)| {
            remedy::approvals::SilenceMatcher {
                name: format!("x{i}"),
                value: (*v).to_owned(),
            }
            .text()
        })
        .collect();
    let body = slack::render(&report);
    check_slack_limits("hostile confirm", &body);
    let confirms: Vec<Value> = body["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter(|e| {
            e["action_id"]
                .as_str()
                .is_some_and(|a| a.starts_with("silence:"))
        })
        .map(|e| e["confirm"].clone())
        .collect();
    assert_eq!(confirms.len(), 2);
    compare_golden("hostile/slack_silence_confirm.json", &confirms[0]);
    for confirm in &confirms {
        let text = confirm["text"]["text"].as_str().expect("text");
        assert!(text.chars().count() <= 300, "{text}");
        assert!(
            text.contains(" more (every label in the message)"),
            "{text}"
        );
        assert_inert("slack", text);
    }
    let discord = discord::silence_confirmation(7, 3600, &report.silence_matchers);
    compare_golden("hostile/discord_silence_confirmation.json", &discord);
    let content = discord["data"]["content"].as_str().expect("content");
    assert!(content.chars().count() <= discord::MAX_CONTENT);
    assert_inert("discord", content);
    assert_code_spans_closed("discord", content);
    assert_eq!(discord["data"]["flags"], 64);
}

// ---------------------------------------------------------------------------
// Mattermost

const MM_BUTTONS: mattermost::Buttons<'static> = mattermost::Buttons {
    url: "https://remedy.example/v1/interactions/mattermost",
    secret: "golden-context-secret-of-32-characters-or-more",
};

/// The server's limits on a post and remedy's own on its attachments
/// (`remedy::chat::mattermost`), and the rules for buttons.
fn check_mattermost_limits(name: &str, body: &Value) {
    let message = body["message"].as_str().expect("message");
    assert!(
        message.chars().count() <= mattermost::MAX_MESSAGE,
        "{name}: message of {} characters",
        message.chars().count()
    );
    assert!(body["props"].to_string().chars().count() <= mattermost::MAX_PROPS);
    let attachments = body["props"]["attachments"]
        .as_array()
        .expect("attachments");
    assert!(attachments.len() <= mattermost::MAX_ATTACHMENTS, "{name}");
    let mut ids = std::collections::HashSet::new();
    for a in attachments {
        for field in ["text", "fallback", "title"] {
            assert!(
                a[field].as_str().unwrap_or_default().chars().count()
                    <= mattermost::MAX_ATTACHMENT_TEXT,
                "{name}: {field}"
            );
        }
        assert!(
            !a["fallback"].as_str().unwrap_or_default().is_empty(),
            "{name}: fallback"
        );
        let fields = a["fields"].as_array().cloned().unwrap_or_default();
        assert!(fields.len() <= mattermost::MAX_FIELDS, "{name}: fields");
        for f in &fields {
            assert!(
                f["value"].as_str().unwrap_or_default().chars().count()
                    <= mattermost::MAX_FIELD_VALUE,
                "{name}: field value"
            );
        }
        for b in a["actions"].as_array().into_iter().flatten() {
            let id = b["id"].as_str().expect("id");
            assert!(
                !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{name}: action id {id:?}"
            );
            assert!(ids.insert(id.to_owned()), "{name}: action id {id} twice");
            assert_eq!(b["type"], "button");
            assert!(
                b["name"].as_str().expect("name").chars().count() <= mattermost::MAX_BUTTON_NAME
            );
            assert_eq!(b["integration"]["url"], MM_BUTTONS.url);
            let context = Some(&b["integration"]["context"]);
            assert!(
                mattermost::verify(MM_BUTTONS.secret, context).is_ok(),
                "{name}: {id} is not signed"
            );
        }
    }
}

/// Everything in a Mattermost body a reader sees (button contexts aside).
fn mattermost_texts(body: &Value) -> Vec<String> {
    let mut shown = body.clone();
    for a in shown["props"]["attachments"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        for b in a["actions"].as_array_mut().into_iter().flatten() {
            b["integration"] = Value::Null;
        }
    }
    let mut texts = Vec::new();
    text_of(&shown, &mut texts);
    texts
}

/// On Mattermost any `@name` notifies that user: outside remedy's own
/// mentions, every `@` in alert text is followed by a zero-width space.
fn assert_no_mattermost_mention(name: &str, text: &str) {
    for (i, _) in text.match_indices('@') {
        assert!(
            text[i + 1..].starts_with('\u{200B}'),
            "{name}: a live mention in {text:?}"
        );
    }
}

#[test]
fn each_runbook_report_renders_as_its_golden_mattermost_post() {
    for (name, mut report) in reports() {
        if let Some(e) = report.escalation.as_mut() {
            e.mentions = vec!["<@mmoncall00000000000000000>".into()];
        }
        let body = mattermost::render(&report, MM_BUTTONS);
        check_mattermost_limits(&name, &body);
        compare_golden(&format!("mattermost/{name}.json"), &body);
        let names: Vec<String> = body["props"]["attachments"]
            .as_array()
            .expect("attachments")
            .iter()
            .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b["name"].as_str().map(str::to_owned))
            .collect();
        for a in &report.actions {
            assert!(
                names.contains(&format!("Approve {}", a.key)),
                "{name}: {}",
                a.key
            );
        }
        assert!(
            names.contains(&"Acknowledge".to_owned()),
            "{name}: {names:?}"
        );
    }
}

#[test]
fn the_hostile_corpus_renders_inertly_on_mattermost() {
    let mut report = hostile_report();
    report.escalation = None;
    report.silence_matchers = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, v)| {
            remedy::approvals::SilenceMatcher {
                name: format!("x{i}"),
                value: (*v).to_owned(),
            }
            .text()
        })
        .collect();
    let body = mattermost::render(&report, MM_BUTTONS);
    check_mattermost_limits("hostile", &body);
    compare_golden("hostile/mattermost.json", &body);
    for t in mattermost_texts(&body) {
        assert_inert("mattermost", &t);
        assert_code_spans_closed("mattermost", &t);
        assert_no_mattermost_mention("mattermost", &t);
    }
    // Outside ``` fences (where lines are literal), alert text starts no
    // heading or quote.
    let message = body["message"].as_str().expect("message");
    let mut fenced = false;
    for line in message.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        assert!(
            fenced || !(line.starts_with("# heading") || line.starts_with("> quote")),
            "alert text started a heading or a quote: {line}"
        );
    }
    // The Silence dialog shows every matcher, inertly.
    let text = mattermost::silence_text(3600, &report.silence_matchers);
    assert_inert("mattermost", &text);
    assert_code_spans_closed("mattermost", &text);
    assert_no_mattermost_mention("mattermost", &text);
    assert!(text.contains("x8="), "{text}");
    // Pings and outcome replies: remedy's own `<@ID>` only.
    let members = remedy::config::RoleMembers {
        mattermost_users: vec!["mmdba0000000000000000000000".into()],
        ..Default::default()
    };
    let ping = mattermost::ping_body("C1", Some("P1"), Some(&members), &HOSTILE.join(" "));
    let m = ping["message"].as_str().expect("message");
    let alert_part = m
        .strip_prefix("<@mmdba0000000000000000000000> ")
        .unwrap_or_else(|| panic!("{m}"));
    assert_inert("mattermost", alert_part);
    assert_no_mattermost_mention("mattermost", alert_part);
    assert_eq!(ping["root_id"], "P1");
    let outcome = remedy::engine::notify::outcome_reply(
        "kill_stale#1",
        "succeeded",
        None,
        &["<@mmclicker000000000000000>".to_owned(), "olga".to_owned()],
        &HOSTILE.join(" "),
    );
    let reply = mattermost::reply_body("C1", "P1", &outcome);
    let m = reply["message"].as_str().expect("message");
    let head = "kill\\_stale\\#1: succeeded — approved by <@mmclicker000000000000000>, olga — ";
    assert!(m.starts_with(head), "{m}");
    assert_inert("mattermost", m.trim_start_matches(head));
    assert_no_mattermost_mention("mattermost", m.trim_start_matches(head));
}

#[test]
fn a_huge_report_fits_a_mattermost_post_and_says_what_was_cut() {
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
            a.title = format!("{} {}", a.title, "z".repeat(5000));
            a.roles = vec!["r".repeat(900)];
            a
        })
        .collect();
    report.escalation = Some(escalation());
    let body = mattermost::render(&report, MM_BUTTONS);
    check_mattermost_limits("huge", &body);
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("more sections"),
        "cut findings are announced"
    );
    assert!(
        message.contains("remedy incidents show"),
        "the full report is pointed to"
    );
    let attachments = body["props"]["attachments"]
        .as_array()
        .expect("attachments");
    assert_eq!(attachments.len(), mattermost::MAX_ATTACHMENTS);
    let last = attachments.last().expect("last")["text"]
        .as_str()
        .expect("text");
    assert!(last.contains("22 more actions"), "{last}");
}
