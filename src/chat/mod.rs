//! Where people meet remedy: one report per incident in Slack, Discord,
//! Mattermost or the console, with Approve / Reject per action; who may decide what.

pub mod discord;
pub mod mattermost;
pub mod pace;
pub mod report;
pub mod slack;
pub mod text;

use std::collections::BTreeMap;
use std::time::Duration;

use serenity::interactions_endpoint::Verifier;

pub use report::ChatReport;

use crate::approvals::{Actor, Directory};
use crate::config::{ChatPlatform, RoleMembers, Settings};
use crate::domain::Labels;
use crate::playbook::matcher::{Matcher, matches_all, parse_matchers};

/// A failed chat call, by what the work queue should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// Rate limited: try again after this long.
    #[error("rate limited; retry after {0:?}")]
    RetryAfter(Duration),
    /// Not sent: the channel's pace (`chat.pace_wait`) leaves no room for
    /// this long.
    #[error("paced; the channel has room in {0:?}")]
    Paced(Duration),
    /// Network, 5xx, or a transient API error: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Wrong channel, missing permission, bad token: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// `Retry-After` in seconds (integer or decimal).
#[must_use]
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The incident controls under a report: Acknowledge, Snooze and Silence
/// (lengths in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Ack,
    Snooze(u64),
    Silence(u64),
}

impl Control {
    #[must_use]
    pub fn label(self) -> String {
        let human = |s: u64| crate::escalation::human(Duration::from_secs(s));
        match self {
            Self::Ack => "Acknowledge".into(),
            Self::Snooze(s) => format!("Snooze {}", human(s)),
            Self::Silence(s) => format!("Silence {}", human(s)),
        }
    }

    /// Slack `action_id` (the button's `value` is the incident id).
    #[must_use]
    pub fn slack_action_id(self) -> String {
        match self {
            Self::Ack => "ack".into(),
            Self::Snooze(s) => format!("snooze:{s}"),
            Self::Silence(s) => format!("silence:{s}"),
        }
    }

    #[must_use]
    pub fn parse_slack(action_id: &str) -> Option<Self> {
        match action_id.split_once(':') {
            None if action_id == "ack" => Some(Self::Ack),
            Some(("snooze", s)) => s.parse().ok().map(Self::Snooze),
            Some(("silence", s)) => s.parse().ok().map(Self::Silence),
            _ => None,
        }
    }

    /// Discord `custom_id`: `ack:INCIDENT`, `sz:INCIDENT:SECONDS`, `si:…`.
    #[must_use]
    pub fn discord_custom_id(self, incident: i64) -> String {
        match self {
            Self::Ack => format!("ack:{incident}"),
            Self::Snooze(s) => format!("sz:{incident}:{s}"),
            Self::Silence(s) => format!("si:{incident}:{s}"),
        }
    }

    #[must_use]
    pub fn parse_discord(custom_id: &str) -> Option<(Self, i64)> {
        let mut parts = custom_id.split(':');
        let verb = parts.next()?;
        let incident = parts.next()?.parse().ok()?;
        let seconds = parts.next().map(str::parse::<u64>);
        let control = match (verb, seconds) {
            ("ack", None) => Self::Ack,
            ("sz", Some(Ok(s))) => Self::Snooze(s),
            ("si", Some(Ok(s))) => Self::Silence(s),
            _ => return None,
        };
        parts.next().is_none().then_some((control, incident))
    }
}

/// The controls a report shows, in order: Acknowledge while nobody has,
/// Snooze while something is due, Silence always (while firing).
#[must_use]
pub fn controls(e: &report::ReportEscalation) -> Vec<Control> {
    let mut out = Vec::new();
    if e.can_ack() {
        out.push(Control::Ack);
    }
    if e.can_snooze() {
        out.extend(e.snooze.iter().map(|s| Control::Snooze(*s)));
    }
    out.extend(e.silence.iter().map(|s| Control::Silence(*s)));
    out
}

/// A thread reply that may mention people: remedy's own words, the
/// verified user mentions it built (the clickers of an action), and text
/// from alerts, targets and commands, which each platform escapes. Only a
/// mention that is exactly `<@ID>` passes unescaped; anything else pushed
/// as a mention is text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    parts: Vec<Part>,
    /// An action offered under the text with its Approve / Reject buttons
    /// (an undo, once its change has run), signed and decided as the
    /// report's own.
    pub action: Option<report::ReportAction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Mention(String),
}

impl Reply {
    /// Text only (escaped as a whole).
    #[must_use]
    pub fn text(text: &str) -> Self {
        let mut reply = Self::default();
        reply.push_text(text);
        reply
    }

    pub fn push_text(&mut self, text: &str) -> &mut Self {
        self.parts.push(Part::Text(text.to_owned()));
        self
    }

    /// A person as decisions record them: a verified clicker's `<@ID>` is
    /// a mention, a name is text.
    pub fn push_person(&mut self, display: &str) -> &mut Self {
        self.parts.push(if report::is_user_mention(display) {
            Part::Mention(display.to_owned())
        } else {
            Part::Text(display.to_owned())
        });
        self
    }

    /// The message text: mentions as they are, the rest through `escape`.
    pub fn render(&self, escape: impl Fn(&str) -> String) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => escape(t),
                Part::Mention(m) => m.clone(),
            })
            .collect()
    }

    /// The user ids mentioned (Discord's `allowed_mentions.users`).
    #[must_use]
    pub fn mentioned_users(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for p in &self.parts {
            if let Part::Mention(m) = p {
                let id = m.trim_start_matches("<@").trim_end_matches('>').to_owned();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}

/// The configured platform's client.
pub enum ChatClient {
    /// Prints reports on stdout; decisions come through the API / CLI.
    Console,
    Slack(slack::SlackClient),
    Discord(discord::DiscordClient),
    Mattermost(mattermost::MattermostClient),
}

/// Chat as the engine and the HTTP handlers use it.
pub struct Chat {
    pub client: ChatClient,
    platform: ChatPlatform,
    default_channel: String,
    routes: Vec<(Vec<Matcher>, String)>,
    approvers: BTreeMap<String, RoleMembers>,
    /// People, their identities and tokens, and the roles they hold.
    pub directory: Directory,
    pub approval_ttl: Duration,
    pub public_url: String,
    pub slack_signing_secret: String,
    pub discord_verifier: Option<Verifier>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("platform", &self.platform())
            .field("default_channel", &self.default_channel)
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// From the settings (validated by [`Settings::load`]).
    pub fn from_settings(settings: &Settings, http: reqwest::Client) -> Result<Self, String> {
        let chat = &settings.chat;
        let client = match chat.platform {
            ChatPlatform::Console => ChatClient::Console,
            ChatPlatform::Slack => ChatClient::Slack(slack::SlackClient::new(http, chat)),
            ChatPlatform::Discord => ChatClient::Discord(discord::DiscordClient::new(
                http,
                &chat.discord.api_url,
                chat.discord.bot_token.expose(),
                chat.pace_wait,
            )),
            ChatPlatform::Mattermost => {
                ChatClient::Mattermost(mattermost::MattermostClient::new(http, chat))
            }
        };
        let discord_verifier = if chat.discord.public_key.is_empty() {
            None
        } else {
            let bytes: [u8; 32] = hex::decode(&chat.discord.public_key)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or("chat.discord.public_key: 64 hex digits expected")?;
            Some(Verifier::try_new(bytes).map_err(|_| "chat.discord.public_key: not a valid key")?)
        };
        let directory = Directory::new(&settings.people, &settings.approvers)?;
        let mut routes = Vec::new();
        for (i, route) in chat.routes.iter().enumerate() {
            let mut all = Vec::new();
            for m in &route.matchers {
                all.extend(parse_matchers(m).map_err(|e| format!("chat.routes[{i}].match: {e}"))?);
            }
            routes.push((all, route.channel.clone()));
        }
        Ok(Self {
            client,
            platform: chat.platform,
            default_channel: chat.default_channel.clone(),
            routes,
            approvers: directory.expanded_roles(),
            directory,
            approval_ttl: chat.approval_ttl,
            public_url: chat.public_url.clone(),
            slack_signing_secret: chat.slack.signing_secret.expose().to_owned(),
            discord_verifier,
        })
    }

    #[must_use]
    pub fn platform(&self) -> &'static str {
        match self.platform {
            ChatPlatform::Console => "console",
            ChatPlatform::Slack => "slack",
            ChatPlatform::Discord => "discord",
            ChatPlatform::Mattermost => "mattermost",
        }
    }

    /// The channel for an incident: the first route whose matchers all hold.
    #[must_use]
    pub fn channel_for(&self, labels: &Labels) -> String {
        self.routes
            .iter()
            .find(|(m, _)| matches_all(m, labels))
            .map_or_else(|| self.default_channel.clone(), |(_, c)| c.clone())
    }

    /// Whether `actor` holds one of `roles` ([`Directory::holds`]). Slack
    /// user groups are read from Slack (cached) for the actor's Slack user,
    /// and a Mattermost clicker's roles from Mattermost (cached), only when
    /// nothing else grants the role; a lookup failure refuses rather than
    /// guesses.
    pub async fn authorized(&self, actor: &Actor, roles: &[String]) -> bool {
        if self.directory.holds(actor, roles, &[]) {
            return true;
        }
        if let (ChatClient::Mattermost(client), Some(user)) = (&self.client, &actor.mattermost_user)
        {
            if !self.directory.needs_mattermost_roles(roles) {
                return false;
            }
            return match client.user(user).await {
                Ok(found) if found.active => {
                    let with_roles = Actor {
                        mattermost_roles: found.roles,
                        ..actor.clone()
                    };
                    self.directory.holds(&with_roles, roles, &[])
                }
                Ok(_) => false,
                Err(error) => {
                    tracing::warn!(%user, %error, "mattermost user lookup failed");
                    false
                }
            };
        }
        let (ChatClient::Slack(client), Some(user)) = (&self.client, &actor.slack_user) else {
            return false;
        };
        let mut in_groups = Vec::new();
        for group in self.directory.slack_groups(roles) {
            match client.group_members(&group).await {
                Ok(users) if users.contains(user) => in_groups.push(group),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%group, %error, "slack user group lookup failed");
                }
            }
        }
        self.directory.holds(actor, roles, &in_groups)
    }

    /// Posts a new report; returns the message identity.
    pub async fn post(&self, channel: &str, report: &ChatReport) -> Result<String, ChatError> {
        match &self.client {
            ChatClient::Console => {
                println!("{}", console_text(report));
                Ok(format!("console-{}", report.incident_id))
            }
            ChatClient::Slack(c) => c.post(channel, report).await,
            ChatClient::Discord(c) => c.post(channel, report).await,
            ChatClient::Mattermost(c) => c.post(channel, report).await,
        }
    }

    pub async fn update(
        &self,
        channel: &str,
        message: &str,
        report: &ChatReport,
    ) -> Result<(), ChatError> {
        match &self.client {
            ChatClient::Console => {
                println!("{}", console_text(report));
                Ok(())
            }
            ChatClient::Slack(c) => c.update(channel, message, report).await,
            ChatClient::Discord(c) => c.update(channel, message, report).await,
            ChatClient::Mattermost(c) => c.update(channel, message, report).await,
        }
    }
}

impl Chat {
    /// Pings the members of `role` (none for a review reminder) with
    /// `text`: in the report's thread when there is one, else as its own
    /// message in `channel`.
    pub async fn ping(
        &self,
        channel: &str,
        message: Option<&str>,
        role: Option<&str>,
        text: &str,
    ) -> Result<(), ChatError> {
        let members = role.and_then(|r| self.approvers.get(r));
        match &self.client {
            ChatClient::Console => {
                let names = members
                    .map(|m| m.console_users.join(", "))
                    .unwrap_or_default();
                println!("   ⏫ {names} {text}");
                Ok(())
            }
            ChatClient::Slack(c) => {
                let mentions = members
                    .map_or_else(Vec::new, |m| crate::escalation::mentions(m, self.platform));
                c.ping(channel, message, &mentions, text).await
            }
            ChatClient::Discord(c) => c.ping(channel, message, members, text).await,
            ChatClient::Mattermost(c) => c.ping(channel, message, members, text).await,
        }
    }

    /// Who holds `role` (from `[approvers.ROLE]`).
    #[must_use]
    pub fn members(&self, role: &str) -> Option<&RoleMembers> {
        self.approvers.get(role)
    }

    /// How a role's members are mentioned in a report (the mention itself
    /// notifies only where the platform allows it: on Slack and Mattermost,
    /// and on Discord for the first post only).
    #[must_use]
    pub fn mentions(&self, role: &str) -> Vec<String> {
        self.approvers
            .get(role)
            .map_or_else(Vec::new, |m| crate::escalation::mentions(m, self.platform))
    }

    /// A reply in the report's thread, all of it text (escaped).
    pub async fn reply(&self, channel: &str, message: &str, text: &str) -> Result<(), ChatError> {
        self.reply_with(channel, message, &Reply::text(text)).await
    }

    /// A reply in the report's thread (action results) whose verified
    /// mentions are real ones.
    pub async fn reply_with(
        &self,
        channel: &str,
        message: &str,
        reply: &Reply,
    ) -> Result<(), ChatError> {
        match &self.client {
            ChatClient::Console => {
                println!("   ↳ {}", reply.render(text::terminal));
                Ok(())
            }
            ChatClient::Slack(c) => c.reply(channel, message, reply).await,
            ChatClient::Discord(c) => c.reply(channel, message, reply).await,
            ChatClient::Mattermost(c) => c.reply(channel, message, reply).await,
        }
    }
}

/// Approver roles that playbook actions name but nobody holds on the
/// configured platform: such actions can never be approved. One line per
/// playbook file, naming the roles and the actions, for `remedy check` and
/// the start-up log.
#[must_use]
pub fn unheld_roles(settings: &Settings, playbooks: &[crate::playbook::Playbook]) -> Vec<String> {
    let roles = Directory::new(&settings.people, &settings.approvers)
        .map(|d| d.expanded_roles())
        .unwrap_or_else(|_| settings.approvers.clone());
    let held = |role: &str| {
        roles
            .get(role)
            .is_some_and(|m| match settings.chat.platform {
                ChatPlatform::Console => !m.console_users.is_empty(),
                ChatPlatform::Slack => !m.slack_users.is_empty() || !m.slack_groups.is_empty(),
                ChatPlatform::Discord => !m.discord_users.is_empty() || !m.discord_roles.is_empty(),
                ChatPlatform::Mattermost => {
                    !m.mattermost_users.is_empty() || !m.mattermost_roles.is_empty()
                }
            })
    };
    let mut out = Vec::new();
    for playbook in playbooks {
        let mut unheld: Vec<&str> = Vec::new();
        let mut actions: Vec<&str> = Vec::new();
        for action in &playbook.spec.actions {
            let action = &action.value;
            if !action.approvers.iter().any(|r| held(r)) {
                actions.push(&action.id);
                for role in &action.approvers {
                    if !unheld.contains(&role.as_str()) {
                        unheld.push(role);
                    }
                }
            }
        }
        if !actions.is_empty() {
            out.push(format!(
                "{}: nobody holds approver role(s) {} for chat.platform {:?} ([approvers.ROLE]); nobody can approve action(s) {}",
                playbook.file.display(),
                if unheld.is_empty() { "(none listed)".to_owned() } else { unheld.join(", ") },
                settings.chat.platform,
                actions.join(", ")
            ));
        }
    }
    out
}

/// The console rendering: plain text with the commands that decide.
#[must_use]
pub fn console_text(report: &ChatReport) -> String {
    use std::fmt::Write as _;
    // Every alert-derived value goes through `t`: no escape sequences,
    // control characters, bidi overrides or line breaks reach the terminal.
    let t = text::terminal;
    let mut out = format!(
        "── incident #{} {} ──\n{}\n",
        report.incident_id,
        t(&report.headline()),
        t(&report.summary)
    );
    if let Some(storm) = &report.storm {
        let _ = writeln!(out, "{}", storm.line());
        for line in storm.value_lines(str::to_owned) {
            let _ = writeln!(out, "    {line}");
        }
    }
    if let Some(e) = &report.escalation {
        let _ = writeln!(out, "{}", e.line(t));
        let controls = controls(e);
        if !report.resolved && !controls.is_empty() {
            let commands: Vec<String> = controls
                .iter()
                .map(|c| match c {
                    Control::Ack => format!("remedy ack {}", report.incident_id),
                    Control::Snooze(s) => format!(
                        "remedy snooze {} {}",
                        report.incident_id,
                        crate::escalation::human(Duration::from_secs(*s))
                    ),
                    Control::Silence(s) => format!(
                        "remedy silence {} {}",
                        report.incident_id,
                        crate::escalation::human(Duration::from_secs(*s))
                    ),
                })
                .collect();
            // The CLI acts as the person whose token REMEDY_TOKEN holds.
            let _ = writeln!(out, "    {}", commands.join("   |   "));
        }
    }
    for f in &report.findings {
        let _ = writeln!(out, "[{:?}] {}", f.severity, t(&f.text));
        for row in &f.evidence {
            let _ = writeln!(out, "    {}", t(row));
        }
        if f.more_rows > 0 {
            let _ = writeln!(out, "    … and {} more rows", f.more_rows);
        }
        if let Some(as_of) = f.as_of_line() {
            let _ = writeln!(out, "    ({as_of})");
        }
    }
    for (id, e) in &report.step_errors {
        let _ = writeln!(out, "step {} failed: {}", t(id), t(e));
    }
    for s in &report.suggestions {
        let _ = writeln!(out, "suggestion: {}", t(&s.title));
        if let Some(c) = &s.command {
            for line in c.lines() {
                let _ = writeln!(out, "    $ {}", t(line));
            }
        }
    }
    for a in &report.actions {
        let _ = writeln!(
            out,
            "action {} [{:?}, {} of {}]: {} — {}",
            a.key,
            a.risk,
            a.approved_by.len(),
            a.quorum,
            t(&a.title),
            a.status_escaped(t)
        );
        for line in &a.changes {
            let _ = writeln!(out, "    {}", t(line));
        }
        if a.open() && !report.resolved {
            let _ = writeln!(
                out,
                "    remedy approve {} {}   |   remedy reject {} {}",
                report.incident_id, a.key, report.incident_id, a.key
            );
        }
    }
    let _ = write!(out, "full report: {}", t(&report.full_report));
    out
}
