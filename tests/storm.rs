//! Alert storms: one notification with hundreds of alerts of one group
//! gives one storm incident — one diagnosis against the target, one chat
//! message kept up to date, one escalation plan — whose members stay
//! queryable and which resolves when its last member does.

mod common;

use axum::http::StatusCode;
use common::fake_chat::{FakeChat, SLACK_TOKEN};
use common::{Backend, TestApp, column, scalar};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::{Value, json};

on_both_stores!(
    a_storm_of_one_group_is_diagnosed_posted_and_escalated_once,
    alerts_of_one_alertname_across_groups_coalesce_too,
    a_storm_spread_over_many_notifications_is_admitted_a_batch_at_a_time,
);

/// Incidents of one group that open alone before the rest coalesce.
const THRESHOLD: i64 = 3;
const UPDATE_EVERY_MS: i64 = 5_000;

async fn storm_app(backend: Backend) -> (TestApp, FakeChat) {
    let fake = FakeChat::start().await;
    let slack_api = format!("{}/slack/api", fake.url);
    // The shipped playbooks, diagnosing against a real, fresh database.
    let target = common::fresh_store_url(Backend::Postgres).await;
    let playbooks = common::playbooks_dir();
    let threshold = THRESHOLD.to_string();
    let app = common::spawn_app_with(
        backend,
        &[
            ("REMEDY__PLAYBOOKS__DIR", playbooks.to_str().expect("utf-8")),
            ("REMEDY__TARGETS__MAIN__URL", &target),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
            ("REMEDY__CHAT__PLATFORM", "slack"),
            ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0STORM"),
            ("REMEDY__CHAT__SLACK__API_URL", &slack_api),
            ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
            ("REMEDY__CHAT__SLACK__SIGNING_SECRET", "storm-secret"),
            ("REMEDY__STORM__THRESHOLD", &threshold),
            // `drain` holds the clock still: a diagnosis waiting for its
            // target's slot would wait for ever (tests/lanes.rs covers it).
            ("REMEDY__TARGETS__MAIN__MAX_CONCURRENT_DIAGNOSES", "64"),
            // The test's clock is not Slack's: count messages, not the pace.
            ("REMEDY__CHAT__SLACK__POST_RATE", "100000/1s"),
            ("REMEDY__CHAT__SLACK__UPDATE_RATE", "100000/1s"),
            ("REMEDY__STORM__WINDOW", "5m"),
            ("REMEDY__STORM__UPDATE_EVERY", "5s"),
        ],
    )
    .await;
    (app, fake)
}

/// A notification of `n` alerts (`from..from + n`), one `instance` each,
/// in the group `group`.
fn notification(status: &str, group: &str, from: usize, n: usize) -> String {
    let alerts: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({
                "status": status,
                "labels": {
                    "alertname": "DatabaseIdleInTransaction",
                    "severity": "warning",
                    "instance": format!("db-{i:04}:5432"),
                    "zone": if i % 4 == 0 { "eu-2" } else { "eu-1" },
                    "group": group,
                },
                "annotations": {"summary": "idle in transaction"},
                "startsAt": "2026-11-30T03:00:00Z",
                "endsAt": if status == "resolved" { "2026-11-30T03:20:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus/graph",
                "fingerprint": format!("{:016x}", 0x5707_0000_u64 + u64::try_from(i).expect("small")),
            })
        })
        .collect();
    json!({
        "receiver": "remedy", "status": status, "version": "4", "alerts": alerts,
        "groupLabels": {"group": group}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{group=\"{group}\"}}"), "truncatedAlerts": 0
    })
    .to_string()
}

/// Two workers (as two replicas would) run until nothing is due at `at`.
async fn drain(app: &TestApp, at: i64) {
    let a = WorkerSettings::new("storm-worker-a".into());
    let b = WorkerSettings::new("storm-worker-b".into());
    for _ in 0..500 {
        let (x, y) = tokio::join!(
            engine::step(&app.app.engine, &a, at),
            engine::step(&app.app.engine, &b, at)
        );
        if x.expect("step") + y.expect("step") == 0 {
            return;
        }
    }
    panic!("work kept coming");
}

async fn post(app: &TestApp, body: String) {
    let reply = app.post_webhook(body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
}

/// The Slack calls that concern the message with timestamp `ts`.
fn updates_of(fake: &FakeChat, ts: &str) -> Vec<Value> {
    fake.calls("chat.update")
        .into_iter()
        .filter(|r| r.body["ts"] == ts)
        .map(|r| r.body)
        .collect()
}

fn header(body: &Value) -> String {
    body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn text_of(body: &Value) -> String {
    body["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"]["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each of the storm's `members` joined once, and most were taken along
/// by another's admission (`with`): a few write transactions, not one per
/// member. The first admission of a claim (a batch of 16 per worker) takes
/// its siblings along; some are still admitted one by one: on PostgreSQL a
/// sibling that locks its own incident first, and a sibling with a lower
/// id than the claim's first admission (only later ones are swept).
async fn assert_admitted_a_batch_at_a_time(app: &TestApp, members: i64) {
    let joined: Vec<i64> = column(
        &app.store,
        "select incident_id from incident_events where kind = 'storm_joined' order by incident_id",
    )
    .await;
    let mut distinct = joined.clone();
    distinct.dedup();
    assert_eq!(distinct, joined, "a member joined twice");
    assert_eq!(i64::try_from(joined.len()).expect("small"), members);
    let alone: i64 = scalar(
        &app.store,
        "select count(*) from incident_events
          where kind = 'storm_joined' and cast(detail as text) not like '%\"with\"%'",
    )
    .await;
    assert!(
        alone <= 2 * 16,
        "{alone} of {members} members admitted one by one"
    );
}

async fn a_storm_of_one_group_is_diagnosed_posted_and_escalated_once(backend: Backend) {
    let (app, fake) = storm_app(backend).await;
    post(&app, notification("firing", "outage", 0, 200)).await;
    let t0 = now_millis();
    drain(&app, t0).await;

    // 200 incidents and one storm incident.
    assert_eq!(app.count("incidents").await, 201);
    assert_eq!(app.count("storms").await, 1);
    let storm: i64 = scalar(&app.store, "select incident_id from storms").await;
    let members: i64 = scalar(
        &app.store,
        &format!("select count(*) from incidents where storm_id = {storm}"),
    )
    .await;
    assert_eq!(members, 200 - THRESHOLD);
    let scope: String = scalar(&app.store, "select scope from storms").await;
    assert_eq!(scope, "group");
    assert_admitted_a_batch_at_a_time(&app, members).await;

    // Diagnosed: the incidents that opened alone and the storm; no member.
    let diagnosed: Vec<i64> = column(
        &app.store,
        "select incident_id from incident_events where kind = 'diagnosed' order by incident_id",
    )
    .await;
    assert_eq!(
        diagnosed.len(),
        usize::try_from(THRESHOLD + 1).expect("small")
    );
    assert_eq!(diagnosed.last(), Some(&storm));
    // One escalation plan for the storm, none for its members.
    let planned: Vec<i64> = column(
        &app.store,
        "select distinct incident_id from escalation_timers order by incident_id",
    )
    .await;
    assert_eq!(
        planned.len(),
        usize::try_from(THRESHOLD + 1).expect("small")
    );
    assert!(planned.contains(&storm));
    let member_timers: i64 = scalar(
        &app.store,
        "select count(*) from escalation_timers t join incidents i on i.id = t.incident_id
          where i.storm_id is not null",
    )
    .await;
    assert_eq!(member_timers, 0);
    // The threshold (idle sessions) is watched on the storm incident, not
    // on its members.
    let watched: Vec<i64> = column(
        &app.store,
        "select incident_id from work where kind = 'recheck' and state = 'pending'
          order by incident_id",
    )
    .await;
    assert_eq!(
        watched.len(),
        usize::try_from(THRESHOLD + 1).expect("small")
    );
    assert_eq!(watched.last(), Some(&storm));

    // One message for the storm, besides those of the incidents that
    // opened alone.
    let posts = fake.calls("chat.postMessage");
    assert_eq!(
        posts.len(),
        usize::try_from(THRESHOLD + 1).expect("small"),
        "{posts:#?}"
    );
    let storm_post: Vec<&Value> = posts
        .iter()
        .map(|r| &r.body)
        .filter(|b| header(b).contains("storm of"))
        .collect();
    assert_eq!(storm_post.len(), 1);

    // The next check brings the count up to date, once.
    drain(&app, t0 + UPDATE_EVERY_MS + 1).await;
    drain(&app, t0 + 2 * UPDATE_EVERY_MS + 2).await;
    let ts: String = scalar(
        &app.store,
        &format!("select message_id from chat_messages where incident_id = {storm}"),
    )
    .await;
    let updates = updates_of(&fake, &ts);
    assert!(!updates.is_empty() && updates.len() <= 2, "{updates:#?}");
    let last = updates.last().expect("an update");
    assert!(
        header(last).contains("storm of 197 alerts"),
        "{}",
        header(last)
    );
    let text = text_of(last);
    assert!(text.contains("197 firing, 0 resolved"), "{text}");
    assert!(text.contains("`db-0003:5432`"), "{text}");
    assert!(text.contains("… and 187 more"), "{text}");
    assert!(text.contains("`zone`: `eu-1` ×"), "{text}");

    // Members stay queryable and link to their storm; the storm counts them.
    let member: i64 = scalar(
        &app.store,
        &format!("select min(id) from incidents where storm_id = {storm}"),
    )
    .await;
    let shown = app.api(&format!("/v1/incidents/{member}")).await;
    assert_eq!(shown["incident"]["storm_id"], storm);
    assert_eq!(shown["incident"]["report"], Value::Null);
    let shown = app.api(&format!("/v1/incidents/{storm}")).await;
    assert_eq!(shown["storm"]["members"], 197);
    assert_eq!(shown["storm"]["firing"], 197);
    assert_eq!(shown["storm"]["scope"], "group");

    // Its representative diagnosis is re-run at most once a minute.
    let rediagnosed = |app: &TestApp| {
        let store = app.store.clone();
        async move {
            scalar::<i64>(
                &store,
                "select count(*) from incident_events where kind = 'storm_rediagnosed'",
            )
            .await
        }
    };
    drain(&app, t0 + 30_000).await;
    assert_eq!(rediagnosed(&app).await, 0);
    drain(&app, t0 + 61_000).await;
    assert_eq!(rediagnosed(&app).await, 1);
    drain(&app, t0 + 67_000).await;
    assert_eq!(rediagnosed(&app).await, 1);

    // All but one resolve: the storm still fires and says so.
    post(&app, notification("resolved", "outage", 0, 199)).await;
    let t1 = t0 + 70_000;
    drain(&app, t1).await;
    drain(&app, t1 + UPDATE_EVERY_MS + 1).await;
    let status: String = scalar(
        &app.store,
        &format!("select status from incidents where id = {storm}"),
    )
    .await;
    assert_eq!(status, "firing");
    let last = updates_of(&fake, &ts).pop().expect("an update");
    assert!(
        text_of(&last).contains("1 firing, 196 resolved"),
        "{}",
        text_of(&last)
    );

    // The last one resolves: so does the storm, its timers are cancelled
    // and its message says so.
    post(&app, notification("resolved", "outage", 199, 1)).await;
    drain(&app, t1 + 2 * UPDATE_EVERY_MS + 2).await;
    drain(&app, t1 + 3 * UPDATE_EVERY_MS + 3).await;
    let status: String = scalar(
        &app.store,
        &format!("select status from incidents where id = {storm}"),
    )
    .await;
    assert_eq!(status, "resolved");
    let pending: i64 = scalar(
        &app.store,
        &format!(
            "select count(*) from escalation_timers
              where incident_id = {storm} and state in ('pending', 'paused')"
        ),
    )
    .await;
    assert_eq!(pending, 0);
    let open: i64 = scalar(
        &app.store,
        &format!("select count(*) from work where incident_id = {storm} and state = 'pending'"),
    )
    .await;
    assert_eq!(open, 0, "a resolved storm leaves no work behind");
    let last = updates_of(&fake, &ts).pop().expect("an update");
    assert!(header(&last).contains("[RESOLVED]"), "{}", header(&last));
    assert!(
        text_of(&last).contains("all resolved"),
        "{}",
        text_of(&last)
    );

    // A handful of messages for the storm, not hundreds.
    let for_storm = 1 + updates_of(&fake, &ts).len();
    assert!(for_storm <= 6, "{for_storm} calls for the storm's message");
    assert_eq!(
        fake.calls("chat.postMessage").len(),
        usize::try_from(THRESHOLD + 1).expect("small")
    );
}

async fn alerts_of_one_alertname_across_groups_coalesce_too(backend: Backend) {
    let (app, fake) = storm_app(backend).await;
    // `group_by: [instance]`: one group, and one notification, per alert.
    for i in 0..12 {
        post(&app, notification("firing", &format!("g{i}"), i, 1)).await;
    }
    drain(&app, now_millis()).await;
    let scope: String = scalar(&app.store, "select scope from storms").await;
    assert_eq!(scope, "alertname");
    assert_eq!(app.count("storms").await, 1);
    let members: i64 = scalar(
        &app.store,
        "select count(*) from incidents where storm_id is not null",
    )
    .await;
    assert_eq!(members, 12 - THRESHOLD);
    assert_eq!(
        fake.calls("chat.postMessage").len(),
        usize::try_from(THRESHOLD + 1).expect("small")
    );
}

/// A storm as a sustained outage sends it: the alerts of one group come
/// one notification at a time, so each member opens after the one before
/// it. One admission still takes along the members queued behind it whose
/// own window holds `threshold` incidents before them; only those the
/// workers had already claimed are admitted one by one.
async fn a_storm_spread_over_many_notifications_is_admitted_a_batch_at_a_time(backend: Backend) {
    const ALERTS: usize = 80;
    let (app, _fake) = storm_app(backend).await;
    for i in 0..ALERTS {
        post(&app, notification("firing", "outage", i, 1)).await;
        // Each opens in a millisecond of its own, after the one before.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let opened: Vec<i64> = column(&app.store, "select opened_at from incidents order by id").await;
    assert!(opened.windows(2).all(|w| w[0] < w[1]), "{opened:?}");
    drain(&app, now_millis()).await;

    let members: i64 = scalar(
        &app.store,
        "select count(*) from incidents where storm_id is not null",
    )
    .await;
    assert_eq!(members, i64::try_from(ALERTS).expect("small") - THRESHOLD);
    assert_admitted_a_batch_at_a_time(&app, members).await;
    let diagnosed: i64 = scalar(
        &app.store,
        "select count(*) from incident_events where kind = 'diagnosed'",
    )
    .await;
    assert_eq!(diagnosed, THRESHOLD + 1);
}

/// The storm as production sends it: one notification of 2,000 alerts,
/// the SQLite store, the shipped playbooks diagnosing against a real
/// PostgreSQL database, the real worker on the real clock, default storm
/// and target settings, and a fake Slack that answers 429 past one message
/// a second per channel. Intake answers 200; the target never sees more
/// connections from remedy than `targets.main.max_connections`; the channel
/// gets the incidents that opened alone and one storm message, with no
/// 429; no work is given up; the resolve closes everything and the storm's
/// message says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_alerts_at_slacks_pace_keeps_the_target_and_the_channel_calm() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const ALERTS: usize = 2_000;
    const ALONE: usize = 10; // `storm.threshold`'s default
    let fake = FakeChat::start().await;
    fake.enforce_post_pace(Duration::from_millis(900));
    let slack_api = format!("{}/slack/api", fake.url);
    let target = common::fresh_store_url(Backend::Postgres).await;
    let target_db = target.rsplit('/').next().expect("database name").to_owned();
    let playbooks = common::playbooks_dir();
    let app = common::spawn_app_with(
        Backend::Sqlite,
        &[
            ("REMEDY__PLAYBOOKS__DIR", playbooks.to_str().expect("utf-8")),
            ("REMEDY__TARGETS__MAIN__URL", &target),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
            ("REMEDY__CHAT__PLATFORM", "slack"),
            ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0STORM"),
            ("REMEDY__CHAT__SLACK__API_URL", &slack_api),
            ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
            ("REMEDY__CHAT__SLACK__SIGNING_SECRET", "storm-secret"),
            ("REMEDY__INTAKE__MAX_BODY_BYTES", "8388608"),
            ("REMEDY__WORKER__POLL_INTERVAL", "100ms"),
            ("REMEDY__STORM__UPDATE_EVERY", "1s"),
        ],
    )
    .await;

    // Remedy's connections to the target, sampled from another database.
    let peak = Arc::new(AtomicI64::new(0));
    let sampling = CancellationToken::new();
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let admin = common::postgres_admin_url();
        tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&admin).await.expect("admin");
            while !sampling.is_cancelled() {
                let n: i64 =
                    sqlx::query_scalar("select count(*) from pg_stat_activity where datname = $1")
                        .bind(&target_db)
                        .fetch_one(&pool)
                        .await
                        .expect("pg_stat_activity");
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let shutdown = CancellationToken::new();
    let worker = app.app.spawn_worker(shutdown.clone());

    post(&app, notification("firing", "outage", 0, ALERTS)).await;
    let everyone = format!("storm of {} alerts", ALERTS - ALONE);
    let shown = async {
        loop {
            let shows = fake
                .calls("chat.update")
                .iter()
                .any(|r| header(&r.body).contains(&everyone))
                || fake
                    .calls("chat.postMessage")
                    .iter()
                    .any(|r| header(&r.body).contains(&everyone));
            if shows && fake.calls("chat.postMessage").len() > ALONE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), shown)
        .await
        .expect("every lone report is posted and the storm's message shows every member");

    post(&app, notification("resolved", "outage", 0, ALERTS)).await;
    let closed = async {
        loop {
            let said = fake.calls("chat.update").iter().any(|r| {
                header(&r.body).contains("storm of") && text_of(&r.body).contains("all resolved")
            });
            if said {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("the storm's message says it resolved");
    shutdown.cancel();
    worker.await.expect("worker stops");
    sampling.cancel();
    sampler.await.expect("sampler");

    let bound: i64 = 4; // `targets.main.max_connections`'s default
    let seen = peak.load(Ordering::SeqCst);
    assert!(seen >= 1, "the sampler saw remedy diagnose");
    assert!(seen <= bound, "{seen} connections to the target");
    assert_eq!(fake.rate_limited(), 0, "remedy kept to Slack's pace");
    let posts = fake.calls("chat.postMessage");
    assert_eq!(
        posts.len(),
        ALONE + 1,
        "the lone incidents and one storm message"
    );
    let given_up: i64 = scalar(
        &app.store,
        "select count(*) from work where state = 'failed'",
    )
    .await;
    assert_eq!(given_up, 0, "no work is given up");
    let firing: i64 = scalar(
        &app.store,
        "select count(*) from incidents where status = 'firing'",
    )
    .await;
    assert_eq!(firing, 0, "everything is closed");
    assert_eq!(
        app.count("incidents").await,
        i64::try_from(ALERTS + 1).expect("small")
    );
}
