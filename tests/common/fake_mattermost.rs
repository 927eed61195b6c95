//! A local fake of the Mattermost server at the HTTP boundary: the REST API
//! remedy calls (`POST /api/v4/posts`, `PUT /api/v4/posts/{id}`,
//! `GET /api/v4/users/{id}`, `POST /api/v4/actions/dialogs/open`) with the
//! bot token checked, the server's limits and action rules enforced (and
//! remedy's own attachment limits), Mattermost's error bodies, 429 with
//! `X-Ratelimit-*` headers; and the server's side of a click: the exact
//! request it would send to a button's `integration.url`, built from the
//! stored post, and a dialog's submission.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

pub const MATTERMOST_TOKEN: &str = "mattermost-bot-test-token";
/// remedy's context key in tests (at least 32 characters).
pub const CONTEXT_SECRET: &str = "mattermost-context-secret-for-the-tests";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// What the next post or post update answers instead of success.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 429 with `X-Ratelimit-Reset: N` (and no `Retry-After`).
    RateLimited(u64),
    /// 403: the bot may not post in the channel.
    Forbidden,
    Status(u16),
}

#[derive(Default)]
struct FakeState {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Scripted>>,
    posts: Mutex<HashMap<String, Value>>,
    users: Mutex<HashMap<String, Value>>,
    dialogs: Mutex<Vec<Value>>,
    next_id: AtomicU64,
}

#[derive(Clone)]
pub struct FakeMattermost {
    /// The API base (`…/api/v4`).
    pub api_url: String,
    state: Arc<FakeState>,
}

impl FakeMattermost {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/api/v4/posts", post(create_post))
            .route("/api/v4/posts/{id}", put(update_post))
            .route("/api/v4/users/{id}", get(get_user))
            .route("/api/v4/actions/dialogs/open", post(open_dialog))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake mattermost");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            api_url: format!("{url}/api/v4"),
            state,
        }
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state.script.lock().expect("lock").extend(answers);
    }

    /// A user `GET /api/v4/users/{id}` answers with.
    pub fn add_user(&self, id: &str, username: &str, roles: &str) {
        self.state.users.lock().expect("lock").insert(
            id.to_owned(),
            json!({
                "id": id, "username": username, "roles": roles, "delete_at": 0,
                "first_name": "", "last_name": "", "nickname": "", "email": format!("{username}@example.com"),
                "is_bot": false, "locale": "en", "create_at": 1_700_000_000_000_i64, "update_at": 1_700_000_000_000_i64,
            }),
        );
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Accepted or not, the bodies of `POST /api/v4/posts` without a
    /// `root_id`: the reports.
    pub fn reports(&self) -> Vec<Value> {
        self.bodies("POST", "/api/v4/posts")
            .into_iter()
            .filter(|b| b.get("root_id").is_none())
            .collect()
    }

    /// Thread replies (and pings under a report).
    pub fn replies(&self) -> Vec<Value> {
        self.bodies("POST", "/api/v4/posts")
            .into_iter()
            .filter(|b| b.get("root_id").is_some())
            .collect()
    }

    pub fn updates(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .map(|r| r.body)
            .collect()
    }

    pub fn user_lookups(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/api/v4/users/"))
            .count()
    }

    pub fn dialogs(&self) -> Vec<Value> {
        self.state.dialogs.lock().expect("lock").clone()
    }

    fn bodies(&self, method: &str, path: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .map(|r| r.body)
            .collect()
    }

    /// The post as the server holds it now.
    pub fn post(&self, id: &str) -> Option<Value> {
        self.state.posts.lock().expect("lock").get(id).cloned()
    }

    /// The id of the first stored report (a post without a root).
    pub fn report_id(&self) -> Option<String> {
        let posts = self.state.posts.lock().expect("lock");
        let mut ids: Vec<&String> = posts
            .iter()
            .filter(|(_, p)| p["root_id"] == "")
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids.first().map(|id| (*id).clone())
    }

    /// The id of the stored thread reply whose message starts with
    /// `prefix`.
    pub fn reply_id(&self, prefix: &str) -> Option<String> {
        let posts = self.state.posts.lock().expect("lock");
        posts
            .iter()
            .find(|(_, p)| {
                p["root_id"] != "" && p["message"].as_str().is_some_and(|m| m.starts_with(prefix))
            })
            .map(|(id, _)| id.clone())
    }

    /// The button with this label in the stored post: (action id, its
    /// integration URL).
    pub fn button(&self, post_id: &str, name: &str) -> Option<(String, String)> {
        let post = self.post(post_id)?;
        actions(&post).into_iter().find_map(|a| {
            (a["name"] == name).then(|| {
                (
                    a["id"].as_str().unwrap_or_default().to_owned(),
                    a["integration"]["url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
        })
    }

    /// What the Mattermost server sends to the button's `integration.url`
    /// when `user_id` clicks it (`PostActionIntegrationRequest`): the
    /// stored context, verbatim.
    pub fn click_body(&self, post_id: &str, action_id: &str, user_id: &str) -> Value {
        let post = self.post(post_id).expect("the post exists");
        let action = actions(&post)
            .into_iter()
            .find(|a| a["id"] == action_id)
            .unwrap_or_else(|| panic!("no action {action_id} in {post}"));
        let n = self.state.next_id.fetch_add(1, Ordering::SeqCst);
        json!({
            "user_id": user_id,
            "user_name": format!("user-{user_id}"),
            "channel_id": post["channel_id"],
            "channel_name": "incidents",
            "team_id": "teamid00000000000000000000",
            "team_domain": "ops",
            "post_id": post_id,
            "trigger_id": format!("trigger{n}"),
            "type": "button",
            "data_source": "",
            "context": action["integration"]["context"],
        })
    }

    /// The submission of the last dialog opened (`SubmitDialogRequest`).
    pub fn submit_last_dialog(&self, user_id: &str) -> Value {
        let dialog = self.dialogs().last().cloned().expect("a dialog was opened");
        json!({
            "type": "dialog_submission",
            "url": dialog["url"],
            "callback_id": dialog["dialog"]["callback_id"],
            "state": dialog["dialog"]["state"],
            "user_id": user_id,
            "channel_id": "channelid0000000000000000",
            "team_id": "teamid00000000000000000000",
            "submission": {},
            "cancelled": false,
        })
    }
}

fn actions(post: &Value) -> Vec<Value> {
    post["props"]["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn record(state: &FakeState, method: &str, path: String, body: &Value) {
    state.requests.lock().expect("lock").push(Recorded {
        method: method.to_owned(),
        path,
        body: body.clone(),
    });
}

/// Mattermost's error body (`model.AppError`).
fn app_error(status: StatusCode, id: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"id": id, "message": message, "detailed_error": "", "request_id": "fakerequestid", "status_code": status.as_u16()})),
    )
        .into_response()
}

fn check_auth_and_script(
    state: &FakeState,
    headers: &HeaderMap,
    scripted: bool,
) -> Option<Response> {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {MATTERMOST_TOKEN}"))
    {
        return Some(app_error(
            StatusCode::UNAUTHORIZED,
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
        ));
    }
    if !scripted {
        return None;
    }
    match state.script.lock().expect("lock").pop_front()? {
        Scripted::RateLimited(reset) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("x-ratelimit-limit", "10".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                "limit exceeded\n",
            )
                .into_response(),
        ),
        Scripted::Forbidden => Some(app_error(
            StatusCode::FORBIDDEN,
            "api.context.permissions.app_error",
            "You do not have the appropriate permissions.",
        )),
        Scripted::Status(code) => Some(StatusCode::from_u16(code).expect("status").into_response()),
    }
}

fn chars(value: &Value) -> usize {
    value.as_str().map_or(0, |s| s.chars().count())
}

/// The server's checks of a post (`Post.IsValid`, `PostAction.IsValid`,
/// action ids unique and alphanumeric for the action route) and remedy's
/// own attachment limits.
fn post_limits(body: &Value) -> Result<(), String> {
    if body["channel_id"].as_str().is_none_or(str::is_empty) {
        return Err("channel_id is required".into());
    }
    let message = chars(&body["message"]);
    if message > 16_383 {
        return Err(format!("message of {message} characters"));
    }
    let props = body["props"].to_string().chars().count();
    if props > 800_000 {
        return Err(format!("props of {props} characters"));
    }
    let attachments = body["props"]["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if message == 0 && attachments.is_empty() {
        return Err("an empty post".into());
    }
    // remedy's own limits (remedy::chat::mattermost).
    if attachments.len() > 20 {
        return Err(format!("{} attachments", attachments.len()));
    }
    let mut ids = HashSet::new();
    for a in &attachments {
        if chars(&a["fallback"]) == 0 {
            return Err(format!("an attachment without fallback: {a}"));
        }
        for field in ["text", "fallback", "title", "pretext"] {
            if chars(&a[field]) > 3000 {
                return Err(format!(
                    "attachment {field} of {} characters",
                    chars(&a[field])
                ));
            }
        }
        let fields = a["fields"].as_array().cloned().unwrap_or_default();
        if fields.len() > 8
            || fields
                .iter()
                .any(|f| chars(&f["value"]) > 500 || chars(&f["title"]) == 0)
        {
            return Err(format!("fields over limits: {a}"));
        }
        for action in a["actions"].as_array().into_iter().flatten() {
            let id = action["id"].as_str().unwrap_or_default();
            if id.is_empty()
                || !id.chars().all(|c| c.is_ascii_alphanumeric())
                || !ids.insert(id.to_owned())
            {
                return Err(format!("action id {id:?} not alphanumeric or not unique"));
            }
            let name = chars(&action["name"]);
            if name == 0 || name > 80 {
                return Err(format!("action name of {name} characters"));
            }
            if action["type"] != "button" {
                return Err(format!("action type {}", action["type"]));
            }
            let style = action["style"].as_str().unwrap_or_default();
            if ![
                "", "default", "primary", "success", "good", "warning", "danger",
            ]
            .contains(&style)
            {
                return Err(format!("action style {style}"));
            }
            let url = action["integration"]["url"].as_str().unwrap_or_default();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("integration url {url:?}"));
            }
            if !action["integration"]["context"].is_object() {
                return Err("integration context is not an object".into());
            }
        }
    }
    Ok(())
}

fn new_id(state: &FakeState) -> String {
    format!(
        "post{:022}",
        state.next_id.fetch_add(1, Ordering::SeqCst) + 1
    )
}

async fn create_post(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, "POST", "/api/v4/posts".into(), &body);
    if let Some(r) = check_auth_and_script(&state, &headers, true) {
        return r;
    }
    if let Err(e) = post_limits(&body) {
        return app_error(StatusCode::BAD_REQUEST, "model.post.is_valid.app_error", &e);
    }
    let root = body["root_id"].as_str().unwrap_or_default().to_owned();
    if !root.is_empty() && !state.posts.lock().expect("lock").contains_key(&root) {
        return app_error(
            StatusCode::BAD_REQUEST,
            "api.post.create_post.root_id.app_error",
            "Invalid RootId parameter.",
        );
    }
    let id = new_id(&state);
    let stored = json!({
        "id": id, "create_at": 1_764_000_000_000_i64, "update_at": 1_764_000_000_000_i64,
        "edit_at": 0, "delete_at": 0, "is_pinned": false, "user_id": "botuserid0000000000000000",
        "channel_id": body["channel_id"], "root_id": root, "original_id": "",
        "message": body["message"], "type": "", "props": body.get("props").cloned().unwrap_or(json!({})),
        "hashtags": "", "pending_post_id": "", "reply_count": 0, "metadata": {},
    });
    state.posts.lock().expect("lock").insert(id, stored.clone());
    (StatusCode::CREATED, Json(stored)).into_response()
}

async fn update_post(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, "PUT", format!("/api/v4/posts/{id}"), &body);
    if let Some(r) = check_auth_and_script(&state, &headers, true) {
        return r;
    }
    if body["id"] != id.as_str() {
        return app_error(
            StatusCode::BAD_REQUEST,
            "api.context.invalid_body_param.app_error",
            "Invalid or missing post in request body.",
        );
    }
    let mut posts = state.posts.lock().expect("lock");
    let Some(stored) = posts.get_mut(&id) else {
        return app_error(
            StatusCode::NOT_FOUND,
            "app.post.get.app_error",
            "Unable to get the post.",
        );
    };
    let mut check = body.clone();
    check["channel_id"] = stored["channel_id"].clone();
    if let Err(e) = post_limits(&check) {
        return app_error(StatusCode::BAD_REQUEST, "model.post.is_valid.app_error", &e);
    }
    // Fields not sent are cleared (PUT, not PATCH).
    stored["message"] = body.get("message").cloned().unwrap_or(json!(""));
    stored["props"] = body.get("props").cloned().unwrap_or(json!({}));
    stored["edit_at"] = 1_764_000_000_001_i64.into();
    Json(stored.clone()).into_response()
}

async fn get_user(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&state, "GET", format!("/api/v4/users/{id}"), &Value::Null);
    if let Some(r) = check_auth_and_script(&state, &headers, false) {
        return r;
    }
    match state.users.lock().expect("lock").get(&id) {
        Some(user) => Json(user.clone()).into_response(),
        None => app_error(
            StatusCode::NOT_FOUND,
            "app.user.missing_account.const",
            "Unable to find the user.",
        ),
    }
}

async fn open_dialog(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&state, "POST", "/api/v4/actions/dialogs/open".into(), &body);
    if let Some(r) = check_auth_and_script(&state, &headers, false) {
        return r;
    }
    let title = body["dialog"]["title"].as_str().unwrap_or_default();
    let url = body["url"].as_str().unwrap_or_default();
    if body["trigger_id"].as_str().is_none_or(str::is_empty)
        || url.is_empty()
        || title.is_empty()
        || title.len() > 24
    {
        return app_error(
            StatusCode::BAD_REQUEST,
            "interactive_message.decode_trigger_id.app_error",
            "Invalid dialog.",
        );
    }
    state.dialogs.lock().expect("lock").push(body);
    Json(json!({"status": "OK"})).into_response()
}
