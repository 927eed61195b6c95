//! The work queue and its worker, driven step by step with a moved clock.

mod common;

use common::{Backend, TestApp, firing, spawn_app};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::Value;

on_both_stores!(
    a_new_incident_is_diagnosed_once_by_the_worker,
    a_lease_held_by_a_dead_worker_expires_and_the_work_is_done_once,
    work_is_not_claimed_twice_while_its_lease_holds,
    a_released_lease_is_taken_over_at_once,
    failing_work_is_retried_with_backoff_then_given_up,
    work_whose_worker_keeps_dying_is_given_up_after_the_last_attempt,
    urgent_kinds_are_claimed_before_older_diagnoses,
    a_deferred_row_keeps_its_place_and_spends_no_attempt,
    an_incidents_notify_rows_never_run_at_once_when_the_younger_is_due_first,
    a_storm_admission_takes_the_rows_of_its_own_claim_along,
);

fn worker(name: &str) -> WorkerSettings {
    WorkerSettings::new(name.into())
}

async fn open_one(app: &TestApp) -> i64 {
    let reply = app
        .post_webhook(firing("eeee000000000001", "2026-11-26T10:00:00Z"))
        .await;
    assert_eq!(reply.json["incidents_opened"], 1, "{}", reply.json);
    app.incidents("").await[0]["id"].as_i64().expect("id")
}

/// Opens `n` incidents of one alertname, one notification each, and
/// returns storm rules that make the fourth and later ones members.
async fn open_a_storms_worth(app: &TestApp, n: usize) -> remedy::store::StormRules {
    for i in 1..=n {
        let reply = app
            .post_webhook(firing(
                &format!("eeee00000000000{i}"),
                "2026-11-26T10:00:00Z",
            ))
            .await;
        assert_eq!(reply.json["incidents_opened"], 1, "{}", reply.json);
    }
    remedy::store::StormRules {
        threshold: 3,
        ..app.app.engine.storm
    }
}

async fn timeline_kinds(app: &TestApp, id: i64) -> Vec<String> {
    app.api(&format!("/v1/incidents/{id}")).await["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn a_new_incident_is_diagnosed_once_by_the_worker(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = open_one(&app).await;
    let now = now_millis();
    assert_eq!(
        engine::step(&app.app.engine, &worker("w1"), now)
            .await
            .expect("step"),
        1
    );
    // The diagnosis queued the report's post (console chat here).
    assert_eq!(
        engine::step(&app.app.engine, &worker("w1"), now + 1)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        engine::step(&app.app.engine, &worker("w1"), now + 120_000)
            .await
            .expect("step"),
        0
    );
    assert_eq!(
        timeline_kinds(&app, id).await,
        ["opened", "escalation_scheduled", "diagnosed", "chat_posted"]
    );
    let shown = app.api(&format!("/v1/incidents/{id}")).await;
    let report: &Value = &shown["incident"]["report"];
    assert_eq!(report["matched"], false);
    assert_eq!(report["labels"]["alertname"], "DatabaseIdleInTransaction");
}

async fn a_lease_held_by_a_dead_worker_expires_and_the_work_is_done_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = open_one(&app).await;
    let now = now_millis();
    // Worker A claims the diagnosis and dies without finishing it.
    let dead = app
        .store
        .claim_work("dead-worker", now, 60_000, 10, 5)
        .await
        .expect("claim");
    assert_eq!(dead.len(), 1);
    // Before the lease runs out nobody else may take it.
    assert_eq!(
        engine::step(&app.app.engine, &worker("b"), now + 59_000)
            .await
            .expect("step"),
        0
    );
    // After it, worker B does.
    assert_eq!(
        engine::step(&app.app.engine, &worker("b"), now + 61_000)
            .await
            .expect("step"),
        1
    );
    // A comes back to life: its completion is refused, so nothing is done twice.
    assert!(
        !app.store
            .complete_work(&dead[0], now + 62_000)
            .await
            .expect("complete")
    );
    assert!(
        !app.store
            .complete_diagnosis(
                &dead[0],
                remedy::domain::IncidentId(id),
                &Value::Null,
                "late",
                &[],
                None,
                now + 62_000
            )
            .await
            .expect("complete")
    );
    assert_eq!(
        timeline_kinds(&app, id).await,
        ["opened", "escalation_scheduled", "diagnosed"]
    );
    let attempts: i64 = common::scalar(&app.store, "select attempts from work").await;
    assert_eq!(attempts, 2);
}

async fn work_is_not_claimed_twice_while_its_lease_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..20 {
        let reply = app
            .post_webhook(firing(
                &format!("ffff0000000000{i:02}"),
                "2026-11-26T10:00:00Z",
            ))
            .await;
        assert_eq!(reply.json["incidents_opened"], 1);
    }
    let now = now_millis();
    // Several workers claim concurrently; every row goes to exactly one.
    let claims = (0..4).map(|w| {
        let store = app.store.clone();
        tokio::spawn(async move {
            store
                .claim_work(&format!("w{w}"), now, 60_000, 3, 5)
                .await
                .expect("claim")
        })
    });
    let mut ids = Vec::new();
    for claim in claims {
        ids.extend(claim.await.expect("task").into_iter().map(|c| c.id));
    }
    let claimed = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), claimed, "a row was claimed twice");
    assert_eq!(claimed, 12);
}

async fn a_released_lease_is_taken_over_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = open_one(&app).await;
    let now = now_millis();
    assert_eq!(
        app.store
            .claim_work("stopping", now, 60_000, 10, 5)
            .await
            .expect("claim")
            .len(),
        1
    );
    assert_eq!(
        app.store
            .release_leases("stopping", now)
            .await
            .expect("release"),
        1
    );
    assert_eq!(
        engine::step(&app.app.engine, &worker("next"), now + 1)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        timeline_kinds(&app, id).await,
        ["opened", "escalation_scheduled", "diagnosed"]
    );
}

async fn failing_work_is_retried_with_backoff_then_given_up(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = now_millis();
    // A kind this version does not know (written by a newer remedy, say).
    common::execute(
        &app.store,
        &format!("insert into work (kind, due_at, created_at, updated_at) values ('frobnicate', {now}, {now}, {now})"),
    )
    .await;
    let mut settings = worker("w");
    settings.max_attempts = 3;
    assert_eq!(
        engine::step(&app.app.engine, &settings, now)
            .await
            .expect("step"),
        1
    );
    // Not due again at once: the first retry waits 2 s after the failure.
    assert_eq!(
        engine::step(&app.app.engine, &settings, now + 1_000)
            .await
            .expect("step"),
        0
    );
    assert_eq!(
        engine::step(&app.app.engine, &settings, now + 2_500)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        engine::step(&app.app.engine, &settings, now + 10_000)
            .await
            .expect("step"),
        1
    );
    // The third failure was the last attempt.
    assert_eq!(
        engine::step(&app.app.engine, &settings, now + 600_000)
            .await
            .expect("step"),
        0
    );
    let state: String = common::scalar(&app.store, "select state from work").await;
    let error: String = common::scalar(&app.store, "select last_error from work").await;
    assert_eq!(state, "failed");
    assert!(error.contains("unknown work kind `frobnicate`"), "{error}");
}

async fn work_whose_worker_keeps_dying_is_given_up_after_the_last_attempt(backend: Backend) {
    let app = spawn_app(backend).await;
    open_one(&app).await;
    let now = now_millis();
    // Two workers in turn claim the row and die holding it (a handler that
    // crashes the process, say).
    for (i, owner) in ["dies-1", "dies-2"].into_iter().enumerate() {
        let at = now + 61_000 * i64::try_from(i).expect("small");
        let claimed = app
            .store
            .claim_work(owner, at, 60_000, 10, 2)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "{owner} claims the row");
    }
    // The last allowed attempt's lease has run out: nobody claims it again.
    let mut settings = worker("w");
    settings.max_attempts = 2;
    assert_eq!(
        engine::step(&app.app.engine, &settings, now + 200_000)
            .await
            .expect("step"),
        0
    );
    let state: String = common::scalar(&app.store, "select state from work").await;
    let error: String = common::scalar(&app.store, "select last_error from work").await;
    assert_eq!(state, "failed");
    assert!(
        error.contains("lease of the last allowed attempt expired"),
        "{error}"
    );
}

async fn urgent_kinds_are_claimed_before_older_diagnoses(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = open_one(&app).await;
    let now = now_millis();
    // The diagnosis has waited a minute; urgent work came after it.
    common::execute(
        &app.store,
        &format!(
            "update work set due_at = {} where kind = 'diagnose'",
            now - 60_000
        ),
    )
    .await;
    for (kind, age) in [("notify", 1_000), ("escalate", 2_000), ("execute", 3_000)] {
        common::execute(
            &app.store,
            &format!(
                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                 values ('{kind}', {id}, {due}, {now}, {now})",
                due = now - age
            ),
        )
        .await;
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        let claimed = app
            .store
            .claim_work("one-at-a-time", now, 60_000, 1, 5)
            .await
            .expect("claim");
        order.extend(claimed.into_iter().map(|c| c.kind));
    }
    // Urgent kinds first, each lane oldest first.
    assert_eq!(order, ["execute", "escalate", "notify", "diagnose"]);
}

async fn a_deferred_row_keeps_its_place_and_spends_no_attempt(backend: Backend) {
    let app = spawn_app(backend).await;
    open_one(&app).await;
    let now = now_millis();
    let claimed = app
        .store
        .claim_work("w", now, 60_000, 1, 5)
        .await
        .expect("claim");
    assert_eq!(claimed[0].attempts, 1);
    assert!(
        app.store
            .defer_work(&claimed[0], "told to wait", now, now + 5_000)
            .await
            .expect("defer")
    );
    let (attempts, due): (i64, i64) = (
        common::scalar(&app.store, "select attempts from work").await,
        common::scalar(&app.store, "select due_at from work").await,
    );
    assert_eq!(attempts, 0, "the wait gave the attempt back");
    assert!(due <= now, "still due: its place in the queue is kept");
    // Held back until the wait is over, then claimed again.
    let early = app.store.claim_work("w", now + 4_000, 60_000, 1, 5).await;
    assert!(early.expect("claim").is_empty());
    let again = app
        .store
        .claim_work("w", now + 5_000, 60_000, 1, 5)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    // The first claim's lease token no longer finishes the row.
    assert!(
        !app.store
            .complete_work(&claimed[0], now + 5_001)
            .await
            .expect("complete")
    );
    assert!(
        app.store
            .complete_work(&again[0], now + 5_001)
            .await
            .expect("complete")
    );
}

/// A handler enqueues with the time of its claim, so a younger row can be
/// due before an older one (seen in the Slack e2e: the execute handler's
/// `notify` came after a click's, due earlier). While one `notify` of an
/// incident is leased, no other may start: two renders at once post the
/// same outcome twice.
async fn an_incidents_notify_rows_never_run_at_once_when_the_younger_is_due_first(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let id = open_one(&app).await;
    let now = now_millis();
    common::execute(&app.store, "delete from work where kind <> 'notify'").await;
    for due in [now + 1_000, now - 1_000] {
        common::execute(
            &app.store,
            &format!(
                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                 values ('notify', {id}, {due}, {now}, {now})"
            ),
        )
        .await;
    }
    let older: i64 = common::scalar(&app.store, "select min(id) from work").await;
    let first = app
        .store
        .claim_work("w", now, 60_000, 5, 5)
        .await
        .expect("claim");
    assert_eq!(first.len(), 1, "only the row due now");
    assert_ne!(first[0].id, older, "the younger row, due first");
    // The older row is due now, but the younger one still holds its lease.
    let during = app
        .store
        .claim_work("w", now + 2_000, 60_000, 5, 5)
        .await
        .expect("claim");
    assert!(during.is_empty(), "claimed while another ran: {during:?}");
    assert!(
        app.store
            .complete_work(&first[0], now + 2_000)
            .await
            .expect("complete")
    );
    let after = app
        .store
        .claim_work("w", now + 2_001, 60_000, 5, 5)
        .await
        .expect("claim");
    assert_eq!(after.iter().map(|w| w.id).collect::<Vec<_>>(), [older]);
}

/// On PostgreSQL a resolve locks its incident, then cancels the incident's
/// pending work. A worker that fences its work row and then changes the
/// incident must take the two locks in that order too, or the two
/// transactions deadlock and PostgreSQL aborts one after
/// `deadlock_timeout` (seen in the soak: a 503 to Alertmanager, a retried
/// row). The test plays the resolve's two steps, as it runs them, around
/// `finish` (a worker finishing `work`); both must go through, and `finish`
/// must find its row cancelled.
async fn resolve_around<F>(app: &TestApp, incident: i64, finish: F) -> bool
where
    F: std::future::Future<Output = Result<bool, remedy::store::StoreError>> + Send + 'static,
{
    let remedy::store::Store::Postgres(pool) = &app.store else {
        unreachable!("a postgres app")
    };
    let now = now_millis();
    let mut resolve = pool.begin().await.expect("begin");
    sqlx::query("update incidents set status = 'resolved', resolved_at = $2 where id = $1")
        .bind(incident)
        .bind(now)
        .execute(&mut *resolve)
        .await
        .expect("the resolve locks its incident");
    let finishing = tokio::spawn(finish);
    // Until the worker's transaction waits for a lock the resolve holds.
    let mut waited = 0;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        if waiting > 0 {
            break;
        }
        waited += 1;
        assert!(waited < 500, "the worker never waited for the resolve");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sqlx::query(
        "update work set state = 'cancelled', lease_owner = null, lease_until = null,
                updated_at = $2
          where incident_id = $1 and state = 'pending'",
    )
    .bind(incident)
    .bind(now)
    .execute(&mut *resolve)
    .await
    .expect("the resolve cancels the incident's work without a deadlock");
    resolve.commit().await.expect("the resolve commits");
    finishing
        .await
        .expect("the worker's task")
        .expect("the worker's transaction ends without a deadlock")
}

#[tokio::test]
async fn postgres_a_resolve_and_a_diagnosis_finishing_do_not_deadlock() {
    let app = spawn_app(Backend::Postgres).await;
    let id = open_one(&app).await;
    let claimed = app
        .store
        .claim_work("w", now_millis(), 60_000, 10, 5)
        .await
        .expect("claim");
    let (store, work) = (app.store.clone(), claimed[0].clone());
    let finish = async move {
        store
            .complete_diagnosis(
                &work,
                remedy::domain::IncidentId(id),
                &Value::Null,
                "diagnosed",
                &[],
                None,
                now_millis(),
            )
            .await
    };
    assert!(
        !resolve_around(&app, id, finish).await,
        "its row was cancelled"
    );
}

#[tokio::test]
async fn postgres_a_resolve_and_a_storm_admission_do_not_deadlock() {
    let app = spawn_app(Backend::Postgres).await;
    let rules = open_a_storms_worth(&app, 4).await;
    let claimed = app
        .store
        .claim_work("w", now_millis(), 60_000, 10, 5)
        .await
        .expect("claim");
    let last = claimed
        .iter()
        .max_by_key(|w| w.incident_id)
        .expect("four rows")
        .clone();
    let id = last.incident_id.expect("an incident's row").0;
    let incident = app
        .store
        .get_incident(remedy::domain::IncidentId(id))
        .await
        .expect("read")
        .expect("the incident");
    let store = app.store.clone();
    let finish = async move {
        let admission = store
            .admit_to_storm(&last, &incident, rules, now_millis())
            .await?;
        Ok(matches!(admission, remedy::store::Admission::Member { .. }))
    };
    assert!(
        !resolve_around(&app, id, finish).await,
        "its row was cancelled: the lease is lost, no storm is joined"
    );
}

/// Under a storm the worker claims a batch of members at a time. The
/// first admission of a claim sweeps its siblings (rows leased by the same
/// claim, not only queued ones) and their handlers find them swept; a row
/// of another claim is left to that claim's own admission.
async fn a_storm_admission_takes_the_rows_of_its_own_claim_along(backend: Backend) {
    use remedy::domain::IncidentId;
    use remedy::store::Admission;
    let app = spawn_app(backend).await;
    let rules = open_a_storms_worth(&app, 8).await;
    let now = now_millis();
    let mut first = app
        .store
        .claim_work("w", now, 60_000, 6, 5)
        .await
        .expect("claim");
    let mut second = app
        .store
        .claim_work("w", now, 60_000, 6, 5)
        .await
        .expect("claim");
    first.sort_by_key(|w| w.incident_id);
    second.sort_by_key(|w| w.incident_id);
    assert_eq!((first.len(), second.len()), (6, 2));
    assert_ne!(first[0].owner, second[0].owner, "each claim has its token");
    let admit = async |work: &remedy::store::ClaimedWork| {
        let id = work.incident_id.expect("an incident's row");
        let incident = app.store.get_incident(id).await.expect("read").expect("it");
        app.store
            .admit_to_storm(work, &incident, rules, now)
            .await
            .expect("admission")
    };
    // The fourth has three before it: it opens the storm and takes the
    // fifth and sixth, held by its own claim, along.
    let opened = admit(&first[3]).await;
    let Admission::Member {
        storm,
        opened: true,
        swept: 2,
    } = opened
    else {
        panic!("{opened:?}");
    };
    for sibling in &first[4..] {
        assert_eq!(admit(sibling).await, Admission::Swept { storm });
    }
    // The seventh belongs to another claim: admitted by it, it takes the
    // eighth, its own sibling.
    assert_eq!(
        admit(&second[0]).await,
        Admission::Member {
            storm,
            opened: false,
            swept: 1
        }
    );
    assert_eq!(admit(&second[1]).await, Admission::Swept { storm });
    for alone in &first[..3] {
        assert_eq!(admit(alone).await, Admission::Alone);
    }
    let members: Vec<i64> = common::column(
        &app.store,
        "select id from incidents where storm_id is not null order by id",
    )
    .await;
    let ids: Vec<i64> = first[3..]
        .iter()
        .chain(&second)
        .map(|w| w.incident_id.map_or(0, |IncidentId(id)| id))
        .collect();
    assert_eq!(members, ids);
    let pending: i64 = common::scalar(
        &app.store,
        "select count(*) from work w join incidents i on i.id = w.incident_id
          where w.kind = 'diagnose' and w.state = 'pending' and i.storm_id is not null",
    )
    .await;
    assert_eq!(pending, 0, "every member's diagnose work is finished");
    let joined: i64 = common::scalar(
        &app.store,
        "select count(*) from incident_events where kind = 'storm_joined'",
    )
    .await;
    assert_eq!(joined, 5, "one storm_joined event per member");
}
