//! The incidents API, health, readiness and metrics.

mod common;

use axum::http::StatusCode;
use common::{Backend, firing, spawn_app};

on_both_stores!(
    the_incidents_api_needs_its_own_token,
    incidents_are_filtered_and_paged,
    an_unknown_incident_is_404,
    health_readiness_and_metrics_answer,
);

async fn the_incidents_api_needs_its_own_token(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.get("/v1/incidents", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The webhook token is not an API token.
    assert_eq!(
        app.get("/v1/incidents", Some(common::WEBHOOK_TOKEN))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/incidents/1", Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/incidents", Some(common::API_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
}

async fn incidents_are_filtered_and_paged(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        app.post_webhook(firing(
            &format!("abcd0000000000{i:02}"),
            "2026-11-26T10:00:00Z",
        ))
        .await;
    }
    app.post_webhook(common::fixture("firing_single.json"))
        .await;
    app.post_webhook(common::resolved(
        "abcd000000000000",
        "2026-11-26T10:00:00Z",
        "2026-11-26T10:02:00Z",
    ))
    .await;

    assert_eq!(app.incidents("").await.len(), 6);
    assert_eq!(app.incidents("status=firing").await.len(), 5);
    assert_eq!(app.incidents("status=resolved").await.len(), 1);
    assert_eq!(
        app.incidents("alertname=DatabasePoolExhaustionCritical")
            .await
            .len(),
        1
    );
    assert_eq!(
        app.incidents("alertname=DatabaseIdleInTransaction&status=firing")
            .await
            .len(),
        4
    );

    let first = app.api("/v1/incidents?limit=4").await;
    let page: Vec<i64> = first["incidents"]
        .as_array()
        .expect("page")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(page.len(), 4);
    assert!(page.windows(2).all(|w| w[0] > w[1]), "newest first");
    let next = first["next_before"].as_i64().expect("a next page");
    let second = app
        .api(&format!("/v1/incidents?limit=4&before={next}"))
        .await;
    assert_eq!(second["incidents"].as_array().expect("page").len(), 2);
    assert!(second["next_before"].is_null());

    let bad = app
        .get("/v1/incidents?status=burning", Some(common::API_TOKEN))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["field"], "status");
    let bad = app
        .get("/v1/incidents?limit=0", Some(common::API_TOKEN))
        .await;
    assert_eq!(bad.json["field"], "limit");
    let bad = app
        .get("/v1/incidents?before=yesterday", Some(common::API_TOKEN))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"], "bad_parameter");
    assert_eq!(bad.json["field"], "before");
}

async fn an_unknown_incident_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/v1/incidents/999", Some(common::API_TOKEN)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["error"], "not_found");
    let reply = app.get("/v1/incidents/abc", Some(common::API_TOKEN)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

async fn health_readiness_and_metrics_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post_webhook(common::fixture("firing_single.json"))
        .await;
    app.post_webhook_with("{}", None, Some("application/json"))
        .await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.json.as_str().expect("text body");
    for needle in [
        "remedy_notifications_total{result=\"accepted\"}",
        "remedy_notifications_total{result=\"unauthorized\"}",
        "remedy_alerts_received_total{status=\"firing\"}",
        "remedy_incidents_open 1",
        "remedy_queue_depth 1",
        "remedy_queue_oldest_due_age_seconds",
        "remedy_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    app.store.close().await;
    // `/readyz` reuses its answer for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
