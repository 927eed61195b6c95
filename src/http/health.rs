//! `/healthz` (the process answers), `/readyz` (the store answers and is
//! migrated) and `/metrics` (Prometheus text format). Neither `/readyz` nor
//! `/metrics` needs credentials, so neither may cost a store query per
//! request: readiness is cached for [`READY_CACHE`] and the store gauges are
//! read at most once per `metrics.store_refresh`, however often scraped.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::sync::Mutex;

use super::AppState;
use crate::domain::now_millis;
use crate::store::Store;

/// How long a `/readyz` answer is reused.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// When the store was last asked, for `/readyz` and for the store gauges.
/// A `tokio` mutex, held across the query, so a burst of scrapes waits for
/// one query instead of starting one each.
#[derive(Default)]
pub struct StoreProbes {
    ready: Mutex<Option<(Instant, Readiness)>>,
    gauges_read_at: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy)]
enum Readiness {
    Ready,
    NotMigrated,
    Unreachable,
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let readiness = {
        let mut cached = state.probes.ready.lock().await;
        match *cached {
            Some((at, readiness)) if at.elapsed() < READY_CACHE => readiness,
            _ => {
                let readiness = match state.store.ready().await {
                    Ok(true) => Readiness::Ready,
                    Ok(false) => Readiness::NotMigrated,
                    Err(error) => {
                        tracing::warn!(%error, "readiness check failed");
                        Readiness::Unreachable
                    }
                };
                *cached = Some((Instant::now(), readiness));
                readiness
            }
        }
    };
    match readiness {
        Readiness::Ready => (StatusCode::OK, "ready\n"),
        Readiness::NotMigrated => (StatusCode::SERVICE_UNAVAILABLE, "migrations not applied\n"),
        Readiness::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n"),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    {
        let mut read_at = state.probes.gauges_read_at.lock().await;
        let refresh = state.settings().metrics.store_refresh;
        if read_at.is_none_or(|at| at.elapsed() >= refresh) {
            // Counted as read even when a query fails: a store that is down
            // is not asked again on every scrape.
            *read_at = Some(Instant::now());
            read_store_gauges(&state.store).await;
        }
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

/// The store gauges; `remedy_store_gauge_refreshes_total` counts the passes,
/// so a test (or an operator) can see that scrapes do not reach the store.
async fn read_store_gauges(store: &Store) {
    metrics::counter!("remedy_store_gauge_refreshes_total").increment(1);
    match store.count_open_incidents().await {
        Ok(open) => metrics::gauge!("remedy_incidents_open").set(open as f64),
        Err(error) => tracing::warn!(%error, "metrics: cannot count open incidents"),
    }
    match store.queue_stats(now_millis()).await {
        Ok(stats) => {
            metrics::gauge!("remedy_queue_depth").set(stats.depth as f64);
            metrics::gauge!("remedy_queue_oldest_due_age_seconds")
                .set(stats.oldest_due_age_ms as f64 / 1000.0);
        }
        Err(error) => tracing::warn!(%error, "metrics: cannot read the work queue"),
    }
    match store.pending_timers().await {
        Ok(pending) => metrics::gauge!("remedy_escalation_timers_pending").set(pending as f64),
        Err(error) => tracing::warn!(%error, "metrics: cannot count escalation timers"),
    }
}
