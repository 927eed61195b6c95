//! Mattermost on the HTTP boundary: reports posted to a fake Mattermost
//! server that checks the documented API and limits, clicks built exactly
//! as the server builds them from the stored post (the button's context,
//! verbatim), forged contexts, authorization (listed users, roles read
//! from Mattermost), confirmation dialogs, rate limits.

mod common;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_mattermost::{CONTEXT_SECRET, FakeMattermost, MATTERMOST_TOKEN, Scripted};
use common::{Backend, Reply, TestApp, send};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::{Value, json};

on_both_stores!(
    a_report_shows_findings_evidence_and_actions_and_a_signed_click_decides,
    a_forged_context_is_refused_and_nothing_is_recorded,
);

/// Mattermost user ids: 26 lowercase letters and digits.
const ALICE: &str = "alice000000000000000000000";
const CAROL: &str = "carol000000000000000000000";
const MALLORY: &str = "mallory0000000000000000000";
const LEAD: &str = "lead0000000000000000000000";

const PLAYBOOK: &str = r#"
name: ChatTest
match: ['alertname="ChatTest"']
findings:
  - severity: warning
    text: "Note from the alert: {{ labels.note }}"
actions:
  - id: restart_service
    title: Restart {{ labels.service }}
    kind: command
    risk: safe
    approvers: [oncall]
    quorum: 1
    program: /usr/bin/docker
    args: [compose, restart, "{{ labels.service }}"]
  - id: terminate_all
    title: Terminate every session of {{ labels.service }}
    kind: command
    risk: destructive
    approvers: [oncall, lead]
    quorum: 2
    program: /usr/bin/docker
    args: [compose, kill, "{{ labels.service }}"]
suggestions:
  - title: Raise the pool size
    command: POSTGRES_POOL_SIZE=20
"#;

const APPROVERS: &str = r#"
[people.alice]
mattermost = "alice000000000000000000000"
api_token = "alice-token"

[approvers.oncall]
people = ["alice"]
# Anyone Mattermost says holds this role (read from the API).
mattermost_roles = ["custom_oncall"]

[approvers.lead]
mattermost_users = ["lead0000000000000000000000"]

[approvers.on-call-engineer]
people = ["alice"]

[approvers.team-lead]
mattermost_users = ["lead0000000000000000000000"]
"#;

fn playbooks() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-mm-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("chat-test.yaml"), PLAYBOOK).expect("playbook");
    dir
}

const INTERACTIONS_URL: &str = "http://127.0.0.1:9/v1/interactions/mattermost";

async fn mattermost_app(backend: Backend) -> (TestApp, FakeMattermost) {
    mattermost_app_with(
        backend,
        &playbooks(),
        &[("REMEDY__EXECUTOR__DRY_RUN", "true")],
    )
    .await
}

/// A Mattermost app with the playbooks in `dir` and `extra` settings.
async fn mattermost_app_with(
    backend: Backend,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (TestApp, FakeMattermost) {
    let fake = FakeMattermost::start().await;
    fake.add_user(ALICE, "alice", "system_user");
    fake.add_user(CAROL, "carol", "system_user custom_oncall");
    fake.add_user(MALLORY, "mallory", "system_user");
    fake.add_user(LEAD, "lead", "system_user");
    let mut env = vec![
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__CHAT__PLATFORM", "mattermost"),
        (
            "REMEDY__CHAT__DEFAULT_CHANNEL",
            "incidentschannel0000000000",
        ),
        ("REMEDY__CHAT__MATTERMOST__API_URL", &fake.api_url),
        ("REMEDY__CHAT__MATTERMOST__BOT_TOKEN", MATTERMOST_TOKEN),
        ("REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET", CONTEXT_SECRET),
        (
            "REMEDY__CHAT__MATTERMOST__INTERACTIONS_URL",
            INTERACTIONS_URL,
        ),
        ("REMEDY__CHAT__MATTERMOST__REQUEST_RATE", "100000/1s"),
    ];
    env.extend_from_slice(extra);
    let app = common::spawn_app_with_toml(backend, APPROVERS, &env).await;
    (app, fake)
}

fn alert(fingerprint: &str, note: &str) -> String {
    json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "ChatTest", "severity": "critical", "service": "agente-api", "note": note},
            "annotations": {"summary": format!("pool trouble: {note}")},
            "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint
        }],
        "groupLabels": {"alertname": "ChatTest"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": "{}:{alertname=\"ChatTest\"}", "truncatedAlerts": 0
    })
    .to_string()
}

fn worker() -> WorkerSettings {
    WorkerSettings::new("mattermost-test-worker".into())
}

async fn drain(app: &TestApp, at: i64) {
    for _ in 0..10 {
        if engine::step(&app.app.engine, &worker(), at)
            .await
            .expect("step")
            == 0
        {
            return;
        }
    }
    panic!("work kept coming");
}

/// Opens a ChatTest incident; gives its id and its post's id.
async fn open(app: &TestApp, fake: &FakeMattermost, note: &str) -> (i64, String) {
    let reply = app.post_webhook(alert("c0ffee0000000001", note)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    drain(app, now_millis()).await;
    let id = app.incidents("").await[0]["id"].as_i64().expect("id");
    (id, fake.report_id().expect("a report was posted"))
}

async fn approval(app: &TestApp, id: i64, key: &str) -> Value {
    app.api(&format!("/v1/incidents/{id}")).await["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .find(|a| a["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("no approval {key}"))
}

/// What the Mattermost server sends for a click, delivered to remedy.
async fn deliver(app: &TestApp, body: &Value) -> Reply {
    let request = Request::post("/v1/interactions/mattermost")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    send(&app.router, request).await
}

/// `user` clicks the button labelled `name` on the post.
async fn click(app: &TestApp, fake: &FakeMattermost, post: &str, name: &str, user: &str) -> Reply {
    let (action, url) = fake
        .button(post, name)
        .unwrap_or_else(|| panic!("no button {name:?} on {:?}", fake.post(post)));
    assert_eq!(url, INTERACTIONS_URL);
    deliver(app, &fake.click_body(post, &action, user)).await
}

fn button_names(post: &Value) -> Vec<String> {
    post["props"]["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect()
}

async fn decisions(app: &TestApp) -> i64 {
    common::scalar(&app.store, "select count(*) from decisions").await
}

async fn a_report_shows_findings_evidence_and_actions_and_a_signed_click_decides(backend: Backend) {
    let (app, fake) = mattermost_app(backend).await;
    let (id, post) = open(&app, &fake, "@everyone <!channel> @mallory **look**").await;
    let reports = fake.reports();
    assert_eq!(reports.len(), 1, "one post per incident");
    let message = reports[0]["message"].as_str().expect("message");
    assert!(
        message.contains("\\[FIRING\\] ChatTest (critical)"),
        "{message}"
    );
    assert!(message.contains("Note from the alert"), "{message}");
    assert!(
        message.contains("POSTGRES_POOL_SIZE=20"),
        "suggestion shown: {message}"
    );
    // Nothing from the alert mentions anyone or formats anything (in
    // code spans formatting is inert, mentions are still broken).
    for forbidden in ["@everyone", "@mallory", "<!channel>"] {
        assert!(!message.contains(forbidden), "{forbidden} in {message}");
    }
    // The responder is mentioned for real: her id, read from Mattermost
    // as her username.
    assert!(
        message.contains("Responder: @alice (On-Call Engineer)"),
        "{message}"
    );
    assert!(message.contains("\\*\\*look\\*\\*"), "{message}");
    // The controls, then a pair of buttons per action, all signed.
    let names = button_names(&reports[0]);
    assert_eq!(
        names,
        [
            "Acknowledge",
            "Snooze 15m",
            "Snooze 1h",
            "Silence 1h",
            "Silence 4h",
            "Approve restart_service",
            "Reject restart_service",
            "Approve terminate_all",
            "Reject terminate_all"
        ],
        "{names:?}"
    );
    let stored = fake.post(&post).expect("stored");
    let restart = approval(&app, id, "restart_service").await;
    let (action, _) = fake
        .button(&post, "Approve restart_service")
        .expect("button");
    assert_eq!(action, format!("ap{}", restart["id"]));
    let context = &fake.click_body(&post, &action, ALICE)["context"];
    assert_eq!(context["approval"], restart["id"]);
    assert!(
        context["mac"].as_str().is_some_and(|m| m.len() == 64),
        "{context}"
    );
    assert_eq!(stored["channel_id"], "incidentschannel0000000000");

    // Alice (a person, through her Mattermost identity) approves.
    let reply = click(&app, &fake, &post, "Approve restart_service", ALICE).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json, json!({}));
    let restart = approval(&app, id, "restart_service").await;
    assert_eq!(restart["state"], "approved");
    assert_eq!(restart["decisions"][0]["approver"], "person:alice");
    let channels: Vec<String> = common::column(&app.store, "select channel from decisions").await;
    assert_eq!(channels, ["mattermost"]);

    drain(&app, now_millis()).await;
    let updated = fake.post(&post).expect("stored");
    assert!(!fake.updates().is_empty(), "the post is updated");
    assert!(fake.updates().iter().all(|u| u["id"] == post.as_str()));
    let message = updated["message"].as_str().expect("message");
    let statuses: Vec<String> = updated["props"]["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .flat_map(|a| a["fields"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["title"] == "Status")
        .filter_map(|f| f["value"].as_str().map(str::to_owned))
        .collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.contains("approved by alice (1 of 1)")),
        "{statuses:?} / {message}"
    );
    let names = button_names(&updated);
    assert!(
        !names.contains(&"Approve restart_service".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"Approve terminate_all".to_owned()),
        "{names:?}"
    );
    // The (dry-run) outcome, once, in the report's thread.
    let replies = fake.replies();
    let outcomes: Vec<&Value> = replies
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("restart\\_service"))
        })
        .collect();
    assert_eq!(outcomes.len(), 1, "{replies:?}");
    assert_eq!(outcomes[0]["root_id"], post.as_str());
}

async fn a_forged_context_is_refused_and_nothing_is_recorded(backend: Backend) {
    let (app, fake) = mattermost_app(backend).await;
    let (id, post) = open(&app, &fake, "x").await;
    let (action, _) = fake
        .button(&post, "Approve restart_service")
        .expect("button");
    let genuine = fake.click_body(&post, &action, ALICE);
    let other = approval(&app, id, "terminate_all").await;
    let forged = |edit: &dyn Fn(&mut Value)| {
        let mut body = genuine.clone();
        edit(&mut body["context"]);
        body
    };
    let cases = [
        // Another action's approval id under this button's signature.
        (
            "approval id",
            forged(&|c| c["approval"] = other["id"].clone()),
        ),
        (
            "digest",
            forged(&|c| c["digest"] = "0000000000000000".into()),
        ),
        ("kind", forged(&|c| c["kind"] = "reject".into())),
        (
            "no mac",
            forged(&|c| {
                c.as_object_mut().expect("object").remove("mac");
            }),
        ),
        ("wrong mac", forged(&|c| c["mac"] = "ab".repeat(32).into())),
        ("no context", {
            let mut body = genuine.clone();
            body.as_object_mut().expect("object").remove("context");
            body
        }),
        // Signed with a key that is not remedy's.
        ("other key", {
            let mut body = genuine.clone();
            body["context"] = remedy::chat::mattermost::context(
                "somebody-elses-secret-of-32-characters-or-more",
                &remedy::chat::mattermost::Intent::Decide {
                    approve: true,
                    approval: other["id"].as_i64().expect("id"),
                    digest: other["digest"].as_str().expect("digest")[..16].to_owned(),
                },
                false,
            );
            body
        }),
        // A dialog submission whose state was not signed by remedy.
        (
            "forged dialog state",
            json!({
                "type": "dialog_submission", "callback_id": "confirm", "user_id": ALICE,
                "state": forged(&|c| c["approval"] = other["id"].clone())["context"].to_string(),
                "submission": {}, "cancelled": false,
            }),
        ),
    ];
    for (name, body) in cases {
        let reply = deliver(&app, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            reply.json
        );
    }
    let bad = deliver(&app, &json!({"context": genuine["context"]})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json.to_string().contains("user_id"), "{}", bad.json);
    assert_eq!(decisions(&app).await, 0, "nothing recorded");
    for key in ["restart_service", "terminate_all"] {
        assert_eq!(approval(&app, id, key).await["state"], "pending", "{key}");
    }
    // The genuine click, delivered twice, is one decision.
    for _ in 0..2 {
        assert_eq!(deliver(&app, &genuine).await.status, StatusCode::OK);
    }
    assert_eq!(decisions(&app).await, 1);
}

#[tokio::test]
async fn an_unauthorized_user_is_refused_and_a_role_read_from_mattermost_admits() {
    let (app, fake) = mattermost_app(Backend::Sqlite).await;
    let (id, post) = open(&app, &fake, "x").await;
    let lookups = fake.user_lookups();
    let refused = click(&app, &fake, &post, "Approve restart_service", MALLORY).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert!(
        refused.json["ephemeral_text"]
            .as_str()
            .is_some_and(|t| t.contains("not among the approvers")),
        "{}",
        refused.json
    );
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "pending"
    );
    assert!(fake.user_lookups() > lookups, "mallory's roles were read");
    // A user unknown to Mattermost is refused too (the lookup fails).
    let ghost = click(
        &app,
        &fake,
        &post,
        "Approve restart_service",
        "ghost000000000000000000000",
    )
    .await;
    assert!(ghost.json["ephemeral_text"].is_string(), "{}", ghost.json);
    assert_eq!(decisions(&app).await, 0);

    // Carol holds `custom_oncall` in Mattermost: the role admits her.
    let admitted = click(&app, &fake, &post, "Approve restart_service", CAROL).await;
    assert_eq!(admitted.json, json!({}));
    let restart = approval(&app, id, "restart_service").await;
    assert_eq!(restart["state"], "approved");
    assert_eq!(
        restart["decisions"][0]["approver"],
        format!("mattermost:{CAROL}")
    );
    drain(&app, now_millis()).await;
    // Outside [people], she is mentioned by her Mattermost username.
    let updated = fake.post(&post).expect("post");
    assert!(
        updated.to_string().contains("approved by @carol"),
        "{updated}"
    );
}

#[tokio::test]
async fn silence_and_destructive_approvals_are_confirmed_in_a_dialog_first() {
    let (app, fake) = mattermost_app(Backend::Sqlite).await;
    let (id, post) = open(&app, &fake, "x").await;
    let silence_keys = || async {
        app.api(&format!("/v1/incidents/{id}")).await["approvals"]
            .as_array()
            .expect("approvals")
            .iter()
            .filter(|a| a["key"].as_str().is_some_and(|k| k.starts_with("silence")))
            .count()
    };
    let reply = click(&app, &fake, &post, "Silence 1h", ALICE).await;
    assert_eq!(reply.json, json!({}), "a dialog, not an answer");
    let dialogs = fake.dialogs();
    assert_eq!(dialogs.len(), 1);
    let dialog = &dialogs[0];
    assert_eq!(dialog["url"], INTERACTIONS_URL);
    assert_eq!(dialog["dialog"]["title"], "Silence for 1h?");
    let text = dialog["dialog"]["introduction_text"]
        .as_str()
        .expect("text");
    assert!(text.contains("alertname=\"ChatTest\""), "{text}");
    assert!(text.contains("service=\"agente-api\""), "{text}");
    assert_eq!(
        silence_keys().await,
        0,
        "nothing silenced before the confirmation"
    );
    let submitted = deliver(&app, &fake.submit_last_dialog(ALICE)).await;
    assert_eq!(submitted.json, json!({}), "{}", submitted.json);
    assert_eq!(silence_keys().await, 1, "the silence is requested");
    // A cancelled dialog does nothing.
    let mut cancelled = fake.submit_last_dialog(ALICE);
    cancelled["cancelled"] = true.into();
    cancelled["state"] = "".into();
    assert_eq!(deliver(&app, &cancelled).await.status, StatusCode::OK);

    // Someone who may not approve is told so at once, with no dialog.
    let refused = click(&app, &fake, &post, "Approve terminate_all", MALLORY).await;
    assert!(
        refused.json["ephemeral_text"]
            .as_str()
            .is_some_and(|t| t.contains("not among the approvers")),
        "{}",
        refused.json
    );
    assert_eq!(fake.dialogs().len(), 1);

    // Approving a destructive action: a dialog, then the decision.
    let reply = click(&app, &fake, &post, "Approve terminate_all", ALICE).await;
    assert_eq!(reply.json, json!({}));
    assert_eq!(fake.dialogs().len(), 2);
    assert_eq!(fake.dialogs()[1]["dialog"]["title"], "Approve this action?");
    assert!(
        approval(&app, id, "terminate_all").await["decisions"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    deliver(&app, &fake.submit_last_dialog(ALICE)).await;
    let terminate = approval(&app, id, "terminate_all").await;
    assert_eq!(terminate["decisions"][0]["approver"], "person:alice");
    assert_eq!(terminate["state"], "pending", "one of two");
    // Someone else submitting a dialog they may not decide: the dialog shows why.
    let refused = deliver(&app, &fake.submit_last_dialog(MALLORY)).await;
    assert!(
        refused.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("not among")),
        "{}",
        refused.json
    );
}

#[tokio::test]
async fn a_mattermost_429_waits_for_its_reset_and_a_403_is_not_retried() {
    let (app, fake) = mattermost_app(Backend::Sqlite).await;
    fake.script([Scripted::RateLimited(3)]);
    app.post_webhook(alert("c0ffee0000000001", "x")).await;
    let now = now_millis();
    drain(&app, now).await;
    drain(&app, now + 2_000).await;
    assert_eq!(fake.reports().len(), 1, "not before X-Ratelimit-Reset");
    drain(&app, now + 3_500).await;
    assert_eq!(fake.reports().len(), 2);
    assert!(fake.report_id().is_some());

    fake.script([Scripted::Forbidden]);
    app.post_webhook(alert("c0ffee0000000002", "y")).await;
    drain(&app, now_millis()).await;
    drain(&app, now_millis() + 600_000).await;
    assert_eq!(fake.reports().len(), 3, "never retried");
    let failed: Vec<String> = common::column(
        &app.store,
        "select detail from incident_events where kind = 'chat_failed'",
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("403"), "{failed:?}");
}

#[tokio::test]
async fn an_escalation_pings_the_next_role_by_username_and_snooze_and_acknowledge_are_signed_clicks()
 {
    let (app, fake) = mattermost_app(Backend::Sqlite).await;
    let (id, post) = open(&app, &fake, "x").await;
    // Snooze moves the next timer; the post says until when.
    let snoozed = click(&app, &fake, &post, "Snooze 1h", ALICE).await;
    assert_eq!(snoozed.json, json!({}));
    drain(&app, now_millis()).await;
    let message = fake.post(&post).expect("post")["message"].to_string();
    assert!(message.contains("snoozed until"), "{message}");
    // The default policy escalates to team-lead after 30 minutes; snoozed
    // for an hour, it does so an hour from now.
    let later = now_millis() + 31 * 60_000;
    remedy::engine::escalate::fire_due(&app.app.engine, later)
        .await
        .expect("fire");
    drain(&app, later).await;
    assert!(fake.replies().is_empty(), "snoozed: {:?}", fake.replies());
    let later = now_millis() + 62 * 60_000;
    remedy::engine::escalate::fire_due(&app.app.engine, later)
        .await
        .expect("fire");
    drain(&app, later).await;
    let pings: Vec<Value> = fake
        .replies()
        .into_iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("@lead "))
        })
        .collect();
    assert_eq!(pings.len(), 1, "{:?}", fake.replies());
    assert_eq!(pings[0]["root_id"], post.as_str(), "in the report's thread");

    // Acknowledge: only the incident's responders; alice is one.
    let refused = click(&app, &fake, &post, "Acknowledge", MALLORY).await;
    assert!(
        refused.json["ephemeral_text"].is_string(),
        "{}",
        refused.json
    );
    let acked = click(&app, &fake, &post, "Acknowledge", ALICE).await;
    assert_eq!(acked.json, json!({}));
    drain(&app, later + 1).await;
    let updated = fake.post(&post).expect("post");
    let message = updated["message"].as_str().expect("message");
    assert!(message.contains("acknowledged by alice"), "{message}");
    let names = button_names(&updated);
    assert!(!names.contains(&"Acknowledge".to_owned()), "{names:?}");
    let escalation = &app.api(&format!("/v1/incidents/{id}")).await["escalation"];
    assert!(escalation.to_string().contains("alice"), "{escalation}");
}

#[tokio::test]
async fn a_changes_undo_is_offered_in_the_thread_with_signed_buttons_that_decide_it() {
    let dir =
        std::env::temp_dir().join(format!("remedy-mm-undo-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("undo.yaml"), common::UNDO_PLAYBOOK).expect("playbook");
    let (app, fake) = mattermost_app_with(
        Backend::Sqlite,
        &dir,
        &[("REMEDY__COMMANDS__ALLOW", "/bin/echo")],
    )
    .await;
    let (id, post) = open(&app, &fake, "undo").await;
    let report = fake.post(&post).expect("report");
    assert!(
        !button_names(&report).contains(&"Approve unpin".to_owned()),
        "{report}"
    );
    assert_eq!(
        click(&app, &fake, &post, "Approve pin", ALICE).await.status,
        StatusCode::OK
    );
    drain(&app, now_millis()).await;
    let reply = fake
        .reply_id("pin: done")
        .unwrap_or_else(|| panic!("no outcome reply: {:?}", fake.replies()));
    let shown = fake.post(&reply).expect("reply");
    assert!(
        shown["message"]
            .as_str()
            .is_some_and(|m| m.contains("Undo offered")),
        "{shown}"
    );
    assert_eq!(
        click(&app, &fake, &reply, "Approve unpin", ALICE)
            .await
            .status,
        StatusCode::OK
    );
    drain(&app, now_millis()).await;
    let executions = app.api(&format!("/v1/incidents/{id}")).await["executions"].clone();
    let states: Vec<&str> = executions
        .as_array()
        .expect("executions")
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(states, ["done", "done"], "{executions}");
    assert!(
        executions.to_string().contains("unpin agente-api"),
        "{executions}"
    );
}
