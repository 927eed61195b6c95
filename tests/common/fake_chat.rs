//! A local fake of the Slack Web API and Discord's REST API, at the HTTP
//! boundary: it checks the auth headers and the platform limits of what
//! remedy sends, answers in the platforms' shapes (`ok: false` errors, 429
//! with `Retry-After`, Discord's 429 body), can be scripted to fail, and
//! records every request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use serde_json::{Value, json};

pub const SLACK_TOKEN: &str = "xoxb-test-token";
/// A Slack pace (`chat.slack.post_rate`, `.update_rate`) no test reaches.
pub const UNPACED: &str = "100000/1s";
pub const DISCORD_TOKEN: &str = "discord-test-token";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: std::time::Instant,
}

/// What the next API call answers instead of success.
#[derive(Debug, Clone)]
pub enum Scripted {
    Status(u16),
    /// Slack: HTTP 429 with `Retry-After: N`.
    SlackRateLimited(u64),
    /// Slack: 200 with `{"ok": false, "error": CODE}`.
    SlackError(&'static str),
    /// Discord: 429 with `{"retry_after": S, "global": false}`.
    DiscordRateLimited(f64),
    /// Discord: 403 Missing Permissions.
    DiscordForbidden,
}

#[derive(Default)]
struct FakeState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Scripted>>,
    next_id: AtomicU64,
    limited: std::sync::atomic::AtomicUsize,
    /// Slack user group → members.
    groups: Mutex<Vec<(String, Vec<String>)>>,
    /// Slack's "one message per second per channel", when enforced: the
    /// least gap between two accepted `chat.postMessage` in a channel, and
    /// when each channel last accepted one.
    pace: Mutex<Option<(std::time::Duration, HashMap<String, std::time::Instant>)>>,
}

#[derive(Clone)]
pub struct FakeChat {
    pub url: String,
    state: Arc<FakeState>,
}

impl FakeChat {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/slack/api/{method}", post(slack_api))
            .route("/slack/response/{id}", post(slack_response))
            .route(
                "/discord/api/v10/channels/{channel}/messages",
                post(discord_create),
            )
            .route(
                "/discord/api/v10/channels/{channel}/messages/{message}",
                patch(discord_edit),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake chat");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state
            .script
            .lock()
            .expect("fake chat lock")
            .extend(answers);
    }

    /// Answers `chat.postMessage` with 429 (`Retry-After: 1`) when it
    /// comes less than `min_gap` after the last one accepted in the same
    /// channel, as Slack does past one message a second per channel.
    pub fn enforce_post_pace(&self, min_gap: std::time::Duration) {
        *self.state.pace.lock().expect("fake chat lock") = Some((min_gap, HashMap::new()));
    }

    /// Slack calls answered 429 so far.
    pub fn rate_limited(&self) -> usize {
        self.state.limited.load(Ordering::SeqCst)
    }

    pub fn set_group(&self, group: &str, members: &[&str]) {
        self.state.groups.lock().expect("fake chat lock").push((
            group.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        ));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("fake chat lock").clone()
    }

    /// Requests whose path ends with `suffix`.
    pub fn calls(&self, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }
}

fn record(state: &FakeState, method: &str, path: String, headers: &HeaderMap, body: &Value) {
    state
        .requests
        .lock()
        .expect("fake chat lock")
        .push(Recorded {
            method: method.to_owned(),
            path,
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: body.clone(),
            at: std::time::Instant::now(),
        });
}

fn scripted(state: &FakeState) -> Option<Scripted> {
    state.script.lock().expect("fake chat lock").pop_front()
}

/// Slack's documented limits for a message's blocks.
fn slack_limits(body: &Value) -> Result<(), String> {
    let blocks = body["blocks"].as_array().ok_or("no blocks")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err(format!("{} blocks", blocks.len()));
    }
    for b in blocks {
        if let Some(t) = b["text"]["text"].as_str() {
            let max = if b["type"] == "header" { 150 } else { 3000 };
            if t.chars().count() > max {
                return Err(format!("{} text of {} chars", b["type"], t.chars().count()));
            }
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            if e["type"] == "button" {
                let id = e["action_id"].as_str().unwrap_or_default();
                let value = e["value"].as_str().unwrap_or_default();
                let text = e["text"]["text"].as_str().unwrap_or_default();
                if id.len() > 255 || value.chars().count() > 2000 || text.chars().count() > 75 {
                    return Err(format!("button over limits: {e}"));
                }
                if !e["confirm"].is_null() {
                    confirm_limits(&e["confirm"])?;
                }
            }
        }
    }
    if body["text"].as_str().unwrap_or_default().is_empty() {
        return Err("no fallback text".into());
    }
    Ok(())
}

/// A confirm dialog object: plain_text `title` (100), `text` (300),
/// `confirm` and `deny` (30 each), `style` primary or danger.
fn confirm_limits(confirm: &Value) -> Result<(), String> {
    for (field, max) in [("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)] {
        let object = &confirm[field];
        let text = object["text"].as_str().unwrap_or_default();
        if object["type"] != "plain_text" || text.is_empty() || text.chars().count() > max {
            return Err(format!("confirm {field} over limits: {confirm}"));
        }
    }
    match confirm["style"].as_str() {
        None | Some("primary" | "danger") => Ok(()),
        Some(other) => Err(format!("confirm style {other}")),
    }
}

async fn slack_api(
    State(state): State<Arc<FakeState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        "POST",
        format!("/slack/api/{method}"),
        &headers,
        &body,
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {SLACK_TOKEN}"))
    {
        return Json(json!({"ok": false, "error": "not_authed"})).into_response();
    }
    match scripted(&state) {
        Some(Scripted::Status(code)) => {
            return StatusCode::from_u16(code).expect("status").into_response();
        }
        Some(Scripted::SlackRateLimited(secs)) => {
            state.limited.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
        }
        Some(Scripted::SlackError(code)) => {
            return Json(json!({"ok": false, "error": code})).into_response();
        }
        _ => {}
    }
    if method == "chat.postMessage"
        && let Some((min_gap, last)) = state.pace.lock().expect("fake chat lock").as_mut()
    {
        let channel = body["channel"].as_str().unwrap_or_default().to_owned();
        let now = std::time::Instant::now();
        if last
            .get(&channel)
            .is_some_and(|at| now.duration_since(*at) < *min_gap)
        {
            state.limited.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
        }
        last.insert(channel, now);
    }
    match method.as_str() {
        "chat.postMessage" | "chat.update" => {
            if body["channel"].as_str().unwrap_or_default().is_empty() {
                return Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
            }
            if body.get("thread_ts").is_none()
                && let Err(e) = slack_limits(&body)
            {
                return Json(json!({"ok": false, "error": "invalid_blocks", "detail": e}))
                    .into_response();
            }
            let ts = match body["ts"].as_str() {
                Some(ts) => ts.to_owned(),
                None => format!(
                    "1764000000.{:06}",
                    state.next_id.fetch_add(1, Ordering::SeqCst) + 1
                ),
            };
            Json(json!({"ok": true, "channel": body["channel"], "ts": ts, "message": {"text": body["text"]}}))
                .into_response()
        }
        // `remedy doctor`: who the token belongs to.
        "auth.test" => Json(json!({
            "ok": true, "url": "https://remedy-tests.slack.com/", "team": "remedy-tests",
            "user": "remedy", "team_id": "T0TESTS", "user_id": "U0REMEDY", "bot_id": "B0REMEDY"
        }))
        .into_response(),
        "usergroups.users.list" => {
            let group = body["usergroup"].as_str().unwrap_or_default();
            let groups = state.groups.lock().expect("fake chat lock");
            match groups.iter().find(|(g, _)| g == group) {
                Some((_, users)) => Json(json!({"ok": true, "users": users})).into_response(),
                None => Json(json!({"ok": false, "error": "no_such_subteam"})).into_response(),
            }
        }
        _ => Json(json!({"ok": false, "error": "unknown_method"})).into_response(),
    }
}

async fn slack_response(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        "POST",
        format!("/slack/response/{id}"),
        &headers,
        &body,
    );
    Json(json!({"ok": true})).into_response()
}

fn discord_check(headers: &HeaderMap, body: &Value) -> Result<(), Box<Response>> {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bot {DISCORD_TOKEN}"))
    {
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "401: Unauthorized", "code": 0})),
            )
                .into_response(),
        ));
    }
    let content = body["content"].as_str().unwrap_or_default();
    let rows = body["components"].as_array().cloned().unwrap_or_default();
    let too_many_buttons = rows
        .iter()
        .any(|r| r["components"].as_array().is_none_or(|b| b.len() > 5));
    let bad_id = rows
        .iter()
        .flat_map(|r| r["components"].as_array().cloned().unwrap_or_default())
        .any(|b| {
            b["custom_id"]
                .as_str()
                .is_none_or(|id| id.is_empty() || id.len() > 100)
                || b["label"].as_str().is_some_and(|l| l.chars().count() > 80)
        });
    if content.chars().count() > 2000 || rows.len() > 5 || too_many_buttons || bad_id {
        return Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"code": 50035, "message": "Invalid Form Body", "errors": {}})),
            )
                .into_response(),
        ));
    }
    Ok(())
}

fn discord_scripted(state: &FakeState) -> Option<Response> {
    match scripted(state)? {
        Scripted::Status(code) => Some(StatusCode::from_u16(code).expect("status").into_response()),
        Scripted::DiscordRateLimited(secs) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"message": "You are being rate limited.", "retry_after": secs, "global": false})),
            )
                .into_response(),
        ),
        Scripted::DiscordForbidden => Some(
            (
                StatusCode::FORBIDDEN,
                Json(json!({"message": "Missing Permissions", "code": 50013})),
            )
                .into_response(),
        ),
        _ => None,
    }
}

async fn discord_create(
    State(state): State<Arc<FakeState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        "POST",
        format!("/discord/channels/{channel}/messages"),
        &headers,
        &body,
    );
    if let Some(r) = discord_scripted(&state) {
        return r;
    }
    if let Err(r) = discord_check(&headers, &body) {
        return *r;
    }
    let id = (900_000_000_000_000_000 + state.next_id.fetch_add(1, Ordering::SeqCst)).to_string();
    Json(json!({"id": id, "channel_id": channel, "content": body["content"], "components": body["components"]}))
        .into_response()
}

async fn discord_edit(
    State(state): State<Arc<FakeState>>,
    Path((channel, message)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(
        &state,
        "PATCH",
        format!("/discord/channels/{channel}/messages/{message}"),
        &headers,
        &body,
    );
    if let Some(r) = discord_scripted(&state) {
        return r;
    }
    if let Err(r) = discord_check(&headers, &body) {
        return *r;
    }
    Json(json!({"id": message, "channel_id": channel, "content": body["content"]})).into_response()
}
