//! The executor on real PostgreSQL: approved actions run once, on exactly
//! the backend shown, never on protected sessions, never when the
//! precondition no longer holds, and every step is in the audit log.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Backend, Reply, TestApp, send};
use remedy::domain::{IncidentId, now_millis};
use remedy::engine::{self, WorkerSettings};
use remedy::store::NewRun;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const PLAYBOOK: &str = r#"
name: ExecTest
match: ['alertname="ExecTest"']
target: main
steps:
  - id: leaks
    kind: sql
    query: |
      select pid, backend_start, usename from pg_stat_activity
       where state = 'idle in transaction' and application_name like $1 || '%'
         and datname = current_database()
       order by pid
    params: ["{{ labels.app_prefix }}"]
actions:
  - id: terminate
    title: Terminate pid {{ row.pid }}
    kind: sql
    risk: destructive
    approvers: [oncall]
    quorum: 1
    for_each: leaks
    statement: select pg_terminate_backend($1::int)
    params: ["{{ row.pid }}"]
    precondition:
      query: |
        select 1 from pg_stat_activity
         where pid = $1::int and backend_start = $2::timestamptz and state = 'idle in transaction'
      params: ["{{ row.pid }}", "{{ row.backend_start }}"]
  - id: echo
    title: Echo the alert's note
    kind: command
    risk: safe
    approvers: [oncall]
    quorum: 1
    program: /bin/echo
    args: ["{{ labels.note }}"]
  - id: flaky
    title: A step that fails for pid {{ row.pid }}
    kind: command
    risk: safe
    approvers: [oncall]
    quorum: 1
    for_each: leaks
    program: /bin/false
  - id: note
    title: Echo the note, no approval needed
    kind: command
    risk: safe
    approvers: [oncall]
    quorum: 1
    automatic: true
    program: /bin/echo
    args: ["automatic {{ labels.note }}"]
  - id: silence
    title: Silence this alert for 2h
    kind: silence
    risk: safe
    approvers: [oncall]
    quorum: 1
    duration: 2h
"#;

const APPROVERS: &str = r#"
[people.alice]
api_token = "alice-token"
[people.bob]
api_token = "bob-token"
[people.dana]
api_token = "dana-token"
[people.tim]
api_token = "tim-token"

[approvers.oncall]
console_users = ["alice", "bob"]

[approvers.dba]
console_users = ["dana"]

[approvers.team-lead]
console_users = ["tim"]
"#;

struct Setup {
    app: TestApp,
    target: String,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    setup_with(PLAYBOOK, extra).await
}

async fn setup_with(playbook: &str, extra: &[(&str, &str)]) -> Setup {
    let dir =
        std::env::temp_dir().join(format!("remedy-exec-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("exec-test.yaml"), playbook).expect("playbook");
    let target = common::fresh_store_url(Backend::Postgres).await;
    let mut env = vec![
        (
            "REMEDY__PLAYBOOKS__DIR",
            dir.to_str().expect("utf-8").to_owned(),
        ),
        ("REMEDY__TARGETS__MAIN__URL", target.clone()),
        (
            "REMEDY__COMMANDS__ALLOW",
            "/usr/bin/docker,/bin/echo,/bin/false".to_owned(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = common::spawn_app_with_toml(Backend::Sqlite, APPROVERS, &env).await;
    Setup { app, target }
}

impl Setup {
    async fn connect_as(&self, user: &str, application: &str) -> PgConnection {
        let url = self.target.replacen("postgres@", &format!("{user}@"), 1);
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::query("select set_config('application_name', $1, false)")
            .bind(application)
            .execute(&mut conn)
            .await
            .expect("application_name");
        conn
    }

    /// A session idle in transaction, as an ordinary role or a superuser.
    async fn leak(&self, superuser: bool, application: &str) -> (PgConnection, i32) {
        let user = if superuser {
            "postgres"
        } else {
            app_role(&self.target).await
        };
        let mut conn = self.connect_as(user, application).await;
        sqlx::raw_sql("begin; select 1")
            .execute(&mut conn)
            .await
            .expect("begin");
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("pid");
        (conn, pid)
    }

    async fn alive(&self, pid: i32) -> bool {
        let mut admin = self.connect_as("postgres", "checker").await;
        sqlx::query_scalar::<_, i64>("select count(*) from pg_stat_activity where pid = $1")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .expect("count")
            == 1
    }

    async fn open(&self, note: &str) -> i64 {
        let payload = json!({
            "receiver": "remedy", "status": "firing", "version": "4",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "ExecTest", "app_prefix": "victim", "note": note},
                "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": "e0e0e0e0e0e0e0e1"
            }],
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
        });
        let reply = self.app.post_webhook(payload.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        self.drain().await;
        self.app.incidents("").await[0]["id"].as_i64().expect("id")
    }

    async fn drain(&self) {
        for _ in 0..10 {
            let worker = WorkerSettings::new("exec-test".into());
            if engine::step(&self.app.app.engine, &worker, now_millis())
                .await
                .expect("step")
                == 0
            {
                return;
            }
        }
        panic!("work kept coming");
    }

    async fn decide(&self, id: i64, key: &str, who: &str) -> Reply {
        let request = Request::post(format!("/v1/incidents/{id}/actions/{key}/approve"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {who}-token"))
            .body(Body::from(json!({}).to_string()))
            .expect("request");
        send(&self.app.router, request).await
    }

    async fn shown(&self, id: i64) -> Value {
        self.app.api(&format!("/v1/incidents/{id}")).await
    }

    async fn execution(&self, id: i64) -> Value {
        let shown = self.shown(id).await;
        let executions = shown["executions"].as_array().expect("executions").clone();
        assert_eq!(executions.len(), 1, "{shown}");
        executions[0].clone()
    }
}

/// An ordinary application role (not a superuser).
async fn app_role(target: &str) -> &'static str {
    let mut admin = PgConnection::connect(target).await.expect("admin");
    sqlx::raw_sql(
        "do $$ begin create role remedy_test_app login; exception when duplicate_object or unique_violation then null; end $$",
    )
    .execute(&mut admin)
    .await
    .expect("role");
    "remedy_test_app"
}

/// Requests (content type, body) a local fake service received.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A local fake service: POST `path` answers `status` with `reply` (JSON)
/// and records each request.
async fn recording_server(path: &str, status: StatusCode, reply: Value) -> (String, Seen) {
    let seen: Seen = Seen::default();
    let record = seen.clone();
    let fake = axum::Router::new().route(
        path,
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = record.clone();
            let reply = reply.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                record.lock().expect("lock").push((content_type, body));
                (status, axum::Json(reply))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, fake).await });
    (url, seen)
}

#[tokio::test]
async fn approving_terminate_ends_exactly_the_backend_shown() {
    let s = setup(&[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let (_bystander, bystander) = s.leak(false, "bystander").await;
    let id = s.open("x").await;
    let reply = s.decide(id, "terminate", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    assert!(!s.alive(victim).await, "the approved backend ended");
    assert!(
        s.alive(bystander).await,
        "another idle session is untouched"
    );
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    let audit = s.app.api(&format!("/v1/audit?incident={id}")).await;
    let events: Vec<&str> = audit["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events,
        ["execution_finished", "execution_started", "approved"]
    );
    let started = &audit["audit"][1]["detail"];
    assert_eq!(started["statement"], "select pg_terminate_backend($1::int)");
    assert_eq!(started["params"], json!([victim.to_string()]));
    assert_eq!(
        audit["audit"][2]["detail"]["approvers"],
        json!(["person:alice"])
    );
}

#[tokio::test]
async fn a_session_replaced_before_approval_is_not_touched() {
    let s = setup(&[]).await;
    let (victim_conn, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    // The shown session ends; another with the same name takes its place.
    victim_conn.close().await.expect("close");
    let (_new, newcomer) = s.leak(false, "victim-1").await;
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(!s.alive(victim).await);
    assert!(s.alive(newcomer).await, "the newcomer is untouched");
    assert_eq!(s.execution(id).await["state"], "precondition_failed");
}

#[tokio::test]
async fn a_superuser_session_is_never_terminated_even_when_it_matches() {
    let s = setup(&[]).await;
    let (_admin, admin) = s.leak(true, "victim-dba").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(s.alive(admin).await);
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "refused");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("protected")
    );
}

#[tokio::test]
async fn fifty_concurrent_approvals_execute_the_action_once() {
    let s = setup(&[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    let mut clicks = Vec::new();
    for i in 0..50 {
        let router = s.app.router.clone();
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        clicks.push(tokio::spawn(async move {
            let request = Request::post(format!("/v1/incidents/{id}/actions/terminate/approve"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {who}-token"))
                .body(Body::from(json!({}).to_string()))
                .expect("request");
            send(&router, request).await.status
        }));
    }
    let mut accepted = 0;
    for c in clicks {
        if c.await.expect("click") == StatusCode::OK {
            accepted += 1;
        }
    }
    assert!(accepted >= 1);
    // Several workers race for the work.
    let engine = s.app.app.engine.clone();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine::step(&engine, &WorkerSettings::new(format!("w{w}")), now_millis())
                    .await
                    .expect("step")
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    s.drain().await;
    assert!(!s.alive(victim).await);
    let runs: i64 = common::scalar(&s.app.store, "select count(*) from executions").await;
    assert_eq!(runs, 1);
    let started: i64 = common::scalar(
        &s.app.store,
        "select count(*) from audit_log where event = 'execution_started'",
    )
    .await;
    assert_eq!(started, 1);
}

#[tokio::test]
async fn dry_run_executes_nothing_and_records_what_would_run() {
    let s = setup(&[("REMEDY__EXECUTOR__DRY_RUN", "true")]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(s.alive(victim).await);
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "dry_run");
    let output = execution["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("would run") && output.contains("pg_terminate_backend"),
        "{output}"
    );
    // `remedy audit` reads the same log from the store.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remedy"))
        .args(["audit", "--incident", &id.to_string()])
        .env("REMEDY__STORE__URL", &s.app.store_url)
        .env_remove("REMEDY__INTAKE__BEARER_TOKEN")
        .output()
        .expect("remedy audit runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line")["event"].to_string())
        .collect();
    assert_eq!(
        events,
        [
            "\"execution_finished\"",
            "\"execution_started\"",
            "\"approved\""
        ]
    );
}

#[tokio::test]
async fn label_values_with_shell_metacharacters_are_literal_argv() {
    let s = setup(&[]).await;
    let marker =
        std::env::temp_dir().join(format!("remedy-pwned-{}", uuid::Uuid::now_v7().simple()));
    let note = format!("x; touch {} && echo $(id) `id`", marker.display());
    let id = s.open(&note).await;
    let reply = s.decide(id, "echo", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains(&note)
    );
    assert!(!marker.exists(), "no shell ran the label");
}

#[tokio::test]
async fn a_run_interrupted_by_a_crash_is_marked_unknown_and_not_rerun() {
    let s = setup(&[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    // A worker claimed the run and died before recording an outcome.
    let approval: i64 = common::scalar(
        &s.app.store,
        "select id from approvals where key = 'terminate'",
    )
    .await;
    let now = now_millis();
    s.app
        .store
        .begin_execution(
            &NewRun {
                approval,
                incident: IncidentId(id),
                action_id: "terminate",
                target: "sql:main",
                detail: &json!({"crashed": true}),
            },
            &[],
            now - 1,
            now - 60_000,
        )
        .await
        .expect("claim");
    s.drain().await;
    assert!(s.alive(victim).await, "not re-run blindly");
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "unknown");
    let unknown: i64 = common::scalar(
        &s.app.store,
        "select count(*) from audit_log where event = 'execution_unknown'",
    )
    .await;
    assert_eq!(unknown, 1);
}

#[tokio::test]
async fn nothing_runs_for_a_resolved_incident() {
    let s = setup(&[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    // Resolved before the worker got to it.
    let resolved = json!({
        "receiver": "remedy", "status": "resolved", "version": "4",
        "alerts": [{
            "status": "resolved",
            "labels": {"alertname": "ExecTest", "app_prefix": "victim", "note": "x"},
            "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "endsAt": "2026-11-27T01:05:00Z",
            "generatorURL": "", "fingerprint": "e0e0e0e0e0e0e0e1"
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
    });
    s.app.post_webhook(resolved.to_string()).await;
    s.drain().await;
    assert!(s.alive(victim).await);
    let runs: i64 = common::scalar(
        &s.app.store,
        "select count(*) from executions where state in ('done', 'running')",
    )
    .await;
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn a_rate_limited_run_waits_for_its_slot_and_then_runs() {
    let s = setup(&[("REMEDY__EXECUTOR__RATE_LIMITS__PER_ACTION", "1/1h")]).await;
    let (_first, first) = s.leak(false, "victim-1").await;
    let (_second, second) = s.leak(false, "victim-2").await;
    let id = s.open("x").await;
    for key in ["terminate%231", "terminate%232"] {
        let reply = s.decide(id, key, "alice").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }
    s.drain().await;
    // One run per hour for this action: the first ran, the second waits.
    assert!(!s.alive(first).await);
    assert!(s.alive(second).await);
    let denial: String = common::scalar(
        &s.app.store,
        "select detail from audit_log where event = 'rate_limited'",
    )
    .await;
    let denial: Value = serde_json::from_str(&denial).expect("json");
    let wait = denial["wait_ms"].as_i64().expect("wait");
    assert!((3_500_000..=3_600_000).contains(&wait), "{denial}");
    assert_eq!(denial["scope"], "per action");
    // After the wait the slot is free and the second runs.
    let later = now_millis() + 3_601_000;
    for _ in 0..5 {
        engine::step(
            &s.app.app.engine,
            &WorkerSettings::new("later".into()),
            later,
        )
        .await
        .expect("step");
    }
    assert!(!s.alive(second).await);
    let done: i64 = common::scalar(
        &s.app.store,
        "select count(*) from executions where state = 'done'",
    )
    .await;
    assert_eq!(done, 2);
}

/// A playbook's silence is checked like the Silence control, right before
/// it is posted: the test alert names neither `instance` nor `service`.
#[tokio::test]
async fn a_playbook_silence_too_broad_for_the_required_labels_is_refused_when_it_runs() {
    let (url, seen) = recording_server(
        "/api/v2/silences",
        StatusCode::OK,
        json!({"silenceID": "never"}),
    )
    .await;
    let s = setup(&[("REMEDY__ALERTMANAGER__URL", url.as_str())]).await;
    let id = s.open("x").await;
    let reply = s.decide(id, "silence", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "refused", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("silence.required_labels"),
        "{execution}"
    );
    assert!(seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn the_silence_action_sends_the_exact_v2_body() {
    let (url, seen) = recording_server(
        "/api/v2/silences",
        StatusCode::OK,
        json!({"silenceID": "7d2f0c1e-silence"}),
    )
    .await;
    // The test alert names no instance or service: `app_prefix` is what
    // narrows it here (`silence.required_labels` is configurable).
    let s = setup(&[
        ("REMEDY__ALERTMANAGER__URL", url.as_str()),
        ("REMEDY__SILENCE__REQUIRED_LABELS", "app_prefix"),
    ])
    .await;
    let id = s.open("x").await;
    let reply = s.decide(id, "silence", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("7d2f0c1e-silence")
    );

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (content_type, body) = &seen[0];
    assert!(content_type.starts_with("application/json"));
    let body: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(
        body["matchers"],
        json!([
            {"name": "alertname", "value": "ExecTest", "isRegex": false, "isEqual": true},
            {"name": "app_prefix", "value": "victim", "isRegex": false, "isEqual": true},
            {"name": "note", "value": "x", "isRegex": false, "isEqual": true},
        ])
    );
    assert_eq!(body["createdBy"], "alice");
    assert!(
        body["comment"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("incident #{id}"))
    );
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().expect("time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
    };
    assert_eq!(
        parse(&body["endsAt"]) - parse(&body["startsAt"]),
        time::Duration::hours(2)
    );
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["comment", "createdBy", "endsAt", "matchers", "startsAt"]
    );
}

#[tokio::test]
async fn an_action_that_keeps_failing_is_suspended_until_enabled() {
    let s = setup(&[("REMEDY__EXECUTOR__SUSPEND_AFTER", "2/1h")]).await;
    let mut sessions = Vec::new();
    for i in 1..=3 {
        sessions.push(s.leak(false, &format!("victim-{i}")).await);
    }
    let id = s.open("x").await;
    for key in ["flaky%231", "flaky%232", "flaky%233"] {
        let reply = s.decide(id, key, "alice").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }
    s.drain().await;
    let states: Vec<String> =
        common::column(&s.app.store, "select state from executions order by id").await;
    assert_eq!(states, ["failed", "failed", "refused"]);
    let output: String = common::scalar(
        &s.app.store,
        "select output from executions order by id desc limit 1",
    )
    .await;
    assert!(output.contains("suspended"), "{output}");
    let store_url = s.app.store_url.clone();
    let remedy = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_remedy"))
            .args(args)
            .env("REMEDY__STORE__URL", &store_url)
            .output()
            .expect("remedy runs")
    };
    let listed = remedy(&["actions", "suspended"]);
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("flaky\t"));
    let enabled = remedy(&["actions", "enable", "flaky"]);
    assert!(enabled.status.success());
    assert!(String::from_utf8_lossy(&enabled.stdout).contains("flaky enabled"));
    assert!(
        s.app
            .store
            .suspension("flaky")
            .await
            .expect("read")
            .is_none()
    );
    let events: Vec<String> = common::column(
        &s.app.store,
        "select event from audit_log where event like 'action_%' order by id",
    )
    .await;
    assert_eq!(events, ["action_suspended", "action_enabled"]);
}

#[tokio::test]
async fn each_run_is_judged_by_running_the_diagnosis_again() {
    let s = setup(&[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    for key in ["terminate", "echo"] {
        let reply = s.decide(id, key, "alice").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }
    s.drain().await;
    assert!(!s.alive(victim).await);
    let unjudged: i64 = common::scalar(
        &s.app.store,
        "select count(*) from executions where verification is null",
    )
    .await;
    let all: Vec<String> = common::column(
        &s.app.store,
        "select a.key || ':' || e.state from executions e join approvals a on a.id = e.approval_id",
    )
    .await;
    assert_eq!(unjudged, 2, "not before verify_after: {all:?}");
    // 30 s later (executor.verify_after) the diagnosis runs again.
    let later = now_millis() + 31_000;
    for _ in 0..5 {
        engine::step(
            &s.app.app.engine,
            &WorkerSettings::new("later".into()),
            later,
        )
        .await
        .expect("step");
    }
    let verdicts: Vec<String> = common::column(
        &s.app.store,
        "select a.key || '=' || e.verification from executions e
           join approvals a on a.id = e.approval_id order by a.key",
    )
    .await;
    // The terminated session is gone; echoing changed nothing.
    assert_eq!(verdicts, ["echo=ineffective", "terminate=effective"]);
    let kinds: Vec<String> = common::column(
        &s.app.store,
        "select kind from incident_events where kind = 'action_verified'",
    )
    .await;
    assert_eq!(kinds.len(), 2);
}

#[tokio::test]
async fn a_dry_run_playbook_executes_nothing_and_records_what_would_run() {
    let dry = PLAYBOOK.replacen("name: ExecTest\n", "name: ExecTest\ndry_run: true\n", 1);
    let s = setup_with(&dry, &[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(s.alive(victim).await);
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "dry_run");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("playbook dry_run")
    );
}

#[tokio::test]
async fn the_runbook_playbook_terminates_exactly_the_stale_session_it_showed() {
    let shipped = common::playbooks_dir();
    let s = setup(&[("REMEDY__PLAYBOOKS__DIR", shipped.to_str().expect("utf-8"))]).await;
    // The runbook's thresholds (5 and 10 minutes), scaled down for a test.
    let mut engine = s.app.app.engine.clone();
    let mut playbooks = (*engine.playbooks).clone();
    let playbook = playbooks
        .iter_mut()
        .find(|p| p.spec.name == "DatabaseIdleInTransaction")
        .expect("shipped playbook");
    playbook.set_var("idle_threshold", json!("1s"));
    playbook.set_var("kill_threshold", json!("2s"));
    engine.playbooks = std::sync::Arc::new(playbooks);
    let drain = |engine: remedy::engine::Engine| async move {
        for _ in 0..10 {
            let worker = WorkerSettings::new("runbook".into());
            if engine::step(&engine, &worker, now_millis())
                .await
                .expect("step")
                == 0
            {
                return;
            }
        }
    };

    let (_stale, stale) = s.leak(false, "agente-api-stale").await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    // Idle in transaction too, but under the threshold.
    let (_young, young) = s.leak(false, "agente-api-young").await;
    let payload = json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DatabaseIdleInTransaction", "severity": "warning"},
            "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "e0e0e0e0e0e0e0e2"
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
    });
    s.app.post_webhook(payload.to_string()).await;
    drain(engine.clone()).await;
    let id = s.app.incidents("").await[0]["id"].as_i64().expect("id");
    // The cluster may hold other tests' stale sessions: approve ours.
    let approvals = s.shown(id).await["approvals"].clone();
    let ours = approvals
        .as_array()
        .expect("approvals")
        .iter()
        .find(|a| {
            a["title"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("Terminate pid {stale} "))
        })
        .unwrap_or_else(|| panic!("pid {stale} offered: {approvals}"))
        .clone();
    assert!(
        !approvals
            .as_array()
            .expect("approvals")
            .iter()
            .any(|a| a["title"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("Terminate pid {young} "))),
        "the young session is not offered"
    );
    // Not an approver of this playbook's action: refused.
    let key = ours["key"].as_str().expect("key").replace('#', "%23");
    let refused = s.decide(id, &key, "alice").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    // Two approvers, as the playbook asks for a destructive action.
    for who in ["dana", "tim"] {
        let reply = s.decide(id, &key, who).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    }
    drain(engine.clone()).await;
    assert!(!s.alive(stale).await, "the stale session ended");
    assert!(s.alive(young).await, "the young one is untouched");
    let done: i64 = common::scalar(
        &s.app.store,
        "select count(*) from executions where state = 'done'",
    )
    .await;
    assert_eq!(done, 1);
}

#[tokio::test]
async fn an_automatic_safe_action_runs_only_when_policy_allows_it() {
    let off = setup(&[]).await;
    let id = off.open("x").await;
    let note = off.shown(id).await["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .find(|a| a["key"] == "note")
        .expect("note")
        .clone();
    assert_eq!(note["state"], "pending", "policy off: it waits for people");
    assert!(
        off.shown(id).await["executions"]
            .as_array()
            .expect("executions")
            .is_empty()
    );

    let on = setup(&[("REMEDY__EXECUTOR__ALLOW_AUTOMATIC", "true")]).await;
    let id = on.open("x").await;
    let execution = on.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("automatic x")
    );
    let events: Vec<String> =
        common::column(&on.app.store, "select event from audit_log order by id").await;
    assert_eq!(events[0], "auto_approved");
}

#[tokio::test]
async fn remedys_own_pooled_connections_are_never_terminated() {
    // A playbook that (wrongly) lists remedy's own sessions: the executor
    // still refuses them, knowing them by the backends its pool holds.
    let playbook = PLAYBOOK.replacen("\"{{ labels.app_prefix }}\"", "\"remedy\"", 1);
    let s = setup_with(&playbook, &[]).await;
    let pool = s
        .app
        .app
        .engine
        .diagnoser
        .target("main")
        .expect("main target")
        .clone();
    let mut own = pool.acquire().await.expect("a pooled connection");
    sqlx::raw_sql("begin; select 1")
        .execute(&mut *own)
        .await
        .expect("begin");
    let own_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *own)
        .await
        .expect("pid");
    let id = s.open("x").await;
    let reply = s.decide(id, "terminate", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    assert!(s.alive(own_pid).await);
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "refused", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("remedy's own"),
        "{execution}"
    );
}

#[tokio::test]
async fn a_session_calling_itself_remedy_is_not_protected_by_the_name() {
    let playbook = PLAYBOOK.replacen("\"{{ labels.app_prefix }}\"", "\"remedy\"", 1);
    let s = setup_with(&playbook, &[]).await;
    let (_impostor, impostor) = s.leak(false, "remedy").await;
    let id = s.open("x").await;
    let reply = s.decide(id, "terminate", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert!(!s.alive(impostor).await);
}

#[tokio::test]
async fn the_blast_radius_cap_offers_only_the_first_targets_and_says_so() {
    let playbook = PLAYBOOK.replacen(
        "    for_each: leaks\n    statement:",
        "    for_each: leaks\n    max_targets: 1\n    statement:",
        1,
    );
    assert_ne!(playbook, PLAYBOOK);
    let s = setup_with(&playbook, &[]).await;
    let (_first, first) = s.leak(false, "victim-1").await;
    let (_second, second) = s.leak(false, "victim-2").await;
    let id = s.open("x").await;
    let shown = s.shown(id).await;
    let terminate: Vec<&Value> = shown["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter(|a| a["action_id"] == "terminate")
        .collect();
    assert_eq!(
        terminate.len(),
        1,
        "one target per execution of this action"
    );
    let errors = shown["incident"]["report"]["errors"].to_string();
    assert!(errors.contains("only the first 1 offered"), "{errors}");
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(!s.alive(first).await);
    assert!(s.alive(second).await, "beyond the cap: not done");
}

#[tokio::test]
async fn an_http_action_sends_its_body_and_checks_the_expected_status() {
    let (url, seen) =
        recording_server("/api/cache/flush", StatusCode::ACCEPTED, json!("queued")).await;
    let playbook = format!(
        "{PLAYBOOK}  - id: flush\n    title: Flush the PMS cache\n    kind: http\n    risk: safe\n    approvers: [oncall]\n    quorum: 1\n    method: POST\n    url: \"{{{{ probes.pms }}}}/api/cache/flush\"\n    body: '{{\"reason\": {{{{ labels.note | tojson }}}}}}'\n    expect_status: 202\n"
    );
    let s = setup_with(&playbook, &[("REMEDY__PROBES__PMS", url.as_str())]).await;
    let id = s.open("pool \"full\"").await;
    let reply = s.decide(id, "flush", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP 202")
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "application/json");
    let body: Value = serde_json::from_str(&seen[0].1).expect("json body");
    assert_eq!(body, json!({"reason": "pool \"full\""}));
}

#[tokio::test]
async fn an_http_actions_oversize_answer_is_read_only_up_to_max_output_bytes() {
    let (url, _seen) = recording_server(
        "/api/cache/flush",
        StatusCode::ACCEPTED,
        json!("x".repeat(4 << 20)),
    )
    .await;
    let playbook = format!(
        "{PLAYBOOK}  - id: flush\n    title: Flush the PMS cache\n    kind: http\n    risk: safe\n    approvers: [oncall]\n    quorum: 1\n    method: POST\n    url: \"{{{{ probes.pms }}}}/api/cache/flush\"\n    expect_status: 202\n"
    );
    let s = setup_with(&playbook, &[("REMEDY__PROBES__PMS", url.as_str())]).await;
    let id = s.open("x").await;
    s.decide(id, "flush", "alice").await;
    s.drain().await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    let output = execution["output"].as_str().unwrap_or_default();
    assert!(output.contains("body cut at 8192 bytes"), "{output}");
    assert!(output.len() < 4096, "{}", output.len());
}

#[tokio::test]
async fn a_terminate_statement_the_protection_check_cannot_see_is_refused() {
    let playbook = PLAYBOOK.replacen(
        "statement: select pg_terminate_backend($1::int)",
        "statement: select pg_terminate_backend(pid) from pg_stat_activity where pid = $1::int or usename = 'postgres'",
        1,
    );
    assert_ne!(playbook, PLAYBOOK);
    let s = setup_with(&playbook, &[]).await;
    let (_victim, victim) = s.leak(false, "victim-1").await;
    let (_admin, admin) = s.leak(true, "dba-console").await;
    let id = s.open("x").await;
    s.decide(id, "terminate", "alice").await;
    s.drain().await;
    assert!(s.alive(victim).await);
    assert!(s.alive(admin).await);
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "refused", "{execution}");
}

/// A role_setting change and its undo, as the shipped timeout playbooks
/// have them.
const UNDO_PLAYBOOK: &str = r#"
name: UndoTest
match: ['alertname="UndoTest"']
target: main
steps:
  - id: roles
    kind: sql
    query: |
      select r.rolname as role,
             (select split_part(c, '=', 2) from pg_db_role_setting d, unnest(d.setconfig) c
               where d.setrole = r.oid and d.setdatabase = 0 and c like 'statement_timeout=%') as previous
        from pg_roles r where r.rolname = $1
    params: ["{{ labels.role }}"]
actions:
  - id: set_timeout
    title: Set statement_timeout for {{ row.role }} (now {{ row.previous or "not set" }})
    kind: role_setting
    risk: disruptive
    approvers: [oncall]
    for_each: roles
    setting: statement_timeout
    params: ["{{ row.role }}", "30000"]
  - id: undo_timeout
    title: "Undo: statement_timeout of {{ row.role }} back to {{ row.previous or 'not set' }}"
    kind: role_setting
    risk: safe
    approvers: [oncall]
    for_each: roles
    undoes: set_timeout
    setting: statement_timeout
    params: ["{{ row.role }}", "{{ row.previous or '' }}"]
    precondition:
      query: |
        select 1 from pg_db_role_setting d join pg_roles r on r.oid = d.setrole, unnest(d.setconfig) c
         where r.rolname = $1 and d.setdatabase = 0 and c = 'statement_timeout=30000'
      params: ["{{ row.role }}"]
"#;

#[tokio::test]
async fn a_changes_undo_is_offered_only_once_it_has_run_and_then_puts_the_old_value_back() {
    // Approvals last 4 s here: the change is approved 2 s in, and its undo
    // gets 4 s of its own from when the change ran.
    let s = setup_with(UNDO_PLAYBOOK, &[("REMEDY__CHAT__APPROVAL_TTL", "4s")]).await;
    let role = format!(
        "remedy_t_undo_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let mut admin = s.connect_as("postgres", "checker").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {role}; alter role {role} set statement_timeout = 5000"
    )))
    .execute(&mut admin)
    .await
    .expect("role");
    let setting = async |admin: &mut PgConnection| -> Vec<String> {
        sqlx::query_scalar(
            "select c from pg_db_role_setting d join pg_roles r on r.oid = d.setrole,
                    unnest(d.setconfig) c where r.rolname = $1 and d.setdatabase = 0",
        )
        .bind(&role)
        .fetch_all(admin)
        .await
        .expect("setting")
    };

    let payload = json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "UndoTest", "role": role},
            "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "e0e0e0e0e0e0e0e3"
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
    });
    s.app.post_webhook(payload.to_string()).await;
    s.drain().await;
    let diagnosed = std::time::Instant::now();
    let id = s.app.incidents("").await[0]["id"].as_i64().expect("id");
    let keys = |shown: &Value| -> Vec<String> {
        shown["approvals"]
            .as_array()
            .expect("approvals")
            .iter()
            .map(|a| a["key"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let shown = s.shown(id).await;
    assert_eq!(
        keys(&shown),
        ["set_timeout"],
        "no undo before the change: {shown}"
    );
    let early = s.decide(id, "undo_timeout", "alice").await;
    assert_ne!(early.status, StatusCode::OK, "{}", early.json);

    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let reply = s.decide(id, "set_timeout", "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    assert_eq!(setting(&mut admin).await, ["statement_timeout=30000"]);
    let shown = s.shown(id).await;
    assert_eq!(keys(&shown), ["set_timeout", "undo_timeout"], "{shown}");
    let undo = &shown["approvals"][1];
    assert_eq!(undo["state"], "pending", "{undo}");
    assert!(
        undo["title"]
            .as_str()
            .unwrap_or_default()
            .ends_with("back to 5000"),
        "the value the change found: {undo}"
    );
    assert!(
        undo["expires_at"].as_i64() > shown["approvals"][0]["expires_at"].as_i64(),
        "{shown}"
    );
    assert!(
        shown["timeline"].to_string().contains("undo_offered"),
        "{shown}"
    );

    // Past the report's requests' time, within the undo's.
    tokio::time::sleep(std::time::Duration::from_millis(4_500).saturating_sub(diagnosed.elapsed()))
        .await;
    let reply = s.decide(id, "undo_timeout", "bob").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    s.drain().await;
    assert_eq!(setting(&mut admin).await, ["statement_timeout=5000"]);
    let done: i64 = common::scalar(
        &s.app.store,
        "select count(*) from executions where state = 'done'",
    )
    .await;
    assert_eq!(done, 2);
    // The change is judged later; the undo, which puts back what was, is not.
    let verifications: i64 = common::scalar(
        &s.app.store,
        "select count(*) from work where kind = 'verify'",
    )
    .await;
    assert_eq!(verifications, 1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop role {role}")))
        .execute(&mut admin)
        .await
        .expect("drop role");
}
