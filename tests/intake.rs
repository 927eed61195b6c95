//! Webhook intake against both stores: fixtures a real Alertmanager sent,
//! duplicates, resolves, re-fires, and every kind of bad input.

mod common;

use axum::http::StatusCode;
use base64::Engine;
use common::{Backend, TestApp, firing, fixture, resolved, spawn_app, spawn_app_with};
use serde_json::Value;

on_both_stores!(
    each_fixture_produces_the_expected_incidents,
    the_same_notification_fifty_times_concurrently_yields_one_incident,
    resolve_closes_the_incident_and_cancels_its_work,
    resolve_of_an_unknown_episode_is_recorded,
    a_new_starts_at_after_a_resolve_opens_a_second_incident,
    a_late_firing_duplicate_does_not_reopen_a_resolved_incident,
    bad_inputs_get_their_status_and_change_nothing,
    basic_auth_is_accepted,
    a_failing_store_answers_503_and_records_nothing,
);

fn statuses(incidents: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = incidents
        .iter()
        .map(|i| {
            (
                i["fingerprint"].as_str().unwrap_or_default().to_owned(),
                i["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn post_ok(app: &TestApp, body: String) -> Value {
    let reply = app.post_webhook(body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    reply.json
}

async fn each_fixture_produces_the_expected_incidents(backend: Backend) {
    let app = spawn_app(backend).await;

    let reply = post_ok(&app, fixture("firing_single.json")).await;
    assert_eq!(reply["incidents_opened"], 1);
    let reply = post_ok(&app, fixture("resolved_single.json")).await;
    assert_eq!(reply["incidents_resolved"], 1);
    let single = app
        .incidents("alertname=DatabasePoolExhaustionCritical")
        .await;
    assert_eq!(
        statuses(&single),
        vec![("4c3f5dd55641e094".into(), "resolved".into())]
    );
    assert_eq!(single[0]["starts_at"], "2026-11-26T17:46:18.814059248Z");
    assert_eq!(single[0]["labels"]["instance"], "127.0.0.1:5432");

    post_ok(&app, fixture("grouped_firing_3.json")).await;
    assert_eq!(app.incidents("status=firing").await.len(), 3);

    // One of three resolved, but with a startsAt remedy never saw firing:
    // recorded as its own, already resolved, episode. The other two repeat.
    let reply = post_ok(&app, fixture("grouped_mixed_2firing_1resolved.json")).await;
    assert_eq!(reply["incidents_opened"], 0);
    assert_eq!(app.incidents("status=firing").await.len(), 3);
    assert_eq!(app.incidents("").await.len(), 5);

    let reply = post_ok(&app, fixture("grouped_resolved_3.json")).await;
    assert_eq!(reply["incidents_resolved"], 3);
    assert!(app.incidents("status=firing").await.is_empty());
    assert_eq!(app.incidents("status=resolved").await.len(), 5);

    let repeated = app
        .incidents("status=resolved")
        .await
        .into_iter()
        .find(|i| i["fingerprint"] == "68720d700f34fd7a")
        .expect("grouped incident");
    // firing, firing again (in the mixed notification), resolved.
    assert_eq!(repeated["seen_count"], 3);
}

async fn the_same_notification_fifty_times_concurrently_yields_one_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("firing_single.json");
    let replies = futures_join_all((0..50).map(|_| app.post_webhook(body.clone()))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.json["duplicate"] == false)
            .count(),
        1
    );
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["seen_count"], 50);
    assert_eq!(app.count("work").await, 1, "one diagnosis queued");
    assert_eq!(app.count("notifications").await, 1);
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    // Poll them together so the writer sees them as one burst.
    let joined = futures_util_join(set);
    out.extend(joined.await);
    out
}

async fn futures_util_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(
                results
                    .iter_mut()
                    .map(|s| s.take().expect("ready"))
                    .collect(),
            )
        }
    })
    .await
}

async fn resolve_closes_the_incident_and_cancels_its_work(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("aaaa000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "aaaa000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("aaaa000000000001".into(), "resolved".into())]
    );
    assert_eq!(incidents[0]["ends_at"], "2026-11-26T10:05:00Z");
    let id = incidents[0]["id"].as_i64().expect("id");
    let shown = app.api(&format!("/v1/incidents/{id}")).await;
    let kinds: Vec<&str> = shown["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["opened", "resolved"]);
    // The diagnosis that was queued will never run for a resolved incident.
    let pending = remedy::engine::step(
        &app.app.engine,
        &remedy::engine::WorkerSettings::new("w".into()),
        remedy::domain::now_millis() + 1,
    )
    .await
    .expect("step");
    assert_eq!(pending, 0);
}

async fn resolve_of_an_unknown_episode_is_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = post_ok(
        &app,
        resolved(
            "bbbb000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:01:00Z",
        ),
    )
    .await;
    assert_eq!(reply["incidents_resolved"], 0);
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("bbbb000000000001".into(), "resolved".into())]
    );
    let id = incidents[0]["id"].as_i64().expect("id");
    let shown = app.api(&format!("/v1/incidents/{id}")).await;
    assert_eq!(shown["timeline"][0]["kind"], "resolved_unseen");
    assert_eq!(
        app.count("work").await,
        0,
        "a resolved alert never triggers work"
    );
}

async fn a_new_starts_at_after_a_resolve_opens_a_second_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("cccc000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "cccc000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    let reply = post_ok(&app, firing("cccc000000000001", "2026-11-26T11:00:00Z")).await;
    assert_eq!(reply["incidents_opened"], 1);
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 2);
    assert_eq!(incidents[0]["status"], "firing");
    assert_eq!(incidents[0]["starts_at"], "2026-11-26T11:00:00Z");
    assert_eq!(incidents[1]["status"], "resolved");
}

async fn a_late_firing_duplicate_does_not_reopen_a_resolved_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("dddd000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "dddd000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    // An HA peer's delayed copy of the first notification.
    let reply = post_ok(&app, firing("dddd000000000001", "2026-11-26T10:00:00Z")).await;
    assert_eq!(reply["duplicate"], true);
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("dddd000000000001".into(), "resolved".into())]
    );
}

async fn bad_inputs_get_their_status_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let good = fixture("firing_single.json");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&good).expect("json");
        f(&mut v);
        v.to_string()
    };
    let bearer = format!("Bearer {}", common::WEBHOOK_TOKEN);
    let wrong_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:nope", common::BASIC_USER))
    );
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let json = Some("application/json");
    // (case, body, authorization, content type, status, error code, field)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a str>,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "no credentials",
            good.clone(),
            None,
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "wrong token",
            good.clone(),
            Some("Bearer not-the-token"),
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "wrong basic password",
            good.clone(),
            Some(&wrong_basic),
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "malformed json",
            "{\"version\": \"4\", ".into(),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("."),
        ),
        (
            "alerts missing",
            edit(&|v| {
                v.as_object_mut().expect("object").remove("alerts");
            }),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts"),
        ),
        (
            "wrong version",
            edit(&|v| v["version"] = "3".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("version"),
        ),
        (
            "wrong field type",
            edit(&|v| v["alerts"][0]["labels"] = Value::Array(vec![])),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts[0].labels"),
        ),
        (
            "alerts not an array",
            edit(&|v| v["alerts"] = "many".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts"),
        ),
        (
            "bad startsAt",
            edit(&|v| v["alerts"][0]["startsAt"] = "soon".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts[0].startsAt"),
        ),
        (
            "2 MiB body",
            big,
            Some(&bearer),
            json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
        (
            "text/plain",
            good.clone(),
            Some(&bearer),
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        (
            "no content type",
            good.clone(),
            Some(&bearer),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
    ];
    for (name, body, auth, content_type, status, error, field) in cases {
        let reply = app.post_webhook_with(body, auth, content_type).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.json);
        assert_eq!(reply.json["error"], error, "{name}: {}", reply.json);
        assert!(
            reply.json["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        if let Some(field) = field {
            assert_eq!(reply.json["field"], field, "{name}: {}", reply.json);
        }
        assert_eq!(
            app.snapshot().await,
            [0, 0, 0, 0],
            "{name} changed the store"
        );
    }
    // The same body with the right credentials is accepted: the refusals above
    // were about what they name.
    assert_eq!(app.post_webhook(good).await.status, StatusCode::OK);
}

async fn basic_auth_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            common::BASIC_USER,
            common::BASIC_PASSWORD
        ))
    );
    let reply = app
        .post_webhook_with(
            fixture("firing_single.json"),
            Some(&basic),
            Some("application/json; charset=utf-8"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(app.count("incidents").await, 1);
}

async fn a_failing_store_answers_503_and_records_nothing(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    app.store.close().await;
    let reply = app.post_webhook(fixture("firing_single.json")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    assert_eq!(reply.json["error"], "unavailable");
    let reopened =
        remedy::store::Store::connect(&app.store_url, &remedy::store::StoreOptions::default())
            .await
            .expect("reopen");
    let incidents: i64 = common::scalar(&reopened, "select count(*) from incidents").await;
    assert_eq!(incidents, 0);
}
