//! Issue 13 finding 4, replayed: unauthenticated requests cannot make
//! remedy read large bodies or query its store once per request.

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use common::{Backend, send, spawn_app, spawn_app_with};

on_both_stores!(
    a_thousand_scrapes_read_the_store_gauges_at_most_a_few_times,
    an_oversized_interaction_body_is_refused_before_it_is_read,
    an_oversized_api_body_is_refused,
    a_source_over_its_rate_gets_429_but_authenticated_webhooks_do_not,
    signed_clicks_from_one_address_are_never_limited_but_forged_ones_are,
);

fn refreshes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("remedy_store_gauge_refreshes_total "))
        .map_or(0, |v| v.trim().parse().expect("a counter value"))
}

async fn a_thousand_scrapes_read_the_store_gauges_at_most_a_few_times(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.get("/metrics", None).await;
    assert_eq!(first.status, StatusCode::OK);
    let before = refreshes(first.json.as_str().expect("text"));
    assert!(before >= 1, "the first scrape reads the store gauges");
    let mut last = String::new();
    for _ in 0..1000 {
        let reply = app.get("/metrics", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        last = reply.json.as_str().expect("text").to_owned();
    }
    assert!(last.contains("remedy_incidents_open"));
    // The counter is process-wide and the other backend's test runs beside
    // this one; each app reads at most once per `metrics.store_refresh`
    // (15 s), so a handful at most, not a thousand.
    let after = refreshes(&last);
    assert!(
        after - before <= 3,
        "{} refreshes for 1000 scrapes",
        after - before
    );
    for _ in 0..100 {
        assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    }
}

async fn an_oversized_interaction_body_is_refused_before_it_is_read(backend: Backend) {
    let app = spawn_app(backend).await;
    // Declared too large: refused from the header, with a body that is
    // not the declared size (reading it would fail, not answer 413).
    let request = Request::post("/v1/interactions/slack")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, "1000000")
        .body(Body::from("payload="))
        .expect("request");
    assert_eq!(
        send(&app.router, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // No length declared: the capped read stops past 64 KiB.
    let request = Request::post("/v1/interactions/discord")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; 64 * 1024 + 1]))
        .expect("request");
    let mut request = request;
    request.headers_mut().remove(header::CONTENT_LENGTH);
    assert_eq!(
        send(&app.router, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Just under the limit is read (and refused for its signature).
    let request = Request::post("/v1/interactions/slack")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(vec![b'a'; 60 * 1024]))
        .expect("request");
    assert_ne!(
        send(&app.router, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

async fn an_oversized_api_body_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = Request::post("/v1/incidents/1/ack")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", common::API_TOKEN),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; 64 * 1024 + 1]))
        .expect("request");
    assert_eq!(
        send(&app.router, request).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The webhook keeps its own, larger limit.
    let big = common::firing("abcd000000000001", "2026-11-26T10:00:00Z");
    let padded = format!("{}{}", big, " ".repeat(100 * 1024));
    assert_eq!(app.post_webhook(padded).await.status, StatusCode::OK);
}

/// A request as the accept loop hands it on: with the peer's address.
fn from_peer(builder: axum::http::request::Builder, body: impl Into<Body>) -> Request<Body> {
    let peer: std::net::SocketAddr = "192.0.2.7:40000".parse().expect("address");
    let mut request = builder.body(body.into()).expect("request");
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

async fn a_source_over_its_rate_gets_429_but_authenticated_webhooks_do_not(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("REMEDY__SERVER__SOURCE_RATE", "1"),
            ("REMEDY__SERVER__SOURCE_BURST", "3"),
        ],
    )
    .await;
    for _ in 0..3 {
        let reply = send(
            &app.router,
            from_peer(Request::get("/readyz"), Body::empty()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let response = tower::ServiceExt::oneshot(
        app.router.clone(),
        from_peer(Request::get("/metrics"), Body::empty()),
    )
    .await
    .expect("router answers");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");

    // Wrong webhook credentials from another source: 401 until its burst
    // of failures is spent, then 429.
    let wrong = || {
        let mut request = from_peer(
            Request::post("/v1/alertmanager")
                .header(header::AUTHORIZATION, "Bearer wrong")
                .header(header::CONTENT_TYPE, "application/json"),
            "{}",
        );
        request
            .extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 8], 1))));
        request
    };
    for _ in 0..3 {
        assert_eq!(
            send(&app.router, wrong()).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(&app.router, wrong()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The same source with the right token is never limited for volume.
    for i in 0..10 {
        let mut request = from_peer(
            Request::post("/v1/alertmanager")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", common::WEBHOOK_TOKEN),
                )
                .header(header::CONTENT_TYPE, "application/json"),
            common::firing(&format!("abcd0000000001{i:02}"), "2026-11-26T10:00:00Z"),
        );
        request
            .extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 8], 1))));
        assert_eq!(send(&app.router, request).await.status, StatusCode::OK);
    }
}

/// Slack sends every click of a workspace from a few addresses: clicks
/// whose signature verifies are never charged to their source, only those
/// whose signature fails (401 until the burst of failures is spent, then
/// 429), and a signed click from that source still gets through.
async fn signed_clicks_from_one_address_are_never_limited_but_forged_ones_are(backend: Backend) {
    const SECRET: &str = "slack-signing-secret-for-limit-tests";
    let app = spawn_app_with(
        backend,
        &[
            ("REMEDY__SERVER__SOURCE_RATE", "1"),
            ("REMEDY__SERVER__SOURCE_BURST", "3"),
            ("REMEDY__CHAT__PLATFORM", "slack"),
            ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0INCIDENTS"),
            ("REMEDY__CHAT__SLACK__BOT_TOKEN", "xoxb-unused"),
            ("REMEDY__CHAT__SLACK__SIGNING_SECRET", SECRET),
        ],
    )
    .await;
    // A click on a button remedy does not know: signed, answered 200.
    let payload = serde_json::json!({
        "type": "block_actions", "user": {"id": "U0SOMEONE"},
        "actions": [{"action_id": "unknown", "value": "1"}]
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let click = |signature: Option<&str>| {
        let ts = (remedy::domain::now_millis() / 1000).to_string();
        let signature = signature.map_or_else(
            || remedy::chat::slack::sign(SECRET, &ts, body.as_bytes()),
            str::to_owned,
        );
        from_peer(
            Request::post("/v1/interactions/slack")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", signature),
            body.clone(),
        )
    };
    for i in 0..20 {
        assert_eq!(
            send(&app.router, click(None)).await.status,
            StatusCode::OK,
            "signed click {i}"
        );
    }
    let forged = format!("v0={}", "0".repeat(64));
    for _ in 0..3 {
        assert_eq!(
            send(&app.router, click(Some(&forged))).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(&app.router, click(Some(&forged))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&app.router, click(None)).await.status, StatusCode::OK);
}
