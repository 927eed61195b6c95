//! `/healthz` (the process answers), `/readyz` (the store answers and is
//! migrated) and `/metrics` (Prometheus text format; store gauges are read
//! at scrape time, so they agree across replicas).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::domain::now_millis;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ready().await {
        Ok(true) => (StatusCode::OK, "ready\n"),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "migrations not applied\n"),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n")
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.count_open_incidents().await {
        Ok(open) => metrics::gauge!("remedy_incidents_open").set(open as f64),
        Err(error) => tracing::warn!(%error, "metrics: cannot count open incidents"),
    }
    match state.store.queue_stats(now_millis()).await {
        Ok(stats) => {
            metrics::gauge!("remedy_queue_depth").set(stats.depth as f64);
            metrics::gauge!("remedy_queue_oldest_due_age_seconds")
                .set(stats.oldest_due_age_ms as f64 / 1000.0);
        }
        Err(error) => tracing::warn!(%error, "metrics: cannot read the work queue"),
    }
    match state.store.pending_timers().await {
        Ok(pending) => metrics::gauge!("remedy_escalation_timers_pending").set(pending as f64),
        Err(error) => tracing::warn!(%error, "metrics: cannot count escalation timers"),
    }
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
