//! Storms and chat limits: a 429 or the channel's pace is a wait in the
//! queue, never a failed attempt; a burst of reports is posted at Slack's
//! pace (one message a second per channel) without running into 429s.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::fake_chat::{FakeChat, SLACK_TOKEN, Scripted, UNPACED};
use common::{Backend, TestApp};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use tokio_util::sync::CancellationToken;

on_both_stores!(a_rate_limited_post_spends_no_attempt_however_often_it_is_told_to_wait);

/// A Slack app with no playbooks: every alert gets an "unmatched" report.
async fn slack_app(backend: Backend, fake: &FakeChat, extra: &[(&str, &str)]) -> TestApp {
    let api = format!("{}/slack/api", fake.url);
    let mut env = vec![
        ("REMEDY__CHAT__PLATFORM", "slack"),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0STORM"),
        ("REMEDY__CHAT__SLACK__API_URL", api.as_str()),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        ("REMEDY__CHAT__SLACK__SIGNING_SECRET", "pacing-test-secret"),
    ];
    env.extend_from_slice(extra);
    common::spawn_app_with(backend, &env).await
}

async fn open(app: &TestApp, n: usize) {
    let reply = app
        .post_webhook(common::firing(
            &format!("5707000000000{n:03}"),
            "2026-11-30T01:00:00Z",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["incidents_opened"], 1, "{}", reply.json);
}

async fn a_rate_limited_post_spends_no_attempt_however_often_it_is_told_to_wait(backend: Backend) {
    let fake = FakeChat::start().await;
    // Unpaced, so only the scripted 429s make it wait.
    let app = slack_app(
        backend,
        &fake,
        &[("REMEDY__CHAT__SLACK__POST_RATE", UNPACED)],
    )
    .await;
    let mut settings = WorkerSettings::new("pacing-test".into());
    settings.max_attempts = 3;
    // Twice as many 429s as attempts allowed.
    fake.script((0..6).map(|_| Scripted::SlackRateLimited(1)));
    open(&app, 1).await;
    let mut at = now_millis();
    // Diagnosis, then the first post (429).
    for _ in 0..2 {
        engine::step(&app.app.engine, &settings, at)
            .await
            .expect("step");
    }
    for round in 1..=6 {
        assert_eq!(fake.calls("/chat.postMessage").len(), round);
        let (state, attempts): (String, i64) = (
            common::scalar(&app.store, "select state from work where kind = 'notify'").await,
            common::scalar(
                &app.store,
                "select attempts from work where kind = 'notify'",
            )
            .await,
        );
        assert_eq!(
            state, "pending",
            "round {round}: still waiting, not given up"
        );
        assert_eq!(attempts, 0, "round {round}: a 429 is not an attempt");
        // Not before the second Slack asked for…
        engine::step(&app.app.engine, &settings, at + 500)
            .await
            .expect("step");
        assert_eq!(fake.calls("/chat.postMessage").len(), round);
        // …and at once after it.
        at += 2_000;
        engine::step(&app.app.engine, &settings, at)
            .await
            .expect("step");
    }
    assert_eq!(fake.calls("/chat.postMessage").len(), 7);
    let state: String =
        common::scalar(&app.store, "select state from work where kind = 'notify'").await;
    assert_eq!(state, "done");
    let delivered: i64 = common::scalar(
        &app.store,
        "select count(*) from chat_messages where message_id is not null",
    )
    .await;
    assert_eq!(delivered, 1);
}

/// Runs the real worker until `n` reports are posted (or a generous
/// guard runs out) and returns how many 429s the fake answered.
async fn storm(app: &TestApp, fake: &FakeChat, n: usize) -> usize {
    let shutdown = CancellationToken::new();
    let worker = app.app.spawn_worker(shutdown.clone());
    for i in 0..n {
        open(app, i).await;
    }
    let delivered = async {
        loop {
            let delivered: i64 = common::scalar(
                &app.store,
                "select count(*) from chat_messages where message_id is not null",
            )
            .await;
            if usize::try_from(delivered).expect("count") == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), delivered)
        .await
        .expect("every report is posted");
    shutdown.cancel();
    worker.await.expect("worker stops");
    fake.rate_limited()
}

/// Slack's limit, enforced by the fake: one `chat.postMessage` a second
/// per channel (less 100 ms for scheduling on a busy machine).
const SLACK_GAP: Duration = Duration::from_millis(900);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reports_in_one_channel_is_posted_at_slacks_pace_without_a_429() {
    let fake = FakeChat::start().await;
    fake.enforce_post_pace(SLACK_GAP);
    let app = slack_app(
        Backend::Sqlite,
        &fake,
        &[("REMEDY__WORKER__POLL_INTERVAL", "100ms")],
    )
    .await;
    let limited = storm(&app, &fake, 5).await;
    assert_eq!(limited, 0, "remedy kept to the pace");
    let posts = fake.calls("/chat.postMessage");
    assert_eq!(posts.len(), 5, "each report posted once");
}

/// The control: the same burst without pacing runs into the fake's limit,
/// so the test above would see it if remedy did not pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_burst_unpaced_runs_into_429s() {
    let fake = FakeChat::start().await;
    fake.enforce_post_pace(SLACK_GAP);
    let app = slack_app(
        Backend::Sqlite,
        &fake,
        &[
            ("REMEDY__WORKER__POLL_INTERVAL", "100ms"),
            ("REMEDY__CHAT__SLACK__POST_RATE", UNPACED),
        ],
    )
    .await;
    let limited = storm(&app, &fake, 5).await;
    assert!(limited > 0, "the fake enforces Slack's pace");
}
