//! The HTTP surface: the Alertmanager webhook, the incidents API, health and
//! metrics. [`router`] never binds a socket, so tests call it in-process.

mod alertmanager;
mod auth;
mod error;
mod health;
mod incidents;
pub mod interactions;
mod limit;
mod pagers;
mod reload;
mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::IntakeAuth;
pub use error::ApiError;
pub use limit::SourceLimiter;
pub use server::{ConnectionLimits, serve};

use crate::chat::Chat;
use crate::config::Settings;
use crate::intake::Intake;
use crate::reload::Live;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub intake: Intake,
    /// Wakes the worker (a decision queued a message update).
    pub work_ready: Arc<tokio::sync::Notify>,
    /// The settings, chat and escalation matrix in force (a reload
    /// replaces them as a whole).
    pub live: Live,
    pub metrics: PrometheusHandle,
    /// Cached store answers for the unauthenticated `/readyz` and `/metrics`.
    pub probes: Arc<health::StoreProbes>,
    /// Per-source rate limits (`server.source_rate`, `server.source_burst`).
    pub limiter: SourceLimiter,
}

impl AppState {
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        self.live.settings()
    }

    #[must_use]
    pub fn chat(&self) -> Arc<Chat> {
        self.live.current().engine.chat.clone()
    }

    /// The pagers in force, for PagerDuty's webhooks (a reload may add a
    /// pager or rotate its `webhook_secret`).
    #[must_use]
    pub fn pagers(&self) -> Arc<crate::paging::Pagers> {
        self.live.current().engine.pagers.clone()
    }

    /// The escalation matrix (snooze and silence lengths).
    #[must_use]
    pub fn matrix(&self) -> Arc<crate::escalation::Matrix> {
        self.live.current().engine.matrix.clone()
    }

    #[must_use]
    pub fn intake_auth(&self) -> Arc<IntakeAuth> {
        self.live.current().intake_auth.clone()
    }
}

/// Interaction and API bodies are small (a click, a decision); a larger one
/// is refused before it is read: by its `Content-Length`, else when the
/// capped read passes the limit. The webhook keeps `intake.max_body_bytes`.
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let timeout = state.settings().server.request_timeout;
    let limited = middleware::from_fn_with_state(state.limiter.clone(), limit::every_request);
    let on_failure = middleware::from_fn_with_state(state.limiter.clone(), limit::failed_auth);
    let api = Router::new()
        .route("/v1/incidents", get(incidents::list))
        .route("/v1/incidents/{id}", get(incidents::show))
        .route(
            "/v1/incidents/{id}/actions/{key}/{decision}",
            post(interactions::decide_by_api),
        )
        .route(
            "/v1/incidents/{id}/{control}",
            post(interactions::control_by_api),
        )
        .route("/v1/incidents/{id}/export", get(incidents::export))
        .route("/v1/audit", get(incidents::audit))
        .route("/-/reload", post(reload::reload))
        .layer(on_failure.clone());
    // Slack sends every workspace's clicks from a few addresses: only
    // clicks whose signature fails are charged to their source.
    let chat = Router::new()
        .route("/v1/interactions/slack", post(interactions::slack))
        .route("/v1/interactions/discord", post(interactions::discord))
        .route(
            "/v1/interactions/mattermost",
            post(interactions::mattermost),
        )
        .route("/v1/pagers/{name}/pagerduty", post(pagers::pagerduty))
        .layer(on_failure.clone());
    // `DefaultBodyLimit` sets what `Bytes` reads (axum's own 2 MB
    // otherwise); `RequestBodyLimitLayer` answers 413 from the
    // `Content-Length` alone, before a handler runs.
    let small = api
        .merge(chat)
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(SMALL_BODY_LIMIT));
    let probes = Router::new()
        .route("/readyz", get(health::readyz))
        .route("/-/ready", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .layer(limited);
    Router::new()
        .route(
            "/v1/alertmanager",
            post(alertmanager::receive).layer(on_failure),
        )
        .merge(small)
        .merge(probes)
        .route("/healthz", get(health::healthz))
        .route("/-/healthy", get(health::healthz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), record_request))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Request latency by route and status, for `/metrics`.
async fn record_request(State(_): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::histogram!(
        "remedy_http_request_duration_seconds",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
