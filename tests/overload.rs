//! Back-pressure: when the store is stuck and the intake queue is full, new
//! deliveries get 503 at once (Alertmanager retries them) and the queued
//! ones are committed once the store moves again.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, firing, spawn_app_with};
use sqlx::Connection;

on_both_stores!(a_full_intake_queue_answers_503_and_loses_nothing_queued);

async fn a_full_intake_queue_answers_503_and_loses_nothing_queued(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("REMEDY__INTAKE__QUEUE_CAPACITY", "1"),
            ("REMEDY__INTAKE__MAX_BATCH", "1"),
        ],
    )
    .await;
    // Another session holds the write lock the intake writer needs.
    let release = tokio::sync::oneshot::channel::<()>();
    let url = app.store_url.clone();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        match backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect");
                sqlx::raw_sql("begin immediate")
                    .execute(&mut conn)
                    .await
                    .expect("lock");
                locked_tx.send(()).expect("signal");
                release.1.await.expect("release");
                sqlx::raw_sql("commit")
                    .execute(&mut conn)
                    .await
                    .expect("unlock");
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::raw_sql("begin; lock table notifications in access exclusive mode")
                    .execute(&mut conn)
                    .await
                    .expect("lock");
                locked_tx.send(()).expect("signal");
                release.1.await.expect("release");
                sqlx::raw_sql("commit")
                    .execute(&mut conn)
                    .await
                    .expect("unlock");
            }
        }
    });
    locked_rx.await.expect("lock taken");

    let app = std::sync::Arc::new(app);
    let first = tokio::spawn({
        let app = app.clone();
        async move {
            app.post_webhook(firing("0ad0000000000001", "2026-11-26T10:00:00Z"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer holds it, blocked
    let second = tokio::spawn({
        let app = app.clone();
        async move {
            app.post_webhook(firing("0ad0000000000002", "2026-11-26T10:00:00Z"))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // it waits in the queue
    let third = app
        .post_webhook(firing("0ad0000000000003", "2026-11-26T10:00:00Z"))
        .await;
    assert_eq!(
        third.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.json
    );
    assert_eq!(third.json["error"], "unavailable");

    release.0.send(()).expect("release lock");
    holder.await.expect("holder");
    assert_eq!(first.await.expect("first").status, StatusCode::OK);
    assert_eq!(second.await.expect("second").status, StatusCode::OK);
    let fingerprints: Vec<String> = app
        .incidents("")
        .await
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(fingerprints, ["0ad0000000000002", "0ad0000000000001"]);
}
