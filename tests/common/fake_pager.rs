//! Local fakes of the pagers remedy calls, at the HTTP boundary: the
//! PagerDuty Events API v2 (`/pagerduty/v2/enqueue`), Opsgenie's Alert API
//! (`/opsgenie/v2/alerts…`) and a webhook receiver (`/hook`). Each checks
//! what remedy sent against the documented format — required fields, field
//! sets, limits, the routing key, `Authorization: GenieKey …`, the webhook's
//! HMAC-SHA256 signature — answers as the service does (202 and its body,
//! 400 / 401 with the service's error shape, 429 when scripted), and
//! records every request.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

pub const PD_ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdef012345";
pub const OPSGENIE_KEY: &str = "eb243592-faa2-4ba2-a551q-1afdf565c889";
pub const HOOK_SECRET: &str = "hook-signing-secret";

#[derive(Debug, Clone)]
pub struct PagerCall {
    /// `pagerduty`, `opsgenie` or `webhook`.
    pub service: &'static str,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
    /// What the fake answered.
    pub status: u16,
}

#[derive(Default)]
struct State_ {
    calls: Mutex<Vec<PagerCall>>,
    /// Statuses the next calls answer instead (429, 500, …).
    script: Mutex<VecDeque<u16>>,
}

#[derive(Clone)]
pub struct FakePager {
    pub url: String,
    state: Arc<State_>,
}

type Shared = Arc<State_>;

impl FakePager {
    pub async fn start() -> Self {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/pagerduty/v2/enqueue", post(pagerduty))
            .route("/opsgenie/v2/alerts", post(opsgenie_create))
            .route(
                "/opsgenie/v2/alerts/{alias}/{action}",
                post(opsgenie_action),
            )
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Self { url, state }
    }

    /// The next call answers `status` instead (429 without `Retry-After`,
    /// as PagerDuty's Events API sends it).
    pub fn script(&self, status: u16) {
        self.state.script.lock().expect("lock").push_back(status);
    }

    /// Accepted calls to one service, in order.
    pub fn accepted(&self, service: &str) -> Vec<PagerCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.service == service && (200..300).contains(&c.status))
            .collect()
    }

    pub fn calls(&self) -> Vec<PagerCall> {
        self.state.calls.lock().expect("lock").clone()
    }
}

fn record(
    state: &Shared,
    service: &'static str,
    path: String,
    query: Option<String>,
    headers: &HeaderMap,
    body: Value,
    status: u16,
) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.calls.lock().expect("lock").push(PagerCall {
        service,
        path,
        query,
        authorization,
        body,
        status,
    });
}

fn scripted(state: &Shared) -> Option<u16> {
    state.script.lock().expect("lock").pop_front()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn subset(v: &Value, allowed: &[&str]) -> Result<(), String> {
    let extra: Vec<String> = keys(v)
        .into_iter()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown fields {extra:?}"))
    }
}

fn string(v: &Value, field: &str) -> Result<String, String> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("'{field}' is missing or not a non-empty string"))
}

/// PagerDuty Events API v2: the checks its `enqueue` endpoint makes.
fn check_pagerduty(body: &Value) -> Result<String, String> {
    if string(body, "routing_key")? != PD_ROUTING_KEY {
        return Err("Invalid routing key".into());
    }
    let action = string(body, "event_action")?;
    let dedup_key = string(body, "dedup_key")?;
    if dedup_key.len() > 255 {
        return Err("dedup_key longer than 255".into());
    }
    match action.as_str() {
        "trigger" => {
            subset(
                body,
                &[
                    "routing_key",
                    "event_action",
                    "dedup_key",
                    "payload",
                    "images",
                    "links",
                    "client",
                    "client_url",
                ],
            )?;
            let payload = body.get("payload").ok_or("'payload' is missing")?;
            subset(
                payload,
                &[
                    "summary",
                    "source",
                    "severity",
                    "timestamp",
                    "component",
                    "group",
                    "class",
                    "custom_details",
                ],
            )?;
            let summary = string(payload, "summary")?;
            if summary.chars().count() > 1024 {
                return Err("payload.summary longer than 1024".into());
            }
            string(payload, "source")?;
            let severity = string(payload, "severity")?;
            if !["critical", "error", "warning", "info"].contains(&severity.as_str()) {
                return Err(format!("payload.severity '{severity}' is invalid"));
            }
            if let Some(ts) = payload.get("timestamp") {
                let ts = ts.as_str().ok_or("payload.timestamp is not a string")?;
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("payload.timestamp: {e}"))?;
            }
            for link in body
                .get("links")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                subset(link, &["href", "text"])?;
                string(link, "href")?;
            }
        }
        "acknowledge" | "resolve" => {
            subset(body, &["routing_key", "event_action", "dedup_key"])?;
        }
        other => return Err(format!("event_action '{other}' is invalid")),
    }
    Ok(dedup_key)
}

async fn pagerduty(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v2/enqueue".to_owned();
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        record(&state, "pagerduty", path, None, &headers, Value::Null, 400);
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["body is not JSON"]}))).into_response();
    };
    if let Some(status) = scripted(&state) {
        record(&state, "pagerduty", path, None, &headers, json, status);
        return (
            StatusCode::from_u16(status).expect("status"),
            Json(json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."})),
        )
            .into_response();
    }
    match check_pagerduty(&json) {
        Ok(dedup_key) => {
            record(&state, "pagerduty", path, None, &headers, json, 202);
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})),
            )
                .into_response()
        }
        Err(error) => {
            record(&state, "pagerduty", path, None, &headers, json, 400);
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": [error]})),
            )
                .into_response()
        }
    }
}

fn opsgenie_answer(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).expect("status");
    if code.is_success() {
        (
            code,
            Json(json!({"result": "Request will be processed", "took": 0.302, "requestId": uuid::Uuid::now_v7().to_string()})),
        )
            .into_response()
    } else {
        (
            code,
            Json(json!({"message": message, "took": 0.001, "requestId": uuid::Uuid::now_v7().to_string()})),
        )
            .into_response()
    }
}

fn genie_key(headers: &HeaderMap) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth == format!("GenieKey {OPSGENIE_KEY}") {
        Ok(())
    } else {
        Err("Could not authenticate".into())
    }
}

/// Opsgenie `POST /v2/alerts`.
fn check_create(body: &Value) -> Result<(), String> {
    subset(
        body,
        &[
            "message",
            "alias",
            "description",
            "responders",
            "visibleTo",
            "actions",
            "tags",
            "details",
            "entity",
            "source",
            "priority",
            "user",
            "note",
        ],
    )?;
    let message = string(body, "message")?;
    if message.chars().count() > 130 {
        return Err("Message can not be longer than 130 characters".into());
    }
    if string(body, "alias")?.chars().count() > 512 {
        return Err("Alias can not be longer than 512 characters".into());
    }
    if let Some(d) = body.get("description")
        && d.as_str().is_none_or(|d| d.chars().count() > 15_000)
    {
        return Err("description must be a string of at most 15000 characters".into());
    }
    if let Some(p) = body.get("priority")
        && !["P1", "P2", "P3", "P4", "P5"].contains(&p.as_str().unwrap_or_default())
    {
        return Err("Priority should be one of [P1, P2, P3, P4, P5]".into());
    }
    if let Some(details) = body.get("details") {
        let map = details.as_object().ok_or("details must be an object")?;
        if map.values().any(|v| !v.is_string()) {
            return Err("details values must be strings".into());
        }
    }
    Ok(())
}

async fn opsgenie_create(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = "/v2/alerts".to_owned();
    let status = if let Some(status) = scripted(&state) {
        status
    } else if let Err(e) = genie_key(&headers) {
        record(&state, "opsgenie", path, None, &headers, json, 401);
        return opsgenie_answer(401, &e);
    } else if let Err(e) = check_create(&json) {
        record(&state, "opsgenie", path, None, &headers, json, 422);
        return opsgenie_answer(422, &e);
    } else {
        202
    };
    record(&state, "opsgenie", path, None, &headers, json, status);
    opsgenie_answer(status, "scripted")
}

async fn opsgenie_action(
    State(state): State<Shared>,
    Path((alias, action)): Path<(String, String)>,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = format!("/v2/alerts/{alias}/{action}");
    let query_text = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let check = || -> Result<(), String> {
        genie_key(&headers)?;
        if !["acknowledge", "close"].contains(&action.as_str()) {
            return Err(format!("no action {action}"));
        }
        if query.get("identifierType").map(String::as_str) != Some("alias") {
            return Err("identifierType must be alias for an alias".into());
        }
        subset(&json, &["user", "source", "note"])
    };
    let status = match check() {
        Ok(()) => 202,
        Err(e) if e == "Could not authenticate" => {
            record(
                &state,
                "opsgenie",
                path,
                Some(query_text),
                &headers,
                json,
                401,
            );
            return opsgenie_answer(401, &e);
        }
        Err(e) => {
            record(
                &state,
                "opsgenie",
                path,
                Some(query_text),
                &headers,
                json,
                422,
            );
            return opsgenie_answer(422, &e);
        }
    };
    record(
        &state,
        "opsgenie",
        path,
        Some(query_text),
        &headers,
        json,
        status,
    );
    opsgenie_answer(status, "")
}

/// The webhook receiver: the body must carry `X-Remedy-Signature:
/// sha256=<hex HMAC-SHA256(secret, raw body)>`.
async fn hook(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let signature = headers
        .get("x-remedy-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let status = if signature != expected {
        401
    } else if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json")
    {
        415
    } else {
        scripted(&state).unwrap_or(200)
    };
    record(
        &state,
        "webhook",
        "/hook".into(),
        None,
        &headers,
        json,
        status,
    );
    StatusCode::from_u16(status)
        .expect("status")
        .into_response()
}
