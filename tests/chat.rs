//! Chat end to end on the HTTP boundary: reports posted to fake Slack and
//! Discord servers, clicks signed exactly as the platforms sign them,
//! authorization, idempotent decisions, retries, resolve.

mod common;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_chat::{DISCORD_TOKEN, FakeChat, SLACK_TOKEN, Scripted, UNPACED};
use common::{Backend, Reply, TestApp, send};
use ed25519_dalek::{Signer, SigningKey};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::{Value, json};

const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";
const DISCORD_KEY: [u8; 32] = [7; 32];

on_both_stores!(
    a_slack_report_holds_evidence_and_buttons_and_shows_who_approved,
    a_hundred_concurrent_clicks_by_one_approver_record_one_decision,
    two_distinct_approvers_satisfy_a_two_approver_action_and_one_does_not,
    a_resolved_incident_updates_its_message_and_refuses_clicks,
    impersonation_through_the_api_is_refused_with_403_and_nothing_recorded,
    the_shared_api_token_reads_but_cannot_decide_or_act,
    one_persons_slack_click_and_console_approval_count_once_toward_a_quorum,
    a_non_approver_clicking_twenty_times_leaves_one_refusal_record,
);

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
    risk: disruptive
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
# alice is one person on Slack, Discord and the console; the others decide
# through the console with their personal tokens.
[people.alice]
slack = "U0ALICE"
discord = "1001"
api_token = "alice-token"
[people.bob]
api_token = "bob-token"
[people.lead]
api_token = "lead-token"
[people.mallory]
api_token = "mallory-token"

[approvers.oncall]
slack_users = ["U0ALICE", "U0BOB"]
slack_groups = ["S0DBA"]
discord_users = ["1001", "1002"]
discord_roles = ["2002"]
console_users = ["alice", "bob"]

[approvers.lead]
slack_users = ["U0LEAD"]
console_users = ["lead"]

[[chat.routes]]
match = ['severity="critical"']
channel = "C0CRIT"
"#;

fn playbooks() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("remedy-chat-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("chat-test.yaml"), PLAYBOOK).expect("playbook");
    dir
}

fn discord_public_key() -> String {
    hex::encode(
        SigningKey::from_bytes(&DISCORD_KEY)
            .verifying_key()
            .to_bytes(),
    )
}

async fn chat_app(backend: Backend, platform: &str) -> (TestApp, FakeChat) {
    // Approved actions are recorded, not run, in chat tests.
    chat_app_with(
        backend,
        platform,
        &playbooks(),
        &[("REMEDY__EXECUTOR__DRY_RUN", "true")],
    )
    .await
}

/// A chat app on `platform` with the playbooks in `dir` and `extra` settings.
async fn chat_app_with(
    backend: Backend,
    platform: &str,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (TestApp, FakeChat) {
    let fake = FakeChat::start().await;
    let slack_api = format!("{}/slack/api", fake.url);
    let discord_api = format!("{}/discord/api/v10", fake.url);
    let key = discord_public_key();
    let mut env = vec![
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__CHAT__PLATFORM", platform),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0DEFAULT"),
        ("REMEDY__CHAT__SLACK__API_URL", &slack_api),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        ("REMEDY__CHAT__SLACK__SIGNING_SECRET", SIGNING_SECRET),
        // Unpaced: these tests are about what is posted, not how fast
        // (tests/pacing.rs is).
        ("REMEDY__CHAT__SLACK__POST_RATE", UNPACED),
        ("REMEDY__CHAT__SLACK__UPDATE_RATE", UNPACED),
        ("REMEDY__CHAT__DISCORD__API_URL", &discord_api),
        ("REMEDY__CHAT__DISCORD__BOT_TOKEN", DISCORD_TOKEN),
        ("REMEDY__CHAT__DISCORD__PUBLIC_KEY", &key),
    ];
    env.extend_from_slice(extra);
    let app = common::spawn_app_with_toml(backend, APPROVERS, &env).await;
    (app, fake)
}

fn alert(fingerprint: &str, status: &str, severity: &str, note: &str) -> String {
    json!({
        "receiver": "remedy", "status": status, "version": "4",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "ChatTest", "severity": severity, "service": "agente-api", "note": note},
            "annotations": {"summary": format!("pool trouble: {note}")},
            "startsAt": "2026-11-27T01:00:00Z",
            "endsAt": if status == "resolved" { "2026-11-27T01:10:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint
        }],
        "groupLabels": {"alertname": "ChatTest"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": "{}:{alertname=\"ChatTest\"}", "truncatedAlerts": 0
    })
    .to_string()
}

fn worker() -> WorkerSettings {
    WorkerSettings::new("chat-test-worker".into())
}

/// Runs the worker until nothing is due at `at`.
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

/// Opens a ChatTest incident and lets the worker diagnose and post it.
async fn open(app: &TestApp, severity: &str, note: &str) -> i64 {
    let reply = app
        .post_webhook(alert("c0ffee0000000001", "firing", severity, note))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    drain(app, now_millis()).await;
    app.incidents("").await[0]["id"].as_i64().expect("id")
}

async fn approvals(app: &TestApp, id: i64) -> Vec<Value> {
    app.api(&format!("/v1/incidents/{id}")).await["approvals"]
        .as_array()
        .expect("approvals")
        .clone()
}

async fn approval(app: &TestApp, id: i64, key: &str) -> Value {
    approvals(app, id)
        .await
        .into_iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("no approval {key}"))
}

/// The button value (`id:digest`) the posted message carries for `key`.
fn slack_value(body: &Value, key: &str) -> String {
    body["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == "approve" && e["text"]["text"] == format!("Approve {key}"))
        .and_then(|e| e["value"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no Approve {key} button in {body}"))
}

fn slack_payload(user: &str, action_id: &str, value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1764000000.000001", "channel_id": "C0CRIT", "is_ephemeral": false},
        "trigger_id": "123.456.abc",
        "team": {"id": "T0TEAM", "domain": "example"},
        "channel": {"id": "C0CRIT", "name": "incidents"},
        "message": {"type": "message", "ts": "1764000000.000001", "text": "report", "blocks": []},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "act-1-0", "value": value,
                     "text": {"type": "plain_text", "text": "Approve"}, "action_ts": "1764000001.000001"}]
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

/// Posts a Slack click signed with `secret` at `timestamp`.
/// A Slack click request with `body`, signed over `signed_body` with
/// `secret` at `timestamp` (they differ only in the tampering tests).
fn slack_request(body: &str, signed_body: &str, secret: &str, timestamp: i64) -> Request<Body> {
    let ts = timestamp.to_string();
    let signature = remedy::chat::slack::sign(secret, &ts, signed_body.as_bytes());
    Request::post("/v1/interactions/slack")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(Body::from(body.to_owned()))
        .expect("request")
}

async fn slack_post(
    app: &TestApp,
    body: &str,
    signed_body: &str,
    secret: &str,
    timestamp: i64,
) -> Reply {
    send(
        &app.router,
        slack_request(body, signed_body, secret, timestamp),
    )
    .await
}

async fn slack_click(
    app: &TestApp,
    fake: &FakeChat,
    user: &str,
    action_id: &str,
    value: &str,
) -> Reply {
    let body = slack_payload(
        user,
        action_id,
        value,
        &format!("{}/slack/response/1", fake.url),
    );
    slack_post(app, &body, &body, SIGNING_SECRET, now_millis() / 1000).await
}

fn unix_now() -> i64 {
    now_millis() / 1000
}

async fn a_slack_report_holds_evidence_and_buttons_and_shows_who_approved(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "critical", "@everyone <!channel> look").await;
    let posts = fake.calls("/chat.postMessage");
    assert_eq!(posts.len(), 1, "one message per incident");
    let post = &posts[0];
    assert_eq!(
        post.authorization.as_deref(),
        Some(format!("Bearer {SLACK_TOKEN}").as_str())
    );
    // Routed by severity.
    assert_eq!(post.body["channel"], "C0CRIT");
    let text = post.body.to_string();
    assert!(text.contains("[FIRING] ChatTest (critical)"), "{text}");
    assert!(text.contains("Note from the alert"), "{text}");
    assert!(
        text.contains("POSTGRES_POOL_SIZE=20"),
        "suggested command shown: {text}"
    );
    // Nothing from the alert can ping anyone.
    assert!(
        !text.contains("<!channel>") && !text.contains("@everyone"),
        "{text}"
    );
    // A button pair per action; disruptive and destructive ones confirm.
    let value = slack_value(&post.body, "restart_service");
    let approve = post.body["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["value"] == value.as_str() && e["action_id"] == "approve")
        .expect("approve button");
    assert!(approve["confirm"].is_object(), "{approve}");
    slack_value(&post.body, "terminate_all");

    let reply = slack_click(&app, &fake, "U0ALICE", "approve", &value).await;
    assert_eq!(reply.status, StatusCode::OK);
    let restart = approval(&app, id, "restart_service").await;
    assert_eq!(restart["state"], "approved");
    assert_eq!(restart["decisions"][0]["approver"], "person:alice");

    drain(&app, now_millis()).await;
    // Updated after the decision (and again after the dry-run execution,
    // unless both changes went out in one update).
    let updates = fake.calls("/chat.update");
    assert!(!updates.is_empty());
    let update = &updates.last().expect("an update").body;
    // The message Slack gave a ts for is the one updated.
    assert_eq!(update["ts"], "1764000000.000001");
    assert_eq!(update["channel"], "C0CRIT");
    let text = update.to_string();
    assert!(text.contains("approved by alice (1 of 1)"), "{text}");
    // The decided action lost its buttons; the open one kept them.
    assert!(!text.contains("Approve restart_service"), "{text}");
    assert!(text.contains("Approve terminate_all"), "{text}");
    // The (dry-run) outcome is posted once, in the report's thread.
    let replies: Vec<Value> = fake
        .calls("/chat.postMessage")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b.get("thread_ts").is_some())
        .collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["thread_ts"], "1764000000.000001");
    assert!(
        replies[0]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("restart_service: dry_run — approved by alice — "),
        "a person in [people] is named, not mentioned: {replies:?}"
    );
    drain(&app, now_millis() + 1).await;
    assert_eq!(
        fake.calls("/chat.postMessage")
            .iter()
            .filter(|r| r.body.get("thread_ts").is_some())
            .count(),
        1,
        "reported once"
    );
}

async fn a_hundred_concurrent_clicks_by_one_approver_record_one_decision(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "terminate_all");
    let clicks = (0..100).map(|_| {
        let router = app.router.clone();
        let body = slack_payload(
            "U0ALICE",
            "approve",
            &value,
            &format!("{}/slack/response/1", fake.url),
        );
        async move {
            let request = slack_request(&body, &body, SIGNING_SECRET, unix_now());
            send(&router, request).await.status
        }
    });
    let statuses = futures_join_all(clicks).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let terminate = approval(&app, id, "terminate_all").await;
    assert_eq!(
        terminate["decisions"].as_array().expect("decisions").len(),
        1
    );
    assert_eq!(terminate["state"], "pending", "one person is 1 of 2");
    let events: i64 = common::scalar(
        &app.store,
        "select count(*) from incident_events where kind = 'approval_recorded'",
    )
    .await;
    assert_eq!(events, 1);
}

/// `join_all` without a futures dependency: spawn and await each.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

async fn two_distinct_approvers_satisfy_a_two_approver_action_and_one_does_not(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "terminate_all");
    slack_click(&app, &fake, "U0ALICE", "approve", &value).await;
    slack_click(&app, &fake, "U0ALICE", "approve", &value).await;
    assert_eq!(
        approval(&app, id, "terminate_all").await["state"],
        "pending"
    );
    // A member of an approver user group (read from Slack) is the second.
    fake.set_group("S0DBA", &["U0GROUPIE"]);
    slack_click(&app, &fake, "U0GROUPIE", "approve", &value).await;
    let terminate = approval(&app, id, "terminate_all").await;
    assert_eq!(terminate["state"], "approved");
    let who: Vec<&str> = terminate["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter_map(|d| d["approver"].as_str())
        .collect();
    assert_eq!(who, ["person:alice", "slack:U0GROUPIE"]);
    drain(&app, now_millis()).await;
    let last = fake
        .calls("/chat.update")
        .last()
        .expect("updated")
        .body
        .to_string();
    assert!(last.contains("(2 of 2)"), "{last}");
}

async fn a_resolved_incident_updates_its_message_and_refuses_clicks(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "restart_service");
    let reply = app
        .post_webhook(alert("c0ffee0000000001", "resolved", "warning", "x"))
        .await;
    assert_eq!(reply.json["incidents_resolved"], 1);
    drain(&app, now_millis()).await;
    let update = fake
        .calls("/chat.update")
        .last()
        .expect("updated")
        .body
        .clone();
    let text = update.to_string();
    assert!(text.contains("[RESOLVED] ChatTest"), "{text}");
    assert!(
        !update["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .any(|b| b["type"] == "actions"),
        "buttons removed: {text}"
    );
    assert!(
        approvals(&app, id)
            .await
            .iter()
            .all(|a| a["state"] == "expired")
    );
    slack_click(&app, &fake, "U0ALICE", "approve", &value).await;
    let refusal = fake.calls("/slack/response/1");
    assert_eq!(refusal.len(), 1);
    assert_eq!(refusal[0].body["response_type"], "ephemeral");
    assert!(
        refusal[0].body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("resolved")
    );
}

#[tokio::test]
async fn every_click_must_be_signed_fresh_and_untampered() {
    let (app, fake) = chat_app(Backend::Sqlite, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "restart_service");
    let url = format!("{}/slack/response/1", fake.url);
    let body = slack_payload("U0ALICE", "approve", &value, &url);
    let tampered = slack_payload("U0BOB", "approve", &value, &url);
    let now = unix_now();
    let cases = [
        (
            "wrong signing secret",
            slack_post(&app, &body, &body, "not-the-secret", now).await,
        ),
        (
            "stale timestamp",
            slack_post(&app, &body, &body, SIGNING_SECRET, now - 400).await,
        ),
        (
            "tampered body",
            slack_post(&app, &tampered, &body, SIGNING_SECRET, now).await,
        ),
    ];
    for (name, reply) in &cases {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
    }
    let forged = Request::post("/v1/interactions/slack")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", format!("v0={}", "ab".repeat(32)))
        .body(Body::from(body.clone()))
        .expect("request");
    assert_eq!(
        send(&app.router, forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        approvals(&app, id)
            .await
            .iter()
            .all(|a| a["decisions"].as_array().is_some_and(Vec::is_empty))
    );
    // The same click, correctly signed, is accepted and recorded.
    let ok = slack_post(&app, &body, &body, SIGNING_SECRET, now).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "approved"
    );
}

#[tokio::test]
async fn a_click_from_outside_the_approver_roles_is_refused_and_audited() {
    let (app, fake) = chat_app(Backend::Sqlite, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "restart_service");
    let reply = slack_click(&app, &fake, "U0MALLORY", "approve", &value).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "pending"
    );
    let refusal = fake.calls("/slack/response/1");
    assert_eq!(refusal.len(), 1);
    assert_eq!(refusal[0].body["response_type"], "ephemeral");
    assert!(
        refusal[0].body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("not among the approvers")
    );
    let audit: Vec<String> = common::column(
        &app.store,
        "select detail from incident_events where kind = 'decision_refused'",
    )
    .await;
    assert_eq!(audit.len(), 1);
    assert!(audit[0].contains("slack:U0MALLORY"), "{audit:?}");
    // A lead may approve only what lists `lead`.
    let reply = slack_click(&app, &fake, "U0LEAD", "approve", &value).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "pending"
    );
}

#[tokio::test]
async fn a_chat_outage_is_retried_and_delivered_once_while_intake_answers() {
    let (app, fake) = chat_app(Backend::Sqlite, "slack").await;
    fake.script([Scripted::Status(500)]);
    let reply = app
        .post_webhook(alert("c0ffee0000000001", "firing", "warning", "x"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let now = now_millis();
    drain(&app, now).await;
    assert!(
        common::scalar::<i64>(
            &app.store,
            "select count(*) from chat_messages where message_id is not null"
        )
        .await
            == 0
    );
    // Intake is not blocked by the failing chat.
    let other = app
        .post_webhook(alert("c0ffee0000000002", "firing", "warning", "y"))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.json["incidents_opened"], 1);
    // The retry (after the backoff) delivers; the second incident posts too.
    drain(&app, now + 5_000).await;
    let posts = fake.calls("/chat.postMessage");
    assert_eq!(
        posts.len(),
        3,
        "one failed attempt, then one post per incident"
    );
    let delivered: i64 = common::scalar(
        &app.store,
        "select count(*) from chat_messages where message_id is not null",
    )
    .await;
    assert_eq!(delivered, 2);
}

#[tokio::test]
async fn a_rate_limited_post_waits_for_retry_after() {
    let (app, fake) = chat_app(Backend::Sqlite, "slack").await;
    fake.script([Scripted::SlackRateLimited(2)]);
    app.post_webhook(alert("c0ffee0000000001", "firing", "warning", "x"))
        .await;
    let now = now_millis();
    drain(&app, now).await;
    assert_eq!(fake.calls("/chat.postMessage").len(), 1);
    // Not before the two seconds Slack asked for.
    drain(&app, now + 1_500).await;
    assert_eq!(fake.calls("/chat.postMessage").len(), 1);
    drain(&app, now + 3_000).await;
    assert_eq!(fake.calls("/chat.postMessage").len(), 2);
    let delivered: i64 = common::scalar(
        &app.store,
        "select count(*) from chat_messages where message_id is not null",
    )
    .await;
    assert_eq!(delivered, 1, "delivered once");
}

#[tokio::test]
async fn a_permanent_chat_error_is_recorded_on_the_incident_and_not_retried() {
    let (app, fake) = chat_app(Backend::Sqlite, "slack").await;
    fake.script([Scripted::SlackError("channel_not_found")]);
    app.post_webhook(alert("c0ffee0000000001", "firing", "warning", "x"))
        .await;
    drain(&app, now_millis()).await;
    drain(&app, now_millis() + 600_000).await;
    assert_eq!(fake.calls("/chat.postMessage").len(), 1);
    let kinds: Vec<String> =
        common::column(&app.store, "select kind from incident_events order by id").await;
    assert!(kinds.contains(&"chat_failed".to_owned()), "{kinds:?}");
}

fn discord_interaction(custom_id: &str, user: &str, roles: &[&str]) -> String {
    json!({
        "id": "1300000000000000001", "application_id": "1200000000000000001", "type": 3,
        "data": {"custom_id": custom_id, "component_type": 2, "id": 3},
        "guild_id": "1100000000000000001", "channel_id": "1000000000000000001",
        "channel": {"id": "1000000000000000001", "type": 0},
        "member": {"user": {"id": user, "username": format!("user{user}"), "global_name": null},
                   "roles": roles, "deaf": false, "mute": false, "flags": 0,
                   "joined_at": "2026-01-01T00:00:00+00:00", "permissions": "2147483647"},
        "token": "interaction-token", "version": 1,
        "message": {"id": "900000000000000000", "channel_id": "1000000000000000001"},
        "app_permissions": "2147483647", "locale": "en-US", "guild_locale": "en-US",
        "entitlements": [], "authorizing_integration_owners": {}, "context": 0,
        "attachment_size_limit": 10485760
    })
    .to_string()
}

async fn discord_post(
    app: &TestApp,
    body: &str,
    signed: &str,
    key: &SigningKey,
    timestamp: i64,
) -> Reply {
    let ts = timestamp.to_string();
    let signature = key.sign(&[ts.as_bytes(), signed.as_bytes()].concat());
    let request = Request::post("/v1/interactions/discord")
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts)
        .header("x-signature-ed25519", hex::encode(signature.to_bytes()))
        .body(Body::from(body.to_owned()))
        .expect("request");
    send(&app.router, request).await
}

#[tokio::test]
async fn discord_reports_ping_nobody_and_signed_clicks_decide() {
    let (app, fake) = chat_app(Backend::Sqlite, "discord").await;
    let key = SigningKey::from_bytes(&DISCORD_KEY);
    let now = unix_now();
    // PING gets PONG.
    let ping = json!({"id": "1", "application_id": "2", "type": 1, "token": "t", "version": 1})
        .to_string();
    let pong = discord_post(&app, &ping, &ping, &key, now).await;
    assert_eq!(pong.status, StatusCode::OK);
    assert_eq!(pong.json, json!({"type": 1}));

    let id = open(&app, "warning", "@everyone @here look").await;
    let posts = fake.calls("/messages");
    assert_eq!(posts.len(), 1);
    let message = &posts[0].body;
    assert_eq!(
        posts[0].authorization.as_deref(),
        Some(format!("Bot {DISCORD_TOKEN}").as_str())
    );
    assert_eq!(message["allowed_mentions"]["parse"], json!([]));
    let content = message["content"].as_str().expect("content");
    assert!(
        !content.contains("@everyone") && !content.contains("@here"),
        "{content}"
    );
    assert!(
        content.contains("POSTGRES\\_POOL\\_SIZE=20") || content.contains("POSTGRES_POOL_SIZE=20"),
        "{content}"
    );
    let buttons: Vec<String> = message["components"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(str::to_owned))
        .collect();
    // Acknowledge, Snooze 15m / 1h, Silence 1h / 4h, then the actions.
    assert_eq!(
        buttons[..5],
        ["ack:1", "sz:1:900", "sz:1:3600", "si:1:3600", "si:1:14400"],
        "{buttons:?}"
    );
    let buttons: Vec<String> = buttons
        .into_iter()
        .filter(|b| b.starts_with("ap:") || b.starts_with("rj:"))
        .collect();
    assert_eq!(buttons.len(), 4, "{buttons:?}");
    let approve_restart = buttons
        .iter()
        .find(|b| b.starts_with("ap:"))
        .expect("approve button")
        .clone();

    // Forged, stale, tampered and wrong-key clicks: 401, nothing recorded.
    let click = discord_interaction(&approve_restart, "1001", &[]);
    let other = SigningKey::from_bytes(&[9; 32]);
    let tampered = discord_interaction(&approve_restart, "1002", &[]);
    for (name, reply) in [
        (
            "wrong key",
            discord_post(&app, &click, &click, &other, now).await,
        ),
        (
            "stale",
            discord_post(&app, &click, &click, &key, now - 400).await,
        ),
        (
            "tampered",
            discord_post(&app, &tampered, &click, &key, now).await,
        ),
    ] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
    }
    let forged = Request::post("/v1/interactions/discord")
        .header("x-signature-timestamp", now.to_string())
        .header("x-signature-ed25519", "00".repeat(64))
        .body(Body::from(click.clone()))
        .expect("request");
    assert_eq!(
        send(&app.router, forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        approvals(&app, id)
            .await
            .iter()
            .all(|a| a["state"] == "pending")
    );

    // Someone without the role: an ephemeral refusal.
    let stranger = discord_interaction(&approve_restart, "4242", &["3003"]);
    let refused = discord_post(&app, &stranger, &stranger, &key, now).await;
    assert_eq!(refused.json["type"], 4);
    assert_eq!(refused.json["data"]["flags"], 64);
    // A member through a Discord role: a deferred update, and the worker edits.
    let member = discord_interaction(&approve_restart, "5555", &["2002"]);
    let accepted = discord_post(&app, &member, &member, &key, now).await;
    assert_eq!(accepted.json, json!({"type": 6}));
    let restart = approvals(&app, id)
        .await
        .into_iter()
        .find(|a| {
            format!("ap:{}:", a["id"])
                == approve_restart[..approve_restart.rfind(':').expect(":") + 1]
        })
        .expect("approval");
    assert_eq!(restart["state"], "approved");
    drain(&app, now_millis()).await;
    let edits: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    // After the decision, and after the (dry-run) execution.
    assert!(!edits.is_empty());
    assert!(
        edits
            .iter()
            .all(|e| e.body["allowed_mentions"]["parse"] == json!([]))
    );
    assert!(
        edits.last().expect("an edit").body["content"]
            .as_str()
            .unwrap_or_default()
            .contains("approved by")
    );
    let replies: Vec<_> = fake
        .calls("/messages")
        .into_iter()
        .filter(|r| r.method == "POST" && r.body.get("message_reference").is_some())
        .collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].body["allowed_mentions"]["parse"], json!([]));
    // The outcome mentions the clicker for real, and may notify only them.
    let content = replies[0].body["content"].as_str().unwrap_or_default();
    assert!(content.contains("approved by <@5555>"), "{content}");
    assert_eq!(
        replies[0].body["allowed_mentions"]["users"],
        json!(["5555"])
    );
}

#[tokio::test]
async fn console_decisions_go_through_the_api_with_the_token() {
    let dir = playbooks();
    let app = common::spawn_app_with_toml(
        Backend::Sqlite,
        APPROVERS,
        &[("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8"))],
    )
    .await;
    let id = open(&app, "warning", "x").await;
    let decide = |token: Option<&str>| {
        let mut request = Request::post(format!(
            "/v1/incidents/{id}/actions/restart_service/approve"
        ))
        .header("content-type", "application/json");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        request.body(Body::from("{}")).expect("request")
    };
    assert_eq!(
        send(&app.router, decide(None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app.router, decide(Some("guessed-token")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let refused = send(&app.router, decide(Some("mallory-token"))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not among the approvers")
    );
    let ok = send(&app.router, decide(Some("alice-token"))).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert_eq!(ok.json["state"], "approved");
    assert_eq!(ok.json["person"], "alice");
    let again = send(&app.router, decide(Some("bob-token"))).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert!(
        again.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already approved")
    );
    // A change of mind on a two-person action is refused, not dropped.
    let terminate = |verb: &str| {
        Request::post(format!("/v1/incidents/{id}/actions/terminate_all/{verb}"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer alice-token")
            .body(Body::from(json!({"as": "alice"}).to_string()))
            .expect("request")
    };
    let first = send(&app.router, terminate("approve")).await;
    assert_eq!(first.json["state"], "pending", "{}", first.json);
    let changed = send(&app.router, terminate("reject")).await;
    assert_eq!(changed.status, StatusCode::FORBIDDEN);
    assert!(
        changed.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already chose to approve"),
        "{}",
        changed.json
    );
}

fn api_post(path: &str, token: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .expect("request")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    common::scalar(&app.store, sql).await
}

/// Finding 1: a token holder names someone else in `as`.
async fn impersonation_through_the_api_is_refused_with_403_and_nothing_recorded(backend: Backend) {
    let (app, _fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let events_before = count(&app, "select count(*) from incident_events").await;
    let path = format!("/v1/incidents/{id}/actions/restart_service/approve");
    for token in ["mallory-token", "bob-token"] {
        let reply = send(&app.router, api_post(&path, token, &json!({"as": "alice"}))).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.json);
        assert!(
            reply.json["message"]
                .as_str()
                .unwrap_or_default()
                .contains("may only name yourself"),
            "{}",
            reply.json
        );
    }
    let ack = format!("/v1/incidents/{id}/ack");
    let reply = send(
        &app.router,
        api_post(&ack, "mallory-token", &json!({"as": "alice"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(count(&app, "select count(*) from decisions").await, 0);
    assert_eq!(count(&app, "select count(*) from refusals").await, 0);
    assert_eq!(
        count(&app, "select count(*) from incident_events").await,
        events_before,
        "nothing recorded"
    );
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "pending"
    );
}

/// `api.token` is read-only: it lists incidents but cannot decide or act.
async fn the_shared_api_token_reads_but_cannot_decide_or_act(backend: Backend) {
    let (app, _fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let read = app
        .get(&format!("/v1/incidents/{id}"), Some(common::API_TOKEN))
        .await;
    assert_eq!(read.status, StatusCode::OK);
    // A person's token reads too.
    let read = app.get("/v1/incidents", Some("bob-token")).await;
    assert_eq!(read.status, StatusCode::OK);
    for (path, body) in [
        (
            format!("/v1/incidents/{id}/actions/restart_service/approve"),
            json!({"as": "alice"}),
        ),
        (
            format!("/v1/incidents/{id}/actions/restart_service/reject"),
            json!({}),
        ),
        (format!("/v1/incidents/{id}/ack"), json!({"as": "alice"})),
        (format!("/v1/incidents/{id}/snooze"), json!({"for": "15m"})),
        (format!("/v1/incidents/{id}/silence"), json!({"for": "1h"})),
    ] {
        let reply = send(&app.router, api_post(&path, common::API_TOKEN, &body)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.json
        );
        assert!(
            reply.json["message"]
                .as_str()
                .unwrap_or_default()
                .contains("read-only"),
            "{}",
            reply.json
        );
    }
    assert_eq!(count(&app, "select count(*) from decisions").await, 0);
}

/// Finding 1: one engineer cannot satisfy a two-person rule alone.
async fn one_persons_slack_click_and_console_approval_count_once_toward_a_quorum(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "terminate_all");
    slack_click(&app, &fake, "U0ALICE", "approve", &value).await;
    let path = format!("/v1/incidents/{id}/actions/terminate_all/approve");
    let console = send(&app.router, api_post(&path, "alice-token", &json!({}))).await;
    assert_eq!(console.status, StatusCode::OK, "{}", console.json);
    assert_eq!(console.json["approvals"], 1, "{}", console.json);
    assert_eq!(console.json["quorum"], 2);
    assert_eq!(console.json["repeat"], true);
    assert_eq!(
        approval(&app, id, "terminate_all").await["state"],
        "pending"
    );
    // A second person makes it two of two.
    let bob = send(&app.router, api_post(&path, "bob-token", &json!({}))).await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.json);
    assert_eq!(bob.json["approvals"], 2);
    assert_eq!(bob.json["state"], "approved");
    // The audit names each person and the channel they used.
    let audit: Vec<String> = common::column(
        &app.store,
        "select cast(detail as text) from audit_log where event = 'approved'",
    )
    .await;
    assert_eq!(audit.len(), 1);
    let detail: Value = serde_json::from_str(&audit[0]).expect("json");
    assert_eq!(detail["approvers"], json!(["person:alice", "person:bob"]));
    assert_eq!(detail["decisions"][0]["channel"], "slack");
    assert_eq!(detail["decisions"][1]["channel"], "api");
}

/// Finding 4: refusals are recorded once per person, approval and reason.
async fn a_non_approver_clicking_twenty_times_leaves_one_refusal_record(backend: Backend) {
    let (app, fake) = chat_app(backend, "slack").await;
    let id = open(&app, "warning", "x").await;
    let value = slack_value(&fake.calls("/chat.postMessage")[0].body, "restart_service");
    for _ in 0..20 {
        let reply = slack_click(&app, &fake, "U0MALLORY", "approve", &value).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let path = format!("/v1/incidents/{id}/actions/restart_service/approve");
    for _ in 0..20 {
        let reply = send(&app.router, api_post(&path, "mallory-token", &json!({}))).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        count(
            &app,
            "select count(*) from incident_events where kind = 'decision_refused'"
        )
        .await,
        2,
        "one per clicker: slack:U0MALLORY and person:mallory"
    );
    assert_eq!(count(&app, "select count(*) from refusals").await, 2);
    assert_eq!(
        approval(&app, id, "restart_service").await["state"],
        "pending"
    );
}

#[tokio::test]
async fn an_expired_request_is_refused_with_the_reason() {
    let (app, _fake) = chat_app(Backend::Sqlite, "slack").await;
    let id = open(&app, "warning", "x").await;
    let restart = approval(&app, id, "restart_service").await;
    let outcome = app
        .store
        .decide(
            restart["id"].as_i64().expect("id"),
            restart["digest"].as_str().expect("digest"),
            &remedy::approvals::Directory::default().slack("U0ALICE"),
            remedy::store::Decision::Approve,
            true,
            now_millis() + 16 * 60_000,
        )
        .await
        .expect("decide");
    assert_eq!(
        outcome,
        remedy::store::DecisionOutcome::Refused("this approval request expired".into())
    );
    // A button from an earlier version of the action (another digest) too.
    let outcome = app
        .store
        .decide(
            restart["id"].as_i64().expect("id"),
            "0000000000000000",
            &remedy::approvals::Directory::default().slack("U0BOB"),
            remedy::store::Decision::Approve,
            true,
            now_millis(),
        )
        .await
        .expect("decide");
    assert!(
        matches!(outcome, remedy::store::DecisionOutcome::Refused(r) if r.contains("earlier version"))
    );
}

#[tokio::test]
async fn a_discord_429_waits_for_its_retry_after_and_a_403_is_not_retried() {
    let (app, fake) = chat_app(Backend::Sqlite, "discord").await;
    fake.script([Scripted::DiscordRateLimited(2.5)]);
    app.post_webhook(alert("c0ffee0000000001", "firing", "warning", "x"))
        .await;
    let now = now_millis();
    drain(&app, now).await;
    drain(&app, now + 2_000).await;
    assert_eq!(fake.calls("/messages").len(), 1, "not before retry_after");
    drain(&app, now + 3_500).await;
    assert_eq!(fake.calls("/messages").len(), 2);
    let delivered: i64 = common::scalar(
        &app.store,
        "select count(*) from chat_messages where message_id is not null",
    )
    .await;
    assert_eq!(delivered, 1);

    // Missing permissions: recorded on the incident, never retried.
    fake.script([Scripted::DiscordForbidden]);
    app.post_webhook(alert("c0ffee0000000002", "firing", "warning", "y"))
        .await;
    drain(&app, now_millis()).await;
    drain(&app, now_millis() + 600_000).await;
    assert_eq!(fake.calls("/messages").len(), 3);
    let failed: Vec<String> = common::column(
        &app.store,
        "select detail from incident_events where kind = 'chat_failed'",
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("50013"), "{failed:?}");
}

/// A chat app on `platform` whose playbook is [`common::UNDO_PLAYBOOK`], its
/// actions run for real.
async fn undo_app(platform: &str) -> (TestApp, FakeChat) {
    let dir = std::env::temp_dir().join(format!(
        "remedy-chat-undo-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("undo.yaml"), common::UNDO_PLAYBOOK).expect("playbook");
    chat_app_with(
        Backend::Sqlite,
        platform,
        &dir,
        &[("REMEDY__COMMANDS__ALLOW", "/bin/echo")],
    )
    .await
}

/// What ran, in order: each execution's last output line and its state.
async fn ran(app: &TestApp, id: i64) -> Vec<String> {
    app.api(&format!("/v1/incidents/{id}")).await["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["output"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or_default(),
                e["state"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_changes_undo_is_offered_in_the_thread_with_buttons_that_decide_it() {
    let (app, fake) = undo_app("slack").await;
    let id = open(&app, "critical", "undo").await;
    let report = &fake.calls("/chat.postMessage")[0].body;
    let pin = slack_value(report, "pin");
    assert!(
        !report.to_string().contains("Approve unpin"),
        "no undo before the change: {report}"
    );

    let reply = slack_click(&app, &fake, "U0ALICE", "approve", &pin).await;
    assert_eq!(reply.status, StatusCode::OK);
    drain(&app, now_millis()).await;
    // The outcome in the thread offers the undo, with its own buttons.
    let posts = fake.calls("/chat.postMessage");
    let outcome = posts
        .iter()
        .map(|p| &p.body)
        .find(|b| {
            b["thread_ts"].is_string()
                && b["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("pin: done"))
        })
        .unwrap_or_else(|| panic!("no outcome reply: {posts:?}"));
    assert!(
        outcome["text"]
            .as_str()
            .is_some_and(|t| t.contains("Undo offered: Undo: unpin")),
        "{outcome}"
    );
    let unpin = slack_value(outcome, "unpin");
    assert_eq!(
        unpin.split(':').next(),
        Some(approval(&app, id, "unpin").await["id"].to_string().as_str())
    );

    // Its button, clicked in the thread, decides the undo.
    let reply = slack_click(&app, &fake, "U0ALICE", "approve", &unpin).await;
    assert_eq!(reply.status, StatusCode::OK);
    drain(&app, now_millis()).await;
    assert_eq!(
        ran(&app, id).await,
        ["pin agente-api=done", "unpin agente-api=done"]
    );
}

/// The `custom_id` of the Approve button for `key` in a Discord message.
fn discord_approve(body: &Value, key: &str) -> String {
    body["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .find(|b| b["label"] == format!("Approve {key}"))
        .and_then(|b| b["custom_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no Approve {key} button in {body}"))
}

#[tokio::test]
async fn on_discord_too_the_undo_is_offered_in_a_reply_whose_buttons_decide_it() {
    let (app, fake) = undo_app("discord").await;
    let key = SigningKey::from_bytes(&DISCORD_KEY);
    let id = open(&app, "warning", "undo").await;
    let report = fake.calls("/messages")[0].body.clone();
    assert!(!report.to_string().contains("Approve unpin"), "{report}");
    let click = async |custom_id: String| {
        let body = discord_interaction(&custom_id, "1001", &[]);
        discord_post(&app, &body, &body, &key, unix_now()).await
    };
    assert_eq!(
        click(discord_approve(&report, "pin")).await.status,
        StatusCode::OK
    );
    drain(&app, now_millis()).await;
    let replies: Vec<Value> = fake
        .calls("/messages")
        .into_iter()
        .map(|c| c.body)
        .filter(|b| b["message_reference"].is_object())
        .collect();
    let outcome = replies
        .iter()
        .find(|b| {
            b["content"]
                .as_str()
                .is_some_and(|t| t.starts_with("pin: done"))
        })
        .unwrap_or_else(|| panic!("no outcome reply: {replies:?}"));
    assert!(
        outcome["content"]
            .as_str()
            .is_some_and(|t| t.contains("Undo offered")),
        "{outcome}"
    );
    assert_eq!(
        click(discord_approve(outcome, "unpin")).await.status,
        StatusCode::OK
    );
    drain(&app, now_millis()).await;
    assert_eq!(
        ran(&app, id).await,
        ["pin agente-api=done", "unpin agente-api=done"]
    );
}
