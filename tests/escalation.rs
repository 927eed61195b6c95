//! The escalation matrix end to end on the HTTP boundary: timers created
//! when an incident opens, fired by the scheduler with the clock passed in
//! (no sleeping), pings in the report's thread on a fake Slack, Ack /
//! Snooze / Silence clicks signed as Slack signs them, resolve, restarts,
//! two schedulers on one PostgreSQL, and the exported incident record.

mod common;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_chat::{FakeChat, SLACK_TOKEN, UNPACED};
use common::{Backend, Reply, TestApp, send};
use remedy::app::App;
use remedy::domain::now_millis;
use remedy::engine::{self, Engine, WorkerSettings, escalate};
use serde_json::{Value, json};
use sqlx::Connection;

const SIGNING_SECRET: &str = "slack-signing-secret-for-escalation-tests";
const MINUTE: i64 = 60_000;

on_both_stores!(
    each_time_based_row_pings_its_role_once_when_due,
    resolve_cancels_the_timers,
    ack_pauses_escalation_and_an_unauthorized_ack_is_refused,
    snooze_postpones_the_next_ping,
    a_repeating_level_re_pings_until_acknowledged_and_stops_at_its_bound,
    a_restart_with_due_timers_fires_them_once_marked_late,
    console_responders_ack_snooze_and_silence_through_the_api,
    a_recurring_alert_escalates_at_once,
    a_critical_incident_gets_a_summary_and_a_postmortem_checklist_when_it_resolves,
    the_exported_timeline_lists_every_recorded_event_in_order,
);

/// Who holds the matrix's roles (Slack users; the team lead also through a
/// user group, which mentions as `<!subteam^…>`).
const ROLES: &str = r#"
[people.olga]
api_token = "olga-token"
[people.mallory]
api_token = "mallory-token"

[approvers.on-call-engineer]
slack_users = ["U0ONCALL"]
console_users = ["olga"]

[approvers.team-lead]
slack_users = ["U0LEAD"]
slack_groups = ["S0LEADS"]

[approvers.backend-developer]
slack_users = ["U0BACK"]

[approvers.dba]
slack_users = ["U0DBA"]

[approvers.devops]
slack_users = ["U0OPS"]

[approvers.cto]
slack_users = ["U0CTO"]
"#;

/// A playbook whose one action (an echo) changes nothing, so its
/// verification says ineffective.
const ECHO_PLAYBOOK: &str = r#"
name: EscTest
match: ['alertname="EscTest"']
findings:
  - severity: warning
    text: "Still broken: {{ labels.note }}"
actions:
  - id: echo
    title: Echo the note
    kind: command
    risk: safe
    approvers: [on-call-engineer]
    quorum: 1
    program: /bin/echo
    args: ["{{ labels.note }}"]
"#;

struct Esc {
    app: TestApp,
    fake: FakeChat,
    toml: PathBuf,
    env: Vec<(String, String)>,
}

fn dir_with(playbook: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-esc-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    if let Some(text) = playbook {
        std::fs::write(dir.join("esc-test.yaml"), text).expect("playbook");
    }
    dir
}

async fn setup(backend: Backend, playbooks: &Path, extra: &[(&str, &str)]) -> Esc {
    let fake = FakeChat::start().await;
    let toml = std::env::temp_dir().join(format!("remedy-esc-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&toml, ROLES).expect("settings");
    let mut env: Vec<(String, String)> = [
        ("REMEDY__PLAYBOOKS__DIR", playbooks.to_str().expect("utf-8")),
        ("REMEDY__CHAT__PLATFORM", "slack"),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0INCIDENTS"),
        (
            "REMEDY__CHAT__SLACK__API_URL",
            &format!("{}/slack/api", fake.url),
        ),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        ("REMEDY__CHAT__SLACK__SIGNING_SECRET", SIGNING_SECRET),
        // Unpaced: these tests are about what is posted, not how fast
        // (tests/pacing.rs is).
        ("REMEDY__CHAT__SLACK__POST_RATE", UNPACED),
        ("REMEDY__CHAT__SLACK__UPDATE_RATE", UNPACED),
        ("REMEDY__COMMANDS__ALLOW", "/bin/echo"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let store_url = common::fresh_store_url(backend).await;
    let app = build(&store_url, &toml, &env).await;
    Esc {
        app,
        fake,
        toml,
        env,
    }
}

async fn build(store_url: &str, toml: &Path, env: &[(String, String)]) -> TestApp {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = common::test_settings_with_file(store_url, Some(toml), &pairs);
    let app = App::build(settings).await.expect("app builds");
    TestApp {
        router: app.router(),
        store: app.state.store.clone(),
        app,
        store_url: store_url.to_owned(),
    }
}

fn alert(
    name: &str,
    severity: &str,
    fingerprint: &str,
    starts_at: &str,
    ends_at: Option<&str>,
) -> Value {
    json!({
        "status": if ends_at.is_some() { "resolved" } else { "firing" },
        "labels": {"alertname": name, "severity": severity, "service": "agente-api", "note": "n"},
        "annotations": {"summary": format!("{name} on agente-api")},
        "startsAt": starts_at,
        "endsAt": ends_at.unwrap_or("0001-01-01T00:00:00Z"),
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    })
}

fn notification(alerts: &[Value]) -> String {
    let status = if alerts.iter().all(|a| a["status"] == "resolved") {
        "resolved"
    } else {
        "firing"
    };
    json!({
        "receiver": "remedy", "status": status, "version": "4", "alerts": alerts,
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{x=\"{}\"}}", uuid::Uuid::now_v7()), "truncatedAlerts": 0
    })
    .to_string()
}

fn worker() -> WorkerSettings {
    WorkerSettings::new("escalation-test-worker".into())
}

impl Esc {
    fn engine(&self) -> &Engine {
        &self.app.app.engine
    }

    /// Runs the worker until nothing is due at `at`.
    async fn drain(&self, at: i64) {
        drain(self.engine(), at).await;
    }

    /// Opens an incident of `name` and lets the worker diagnose and post it.
    async fn open(
        &self,
        name: &str,
        severity: &str,
        fingerprint: &str,
        starts_at: &str,
    ) -> (i64, i64) {
        let reply = self
            .app
            .post_webhook(notification(&[alert(
                name,
                severity,
                fingerprint,
                starts_at,
                None,
            )]))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        self.drain(now_millis()).await;
        let id = common::scalar::<i64>(
            &self.app.store,
            &format!("select max(id) from incidents where fingerprint = '{fingerprint}'"),
        )
        .await;
        let opened = common::scalar::<i64>(
            &self.app.store,
            &format!("select opened_at from incidents where id = {id}"),
        )
        .await;
        (id, opened)
    }

    async fn resolve(
        &self,
        name: &str,
        severity: &str,
        fingerprint: &str,
        starts_at: &str,
        ends_at: &str,
    ) {
        let reply = self
            .app
            .post_webhook(notification(&[alert(
                name,
                severity,
                fingerprint,
                starts_at,
                Some(ends_at),
            )]))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }

    async fn fire(&self, at: i64) -> usize {
        escalate::fire_due(self.engine(), at).await.expect("fire")
    }

    /// Fires what is due at `at` and posts the pings.
    async fn tick(&self, at: i64) -> usize {
        let fired = self.fire(at).await;
        self.drain(at).await;
        fired
    }

    /// Messages posted that are not reports (no blocks): pings, results.
    fn thread_posts(&self) -> Vec<Value> {
        self.fake
            .calls("/chat.postMessage")
            .into_iter()
            .filter(|r| r.body.get("blocks").is_none())
            .map(|r| r.body)
            .collect()
    }

    fn pings(&self) -> Vec<Value> {
        self.thread_posts()
            .into_iter()
            .filter(|b| {
                let t = b["text"].as_str().unwrap_or_default();
                t.contains("Escalation to")
                    || t.contains("Reminder")
                    || t.contains("Review reminder")
            })
            .collect()
    }

    async fn click(&self, user: &str, action_id: &str, incident: i64) -> Reply {
        let body = slack_payload(
            user,
            action_id,
            &incident.to_string(),
            &format!("{}/slack/response/1", self.fake.url),
        );
        let ts = (now_millis() / 1000).to_string();
        let signature = remedy::chat::slack::sign(SIGNING_SECRET, &ts, body.as_bytes());
        let request = Request::post("/v1/interactions/slack")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", signature)
            .body(Body::from(body))
            .expect("request");
        send(&self.app.router, request).await
    }

    async fn timer_states(&self, id: i64) -> Vec<String> {
        common::column(
            &self.app.store,
            &format!("select kind || ':' || level || ':' || nth || ':' || state from escalation_timers where incident_id = {id} order by level, nth"),
        )
        .await
    }

    async fn events(&self, id: i64) -> Vec<String> {
        common::column(
            &self.app.store,
            &format!("select kind from incident_events where incident_id = {id} order by id"),
        )
        .await
    }
}

async fn drain(engine: &Engine, at: i64) {
    for _ in 0..12 {
        if engine::step(engine, &worker(), at).await.expect("step") == 0 {
            return;
        }
    }
    panic!("work kept coming");
}

fn slack_payload(user: &str, action_id: &str, value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEAM"},
        "api_app_id": "A0APP", "token": "deprecated",
        "container": {"type": "message", "message_ts": "1764000000.000001", "channel_id": "C0INCIDENTS"},
        "trigger_id": "1.2.3", "team": {"id": "T0TEAM", "domain": "example"},
        "channel": {"id": "C0INCIDENTS", "name": "incidents"},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "ctl-1-0-0", "value": value,
                     "text": {"type": "plain_text", "text": "x"}, "action_ts": "1764000001.000001"}]
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

fn text(v: &Value) -> String {
    v["text"].as_str().unwrap_or_default().to_owned()
}

/// The runbook's time-based rows and the default policy: nobody is pinged
/// a second early, the escalate-to role is pinged once when due, in the
/// report's thread; the N/A row pings nobody and posts a review reminder.
async fn each_time_based_row_pings_its_role_once_when_due(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    // (alert, severity, due after, mention expected in the ping, or none)
    let rows: [(&str, &str, i64, Option<&str>, &str); 4] = [
        (
            "DatabasePoolExhaustionCritical",
            "critical",
            15 * MINUTE,
            Some("<@U0LEAD> <!subteam^S0LEADS>"),
            "Escalation to Team Lead",
        ),
        (
            "HighErrorRate5xx",
            "critical",
            10 * MINUTE,
            Some("<@U0CTO>"),
            "Escalation to CTO",
        ),
        (
            "DatabasePoolOverflowHigh",
            "warning",
            24 * 60 * MINUTE,
            None,
            "Review reminder for DevOps",
        ),
        (
            "DatabasePoolExhaustionWarning",
            "warning",
            30 * MINUTE,
            Some("<@U0LEAD> <!subteam^S0LEADS>"),
            "Escalation to Team Lead",
        ),
    ];
    for (n, (name, severity, after, mention, says)) in rows.into_iter().enumerate() {
        let fingerprint = format!("a0a0a0a0a0a0a0{n:02}");
        let (id, opened) = s
            .open(name, severity, &fingerprint, "2026-11-27T01:00:00Z")
            .await;
        // The report mentions the initial responder.
        let report = s
            .fake
            .calls("/chat.postMessage")
            .into_iter()
            .rfind(|r| r.body.get("blocks").is_some())
            .expect("report posted");
        let initial = match name {
            "DatabasePoolOverflowHigh" => "<@U0OPS> (DevOps)",
            _ => "<@U0ONCALL> (On-Call Engineer)",
        };
        assert!(
            report.body.to_string().contains(initial),
            "{name}: {}",
            report.body
        );
        let before = s.pings().len();
        assert_eq!(
            s.tick(opened + after - 1_000).await,
            0,
            "{name}: not a second early"
        );
        assert_eq!(s.pings().len(), before);
        assert_eq!(s.tick(opened + after).await, 1, "{name}: fires when due");
        assert_eq!(
            s.tick(opened + after + 5 * MINUTE).await,
            0,
            "{name}: never twice"
        );
        let pings = s.pings();
        assert_eq!(pings.len(), before + 1, "{name}");
        let ping = &pings[before];
        let t = text(ping);
        assert!(t.contains(says), "{name}: {t}");
        assert!(t.contains(&format!("incident #{id}")), "{t}");
        match mention {
            Some(m) => assert!(t.starts_with(m), "{name}: {t}"),
            None => assert!(
                !t.contains("<@") && !t.contains("<!"),
                "the N/A row pings nobody: {t}"
            ),
        }
        // In the report's thread, shown in the channel too.
        assert!(ping["thread_ts"].is_string(), "{ping}");
        assert_eq!(ping["reply_broadcast"], true);
        assert!(s.events(id).await.contains(&"pinged".to_owned()));
        // Resolved, it leaves the next row's clock alone.
        s.resolve(
            name,
            severity,
            &fingerprint,
            "2026-11-27T01:00:00Z",
            "2026-11-27T02:00:00Z",
        )
        .await;
        s.drain(now_millis()).await;
    }
}

async fn resolve_cancels_the_timers(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let fp = "b1b1b1b1b1b1b1b1";
    let (id, opened) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            fp,
            "2026-11-27T01:00:00Z",
        )
        .await;
    assert_eq!(s.timer_states(id).await, ["escalate:1:0:pending"]);
    s.resolve(
        "DatabasePoolExhaustionCritical",
        "critical",
        fp,
        "2026-11-27T01:00:00Z",
        "2026-11-27T01:05:00Z",
    )
    .await;
    s.drain(now_millis()).await;
    assert_eq!(s.timer_states(id).await, ["escalate:1:0:cancelled"]);
    assert_eq!(s.tick(opened + 60 * MINUTE).await, 0);
    assert!(s.pings().is_empty());
    assert!(
        s.events(id)
            .await
            .contains(&"escalation_cancelled".to_owned())
    );
}

async fn ack_pauses_escalation_and_an_unauthorized_ack_is_refused(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let (id, opened) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "c2c2c2c2c2c2c2c2",
            "2026-11-27T01:00:00Z",
        )
        .await;
    // The report offers Acknowledge, Snooze and Silence.
    let report = s.fake.calls("/chat.postMessage")[0].body.clone();
    let ids: Vec<String> = report["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["action_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        ids[..5],
        [
            "ack",
            "snooze:900",
            "snooze:3600",
            "silence:3600",
            "silence:14400"
        ],
        "{ids:?}"
    );

    // Someone outside the policy's roles: refused, said to them, recorded.
    let reply = s.click("U0STRANGER", "ack", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(s.timer_states(id).await, ["escalate:1:0:pending"]);
    let refusals = s.fake.calls("/slack/response/1");
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].body.to_string().contains("not a responder"),
        "{}",
        refusals[0].body
    );
    assert!(s.events(id).await.contains(&"ack_refused".to_owned()));

    // The on-call engineer acknowledges: nothing fires on time any more.
    let reply = s.click("U0ONCALL", "ack", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(s.timer_states(id).await, ["escalate:1:0:paused"]);
    s.drain(now_millis()).await;
    assert_eq!(s.tick(opened + 60 * MINUTE).await, 0);
    assert!(s.pings().is_empty());
    let updated = s.fake.calls("/chat.update");
    let last = updated
        .last()
        .expect("the report was updated")
        .body
        .to_string();
    assert!(last.contains("acknowledged by <@U0ONCALL>"), "{last}");
    assert!(
        !last.contains("\"ack\""),
        "no Acknowledge button once acknowledged: {last}"
    );
    let acks = common::scalar::<i64>(&s.app.store, &format!("select count(*) from incident_events where incident_id = {id} and kind = 'acknowledged'")).await;
    assert_eq!(acks, 1);
    // A second Ack is a repeat, not a second record.
    s.click("U0LEAD", "ack", id).await;
    let acks = common::scalar::<i64>(&s.app.store, &format!("select count(*) from incident_events where incident_id = {id} and kind = 'acknowledged'")).await;
    assert_eq!(acks, 1);
}

async fn snooze_postpones_the_next_ping(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let (id, opened) = s
        .open(
            "HighErrorRate5xx",
            "critical",
            "d3d3d3d3d3d3d3d3",
            "2026-11-27T01:00:00Z",
        )
        .await;
    let clicked = now_millis();
    let reply = s.click("U0ONCALL", "snooze:3600", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    let due: i64 = common::scalar(
        &s.app.store,
        &format!("select due_at from escalation_timers where incident_id = {id}"),
    )
    .await;
    assert!(
        due >= clicked + 60 * MINUTE && due <= now_millis() + 60 * MINUTE,
        "due {due}"
    );
    // Where it would have fired: nothing; an hour after the snooze: once.
    assert_eq!(s.tick(opened + 10 * MINUTE).await, 0);
    assert_eq!(s.tick(due - 1).await, 0);
    assert_eq!(s.tick(due).await, 1);
    assert_eq!(s.pings().len(), 1);
    assert!(s.events(id).await.contains(&"snoozed".to_owned()));
    // A length the matrix does not offer is refused.
    let reply = s.click("U0ONCALL", "snooze:60", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    let refusals = s.fake.calls("/slack/response/1");
    assert!(
        refusals
            .last()
            .expect("refusal")
            .body
            .to_string()
            .contains("snooze for one of: 15m, 1h")
    );
}

async fn a_repeating_level_re_pings_until_acknowledged_and_stops_at_its_bound(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let (id, opened) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "e4e4e4e4e4e4e4e4",
            "2026-11-27T01:00:00Z",
        )
        .await;
    // Level 1 at 15 min, then re-pings every 15 min, twice (the matrix's bound).
    for (at, fired) in [(15, 1), (29, 0), (30, 1), (45, 1), (60, 0), (600, 0)] {
        assert_eq!(s.tick(opened + at * MINUTE).await, fired, "at {at} min");
    }
    let pings: Vec<String> = s.pings().iter().map(text).collect();
    assert_eq!(pings.len(), 3, "{pings:?}");
    assert!(
        pings[1].contains("Reminder 1") && pings[2].contains("Reminder 2"),
        "{pings:?}"
    );
    assert_eq!(
        s.timer_states(id).await,
        [
            "escalate:1:0:fired",
            "escalate:1:1:fired",
            "escalate:1:2:fired"
        ]
    );

    // Acknowledged between pings: the re-ping waiting is paused.
    let (id2, opened2) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "e4e4e4e4e4e4e4e5",
            "2026-11-27T01:00:00Z",
        )
        .await;
    assert_eq!(s.tick(opened2 + 15 * MINUTE).await, 1);
    s.click("U0LEAD", "ack", id2).await;
    assert_eq!(s.tick(opened2 + 600 * MINUTE).await, 0);
    assert_eq!(
        s.timer_states(id2).await,
        ["escalate:1:0:fired", "escalate:1:1:paused"]
    );
}

async fn a_restart_with_due_timers_fires_them_once_marked_late(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let (id, opened) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "f5f5f5f5f5f5f5f5",
            "2026-11-27T01:00:00Z",
        )
        .await;
    let store_url = s.app.store_url.clone();
    // remedy stops; the timer falls due 20 minutes into the downtime.
    let Esc {
        app,
        fake,
        toml,
        env,
    } = s;
    let TestApp { app, router, .. } = app;
    drop(router);
    drop(app.drain().await);
    let restarted = build(&store_url, &toml, &env).await;
    let s = Esc {
        app: restarted,
        fake,
        toml,
        env,
    };
    let back = opened + 35 * MINUTE;
    assert_eq!(s.tick(back).await, 1, "fires on start");
    assert_eq!(s.tick(back + 1_000).await, 0, "once");
    let pings = s.pings();
    assert_eq!(pings.len(), 1);
    let t = text(&pings[0]);
    assert!(t.contains("late by 20m"), "{t}");
    let late: Vec<String> = common::column(
        &s.app.store,
        &format!("select cast(detail as text) from incident_events where incident_id = {id} and kind = 'escalated'"),
    )
    .await;
    assert_eq!(late.len(), 1);
    let detail: Value = serde_json::from_str(&late[0]).expect("json");
    assert_eq!(detail["late"], true);
    assert_eq!(detail["lag_ms"], 20 * MINUTE);
    let metrics = s.app.get("/metrics", None).await;
    let metrics = metrics.json.as_str().expect("text").to_owned();
    for name in [
        "remedy_escalations_fired_total{level=\"1\",kind=\"escalate\"}",
        "remedy_escalation_lag_seconds_bucket",
        "remedy_escalation_timers_pending",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

async fn a_recurring_alert_escalates_at_once(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let fp = "a6a6a6a6a6a6a6a6";
    // The same alert, three episodes within the hour (runbook: "recurring").
    for (n, (start, end)) in [("01:00", "01:05"), ("01:10", "01:15")]
        .into_iter()
        .enumerate()
    {
        let starts = format!("2026-11-27T{start}:00Z");
        let (id, _) = s
            .open("DatabaseIdleInTransaction", "warning", fp, &starts)
            .await;
        assert_eq!(
            s.timer_states(id).await,
            ["escalate:1:0:pending"],
            "episode {n}: nothing due yet"
        );
        s.resolve(
            "DatabaseIdleInTransaction",
            "warning",
            fp,
            &starts,
            &format!("2026-11-27T{end}:00Z"),
        )
        .await;
        s.drain(now_millis()).await;
    }
    assert_eq!(s.tick(now_millis()).await, 0);
    let (id, _) = s
        .open(
            "DatabaseIdleInTransaction",
            "warning",
            fp,
            "2026-11-27T01:20:00Z",
        )
        .await;
    assert!(
        s.events(id)
            .await
            .contains(&"escalation_triggered".to_owned())
    );
    assert_eq!(
        s.tick(now_millis()).await,
        1,
        "the third time pings the Team Lead at once"
    );
    let pings = s.pings();
    assert_eq!(pings.len(), 1);
    let t = text(&pings[0]);
    assert!(
        t.starts_with("<@U0LEAD>") && t.contains("recurring: 3 times within 1h"),
        "{t}"
    );
}

async fn a_critical_incident_gets_a_summary_and_a_postmortem_checklist_when_it_resolves(
    backend: Backend,
) {
    let s = setup(backend, &dir_with(None), &[]).await;
    // 20 minutes: summary and checklist; 10 minutes: summary only; a warning: nothing.
    let cases = [
        (
            "a7a7a7a7a7a7a7a1",
            "critical",
            "2026-11-27T01:20:00Z",
            Some(true),
        ),
        (
            "a7a7a7a7a7a7a7a2",
            "critical",
            "2026-11-27T01:10:00Z",
            Some(false),
        ),
        ("a7a7a7a7a7a7a7a3", "warning", "2026-11-27T01:40:00Z", None),
    ];
    for (fp, severity, ends, expected) in cases {
        let before = s.thread_posts().len();
        let name = if severity == "critical" {
            "DatabasePoolExhaustionCritical"
        } else {
            "DatabaseLongRunningQueries"
        };
        let (id, _) = s.open(name, severity, fp, "2026-11-27T01:00:00Z").await;
        s.resolve(name, severity, fp, "2026-11-27T01:00:00Z", ends)
            .await;
        s.drain(now_millis()).await;
        s.drain(now_millis()).await;
        let posts: Vec<String> = s.thread_posts()[before..].iter().map(text).collect();
        let summaries: Vec<&String> = posts
            .iter()
            .filter(|t| t.contains("resolved after"))
            .collect();
        match expected {
            None => assert!(summaries.is_empty(), "{posts:?}"),
            Some(postmortem) => {
                assert_eq!(summaries.len(), 1, "{posts:?}");
                let t = summaries[0];
                assert!(t.contains(&format!("(incident #{id})")), "{t}");
                assert!(t.contains("What ran: nothing was executed"), "{t}");
                assert_eq!(t.contains("Runbook meeting within 48 h"), postmortem, "{t}");
                assert_eq!(t.contains("Postmortem"), postmortem, "{t}");
                let expected_length = if postmortem {
                    "resolved after 20m"
                } else {
                    "resolved after 10m"
                };
                assert!(t.contains(expected_length), "{t}");
            }
        }
    }
}

/// One incident through its whole life — opened, diagnosed, posted,
/// acknowledged, an action approved and run and judged, escalated by the
/// ineffective run, resolved — and the export lists every recorded event
/// (timeline and audit log), each once, in time order.
async fn the_exported_timeline_lists_every_recorded_event_in_order(backend: Backend) {
    let s = setup(backend, &dir_with(Some(ECHO_PLAYBOOK)), &[]).await;
    let fp = "a8a8a8a8a8a8a8a8";
    let (id, _) = s
        .open("EscTest", "critical", fp, "2026-11-27T01:00:00Z")
        .await;
    s.click("U0ONCALL", "ack", id).await;
    let request = Request::post(format!("/v1/incidents/{id}/actions/echo/approve"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer olga-token")
        .body(Body::from(json!({}).to_string()))
        .expect("request");
    assert_eq!(send(&s.app.router, request).await.status, StatusCode::OK);
    s.drain(now_millis()).await;
    // 30 s later the diagnosis runs again: the echo changed nothing, so the
    // escalation moves on at once (even though it was acknowledged).
    let later = now_millis() + 31_000;
    s.drain(later).await;
    assert_eq!(
        s.tick(later).await,
        1,
        "ineffective remediation escalates at once"
    );
    let pings = s.pings();
    assert_eq!(pings.len(), 1);
    assert!(
        text(&pings[0]).contains("remediation ineffective: echo"),
        "{}",
        text(&pings[0])
    );
    s.resolve(
        "EscTest",
        "critical",
        fp,
        "2026-11-27T01:00:00Z",
        "2026-11-27T01:30:00Z",
    )
    .await;
    s.drain(now_millis()).await;

    let recorded: Vec<String> = common::column(
        &s.app.store,
        &format!(
            "select kind from (
                select at, 0 as src, id, kind from incident_events where incident_id = {id}
                union all
                select at, 1 as src, id, event as kind from audit_log where incident_id = {id}
             ) all_events order by at, src, id"
        ),
    )
    .await;
    for kind in [
        "opened",
        "escalation_scheduled",
        "diagnosed",
        "chat_posted",
        "acknowledged",
        "approved",
        "execution_started",
        "execution_finished",
        "action_verified",
        "escalation_triggered",
        "escalated",
        "pinged",
        "resolved",
        "resolution_summary",
    ] {
        assert!(
            recorded.contains(&kind.to_owned()),
            "{kind} missing from {recorded:?}"
        );
    }
    let exported = s
        .app
        .get(
            &format!("/v1/incidents/{id}/export?format=json"),
            Some(common::API_TOKEN),
        )
        .await;
    assert_eq!(exported.status, StatusCode::OK);
    let timeline = exported.json["timeline"].as_array().expect("timeline");
    let kinds: Vec<String> = timeline
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, recorded, "every recorded event, once, in order");
    let times: Vec<i128> = timeline
        .iter()
        .map(|e| {
            time::OffsetDateTime::parse(
                e["at"].as_str().unwrap_or_default(),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("rfc3339")
            .unix_timestamp_nanos()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(exported.json["duration_seconds"], 30 * 60);

    // The Markdown draft has one row per event and the runbook's checklist.
    let md = s
        .app
        .get(
            &format!("/v1/incidents/{id}/export?format=md"),
            Some(common::API_TOKEN),
        )
        .await;
    let md = md.json.as_str().expect("markdown").to_owned();
    let rows = md.lines().filter(|l| l.starts_with("| 20")).count();
    assert_eq!(rows, recorded.len(), "{md}");
    for heading in [
        "## Timeline (UTC)",
        "## What ran",
        "## Root cause",
        "## User impact",
        "## Resolution steps",
        "- [ ] Runbook meeting within 48 h",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    assert!(
        md.contains("echo — done (ineffective), approved by olga"),
        "{md}"
    );
}

/// Two schedulers (two remedy processes' engines) on one PostgreSQL store
/// fire each timer exactly once, run concurrently many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_on_postgres_fire_each_timer_once() {
    // 25 alerts of one group at once would be a storm (one timer plan);
    // this test is about timers, so each incident keeps its own.
    let s = setup(
        Backend::Postgres,
        &dir_with(None),
        &[("REMEDY__STORM__THRESHOLD", "0")],
    )
    .await;
    let other = build(&s.app.store_url, &s.toml, &s.env).await;
    let mut total = 0;
    for round in 0..20 {
        let alerts: Vec<Value> = (0..25)
            .map(|n| {
                alert(
                    "DatabasePoolExhaustionCritical",
                    "critical",
                    &format!("{round:08x}{n:08x}"),
                    "2026-11-27T01:00:00Z",
                    None,
                )
            })
            .collect();
        assert_eq!(
            s.app.post_webhook(notification(&alerts)).await.status,
            StatusCode::OK
        );
        s.drain(now_millis()).await;
        let due = now_millis() + 16 * MINUTE;
        let (a, b) = tokio::join!(
            escalate::fire_due(s.engine(), due),
            escalate::fire_due(&other.app.engine, due)
        );
        let fired = a.expect("a") + b.expect("b");
        assert_eq!(
            fired, 25,
            "round {round}: each due timer fired by exactly one scheduler"
        );
        total += fired;
    }
    let per_timer: Vec<i64> = common::column(
        &s.app.store,
        "select count(*) from incident_events where kind = 'escalated' group by (detail ->> 'timer')",
    )
    .await;
    assert_eq!(per_timer.len(), total);
    assert!(per_timer.iter().all(|n| *n == 1), "{per_timer:?}");
    // Each ping is queued once per incident, whichever scheduler fired it.
    let queued: i64 = common::scalar(
        &s.app.store,
        "select count(*) from work where kind = 'escalate'",
    )
    .await;
    assert_eq!(queued, i64::try_from(total).expect("count"));
}

/// A threshold from the diagnosis: the runbook escalates DatabaseIdleInTransaction
/// to the Team Lead at more than 10 connections. Scaled down (more than 2
/// sessions idle in transaction for over a second) on a real PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_from_the_diagnosis_escalates_at_once() {
    let target = common::fresh_store_url(Backend::Postgres).await;
    let shipped = common::playbooks_dir();
    let s = setup(
        Backend::Sqlite,
        &shipped,
        &[
            ("REMEDY__TARGETS__MAIN__URL", target.as_str()),
            ("REMEDY__COMMANDS__ALLOW", "/usr/bin/docker,/bin/echo"),
        ],
    )
    .await;
    let mut engine = s.engine().clone();
    let mut playbooks = (*engine.playbooks).clone();
    let playbook = playbooks
        .iter_mut()
        .find(|p| p.spec.name == "DatabaseIdleInTransaction")
        .expect("shipped playbook");
    playbook.set_var("idle_threshold", json!("1s"));
    playbook.set_var("escalate_count", json!(2));
    // Only this test's database: other tests leave sessions idle in
    // transaction on the same server.
    for step in &mut playbook.spec.steps {
        if let remedy::playbook::model::StepSpec::Sql { query, .. } = &mut step.value {
            *query = query.replace(
                "where state = 'idle in transaction'",
                "where state = 'idle in transaction' and datname = current_database()",
            );
        }
    }
    engine.playbooks = std::sync::Arc::new(playbooks);

    let mut sessions = Vec::new();
    let open_idle = |n: usize| {
        let target = target.clone();
        async move {
            let mut all = Vec::new();
            for _ in 0..n {
                let mut conn = sqlx::PgConnection::connect(&target).await.expect("connect");
                sqlx::raw_sql("begin; select 1")
                    .execute(&mut conn)
                    .await
                    .expect("begin");
                all.push(conn);
            }
            all
        }
    };
    // Fires the alert and lets the scaled engine diagnose it; its incident id.
    let open_idle_incident = |fingerprint: &'static str| {
        let (s, engine) = (&s, &engine);
        async move {
            let reply = s
                .app
                .post_webhook(notification(&[alert(
                    "DatabaseIdleInTransaction",
                    "warning",
                    fingerprint,
                    "2026-11-27T01:00:00Z",
                    None,
                )]))
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            drain(engine, now_millis()).await;
            common::scalar::<i64>(&s.app.store, "select max(id) from incidents").await
        }
    };
    // Two sessions: at the threshold, not over it.
    sessions.extend(open_idle(2).await);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let first = open_idle_incident("b9b9b9b9b9b9b9b1").await;
    assert!(
        !s.events(first)
            .await
            .contains(&"escalation_triggered".to_owned())
    );
    // A third: over it.
    sessions.extend(open_idle(1).await);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let second = open_idle_incident("b9b9b9b9b9b9b9b2").await;
    assert!(
        s.events(second)
            .await
            .contains(&"escalation_triggered".to_owned())
    );
    // The same measurement again (as after a re-diagnosis) moves nothing further.
    let incident = s
        .app
        .store
        .get_incident(remedy::domain::IncidentId(second))
        .await
        .expect("store")
        .expect("incident");
    let report: remedy::playbook::Report =
        serde_json::from_value(incident.report.clone().expect("report").0).expect("report");
    escalate::check_threshold(
        &engine,
        remedy::domain::IncidentId(second),
        &incident,
        &report,
        now_millis(),
    )
    .await
    .expect("check");
    let triggers = s
        .events(second)
        .await
        .into_iter()
        .filter(|k| k == "escalation_triggered")
        .count();
    assert_eq!(triggers, 1);
    assert_eq!(
        escalate::fire_due(&engine, now_millis())
            .await
            .expect("fire"),
        1
    );
    drain(&engine, now_millis()).await;
    let pings = s.pings();
    assert_eq!(pings.len(), 1);
    let t = text(&pings[0]);
    assert!(
        t.starts_with("<@U0LEAD>")
            && t.contains(&format!("incident #{second}"))
            && t.contains("threshold"),
        "{t}"
    );
    drop(sessions);
}

/// The Silence button creates an Alertmanager silence through the
/// executor's silence action, for the chosen length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_silence_button_creates_a_silence_for_the_chosen_length() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let record = seen.clone();
    let fake_am = axum::Router::new().route(
        "/api/v2/silences",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push(body);
                axum::Json(json!({"silenceID": "5e1f0000-0000-0000-0000-000000000001"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let am = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, fake_am).await });
    let s = setup(
        Backend::Sqlite,
        &dir_with(None),
        &[("REMEDY__ALERTMANAGER__URL", am.as_str())],
    )
    .await;
    let (id, _) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "c1c1c1c1c1c1c1c1",
            "2026-11-27T01:00:00Z",
        )
        .await;
    // An outsider cannot silence.
    s.click("U0STRANGER", "silence:3600", id).await;
    s.drain(now_millis()).await;
    assert!(seen.lock().expect("lock").is_empty());
    let before = now_millis();
    s.click("U0ONCALL", "silence:14400", id).await;
    s.drain(now_millis()).await;
    let bodies = seen.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body = &bodies[0];
    let matchers = body["matchers"].as_array().expect("matchers");
    assert!(matchers.iter().any(|m| m["name"] == "alertname"
        && m["value"] == "DatabasePoolExhaustionCritical"
        && m["isEqual"] == true));
    // U0ONCALL holds the role by its Slack id and is in no [people] entry:
    // named by platform and id, and said to be so.
    assert_eq!(body["createdBy"], "slack user U0ONCALL (not in [people])");
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().expect("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
        .unix_timestamp()
    };
    let length = parse(&body["endsAt"]) - parse(&body["startsAt"]);
    assert_eq!(length, 4 * 3600);
    assert!(parse(&body["startsAt"]) >= before / 1000 - 1);
    let state: String = common::scalar(&s.app.store, "select state from executions").await;
    assert_eq!(state, "done");
    // The same length again is the same silence, not a second one.
    s.click("U0ONCALL", "silence:14400", id).await;
    s.drain(now_millis()).await;
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

#[test]
fn the_shipped_matrix_has_the_runbooks_five_rows_and_a_default() {
    let settings = common::test_settings("sqlite::memory:", &[]);
    let matrix =
        remedy::escalation::load_file(&settings.escalation.file, &settings).expect("valid");
    type Row<'a> = (&'a str, &'a str, Vec<(&'a str, Option<u64>)>);
    let rows: Vec<Row<'_>> = matrix
        .policies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.initial.as_str(),
                p.levels
                    .iter()
                    .map(|l| (l.to.as_str(), l.after.map(|a| a.as_secs())))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "DatabasePoolExhaustionCritical",
                "on-call-engineer",
                vec![("team-lead", Some(900))]
            ),
            (
                "DatabaseLongRunningQueries",
                "backend-developer",
                vec![("dba", None)]
            ),
            (
                "DatabaseIdleInTransaction",
                "backend-developer",
                vec![("team-lead", None)]
            ),
            ("DatabasePoolOverflowHigh", "devops", vec![]),
            (
                "HighErrorRate5xx",
                "on-call-engineer",
                vec![("cto", Some(600))]
            ),
        ]
    );
    assert_eq!(
        matrix.policies[3].review_after.map(|d| d.as_secs()),
        Some(86_400)
    );
    assert!(matrix.policies[1].threshold.is_some() && matrix.policies[1].recurring.is_some());
    assert!(matrix.policies[2].threshold.is_some() && matrix.policies[2].recurring.is_some());
    assert_eq!(matrix.default.initial, "on-call-engineer");
}

#[test]
fn a_matrix_with_a_typo_fails_with_file_line_and_field() {
    let settings = common::test_settings("sqlite::memory:", &[]);
    let path = Path::new("escalation.yaml");
    let text = "roles:\n  oncall: On-Call\ndefault:\n  initial: oncall\n  escalate:\n    - to: oncal\n      after: 15m\n";
    let errors = remedy::escalation::load_str(path, text, &settings).expect_err("typo");
    let shown = errors[0].to_string();
    assert!(shown.starts_with("escalation.yaml:6:"), "{shown}");
    assert!(
        shown.contains("default.escalate[0].to") && shown.contains("unknown role `oncal`"),
        "{shown}"
    );
    let text = "roles:\n  oncall: On-Call\ndefault:\n  initial: oncall\n  escalte: []\n";
    let errors = remedy::escalation::load_str(path, text, &settings).expect_err("unknown field");
    let shown = errors[0].to_string();
    assert!(
        shown.starts_with("escalation.yaml:5:") && shown.contains("escalte"),
        "{shown}"
    );
    let text = "roles:\n  oncall: On-Call\npolicies:\n  - alert: X\n    initial: oncall\n    threshold: steps.x.rows | length >\n    escalate: [{to: oncall}]\ndefault:\n  initial: oncall\n  review_after: 24h\n";
    let errors = remedy::escalation::load_str(path, text, &settings).expect_err("bad expression");
    let shown = errors[0].to_string();
    assert!(
        shown.starts_with("escalation.yaml:6:") && shown.contains("policies[0].threshold"),
        "{shown}"
    );
}

async fn console_responders_ack_snooze_and_silence_through_the_api(backend: Backend) {
    let s = setup(backend, &dir_with(None), &[]).await;
    let (id, _) = s
        .open(
            "DatabasePoolExhaustionCritical",
            "critical",
            "d9d9d9d9d9d9d9d9",
            "2026-11-27T01:00:00Z",
        )
        .await;
    // The person is the token's: `as` names whose token the request carries.
    let post = |verb: &str, mut body: Value| {
        let who = body["as"].as_str().unwrap_or_default().to_owned();
        body.as_object_mut().map(|o| o.remove("as"));
        Request::post(format!("/v1/incidents/{id}/{verb}"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {who}-token"))
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    // `olga` is the on-call engineer's console user; `mallory` holds nothing.
    let refused = send(&s.app.router, post("ack", json!({"as": "mallory"}))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    let bad = send(
        &s.app.router,
        post("snooze", json!({"as": "olga", "for": "soon"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.json);
    assert_eq!(bad.json["field"], "for");
    let snoozed = send(
        &s.app.router,
        post("snooze", json!({"as": "olga", "for": "15m"})),
    )
    .await;
    assert_eq!(snoozed.status, StatusCode::OK, "{}", snoozed.json);
    let acked = send(&s.app.router, post("ack", json!({"as": "olga"}))).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.json);
    assert_eq!(acked.json["state"], "acknowledged");
    assert_eq!(s.timer_states(id).await, ["escalate:1:0:paused"]);
    let shown = s.app.api(&format!("/v1/incidents/{id}")).await;
    assert_eq!(shown["escalation"]["acked_by"], "olga");
    assert_eq!(
        shown["escalation"]["policy"],
        "DatabasePoolExhaustionCritical"
    );
    // Once acknowledged there is nothing left to snooze.
    let late = send(
        &s.app.router,
        post("snooze", json!({"as": "olga", "for": "1h"})),
    )
    .await;
    assert_eq!(late.status, StatusCode::FORBIDDEN);
    assert!(
        late.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already acknowledged")
    );
}
