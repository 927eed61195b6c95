//! Retention on both stores, with the clock passed in: exactly what is past
//! each window goes, `keep` incidents and open incidents stay whole, no row
//! is left without its incident, and the API, the timeline export and the
//! work queue still work afterwards. Also the periodic `retention` work row,
//! SQLite giving pages back, and the metrics upkeep's store gauges.

mod common;

use common::{Backend, TestApp, column, execute, firing, resolved, scalar};
use remedy::config::RetentionSettings;
use remedy::domain::{IncidentId, Millis};
use remedy::engine::{self, WorkerSettings, retention};
use remedy::store::{INCIDENT_CHILDREN, Store, StoreOptions, WorkKind};
use std::time::Duration;

const DAY: Millis = 86_400_000;

/// A fixed "now" far from the real clock, so nothing depends on when the
/// test runs.
const NOW: Millis = 1_900_000_000_000;

fn windows(batch: i64) -> RetentionSettings {
    RetentionSettings {
        interval: Duration::from_secs(600),
        batch,
        work: Duration::from_secs(7 * 86_400),
        deliveries: Duration::from_secs(2 * 86_400),
        incidents: Duration::from_secs(90 * 86_400),
        audit: Duration::from_secs(400 * 86_400),
    }
}

/// Opens an incident through the webhook (resolved when `resolved_at` is
/// given, at that time) and gives it one row in every table that belongs to
/// an incident. Returns its id.
async fn incident_with_everything(app: &TestApp, fp: &str, resolved_at: Option<Millis>) -> i64 {
    let starts = "2026-01-01T00:00:00Z";
    assert!(
        app.post_webhook(firing(fp, starts))
            .await
            .status
            .is_success()
    );
    if resolved_at.is_some() {
        let reply = app
            .post_webhook(resolved(fp, starts, "2026-01-01T01:00:00Z"))
            .await;
        assert!(reply.status.is_success());
    }
    let id: i64 = scalar(
        &app.store,
        &format!("select id from incidents where fingerprint = '{fp}'"),
    )
    .await;
    if let Some(at) = resolved_at {
        execute(
            &app.store,
            &format!("update incidents set resolved_at = {at} where id = {id}"),
        )
        .await;
    }
    let s = &app.store;
    execute(
        s,
        &format!(
            "insert into approvals (incident_id, seq, key, action_id, title, risk, roles, quorum,
                 digest, state, created_at, expires_at)
             values ({id}, 0, 'a', 'a', 'A', 'safe', '[]', 1, 'd', 'approved', 0, 0)"
        ),
    )
    .await;
    let approval: i64 = scalar(
        s,
        &format!("select id from approvals where incident_id = {id}"),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into decisions (approval_id, approver, display, decision, at)
             values ({approval}, 'console:alice', 'alice', 'approve', 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into executions (approval_id, incident_id, action_id, target, state, detail, started_at)
             values ({approval}, {id}, 'a', 'main', 'done', '{{}}', 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into chat_messages (incident_id, platform, channel, message_id, updated_at)
             values ({id}, 'console', 'c', 'm', 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into escalations (incident_id, policy, initial_role, roles, created_at)
             values ({id}, 'default', 'oncall', '[]', 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into escalation_timers (incident_id, level, nth, kind, reason, due_at, created_at)
             values ({id}, 1, 0, 'escalate', 'r', 0, 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into pages (incident_id, pager, action, level, reason, state, created_at)
             values ({id}, 'pd', 'trigger', 1, 'r', 'sent', 0)"
        ),
    )
    .await;
    execute(
        s,
        &format!("insert into incident_absences (incident_id, since) values ({id}, 0)"),
    )
    .await;
    execute(
        s,
        &format!(
            "insert into audit_log (at, incident_id, approval_id, event, detail)
             values ({NOW}, {id}, {approval}, 'execution_finished', '{{}}')"
        ),
    )
    .await;
    id
}

/// Rows of incident `id` in each table that belongs to an incident.
async fn rows_of(store: &Store, id: i64) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for &(table, condition) in INCIDENT_CHILDREN {
        let sql = format!(
            "select count(*) from {table} where {}",
            condition.replace("{ids}", &format!("({id})"))
        );
        out.push((table, scalar(store, &sql).await));
    }
    out
}

async fn assert_whole(store: &Store, id: i64) {
    for (table, rows) in rows_of(store, id).await {
        // Finished work expires on its own clock (`retention.work`).
        if table == "work" || table == "storms" {
            continue;
        }
        assert!(rows > 0, "incident {id} lost its {table}");
    }
    let found: i64 = scalar(
        store,
        &format!("select count(*) from incidents where id = {id}"),
    )
    .await;
    assert_eq!(found, 1, "incident {id} is gone");
}

async fn assert_gone(store: &Store, id: i64) {
    for (table, rows) in rows_of(store, id).await {
        assert_eq!(rows, 0, "incident {id} left rows in {table}");
    }
    let found: i64 = scalar(
        store,
        &format!("select count(*) from incidents where id = {id}"),
    )
    .await;
    assert_eq!(found, 0, "incident {id} is still there");
}

async fn retention_deletes_exactly_what_is_past_each_window(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let store = &app.store;
    let old = incident_with_everything(&app, "a1", Some(NOW - 91 * DAY)).await;
    let old_too = incident_with_everything(&app, "a2", Some(NOW - 95 * DAY)).await;
    let old_three = incident_with_everything(&app, "a3", Some(NOW - 200 * DAY)).await;
    let recent = incident_with_everything(&app, "b1", Some(NOW - 89 * DAY)).await;
    let open = incident_with_everything(&app, "c1", None).await;
    let kept = incident_with_everything(&app, "d1", Some(NOW - 300 * DAY)).await;
    assert!(
        store
            .set_incident_keep(IncidentId(kept), true, NOW)
            .await
            .expect("keep")
    );
    execute(
        store,
        &format!(
            "update incidents set opened_at = {} where id = {open}",
            NOW - 400 * DAY
        ),
    )
    .await;

    // Deliveries: the six firing and five resolved notifications, two of
    // them made old.
    let deliveries: i64 = scalar(store, "select count(*) from notifications").await;
    execute(
        store,
        &format!("update notifications set last_seen_at = {}", NOW - DAY),
    )
    .await;
    let old_keys: Vec<String> =
        column(store, "select key from notifications order by key limit 2").await;
    for key in &old_keys {
        execute(
            store,
            &format!(
                "update notifications set last_seen_at = {} where key = '{key}'",
                NOW - 3 * DAY
            ),
        )
        .await;
    }

    // Work: every row the webhooks queued is pending; add finished rows.
    for (state, age) in [("done", 8), ("failed", 30), ("cancelled", 8), ("done", 6)] {
        execute(
            store,
            &format!(
                "insert into work (kind, incident_id, state, due_at, created_at, updated_at)
                 values ('notify', {recent}, '{state}', 0, 0, {})",
                NOW - age * DAY
            ),
        )
        .await;
    }
    execute(
        store,
        &format!(
            "update work set created_at = 0, updated_at = {} where state = 'pending'",
            NOW - 100 * DAY
        ),
    )
    .await;

    // Audit: one entry per incident written at NOW; two old ones.
    for age in [401, 500] {
        execute(
            store,
            &format!(
                "insert into audit_log (at, incident_id, approval_id, event, detail)
                 values ({}, {old}, null, 'decision', '{{}}')",
                NOW - age * DAY
            ),
        )
        .await;
    }

    // Work that goes: the old incidents' rows, and other finished rows
    // last updated more than 7 days ago (including the resolved incidents'
    // cancelled work, cancelled at the real time, long before NOW).
    let old_ids = format!("({old}, {old_too}, {old_three})");
    let expected_work: i64 = scalar(
        store,
        &format!(
            "select count(*) from work where incident_id in {old_ids}
                or (state <> 'pending' and updated_at < {})",
            NOW - 7 * DAY
        ),
    )
    .await;

    // Batches of 2 rows: three old incidents take two incident batches.
    let deleted = retention::run_once(store, &windows(2), NOW)
        .await
        .expect("retention runs");

    for id in [old, old_too, old_three] {
        assert_gone(store, id).await;
    }
    for id in [recent, open, kept] {
        assert_whole(store, id).await;
    }
    assert_eq!(deleted.rows["incidents"], 3);
    assert_eq!(deleted.rows["decisions"], 3);
    assert_eq!(deleted.rows["notifications"], 2);
    assert_eq!(deleted.rows["audit_log"], 2);
    assert_eq!(
        i64::try_from(deleted.rows["work"]).expect("fits"),
        expected_work,
        "{deleted:?}"
    );
    assert!(!deleted.more);
    let left: i64 = scalar(store, "select count(*) from notifications").await;
    assert_eq!(left, deliveries - 2);
    let finished: Vec<String> =
        column(store, "select state from work where state <> 'pending'").await;
    assert_eq!(
        finished,
        ["done"],
        "only the 6-day-old finished row is left"
    );
    let audit: i64 = scalar(store, "select count(*) from audit_log").await;
    assert_eq!(audit, 6, "the audit log outlives the incidents it names");

    // No orphans anywhere (the foreign keys would have refused them too).
    for (table, column_name) in [
        ("incident_events", "incident_id"),
        ("work", "incident_id"),
        ("approvals", "incident_id"),
        ("executions", "incident_id"),
        ("chat_messages", "incident_id"),
        ("escalations", "incident_id"),
        ("escalation_timers", "incident_id"),
    ] {
        let orphans: i64 = scalar(
            store,
            &format!(
                "select count(*) from {table} where {column_name} is not null
                   and {column_name} not in (select id from incidents)"
            ),
        )
        .await;
        assert_eq!(orphans, 0, "orphans in {table}");
    }

    // The API, the export and the queue still work.
    let listed: Vec<i64> = app
        .incidents("limit=50")
        .await
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    let mut expected = vec![recent, open, kept];
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, expected);
    let gone = app
        .get(&format!("/v1/incidents/{old}"), Some(common::API_TOKEN))
        .await;
    assert_eq!(gone.status, axum::http::StatusCode::NOT_FOUND);
    let export = app
        .get(
            &format!("/v1/incidents/{kept}/export?format=json"),
            Some(common::API_TOKEN),
        )
        .await;
    assert_eq!(export.status, axum::http::StatusCode::OK);
    let worker = WorkerSettings::new("retention-test".into());
    engine::step(&app.app.engine, &worker, NOW)
        .await
        .expect("the queue still claims and finishes work");

    // A second run finds nothing more.
    let again = retention::run_once(store, &windows(2), NOW)
        .await
        .expect("runs");
    assert_eq!(again.total(), 0, "{again:?}");
}

async fn a_zero_window_keeps_everything(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let id = incident_with_everything(&app, "e1", Some(NOW - 1000 * DAY)).await;
    execute(
        &app.store,
        &format!(
            "update notifications set last_seen_at = {}",
            NOW - 1000 * DAY
        ),
    )
    .await;
    execute(
        &app.store,
        &format!(
            "update work set state = 'done', updated_at = {}",
            NOW - 1000 * DAY
        ),
    )
    .await;
    let before = app.snapshot().await;
    let off = RetentionSettings {
        work: Duration::ZERO,
        deliveries: Duration::ZERO,
        incidents: Duration::ZERO,
        audit: Duration::ZERO,
        ..windows(100)
    };
    let deleted = retention::run_once(&app.store, &off, NOW)
        .await
        .expect("runs");
    assert_eq!(deleted.total(), 0);
    assert_eq!(app.snapshot().await, before);
    assert_whole(&app.store, id).await;
}

async fn a_released_incident_is_deleted_again_and_keep_is_on_its_timeline(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let id = incident_with_everything(&app, "f1", Some(NOW - 100 * DAY)).await;
    let incident = IncidentId(id);
    assert!(
        app.store
            .set_incident_keep(incident, true, NOW)
            .await
            .expect("keep")
    );
    assert_eq!(
        app.store.incident_kept(incident).await.expect("read"),
        Some(true)
    );
    retention::run_once(&app.store, &windows(10), NOW)
        .await
        .expect("runs");
    assert_whole(&app.store, id).await;
    let kinds: Vec<String> = app
        .store
        .incident_events(incident)
        .await
        .expect("timeline")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "kept"), "{kinds:?}");

    assert!(
        app.store
            .set_incident_keep(incident, false, NOW)
            .await
            .expect("release")
    );
    retention::run_once(&app.store, &windows(10), NOW)
        .await
        .expect("runs");
    assert_gone(&app.store, id).await;
    assert!(
        !app.store
            .set_incident_keep(IncidentId(id + 100), true, NOW)
            .await
            .expect("no such incident")
    );
}

async fn the_retention_job_is_one_pending_row_that_runs_and_schedules_the_next(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let store = &app.store;
    let id = incident_with_everything(&app, "0a1", Some(NOW - 100 * DAY)).await;
    // Every replica schedules at start-up; one row is kept.
    assert!(retention::schedule(store, NOW).await.expect("schedule"));
    assert!(!retention::schedule(store, NOW).await.expect("schedule"));
    // The incident's own pending work is not due (the worker would need
    // playbooks and chat); only the retention row is.
    execute(
        store,
        &format!(
            "update work set due_at = {} where incident_id is not null",
            NOW + DAY
        ),
    )
    .await;

    let worker = WorkerSettings::new("retention-test".into());
    let claimed = engine::step(&app.app.engine, &worker, NOW)
        .await
        .expect("step");
    assert_eq!(claimed, 1);
    assert_gone(store, id).await;
    let pending: Vec<(i64, String)> = sqlx_pairs(
        store,
        "select due_at, kind from work where incident_id is null and state = 'pending'",
    )
    .await;
    let interval = i64::try_from(app.app.engine.retention.interval.as_millis()).expect("fits");
    assert_eq!(
        pending,
        [(NOW + interval, WorkKind::Retention.as_str().to_owned())]
    );
    let done: i64 = scalar(
        store,
        "select count(*) from work where kind = 'retention' and state = 'done'",
    )
    .await;
    assert_eq!(done, 1);
}

async fn sqlx_pairs(store: &Store, sql: &str) -> Vec<(i64, String)> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(p, _) => sqlx::query_as(sql).fetch_all(p).await.expect("query"),
        Store::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.expect("query"),
    }
}

async fn upkeep_reads_store_rows_at_most_once_per_refresh(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let settings = remedy::config::MetricsSettings {
        upkeep_interval: Duration::from_secs(5),
        store_refresh: Duration::from_secs(60),
    };
    let mut upkeep =
        remedy::telemetry::Upkeep::new(app.app.state.metrics.clone(), app.store.clone(), &settings);
    assert!(upkeep.step(NOW).await, "the first pass reads the store");
    let rendered = app.app.state.metrics.render();
    assert!(
        rendered.contains("remedy_store_rows{table=\"incidents\"} 0"),
        "{rendered}"
    );
    incident_with_everything(&app, "1a", None).await;
    assert!(
        !upkeep.step(NOW + 59_000).await,
        "not again within store_refresh"
    );
    assert!(
        app.app
            .state
            .metrics
            .render()
            .contains("remedy_store_rows{table=\"incidents\"} 0")
    );
    assert!(upkeep.step(NOW + 60_000).await);
    assert!(
        app.app
            .state
            .metrics
            .render()
            .contains("remedy_store_rows{table=\"incidents\"} 1")
    );
}

/// Prepared statements the store's only pooled connection keeps in its
/// cache (sqlx keeps up to 100 per connection, each holding SQLite's or
/// PostgreSQL's compiled program).
async fn cached_statements(store: &Store) -> usize {
    use sqlx::Connection;
    match store {
        Store::Sqlite(pool, _) => pool
            .acquire()
            .await
            .expect("connection")
            .cached_statements_size(),
        Store::Postgres(pool) => pool
            .acquire()
            .await
            .expect("connection")
            .cached_statements_size(),
    }
}

/// Deleting incidents must not prepare a statement per batch: a connection
/// that cached one for each batch size (or id list) would fill its cache
/// with compiled programs that never run again, and one prepared and thrown
/// away on every run churns the heap (both part of SQLite's RSS rise in the
/// soak). The ids go in as one bound value, so batches of any size reuse
/// the statements the first one cached and leave the cache where it was.
async fn deleting_incidents_does_not_cache_a_statement_per_batch_size(backend: Backend) {
    // One connection, so every batch runs on the connection whose cache is
    // read (an in-memory SQLite store has exactly one).
    let url = match backend {
        Backend::Sqlite => "sqlite::memory:".to_owned(),
        Backend::Postgres => common::fresh_store_url(backend).await,
    };
    let options = StoreOptions {
        max_connections: 1,
        ..StoreOptions::default()
    };
    let store = Store::connect(&url, &options).await.expect("store");
    store.migrate().await.expect("migrations");
    for i in 0..30 {
        execute(
            &store,
            &format!(
                "insert into incidents (fingerprint, starts_at, alertname, severity, status,
                     labels, annotations, generator_url, receiver, group_key, opened_at,
                     last_seen_at, seen_count, resolved_at)
                 values ('fp{i}', '2026-01-01T00:00:00Z', 'A', 'warning', 'resolved', '{{}}',
                     '{{}}', '', 'r', 'g', 0, 0, 1, 0)"
            ),
        )
        .await;
    }
    let first = store
        .delete_resolved_incidents(NOW, 1)
        .await
        .expect("deletes");
    assert_eq!(first.last(), Some(&("incidents", 1)));
    let warm = cached_statements(&store).await;
    let mut deleted = 1;
    for batch in 2..=7 {
        let rows = store
            .delete_resolved_incidents(NOW, batch)
            .await
            .expect("deletes");
        assert_eq!(
            rows.last(),
            Some(&("incidents", u64::try_from(batch).expect("small")))
        );
        deleted += batch;
    }
    assert_eq!(deleted, 28);
    assert_eq!(
        cached_statements(&store).await,
        warm,
        "batches of 2 to 7 incidents left statements of their own in the cache"
    );
    store.close().await;
}

/// Inserts a bare incident (`status` resolved at `resolved_at`, or firing)
/// in storm `storm`; returns its id.
async fn bare_incident(store: &Store, fp: &str, resolved_at: Option<Millis>) -> i64 {
    let (status, at) = match resolved_at {
        Some(at) => ("resolved", at.to_string()),
        None => ("firing", "null".to_owned()),
    };
    execute(
        store,
        &format!(
            "insert into incidents (fingerprint, starts_at, alertname, severity, status,
                 labels, annotations, generator_url, receiver, group_key, opened_at,
                 last_seen_at, seen_count, resolved_at)
             values ('{fp}', '2026-01-01T00:00:00Z', 'A', 'warning', '{status}', '{{}}',
                 '{{}}', '', 'r', 'g', 0, 0, 1, {at})"
        ),
    )
    .await;
    scalar(
        store,
        &format!("select id from incidents where fingerprint = '{fp}'"),
    )
    .await
}

/// A storm that never ends (a noisy group always over the threshold) must
/// not keep every member it ever had: its members resolved before the
/// window go like any other resolved incident, the storm still counts
/// them, and its representative and its firing or recent members stay.
/// Once the storm itself resolves and expires, the rest go with it.
async fn an_endless_storm_loses_its_expired_members_but_keeps_their_count(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let store = &app.store;
    let old = NOW - 100 * DAY;
    let storm = bare_incident(store, "storm", None).await;
    let representative = bare_incident(store, "representative", Some(old)).await;
    execute(
        store,
        &format!(
            "insert into storms (incident_id, scope, key, representative_id, opened_at)
             values ({storm}, 'group', 'g', {representative}, 0)"
        ),
    )
    .await;
    let expired = [
        bare_incident(store, "m1", Some(old)).await,
        bare_incident(store, "m2", Some(old + DAY)).await,
    ];
    let recent = bare_incident(store, "m3", Some(NOW - DAY)).await;
    let firing_member = bare_incident(store, "m4", None).await;
    let members = [
        representative,
        expired[0],
        expired[1],
        recent,
        firing_member,
    ];
    for id in members {
        execute(
            store,
            &format!("update incidents set storm_id = {storm} where id = {id}"),
        )
        .await;
    }
    let cutoff = NOW - 90 * DAY;

    let deleted = store
        .delete_resolved_incidents(cutoff, 100)
        .await
        .expect("deletes");
    assert_eq!(deleted.last(), Some(&("incidents", 2)));
    for id in expired {
        assert_gone(store, id).await;
    }
    let left: Vec<i64> = column(
        store,
        &format!("select id from incidents where storm_id = {storm} order by id"),
    )
    .await;
    assert_eq!(left, vec![representative, recent, firing_member]);
    let shown = store
        .storm(IncidentId(storm))
        .await
        .expect("storm")
        .expect("still a storm");
    assert_eq!((shown.members, shown.firing), (5, 1));
    let api = app.api(&format!("/v1/incidents/{storm}")).await;
    assert_eq!(api["storm"]["members"], 5);
    // A second pass finds nothing more: the representative stays with its
    // open storm.
    let again = store
        .delete_resolved_incidents(cutoff, 100)
        .await
        .expect("deletes");
    assert!(again.is_empty(), "{again:?}");

    // The storm ends and expires: it goes with everything it had left.
    execute(
        store,
        &format!(
            "update incidents set status = 'resolved', resolved_at = {old}
              where id in ({storm}, {firing_member}, {recent})"
        ),
    )
    .await;
    execute(
        store,
        &format!("update storms set resolved_at = {old} where incident_id = {storm}"),
    )
    .await;
    let last = store
        .delete_resolved_incidents(cutoff, 100)
        .await
        .expect("deletes");
    assert_eq!(last.last(), Some(&("incidents", 4)));
    assert_eq!(app.count("incidents").await, 0);
    assert_eq!(app.count("storms").await, 0);
}

on_both_stores!(
    retention_deletes_exactly_what_is_past_each_window,
    a_zero_window_keeps_everything,
    a_released_incident_is_deleted_again_and_keep_is_on_its_timeline,
    the_retention_job_is_one_pending_row_that_runs_and_schedules_the_next,
    upkeep_reads_store_rows_at_most_once_per_refresh,
    deleting_incidents_does_not_cache_a_statement_per_batch_size,
    an_endless_storm_loses_its_expired_members_but_keeps_their_count,
);

/// Deleting many rows shrinks the SQLite file: pages go back through
/// `incremental_vacuum` and the WAL is truncated.
#[tokio::test]
async fn sqlite_gives_deleted_pages_back_to_the_file_system() {
    let app = common::spawn_app(Backend::Sqlite).await;
    let store = &app.store;
    let mode: i64 = scalar(store, "pragma auto_vacuum").await;
    assert_eq!(
        mode, 2,
        "a new file is created with auto_vacuum = incremental"
    );
    execute(
        store,
        &format!(
            "with recursive n(i) as (select 1 union all select i + 1 from n where i < 20000)
             insert into notifications (key, receiver, group_key, status, alert_count,
                 truncated_alerts, first_seen_at, last_seen_at, seen_count)
             select 'k' || i, 'remedy', hex(randomblob(100)), 'firing', 1, 0, 0, {}, 1 from n",
            NOW - 10 * DAY
        ),
    )
    .await;
    execute(store, "pragma wal_checkpoint(truncate)").await;
    let pages_before: i64 = scalar(store, "pragma page_count").await;
    let deleted = retention::run_once(store, &windows(5000), NOW)
        .await
        .expect("runs");
    assert_eq!(deleted.rows["notifications"], 20_000);
    assert!(deleted.pages_freed > 0);
    let pages_after: i64 = scalar(store, "pragma page_count").await;
    let free: i64 = scalar(store, "pragma freelist_count").await;
    assert_eq!(free, 0);
    assert!(
        pages_after * 4 < pages_before,
        "{pages_before} pages before, {pages_after} after"
    );
    let path = app.store_url.trim_start_matches("sqlite://").to_owned();
    // Truncated, not left at its high-water mark (megabytes here). A write
    // by anything else after the truncation adds its frame (4 KiB and a
    // header): one CI run saw a one-frame WAL.
    let wal = std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
    assert!(wal < 64 * 1024, "the WAL was truncated: {wal} bytes");
}

/// A file made before migration 0010 (auto_vacuum off) is converted once,
/// when the store is opened.
#[tokio::test]
async fn an_older_sqlite_file_is_converted_to_incremental_vacuum() {
    use sqlx::ConnectOptions;
    let url = common::fresh_store_url(Backend::Sqlite).await;
    let options: sqlx::sqlite::SqliteConnectOptions = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let mut conn = options.connect().await.expect("create the old file");
    sqlx::query("create table old_data (x integer)")
        .execute(&mut conn)
        .await
        .expect("a table");
    let mode: i64 = sqlx::query_scalar("pragma auto_vacuum")
        .fetch_one(&mut conn)
        .await
        .expect("mode");
    assert_eq!(mode, 0);
    drop(conn);
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("connects");
    store.migrate().await.expect("migrates");
    let mode: i64 = scalar(&store, "pragma auto_vacuum").await;
    assert_eq!(mode, 2);
    store
        .migrate()
        .await
        .expect("and again, with nothing to do");
}
