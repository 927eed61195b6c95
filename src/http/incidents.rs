//! `GET /v1/incidents` and `GET /v1/incidents/{id}`: read-only JSON for
//! people and tools, behind `api.token` (read-only, separate from webhook
//! credentials) or a person's own token.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::bearer_matches;
use super::{ApiError, AppState};
use crate::domain::{IncidentId, IncidentStatus};
use crate::store::{IncidentFilter, StoreError};

const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    alertname: Option<String>,
    // Text, parsed here, so a bad value gets a 400 naming its field.
    before: Option<String>,
    limit: Option<String>,
}

fn integer(field: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|v| {
        v.parse::<i64>().map_err(|_| ApiError::BadParameter {
            field: field.into(),
            message: format!("must be an integer, got {v:?}"),
        })
    })
    .transpose()
}

/// The read routes: `api.token` (read-only) or any person's token.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if bearer_matches(headers, state.settings().api.token.expose())
        || bearer(headers).is_some_and(|t| state.chat().directory.authenticate(t).is_some())
    {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The routes that decide or act: a person's own token, and the person is
/// who the token names. `api.token` is read-only: 403.
pub(super) fn authenticate_person(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let chat = state.chat();
    if let Some(person) = bearer(headers).and_then(|t| chat.directory.authenticate(t)) {
        return Ok(person.to_owned());
    }
    if bearer_matches(headers, state.settings().api.token.expose()) {
        return Err(ApiError::Forbidden(
            "api.token is read-only; decide with your personal token ([people.NAME] api_token_file)"
                .into(),
        ));
    }
    Err(ApiError::Unauthorized)
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

pub(super) fn unavailable(error: &StoreError) -> ApiError {
    tracing::error!(%error, "incidents query failed");
    ApiError::Unavailable("store unavailable")
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<IncidentStatus>)
        .transpose()
        .map_err(|message| ApiError::BadParameter {
            field: "status".into(),
            message,
        })?;
    let limit = integer("limit", query.limit.as_deref())?.unwrap_or(50);
    let before = integer("before", query.before.as_deref())?;
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadParameter {
            field: "limit".into(),
            message: format!("must be between 1 and {MAX_LIMIT}"),
        });
    }
    let filter = IncidentFilter {
        status,
        alertname: query.alertname,
        before,
        limit,
    };
    let incidents = state
        .store
        .list_incidents(&filter)
        .await
        .map_err(|e| unavailable(&e))?;
    let next = (i64::try_from(incidents.len()).unwrap_or(0) == limit)
        .then(|| incidents.last().map(|i| i.id))
        .flatten();
    Ok(Json(json!({ "incidents": incidents, "next_before": next })))
}

pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let id: IncidentId = id.parse().map_err(|_| ApiError::BadParameter {
        field: "id".into(),
        message: "must be an integer".into(),
    })?;
    let incident = state
        .store
        .get_incident(id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id}")))?;
    let timeline = state
        .store
        .incident_events(id)
        .await
        .map_err(|e| unavailable(&e))?;
    let approvals = state
        .store
        .approvals(id)
        .await
        .map_err(|e| unavailable(&e))?;
    let message = state
        .store
        .chat_message(id)
        .await
        .map_err(|e| unavailable(&e))?
        .map(
            |m| json!({ "platform": m.platform, "channel": m.channel, "message_id": m.message_id }),
        );
    let executions = state
        .store
        .executions(id)
        .await
        .map_err(|e| unavailable(&e))?;
    let escalation = state
        .store
        .escalation(id)
        .await
        .map_err(|e| unavailable(&e))?;
    // A storm incident: what it groups and its live member counts (a
    // member links to it by `incident.storm_id`).
    let storm = state.store.storm(id).await.map_err(|e| unavailable(&e))?;
    let pages = state.store.pages(id).await.map_err(|e| unavailable(&e))?;
    Ok(Json(json!({
        "incident": incident,
        "storm": storm,
        "approvals": approvals,
        "executions": executions,
        "escalation": escalation,
        "pages": pages,
        "chat_message": message,
        "timeline": timeline,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

/// `GET /v1/incidents/{id}/export?format=md|json`: the incident record as a
/// postmortem draft (Markdown) or as JSON.
pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    authorize(&state, &headers)?;
    let id: IncidentId = id.parse().map_err(|_| ApiError::BadParameter {
        field: "id".into(),
        message: "must be an integer".into(),
    })?;
    let record = crate::postmortem::Record::load(&state.store, id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| ApiError::NotFound(format!("no incident {id}")))?;
    match query.format.as_deref().unwrap_or("md") {
        "md" | "markdown" => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/markdown; charset=utf-8",
            )],
            crate::postmortem::markdown(&record, &state.matrix()),
        )
            .into_response()),
        "json" => Ok(Json(crate::postmortem::to_json(&record)).into_response()),
        _ => Err(ApiError::BadParameter {
            field: "format".into(),
            message: "md or json".into(),
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    incident: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/audit?incident=&limit=`: the append-only audit log, newest first.
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let incident = integer("incident", query.incident.as_deref())?.map(IncidentId);
    let limit = integer("limit", query.limit.as_deref())?.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadParameter {
            field: "limit".into(),
            message: format!("must be between 1 and {MAX_LIMIT}"),
        });
    }
    let entries = state
        .store
        .audit_log(incident, limit)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Json(json!({ "audit": entries })))
}
