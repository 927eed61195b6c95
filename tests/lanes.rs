//! The worker under a storm: a diagnosis that hangs holds only its own row
//! and slot while urgent work goes on, and a target database never runs
//! more than its `max_concurrent_diagnoses`, across workers; the rest wait
//! in the queue as rows. Diagnoses "hang" on an advisory lock the test
//! holds on a real PostgreSQL target, so the test decides when they end.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, TestApp};
use remedy::domain::now_millis;
use remedy::engine::{self, Finished, Worker, WorkerSettings};
use serde_json::json;
use sqlx::Connection;

on_both_stores!(
    a_hung_diagnosis_holds_only_its_own_row_while_urgent_work_goes_on,
    a_target_runs_at_most_its_bound_of_diagnoses_and_the_rest_wait_as_rows,
);

/// Waits on the advisory lock 4242 (shared), which the test holds.
const PLAYBOOK: &str = r#"
name: Hang
match: ['alertname="Hang"']
target: main
steps:
  - id: wait
    kind: sql
    query: select true as locked from (select pg_advisory_xact_lock_shared(4242)) l
    timeout: 60s
"#;

/// No handler in these tests should take this long; a worker that blocks
/// on the hung diagnosis fails here instead of hanging the run.
const GUARD: Duration = Duration::from_secs(60);

struct Target {
    url: String,
    name: String,
    /// Holds the lock the diagnoses wait for.
    blocker: sqlx::PgConnection,
}

impl Target {
    async fn new() -> Self {
        let url = common::fresh_store_url(Backend::Postgres).await;
        let name = url.rsplit('/').next().expect("database name").to_owned();
        let mut blocker = sqlx::PgConnection::connect(&url).await.expect("target");
        sqlx::query("select pg_advisory_lock(4242)::text")
            .execute(&mut blocker)
            .await
            .expect("lock");
        Self { url, name, blocker }
    }

    async fn release(&mut self) {
        sqlx::query("select pg_advisory_unlock(4242)::text")
            .execute(&mut self.blocker)
            .await
            .expect("unlock");
    }

    /// Sessions on the target waiting for the lock: running diagnoses.
    async fn waiting_sessions(&self) -> i64 {
        let mut admin = sqlx::PgConnection::connect(&common::postgres_admin_url())
            .await
            .expect("admin");
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = $1 and wait_event_type = 'Lock' and wait_event = 'advisory'",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .expect("activity")
    }

    /// Waits until `n` diagnoses wait on the lock.
    async fn until_waiting(&self, n: i64) {
        tokio::time::timeout(GUARD, async {
            while self.waiting_sessions().await != n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} sessions wait on the target"));
    }
}

async fn app(backend: Backend, target: &Target) -> TestApp {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("remedy-lanes-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("hang.yaml"), PLAYBOOK).expect("playbook");
    common::spawn_app_with(
        backend,
        &[
            ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
            ("REMEDY__PLAYBOOKS__DEADLINE", "120s"),
            ("REMEDY__TARGETS__MAIN__URL", target.url.as_str()),
            ("REMEDY__TARGETS__MAIN__MAX_CONCURRENT_DIAGNOSES", "2"),
        ],
    )
    .await
}

/// Opens an incident for `alertname`; returns its id.
async fn open(app: &TestApp, alertname: &str, n: u32) -> i64 {
    let fingerprint = format!("1a4e5000000{n:05}");
    let body = json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": alertname, "severity": "warning", "n": n.to_string()},
            "annotations": {},
            "startsAt": "2026-11-30T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": "{}:{}", "truncatedAlerts": 0
    });
    let reply = app.post_webhook(body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    common::scalar(
        &app.store,
        &format!("select id from incidents where fingerprint = '{fingerprint}'"),
    )
    .await
}

async fn next(worker: &mut Worker) -> Finished {
    let finished = tokio::time::timeout(GUARD, worker.next_finished())
        .await
        .expect("a handler ends while the diagnosis hangs")
        .expect("a handler is running");
    finished.result.as_ref().expect("outcome recorded");
    finished
}

async fn claim(worker: &mut Worker, at: i64) -> usize {
    tokio::time::timeout(GUARD, worker.claim(at))
        .await
        .expect("claiming does not wait for running handlers")
        .expect("claim")
}

async fn a_hung_diagnosis_holds_only_its_own_row_while_urgent_work_goes_on(backend: Backend) {
    let mut target = Target::new().await;
    let app = app(backend, &target).await;
    let hung = open(&app, "Hang", 1).await;
    let mut worker = Worker::new(
        app.app.engine.clone(),
        WorkerSettings::new("lanes-test".into()),
    );
    let now = now_millis();
    assert_eq!(claim(&mut worker, now).await, 1);
    target.until_waiting(1).await;

    // Meanwhile another incident arrives, with urgent work queued for it.
    let other = open(&app, "Other", 2).await;
    for kind in ["notify", "execute"] {
        common::execute(
            &app.store,
            &format!(
                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                 values ('{kind}', {other}, {now}, {now}, {now})",
                now = now_millis()
            ),
        )
        .await;
    }
    let later = now_millis();
    assert_eq!(claim(&mut worker, later).await, 3);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let finished = next(&mut worker).await;
        kinds.push(finished.kind);
    }
    kinds.sort();
    assert_eq!(kinds, ["diagnose", "execute", "notify"]);
    for kind in ["diagnose", "execute", "notify"] {
        let state: String = common::scalar(
            &app.store,
            &format!(
                "select state from work where incident_id = {other} and kind = '{kind}'
                  order by id limit 1"
            ),
        )
        .await;
        assert_eq!(state, "done", "{kind} of the other incident");
    }
    // The hung diagnosis still holds its own row, and only that.
    assert_eq!(worker.in_flight(), 1);
    let leased: i64 = common::scalar(
        &app.store,
        &format!(
            "select count(*) from work where incident_id = {hung} and kind = 'diagnose'
               and state = 'pending' and lease_owner is not null"
        ),
    )
    .await;
    assert_eq!(leased, 1);

    // Once the target answers, it finishes and records its report.
    target.release().await;
    assert_eq!(next(&mut worker).await.kind, "diagnose");
    let state: String = common::scalar(
        &app.store,
        &format!("select state from work where incident_id = {hung} and kind = 'diagnose'"),
    )
    .await;
    assert_eq!(state, "done");
}

async fn a_target_runs_at_most_its_bound_of_diagnoses_and_the_rest_wait_as_rows(backend: Backend) {
    let mut target = Target::new().await;
    let app = app(backend, &target).await;
    for n in 0..5 {
        open(&app, "Hang", n).await;
    }
    let mut a = Worker::new(
        app.app.engine.clone(),
        WorkerSettings::new("replica-a".into()),
    );
    let now = now_millis();
    assert_eq!(claim(&mut a, now).await, 5);
    // Two take the target's slots; three are given back at once.
    for _ in 0..3 {
        assert_eq!(next(&mut a).await.kind, "diagnose");
    }
    assert_eq!(a.in_flight(), 2);
    target.until_waiting(2).await;
    let count = |sql: &'static str| common::scalar::<i64>(&app.store, sql);
    assert_eq!(
        count(
            "select count(*) from work where kind = 'diagnose' and state = 'pending'
               and lease_owner is not null and target = 'main'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            "select count(*) from work where kind = 'diagnose' and state = 'pending'
               and lease_owner is null and attempts = 0"
        )
        .await,
        3,
        "waiting in the queue, no attempt spent"
    );

    // Another worker (a second replica) passes them over while the target
    // is full: they are not claimed only to be given back again.
    let mut b = Worker::new(
        app.app.engine.clone(),
        WorkerSettings::new("replica-b".into()),
    );
    assert_eq!(claim(&mut b, now + 10_000).await, 0);
    assert_eq!(target.waiting_sessions().await, 2);

    // The target answers: the two finish, and the others run in turn.
    target.release().await;
    next(&mut a).await;
    next(&mut a).await;
    let settings = WorkerSettings::new("replica-b".into());
    for round in 2..12 {
        engine::step(&app.app.engine, &settings, now + round * 10_000)
            .await
            .expect("step");
    }
    assert_eq!(
        count("select count(*) from work where kind = 'diagnose' and state = 'done'").await,
        5
    );
    assert_eq!(
        count("select max(attempts) from work where kind = 'diagnose'").await,
        1,
        "each ran once; waiting for the target cost no attempt"
    );
}
