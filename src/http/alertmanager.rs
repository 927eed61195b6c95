//! `POST /v1/alertmanager`: Alertmanager's `webhook_configs` receiver.
//! Order of checks: credentials (401), content type (415), size (413),
//! payload (400), then commit (2xx only once committed, 503 otherwise, so
//! Alertmanager retries: it retries 5xx and never 4xx).

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::intake::{self, SubmitError};

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = accept(&state, &headers, body).await;
    let label = match &result {
        Ok(v) if v["duplicate"] == Value::Bool(true) => "duplicate",
        Ok(_) => "accepted",
        Err(ApiError::Unauthorized) => "unauthorized",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(_) => "rejected",
    };
    metrics::counter!("remedy_notifications_total", "result" => label).increment(1);
    result.map(Json)
}

async fn accept(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    if !state.intake_auth().allows(headers) {
        return Err(ApiError::Unauthorized);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
    }
    let limit = state.settings().intake.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let bytes = to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::PayloadTooLarge(limit)
        } else {
            // The client went away or the connection broke mid-body:
            // nothing was read whole, so ask for the delivery again.
            tracing::debug!(error = %e, "webhook body could not be read");
            ApiError::Unavailable("request body could not be read")
        }
    })?;
    let notification = intake::parse_with(&bytes, state.settings().intake.limits())?;
    let alerts = notification.alerts.len();
    for alert in &notification.alerts {
        metrics::counter!("remedy_alerts_received_total", "status" => alert.status.as_str())
            .increment(1);
    }
    let outcome = state
        .intake
        .submit(notification)
        .await
        .map_err(|e| match e {
            SubmitError::Overloaded => ApiError::Unavailable("intake queue full"),
            SubmitError::Store(_) => ApiError::Unavailable("store could not commit"),
            SubmitError::Closed => ApiError::Unavailable("shutting down"),
            // Past the edge's checks, yet the store said no: a 400, since a
            // 503 would be retried for ever. The detail is in the log.
            SubmitError::Refused(_) => ApiError::InvalidPayload(intake::InvalidPayload {
                field: ".".into(),
                message: "the store cannot hold this notification".into(),
            }),
        })?;
    Ok(json!({
        "status": "accepted",
        "alerts": alerts,
        "duplicate": outcome.duplicate,
        "incidents_opened": outcome.incidents_opened,
        "incidents_resolved": outcome.incidents_resolved,
    }))
}

/// Whether reading the body stopped at the size limit (and not on a broken
/// connection).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
