//! A fake Alertmanager API v2 for reconciliation and silence tests:
//! `GET /api/v2/alerts` answers the alerts a test sets, in the shape of
//! `gettableAlerts`, `GET /api/v2/silence/{id}` the silences it sets, and
//! `POST /api/v2/silences` records the silence posted and answers its
//! `silenceID`; any can be made to fail with a status. It records each
//! request's query and `Authorization`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// An alert's `status` (state, silencedBy, inhibitedBy) and `startsAt`.
type Status = (String, Vec<String>, Vec<String>, String);

/// The `startsAt` alerts get unless a test says otherwise (the API's
/// millisecond precision).
pub const STARTS_AT: &str = "2026-11-27T01:00:00.000Z";

#[derive(Default)]
struct FakeState {
    /// fingerprint → status
    alerts: Mutex<BTreeMap<String, Status>>,
    /// silence id → endsAt (RFC 3339), active
    silences: Mutex<BTreeMap<String, String>>,
    fail_with: Mutex<Option<StatusCode>>,
    /// (path, query, authorization)
    requests: Mutex<Vec<(String, String, Option<String>)>>,
    /// Bodies of `POST /api/v2/silences`, in order.
    posted: Mutex<Vec<Value>>,
}

#[derive(Clone)]
pub struct FakeAlertmanager {
    pub url: String,
    state: Arc<FakeState>,
}

impl FakeAlertmanager {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/api/v2/alerts", get(alerts))
            .route("/api/v2/silence/{id}", get(silence))
            .route("/api/v2/silences", post(post_silence))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake alertmanager");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// The alert is active (firing, neither silenced nor inhibited).
    pub fn active(&self, fingerprint: &str) {
        self.set(fingerprint, "active", &[], &[]);
    }

    /// The alert is suppressed by these silences.
    pub fn silenced(&self, fingerprint: &str, silences: &[&str]) {
        self.set(fingerprint, "suppressed", silences, &[]);
    }

    /// The alert is suppressed by an inhibition.
    pub fn inhibited(&self, fingerprint: &str, by: &str) {
        self.set(fingerprint, "suppressed", &[], &[by]);
    }

    /// The alert is active with this `startsAt`.
    pub fn active_since(&self, fingerprint: &str, starts_at: &str) {
        self.set(fingerprint, "active", &[], &[]);
        if let Some(alert) = self.state.alerts.lock().expect("lock").get_mut(fingerprint) {
            starts_at.clone_into(&mut alert.3);
        }
    }

    fn set(&self, fingerprint: &str, state: &str, silenced: &[&str], inhibited: &[&str]) {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        self.state.alerts.lock().expect("lock").insert(
            fingerprint.to_owned(),
            (
                state.to_owned(),
                owned(silenced),
                owned(inhibited),
                STARTS_AT.to_owned(),
            ),
        );
    }

    /// Alertmanager no longer has the alert (resolved, or never had it).
    pub fn gone(&self, fingerprint: &str) {
        self.state.alerts.lock().expect("lock").remove(fingerprint);
    }

    pub fn add_silence(&self, id: &str, ends_at: &str) {
        self.state
            .silences
            .lock()
            .expect("lock")
            .insert(id.to_owned(), ends_at.to_owned());
    }

    /// Every request answers this status from now on (`None`: normal).
    pub fn fail_with(&self, status: Option<StatusCode>) {
        *self.state.fail_with.lock().expect("lock") = status;
    }

    /// The silences posted so far (`postableSilence` bodies).
    pub fn posted_silences(&self) -> Vec<Value> {
        self.state.posted.lock().expect("lock").clone()
    }

    /// (path, query, authorization) of every request so far.
    pub fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.state.requests.lock().expect("lock").clone()
    }
}

fn record(state: &FakeState, path: String, query: Option<String>, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .requests
        .lock()
        .expect("lock")
        .push((path, query.unwrap_or_default(), auth));
}

async fn alerts(
    State(state): State<Arc<FakeState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    record(&state, "/api/v2/alerts".into(), query, &headers);
    if let Some(status) = *state.fail_with.lock().expect("lock") {
        return (status, Json(json!("fake failure"))).into_response();
    }
    let list: Vec<Value> = state
        .alerts
        .lock()
        .expect("lock")
        .iter()
        .map(|(fingerprint, (st, silenced, inhibited, starts_at))| {
            json!({
                "annotations": {"summary": "s"},
                "endsAt": "2099-01-01T00:00:00.000Z",
                "fingerprint": fingerprint,
                "receivers": [{"name": "remedy"}],
                "startsAt": starts_at,
                "status": {"inhibitedBy": inhibited, "silencedBy": silenced, "state": st},
                "updatedAt": "2026-11-27T01:00:00.000Z",
                "generatorURL": "http://prometheus/graph",
                "labels": {"alertname": "X"}
            })
        })
        .collect();
    Json(list).into_response()
}

async fn silence(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&state, format!("/api/v2/silence/{id}"), None, &headers);
    if let Some(status) = *state.fail_with.lock().expect("lock") {
        return (status, Json(json!("fake failure"))).into_response();
    }
    match state.silences.lock().expect("lock").get(&id) {
        Some(ends_at) => Json(json!({
            "id": id,
            "matchers": [{"name": "alertname", "value": "X", "isRegex": false, "isEqual": true}],
            "startsAt": "2026-11-27T00:00:00.000Z",
            "endsAt": ends_at,
            "createdBy": "alice",
            "comment": "maintenance",
            "status": {"state": "active"},
            "updatedAt": "2026-11-27T00:00:00.000Z"
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!("silence not found"))).into_response(),
    }
}

async fn post_silence(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, "/api/v2/silences".into(), None, &headers);
    if let Some(status) = *state.fail_with.lock().expect("lock") {
        return (status, Json(json!("fake failure"))).into_response();
    }
    let mut posted = state.posted.lock().expect("lock");
    posted.push(body);
    Json(json!({"silenceID": format!("5e1f0000-0000-0000-0000-{:012}", posted.len())}))
        .into_response()
}
