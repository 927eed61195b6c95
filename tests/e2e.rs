//! End to end, with real processes: each test starts the `remedy` binary
//! (`remedy serve`) on a fresh PostgreSQL store, Debian's Alertmanager (and,
//! where the playbook queries it, Prometheus) on free loopback ports, and a
//! fake Slack or Discord API at the HTTP boundary. Alerts are raised with
//! `amtool`; the runbook's conditions are created for real on a per-test
//! target database (sessions idle in transaction, `pg_sleep` queries, a
//! lock chain); clicks are signed as Slack and Discord sign them; and the
//! test checks what reached chat, what happened to the database, and what
//! the store holds. Every child is ended when its test ends, pass or fail.
//!
//! Needs `prometheus-alertmanager` and `prometheus` (Debian packages; the
//! CI script installs them) and the local PostgreSQL of the other tests.
//! Run only these: `cargo nextest run --test e2e`.

mod common;
#[path = "e2e/harness.rs"]
#[allow(dead_code, reason = "the harness serves several end-to-end test files")]
mod harness;

use std::time::{Duration, Instant};

use common::fake_chat::{FakeChat, Scripted};
use ed25519_dalek::{Signer, SigningKey};
use harness::{
    Alert, Alertmanager, ChatTo, DISCORD_KEY, PrivatePostgres, Prometheus, Remedy, RemedyConfig,
    SLACK_SECRET, Scratch, StoreDb, TargetDb, WEBHOOK_TOKEN, http, scaled_playbooks, wait_for,
};
use serde_json::{Value, json};
use sqlx::PgConnection;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// One test's world

#[derive(Clone, Copy, PartialEq, Eq)]
enum Platform {
    Slack,
    Discord,
}

/// Alertmanager → one remedy → fake chat, on a fresh store and a fresh
/// target database. Fields drop in order: processes first, files last.
struct Flow {
    am: Alertmanager,
    remedy: Remedy,
    fake: FakeChat,
    store: StoreDb,
    target: TargetDb,
    _scratch: Scratch,
}

impl Flow {
    async fn start(platform: Platform) -> Self {
        Self::start_with(platform, |c| c).await
    }

    async fn start_with(
        platform: Platform,
        configure: impl FnOnce(RemedyConfig) -> RemedyConfig,
    ) -> Self {
        let scratch = Scratch::new();
        let fake = FakeChat::start().await;
        let store = StoreDb::create().await;
        let target = TargetDb::create().await;
        let playbooks = scaled_playbooks(&scratch, &[]);
        let chat = match platform {
            Platform::Slack => ChatTo::Slack(fake.url.clone()),
            Platform::Discord => ChatTo::Discord(fake.url.clone()),
        };
        let config = configure(RemedyConfig::new(&store.url, &playbooks, &target.url, chat));
        let remedy = Remedy::start(&scratch, &config).await;
        let am = Alertmanager::start(&scratch, &[remedy.webhook_url()]).await;
        Self {
            am,
            remedy,
            fake,
            store,
            target,
            _scratch: scratch,
        }
    }

    async fn slack_click(&self, user: &str, value: &str) {
        slack_click(&self.remedy, &self.fake, user, value).await;
    }
}

/// What must hold once an incident is resolved: nothing is left to fire for
/// it. remedy's timers are rows with a due time; today those are the
/// incident's `work` rows (diagnose, notify, execute, verify), which a
/// resolve cancels. This is also the one place for the escalation timers'
/// check ("a resolved incident's escalation timers are cancelled") once
/// their rows exist, so every resolve flow of this suite asserts it.
async fn assert_no_pending_timers(store: &StoreDb, incident: i64) {
    wait_for(
        "no pending work for the resolved incident",
        WAIT,
        || async { (store.pending_work(incident).await == 0).then_some(()) },
    )
    .await;
    let status: String = sqlx::query_scalar("select status from incidents where id = $1")
        .bind(incident)
        .fetch_one(&store.pool)
        .await
        .expect("incident");
    assert_eq!(status, "resolved");
    // Its escalation timers were created when it opened and are cancelled
    // now: nobody is paged about a resolved incident.
    let timers: Vec<String> =
        sqlx::query_scalar("select state from escalation_timers where incident_id = $1")
            .bind(incident)
            .fetch_all(&store.pool)
            .await
            .expect("timers");
    assert!(!timers.is_empty(), "the incident had escalation timers");
    assert!(
        timers.iter().all(|s| s == "cancelled" || s == "fired"),
        "timers of a resolved incident: {timers:?}"
    );
}

// ---------------------------------------------------------------------------
// Slack at the HTTP boundary

fn slack_bodies(fake: &FakeChat, method: &str) -> Vec<Value> {
    fake.calls(&format!("/{method}"))
        .into_iter()
        .map(|r| r.body)
        .collect()
}

/// Top-level messages (reports), not thread replies.
fn slack_reports(fake: &FakeChat) -> Vec<Value> {
    slack_bodies(fake, "chat.postMessage")
        .into_iter()
        .filter(|b| b.get("thread_ts").is_none())
        .collect()
}

fn slack_replies(fake: &FakeChat) -> Vec<Value> {
    slack_bodies(fake, "chat.postMessage")
        .into_iter()
        .filter(|b| b.get("thread_ts").is_some())
        .collect()
}

/// Waits for a report whose text contains `needle` (e.g. a label).
async fn wait_slack_report(fake: &FakeChat, needle: &str) -> Value {
    wait_for(&format!("a Slack report with {needle}"), WAIT, || async {
        slack_reports(fake)
            .into_iter()
            .find(|b| b.to_string().contains(needle))
    })
    .await
}

/// Waits for a `chat.update` whose body satisfies `holds`.
async fn wait_slack_update(fake: &FakeChat, what: &str, holds: impl Fn(&str) -> bool) -> Value {
    wait_for(what, WAIT, || async {
        slack_bodies(fake, "chat.update")
            .into_iter()
            .rev()
            .find(|b| holds(&b.to_string()))
    })
    .await
}

/// The Approve button's value of the action whose title starts with
/// `title`, read from the message as Slack would show it.
fn slack_approve_value(message: &Value, title: &str) -> String {
    let blocks = message["blocks"].as_array().expect("blocks");
    blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            b["type"] == "section"
                && b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("*{title}")))
        })
        .find_map(|(i, _)| {
            blocks.get(i + 1)?["elements"]
                .as_array()?
                .iter()
                .find(|e| e["action_id"] == "approve")?["value"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no Approve button for {title:?} in {message}"))
}

/// A signed `block_actions` click, as Slack sends it.
async fn slack_click(remedy: &Remedy, fake: &FakeChat, user: &str, value: &str) {
    let status = slack_click_signed(remedy, fake, user, value, SLACK_SECRET).await;
    assert_eq!(status, 200, "Slack click by {user}");
}

/// A click signed with `secret`; the HTTP status remedy answered.
async fn slack_click_signed(
    remedy: &Remedy,
    fake: &FakeChat,
    user: &str,
    value: &str,
    secret: &str,
) -> u16 {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0E2E"},
        "api_app_id": "A0E2E", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1764000000.000001", "channel_id": "C0E2E", "is_ephemeral": false},
        "trigger_id": "123.456.e2e",
        "team": {"id": "T0E2E", "domain": "example"},
        "channel": {"id": "C0E2E", "name": "incidents"},
        "message": {"type": "message", "ts": "1764000000.000001", "text": "report", "blocks": []},
        "response_url": format!("{}/slack/response/e2e", fake.url),
        "actions": [{"type": "button", "action_id": "approve", "block_id": "act", "value": value,
                     "text": {"type": "plain_text", "text": "Approve"}, "action_ts": "1764000001.000001"}]
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let ts = unix_now().to_string();
    let signature = remedy::chat::slack::sign(secret, &ts, body.as_bytes());
    http()
        .post(format!("{}/v1/interactions/slack", remedy.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .expect("click delivered")
        .status()
        .as_u16()
}

fn reply_texts(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| r["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Ephemeral refusals remedy sent back through `response_url`.
fn slack_refusals(fake: &FakeChat) -> Vec<Value> {
    fake.calls("/slack/response/e2e")
        .into_iter()
        .map(|r| r.body)
        .collect()
}

fn unix_now() -> i64 {
    remedy::domain::now_millis() / 1000
}

// ---------------------------------------------------------------------------
// Discord at the HTTP boundary

/// Messages remedy created (reports), not thread replies.
fn discord_reports(fake: &FakeChat) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.path.ends_with("/messages")
                && r.body.get("message_reference").is_none()
        })
        .map(|r| r.body)
        .collect()
}

fn discord_replies(fake: &FakeChat) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.body.get("message_reference").is_some())
        .map(|r| r.body)
        .collect()
}

fn discord_edits(fake: &FakeChat) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.body)
        .collect()
}

/// The Approve button's `custom_id` for the action whose title starts with
/// `title`: its key from the content's action list, then the button.
fn discord_approve_id(message: &Value, title: &str) -> String {
    let content = message["content"].as_str().expect("content");
    let key = content
        .lines()
        .find(|l| l.starts_with("• `") && l.contains(&format!("` {title}")))
        .and_then(|l| l.split('`').nth(1))
        .unwrap_or_else(|| panic!("no action {title:?} in {content}"));
    message["components"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r["components"].as_array().cloned().unwrap_or_default())
        .find(|b| b["label"] == format!("Approve {key}"))
        .and_then(|b| b["custom_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no Approve {key} button in {message}"))
}

/// A signed button interaction, as Discord sends it; returns its answer.
async fn discord_click(remedy: &Remedy, user: &str, custom_id: &str) -> Value {
    let body = json!({
        "id": "1300000000000000001", "application_id": "1200000000000000001", "type": 3,
        "data": {"custom_id": custom_id, "component_type": 2, "id": 3},
        "guild_id": "1100000000000000001", "channel_id": "1000000000000000001",
        "channel": {"id": "1000000000000000001", "type": 0},
        "member": {"user": {"id": user, "username": format!("user{user}"), "global_name": null},
                   "roles": [], "deaf": false, "mute": false, "flags": 0,
                   "joined_at": "2026-01-01T00:00:00+00:00", "permissions": "2147483647"},
        "token": "interaction-token", "version": 1,
        "message": {"id": "900000000000000000", "channel_id": "1000000000000000001"},
        "app_permissions": "2147483647", "locale": "en-US", "guild_locale": "en-US",
        "entitlements": [], "authorizing_integration_owners": {}, "context": 0,
        "attachment_size_limit": 10_485_760
    })
    .to_string();
    let ts = unix_now().to_string();
    let key = SigningKey::from_bytes(&DISCORD_KEY);
    let signature = key.sign(&[ts.as_bytes(), body.as_bytes()].concat());
    let reply = http()
        .post(format!("{}/v1/interactions/discord", remedy.url))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts)
        .header("x-signature-ed25519", hex::encode(signature.to_bytes()))
        .body(body)
        .send()
        .await
        .expect("interaction delivered");
    assert_eq!(reply.status(), 200, "Discord click by {user}");
    reply.json().await.expect("interaction answer")
}

// ---------------------------------------------------------------------------
// Conditions on the target database

/// Waits until every pid is gone from the server.
async fn wait_gone(target: &TargetDb, pids: &[i32]) {
    wait_for("the approved sessions to be gone", WAIT, || async {
        for pid in pids {
            if target.alive(*pid).await {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Runs `sql` on `conn` in the background (it blocks or sleeps); gives the
/// session's pid and the task with the statement's outcome.
async fn in_background(
    mut conn: PgConnection,
    sql: &'static str,
) -> (
    i32,
    tokio::task::JoinHandle<(PgConnection, Result<(), sqlx::Error>)>,
) {
    let pid = harness::backend_pid(&mut conn).await;
    let task = tokio::spawn(async move {
        let result = sqlx::raw_sql(sql).execute(&mut conn).await.map(|_| ());
        (conn, result)
    });
    (pid, task)
}

/// Waits until each pid has been running its statement for `seconds`.
async fn wait_active(target: &TargetDb, pids: &[i32], seconds: f64) {
    let admin = &target.admin_pool();
    wait_for("long-running statements", WAIT, || async move {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from pg_catalog.pg_stat_activity
                  where pid = any($1) and state = 'active'
                    and now() - query_start > make_interval(secs => $2)",
        )
        .bind(pids)
        .bind(seconds)
        .fetch_one(admin)
        .await
        .expect("count active");
        (usize::try_from(n).ok() == Some(pids.len())).then_some(())
    })
    .await;
}

fn evidence_has_pid(text: &str, column: &str, pid: i32) -> bool {
    // Evidence rows are `key=value` pairs separated by two spaces.
    text.contains(&format!("{column}={pid}  ")) || text.contains(&format!("{column}={pid}\\n"))
}

// ---------------------------------------------------------------------------
// Flows through Slack

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_idle_in_transaction_sessions_are_shown_terminated_on_two_approvals_and_resolved() {
    let f = Flow::start(Platform::Slack).await;
    let (_leak_a, pid_a) = f.target.leak("checkout-worker").await;
    let (_leak_b, pid_b) = f.target.leak("report-job").await;
    // Over the (scaled) kill threshold of 2 s.
    f.target.wait_idle(&[pid_a, pid_b], 2.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-idle"),
    ]);
    f.am.fire(&alert).await;

    let report = wait_slack_report(&f.fake, "DatabaseIdleInTransaction").await;
    let text = report.to_string();
    assert!(
        text.contains("[FIRING] DatabaseIdleInTransaction (warning)"),
        "{text}"
    );
    for pid in [pid_a, pid_b] {
        assert!(
            evidence_has_pid(&text, "pid", pid),
            "pid {pid} not in the evidence: {text}"
        );
    }
    assert!(text.contains("2 session(s) idle in transaction"), "{text}");
    // A click signed with another secret is refused and records nothing.
    let forged = slack_approve_value(&report, &format!("Terminate pid {pid_a} ("));
    assert_eq!(
        slack_click_signed(&f.remedy, &f.fake, "U0DEV", &forged, "not-the-secret").await,
        401
    );
    // Destructive: two distinct approvers of backend-developer / team-lead / dba each.
    for pid in [pid_a, pid_b] {
        let value = slack_approve_value(&report, &format!("Terminate pid {pid} ("));
        f.slack_click("U0DEV", &value).await;
        f.slack_click("U0LEAD", &value).await;
    }
    assert!(
        slack_refusals(&f.fake).is_empty(),
        "{:?}",
        slack_refusals(&f.fake)
    );
    wait_gone(&f.target, &[pid_a, pid_b]).await;

    // The message says who approved and that both ran; the thread has each outcome.
    let updated = wait_slack_update(&f.fake, "both executions in the message", |t| {
        t.matches("executed (done)").count() == 2
    })
    .await
    .to_string();
    assert!(
        updated.contains("approved by <@U0DEV>, <@U0LEAD> (2 of 2)"),
        "{updated}"
    );
    // In the thread: each run's outcome, then (verify_after = 1 s) its
    // verdict from a fresh diagnosis, each once. An outcome still waiting
    // for the channel's pace when its verdict comes is posted with it
    // ("done, effective"), so the plain line is there at most once.
    let said = |replies: &[String], key: &str, said: &str| {
        replies
            .iter()
            .filter(|t| t.starts_with(&format!("{key}{said}")))
            .count()
    };
    let keys = ["terminate_stale#1", "terminate_stale#2"];
    let replies = wait_for("two verdicts", WAIT, || async {
        let r = reply_texts(&slack_replies(&f.fake));
        keys.iter()
            .all(|k| said(&r, k, ": done, effective — ") > 0)
            .then_some(r)
    })
    .await;
    for key in keys {
        assert_eq!(
            said(&replies, key, ": done, effective — "),
            1,
            "{replies:?}"
        );
        assert!(said(&replies, key, ": done — ") <= 1, "{replies:?}");
    }
    assert_eq!(
        replies.len(),
        keys.iter()
            .map(|k| 1 + said(&replies, k, ": done — "))
            .sum::<usize>(),
        "nothing else in the thread: {replies:?}"
    );
    assert!(
        slack_replies(&f.fake)
            .iter()
            .all(|r| r["thread_ts"] == "1764000000.000001")
    );

    f.am.resolve(&alert).await;
    let resolved = wait_slack_update(&f.fake, "the RESOLVED update", |t| {
        t.contains("[RESOLVED] DatabaseIdleInTransaction")
    })
    .await;
    assert_eq!(
        resolved["ts"], "1764000000.000001",
        "the report itself is updated"
    );
    assert!(!resolved.to_string().contains("\"action_id\":\"approve\""));
    let incident = f.store.wait_incident("instance", "db-idle").await;
    assert_no_pending_timers(&f.store, incident).await;
    assert_eq!(slack_reports(&f.fake).len(), 1, "one message per incident");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_long_running_query_is_cancelled_and_a_lock_blocker_terminated_then_resolved() {
    let f = Flow::start(Platform::Slack).await;
    let mut admin = f.target.admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table orders (id int primary key); insert into orders values (1), (2);
         grant all on orders to {}",
        harness::APP_ROLE
    )))
    .execute(&mut admin)
    .await
    .expect("orders table");
    // A lock chain: a batch job holds the table in a forgotten transaction,
    // an API query waits behind it.
    let (mut blocker, blocker_pid) = f.target.leak("batch-job").await;
    sqlx::raw_sql("lock table orders in access exclusive mode")
        .execute(&mut blocker)
        .await
        .expect("lock");
    let (blocked_pid, blocked) = in_background(
        f.target.connect_as(harness::APP_ROLE, "api-orders").await,
        "select count(*) from orders",
    )
    .await;
    // And a slow report query.
    let (slow_pid, slow) = in_background(
        f.target.connect_as(harness::APP_ROLE, "slow-report").await,
        "select pg_sleep(30)",
    )
    .await;
    // Over the (scaled) threshold of 1 s.
    wait_active(&f.target, &[blocked_pid, slow_pid], 1.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabaseLongRunningQueries"),
        ("severity", "warning"),
        ("instance", "db-slow"),
    ]);
    f.am.fire(&alert).await;

    let report = wait_slack_report(&f.fake, "DatabaseLongRunningQueries").await;
    let text = report.to_string();
    for pid in [slow_pid, blocked_pid] {
        assert!(
            evidence_has_pid(&text, "pid", pid),
            "long query {pid} not shown: {text}"
        );
    }
    assert!(
        evidence_has_pid(&text, "blocking_pid", blocker_pid),
        "{text}"
    );
    assert!(
        evidence_has_pid(&text, "blocked_pid", blocked_pid),
        "{text}"
    );

    // Cancel the slow query: disruptive, one approver.
    let cancel = slack_approve_value(&report, &format!("Cancel pid {slow_pid} ("));
    f.slack_click("U0DEV", &cancel).await;
    let (_conn, outcome) = tokio::time::timeout(WAIT, slow)
        .await
        .expect("the slow query ended")
        .expect("task");
    let error = outcome.expect_err("the slow query was cancelled");
    assert!(
        error.as_database_error().and_then(|e| e.code()).as_deref() == Some("57014"),
        "{error}"
    );
    // Terminate the blocker: destructive, two DBAs.
    let terminate =
        slack_approve_value(&report, &format!("Terminate blocking pid {blocker_pid} ("));
    f.slack_click("U0DBA1", &terminate).await;
    f.slack_click("U0DBA2", &terminate).await;
    wait_gone(&f.target, &[blocker_pid]).await;
    let (_conn, outcome) = tokio::time::timeout(WAIT, blocked)
        .await
        .expect("the blocked query went through")
        .expect("task");
    outcome.expect("the blocked query completes once the blocker is gone");
    assert!(
        slack_refusals(&f.fake).is_empty(),
        "{:?}",
        slack_refusals(&f.fake)
    );
    wait_slack_update(&f.fake, "both executions in the message", |t| {
        t.matches("executed (done)").count() == 2
    })
    .await;

    f.am.resolve(&alert).await;
    wait_slack_update(&f.fake, "the RESOLVED update", |t| {
        t.contains("[RESOLVED] DatabaseLongRunningQueries")
    })
    .await;
    let incident = f.store.wait_incident("instance", "db-slow").await;
    assert_no_pending_timers(&f.store, incident).await;
    assert_eq!(slack_reports(&f.fake).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_pool_exhaustion_critical_leaks_are_terminated_on_two_approvals_and_resolved() {
    let f = Flow::start(Platform::Slack).await;
    let (_a, pid_a) = f.target.leak("agente-api").await;
    let (_b, pid_b) = f.target.leak("agente-api").await;
    f.target.wait_idle(&[pid_a, pid_b], 2.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabasePoolExhaustionCritical"),
        ("severity", "critical"),
        ("instance", "db-pool"),
    ]);
    f.am.fire(&alert).await;

    let report = wait_slack_report(&f.fake, "DatabasePoolExhaustionCritical").await;
    let text = report.to_string();
    assert!(
        text.contains("[FIRING] DatabasePoolExhaustionCritical (critical)"),
        "{text}"
    );
    assert!(
        text.contains("Connection leak: 2 session(s) idle in transaction"),
        "{text}"
    );
    for pid in [pid_a, pid_b] {
        assert!(
            evidence_has_pid(&text, "pid", pid),
            "pid {pid} not in the evidence: {text}"
        );
    }
    // No Prometheus here (and no docker where it is not installed): those
    // steps are reported as failed.
    assert!(text.contains("Steps that failed"), "{text}");
    assert!(text.contains("`pool_utilization`"), "{text}");
    if !std::path::Path::new("/usr/bin/docker").exists() {
        assert!(text.contains("`queuepool_errors`"), "{text}");
    }
    assert!(text.contains("pool_size = cores * 2 + spindles"), "{text}");
    for pid in [pid_a, pid_b] {
        let value = slack_approve_value(&report, &format!("Terminate pid {pid} ("));
        f.slack_click("U0ONCALL", &value).await;
        f.slack_click("U0LEAD", &value).await;
    }
    assert!(
        slack_refusals(&f.fake).is_empty(),
        "{:?}",
        slack_refusals(&f.fake)
    );
    wait_gone(&f.target, &[pid_a, pid_b]).await;
    let updated = wait_slack_update(&f.fake, "both executions in the message", |t| {
        t.matches("executed (done)").count() == 2
    })
    .await
    .to_string();
    // The restart action was offered and left alone.
    assert!(updated.contains("Approve restart_service"), "{updated}");

    f.am.resolve(&alert).await;
    wait_slack_update(&f.fake, "the RESOLVED update", |t| {
        t.contains("[RESOLVED] DatabasePoolExhaustionCritical")
    })
    .await;
    let incident = f.store.wait_incident("instance", "db-pool").await;
    assert_no_pending_timers(&f.store, incident).await;
    assert_eq!(slack_reports(&f.fake).len(), 1);
}

// ---------------------------------------------------------------------------
// The same flow through Discord

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_idle_in_transaction_sessions_are_terminated_on_signed_clicks_and_resolved() {
    let f = Flow::start(Platform::Discord).await;
    let (_leak, pid) = f.target.leak("checkout-worker").await;
    f.target.wait_idle(&[pid], 2.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-discord"),
    ]);
    f.am.fire(&alert).await;

    let report = wait_for("a Discord report", WAIT, || async {
        discord_reports(&f.fake).into_iter().next()
    })
    .await;
    let content = report["content"].as_str().expect("content");
    assert!(content.contains("DatabaseIdleInTransaction"), "{content}");
    assert!(
        evidence_has_pid(content, "pid", pid),
        "pid {pid} not in the evidence: {content}"
    );
    // Nothing is parsed into a ping; only the initial responder's own
    // users and roles (from the settings) may be notified by the first post.
    let allowed = &report["allowed_mentions"];
    assert!(
        allowed.get("parse").is_none_or(|p| p == &json!([])),
        "{allowed}"
    );
    assert!(!content.contains("@everyone"), "{content}");
    let approve = discord_approve_id(&report, &format!("Terminate pid {pid} ("));
    for user in ["1001", "1002"] {
        let answer = discord_click(&f.remedy, user, &approve).await;
        assert_eq!(answer, json!({"type": 6}), "deferred update for {user}");
    }
    wait_gone(&f.target, &[pid]).await;
    wait_for("the executed edit", WAIT, || async {
        discord_edits(&f.fake).into_iter().find(|e| {
            e["content"]
                .as_str()
                .is_some_and(|c| c.contains("executed (done)"))
        })
    })
    .await;
    let replies = wait_for("the outcome reply", WAIT, || async {
        let r = discord_replies(&f.fake);
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        replies[0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("terminate") && c.contains("done")),
        "{replies:?}"
    );

    f.am.resolve(&alert).await;
    let resolved = wait_for("the RESOLVED edit", WAIT, || async {
        discord_edits(&f.fake).into_iter().find(|e| {
            e["content"]
                .as_str()
                .is_some_and(|c| c.contains("\\[RESOLVED\\]") || c.contains("[RESOLVED]"))
        })
    })
    .await;
    let buttons = resolved["components"].as_array().map_or(0, |rows| {
        rows.iter()
            .filter_map(|r| r["components"].as_array())
            .map(Vec::len)
            .sum()
    });
    assert_eq!(buttons, 0, "no buttons once resolved: {resolved}");
    let incident = f.store.wait_incident("instance", "db-discord").await;
    assert_no_pending_timers(&f.store, incident).await;
    assert_eq!(
        discord_reports(&f.fake).len(),
        1,
        "one message per incident"
    );
}

// ---------------------------------------------------------------------------
// PromQL against a real Prometheus

/// The application's metrics as the runbook's service exposes them: 5xx
/// counters growing per endpoint, the pool gauges, and a health endpoint
/// for the PMS probe. Returns host:port.
async fn serve_app_metrics() -> String {
    let started = Instant::now();
    let metrics = move || async move {
        let t = started.elapsed().as_secs_f64();
        format!(
            "# TYPE http_requests_total counter\n\
             http_requests_total{{endpoint=\"/api/reservations\",status=\"500\"}} {}\n\
             http_requests_total{{endpoint=\"/api/reservations\",status=\"200\"}} {}\n\
             http_requests_total{{endpoint=\"/api/rooms\",status=\"502\"}} {}\n\
             http_requests_total{{endpoint=\"/api/rooms\",status=\"200\"}} {}\n\
             # TYPE db_pool_utilization_percent gauge\n\
             db_pool_utilization_percent 95\n\
             # TYPE db_pool_overflow gauge\n\
             db_pool_overflow 18\n\
             # TYPE db_pool_active_connections gauge\n\
             db_pool_active_connections 12\n\
             # TYPE pms_circuit_breaker_state gauge\n\
             pms_circuit_breaker_state 0\n",
            t * 5.0,
            t * 40.0,
            t * 1.0,
            t * 14.0
        )
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/api/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

/// The number a text starts with (`5.0/s, …` gives 5.0).
fn leading_number(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches('.').parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_evidence_from_a_real_prometheus_reaches_the_slack_reports() {
    let scratch = Scratch::new();
    let app = serve_app_metrics().await;
    let prometheus = Prometheus::start(&scratch, &app).await;
    // Rates need two scrapes of every series.
    wait_for("Prometheus to have 5xx rates", WAIT, || async {
        let r = prometheus
            .query(r#"sum by (endpoint) (rate(http_requests_total{status=~"5.."}[5m]))"#)
            .await;
        (r.len() == 2).then_some(())
    })
    .await;
    let fake = FakeChat::start().await;
    let store = StoreDb::create().await;
    let target = TargetDb::create().await;
    let playbooks = scaled_playbooks(&scratch, &[]);
    let mut config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &target.url,
        ChatTo::Slack(fake.url.clone()),
    );
    config.prometheus_url.clone_from(&prometheus.url);
    config.pms_url = format!("http://{app}");
    let remedy = Remedy::start(&scratch, &config).await;
    let am = Alertmanager::start(&scratch, &[remedy.webhook_url()]).await;

    am.fire(&Alert::new(&[
        ("alertname", "HighErrorRate5xx"),
        ("severity", "critical"),
        ("instance", "api-1"),
    ]))
    .await;
    let report = wait_slack_report(&fake, "HighErrorRate5xx").await;
    let text = report.to_string();
    // 5xx by endpoint, from real PromQL over the scraped counters, which grow
    // by 5/s and 1/s. The runbook's `rate(…[5m])` divides by the whole five
    // minutes while Prometheus holds only seconds of samples, so the values
    // are small; their ratio is the endpoints' real ratio.
    let by_endpoint = text
        .split("5xx by endpoint:")
        .nth(1)
        .unwrap_or_else(|| panic!("no 5xx-by-endpoint finding: {text}"));
    let rate_of = |endpoint: &str| -> f64 {
        by_endpoint
            .split(&format!("{endpoint} "))
            .nth(1)
            .and_then(leading_number)
            .unwrap_or_else(|| panic!("no rate for {endpoint}: {by_endpoint}"))
    };
    let reservations = rate_of("/api/reservations");
    let rooms = rate_of("/api/rooms");
    assert!(rooms > 0.0, "{text}");
    assert!(
        (3.5..7.0).contains(&(reservations / rooms)),
        "{reservations} / {rooms}: {text}"
    );
    assert!(
        text.contains("endpoint=/api/reservations"),
        "evidence rows: {text}"
    );
    // The overall 5xx share: 6 of 60 requests a second.
    let error_rate = text
        .split(" % of requests answer 5xx")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(leading_number)
        .unwrap_or_else(|| panic!("no error-rate finding: {text}"));
    assert!((8.0..12.0).contains(&error_rate), "{error_rate}: {text}");
    assert!(
        text.contains("Cause A, pool exhaustion: the pool is 95.0 % used"),
        "{text}"
    );
    // The PMS probe answered 200 and the breaker is closed: no PMS finding.
    assert!(
        !text.contains("PMS health check") && !text.contains("Cause B"),
        "{text}"
    );

    am.fire(&Alert::new(&[
        ("alertname", "DatabasePoolOverflowHigh"),
        ("severity", "warning"),
        ("instance", "api-1"),
    ]))
    .await;
    let overflow = wait_slack_report(&fake, "DatabasePoolOverflowHigh")
        .await
        .to_string();
    assert!(
        overflow.contains("18 overflow connections in use"),
        "{overflow}"
    );
    assert!(
        overflow.contains("recommended pool size = 12.0 * 1.2 = 15"),
        "{overflow}"
    );
}

// ---------------------------------------------------------------------------
// The shipped alert rules: rule → Prometheus → Alertmanager → remedy

/// The pool gauges: utilisation over the critical threshold, the others
/// under theirs. Returns host:port.
async fn serve_pool_metrics() -> String {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "# TYPE db_pool_utilization_percent gauge\n\
             db_pool_utilization_percent 96.5\n\
             # TYPE db_pool_long_running_queries gauge\n\
             db_pool_long_running_queries 0\n\
             # TYPE db_pool_idle_in_transaction gauge\n\
             db_pool_idle_in_transaction 1\n\
             # TYPE db_pool_overflow gauge\n\
             db_pool_overflow 2\n"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

/// alerts/database-pool.rules.yml as shipped (`for: 1m`, nothing rewritten)
/// in a real Prometheus scraping a pool gauge at 96.5 %: the alert is
/// pending first, then fires to a real Alertmanager, which sends it to
/// remedy, whose Slack report is the critical playbook's diagnosis (its
/// promql step asking the same Prometheus), with the rule's labels and
/// runbook annotation on the incident. No amtool anywhere. It takes the
/// rule's own minute (about 65 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_rule_fires_in_a_real_prometheus_and_reaches_the_slack_report() {
    let scratch = Scratch::new();
    let app = serve_pool_metrics().await;
    let rules =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("alerts/database-pool.rules.yml");
    let prometheus = Prometheus::start_with_rules(&scratch, &app, Some(&rules)).await;
    let fake = FakeChat::start().await;
    let store = StoreDb::create().await;
    let target = TargetDb::create().await;
    let playbooks = scaled_playbooks(&scratch, &[]);
    let mut config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &target.url,
        ChatTo::Slack(fake.url.clone()),
    );
    config.prometheus_url.clone_from(&prometheus.url);
    let remedy = Remedy::start(&scratch, &config).await;
    let am = Alertmanager::start(&scratch, &[remedy.webhook_url()]).await;
    prometheus.send_alerts_to(&am.url).await;

    // The rule holds its `for`: pending before firing, and nothing reached
    // remedy while pending.
    let pending = wait_for("the critical alert pending in Prometheus", WAIT, || async {
        let r = prometheus
            .query(r#"ALERTS{alertname="DatabasePoolExhaustionCritical"}"#)
            .await;
        r.into_iter().next()
    })
    .await;
    assert_eq!(pending["metric"]["alertstate"], "pending", "{pending}");
    assert!(slack_reports(&fake).is_empty());

    let report = wait_for(
        "the Slack report of the rule's alert",
        Duration::from_secs(100),
        || async {
            slack_reports(&fake)
                .into_iter()
                .find(|b| b.to_string().contains("DatabasePoolExhaustionCritical"))
        },
    )
    .await;
    let text = report.to_string();
    assert!(
        text.contains("The application reports its pool 96.5 % used"),
        "{text}"
    );
    // Only this rule fired: the others are under their thresholds (or, for
    // the warning, still within their five minutes).
    assert_eq!(slack_reports(&fake).len(), 1, "{:?}", slack_reports(&fake));
    let incidents = remedy.incidents("").await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let incident = &incidents[0];
    assert_eq!(incident["alertname"], "DatabasePoolExhaustionCritical");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["labels"]["service"], "agente-api");
    assert_eq!(incident["labels"]["instance"], app.as_str());
    assert_eq!(
        incident["annotations"]["runbook_url"],
        "runbook/database-pool-alerts.md#databasepoolexhaustioncritical"
    );
    assert_eq!(
        incident["annotations"]["summary"],
        format!("Connection pool 96.5 % used on {app}")
    );
}

// ---------------------------------------------------------------------------
// High availability: two replicas on one PostgreSQL store

/// Alertmanager sends every notification to both replicas; they share the
/// store, so the incident, its chat message, its execution and its outcome
/// reply each exist once. (Escalation pings, once remedy sends them, are
/// counted here the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_store_make_one_incident_one_message_one_execution_one_ping() {
    let scratch = Scratch::new();
    let fake = FakeChat::start().await;
    let store = StoreDb::create().await;
    let target = TargetDb::create().await;
    let playbooks = scaled_playbooks(&scratch, &[]);
    // The runbook's Team Lead escalation, due 3 s after the incident opens.
    let matrix = scratch.write(
        "escalation.yaml",
        "roles: {backend-developer: Backend Developer, team-lead: Team Lead}
policies:
  - alert: DatabaseIdleInTransaction
    initial: backend-developer
    escalate: [{to: team-lead, after: 3s}]
default:
  initial: backend-developer
  review_after: 24h
",
    );
    let config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &target.url,
        ChatTo::Slack(fake.url.clone()),
    )
    .env("REMEDY__ESCALATION__FILE", matrix.to_str().expect("utf-8"));
    let a = Remedy::start(&scratch, &config).await;
    let b = Remedy::start(&scratch, &config).await;
    // One receiver, one webhook_config per replica: both get every notification.
    let am = Alertmanager::start(&scratch, &[a.webhook_url(), b.webhook_url()]).await;

    let (_leak, pid) = target.leak("checkout-worker").await;
    target.wait_idle(&[pid], 2.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-ha"),
    ]);
    am.fire(&alert).await;
    let report = wait_slack_report(&fake, "DatabaseIdleInTransaction").await;
    for replica in [&a, &b] {
        wait_for("each replica to receive the notification", WAIT, || async {
            (replica.metric_sum("remedy_notifications_total", &[]).await >= 1.0).then_some(())
        })
        .await;
    }
    // Both replicas run a scheduler; the Team Lead is pinged once.
    wait_for("the escalation ping", WAIT, || async {
        reply_texts(&slack_replies(&fake))
            .iter()
            .any(|t| t.contains("Escalation to Team Lead"))
            .then_some(())
    })
    .await;
    // One approver clicks on each replica.
    let value = slack_approve_value(&report, &format!("Terminate pid {pid} ("));
    slack_click(&a, &fake, "U0DEV", &value).await;
    slack_click(&b, &fake, "U0LEAD", &value).await;
    wait_gone(&target, &[pid]).await;
    wait_slack_update(&fake, "the execution in the message", |t| {
        t.contains("executed (done)")
    })
    .await;
    // The outcome, then the verdict of the effect check, in the thread.
    wait_for("the outcome and its verdict", WAIT, || async {
        let r = reply_texts(&slack_replies(&fake));
        r.iter()
            .any(|t| t.starts_with("terminate_stale: done, effective — "))
            .then_some(())
    })
    .await;
    am.resolve(&alert).await;
    wait_slack_update(&fake, "the RESOLVED update", |t| t.contains("[RESOLVED]")).await;
    let incident = store.wait_incident("instance", "db-ha").await;
    assert_no_pending_timers(&store, incident).await;

    assert_eq!(store.count("select count(*) from incidents").await, 1);
    assert!(
        store
            .count("select coalesce(sum(seen_count), 0)::bigint from notifications where status = 'firing'")
            .await
            >= 2,
        "both replicas took the firing notification"
    );
    assert_eq!(store.count("select count(*) from executions").await, 1);
    assert_eq!(
        store
            .count("select count(*) from audit_log where event = 'execution_started'")
            .await,
        1
    );
    assert_eq!(slack_reports(&fake).len(), 1, "one chat message");
    let replies = reply_texts(&slack_replies(&fake));
    let (pings, replies): (Vec<String>, Vec<String>) = replies
        .into_iter()
        .partition(|t| t.contains("Escalation to Team Lead"));
    assert_eq!(pings.len(), 1, "one escalation ping: {pings:?}");
    assert!(pings[0].starts_with("<@U0LEAD>"), "{pings:?}");
    assert_eq!(
        store
            .count("select count(*) from incident_events where kind = 'escalated'")
            .await,
        1
    );
    assert_eq!(
        replies
            .iter()
            .map(|t| t.split(" — ").next().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["terminate_stale: done", "terminate_stale: done, effective"],
        "one outcome and one verdict: {replies:?}"
    );
}

const SLOW_PLAYBOOK: &str = r#"
name: E2eSlowDiagnosis
description: A diagnosis that takes two seconds, to be interrupted.
match: ['alertname="E2eSlowDiagnosis"']
target: main
steps:
  - id: slow
    kind: sql
    query: select 'finished after a pause' as note from pg_sleep(2)
    timeout: 10s
findings:
  - when: steps.slow.ok
    severity: info
    text: "slow diagnosis {{ steps.slow.rows[0].note }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_in_the_middle_of_a_diagnosis_leaves_the_work_to_the_other() {
    let scratch = Scratch::new();
    let fake = FakeChat::start().await;
    let store = StoreDb::create().await;
    let target = TargetDb::create().await;
    let playbooks = scaled_playbooks(&scratch, &[("e2e-slow.yaml", SLOW_PLAYBOOK)]);
    let config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &target.url,
        ChatTo::Slack(fake.url.clone()),
    )
    .env("REMEDY__WORKER__LEASE", "3s");
    let mut replicas = [
        Remedy::start(&scratch, &config).await,
        Remedy::start(&scratch, &config).await,
    ];
    let am = Alertmanager::start(
        &scratch,
        &[replicas[0].webhook_url(), replicas[1].webhook_url()],
    )
    .await;
    am.fire(&Alert::new(&[
        ("alertname", "E2eSlowDiagnosis"),
        ("severity", "warning"),
        ("instance", "db-kill"),
    ]))
    .await;

    // The replica holding the diagnosis, while its query runs.
    let owner: String = wait_for("a diagnosis in progress", WAIT, || async {
        let owner: Option<String> = sqlx::query_scalar(
            "select lease_owner from work where kind = 'diagnose' and state = 'pending'
                and lease_owner is not null",
        )
        .fetch_optional(&store.pool)
        .await
        .expect("work");
        let mut admin = target.admin().await;
        let sleeping: i64 = sqlx::query_scalar(
            "select count(*) from pg_catalog.pg_stat_activity
              where datname = current_database() and application_name = 'remedy'
                and state = 'active' and query like '%pg_sleep(2)%'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("activity");
        owner.filter(|_| sleeping > 0)
    })
    .await;
    let pid: u32 = owner
        .split('-')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("worker name {owner}"));
    let victim = replicas
        .iter()
        .position(|r| r.proc.pid() == pid)
        .expect("the lease holder is one of the replicas");
    replicas[victim].proc.kill();
    let survivor = &mut replicas[1 - victim];

    let report = wait_slack_report(&fake, "E2eSlowDiagnosis").await;
    assert!(
        report
            .to_string()
            .contains("slow diagnosis finished after a pause"),
        "{report}"
    );
    let (state, attempts, last_owner): (String, i64, Option<String>) =
        sqlx::query_as("select state, attempts, lease_owner from work where kind = 'diagnose'")
            .fetch_one(&store.pool)
            .await
            .expect("diagnose work");
    assert_eq!(state, "done");
    assert_eq!(
        attempts, 2,
        "claimed by the killed replica, then by the survivor"
    );
    assert!(last_owner.is_none());
    assert!(survivor.proc.running(), "the survivor is up");
    assert_eq!(store.count("select count(*) from incidents").await, 1);
    assert_eq!(slack_reports(&fake).len(), 1, "one chat message");
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_database_shows_failed_steps_and_the_next_incident_works() {
    let f = Flow::start(Platform::Slack).await;
    // The application's database becomes unreachable: its sessions (remedy's
    // pooled ones too) are ended and it refuses new connections.
    f.target.cut_off().await;
    f.am.fire(&Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-gone"),
    ]))
    .await;
    let failed = wait_slack_report(&f.fake, "instance=db-gone")
        .await
        .to_string();
    assert!(failed.contains("Steps that failed"), "{failed}");
    for step in ["idle_sessions", "stale_sessions", "connections_by_state"] {
        assert!(failed.contains(&format!("`{step}`")), "{step}: {failed}");
    }
    assert!(
        failed.contains("is not currently accepting connections"),
        "{failed}"
    );
    assert_eq!(f.remedy.status("/healthz").await, 200, "remedy stays up");

    // The database is back: the next incident is diagnosed normally.
    f.target.restore().await;
    let (_leak, pid) = f.target.leak("checkout-worker").await;
    f.target.wait_idle(&[pid], 2.5).await;
    f.am.fire(&Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-back"),
    ]))
    .await;
    let report = wait_slack_report(&f.fake, "instance=db-back").await;
    let text = report.to_string();
    // Every database step ran; only the application's gauge, asked of a
    // Prometheus this test does not run, failed.
    let failed = text.split("Steps that failed").nth(1).unwrap_or_default();
    assert!(
        failed.contains("`app_idle_in_transaction`")
            && [
                "idle_sessions",
                "stale_sessions",
                "leaking_roles",
                "connections_by_state"
            ]
            .iter()
            .all(|step| !failed.contains(&format!("`{step}`"))),
        "{text}"
    );
    assert!(evidence_has_pid(&text, "pid", pid), "{text}");
    slack_approve_value(&report, &format!("Terminate pid {pid} ("));
    assert_eq!(slack_reports(&f.fake).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_api_answering_500_then_429_gets_the_report_later_once_and_intake_goes_on() {
    let f = Flow::start(Platform::Slack).await;
    // Two server errors, then a rate limit of 2 s; then Slack is back.
    f.fake.script([
        Scripted::Status(500),
        Scripted::Status(500),
        Scripted::SlackRateLimited(2),
    ]);
    f.am.fire(&Alert::new(&[
        ("alertname", "DatabasePoolExhaustionWarning"),
        ("severity", "warning"),
        ("instance", "db-chat"),
    ]))
    .await;
    let first = f.store.wait_incident("instance", "db-chat").await;
    wait_for("the first (failing) post", WAIT, || async {
        (!f.fake.calls("/chat.postMessage").is_empty()).then_some(())
    })
    .await;
    // Intake does not wait for chat: a second alert is taken meanwhile.
    f.am.fire(&Alert::new(&[
        ("alertname", "DatabasePoolOverflowHigh"),
        ("severity", "warning"),
        ("instance", "db-chat-2"),
    ]))
    .await;
    let second = f.store.wait_incident("instance", "db-chat-2").await;

    wait_slack_report(&f.fake, "instance=db-chat`").await;
    wait_slack_report(&f.fake, "instance=db-chat-2").await;
    for incident in [first, second] {
        wait_for("no pending notify work", WAIT, || async {
            (f.store.pending_work(incident).await == 0).then_some(())
        })
        .await;
    }
    // Each incident's message was delivered once: five calls, three of
    // which were the scripted failures.
    assert_eq!(f.fake.calls("/chat.postMessage").len(), 5);
    let delivered: Vec<(i64, i64, i64)> = sqlx::query_as(
        "select m.incident_id, i.opened_at, m.updated_at from chat_messages m
           join incidents i on i.id = m.incident_id
          where m.message_id is not null order by m.incident_id",
    )
    .fetch_all(&f.store.pool)
    .await
    .expect("chat messages");
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    let (_, opened, posted) = delivered[0];
    assert!(
        posted - opened >= 2_000,
        "the first report waited for the retries ({} ms)",
        posted - opened
    );
    // The second incident was opened while the first report was still failing.
    let second_opened: i64 = sqlx::query_scalar("select opened_at from incidents where id = $1")
        .bind(second)
        .fetch_one(&f.store.pool)
        .await
        .expect("opened_at");
    assert!(
        second_opened < posted,
        "intake went on during the chat outage"
    );
    // Alertmanager delivered both groups, and remedy accepted every webhook at once.
    let webhook = [("integration", "webhook")];
    assert!(
        f.am.metric_sum("alertmanager_notification_requests_total", &webhook)
            .await
            >= 2.0
    );
    assert_eq!(
        f.am.metric_sum("alertmanager_notification_requests_failed_total", &webhook)
            .await,
        0.0,
        "every webhook was accepted at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_503_and_alertmanager_retries_lose_nothing() {
    let scratch = Scratch::new();
    let mut pg = PrivatePostgres::start(&scratch).await;
    let store = StoreDb::at(pg.create_database("remedy_store").await);
    let playbooks = scratch.path("no-playbooks");
    std::fs::create_dir_all(&playbooks).expect("dir");
    let config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &common::postgres_admin_url(),
        ChatTo::Console,
    )
    .env("REMEDY__STORE__ACQUIRE_TIMEOUT", "1s");
    let mut remedy = Remedy::start(&scratch, &config).await;
    let am = Alertmanager::start(&scratch, &[remedy.webhook_url()]).await;
    let alert = |instance: &'static str| {
        Alert::new(&[
            ("alertname", "E2eStoreOutage"),
            ("severity", "warning"),
            ("instance", instance),
        ])
    };
    am.fire(&alert("before")).await;
    store.wait_incident("instance", "before").await;

    pg.stop();
    // remedy answers 503 (Alertmanager retries 5xx) and is not ready.
    let payload = common::firing("e2e0000000000001", "2026-11-27T01:00:00Z");
    let status = wait_for("503 from intake", WAIT, || async {
        let reply = http()
            .post(remedy.webhook_url())
            .bearer_auth(WEBHOOK_TOKEN)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await
            .ok()?;
        (reply.status() == 503).then_some(reply.status())
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(remedy.status("/readyz").await, 503);
    am.fire(&alert("during-1")).await;
    am.fire(&alert("during-2")).await;
    // Alertmanager's deliveries of both groups fail with remedy's 503…
    wait_for("Alertmanager's failed attempts", WAIT, || async {
        (am.metric_sum(
            "alertmanager_notification_requests_failed_total",
            &[("integration", "webhook")],
        )
        .await
            >= 2.0)
            .then_some(())
    })
    .await;
    let answered_503 = remedy
        .metric_sum(
            "remedy_http_request_duration_seconds_count",
            &[("route", "/v1/alertmanager"), ("status", "503")],
        )
        .await;
    assert!(
        answered_503 >= 3.0,
        "our probe and Alertmanager's attempts got 503 ({answered_503})"
    );
    assert!(remedy.proc.running(), "remedy survives the outage");

    // …and succeed once the store is back: nothing is lost.
    pg.restart().await;
    for instance in ["during-1", "during-2"] {
        store.wait_incident("instance", instance).await;
    }
    assert_eq!(remedy.status("/readyz").await, 200);
    let incidents: Vec<String> =
        sqlx::query_scalar("select labels ->> 'instance' from incidents order by 1")
            .fetch_all(&store.pool)
            .await
            .expect("incidents");
    assert_eq!(incidents, ["before", "during-1", "during-2"]);
    assert!(remedy.proc.running());
}
