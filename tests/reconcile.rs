//! Reconciliation with a fake Alertmanager API, the clock passed in: an
//! incident whose alert is gone from every peer closes once the grace has
//! passed and not before; a present alert (also inhibited) stays open; a
//! peer that cannot be asked means nothing closes; a silenced alert stays
//! open and its escalation waits for the silence to end.

mod common;

use axum::http::StatusCode;
use common::fake_alertmanager::FakeAlertmanager;
use common::{Backend, TestApp};
use remedy::domain::now_millis;
use remedy::engine::reconcile::{self, RunOutcome};
use remedy::engine::{self, Engine, WorkerSettings, escalate};
use remedy::store::WorkKind;
use serde_json::json;

const MINUTE: i64 = 60_000;
const GRACE: i64 = 10 * MINUTE;

on_both_stores!(
    an_absent_alert_closes_after_the_grace_and_not_before,
    an_alert_seen_again_starts_its_grace_over,
    a_later_episode_in_alertmanager_closes_the_earlier_incident,
    a_peer_that_cannot_be_asked_means_nothing_closes,
    a_silenced_alert_stays_open_and_escalates_only_after_the_silence,
    a_silence_that_ends_early_gives_the_timers_their_own_due_times_back,
);

async fn setup(backend: Backend, urls: &[&str], extra: &[(&str, &str)]) -> TestApp {
    let urls = urls.join(",");
    let mut env = vec![
        ("REMEDY__ALERTMANAGER__URLS", urls.as_str()),
        ("REMEDY__ALERTMANAGER__BEARER_TOKEN", "am-token"),
    ];
    env.extend_from_slice(extra);
    common::spawn_app_with(backend, &env).await
}

fn engine(app: &TestApp) -> &Engine {
    &app.app.engine
}

async fn drain(app: &TestApp, at: i64) {
    let worker = WorkerSettings::new("reconcile-test-worker".into());
    for _ in 0..12 {
        if engine::step(engine(app), &worker, at).await.expect("step") == 0 {
            return;
        }
    }
    panic!("work kept coming");
}

/// Opens a CRITICAL DatabasePoolExhaustionCritical incident (the matrix
/// pings the Team Lead after 15 minutes) and lets the worker diagnose and
/// report it. Returns its id and when it opened.
async fn open(app: &TestApp, fingerprint: &str) -> (i64, i64) {
    let body = json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DatabasePoolExhaustionCritical", "severity": "critical",
                       "fp": fingerprint},
            "annotations": {"summary": "pool exhausted"},
            "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{fp=\"{fingerprint}\"}}"), "truncatedAlerts": 0
    });
    let reply = app.post_webhook(body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    drain(app, now_millis()).await;
    let id: i64 = common::scalar(
        &app.store,
        &format!("select id from incidents where fingerprint = '{fingerprint}'"),
    )
    .await;
    let opened: i64 = common::scalar(
        &app.store,
        &format!("select opened_at from incidents where id = {id}"),
    )
    .await;
    (id, opened)
}

async fn run(app: &TestApp, at: i64) -> RunOutcome {
    reconcile::step(engine(app), at).await.expect("reconcile")
}

async fn status(app: &TestApp, id: i64) -> String {
    common::scalar(
        &app.store,
        &format!("select status from incidents where id = {id}"),
    )
    .await
}

async fn events(app: &TestApp, id: i64) -> Vec<String> {
    common::column(
        &app.store,
        &format!("select kind from incident_events where incident_id = {id} order by id"),
    )
    .await
}

async fn timer_states(app: &TestApp, id: i64) -> Vec<String> {
    common::column(
        &app.store,
        &format!(
            "select state from escalation_timers where incident_id = {id} order by level, nth"
        ),
    )
    .await
}

async fn fire(app: &TestApp, at: i64) -> usize {
    escalate::fire_due(engine(app), at).await.expect("fire")
}

async fn an_absent_alert_closes_after_the_grace_and_not_before(backend: Backend) {
    let am = FakeAlertmanager::start().await;
    let app = setup(backend, &[&am.url], &[]).await;
    let (gone, t0) = open(&app, "0000000000000a01").await;
    let (present, _) = open(&app, "0000000000000a02").await;
    let (inhibited, _) = open(&app, "0000000000000a03").await;
    am.active("0000000000000a02");
    am.inhibited("0000000000000a03", "0000000000000fff");
    assert_eq!(timer_states(&app, gone).await, ["pending"]);

    let first = run(&app, t0 + MINUTE).await;
    assert!(first.complete(), "{first:?}");
    assert_eq!(first.absent, 1);
    assert!(first.closed.is_empty());
    // Asked exactly as the issue says, with the configured credential.
    let (path, query, auth) = am.requests().remove(0);
    assert_eq!(path, "/api/v2/alerts");
    assert_eq!(
        query,
        "active=true&silenced=true&inhibited=true&unprocessed=true"
    );
    assert_eq!(auth.as_deref(), Some("Bearer am-token"));

    let before = run(&app, t0 + MINUTE + GRACE - 1).await;
    assert!(before.closed.is_empty(), "not a millisecond early");
    assert_eq!(status(&app, gone).await, "firing");

    let after = run(&app, t0 + MINUTE + GRACE).await;
    assert_eq!(after.closed.iter().map(|i| i.0).collect::<Vec<_>>(), [gone]);
    assert_eq!(status(&app, gone).await, "resolved");
    assert_eq!(status(&app, present).await, "firing");
    assert_eq!(status(&app, inhibited).await, "firing");
    let kinds = events(&app, gone).await;
    assert!(
        kinds.ends_with(&[
            "resolved_by_reconciliation".to_owned(),
            "escalation_cancelled".to_owned()
        ]),
        "{kinds:?}"
    );
    assert_eq!(timer_states(&app, gone).await, ["cancelled"]);
    let ends_at: String = common::scalar(
        &app.store,
        &format!("select ends_at from incidents where id = {gone}"),
    )
    .await;
    assert!(
        ends_at.starts_with("20") && ends_at.ends_with('Z'),
        "{ends_at}"
    );
    // The chat message is brought up to date, nothing else runs for it.
    let queued: Vec<String> = common::column(
        &app.store,
        &format!("select kind from work where incident_id = {gone} and state = 'pending'"),
    )
    .await;
    assert_eq!(queued, ["notify"]);
    // Nobody is paged about it, however late.
    assert_eq!(
        fire(&app, t0 + 24 * 60 * MINUTE).await,
        2,
        "only the open ones"
    );
    assert_eq!(timer_states(&app, gone).await, ["cancelled"]);

    // A second pass finds nothing more to do.
    let again = run(&app, t0 + 2 * GRACE).await;
    assert!(again.closed.is_empty());
}

async fn an_alert_seen_again_starts_its_grace_over(backend: Backend) {
    let am = FakeAlertmanager::start().await;
    let app = setup(backend, &[&am.url], &[]).await;
    let (id, t0) = open(&app, "0000000000000b01").await;
    // Missing (Alertmanager restarted and lost it), then back, then gone.
    run(&app, t0).await;
    am.active("0000000000000b01");
    run(&app, t0 + 5 * MINUTE).await;
    am.gone("0000000000000b01");
    run(&app, t0 + 6 * MINUTE).await;
    let outcome = run(&app, t0 + 6 * MINUTE + GRACE - 1).await;
    assert!(outcome.closed.is_empty(), "the grace counts from t0 + 6m");
    assert_eq!(status(&app, id).await, "firing");
    let outcome = run(&app, t0 + 6 * MINUTE + GRACE).await;
    assert_eq!(outcome.closed.len(), 1);
}

async fn a_later_episode_in_alertmanager_closes_the_earlier_incident(backend: Backend) {
    let am = FakeAlertmanager::start().await;
    let app = setup(backend, &[&am.url], &[]).await;
    // Both opened with startsAt 01:00:00 (the webhook's, full precision).
    let (ended, t0) = open(&app, "0000000000000f01").await;
    let (merged, _) = open(&app, "0000000000000f02").await;
    // The first ended while remedy was away and fired again at 02:00; the
    // second's startsAt moved earlier (a merge): the same episode.
    am.active_since("0000000000000f01", "2026-11-27T02:00:00.000Z");
    am.active_since("0000000000000f02", "2026-11-27T00:59:25.000Z");
    run(&app, t0).await;
    let outcome = run(&app, t0 + GRACE).await;
    assert_eq!(
        outcome.closed.iter().map(|i| i.0).collect::<Vec<_>>(),
        [ended]
    );
    assert_eq!(status(&app, merged).await, "firing");
    let reason: String = common::scalar(
        &app.store,
        &format!(
            "select detail ->> 'reason' from incident_events
              where incident_id = {ended} and kind = 'resolved_by_reconciliation'"
        ),
    )
    .await;
    assert_eq!(reason, "a later episode is firing");
}

async fn a_peer_that_cannot_be_asked_means_nothing_closes(backend: Backend) {
    let up = FakeAlertmanager::start().await;
    let failing = FakeAlertmanager::start().await;
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let app = setup(backend, &[&up.url, &failing.url, &closed], &[]).await;
    let (id, t0) = open(&app, "0000000000000c01").await;

    // Two peers of three cannot be asked: nothing is recorded, so the grace
    // has not even begun.
    failing.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    for minutes in [1, 20, 40] {
        let outcome = run(&app, t0 + minutes * MINUTE).await;
        assert_eq!(outcome.unreachable.len(), 2, "{outcome:?}");
        assert!(outcome.closed.is_empty());
    }
    assert_eq!(status(&app, id).await, "firing");
    let absences: i64 = common::scalar(&app.store, "select count(*) from incident_absences").await;
    assert_eq!(absences, 0);

    // Through the work queue: a failed run still schedules the next one.
    app.app.schedule_reconcile(t0).await.expect("schedule");
    drain(&app, t0 + 41 * MINUTE).await;
    assert_eq!(status(&app, id).await, "firing");
    let next: Vec<i64> = common::column(
        &app.store,
        &format!(
            "select due_at from work where kind = '{}' and state = 'pending'",
            WorkKind::Reconcile.as_str()
        ),
    )
    .await;
    assert_eq!(next, [t0 + 42 * MINUTE]);

    // With only one peer down, still nothing.
    failing.fail_with(None);
    let outcome = run(&app, t0 + 50 * MINUTE).await;
    assert_eq!(outcome.unreachable.len(), 1);
    assert_eq!(status(&app, id).await, "firing");
}

async fn a_silenced_alert_stays_open_and_escalates_only_after_the_silence(backend: Backend) {
    let am = FakeAlertmanager::start().await;
    let app = setup(backend, &[&am.url], &[]).await;
    let (id, opened) = open(&app, "0000000000000d01").await;
    // Silenced a minute after it opened, until two hours after.
    let until = opened + 120 * MINUTE;
    am.silenced(
        "0000000000000d01",
        &["5c1e0000-0000-4000-8000-000000000001"],
    );
    am.add_silence(
        "5c1e0000-0000-4000-8000-000000000001",
        &remedy::domain::format_millis(until),
    );
    let outcome = run(&app, opened + MINUTE).await;
    assert_eq!(outcome.silenced, 1);
    assert!(outcome.closed.is_empty());
    // Long after the Team Lead's 15 minutes, and past the grace: the alert
    // is active in Alertmanager, so it stays open, and nobody is paged.
    for minutes in [15, 30, 90, 119] {
        run(&app, opened + minutes * MINUTE).await;
        assert_eq!(fire(&app, opened + minutes * MINUTE).await, 0, "{minutes}m");
    }
    assert_eq!(status(&app, id).await, "firing");
    let detail = app.api(&format!("/v1/incidents/{id}")).await;
    assert_eq!(detail["escalation"]["silenced"], true, "{detail}");
    assert_eq!(detail["escalation"]["silenced_until"], until);
    assert!(
        events(&app, id)
            .await
            .contains(&"silenced_in_alertmanager".to_owned())
    );
    // The silence ends: the page that was held back goes out then, once.
    assert_eq!(fire(&app, until).await, 1);
    assert_eq!(fire(&app, until + MINUTE).await, 0);
}

async fn a_silence_that_ends_early_gives_the_timers_their_own_due_times_back(backend: Backend) {
    let am = FakeAlertmanager::start().await;
    let app = setup(backend, &[&am.url], &[]).await;
    let (early, opened) = open(&app, "0000000000000e01").await;
    let (late, _) = open(&app, "0000000000000e02").await;
    // Silenced with an end remedy cannot read (404): held run to run.
    am.silenced("0000000000000e01", &["unknown-silence"]);
    am.silenced("0000000000000e02", &["unknown-silence"]);
    run(&app, opened + MINUTE).await;
    assert_eq!(fire(&app, opened + 2 * MINUTE).await, 0);
    // The silence is expired at minute 5 for one, at minute 30 for the
    // other; each pass until then renews the hold.
    am.active("0000000000000e01");
    run(&app, opened + 5 * MINUTE).await;
    for minutes in 6..=29 {
        run(&app, opened + minutes * MINUTE).await;
        assert_eq!(
            fire(&app, opened + minutes * MINUTE).await,
            usize::from(minutes == 15),
            "{minutes}m: only the released one, at its own 15 minutes"
        );
    }
    assert_eq!(timer_states(&app, early).await[0], "fired");
    assert_eq!(timer_states(&app, late).await[0], "pending");
    am.active("0000000000000e02");
    run(&app, opened + 30 * MINUTE).await;
    // Its 15 minutes fell due during the silence: it fires now (with the
    // other's first re-ping, due at 30 minutes).
    assert_eq!(fire(&app, opened + 30 * MINUTE).await, 2);
    assert_eq!(timer_states(&app, late).await[0], "fired");
    let kinds = events(&app, late).await;
    assert!(kinds.contains(&"silence_ended".to_owned()), "{kinds:?}");
}
