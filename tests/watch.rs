//! Watching measured escalation thresholds on a real PostgreSQL target,
//! with the clock passed in: the runbook's "query runs longer than 5 min"
//! (DBA) and "more than 10 idle-in-transaction connections" (Team Lead)
//! crossed after the diagnosis are caught by `recheck` work, not by a new
//! Alertmanager notification; the re-check runs only the threshold's steps,
//! read-only and within the target's diagnosis bound; a failed re-check is
//! recorded and retried, never escalates; resolve stops the watching; the
//! report's evidence says when it was measured.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use common::fake_chat::{FakeChat, SLACK_TOKEN, UNPACED};
use common::{Backend, TestApp};
use remedy::app::App;
use remedy::domain::{IncidentId, now_millis};
use remedy::engine::{self, Engine, WorkerSettings, escalate};
use serde_json::{Value, json};
use sqlx::Connection;

const MINUTE: i64 = 60_000;

on_both_stores!(
    resolve_stops_the_watching,
    a_failing_recheck_is_recorded_and_retried_and_a_write_in_the_step_fails,
    a_recheck_waits_for_its_targets_diagnosis_bound,
);

const ROLES: &str = r#"
[approvers.on-call-engineer]
slack_users = ["U0ONCALL"]

[approvers.team-lead]
slack_users = ["U0LEAD"]

[approvers.backend-developer]
slack_users = ["U0BACK"]

[approvers.dba]
slack_users = ["U0DBA"]

[approvers.devops]
slack_users = ["U0OPS"]

[approvers.cto]
slack_users = ["U0CTO"]
"#;

/// A matrix row watched through one step (`probe`) of a playbook with a
/// second step (`clock`) that the threshold does not read.
const WATCH_MATRIX: &str = r"
roles: {on-call-engineer: On-Call Engineer, team-lead: Team Lead}
policies:
  - alert: WatchTest
    initial: on-call-engineer
    escalate: [{to: team-lead}]
    threshold: steps.probe.rows | selectattr('n', 'gt', 2) | list | length > 0
    recheck: 30s
default:
  initial: on-call-engineer
  escalate: [{to: team-lead, after: 30m}]
";

fn watch_playbook(probe: &str) -> String {
    format!(
        r#"
name: WatchTest
match: ['alertname="WatchTest"']
target: main
steps:
  - id: probe
    kind: sql
    query: "{probe}"
  - id: clock
    kind: sql
    query: "select clock_timestamp()::text as at"
findings:
  - severity: warning
    text: "Probe measured"
    evidence: probe
"#
    )
}

struct Watch {
    app: TestApp,
    fake: FakeChat,
    target: String,
}

fn worker() -> WorkerSettings {
    WorkerSettings::new("watch-test-worker".into())
}

async fn drain(engine: &Engine, at: i64) {
    for _ in 0..12 {
        if engine::step(engine, &worker(), at).await.expect("step") == 0 {
            return;
        }
    }
    panic!("work kept coming");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-watch-{tag}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// The app on `backend`, with a fresh PostgreSQL database as target
/// `main`, the given playbooks directory and matrix, chat on a fake Slack.
async fn setup(
    backend: Backend,
    playbooks: &Path,
    matrix: Option<&str>,
    extra: &[(&str, &str)],
) -> Watch {
    let fake = FakeChat::start().await;
    let target = common::fresh_store_url(Backend::Postgres).await;
    let dir = temp_dir("cfg");
    let toml = dir.join("settings.toml");
    std::fs::write(&toml, ROLES).expect("settings");
    let matrix_file = matrix.map(|m| {
        let path = dir.join("escalation.yaml");
        std::fs::write(&path, m).expect("matrix");
        path
    });
    let slack_url = format!("{}/slack/api", fake.url);
    let mut env: Vec<(&str, &str)> = vec![
        ("REMEDY__PLAYBOOKS__DIR", playbooks.to_str().expect("utf-8")),
        ("REMEDY__TARGETS__MAIN__URL", target.as_str()),
        ("REMEDY__COMMANDS__ALLOW", "/usr/bin/docker,/bin/echo"),
        ("REMEDY__CHAT__PLATFORM", "slack"),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0INCIDENTS"),
        ("REMEDY__CHAT__SLACK__API_URL", &slack_url),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        (
            "REMEDY__CHAT__SLACK__SIGNING_SECRET",
            "slack-signing-secret-for-watch-tests",
        ),
        ("REMEDY__CHAT__SLACK__POST_RATE", UNPACED),
        ("REMEDY__CHAT__SLACK__UPDATE_RATE", UNPACED),
    ];
    if let Some(path) = &matrix_file {
        env.push(("REMEDY__ESCALATION__FILE", path.to_str().expect("utf-8")));
    }
    env.extend_from_slice(extra);
    let store_url = common::fresh_store_url(backend).await;
    let settings = common::test_settings_with_file(&store_url, Some(&toml), &env);
    let app = App::build(settings).await.expect("app builds");
    Watch {
        app: TestApp {
            router: app.router(),
            store: app.state.store.clone(),
            app,
            store_url,
        },
        fake,
        target,
    }
}

fn notification(name: &str, fingerprint: &str, resolved: bool) -> String {
    json!({
        "receiver": "remedy", "status": if resolved { "resolved" } else { "firing" },
        "version": "4",
        "alerts": [{
            "status": if resolved { "resolved" } else { "firing" },
            "labels": {"alertname": name, "severity": "warning", "service": "agente-api"},
            "annotations": {"summary": format!("{name} on agente-api")},
            "startsAt": "2026-11-27T01:00:00Z",
            "endsAt": if resolved { "2026-11-27T02:00:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint,
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{x=\"{fingerprint}\"}}"), "truncatedAlerts": 0
    })
    .to_string()
}

impl Watch {
    fn engine(&self) -> &Engine {
        &self.app.app.engine
    }

    /// Posts the alert once and lets `engine` diagnose and report it; the
    /// incident's id and the time of the diagnosis.
    async fn open(&self, engine: &Engine, name: &str, fingerprint: &str) -> (i64, i64) {
        let reply = self
            .app
            .post_webhook(notification(name, fingerprint, false))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        let at = now_millis();
        drain(engine, at).await;
        let id = common::scalar::<i64>(&self.app.store, "select max(id) from incidents").await;
        (id, at)
    }

    async fn events(&self, id: i64) -> Vec<(String, Value)> {
        let kinds: Vec<String> = common::column(
            &self.app.store,
            &format!("select kind from incident_events where incident_id = {id} order by id"),
        )
        .await;
        let details: Vec<String> = common::column(
            &self.app.store,
            &format!(
                "select cast(detail as text) from incident_events where incident_id = {id} order by id"
            ),
        )
        .await;
        kinds
            .into_iter()
            .zip(
                details
                    .iter()
                    .map(|d| serde_json::from_str(d).expect("json")),
            )
            .collect()
    }

    async fn triggers(&self, id: i64) -> usize {
        self.events(id)
            .await
            .iter()
            .filter(|(k, _)| k == "escalation_triggered")
            .count()
    }

    async fn pending_rechecks(&self, id: i64) -> i64 {
        common::scalar(
            &self.app.store,
            &format!(
                "select count(*) from work where kind = 'recheck' and incident_id = {id} and state = 'pending'"
            ),
        )
        .await
    }

    async fn report(&self, id: i64) -> remedy::playbook::Report {
        let incident = self
            .app
            .store
            .get_incident(IncidentId(id))
            .await
            .expect("store")
            .expect("incident");
        serde_json::from_value(incident.report.expect("report").0).expect("report")
    }

    fn pings(&self) -> Vec<String> {
        self.fake
            .calls("/chat.postMessage")
            .into_iter()
            .filter(|r| r.body.get("blocks").is_none())
            .map(|r| r.body["text"].as_str().unwrap_or_default().to_owned())
            .filter(|t| t.contains("Escalation to"))
            .collect()
    }

    async fn deliveries(&self) -> i64 {
        self.app.count("notifications").await
    }
}

/// The shipped playbooks with their thresholds scaled down for a test:
/// `vars` of `name` overridden.
fn scaled(engine: &Engine, name: &str, vars: &[(&str, Value)]) -> Engine {
    let mut engine = engine.clone();
    let mut playbooks = (*engine.playbooks).clone();
    let playbook = playbooks
        .iter_mut()
        .find(|p| p.spec.name == name)
        .expect("shipped playbook");
    for (k, v) in vars {
        playbook.set_var(k, v.clone());
    }
    engine.playbooks = std::sync::Arc::new(playbooks);
    engine
}

/// The runbook's DBA row, scaled: a query over 1 s raises the alert, over
/// 4 s goes to the DBA. A `pg_sleep` that is ~1.5 s old at the diagnosis is
/// below the threshold; the re-check a minute later (by the clock passed
/// in) finds it past 4 s and the DBA is pinged once, with the measured pid
/// and age, although Alertmanager sent nothing more. An acknowledgement
/// in between does not stop the watching; reaching the last level does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_crosses_the_threshold_after_the_diagnosis_pings_the_dba_once() {
    let w = setup(Backend::Sqlite, &common::playbooks_dir(), None, &[]).await;
    let engine = scaled(
        w.engine(),
        "DatabaseLongRunningQueries",
        &[("long_query", json!("1s")), ("escalate_query", json!("4s"))],
    );
    // A real session holding a long query open.
    let mut sleeper = sqlx::PgConnection::connect(&w.target)
        .await
        .expect("connect");
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut sleeper)
        .await
        .expect("pid");
    let running = tokio::spawn(async move {
        let _ = sqlx::query("select pg_sleep(60)")
            .execute(&mut sleeper)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(1_600)).await;

    let (id, t0) = w
        .open(&engine, "DatabaseLongRunningQueries", "d1d1d1d1d1d1d1d1")
        .await;
    let report = w.report(id).await;
    let rows = &report.steps["long_queries"].rows;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["duration_seconds"].as_f64().expect("secs") < 4.0);
    assert_eq!(w.triggers(id).await, 0, "below the threshold at diagnosis");
    assert_eq!(
        w.pending_rechecks(id).await,
        1,
        "watched from the diagnosis"
    );
    let due: i64 = common::scalar(
        &w.app.store,
        &format!("select due_at from work where kind = 'recheck' and incident_id = {id}"),
    )
    .await;
    assert_eq!(
        due,
        t0 + MINUTE,
        "escalation.recheck_every, 1 min by default"
    );

    // Acknowledged by the backend developer: watching goes on.
    let who = engine.chat.directory.slack("U0BACK");
    engine
        .store
        .acknowledge(IncidentId(id), &who, true, t0 + 1_000)
        .await
        .expect("ack");

    // Nothing is due before the minute is up.
    drain(&engine, t0 + MINUTE - 1).await;
    assert_eq!(w.triggers(id).await, 0);

    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let t1 = t0 + MINUTE;
    drain(&engine, t1).await;
    assert_eq!(w.triggers(id).await, 1, "{:?}", w.events(id).await);
    assert_eq!(escalate::fire_due(&engine, t1).await.expect("fire"), 1);
    drain(&engine, t1).await;

    let pings = w.pings();
    assert_eq!(pings.len(), 1, "{pings:?}");
    let ping = &pings[0];
    assert!(ping.starts_with("<@U0DBA> ⏫ Escalation to DBA"), "{ping}");
    assert!(ping.contains(&format!("incident #{id}")), "{ping}");
    assert!(ping.contains("measured at "), "{ping}");
    assert!(
        ping.contains(&format!("long_queries: 1 row (pid={pid} duration_seconds=")),
        "{ping}"
    );
    let report = w.report(id).await;
    let measured = report.steps["long_queries"].rows[0]["duration_seconds"]
        .as_f64()
        .expect("secs");
    assert!(measured > 4.0, "{measured}");
    // Only the watched step ran again.
    assert_eq!(
        report.measured.keys().collect::<Vec<_>>(),
        ["long_queries"],
        "{:?}",
        report.measured
    );
    assert_eq!(w.deliveries().await, 1, "no new Alertmanager notification");

    // The only level is reached: watching ended, and nothing pings again.
    assert_eq!(w.pending_rechecks(id).await, 0);
    for minutes in 2..5 {
        let at = t0 + minutes * MINUTE;
        escalate::fire_due(&engine, at).await.expect("fire");
        drain(&engine, at).await;
    }
    assert_eq!(w.pings().len(), 1);
    assert_eq!(w.triggers(id).await, 1);

    running.abort();
    let mut admin = sqlx::PgConnection::connect(&w.target)
        .await
        .expect("connect");
    sqlx::query("select pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await
        .expect("terminate");
}

/// The runbook's Team Lead row at its real count: 3 sessions idle in
/// transaction at the diagnosis, 12 a minute later. The re-check moves the
/// incident to the Team Lead, and the report's evidence shows the 12 with
/// the time they were measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_growing_after_the_diagnosis_move_the_incident_to_the_team_lead() {
    let w = setup(Backend::Postgres, &common::playbooks_dir(), None, &[]).await;
    let engine = scaled(
        w.engine(),
        "DatabaseIdleInTransaction",
        &[("idle_threshold", json!("1s"))],
    );
    let open_idle = |n: usize| {
        let target = w.target.clone();
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
    let mut sessions = open_idle(3).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (id, t0) = w
        .open(&engine, "DatabaseIdleInTransaction", "e1e1e1e1e1e1e1e1")
        .await;
    assert_eq!(w.report(id).await.steps["idle_sessions"].rows.len(), 3);
    assert_eq!(w.triggers(id).await, 0, "3 is not more than 10");
    let updates_before = w.fake.calls("/chat.update").len();

    sessions.extend(open_idle(9).await);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let t1 = t0 + MINUTE;
    drain(&engine, t1).await;
    assert_eq!(w.triggers(id).await, 1, "{:?}", w.events(id).await);
    escalate::fire_due(&engine, t1).await.expect("fire");
    drain(&engine, t1).await;
    let pings = w.pings();
    assert_eq!(pings.len(), 1, "{pings:?}");
    assert!(
        pings[0].starts_with("<@U0LEAD> ⏫ Escalation to Team Lead")
            && pings[0].contains("idle_sessions: 12 rows"),
        "{}",
        pings[0]
    );

    // The message's evidence is the latest measurement, with its time.
    let report = w.report(id).await;
    assert_eq!(report.steps["idle_sessions"].rows.len(), 12);
    assert_eq!(report.measured.get("idle_sessions"), Some(&t1));
    let updates = w.fake.calls("/chat.update");
    assert!(updates.len() > updates_before, "the message was updated");
    let last = updates.last().expect("an update").body.to_string();
    let as_of = format!(
        "measured again: as of {}",
        remedy::chat::report::clock_seconds(t1)
    );
    assert!(last.contains(&as_of), "{last}");
    assert_eq!(w.pending_rechecks(id).await, 0, "the last level is reached");
    drop(sessions);
}

/// A resolve cancels the pending re-check: nothing is measured after it.
async fn resolve_stops_the_watching(backend: Backend) {
    let dir = temp_dir("pb");
    std::fs::write(dir.join("watch.yaml"), watch_playbook("select 1 as n")).expect("playbook");
    let w = setup(backend, &dir, Some(WATCH_MATRIX), &[]).await;
    let engine = w.engine().clone();
    let (id, t0) = w.open(&engine, "WatchTest", "f1f1f1f1f1f1f1f1").await;
    assert_eq!(w.pending_rechecks(id).await, 1);
    let due: i64 = common::scalar(
        &w.app.store,
        &format!("select due_at from work where kind = 'recheck' and incident_id = {id}"),
    )
    .await;
    assert_eq!(due, t0 + 30_000, "the row's `recheck: 30s`");
    // One re-check runs and arms the next.
    drain(&engine, t0 + 30_000).await;
    assert_eq!(w.pending_rechecks(id).await, 1);
    assert_eq!(
        w.report(id).await.measured.get("probe"),
        Some(&(t0 + 30_000))
    );

    let reply = w
        .app
        .post_webhook(notification("WatchTest", "f1f1f1f1f1f1f1f1", true))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(w.pending_rechecks(id).await, 0, "no re-check rows left");
    drain(&engine, t0 + 10 * MINUTE).await;
    assert_eq!(w.pending_rechecks(id).await, 0);
    assert_eq!(
        w.report(id).await.measured.get("probe"),
        Some(&(t0 + 30_000)),
        "nothing measured after the resolve"
    );
}

/// A step that writes fails in the re-check's read-only transaction: the
/// write does not happen, the failure is on the timeline, the re-check is
/// armed again, and nothing escalates on it.
async fn a_failing_recheck_is_recorded_and_retried_and_a_write_in_the_step_fails(backend: Backend) {
    let dir = temp_dir("pb");
    std::fs::write(
        dir.join("watch.yaml"),
        watch_playbook("select watch_bump() as n"),
    )
    .expect("playbook");
    let w = setup(backend, &dir, Some(WATCH_MATRIX), &[]).await;
    let mut admin = sqlx::PgConnection::connect(&w.target)
        .await
        .expect("connect");
    sqlx::raw_sql(
        "create table watch_counter (n int not null);
         insert into watch_counter values (0);
         create function watch_bump() returns int language sql volatile
           as 'update watch_counter set n = n + 5 returning n';",
    )
    .execute(&mut admin)
    .await
    .expect("schema");
    let engine = w.engine().clone();
    let (id, t0) = w.open(&engine, "WatchTest", "a2a2a2a2a2a2a2a2").await;
    for k in 1..=2 {
        drain(&engine, t0 + k * 30_000).await;
    }
    let failures: Vec<Value> = w
        .events(id)
        .await
        .into_iter()
        .filter(|(k, _)| k == "recheck_failed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    let error = failures[0]["error"].as_str().expect("error");
    assert!(
        error.contains("probe") && error.contains("read-only transaction"),
        "{error}"
    );
    let n: i32 = sqlx::query_scalar("select n from watch_counter")
        .fetch_one(&mut admin)
        .await
        .expect("counter");
    assert_eq!(n, 0, "nothing was written");
    assert_eq!(
        w.pending_rechecks(id).await,
        1,
        "retried at the next interval"
    );
    assert_eq!(w.triggers(id).await, 0, "a failure never escalates");
    assert!(w.report(id).await.measured.is_empty());
}

/// With `max_concurrent_diagnoses = 1` and another diagnosis holding the
/// target, the re-check waits in the queue (not an attempt) and runs once
/// the slot is free; then only its step is measured again.
async fn a_recheck_waits_for_its_targets_diagnosis_bound(backend: Backend) {
    let dir = temp_dir("pb");
    std::fs::write(
        dir.join("watch.yaml"),
        watch_playbook("select count(*)::int as n from watch_rows"),
    )
    .expect("playbook");
    let w = setup(
        backend,
        &dir,
        Some(WATCH_MATRIX),
        &[("REMEDY__TARGETS__MAIN__MAX_CONCURRENT_DIAGNOSES", "1")],
    )
    .await;
    let mut admin = sqlx::PgConnection::connect(&w.target)
        .await
        .expect("connect");
    sqlx::raw_sql("create table watch_rows (x int); insert into watch_rows values (1)")
        .execute(&mut admin)
        .await
        .expect("schema");
    let engine = w.engine().clone();
    let (id, t0) = w.open(&engine, "WatchTest", "b3b3b3b3b3b3b3b3").await;
    let clock_at_diagnosis = w.report(id).await.steps["clock"].clone();

    // Another diagnosis holds the target's only slot.
    common::execute(
        &w.app.store,
        &format!(
            "insert into work (kind, state, due_at, lease_owner, lease_until, attempts, target,
                 created_at, updated_at)
             values ('diagnose', 'pending', {t0}, 'other-replica/1', {}, 1, 'main', {t0}, {t0})",
            t0 + 100 * MINUTE
        ),
    )
    .await;
    let at = t0 + 30_000;
    drain(&engine, at).await;
    let (attempts, error): (i64, String) = (
        common::scalar(
            &w.app.store,
            &format!("select attempts from work where kind = 'recheck' and incident_id = {id} and state = 'pending'"),
        )
        .await,
        common::scalar(
            &w.app.store,
            &format!("select last_error from work where kind = 'recheck' and incident_id = {id} and state = 'pending'"),
        )
        .await,
    );
    assert!(error.contains("max_concurrent_diagnoses"), "{error}");
    assert_eq!(attempts, 0, "waiting is not an attempt");
    assert!(
        w.report(id).await.measured.is_empty(),
        "not measured while held"
    );

    // The slot frees; the re-check runs, the value crosses the threshold.
    common::execute(
        &w.app.store,
        "update work set state = 'done', lease_owner = null where lease_owner = 'other-replica/1'",
    )
    .await;
    sqlx::raw_sql("insert into watch_rows values (2), (3)")
        .execute(&mut admin)
        .await
        .expect("rows");
    drain(&engine, at + 5_000).await;
    let report = w.report(id).await;
    assert_eq!(report.measured.get("probe"), Some(&(at + 5_000)));
    assert_eq!(report.steps["probe"].rows[0]["n"], json!(3));
    assert_eq!(
        report.steps["clock"], clock_at_diagnosis,
        "the step the threshold does not read is not run again"
    );
    assert_eq!(w.triggers(id).await, 1);
}
