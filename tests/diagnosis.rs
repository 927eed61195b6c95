//! Diagnosis on real PostgreSQL: each test creates the runbook's condition
//! for real (sessions idle in transaction, a pg_sleep query, a lock chain,
//! many connections, a table scanned without an index) and checks what the
//! shipped playbooks find and which actions they offer.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Backend;
use remedy::engine::Engine;
use remedy::playbook::{AlertContext, Report};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// A fresh target database and an engine whose `main` target is it.
struct Target {
    url: String,
    engine: Engine,
}

async fn target(extra: &[(&str, &str)]) -> Target {
    let url = common::fresh_store_url(Backend::Postgres).await;
    let dir = common::playbooks_dir();
    let mut env = vec![
        ("REMEDY__TARGETS__MAIN__URL", url.as_str()),
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8 path")),
        ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
    ];
    env.extend_from_slice(extra);
    let settings = common::test_settings("sqlite::memory:", &env);
    let engine = remedy::app::build_engine(&settings, None).expect("engine");
    Target { url, engine }
}

impl Target {
    fn set_vars(&mut self, alertname: &str, vars: &[(&str, Value)]) {
        let mut playbooks = (*self.engine.playbooks).clone();
        let playbook = playbooks
            .iter_mut()
            .find(|p| p.spec.name == alertname)
            .expect("shipped playbook");
        for (name, value) in vars {
            playbook.set_var(name, value.clone());
        }
        self.engine.playbooks = Arc::new(playbooks);
    }

    async fn connect(&self, application: &str) -> PgConnection {
        self.connect_as("postgres", application).await
    }

    /// Connects as `user` (trust auth on the test server).
    async fn connect_as(&self, user: &str, application: &str) -> PgConnection {
        let url = self.url.replacen("postgres@", &format!("{user}@"), 1);
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("connect to target");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "set application_name = '{application}'"
        )))
        .execute(&mut conn)
        .await
        .expect("set application_name");
        conn
    }

    async fn diagnose(&self, labels: &[(&str, &str)]) -> Report {
        let alert = AlertContext {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            status: "firing".into(),
            ..AlertContext::default()
        };
        remedy::engine::diagnose::diagnose(&self.engine, &alert).await
    }
}

async fn pid(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar::<_, i32>("select pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
        .into()
}

fn pids(report: &Report, step: &str, column: &str) -> Vec<i64> {
    report.steps[step]
        .rows
        .iter()
        .filter_map(|r| r.get(column).and_then(Value::as_i64))
        .collect()
}

/// An ordinary application role (not a superuser), as the runbook's app uses.
async fn app_role(t: &Target) -> &'static str {
    let mut admin = t.connect("setup").await;
    sqlx::raw_sql(
        "do $$ begin create role remedy_test_app login; exception when duplicate_object or unique_violation then null; end $$",
    )
    .execute(&mut admin)
    .await
    .expect("role");
    "remedy_test_app"
}

#[tokio::test]
async fn sessions_idle_in_transaction_are_found_and_only_the_stale_ones_offered() {
    let mut t = target(&[]).await;
    t.set_vars(
        "DatabaseIdleInTransaction",
        &[
            ("idle_threshold", "1s".into()),
            ("kill_threshold", "2s".into()),
        ],
    );
    let role = app_role(&t).await;
    // A superuser's session idle just as long: shown, never offered.
    let mut protected = t.connect("admin-console").await;
    sqlx::raw_sql("begin; select 3")
        .execute(&mut protected)
        .await
        .expect("begin");
    let protected_pid = pid(&mut protected).await;
    let mut old = Vec::new();
    for i in 0..2 {
        let mut conn = t.connect_as(role, &format!("leaky-{i}")).await;
        let pid = pid(&mut conn).await;
        sqlx::raw_sql("begin; select 1")
            .execute(&mut conn)
            .await
            .expect("begin");
        old.push((pid, conn));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut young = t.connect_as(role, "young").await;
    sqlx::raw_sql("begin; select 2")
        .execute(&mut young)
        .await
        .expect("begin");
    let young_pid = pid(&mut young).await;
    let mut active = t.connect("busy").await;
    let active_pid = pid(&mut active).await;

    let report = t
        .diagnose(&[("alertname", "DatabaseIdleInTransaction")])
        .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let idle = pids(&report, "idle_sessions", "pid");
    let stale = pids(&report, "stale_sessions", "pid");
    for (pid, _) in &old {
        assert!(
            idle.contains(pid) && stale.contains(pid),
            "pid {pid} not found: {idle:?} / {stale:?}"
        );
    }
    assert!(
        !stale.contains(&young_pid) && !idle.contains(&young_pid),
        "a session under the threshold was listed"
    );
    assert!(!idle.contains(&active_pid));
    let row = report.steps["idle_sessions"]
        .rows
        .iter()
        .find(|r| r["pid"] == old[0].0)
        .expect("row");
    assert_eq!(row["application_name"], "leaky-0");
    assert_eq!(row["usename"], role);
    assert_eq!(row["query"], "begin; select 1");
    assert!(row["idle_seconds"].as_f64().expect("seconds") >= 2.0);
    let offered: Vec<&str> = report
        .actions
        .iter()
        .filter(|a| a.id == "terminate_stale")
        .map(|a| a.params[0].as_str())
        .collect();
    for (pid, _) in &old {
        assert!(
            offered.contains(&pid.to_string().as_str()),
            "no action for {pid}: {offered:?}"
        );
    }
    assert!(!offered.contains(&young_pid.to_string().as_str()));
    assert!(
        idle.contains(&protected_pid),
        "the superuser's session is evidence"
    );
    assert!(
        !offered.contains(&protected_pid.to_string().as_str()),
        "a superuser's session was offered"
    );
    let action = report
        .actions
        .iter()
        .find(|a| a.params[0] == old[0].0.to_string())
        .expect("action");
    let precondition = action.precondition.as_ref().expect("precondition");
    assert_eq!(
        precondition.params[1],
        row["backend_start"].as_str().expect("backend_start")
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.text.contains("idle in transaction for more than 1s"))
    );
}

#[tokio::test]
async fn a_long_running_query_is_found_with_its_duration() {
    let mut t = target(&[]).await;
    t.set_vars("DatabaseLongRunningQueries", &[("long_query", "1s".into())]);
    let mut sleeper = t.connect("sleeper").await;
    let sleeper_pid = pid(&mut sleeper).await;
    let sleeping = tokio::spawn(async move {
        let _ = sqlx::raw_sql("select pg_sleep(8)")
            .execute(&mut sleeper)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseLongRunningQueries")])
        .await;
    let row = report.steps["long_queries"]
        .rows
        .iter()
        .find(|r| r["pid"] == sleeper_pid)
        .unwrap_or_else(|| panic!("pg_sleep not found: {:?}", report.steps["long_queries"]));
    assert!(row["duration_seconds"].as_f64().expect("duration") >= 1.0);
    assert_eq!(row["query_preview"], "select pg_sleep(8)");
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.id == "cancel_query" && a.params == [sleeper_pid.to_string()])
    );
    let mut admin = t.connect("cleanup").await;
    sqlx::query("select pg_cancel_backend($1::int)")
        .bind(sleeper_pid)
        .execute(&mut admin)
        .await
        .expect("cancel");
    sleeping.await.expect("sleeper ends");
}

#[tokio::test]
async fn a_lock_chain_pairs_blocker_and_blocked_and_offers_the_blocker_once() {
    let t = target(&[]).await;
    let role = app_role(&t).await;
    let mut setup = t.connect("setup").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table accounts (id int primary key, balance int); insert into accounts values (1, 10), (2, 20);
         grant all on accounts to {role}"
    )))
    .execute(&mut setup)
    .await
    .expect("table");
    // An application session holds row 1; a superuser's session holds row 2.
    let mut holder = t.connect_as(role, "holder").await;
    sqlx::raw_sql("begin; update accounts set balance = 11 where id = 1")
        .execute(&mut holder)
        .await
        .expect("lock");
    let holder_pid = pid(&mut holder).await;
    let mut admin_holder = t.connect("dba-console").await;
    sqlx::raw_sql("begin; update accounts set balance = 21 where id = 2")
        .execute(&mut admin_holder)
        .await
        .expect("lock");
    let admin_pid = pid(&mut admin_holder).await;
    // Two sessions wait on the application's lock, one on the superuser's.
    let mut waiters = Vec::new();
    let mut waiter_pids = Vec::new();
    for (i, id) in [1, 1, 2].into_iter().enumerate() {
        let mut waiter = t.connect_as(role, &format!("waiter-{i}")).await;
        waiter_pids.push(pid(&mut waiter).await);
        waiters.push(tokio::spawn(async move {
            let _ = sqlx::query("update accounts set balance = 0 where id = $1")
                .bind(id)
                .execute(&mut waiter)
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseLongRunningQueries")])
        .await;
    let chains = &report.steps["lock_chains"].rows;
    // The second waiter on row 1 queues behind the first (the tuple lock).
    let expected = [
        (waiter_pids[0], holder_pid, "idle in transaction"),
        (waiter_pids[1], waiter_pids[0], "active"),
        (waiter_pids[2], admin_pid, "idle in transaction"),
    ];
    for (waiter, blocker, state) in expected {
        let chain = chains
            .iter()
            .find(|r| r["blocked_pid"] == waiter && r["blocking_pid"] == blocker)
            .unwrap_or_else(|| panic!("no chain {blocker} -> {waiter}: {chains:?}"));
        assert_eq!(chain["blocking_state"], state);
    }
    // The head of the chain is offered once for its two victims; the
    // waiter in the middle and the superuser never.
    let offered: Vec<&Vec<String>> = report
        .actions
        .iter()
        .filter(|a| a.id == "terminate_blocker")
        .map(|a| &a.params)
        .collect();
    assert_eq!(offered, [&vec![holder_pid.to_string()]]);
    for conn in [&mut holder, &mut admin_holder] {
        sqlx::raw_sql("rollback")
            .execute(conn)
            .await
            .expect("release");
    }
    for waiter in waiters {
        waiter.await.expect("waiter ends");
    }
}

#[tokio::test]
async fn many_connections_are_measured_against_max_connections() {
    let mut t = target(&[]).await;
    t.set_vars(
        "DatabasePoolExhaustionCritical",
        &[("utilization_critical", 1.into())],
    );
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(t.connect(&format!("pool-{i}")).await);
    }
    let report = t
        .diagnose(&[("alertname", "DatabasePoolExhaustionCritical")])
        .await;
    let row = &report.steps["connections"].rows[0];
    let total = row["total"].as_f64().expect("total");
    let max = row["max_connections"].as_f64().expect("max");
    assert!(total >= 20.0, "{row:?}");
    let expected = (1000.0 * total / max).round() / 10.0;
    assert!(
        (row["utilization_percent"].as_f64().expect("pct") - expected).abs() < 0.11,
        "{row:?}"
    );
    let critical = report
        .findings
        .iter()
        .find(|f| f.severity == remedy::playbook::model::Severity::Critical)
        .expect("critical finding");
    assert!(
        critical.text.contains(&format!("of {max}")),
        "{}",
        critical.text
    );
    let by_app: Vec<&str> = report.steps["by_application"]
        .rows
        .iter()
        .filter_map(|r| r["application_name"].as_str())
        .collect();
    assert!(by_app.iter().any(|a| a.starts_with("pool-")), "{by_app:?}");
    // Prometheus is not reachable here: the step says so, the rest stands.
    assert!(!report.steps["pool_utilization"].ok);
    drop(held);
}

#[tokio::test]
async fn a_table_scanned_without_an_index_is_named_with_advice_to_find_its_columns() {
    let t = target(&[]).await;
    let mut conn = t.connect("scanner").await;
    sqlx::raw_sql(
        "create table audit_logs (id int, tenant_id int, note text);
         insert into audit_logs select g, g % 50, 'n' from generate_series(1, 2000) g",
    )
    .execute(&mut conn)
    .await
    .expect("table");
    for _ in 0..60 {
        sqlx::raw_sql("select count(*) from audit_logs where tenant_id = 7")
            .execute(&mut conn)
            .await
            .expect("scan");
    }
    sqlx::raw_sql("select pg_stat_force_next_flush()")
        .execute(&mut conn)
        .await
        .expect("flush stats");
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseLongRunningQueries")])
        .await;
    let tables: Vec<&str> = report.steps["index_analysis"]
        .rows
        .iter()
        .filter_map(|r| r["relname"].as_str())
        .collect();
    assert!(
        tables.contains(&"audit_logs"),
        "{:?}",
        report.steps["index_analysis"]
    );
    // No statement running now explains the scans (the EXPLAIN-based
    // index action is in tests/runbook_fixes.rs): advice, no placeholder.
    let suggestion = report
        .suggestions
        .iter()
        .find(|s| s.title == "Find the columns of the tables scanned sequentially")
        .expect("index suggestion");
    assert!(
        suggestion
            .text
            .as_deref()
            .is_some_and(|t| t.contains("public.audit_logs") && !t.contains('<')),
        "{suggestion:?}"
    );
}

/// A playbook of the test's own in a temporary folder.
fn custom_playbook(yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-pb-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("custom.yaml"), yaml).expect("write");
    dir
}

#[tokio::test]
async fn a_hanging_step_is_cut_off_at_its_timeout_while_the_rest_completes() {
    let dir = custom_playbook(
        r#"
name: Custom
match: ['alertname="Custom"']
target: main
steps:
  - {id: hangs, kind: sql, query: "select pg_sleep(30)", timeout: 500ms}
  - {id: quick, kind: sql, query: "select 42 as answer"}
findings:
  - {when: steps.quick.ok, severity: info, text: "answer {{ steps.quick.rows[0].answer }}"}
"#,
    );
    let t = target(&[("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8"))]).await;
    let started = Instant::now();
    let report = t.diagnose(&[("alertname", "Custom")]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!report.steps["hangs"].ok);
    assert!(
        report.steps["hangs"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("statement_timeout") || e.contains("timed out")),
        "{:?}",
        report.steps["hangs"]
    );
    assert_eq!(report.findings[0].text, "answer 42");
}

#[tokio::test]
async fn hostile_label_values_reach_sql_only_as_parameters_and_commands_only_as_argv() {
    let marker =
        std::env::temp_dir().join(format!("remedy-pwned-{}", uuid::Uuid::now_v7().simple()));
    let dir = custom_playbook(
        r#"
name: Hostile
match: ['alertname="Hostile"']
target: main
steps:
  - {id: echo_sql, kind: sql, query: "select $1::text as echoed, $2::text as other", params: ["{{ labels.evil }}", "{{ labels.shell }}"]}
  - {id: echo_cmd, kind: command, program: /bin/echo, args: ["{{ labels.shell }}", "{{ labels.evil }}"]}
"#,
    );
    let t = target(&[
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__COMMANDS__ALLOW", "/bin/echo"),
    ])
    .await;
    let mut conn = t.connect("setup").await;
    sqlx::raw_sql("create table x (id int)")
        .execute(&mut conn)
        .await
        .expect("table");
    let evil = "'; DROP TABLE x; -- \"quoted\"\nnew line";
    let shell = format!(
        "$(touch {}); `touch {}`",
        marker.display(),
        marker.display()
    );
    let report = t
        .diagnose(&[("alertname", "Hostile"), ("evil", evil), ("shell", &shell)])
        .await;
    assert!(
        report.steps["echo_sql"].ok,
        "{:?}",
        report.steps["echo_sql"]
    );
    assert_eq!(report.steps["echo_sql"].rows[0]["echoed"], evil);
    assert_eq!(report.steps["echo_sql"].rows[0]["other"], shell.as_str());
    let exists: bool = sqlx::query_scalar("select to_regclass('public.x') is not null")
        .fetch_one(&mut conn)
        .await
        .expect("query");
    assert!(exists, "table x was dropped");
    let lines: Vec<&str> = report.steps["echo_cmd"]
        .rows
        .iter()
        .filter_map(|r| r["line"].as_str())
        .collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("{shell} '; DROP TABLE x; -- \"quoted\"").as_str())
    );
    assert!(!marker.exists(), "a shell ran the label value");
}

#[tokio::test]
async fn an_alert_no_playbook_matches_gets_a_report_with_its_labels() {
    let t = target(&[]).await;
    let report = t
        .diagnose(&[("alertname", "SomethingElse"), ("team", "db")])
        .await;
    assert!(!report.matched);
    assert_eq!(report.summary, "No playbook matches alert `SomethingElse`");
    assert_eq!(
        report.labels,
        BTreeMap::from([
            ("alertname".into(), "SomethingElse".into()),
            ("team".into(), "db".into())
        ])
    );
}

#[tokio::test]
async fn a_webhook_for_a_runbook_alert_gets_its_diagnosis_stored_with_the_incident() {
    let target_db = common::fresh_store_url(Backend::Postgres).await;
    let dir = common::playbooks_dir();
    let app = common::spawn_app_with(
        Backend::Sqlite,
        &[
            ("REMEDY__TARGETS__MAIN__URL", &target_db),
            ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let reply = app
        .post_webhook(common::fixture("firing_single.json"))
        .await;
    assert_eq!(reply.json["incidents_opened"], 1);
    let worker = remedy::engine::WorkerSettings::new("w".into());
    assert_eq!(
        remedy::engine::step(&app.app.engine, &worker, remedy::domain::now_millis())
            .await
            .expect("step"),
        1
    );
    let shown = app.api("/v1/incidents/1").await;
    let report = &shown["incident"]["report"];
    assert_eq!(report["matched"], true);
    assert_eq!(report["playbook"], "DatabasePoolExhaustionCritical");
    assert_eq!(report["steps"]["connections"]["ok"], true);
    assert!(report["findings"].as_array().is_some_and(|f| !f.is_empty()));
    assert!(
        report["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["id"] == "restart_service"))
    );
    let timeline = shown["timeline"].as_array().expect("timeline");
    let kinds: Vec<&str> = timeline.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["opened", "escalation_scheduled", "diagnosed"]);
    assert!(
        timeline[2]["detail"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("DatabasePoolExhaustionCritical: "))
    );
}

/// A target database whose owner puts `public` before `pg_catalog` and
/// shadows `pg_stat_activity` and `pg_terminate_backend`: remedy's
/// connections search the system catalogs first, so the diagnosis sees the
/// real sessions and the shadow function never runs.
#[tokio::test]
async fn a_shadowing_search_path_cannot_stand_in_for_the_system_catalogs() {
    let t = target(&[]).await;
    let name = t.url.rsplit('/').next().expect("db").to_owned();
    let mut owner = t.connect("setup").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table public.shadow_calls (pid int);
         create view public.pg_stat_activity as
             select * from pg_catalog.pg_stat_activity where false;
         create function public.pg_terminate_backend(p int) returns boolean
             language sql as 'insert into public.shadow_calls values (p) returning true';
         alter database {name} set search_path = public, pg_catalog;"
    )))
    .execute(&mut owner)
    .await
    .expect("shadow objects");
    let mut t = t;
    t.set_vars(
        "DatabaseIdleInTransaction",
        &[("idle_threshold", Value::from("1s"))],
    );
    let mut leak = t.connect("victim").await;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut leak)
        .await
        .expect("begin");
    let victim = pid(&mut leak).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseIdleInTransaction")])
        .await;
    assert!(
        pids(&report, "idle_sessions", "pid").contains(&victim),
        "the real pg_stat_activity was read: {:?}",
        report.steps["idle_sessions"]
    );
    let pool = t.engine.diagnoser.target("main").expect("target");
    let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1::int)")
        .bind(victim)
        .fetch_one(pool)
        .await
        .expect("terminate");
    assert!(terminated);
    let shadow_calls: i64 = sqlx::query_scalar("select count(*) from public.shadow_calls")
        .fetch_one(&mut owner)
        .await
        .expect("count");
    assert_eq!(shadow_calls, 0, "the shadow function never ran");
}

/// The target is the application's database: sessions of other databases on
/// the same server are never listed, so never offered for termination.
#[tokio::test]
async fn sessions_of_other_databases_on_the_server_are_not_listed() {
    let mut t = target(&[]).await;
    t.set_vars(
        "DatabaseIdleInTransaction",
        &[("idle_threshold", Value::from("1s"))],
    );
    let other = common::fresh_store_url(Backend::Postgres).await;
    let mut elsewhere = PgConnection::connect(&other).await.expect("connect");
    sqlx::raw_sql("begin; select 1")
        .execute(&mut elsewhere)
        .await
        .expect("begin");
    let foreign = pid(&mut elsewhere).await;
    let mut here = t.connect("victim").await;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut here)
        .await
        .expect("begin");
    let local = pid(&mut here).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseIdleInTransaction")])
        .await;
    let listed = pids(&report, "idle_sessions", "pid");
    assert!(listed.contains(&local), "{listed:?}");
    assert!(!listed.contains(&foreign), "{listed:?}");
}

/// A local HTTP server; every request's path and query is recorded.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn step_error(report: &Report, step: &str) -> String {
    let out = &report.steps[step];
    assert!(!out.ok, "{step} should have failed: {out:?}");
    out.error.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_probe_redirecting_to_another_host_is_refused_not_followed() {
    use axum::http::{StatusCode, header};
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let elsewhere = serve(axum::Router::new().route(
        "/latest/meta-data",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "instance secrets" }
        }),
    ))
    .await;
    let location = format!("{elsewhere}/latest/meta-data");
    let probe = serve(axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let location = location.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, location)]) }
        }),
    ))
    .await;
    let dir = custom_playbook(
        r#"
name: Redirect
match: ['alertname="Redirect"']
steps:
  - {id: probe, kind: http, url: "{{ probes.pms }}/health"}
"#,
    );
    let t = target(&[
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__PROBES__PMS", probe.as_str()),
    ])
    .await;
    let report = t.diagnose(&[("alertname", "Redirect")]).await;
    let error = step_error(&report, "probe");
    assert!(error.contains("another origin"), "{error}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_label_cannot_change_an_http_steps_host_or_path() {
    let paths = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = paths.clone();
    let probe = serve(axum::Router::new().fallback(move |uri: axum::http::Uri| {
        seen.lock().expect("lock").push(uri.to_string());
        async { "ok" }
    }))
    .await;
    let dir = custom_playbook(
        r#"
name: Pinned
match: ['alertname="Pinned"']
steps:
  - {id: encoded, kind: http, url: "{{ probes.pms }}/api/{{ labels.item }}/status?q={{ labels.item }}"}
  - {id: suffix, kind: http, url: "{{ probes.pms }}{{ labels.item }}/status"}
  - {id: dots, kind: http, url: "{{ probes.pms }}/api/{{ labels.dots }}/admin"}
"#,
    );
    let t = target(&[
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__PROBES__PMS", probe.as_str()),
    ])
    .await;
    let item = "@169.254.169.254/../../admin?x=1#";
    let report = t
        .diagnose(&[("alertname", "Pinned"), ("item", item), ("dots", "..")])
        .await;
    assert!(report.steps["encoded"].ok, "{:?}", report.steps["encoded"]);
    let encoded = "%40169.254.169.254%2F..%2F..%2Fadmin%3Fx%3D1%23";
    assert_eq!(
        *paths.lock().expect("lock"),
        [format!("/api/{encoded}/status?q={encoded}")],
        "only the encoded request reached the probe"
    );
    let suffix = step_error(&report, "suffix");
    assert!(
        suffix.contains("not a URL") || suffix.contains("differs"),
        "{suffix}"
    );
    let dots = step_error(&report, "dots");
    assert!(dots.contains("would change the URL's path"), "{dots}");
}

#[tokio::test]
async fn an_oversize_probe_answer_is_cut_at_the_cap() {
    let probe = serve(axum::Router::new().route(
        "/huge",
        axum::routing::get(|| async { "x".repeat(8 << 20) }),
    ))
    .await;
    let dir = custom_playbook(
        r#"
name: Huge
match: ['alertname="Huge"']
steps:
  - {id: probe, kind: http, url: "{{ probes.pms }}/huge"}
"#,
    );
    let t = target(&[
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__PROBES__PMS", probe.as_str()),
    ])
    .await;
    let report = t.diagnose(&[("alertname", "Huge")]).await;
    assert!(report.steps["probe"].ok, "{:?}", report.steps["probe"]);
    let body = report.steps["probe"].rows[0]["body"]
        .as_str()
        .expect("body")
        .len();
    assert_eq!(body, 512);
}

#[tokio::test]
async fn a_dash_leading_label_argument_is_refused_unless_marked_allow_dash() {
    let dir = custom_playbook(
        r#"
name: Dash
match: ['alertname="Dash"']
steps:
  - {id: plain, kind: command, program: /bin/echo, args: [restart, "{{ labels.service }}"]}
  - {id: marked, kind: command, program: /bin/echo, args: [restart, {arg: "{{ labels.service }}", allow_dash: true}]}
  - {id: literal, kind: command, program: /bin/echo, args: ["--tail={{ labels.lines }}"]}
actions:
  - id: restart
    title: Restart {{ labels.service }}
    kind: command
    risk: disruptive
    program: /bin/echo
    args: [compose, restart, "{{ labels.service }}"]
"#,
    );
    let t = target(&[
        ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
        ("REMEDY__COMMANDS__ALLOW", "/bin/echo"),
    ])
    .await;
    let report = t
        .diagnose(&[
            ("alertname", "Dash"),
            ("service", "--no-deps"),
            ("lines", "5"),
        ])
        .await;
    let plain = step_error(&report, "plain");
    assert!(
        plain.contains(
            "argument 1 `{{ labels.service }}` renders to `--no-deps`, which starts with `-`"
        ),
        "{plain}"
    );
    assert_eq!(report.steps["marked"].rows[0]["line"], "restart --no-deps");
    assert_eq!(report.steps["literal"].rows[0]["line"], "--tail=5");
    assert!(report.actions.is_empty(), "{:?}", report.actions);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("action `restart`") && e.contains("starts with `-`")),
        "{:?}",
        report.errors
    );
}

#[tokio::test]
async fn a_blocker_calling_itself_remedy_is_listed_and_terminated_while_remedys_own_sessions_are_not()
 {
    let t = target(&[]).await;
    let role = app_role(&t).await;
    let mut setup = t.connect("setup").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table accounts (id int primary key, balance int); insert into accounts values (1, 10), (2, 20);
         grant all on accounts to {role}"
    )))
    .execute(&mut setup)
    .await
    .expect("table");
    // The impostor: an application session that names itself remedy.
    let mut impostor = t.connect_as(role, "remedy").await;
    sqlx::raw_sql("begin; update accounts set balance = 11 where id = 1")
        .execute(&mut impostor)
        .await
        .expect("lock");
    let impostor_pid = pid(&mut impostor).await;
    // One of remedy's own pooled sessions blocks too.
    let pool = t.engine.diagnoser.target("main").expect("main").clone();
    let mut own = pool.acquire().await.expect("pooled connection");
    sqlx::raw_sql("begin; update accounts set balance = 21 where id = 2")
        .execute(&mut *own)
        .await
        .expect("lock");
    let (own_pid, own_start): (i32, String) = sqlx::query_as(
        "select pid, backend_start::text from pg_stat_activity where pid = pg_backend_pid()",
    )
    .fetch_one(&mut *own)
    .await
    .expect("own backend");
    let mut waiters = Vec::new();
    for id in [1, 2] {
        let mut waiter = t.connect_as(role, &format!("waiter-{id}")).await;
        waiters.push(tokio::spawn(async move {
            let _ = sqlx::query("update accounts set balance = 0 where id = $1")
                .bind(id)
                .execute(&mut waiter)
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = t
        .diagnose(&[("alertname", "DatabaseLongRunningQueries")])
        .await;
    assert_eq!(
        pids(&report, "blockers", "blocking_pid"),
        [impostor_pid],
        "{:?}",
        report.steps["blockers"]
    );
    let terminate = report
        .actions
        .iter()
        .find(|a| a.id == "terminate_blocker")
        .expect("the impostor is offered")
        .clone();
    assert_eq!(terminate.params, [impostor_pid.to_string()]);

    let labels = remedy::domain::Labels::default();
    let context = remedy::actions::Context {
        incident: 0,
        labels: &labels,
        approvers: vec!["console:alice".into(), "console:bob".into()],
        alertmanager_url: None,
        http: &t.engine.http,
        timeout: Duration::from_secs(5),
        max_output_bytes: 8192,
    };
    // remedy's own session, even when an action names it, is refused.
    let mut aimed_at_own = terminate.clone();
    aimed_at_own.params = vec![own_pid.to_string()];
    if let Some(pre) = aimed_at_own.precondition.as_mut() {
        pre.params = vec![own_pid.to_string(), own_start.clone()];
    }
    let refused = remedy::actions::run(
        &t.engine.diagnoser,
        &t.engine.executor,
        &aimed_at_own,
        &context,
    )
    .await;
    assert_eq!(refused.state, "refused", "{refused:?}");
    assert!(
        sqlx::query("select 1").execute(&mut *own).await.is_ok(),
        "own session alive"
    );

    let done = remedy::actions::run(
        &t.engine.diagnoser,
        &t.engine.executor,
        &terminate,
        &context,
    )
    .await;
    assert_eq!(done.state, "done", "{done:?}");
    let mut admin = t.connect("checker").await;
    let alive: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where pid = $1")
        .bind(i32::try_from(impostor_pid).expect("pid"))
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(alive, 0, "the impostor was terminated");
    sqlx::raw_sql("rollback")
        .execute(&mut *own)
        .await
        .expect("release");
    for waiter in waiters {
        waiter.await.expect("waiter ends");
    }
}
