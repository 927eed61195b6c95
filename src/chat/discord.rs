//! Discord: the report as a message with action rows of buttons, built
//! with serenity's builders and sent through remedy's own HTTP client (the
//! lean option: no second TLS stack, 429 `retry_after` honoured by the
//! work queue), paced by the limits Discord announces in its headers, and
//! the Ed25519 check of interaction requests.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use serde_json::{Value, json};
use serenity::all::ButtonStyle;
use serenity::builder::{
    CreateActionRow, CreateAllowedMentions, CreateButton, CreateMessage, EditMessage,
};
use serenity::interactions_endpoint::Verifier;

use super::pace::Pacer;
use super::report::{ChatReport, ReportAction, risk_name, severity_mark};
use super::text::{code, cut, discord_escape};
use super::{ChatError, retry_after_header};

pub const MAX_CONTENT: usize = 2000;
pub const MAX_ROWS: usize = 5;
pub const MAX_BUTTONS_PER_ROW: usize = 5;
pub const MAX_CUSTOM_ID: usize = 100;
pub const MAX_LABEL: usize = 80;
/// Two actions (four buttons) per row.
const ACTIONS_PER_ROW: usize = 2;

/// The message content and its button rows.
pub struct Rendered {
    pub content: String,
    pub rows: Vec<CreateActionRow>,
}

#[must_use]
pub fn render(report: &ChatReport) -> Rendered {
    let icon = if report.resolved { "✅" } else { "🔥" };
    let mut head = format!(
        "{icon} **{}** · incident #{}\n{}\n",
        discord_escape(&report.headline()),
        report.incident_id,
        discord_escape(&report.summary)
    );
    let labels: Vec<String> = report
        .labels
        .iter()
        .map(|(k, v)| format!("`{}={}`", code_inline(k), code_inline(v)))
        .collect();
    head.push_str(&labels.join(" "));
    head.push('\n');
    if let Some(storm) = &report.storm {
        head.push_str(&format!("**{}**\n", discord_escape(&storm.line())));
        for line in storm.value_lines(|v| format!("`{}`", code_inline(v))) {
            head.push_str(&line);
            head.push('\n');
        }
    }
    let controls = report
        .escalation
        .as_ref()
        .map(|e| {
            head.push_str(&e.line(discord_escape));
            head.push('\n');
            super::controls(e)
        })
        .filter(|c| !report.resolved && !c.is_empty())
        .unwrap_or_default();
    // One row for the controls; the actions get the others.
    let action_rows = MAX_ROWS - usize::from(!controls.is_empty());

    let openable: Vec<&ReportAction> = report
        .actions
        .iter()
        .filter(|a| a.open() && !report.resolved)
        .collect();
    let with_buttons = openable.len().min(action_rows * ACTIONS_PER_ROW);

    let mut sections: Vec<String> = Vec::new();
    if !report.actions.is_empty() {
        let mut s = String::from("**Actions**\n");
        for a in &report.actions {
            s.push_str(&format!(
                "• `{}` {} — {}, needs {} of {} · {}\n",
                code_inline(&a.key),
                discord_escape(&a.title),
                risk_name(a.risk),
                a.quorum,
                discord_escape(&a.roles.join(", ")),
                a.status_escaped(discord_escape)
            ));
            if !a.changes.is_empty() {
                s.push_str(&format!("```diff\n{}\n```\n", code(&a.changes.join("\n"))));
            }
        }
        if openable.len() > with_buttons {
            s.push_str(&format!(
                "… and {} more actions without buttons: approve them through the API or `remedy approve`\n",
                openable.len() - with_buttons
            ));
        }
        sections.push(s);
    }
    for f in &report.findings {
        let mut s = format!(
            "{} {}\n",
            severity_mark(f.severity),
            discord_escape(&f.text)
        );
        if !f.evidence.is_empty() {
            s.push_str(&format!("```\n{}\n```\n", code(&f.evidence.join("\n"))));
            if f.more_rows > 0 {
                s.push_str(&format!("… and {} more rows\n", f.more_rows));
            }
        }
        if let Some(as_of) = f.as_of_line() {
            s.push_str(&format!("*{as_of}*\n"));
        }
        sections.push(s);
    }
    if !report.step_errors.is_empty() {
        let mut s = String::from("**Steps that failed**\n");
        for (id, e) in &report.step_errors {
            s.push_str(&format!("• `{}`: {}\n", code_inline(id), discord_escape(e)));
        }
        sections.push(s);
    }
    for sug in &report.suggestions {
        let mut s = format!("💡 **{}**\n", discord_escape(&sug.title));
        if let Some(t) = &sug.text {
            s.push_str(&discord_escape(t));
            s.push('\n');
        }
        if let Some(c) = &sug.command {
            s.push_str(&format!("```\n{}\n```\n", code(c.trim_end())));
        }
        sections.push(s);
    }
    let footer = format!("full report: `{}`", code_inline(&report.full_report));
    let mut content = head;
    let mut hidden = 0;
    for s in &sections {
        // Room for this section, the footer and a possible "… and N more".
        if hidden == 0
            && content.chars().count() + s.chars().count() + footer.len() + 40 <= MAX_CONTENT
        {
            content.push_str(s);
        } else {
            hidden += 1;
        }
    }
    if hidden > 0 {
        content.push_str(&format!("… and {hidden} more sections\n"));
    }
    content.push_str(&footer);
    let content = cut(&content, MAX_CONTENT);

    let control_row = (!controls.is_empty()).then(|| {
        CreateActionRow::Buttons(
            controls
                .iter()
                .take(MAX_BUTTONS_PER_ROW)
                .map(|c| {
                    CreateButton::new(cut(&c.discord_custom_id(report.incident_id), MAX_CUSTOM_ID))
                        .label(cut(&c.label(), MAX_LABEL))
                        .style(if *c == super::Control::Ack {
                            ButtonStyle::Primary
                        } else {
                            ButtonStyle::Secondary
                        })
                })
                .collect(),
        )
    });
    let rows = control_row
        .into_iter()
        .chain(
            openable[..with_buttons]
                .chunks(ACTIONS_PER_ROW)
                .map(|chunk| {
                    CreateActionRow::Buttons(
                        chunk.iter().flat_map(|a| decision_buttons(a)).collect(),
                    )
                }),
        )
        .collect();
    Rendered { content, rows }
}

/// A ping's message body: the role's users and roles as real mentions,
/// `allowed_mentions` listing exactly them, then `text` escaped.
#[must_use]
pub fn ping_body(
    message: Option<&str>,
    members: Option<&crate::config::RoleMembers>,
    text: &str,
) -> Value {
    let (users, roles) = members.map_or((Vec::new(), Vec::new()), |m| {
        (m.discord_users.clone(), m.discord_roles.clone())
    });
    let mentions: Vec<String> = users
        .iter()
        .map(|u| format!("<@{u}>"))
        .chain(roles.iter().map(|r| format!("<@&{r}>")))
        .collect();
    let mut content = mentions.join(" ");
    if !content.is_empty() {
        content.push(' ');
    }
    content.push_str(&discord_escape(text));
    let mut body = json!({
        "content": cut(&content, MAX_CONTENT),
        "allowed_mentions": {"users": users, "roles": roles},
    });
    if let Some(message) = message {
        body["message_reference"] = json!({"message_id": message});
    }
    body
}

/// A reply's message body: the verified mentions remedy built (an
/// action's clickers) as real mentions, `allowed_mentions` listing exactly
/// those users (never roles, `@everyone` or anyone named by the alert), the
/// rest escaped.
#[must_use]
pub fn reply_body(message: &str, reply: &super::Reply) -> Value {
    let mut body = json!({
        "content": cut(&reply.render(discord_escape), MAX_CONTENT),
        "message_reference": {"message_id": message},
        "allowed_mentions": {"parse": [], "users": reply.mentioned_users()},
    });
    // An offered action: its buttons under the text.
    if let Some(action) = &reply.action {
        let row = CreateActionRow::Buttons(decision_buttons(action).into());
        body["components"] = serde_json::to_value([row]).unwrap_or_default();
    }
    body
}

/// An action's Approve and Reject buttons.
fn decision_buttons(a: &ReportAction) -> [CreateButton; 2] {
    [
        CreateButton::new(custom_id("ap", a))
            .label(cut(&format!("Approve {}", a.key), MAX_LABEL))
            .style(ButtonStyle::Success),
        CreateButton::new(custom_id("rj", a))
            .label(cut(&format!("Reject {}", a.key), MAX_LABEL))
            .style(ButtonStyle::Danger),
    ]
}

/// Inside inline code only a backtick would end it.
fn code_inline(text: &str) -> String {
    super::text::defuse_mentions(&super::text::one_line(text).replace('`', "ˋ"))
}

/// `ap:<approval id>:<digest prefix>` or `rj:…`, within 100 characters.
fn custom_id(verb: &str, a: &ReportAction) -> String {
    cut(
        &format!("{verb}:{}:{}", a.approval_id, a.digest),
        MAX_CUSTOM_ID,
    )
}

/// Parses a button's `custom_id` into (approve?, approval id, digest).
#[must_use]
pub fn parse_custom_id(id: &str) -> Option<(bool, i64, String)> {
    let mut parts = id.splitn(3, ':');
    let approve = match parts.next()? {
        "ap" => true,
        "rj" => false,
        _ => return None,
    };
    let approval = parts.next()?.parse().ok()?;
    Some((approve, approval, parts.next()?.to_owned()))
}

/// `sc:<incident>:<seconds>`: the Confirm button of a Silence
/// confirmation (only this click requests the silence).
#[must_use]
pub fn silence_confirm_id(incident: i64, seconds: u64) -> String {
    format!("sc:{incident}:{seconds}")
}

/// Parses [`silence_confirm_id`] into (incident, seconds).
#[must_use]
pub fn parse_silence_confirm(id: &str) -> Option<(i64, u64)> {
    let mut parts = id.split(':');
    if parts.next()? != "sc" {
        return None;
    }
    let incident = parts.next()?.parse().ok()?;
    let seconds = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((incident, seconds))
}

/// The exact matchers, one per line as inline code, and the length.
fn silence_text(head: &str, matchers: &[String], foot: &str) -> String {
    let mut content = format!("{head} Alertmanager mutes every alert matching all of:\n");
    for m in matchers {
        content.push_str(&format!("`{}`\n", code_inline(m)));
    }
    content.push_str(foot);
    // Cut before the foot would be lost: the foot says what to do.
    if content.chars().count() > MAX_CONTENT {
        let room = MAX_CONTENT.saturating_sub(foot.chars().count() + 1);
        let mut cut_content = cut(&content, room);
        cut_content.push('\n');
        cut_content.push_str(foot);
        return cut_content;
    }
    content
}

/// The answer to a Silence click: an ephemeral message (interaction
/// response type 4, flags 64, seen by the clicker only) with the exact
/// matchers and length, and a Confirm button; nothing is silenced yet.
#[must_use]
pub fn silence_confirmation(incident: i64, seconds: u64, matchers: &[String]) -> Value {
    let length = crate::escalation::human(Duration::from_secs(seconds));
    json!({
        "type": 4,
        "data": {
            "content": silence_text(
                &format!("**Silence for {length}?**"),
                matchers,
                "Nothing is silenced until you press Confirm.",
            ),
            "flags": 64,
            "allowed_mentions": {"parse": []},
            "components": [{"type": 1, "components": [{
                "type": 2,
                "style": 4,
                "label": cut(&format!("Confirm: silence {length}"), MAX_LABEL),
                "custom_id": cut(&silence_confirm_id(incident, seconds), MAX_CUSTOM_ID),
            }]}],
        }
    })
}

/// The answer to the Confirm click once the silence is requested: the
/// ephemeral confirmation is updated (type 7) and loses its button.
#[must_use]
pub fn silence_requested(seconds: u64, matchers: &[String]) -> Value {
    let length = crate::escalation::human(Duration::from_secs(seconds));
    json!({
        "type": 7,
        "data": {
            "content": silence_text(
                &format!("**Silence for {length} requested.**"),
                matchers,
                "The incident's thread reports the outcome.",
            ),
            "components": [],
            "allowed_mentions": {"parse": []},
        }
    })
}

/// Nobody is ever pinged by a report: no users, no roles, no @everyone.
pub fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
        .everyone(false)
        .all_users(false)
        .all_roles(false)
        .empty_users()
        .empty_roles()
}

/// Discord wants `parse` alone when it is used: exactly `{"parse": []}`.
fn pinned_mentions(mut body: Value) -> Value {
    body["allowed_mentions"] = json!({"parse": []});
    body
}

/// The JSON body of a new message. The initial responder's users and
/// roles (from the settings) are the only mentions it may notify.
#[must_use]
pub fn create_body(report: &ChatReport) -> Value {
    let r = render(report);
    let body = serde_json::to_value(
        CreateMessage::new()
            .content(r.content)
            .components(r.rows)
            .allowed_mentions(no_mentions()),
    )
    .unwrap_or(Value::Null);
    match &report.escalation {
        Some(e) if !e.ping_users.is_empty() || !e.ping_roles.is_empty() => {
            let mut body = body;
            body["allowed_mentions"] = json!({"users": e.ping_users, "roles": e.ping_roles});
            body
        }
        _ => pinned_mentions(body),
    }
}

/// The JSON body of an edit (an empty row list removes the buttons).
#[must_use]
pub fn edit_body(report: &ChatReport) -> Value {
    let r = render(report);
    pinned_mentions(
        serde_json::to_value(
            EditMessage::new()
                .content(r.content)
                .components(r.rows)
                .allowed_mentions(no_mentions()),
        )
        .unwrap_or(Value::Null),
    )
}

/// Discord's REST API with a bot token.
pub struct DiscordClient {
    http: reqwest::Client,
    api_url: String,
    token: String,
    /// Per route (method and channel): the waits Discord announces in its
    /// `X-RateLimit-*` headers (it asks clients not to hard-code per-route
    /// limits). A 429 itself is waited out in the work queue.
    routes: Pacer,
    /// The documented global limit, 50 requests a second per bot.
    global: Pacer,
}

/// The key of the bot-wide limit in `global`.
const GLOBAL: &str = "global";

const GLOBAL_PER_SECOND: NonZeroU32 = match NonZeroU32::new(50) {
    Some(n) => n,
    None => unreachable!(),
};

impl DiscordClient {
    #[must_use]
    pub fn new(http: reqwest::Client, api_url: &str, token: &str, pace_wait: Duration) -> Self {
        Self {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            routes: Pacer::new(None, pace_wait),
            global: Pacer::new(Some(Quota::per_second(GLOBAL_PER_SECOND)), pace_wait),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, ChatError> {
        // Buckets are per route and major parameter: `/channels/{id}`.
        let route = format!(
            "{method} {}",
            path.split('/').take(3).collect::<Vec<_>>().join("/")
        );
        self.routes.ready(&route).await?;
        self.global.ready(GLOBAL).await?;
        let response = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .header("authorization", format!("Bot {}", self.token))
            .header(
                "user-agent",
                concat!(
                    "DiscordBot (https://github.com/remedy, ",
                    env!("CARGO_PKG_VERSION"),
                    ")"
                ),
            )
            .json(body)
            .send()
            .await
            .map_err(|e| ChatError::Transient(format!("discord: {}", e.without_url())))?;
        let status = response.status();
        let header_wait = retry_after_header(response.headers());
        if let Some(wait) = bucket_empty_for(response.headers()) {
            self.routes.hold(&route, wait);
        }
        let global = response
            .headers()
            .get("x-ratelimit-global")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(reply);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = reply["retry_after"]
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .or(header_wait)
                .unwrap_or(Duration::from_secs(1));
            if global || reply["global"] == true {
                tracing::warn!(?wait, "discord: global rate limit reached");
            }
            return Err(ChatError::RetryAfter(wait));
        }
        let detail = format!(
            "HTTP {} {} {}",
            status.as_u16(),
            reply["code"],
            reply["message"].as_str().unwrap_or_default()
        );
        if status.is_server_error() {
            Err(ChatError::Transient(detail))
        } else {
            Err(ChatError::Permanent(detail))
        }
    }

    /// Posts the report; returns the message id.
    pub async fn post(&self, channel: &str, report: &ChatReport) -> Result<String, ChatError> {
        let reply = self
            .call(
                reqwest::Method::POST,
                &format!("/channels/{channel}/messages"),
                &create_body(report),
            )
            .await?;
        reply["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ChatError::Transient("discord: no message id in the reply".into()))
    }

    pub async fn update(
        &self,
        channel: &str,
        message: &str,
        report: &ChatReport,
    ) -> Result<(), ChatError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/channels/{channel}/messages/{message}"),
            &edit_body(report),
        )
        .await
        .map(drop)
    }

    /// A ping: the role's members mentioned and allowed to be notified
    /// (exactly those users and roles, never `@everyone`), then `text`; a
    /// reply to the report, or its own message when there is none yet.
    pub async fn ping(
        &self,
        channel: &str,
        message: Option<&str>,
        members: Option<&crate::config::RoleMembers>,
        text: &str,
    ) -> Result<(), ChatError> {
        let body = ping_body(message, members, text);
        self.call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/messages"),
            &body,
        )
        .await
        .map(drop)
    }

    /// A reply to the report (results, escalations).
    pub async fn reply(
        &self,
        channel: &str,
        message: &str,
        reply: &super::Reply,
    ) -> Result<(), ChatError> {
        let body = reply_body(message, reply);
        self.call(
            reqwest::Method::POST,
            &format!("/channels/{channel}/messages"),
            &body,
        )
        .await
        .map(drop)
    }
}

/// How long a route's bucket stays empty, when its last response said it
/// is (`X-RateLimit-Remaining: 0` with `X-RateLimit-Reset-After` seconds).
fn bucket_empty_for(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if header("x-ratelimit-remaining")? > 0.0 {
        return None;
    }
    header("x-ratelimit-reset-after")
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// Verifies an interaction: Ed25519 over `timestamp ‖ body` with the
/// application's key, and a timestamp within five minutes of `now`.
pub fn verify(
    verifier: &Verifier,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), super::slack::SignatureError> {
    use super::slack::SignatureError;
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Missing)?;
    if now.checked_sub(ts).is_none_or(|d| d.unsigned_abs() > 300) {
        return Err(SignatureError::Stale);
    }
    verifier
        .verify(signature, timestamp, body)
        .map_err(|()| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::{HeaderMap, HeaderValue};

    use super::bucket_empty_for;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn an_empty_bucket_holds_its_route_until_it_resets() {
        let empty = headers(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset-after", "1.25"),
        ]);
        assert_eq!(bucket_empty_for(&empty), Some(Duration::from_millis(1250)));
    }

    #[test]
    fn a_bucket_with_room_or_without_headers_holds_nothing() {
        let room = headers(&[
            ("x-ratelimit-remaining", "3"),
            ("x-ratelimit-reset-after", "4.5"),
        ]);
        assert_eq!(bucket_empty_for(&room), None);
        assert_eq!(bucket_empty_for(&HeaderMap::new()), None);
    }
}
