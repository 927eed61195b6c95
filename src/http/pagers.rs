//! Pagers calling back: PagerDuty webhooks v3 at
//! `POST /v1/pagers/{name}/pagerduty`, for a `[pagers.NAME]` of kind
//! pagerduty with a `webhook_secret`. The signature is checked over the raw
//! body before anything is parsed; an `incident.acknowledged` whose
//! `incident_key` is one of remedy's page keys, for an incident remedy paged
//! there, acknowledges the incident in remedy (its timers pause, other
//! pagers are told). Every other event is answered 200 and ignored, so
//! PagerDuty does not retry it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::approvals::{Actor, Channel};
use crate::domain::{IncidentId, now_millis};
use crate::paging::pagerduty::{self, Inbound};
use crate::store::DecisionOutcome;

fn ignored(event_type: &str, why: &str) -> Response {
    metrics::counter!("remedy_pager_webhooks_total", "result" => "ignored").increment(1);
    (
        StatusCode::OK,
        Json(json!({ "ok": true, "ignored": event_type, "why": why })),
    )
        .into_response()
}

/// `POST /v1/pagers/{name}/pagerduty`.
pub async fn pagerduty(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pagers = state.pagers();
    let Some(secret) = pagers.pagerduty_webhook_secret(&name) else {
        return ApiError::NotFound(format!(
            "no PagerDuty pager `{name}` with a webhook_secret is configured"
        ))
        .into_response();
    };
    let signature = headers
        .get("x-pagerduty-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(error) = pagerduty::verify(secret.expose(), signature, &body) {
        metrics::counter!("remedy_pager_webhooks_total", "result" => "refused").increment(1);
        tracing::warn!(pager = %name, %error, "PagerDuty webhook refused");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthorized", "message": error.to_string() })),
        )
            .into_response();
    }
    let event = match pagerduty::parse(&body) {
        Ok(event) => event,
        Err(error) => {
            return ApiError::BadParameter {
                field: "event".into(),
                message: error.to_string(),
            }
            .into_response();
        }
    };
    let (event_id, incident_key, pagerduty_incident, agent_id, agent_name) = match event {
        Inbound::Acknowledged {
            event_id,
            incident_key,
            pagerduty_incident,
            agent_id,
            agent_name,
        } => (
            event_id,
            incident_key,
            pagerduty_incident,
            agent_id,
            agent_name,
        ),
        Inbound::Ignored { event_type, .. } => {
            return ignored(&event_type, "remedy acts on incident.acknowledged only");
        }
    };
    let Some(incident) = pagers.incident_of(&incident_key) else {
        return ignored("incident.acknowledged", "not one of remedy's page keys");
    };
    let incident = IncidentId(incident);
    match state.store.page_triggered(incident, &name).await {
        Ok(true) => {}
        Ok(false) => {
            return ignored(
                "incident.acknowledged",
                "remedy did not page this pager for that incident",
            );
        }
        Err(error) => {
            tracing::error!(%error, "store failed reading pages");
            return ApiError::Unavailable("store").into_response();
        }
    }
    let who = Actor {
        key: format!(
            "pagerduty:{}",
            agent_id.as_deref().unwrap_or(pagerduty_incident.as_str())
        ),
        person: None,
        display: format!("{} (PagerDuty)", agent_name.as_deref().unwrap_or("someone")),
        channel: Channel::Pager,
        slack_user: None,
        discord_user: None,
        discord_roles: Vec::new(),
        mattermost_user: None,
        mattermost_roles: Vec::new(),
        console_name: None,
    };
    // PagerDuty decided who may acknowledge there; its signature is the
    // authorization.
    match state
        .store
        .acknowledge_from(incident, &who, true, Some(&name), now_millis())
        .await
    {
        Ok(outcome) => {
            let (result, state_name) = match &outcome {
                DecisionOutcome::Recorded { repeat: true, .. } => ("repeat", "acknowledged"),
                DecisionOutcome::Recorded { .. } => ("acknowledged", "acknowledged"),
                DecisionOutcome::Refused(_) => ("refused", "refused"),
            };
            metrics::counter!("remedy_pager_webhooks_total", "result" => result).increment(1);
            if result == "acknowledged" {
                state.work_ready.notify_one();
            }
            tracing::info!(pager = %name, incident = incident.0, event = %event_id, result, "PagerDuty acknowledgement");
            let message = match outcome {
                DecisionOutcome::Refused(why) => Some(why),
                DecisionOutcome::Recorded { .. } => None,
            };
            (
                StatusCode::OK,
                Json(
                    json!({ "ok": true, "incident": incident.0, "state": state_name,
                             "repeat": result == "repeat", "message": message }),
                ),
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "store failed recording a PagerDuty acknowledgement");
            ApiError::Unavailable("store").into_response()
        }
    }
}
