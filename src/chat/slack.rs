//! Slack: the report as Block Kit through the Web API (`chat.postMessage`,
//! `chat.update`), user-group membership for authorization, and the
//! signature check of interaction requests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Mutex;

use super::report::{ChatReport, risk_name, severity_mark};
use super::text::{code, cut, slack_code_span, slack_escape, slack_plain};

/// Code blocks are still mrkdwn to Slack: `&`, `<`, `>` need entities there too.
fn slack_code(text: &str) -> String {
    super::text::slack_fence(&code(text))
}
use super::pace::Pacer;
use super::{ChatError, retry_after_header};
use crate::playbook::model::Risk;

pub const MAX_BLOCKS: usize = 50;
pub const MAX_SECTION: usize = 3000;
pub const MAX_HEADER: usize = 150;
pub const MAX_BUTTON_VALUE: usize = 2000;
pub const MAX_ACTION_ID: usize = 255;
pub const MAX_BUTTON_TEXT: usize = 75;
/// A confirm dialog's `title`, `text`, and `confirm` / `deny` buttons.
pub const MAX_CONFIRM_TITLE: usize = 100;
pub const MAX_CONFIRM_TEXT: usize = 300;
pub const MAX_CONFIRM_BUTTON: usize = 30;
/// Blocks kept for findings, errors and suggestions when actions are many.
const BODY_SHARE: usize = 20;

/// Renders the message body (without `channel`): `text` fallback and blocks.
#[must_use]
pub fn render(report: &ChatReport) -> Value {
    let mut blocks: Vec<Value> = Vec::new();
    let icon = if report.resolved { "✅" } else { "🔥" };
    blocks.push(json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&format!("{icon} {}", super::text::one_line(&report.headline())), MAX_HEADER)}
    }));
    let labels: Vec<String> = report
        .labels
        .iter()
        .map(|(k, v)| format!("`{}={}`", slack_code_span(k), slack_code_span(v)))
        .collect();
    blocks.push(section(&format!(
        "{}\n{}",
        slack_escape(&report.summary),
        labels.join(" ")
    )));
    if let Some(storm) = &report.storm {
        let values = storm.value_lines(|v| format!("`{}`", slack_escape(v)));
        blocks.push(section(&format!(
            "*{}*\n{}",
            slack_escape(&storm.line()),
            values.join("\n")
        )));
    }
    if let Some(e) = &report.escalation {
        blocks.push(section(&e.line(slack_escape)));
        let controls = super::controls(e);
        if !report.resolved && !controls.is_empty() {
            blocks.push(json!({
                "type": "actions",
                "block_id": cut(&format!(
                    "ctl-{}-{}-{}",
                    report.incident_id,
                    u8::from(e.acked_by.is_some()),
                    e.snoozed_until.unwrap_or(0)
                ), 255),
                "elements": controls.iter().map(|c| {
                    let mut button = json!({
                        "type": "button",
                        "action_id": c.slack_action_id(),
                        "value": report.incident_id.to_string(),
                        "text": {"type": "plain_text", "text": cut(&c.label(), MAX_BUTTON_TEXT)},
                    });
                    if let super::Control::Silence(seconds) = c {
                        button["confirm"] = silence_confirm(*seconds, &report.silence_matchers);
                    }
                    button
                }).collect::<Vec<_>>(),
            }));
        }
    }
    // Actions (two blocks each) come first in the budget: without them the
    // message cannot be acted on. Then findings, errors, suggestions.
    let tail_reserved = 2; // truncation note + context
    let mut action_blocks = Vec::new();
    let mut shown_actions = 0;
    for action in &report.actions {
        let mut text = format!(
            "*{}*\nrisk `{}` · needs {} of {} · {}",
            slack_escape(&action.title),
            risk_name(action.risk),
            action.quorum,
            slack_escape(&action.roles.join(", ")),
            action.status_escaped(slack_escape),
        );
        if !action.changes.is_empty() {
            text.push_str(&format!(
                "\n```{}```",
                slack_code(&action.changes.join("\n"))
            ));
        }
        let mut pair = vec![section(&text)];
        if action.open() && !report.resolved {
            pair.push(buttons(action));
        }
        action_blocks.push(pair);
    }
    let mut body: Vec<Value> = Vec::new();
    for f in &report.findings {
        let mut text = format!(
            "{} *{}* {}",
            severity_mark(f.severity),
            format!("{:?}", f.severity).to_lowercase(),
            slack_escape(&f.text)
        );
        // Above the evidence: the code block is cut to fit, this line never.
        if let Some(as_of) = f.as_of_line() {
            text.push_str(&format!(" · _{as_of}_"));
        }
        if !f.evidence.is_empty() {
            let rows: Vec<String> = f.evidence.iter().map(|r| slack_code(r)).collect();
            let more = if f.more_rows > 0 {
                format!("\n… and {} more rows", f.more_rows)
            } else {
                String::new()
            };
            text = fit_code_block(&text, &rows, &more);
        }
        body.push(section(&text));
    }
    if !report.step_errors.is_empty() {
        let lines: Vec<String> = report
            .step_errors
            .iter()
            .map(|(id, e)| format!("• `{}`: {}", slack_code_span(id), slack_escape(e)))
            .collect();
        body.push(section(&format!(
            "*Steps that failed*\n{}",
            lines.join("\n")
        )));
    }
    for s in &report.suggestions {
        let mut text = format!("*💡 {}*", slack_escape(&s.title));
        if let Some(t) = &s.text {
            text.push('\n');
            text.push_str(&slack_escape(t));
        }
        if let Some(c) = &s.command {
            text.push_str(&format!("\n```{}```", slack_code(c.trim_end())));
        }
        body.push(section(&text));
    }
    // The evidence keeps up to BODY_SHARE blocks; actions take the rest,
    // and whatever they leave goes back to the evidence.
    let room = MAX_BLOCKS - blocks.len() - tail_reserved;
    let action_room = room - body.len().min(BODY_SHARE);
    let mut used = 0;
    let mut actions_out = Vec::new();
    for pair in action_blocks {
        if used + pair.len() > action_room {
            break;
        }
        used += pair.len();
        shown_actions += 1;
        actions_out.extend(pair);
    }
    let body_room = room - used;
    let hidden_body = body.len().saturating_sub(body_room);
    blocks.extend(body.into_iter().take(body_room));
    blocks.extend(actions_out);
    let hidden_actions = report.actions.len() - shown_actions;
    if hidden_body > 0 || hidden_actions > 0 {
        blocks.push(section(&format!(
            "… and {} more: {} more sections, {} more actions (approve them through the API or `remedy approve`)",
            hidden_body + hidden_actions,
            hidden_body,
            hidden_actions
        )));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "verbatim": true, "text": cut(&format!(
            "incident #{} · full report: `{}`",
            report.incident_id,
            slack_code_span(&report.full_report)
        ), MAX_SECTION)}]
    }));
    json!({
        "text": slack_escape(&report.headline()),
        "blocks": blocks,
        // Nothing in the text may turn into a mention or a link by itself.
        "parse": "none",
        "link_names": false,
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

/// `verbatim`: Slack neither links bare URLs nor turns `#channel` or
/// `@name` into references; the only mentions are the ones remedy writes.
fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": cut(text, MAX_SECTION)}})
}

/// A ping's `chat.postMessage` body: remedy's own `mentions` (verified
/// member ids, `<@U…>` / `<!subteam^S…>`) as real mentions, then `text`
/// (which may carry alert values) escaped.
#[must_use]
pub fn ping_body(channel: &str, ts: Option<&str>, mentions: &[String], text: &str) -> Value {
    let mut content = mentions.join(" ");
    if !content.is_empty() {
        content.push(' ');
    }
    content.push_str(&slack_escape(text));
    let mut body = json!({"channel": channel, "text": content, "parse": "none"});
    if let Some(ts) = ts {
        body["thread_ts"] = ts.into();
        body["reply_broadcast"] = true.into();
    }
    body
}

/// A thread reply's `chat.postMessage` body: the verified mentions remedy
/// built (an action's clickers) as real mentions, which notify them on
/// Slack; everything else escaped.
#[must_use]
pub fn reply_body(channel: &str, ts: &str, reply: &super::Reply) -> Value {
    let text = reply.render(slack_escape);
    let mut body = json!({"channel": channel, "thread_ts": ts, "text": &text, "parse": "none"});
    // An offered action: the text as a section, its buttons under it.
    if let Some(action) = &reply.action {
        body["blocks"] = json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&text, MAX_SECTION), "verbatim": true}},
            buttons(action),
        ]);
    }
    body
}

/// Puts as many evidence rows in a code block as fit one section, and
/// says how many more there are.
fn fit_code_block(head: &str, rows: &[String], more: &str) -> String {
    let mut shown = rows.len();
    loop {
        let hidden = rows.len() - shown;
        let note = match (hidden, more.is_empty()) {
            (0, _) => more.to_owned(),
            (n, true) => format!("\n… and {n} more rows"),
            (n, false) => {
                let base: usize = more
                    .trim_start_matches("\n… and ")
                    .split(' ')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                format!("\n… and {} more rows", base + n)
            }
        };
        let text = if shown == 0 {
            format!("{head}{note}")
        } else {
            format!("{head}\n```{}```{note}", rows[..shown].join("\n"))
        };
        if text.chars().count() <= MAX_SECTION || shown == 0 {
            return text;
        }
        shown -= 1;
    }
}

/// The confirm dialog of a Silence button: the exact matchers and the
/// length, within the dialog's 300 characters (matchers that do not fit
/// are counted; the message's label line lists them all).
fn silence_confirm(seconds: u64, matchers: &[String]) -> Value {
    let length = crate::escalation::human(Duration::from_secs(seconds));
    let head = format!("Alertmanager will mute for {length} every alert matching all of: ");
    let mut text = head.clone();
    for (n, m) in matchers.iter().enumerate() {
        let shown = slack_plain(m);
        let rest = matchers.len() - n - 1;
        let sep = if n == 0 { "" } else { ", " };
        // Room for this matcher and, if others follow, the count of them.
        let tail = if rest > 0 {
            format!(" … and {rest} more")
        } else {
            String::new()
        };
        if text.chars().count() + sep.len() + shown.chars().count() + tail.chars().count()
            > MAX_CONFIRM_TEXT
        {
            text.push_str(&format!(
                " … and {} more (every label in the message)",
                matchers.len() - n
            ));
            break;
        }
        text.push_str(sep);
        text.push_str(&shown);
    }
    if matchers.is_empty() {
        text = format!("{head}(none: remedy refuses this silence)");
    }
    json!({
        "title": {"type": "plain_text", "text": cut(&format!("Silence for {length}?"), MAX_CONFIRM_TITLE)},
        "text": {"type": "plain_text", "text": cut(&text, MAX_CONFIRM_TEXT)},
        "confirm": {"type": "plain_text", "text": cut(&format!("Silence {length}"), MAX_CONFIRM_BUTTON)},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": "danger",
    })
}

fn buttons(action: &super::report::ReportAction) -> Value {
    let value = cut(
        &format!("{}:{}", action.approval_id, action.digest),
        MAX_BUTTON_VALUE,
    );
    let mut approve = json!({
        "type": "button",
        "action_id": "approve",
        "value": value,
        "style": "primary",
        "text": {"type": "plain_text", "text": cut(&format!("Approve {}", action.key), MAX_BUTTON_TEXT)},
    });
    if action.risk != Risk::Safe {
        approve["confirm"] = json!({
            "title": {"type": "plain_text", "text": "Approve this action?"},
            "text": {"type": "plain_text", "text": cut(&format!(
                "{} ({} action): {}", action.key, risk_name(action.risk), action.title
            ), 300)},
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "danger",
        });
    }
    json!({
        "type": "actions",
        // New id per version of the message, as Slack asks.
        "block_id": cut(&format!("act-{}-{}", action.approval_id, action.approved_by.len()), 255),
        "elements": [
            approve,
            {
                "type": "button",
                "action_id": "reject",
                "value": value,
                "style": "danger",
                "text": {"type": "plain_text", "text": cut(&format!("Reject {}", action.key), MAX_BUTTON_TEXT)},
            }
        ]
    })
}

/// The Slack Web API with a bot token.
pub struct SlackClient {
    http: reqwest::Client,
    api_url: String,
    token: String,
    groups: Mutex<GroupCache>,
    /// `chat.postMessage` per channel (`chat.slack.post_rate`: Slack's
    /// "one message per second per channel"; its "short bursts" are not
    /// counted on).
    posts: Pacer,
    /// `chat.update` for the workspace (`chat.slack.update_rate`: Tier 3).
    updates: Pacer,
}

/// User-group membership read from Slack, trusted for `ttl`. Bounded: the
/// groups asked about come from the settings, but entries past their time
/// are swept on every insert and the oldest goes when [`GroupCache::CAP`]
/// groups are held, so nothing here grows with traffic.
#[derive(Debug)]
struct GroupCache {
    ttl: Duration,
    entries: HashMap<String, (Instant, Vec<String>)>,
}

impl GroupCache {
    const CAP: usize = 256;

    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
        }
    }

    fn get(&self, group: &str, now: Instant) -> Option<&[String]> {
        self.entries
            .get(group)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, members)| members.as_slice())
    }

    fn insert(&mut self, group: &str, members: Vec<String>, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        if self.entries.len() >= Self::CAP
            && !self.entries.contains_key(group)
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(g, _)| g.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(group.to_owned(), (now, members));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Errors after which retrying cannot help.
const PERMANENT: &[&str] = &[
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "missing_scope",
    "invalid_blocks",
    "msg_too_long",
    "msg_blocks_too_long",
    "no_text",
    "restricted_action",
    "invalid_arguments",
    "invalid_form_data",
    "cant_update_message",
    "message_not_found",
    "edit_window_closed",
    "no_such_subteam",
];

impl SlackClient {
    #[must_use]
    pub fn new(http: reqwest::Client, chat: &crate::config::ChatSettings) -> Self {
        let slack = &chat.slack;
        Self {
            http,
            api_url: slack.api_url.trim_end_matches('/').to_owned(),
            token: slack.bot_token.expose().to_owned(),
            groups: Mutex::new(GroupCache::new(slack.group_cache_ttl)),
            posts: Pacer::new(slack.post_rate.quota(), chat.pace_wait),
            updates: Pacer::new(slack.update_rate.quota(), chat.pace_wait),
        }
    }

    /// The pace a method keeps, and its key: posts per channel, updates
    /// for the workspace; other methods are not paced.
    fn pace(&self, method: &str, body: &Value) -> Option<(&Pacer, String)> {
        match method {
            "chat.postMessage" => Some((
                &self.posts,
                body["channel"].as_str().unwrap_or_default().to_owned(),
            )),
            "chat.update" => Some((&self.updates, method.to_owned())),
            _ => None,
        }
    }

    async fn call(&self, method: &str, body: &Value) -> Result<Value, ChatError> {
        let pace = self.pace(method, body);
        if let Some((pacer, key)) = &pace {
            pacer.ready(key).await?;
        }
        let response = self
            .http
            .post(format!("{}/{method}", self.api_url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json; charset=utf-8")
            .json(body)
            .send()
            .await
            .map_err(|e| ChatError::Transient(format!("{method}: {}", e.without_url())))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ChatError::RetryAfter(
                retry_after_header(response.headers()).unwrap_or(Duration::from_secs(1)),
            ));
        }
        let retry_after = retry_after_header(response.headers());
        if status.is_server_error() {
            return Err(ChatError::Transient(format!("{method}: HTTP {status}")));
        }
        let reply: Value = response.json().await.map_err(|e| {
            ChatError::Transient(format!("{method}: bad response: {}", e.without_url()))
        })?;
        if reply["ok"] == true {
            return Ok(reply);
        }
        let error = reply["error"]
            .as_str()
            .unwrap_or("unknown_error")
            .to_owned();
        if error == "ratelimited" || error == "rate_limited" {
            return Err(ChatError::RetryAfter(
                retry_after.unwrap_or(Duration::from_secs(1)),
            ));
        }
        if PERMANENT.contains(&error.as_str()) {
            Err(ChatError::Permanent(error))
        } else {
            Err(ChatError::Transient(format!("{method}: {error}")))
        }
    }

    /// Posts the report; returns the message `ts`.
    pub async fn post(&self, channel: &str, report: &ChatReport) -> Result<String, ChatError> {
        let mut body = render(report);
        body["channel"] = channel.into();
        let reply = self.call("chat.postMessage", &body).await?;
        reply["ts"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ChatError::Transient("chat.postMessage: no ts in the reply".into()))
    }

    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        report: &ChatReport,
    ) -> Result<(), ChatError> {
        let mut body = render(report);
        body["channel"] = channel.into();
        body["ts"] = ts.into();
        self.call("chat.update", &body).await.map(drop)
    }

    /// A ping: `mentions` (verified member ids, rendered so Slack notifies
    /// them) then `text`, in the report's thread and shown in the channel
    /// too, or as its own message when there is no report yet.
    pub async fn ping(
        &self,
        channel: &str,
        ts: Option<&str>,
        mentions: &[String],
        text: &str,
    ) -> Result<(), ChatError> {
        let body = ping_body(channel, ts, mentions, text);
        self.call("chat.postMessage", &body).await.map(drop)
    }

    /// A thread reply under the report (results, escalations).
    pub async fn reply(
        &self,
        channel: &str,
        ts: &str,
        reply: &super::Reply,
    ) -> Result<(), ChatError> {
        let body = reply_body(channel, ts, reply);
        self.call("chat.postMessage", &body).await.map(drop)
    }

    /// Members of a user group, cached for the configured time.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, ChatError> {
        if let Some(members) = self.groups.lock().await.get(group, Instant::now()) {
            return Ok(members.to_vec());
        }
        let reply = self
            .call("usergroups.users.list", &json!({"usergroup": group}))
            .await?;
        let members: Vec<String> = reply["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        self.groups
            .lock()
            .await
            .insert(group, members.clone(), Instant::now());
        Ok(members)
    }

    /// An ephemeral answer to the clicker through the click's `response_url`.
    pub async fn respond_ephemeral(&self, response_url: &str, text: &str) -> Result<(), ChatError> {
        let response = self
            .http
            .post(response_url)
            .json(&json!({"response_type": "ephemeral", "replace_original": false, "text": slack_escape(text)}))
            .send()
            .await
            .map_err(|e| ChatError::Transient(format!("response_url: {}", e.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ChatError::Transient(format!(
                "response_url: HTTP {}",
                response.status()
            )))
        }
    }
}

/// Why an interaction request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature or timestamp header")]
    Missing,
    #[error("timestamp outside the allowed window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Slack's request signing: `v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))`,
/// with `ts` within five minutes of `now` (Unix seconds).
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
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
    let hex_sig = signature
        .strip_prefix("v0=")
        .ok_or(SignatureError::Mismatch)?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::Mismatch)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Signs like Slack does (for tests and local tools).
#[must_use]
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::GroupCache;

    #[test]
    fn group_cache_forgets_members_after_its_ttl_and_sweeps_them() {
        let start = Instant::now();
        let mut cache = GroupCache::new(Duration::from_secs(60));
        cache.insert("S1", vec!["U1".into()], start);
        assert_eq!(cache.get("S1", start), Some(&["U1".to_owned()][..]));
        let later = start + Duration::from_secs(61);
        assert_eq!(cache.get("S1", later), None);
        cache.insert("S2", vec![], later);
        assert_eq!(cache.len(), 1, "the expired group was swept");
    }

    #[test]
    fn group_cache_never_holds_more_than_its_cap() {
        let start = Instant::now();
        let mut cache = GroupCache::new(Duration::from_secs(3600));
        for i in 0..GroupCache::CAP + 50 {
            let at = start + Duration::from_millis(u64::try_from(i).expect("small"));
            cache.insert(&format!("S{i}"), vec![], at);
        }
        assert_eq!(cache.len(), GroupCache::CAP);
        let end = start + Duration::from_secs(1);
        assert!(cache.get("S0", end).is_none(), "the oldest went first");
        assert!(
            cache
                .get(&format!("S{}", GroupCache::CAP + 49), end)
                .is_some()
        );
    }
}
