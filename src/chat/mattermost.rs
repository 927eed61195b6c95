//! Mattermost: the report as a post with message attachments and
//! interactive buttons through the REST API (`POST /api/v4/posts`,
//! `PUT /api/v4/posts/{id}`) with a bot token; users read through
//! `GET /api/v4/users/{id}` (usernames for mentions, roles for approvers);
//! confirmations as interactive dialogs. Mattermost does not sign the
//! requests its server sends on a click, so every button's
//! `integration.context` carries an HMAC made with remedy's own key, and a
//! click whose context does not verify is refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Mutex;

use super::pace::Pacer;
use super::report::{ChatReport, ReportAction, risk_name, severity_mark};
use super::text::{clean, cut};
use super::{ChatError, Control, retry_after_header};
use crate::playbook::model::Risk;

/// The server's `MaxPostSize` on every current store (`PostMessageMaxRunesV2`,
/// 65535 bytes / 4), in characters.
pub const MAX_MESSAGE: usize = 16_383;
/// `PostPropsMaxUserRunes`: the post's `props` as JSON, in characters.
pub const MAX_PROPS: usize = 760_000;
/// A dialog's title (`DialogTitleMaxLength`, bytes).
pub const MAX_DIALOG_TITLE: usize = 24;

// Mattermost documents no limits inside an attachment; these are remedy's
// own, so a report stays readable and far under `MAX_PROPS` whatever the
// alert carries. The fake server checks them as it checks the server's.
/// Attachments per post: the controls, one per action, one "… and N more".
pub const MAX_ATTACHMENTS: usize = 20;
/// An attachment's `text`, `fallback` or `title`.
pub const MAX_ATTACHMENT_TEXT: usize = 3000;
/// Fields per attachment, and a field's `value`.
pub const MAX_FIELDS: usize = 8;
pub const MAX_FIELD_VALUE: usize = 500;
/// A button's label (`name`).
pub const MAX_BUTTON_NAME: usize = 80;
/// A dialog's `introduction_text`.
pub const MAX_DIALOG_TEXT: usize = 3000;

/// Attachment colours: an action's risk; grey for the controls and notes.
const RED: &str = "#d0312d";
const AMBER: &str = "#e8a317";
const GREEN: &str = "#2e8b57";
const GREY: &str = "#8a8a8a";

// ---------------------------------------------------------------------------
// Text

/// Mattermost Markdown: formatting characters are backslash-escaped (so
/// are `<` and `>`, which also keeps Slack-style `<!channel>` from being
/// translated), and every `@` is followed by a zero-width space: on
/// Mattermost any `@name` in a message notifies that user, so alert text
/// mentions nobody.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in clean(text).chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '#' | '[' | ']'
        ) {
            out.push('\\');
        }
        out.push(c);
        if c == '@' {
            out.push('\u{200B}');
        }
    }
    out
}

/// Alert text inside a code block or span: formatting does not apply
/// there, but no mention, no Slack-style `<!channel>` and no `<@…>` may
/// survive (remedy's own mentions are `<@ID>` until they are resolved), and
/// no run of backticks may close the fence.
fn code_text(text: &str) -> String {
    clean(text)
        .replace('`', "`\u{200B}")
        .replace('@', "@\u{200B}")
        .replace("<!", "<\u{200B}!")
}

/// Inside inline code only a backtick would end it, and a newline break it.
fn code_inline(text: &str) -> String {
    code_text(&super::text::one_line(text)).replace('`', "ˋ")
}

/// The ids of remedy's own mentions (`<@ID>`) in `text`.
fn mention_ids(text: &str, out: &mut Vec<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("<@") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find('>') {
            let id = &rest[..end];
            if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) {
                if !out.iter().any(|o| o == id) {
                    out.push(id.to_owned());
                }
                rest = &rest[end + 1..];
            }
        }
    }
}

/// Writes each `<@ID>` as `@username` when the user is known, else as the
/// id in inline code (which notifies nobody).
fn resolve_mentions(text: &str, names: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("<@") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('>').map(|end| (&after[..end], end)) {
            Some((id, end)) if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) => {
                match names.get(id) {
                    Some(name) => {
                        out.push('@');
                        out.push_str(name);
                    }
                    None => out.push_str(&format!("`mattermost:{id}`")),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("<@");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A Mattermost username as the server allows them: lowercase letters,
/// digits, `.`, `-`, `_`, starting with a letter, at most 64 characters.
/// Anything else read from the API is not written into a message.
fn valid_username(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
}

// ---------------------------------------------------------------------------
// Signed contexts

/// What a button (or a dialog's `state`) asks for, as its signed context
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Approve (`true`) or reject an approval request: its id and the
    /// digest prefix the report showed.
    Decide {
        approve: bool,
        approval: i64,
        digest: String,
    },
    /// Acknowledge, Snooze or Silence an incident.
    Control { incident: i64, control: Control },
}

impl Intent {
    /// The exact text the HMAC covers: every field that decides what the
    /// click does, in a fixed order.
    fn canonical(&self, confirm: bool) -> String {
        let confirm = u8::from(confirm);
        match self {
            Self::Decide {
                approve,
                approval,
                digest,
            } => {
                let verb = if *approve { "approve" } else { "reject" };
                format!("remedy-mattermost-v1\n{verb}\n{approval}\n{digest}\n{confirm}")
            }
            Self::Control { incident, control } => {
                let (verb, seconds) = control_parts(*control);
                format!("remedy-mattermost-v1\n{verb}\n{incident}\n{seconds}\n{confirm}")
            }
        }
    }
}

fn control_parts(control: Control) -> (&'static str, u64) {
    match control {
        Control::Ack => ("ack", 0),
        Control::Snooze(s) => ("snooze", s),
        Control::Silence(s) => ("silence", s),
    }
}

/// A verified context: what it asks for, and whether the clicker must
/// confirm it in a dialog first (Silence, and approving an action that is
/// not `safe`, as Slack's confirm dialogs do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub intent: Intent,
    pub confirm: bool,
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length")
}

/// The `integration.context` of a button: the intent's fields and `mac`,
/// hex HMAC-SHA256 over [`Intent::canonical`] with `secret`.
#[must_use]
pub fn context(secret: &str, intent: &Intent, confirm: bool) -> Value {
    let mut m = mac(secret);
    m.update(intent.canonical(confirm).as_bytes());
    let signature = hex::encode(m.finalize().into_bytes());
    let mut out = match intent {
        Intent::Decide {
            approve,
            approval,
            digest,
        } => json!({
            "kind": if *approve { "approve" } else { "reject" },
            "approval": approval,
            "digest": digest,
        }),
        Intent::Control { incident, control } => {
            let (verb, seconds) = control_parts(*control);
            let mut c = json!({"kind": verb, "incident": incident});
            if seconds > 0 || verb != "ack" {
                c["seconds"] = seconds.into();
            }
            c
        }
    };
    out["confirm"] = confirm.into();
    out["mac"] = signature.into();
    out
}

/// Why a click's context was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("no signed context in the request")]
    Missing,
    #[error("the context is not one remedy makes")]
    Malformed,
    #[error("the context's signature does not match")]
    Mismatch,
}

/// Reads and verifies a context (an object, as Mattermost passes it back).
pub fn verify(secret: &str, context: Option<&Value>) -> Result<Signed, ContextError> {
    let c = context
        .and_then(Value::as_object)
        .filter(|c| !c.is_empty())
        .ok_or(ContextError::Missing)?;
    let signature = c
        .get("mac")
        .and_then(Value::as_str)
        .ok_or(ContextError::Missing)?;
    let expected = hex::decode(signature).map_err(|_| ContextError::Mismatch)?;
    let signed = parse_context(c).ok_or(ContextError::Malformed)?;
    let mut m = mac(secret);
    m.update(signed.intent.canonical(signed.confirm).as_bytes());
    m.verify_slice(&expected)
        .map_err(|_| ContextError::Mismatch)?;
    Ok(signed)
}

fn parse_context(c: &Map<String, Value>) -> Option<Signed> {
    let kind = c.get("kind")?.as_str()?;
    let confirm = c.get("confirm").and_then(Value::as_bool).unwrap_or(false);
    let seconds = || c.get("seconds")?.as_u64();
    let intent = match kind {
        "approve" | "reject" => Intent::Decide {
            approve: kind == "approve",
            approval: c.get("approval")?.as_i64()?,
            digest: c.get("digest")?.as_str()?.to_owned(),
        },
        "ack" | "snooze" | "silence" => Intent::Control {
            incident: c.get("incident")?.as_i64()?,
            control: match kind {
                "ack" => Control::Ack,
                "snooze" => Control::Snooze(seconds()?),
                _ => Control::Silence(seconds()?),
            },
        },
        _ => return None,
    };
    Some(Signed { intent, confirm })
}

// ---------------------------------------------------------------------------
// Rendering

/// Where buttons point and how their contexts are signed.
#[derive(Clone, Copy)]
pub struct Buttons<'a> {
    pub url: &'a str,
    pub secret: &'a str,
}

/// Action ids are alphanumeric only: older servers route a click to
/// `/api/v4/posts/{post}/actions/{id}` and match `[A-Za-z0-9]+`.
fn button(
    id: &str,
    name: &str,
    style: &str,
    b: Buttons<'_>,
    intent: &Intent,
    confirm: bool,
) -> Value {
    json!({
        "id": id,
        "type": "button",
        "name": cut(name, MAX_BUTTON_NAME),
        "style": style,
        "integration": {"url": b.url, "context": context(b.secret, intent, confirm)},
    })
}

fn control_id(c: Control) -> String {
    match c {
        Control::Ack => "ack".into(),
        Control::Snooze(s) => format!("sz{s}"),
        Control::Silence(s) => format!("si{s}"),
    }
}

/// The post's `message` and `props` (attachments with buttons). Mentions
/// stay `<@ID>` here; the client writes them as `@username`.
#[must_use]
pub fn render(report: &ChatReport, b: Buttons<'_>) -> Value {
    let message = render_message(report);
    let mut attachments = Vec::new();
    if let Some(e) = &report.escalation {
        let controls = super::controls(e);
        if !report.resolved && !controls.is_empty() {
            let actions: Vec<Value> = controls
                .iter()
                .map(|c| {
                    let intent = Intent::Control {
                        incident: report.incident_id,
                        control: *c,
                    };
                    let style = match c {
                        Control::Ack => "primary",
                        Control::Snooze(_) => "default",
                        Control::Silence(_) => "warning",
                    };
                    let confirm = matches!(c, Control::Silence(_));
                    button(&control_id(*c), &c.label(), style, b, &intent, confirm)
                })
                .collect();
            attachments.push(json!({
                "fallback": format!("Acknowledge, snooze or silence incident #{}", report.incident_id),
                "color": GREY,
                "text": "Escalation: acknowledge, snooze or silence",
                "actions": actions,
            }));
        }
    }
    // One attachment per action, in the report's order; the last slot
    // counts the ones left out.
    let room = MAX_ATTACHMENTS - attachments.len() - 1;
    let shown = if report.actions.len() <= room + 1 {
        report.actions.len()
    } else {
        room
    };
    for action in &report.actions[..shown] {
        attachments.push(action_attachment(report, action, b));
    }
    if shown < report.actions.len() {
        let hidden = report.actions.len() - shown;
        attachments.push(json!({
            "fallback": format!("{hidden} more actions"),
            "color": GREY,
            "text": format!("… and {hidden} more actions: approve them through the API or `remedy approve`"),
        }));
    }
    json!({"message": message, "props": {"attachments": attachments}})
}

fn action_attachment(report: &ChatReport, action: &ReportAction, b: Buttons<'_>) -> Value {
    action_attachment_while(!report.resolved, action, b)
}

/// An action's attachment, with its buttons while it is `open` and
/// `decidable` (the incident still firing).
fn action_attachment_while(decidable: bool, action: &ReportAction, b: Buttons<'_>) -> Value {
    let color = match action.risk {
        Risk::Safe => GREEN,
        Risk::Disruptive => AMBER,
        Risk::Destructive => RED,
    };
    let mut attachment = json!({
        "fallback": cut(&format!("Action {}: {}", action.key, clean(&action.title)), MAX_ATTACHMENT_TEXT),
        "color": color,
        "text": cut(&format!("**{}**", escape(&action.title)), MAX_ATTACHMENT_TEXT),
        "fields": [
            {"title": "Action", "value": format!("`{}`", code_inline(&action.key)), "short": true},
            {"title": "Risk", "value": risk_name(action.risk), "short": true},
            {"title": "Needs", "value": cut(&format!("{} of {}", action.quorum, escape(&action.roles.join(", "))), MAX_FIELD_VALUE), "short": true},
            {"title": "Status", "value": cut(&action.status_escaped(escape), MAX_FIELD_VALUE), "short": false},
        ],
    });
    if action.open() && decidable {
        let decide = |approve: bool| Intent::Decide {
            approve,
            approval: action.approval_id,
            digest: action.digest.clone(),
        };
        attachment["actions"] = json!([
            button(
                &format!("ap{}", action.approval_id),
                &format!("Approve {}", action.key),
                "success",
                b,
                &decide(true),
                action.risk != Risk::Safe,
            ),
            button(
                &format!("rj{}", action.approval_id),
                &format!("Reject {}", action.key),
                "danger",
                b,
                &decide(false),
                false,
            ),
        ]);
    }
    attachment
}

/// The message: headline, summary, labels, storm, escalation, then
/// findings with their evidence, failed steps and suggestions, as many
/// whole sections as fit, and the full report's address.
fn render_message(report: &ChatReport) -> String {
    let icon = if report.resolved { "✅" } else { "🔥" };
    let mut head = format!(
        "#### {icon} {} · incident #{}\n{}\n",
        escape(&report.headline()),
        report.incident_id,
        escape(&report.summary)
    );
    let labels: Vec<String> = report
        .labels
        .iter()
        .map(|(k, v)| format!("`{}={}`", code_inline(k), code_inline(v)))
        .collect();
    head.push_str(&labels.join(" "));
    head.push('\n');
    if let Some(storm) = &report.storm {
        head.push_str(&format!("**{}**\n", escape(&storm.line())));
        for line in storm.value_lines(|v| format!("`{}`", code_inline(v))) {
            head.push_str(&line);
            head.push('\n');
        }
    }
    if let Some(e) = &report.escalation {
        head.push_str(&e.line(escape));
        head.push('\n');
    }
    let mut sections: Vec<String> = Vec::new();
    for f in &report.findings {
        let mut s = format!(
            "\n{} **{}** {}\n",
            severity_mark(f.severity),
            format!("{:?}", f.severity).to_lowercase(),
            escape(&f.text)
        );
        if let Some(as_of) = f.as_of_line() {
            s.push_str(&format!("_{as_of}_\n"));
        }
        if !f.evidence.is_empty() {
            s.push_str(&format!(
                "```\n{}\n```\n",
                code_text(&f.evidence.join("\n"))
            ));
            if f.more_rows > 0 {
                s.push_str(&format!("… and {} more rows\n", f.more_rows));
            }
        }
        sections.push(s);
    }
    if !report.step_errors.is_empty() {
        let mut s = String::from("\n**Steps that failed**\n");
        for (id, e) in &report.step_errors {
            s.push_str(&format!("- `{}`: {}\n", code_inline(id), escape(e)));
        }
        sections.push(s);
    }
    for sug in &report.suggestions {
        let mut s = format!("\n💡 **{}**\n", escape(&sug.title));
        if let Some(t) = &sug.text {
            s.push_str(&escape(t));
            s.push('\n');
        }
        if let Some(c) = &sug.command {
            s.push_str(&format!("```\n{}\n```\n", code_text(c.trim_end())));
        }
        sections.push(s);
    }
    let footer = format!(
        "\nincident #{} · full report: `{}`",
        report.incident_id,
        code_inline(&report.full_report)
    );
    // Room for the footer and a "… and N more sections" line.
    let budget = MAX_MESSAGE - footer.chars().count() - 60;
    let mut content = cut(&head, budget);
    let mut hidden = 0;
    for s in &sections {
        if hidden == 0 && content.chars().count() + s.chars().count() <= budget {
            content.push_str(s);
        } else {
            hidden += 1;
        }
    }
    if hidden > 0 {
        content.push_str(&format!(
            "\n… and {hidden} more sections (the full report has them)\n"
        ));
    }
    content.push_str(&footer);
    cut(&content, MAX_MESSAGE)
}

/// A ping: the role's users (as `<@ID>`, resolved by the client), then
/// `text` escaped; a reply in the report's thread when there is one.
#[must_use]
pub fn ping_body(
    channel: &str,
    root: Option<&str>,
    members: Option<&crate::config::RoleMembers>,
    text: &str,
) -> Value {
    let mut message: String = members
        .map(|m| {
            m.mattermost_users
                .iter()
                .map(|u| format!("<@{u}> "))
                .collect()
        })
        .unwrap_or_default();
    message.push_str(&escape(text));
    let mut body = json!({"channel_id": channel, "message": cut(&message, MAX_MESSAGE)});
    if let Some(root) = root {
        body["root_id"] = root.into();
    }
    body
}

/// A reply in the report's thread: remedy's verified mentions (clickers)
/// stay `<@ID>` for the client to resolve, the rest is escaped.
#[must_use]
pub fn reply_body(channel: &str, root: &str, reply: &super::Reply) -> Value {
    json!({
        "channel_id": channel,
        "root_id": root,
        "message": cut(&reply.render(escape), MAX_MESSAGE),
    })
}

/// The interactive dialog that confirms a Silence or the approval of an
/// action that is not `safe`: what will happen, and a submit button; the
/// dialog's `state` is the signed context the click carried.
#[must_use]
pub fn confirmation_dialog(
    trigger_id: &str,
    url: &str,
    title: &str,
    text: &str,
    submit: &str,
    state: &Value,
) -> Value {
    json!({
        "trigger_id": trigger_id,
        "url": url,
        "dialog": {
            "callback_id": "confirm",
            "title": cut_bytes(title, MAX_DIALOG_TITLE),
            "introduction_text": cut(text, MAX_DIALOG_TEXT),
            "elements": [],
            "submit_label": cut(submit, MAX_BUTTON_NAME),
            "notify_on_cancel": false,
            "state": state.to_string(),
        }
    })
}

/// A dialog's Silence text: the exact matchers, one per line, and the
/// length.
#[must_use]
pub fn silence_text(seconds: u64, matchers: &[String]) -> String {
    let length = crate::escalation::human(Duration::from_secs(seconds));
    let mut text =
        format!("Alertmanager will mute for **{length}** every alert matching all of:\n");
    for m in matchers {
        text.push_str(&format!("- `{}`\n", code_inline(m)));
    }
    text.push_str("\nNothing is silenced until you press the button below.");
    text
}

/// Cuts to at most `max` bytes on a character boundary (dialog titles are
/// measured in bytes).
fn cut_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

// ---------------------------------------------------------------------------
// The client

/// A user as remedy reads it from `GET /api/v4/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MattermostUser {
    pub username: Option<String>,
    pub roles: Vec<String>,
    pub active: bool,
}

/// Users read from Mattermost, trusted for `ttl`, at most [`Self::CAP`].
#[derive(Debug)]
struct UserCache {
    ttl: Duration,
    entries: HashMap<String, (Instant, MattermostUser)>,
}

impl UserCache {
    const CAP: usize = 1024;

    fn get(&self, id: &str, now: Instant) -> Option<MattermostUser> {
        self.entries
            .get(id)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, u)| u.clone())
    }

    fn insert(&mut self, id: &str, user: MattermostUser, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        if self.entries.len() >= Self::CAP
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(id.to_owned(), (now, user));
    }
}

/// Mattermost's REST API with the bot account's token.
pub struct MattermostClient {
    http: reqwest::Client,
    api_url: String,
    token: String,
    /// Where buttons send their clicks.
    pub interactions_url: String,
    /// The key of the contexts' HMAC.
    pub context_secret: String,
    users: Mutex<UserCache>,
    /// Every call, for the whole server (`chat.mattermost.request_rate`).
    pace: Pacer,
}

impl std::fmt::Debug for MattermostClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MattermostClient")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl MattermostClient {
    #[must_use]
    pub fn new(http: reqwest::Client, chat: &crate::config::ChatSettings) -> Self {
        let mm = &chat.mattermost;
        let interactions_url = if mm.interactions_url.is_empty() {
            format!(
                "{}/v1/interactions/mattermost",
                chat.public_url.trim_end_matches('/')
            )
        } else {
            mm.interactions_url.clone()
        };
        Self {
            http,
            api_url: mm.api_url.trim_end_matches('/').to_owned(),
            token: mm.bot_token.expose().to_owned(),
            interactions_url,
            context_secret: mm.context_secret.expose().to_owned(),
            users: Mutex::new(UserCache {
                ttl: mm.user_cache_ttl,
                entries: HashMap::new(),
            }),
            pace: Pacer::new(mm.request_rate.quota(), chat.pace_wait),
        }
    }

    fn buttons(&self) -> Buttons<'_> {
        Buttons {
            url: &self.interactions_url,
            secret: &self.context_secret,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ChatError> {
        self.pace.ready("api").await?;
        let what = format!(
            "mattermost {method} {}",
            path.split('/').nth(1).unwrap_or("")
        );
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ChatError::Transient(format!("{what}: {}", e.without_url())))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ChatError::RetryAfter(
                retry_after_header(response.headers())
                    .or_else(|| ratelimit_reset(response.headers()))
                    .unwrap_or(Duration::from_secs(1)),
            ));
        }
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(reply);
        }
        // Mattermost's errors: {"id": "api.…", "message": "…", "status_code": N}.
        let detail = format!(
            "{what}: HTTP {} {} {}",
            status.as_u16(),
            reply["id"].as_str().unwrap_or_default(),
            reply["message"].as_str().unwrap_or_default()
        );
        if status.is_server_error() {
            Err(ChatError::Transient(detail))
        } else {
            Err(ChatError::Permanent(detail))
        }
    }

    /// The user, from the cache or `GET /api/v4/users/{id}`.
    pub async fn user(&self, id: &str) -> Result<MattermostUser, ChatError> {
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.is_empty() {
            return Err(ChatError::Permanent(format!(
                "not a Mattermost user id: {id:?}"
            )));
        }
        if let Some(user) = self.users.lock().await.get(id, Instant::now()) {
            return Ok(user);
        }
        let reply = self
            .call(reqwest::Method::GET, &format!("/users/{id}"), None)
            .await?;
        let user = MattermostUser {
            username: reply["username"]
                .as_str()
                .filter(|u| valid_username(u))
                .map(str::to_owned),
            roles: reply["roles"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            active: reply["delete_at"].as_i64().unwrap_or(0) == 0,
        };
        self.users
            .lock()
            .await
            .insert(id, user.clone(), Instant::now());
        Ok(user)
    }

    /// `<@ID>` → `@username` in every string of `body` (a user that cannot
    /// be read is shown by id and notified of nothing).
    async fn with_mentions(&self, mut body: Value) -> Value {
        let mut ids = Vec::new();
        walk_strings(&mut body, &mut |s| mention_ids(s, &mut ids));
        if ids.is_empty() {
            return body;
        }
        let mut names = HashMap::new();
        for id in ids {
            match self.user(&id).await {
                Ok(MattermostUser {
                    username: Some(name),
                    ..
                }) => {
                    names.insert(id, name);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%id, %error, "mattermost user lookup failed"),
            }
        }
        walk_strings(&mut body, &mut |s| *s = resolve_mentions(s, &names));
        body
    }

    /// Posts the report; returns the post id.
    pub async fn post(&self, channel: &str, report: &ChatReport) -> Result<String, ChatError> {
        let mut body = render(report, self.buttons());
        body["channel_id"] = channel.into();
        let body = self.with_mentions(body).await;
        let reply = self
            .call(reqwest::Method::POST, "/posts", Some(&body))
            .await?;
        reply["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ChatError::Transient("mattermost: no post id in the reply".into()))
    }

    /// Replaces the report's post (`PUT /api/v4/posts/{id}`: fields not
    /// sent are cleared, so the whole post goes every time).
    pub async fn update(
        &self,
        channel: &str,
        post: &str,
        report: &ChatReport,
    ) -> Result<(), ChatError> {
        let mut body = render(report, self.buttons());
        body["id"] = post.into();
        body["channel_id"] = channel.into();
        let body = self.with_mentions(body).await;
        self.call(reqwest::Method::PUT, &format!("/posts/{post}"), Some(&body))
            .await
            .map(drop)
    }

    pub async fn ping(
        &self,
        channel: &str,
        root: Option<&str>,
        members: Option<&crate::config::RoleMembers>,
        text: &str,
    ) -> Result<(), ChatError> {
        let body = self
            .with_mentions(ping_body(channel, root, members, text))
            .await;
        self.call(reqwest::Method::POST, "/posts", Some(&body))
            .await
            .map(drop)
    }

    pub async fn reply(
        &self,
        channel: &str,
        root: &str,
        reply: &super::Reply,
    ) -> Result<(), ChatError> {
        let mut body = reply_body(channel, root, reply);
        // An offered action: its attachment and signed buttons.
        if let Some(action) = &reply.action {
            body["props"] =
                json!({"attachments": [action_attachment_while(true, action, self.buttons())]});
        }
        let body = self.with_mentions(body).await;
        self.call(reqwest::Method::POST, "/posts", Some(&body))
            .await
            .map(drop)
    }

    /// Opens a confirmation dialog for the clicker
    /// (`POST /api/v4/actions/dialogs/open`; the click's `trigger_id` is
    /// good for a few seconds).
    pub async fn open_dialog(&self, dialog: &Value) -> Result<(), ChatError> {
        self.call(reqwest::Method::POST, "/actions/dialogs/open", Some(dialog))
            .await
            .map(drop)
    }
}

/// `X-Ratelimit-Reset`: seconds until the limit resets (Mattermost's
/// throttled limiter), when no `Retry-After` came.
fn ratelimit_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.max(1)))
}

fn walk_strings(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| walk_strings(v, f)),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                // Contexts are signed as they are.
                if key != "integration" {
                    walk_strings(v, f);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-context-secret-of-at-least-32-characters";

    #[test]
    fn a_signed_context_verifies_and_any_change_is_refused() {
        let intent = Intent::Decide {
            approve: true,
            approval: 12,
            digest: "0123456789abcdef".into(),
        };
        let c = context(SECRET, &intent, true);
        assert_eq!(
            verify(SECRET, Some(&c)),
            Ok(Signed {
                intent,
                confirm: true
            })
        );
        for (field, value) in [
            ("approval", json!(13)),
            ("digest", json!("0123456789abcdee")),
            ("kind", json!("reject")),
            ("confirm", json!(false)),
            ("mac", json!("00")),
        ] {
            let mut forged = c.clone();
            forged[field] = value;
            assert_eq!(
                verify(SECRET, Some(&forged)),
                Err(ContextError::Mismatch),
                "{field}"
            );
        }
        let mut unsigned = c.clone();
        unsigned.as_object_mut().expect("object").remove("mac");
        assert_eq!(verify(SECRET, Some(&unsigned)), Err(ContextError::Missing));
        assert_eq!(verify(SECRET, None), Err(ContextError::Missing));
        assert_eq!(
            verify("another-secret-of-at-least-32-characters", Some(&c)),
            Err(ContextError::Mismatch)
        );
    }

    #[test]
    fn alert_text_mentions_nobody_and_formats_nothing() {
        let out = escape("@alice @channel <!here> **x** [a](http://b) `c`");
        assert!(
            !out.contains("@alice") && !out.contains("@channel"),
            "{out}"
        );
        assert!(!out.contains("<!here>") && !out.contains("**"), "{out}");
        assert!(out.contains("\\[a\\](") && !out.contains("`c`"), "{out}");
        // Nothing from an alert can pose as remedy's own mention.
        let mut ids = Vec::new();
        mention_ids(&escape("<@abc>"), &mut ids);
        mention_ids(&code_text("<@abc>"), &mut ids);
        assert!(ids.is_empty(), "{ids:?}");
    }

    #[test]
    fn remedy_mentions_become_usernames_or_inert_ids() {
        let names = HashMap::from([("u1".to_owned(), "alice".to_owned())]);
        assert_eq!(
            resolve_mentions("<@u1> and <@u2>, <@ x>", &names),
            "@alice and `mattermost:u2`, <@ x>"
        );
        assert!(valid_username("alice.b-c_1"));
        assert!(!valid_username("Alice") && !valid_username("a b") && !valid_username(""));
    }

    #[test]
    fn dialog_titles_are_cut_in_bytes() {
        assert_eq!(cut_bytes("Silence for 1h?", 24), "Silence for 1h?");
        assert!(cut_bytes(&"é".repeat(20), 24).len() <= 24);
    }
}
