//! The escalation matrix as data (`config/escalation.yaml`): for each alert,
//! who is paged first, who next and when — after a time unresolved, at once
//! on a measured threshold, on recurrence, or when a remediation did not
//! work — and a default policy for alerts without a row. Loaded and checked
//! like playbooks: every problem with file, line, column and field.
//!
//! The matrix only plans; the timers themselves are rows in the store
//! (`store::escalation`), fired by the scheduler (`engine::escalate`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::config::{ChatPlatform, RoleMembers, Settings};
use crate::domain::{Labels, Millis};
use crate::playbook::matcher::{Matcher, matches_all, parse_matchers};
use crate::playbook::{PlaybookError, Report, template};
use crate::schema::HumanDuration;

/// The file as operators write it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    /// Responder roles: key → the name people know (`team-lead: Team Lead`).
    /// Who holds a role is configured in the settings (`[approvers.KEY]`).
    roles: BTreeMap<String, String>,
    /// Snooze lengths offered as buttons.
    #[serde(default = "default_snooze", with = "humantime_list")]
    #[schemars(with = "Vec<HumanDuration>")]
    snooze: Vec<Duration>,
    /// Silence lengths offered as buttons.
    #[serde(default = "default_silence", with = "humantime_list")]
    #[schemars(with = "Vec<HumanDuration>")]
    silence: Vec<Duration>,
    /// Severities whose incidents get a summary in the thread when they
    /// resolve (the runbook's "after resolving a CRITICAL alert").
    #[serde(default = "default_summary_for")]
    summary_for: Vec<String>,
    /// Incidents that lasted longer than this also get the postmortem
    /// checklist.
    #[serde(default = "default_postmortem_after", with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    postmortem_after: Duration,
    #[serde(default)]
    #[schemars(with = "Vec<PolicySpec>")]
    policies: Vec<Spanned<PolicySpec>>,
    /// For alerts that no row matches.
    #[schemars(with = "PolicySpec")]
    default: Spanned<PolicySpec>,
}

fn default_summary_for() -> Vec<String> {
    vec!["critical".into()]
}

fn default_postmortem_after() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_snooze() -> Vec<Duration> {
    vec![Duration::from_secs(15 * 60), Duration::from_secs(3600)]
}

fn default_silence() -> Vec<Duration> {
    vec![Duration::from_secs(3600), Duration::from_secs(4 * 3600)]
}

mod humantime_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// As people write them (`15m`, `1h`): the defaults the schema shows.
    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = list.iter().map(|d| super::human(*d)).collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    /// Shorthand for `match: [alertname="NAME"]`.
    #[serde(default)]
    alert: Option<String>,
    #[serde(default, rename = "match")]
    matchers: Vec<String>,
    /// Mentioned in the report when the incident opens.
    #[schemars(with = "String")]
    initial: Spanned<String>,
    /// The levels, in order: who is pinged next, and after how long
    /// unresolved (a level without `after` is reached only by a trigger).
    #[serde(default)]
    escalate: Vec<LevelSpec>,
    /// Escalate at once when this expression over the diagnosis holds
    /// (`steps.ID.rows`, `labels`, `vars` of the playbook).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    threshold: Option<Spanned<String>>,
    /// How often the steps the threshold reads are measured again while
    /// the incident fires (default: the settings' `escalation.recheck_every`).
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<HumanDuration>")]
    recheck: Option<Duration>,
    /// Escalate at once when the same alert opened this often in a window.
    #[serde(default)]
    recurring: Option<RecurringSpec>,
    /// Escalate at once when an executed action was judged ineffective.
    #[serde(default = "yes")]
    on_ineffective_remediation: bool,
    /// Ping nobody; post a review reminder when still open after this long.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<HumanDuration>")]
    review_after: Option<Duration>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LevelSpec {
    #[schemars(with = "String")]
    to: Spanned<String>,
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<HumanDuration>")]
    after: Option<Duration>,
    #[serde(default)]
    repeat: Option<RepeatSpec>,
    /// Pagers (`[pagers.NAME]` in the settings) triggered when the level
    /// is reached, besides the chat ping.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    page: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RepeatSpec {
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    every: Duration,
    times: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RecurringSpec {
    count: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "HumanDuration")]
    within: Duration,
    /// `fingerprint` (the same alert, same labels; default) or `alertname`.
    #[serde(default)]
    by: RecurringBy,
}

/// What counts as "the same alert" for recurrence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecurringBy {
    #[default]
    Fingerprint,
    Alertname,
}

/// The JSON Schema of the matrix file (`remedy schema escalation`).
pub fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.root_schema_for::<MatrixFile>()
}

/// A validated matrix.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub file: PathBuf,
    /// Role key → display name.
    pub roles: BTreeMap<String, String>,
    pub snooze: Vec<Duration>,
    pub silence: Vec<Duration>,
    /// Severities (lower case) summarized when they resolve.
    pub summary_for: Vec<String>,
    pub postmortem_after: Duration,
    pub policies: Vec<Policy>,
    pub default: Policy,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// The row's alert name, or `default`.
    pub name: String,
    matchers: Vec<Matcher>,
    pub initial: String,
    pub levels: Vec<Level>,
    pub threshold: Option<String>,
    /// The row's `recheck`, overriding `escalation.recheck_every`.
    pub recheck: Option<Duration>,
    pub recurring: Option<Recurring>,
    pub on_ineffective_remediation: bool,
    pub review_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Level {
    pub to: String,
    pub after: Option<Duration>,
    pub repeat: Option<(Duration, u32)>,
    /// The pagers this level triggers (once; re-pings do not page again).
    pub pagers: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Recurring {
    pub count: u32,
    pub within: Duration,
    pub by: RecurringBy,
}

/// A timer to create when an incident opens: a row in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTimer {
    /// 1.. for escalation levels; 0 for the review reminder.
    pub level: i64,
    /// `escalate` or `review`.
    pub kind: &'static str,
    /// The role pinged (none for a review reminder).
    pub role: Option<String>,
    pub reason: String,
    /// None: reached only by a trigger (threshold, recurrence, ineffective
    /// remediation).
    pub due_at: Option<Millis>,
    pub repeat_every_ms: Option<i64>,
    pub repeats: i64,
    /// Pagers triggered when the timer fires (its first ping only).
    pub pagers: Vec<String>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// A duration as people write it: `15m`, `1h`, `24h`.
#[must_use]
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
        .to_string()
        .replace(' ', "")
}

impl Policy {
    /// Every role this policy names: who may acknowledge, snooze and
    /// silence its incidents.
    #[must_use]
    pub fn roles(&self) -> Vec<String> {
        let mut roles = vec![self.initial.clone()];
        for level in &self.levels {
            if !roles.contains(&level.to) {
                roles.push(level.to.clone());
            }
        }
        roles
    }

    /// The timers of an incident opened at `opened_at`.
    #[must_use]
    pub fn plan(&self, opened_at: Millis) -> Vec<PlannedTimer> {
        let mut timers: Vec<PlannedTimer> = self
            .levels
            .iter()
            .enumerate()
            .map(|(i, level)| PlannedTimer {
                level: i64::try_from(i + 1).unwrap_or(i64::MAX),
                kind: "escalate",
                role: Some(level.to.clone()),
                reason: level.after.map_or_else(
                    || "escalation triggered".to_owned(),
                    |after| format!("not resolved in {}", human(after)),
                ),
                due_at: level.after.map(|a| opened_at.saturating_add(millis(a))),
                repeat_every_ms: level.repeat.map(|(every, _)| millis(every)),
                repeats: level.repeat.map_or(0, |(_, times)| i64::from(times)),
                pagers: level.pagers.clone(),
            })
            .collect();
        if let Some(after) = self.review_after {
            timers.push(PlannedTimer {
                level: 0,
                kind: "review",
                role: None,
                reason: format!("still open after {} (not urgent: review)", human(after)),
                due_at: Some(opened_at.saturating_add(millis(after))),
                repeat_every_ms: None,
                repeats: 0,
                pagers: Vec::new(),
            });
        }
        timers
    }

    /// The steps (of `ids`, the playbook's) that the threshold reads: the
    /// ones worth measuring again while the incident fires. Every step when
    /// the expression reads `steps` as a whole (`steps[name]`); none
    /// without a threshold.
    #[must_use]
    pub fn threshold_steps(&self, ids: &[String]) -> Vec<String> {
        self.threshold
            .as_deref()
            .map_or_else(Vec::new, |expression| template::steps_read(expression, ids))
    }

    /// How often the threshold's steps are measured again.
    #[must_use]
    pub fn recheck_every(&self, default: Duration) -> Duration {
        self.recheck.unwrap_or(default)
    }

    /// What the threshold's steps measured, for the ping and the timeline:
    /// when, then per step its row count and up to three rows, each with
    /// the columns the expression names (`pid` first when there is one),
    /// a duration in `…_seconds` also as people read it. Only the count
    /// when the expression names no column. The text may carry values from
    /// the monitored database: the chat adapters escape it.
    #[must_use]
    pub fn measurement(&self, report: &Report, steps: &[String], at: Millis) -> String {
        let named: Vec<&str> = self.threshold.as_deref().map_or_else(Vec::new, |e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect()
        });
        let parts: Vec<String> = steps
            .iter()
            .filter_map(|id| report.steps.get(id).map(|s| (id, s)))
            .map(|(id, step)| {
                if !step.ok {
                    return format!("{id}: failed");
                }
                let total = step.rows.len() + usize::try_from(step.truncated).unwrap_or(0);
                let mut text = format!("{id}: {total} row{}", if total == 1 { "" } else { "s" });
                if let Some(value) = step.value {
                    text.push_str(&format!(", value {}", number(value)));
                }
                let mut columns: Vec<&str> = Vec::new();
                if let Some(first) = step.rows.first() {
                    if first.contains_key("pid") {
                        columns.push("pid");
                    }
                    for w in &named {
                        if *w != "pid" && first.contains_key(*w) && !columns.contains(w) {
                            columns.push(w);
                        }
                    }
                }
                if columns.len() > usize::from(columns.first() == Some(&"pid")) {
                    let rows: Vec<String> = step
                        .rows
                        .iter()
                        .take(3)
                        .map(|row| {
                            columns
                                .iter()
                                .filter_map(|c| row.get(*c).map(|v| cell(c, v)))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .collect();
                    text.push_str(&format!(" ({}", rows.join("; ")));
                    if total > 3 {
                        text.push_str(&format!("; … and {} more", total - 3));
                    }
                    text.push(')');
                }
                text
            })
            .collect();
        format!(
            "measured at {}: {}",
            crate::chat::report::clock_seconds(at),
            parts.join("; ")
        )
    }

    /// Whether the threshold holds for a diagnosis: the expression sees the
    /// report's `steps`, the alert's `labels` and the playbook's `vars`.
    /// An expression that fails to evaluate does not hold (and says why).
    pub fn threshold_met(
        &self,
        report: &Report,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, String> {
        let Some(expression) = &self.threshold else {
            return Ok(false);
        };
        if !report.matched {
            return Ok(false);
        }
        let ctx = template::context(&serde_json::json!({
            "steps": report.steps,
            "labels": report.labels,
            "annotations": report.annotations,
            "vars": vars,
        }));
        // Strict: a threshold over a missing step or variable is an error
        // (reported, and not met), never a comparison with nothing.
        let mut env = template::environment();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        template::truthy(&env, expression, &ctx)
    }
}

impl Matrix {
    /// The first row whose matchers all hold, else the default.
    #[must_use]
    pub fn policy_for(&self, labels: &Labels) -> &Policy {
        self.policies
            .iter()
            .find(|p| matches_all(&p.matchers, labels))
            .unwrap_or(&self.default)
    }

    #[must_use]
    pub fn role_name<'a>(&'a self, role: &'a str) -> &'a str {
        self.roles.get(role).map_or(role, String::as_str)
    }

    /// A matrix with only a default policy that pages nobody, for
    /// commands that never escalate (`simulate`).
    #[must_use]
    pub fn empty() -> Self {
        let default = Policy {
            name: "default".into(),
            matchers: Vec::new(),
            initial: String::new(),
            levels: Vec::new(),
            threshold: None,
            recheck: None,
            recurring: None,
            on_ineffective_remediation: false,
            review_after: None,
        };
        Self {
            file: PathBuf::new(),
            roles: BTreeMap::new(),
            snooze: default_snooze(),
            silence: default_silence(),
            summary_for: default_summary_for(),
            postmortem_after: default_postmortem_after(),
            policies: Vec::new(),
            default,
        }
    }

    /// Roles the matrix pages that nobody holds on the configured platform:
    /// their pings mention no one. One line naming them all (none when every
    /// role is held), for `remedy check` and the start-up log.
    #[must_use]
    pub fn unheld_roles(&self, settings: &Settings) -> Vec<String> {
        let mut used: Vec<&str> = Vec::new();
        for p in self.policies.iter().chain(std::iter::once(&self.default)) {
            for role in std::iter::once(&p.initial).chain(p.levels.iter().map(|l| &l.to)) {
                if !used.contains(&role.as_str()) {
                    used.push(role);
                }
            }
        }
        let roles = crate::approvals::Directory::new(&settings.people, &settings.approvers)
            .map(|d| d.expanded_roles())
            .unwrap_or_else(|_| settings.approvers.clone());
        let unheld: Vec<&str> = used
            .into_iter()
            .filter(|role| {
                roles
                    .get(*role)
                    .is_none_or(|m| mentions(m, settings.chat.platform).is_empty())
            })
            .collect();
        if unheld.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "{}: responder role(s) {} have no members for chat.platform {:?} ([approvers.ROLE]); their pings mention nobody",
            self.file.display(),
            unheld.join(", "),
            settings.chat.platform
        )]
    }
}

/// A number as a measurement shows it: integers as such, others to one
/// decimal.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `name=value`, cut to 80 characters; a `…_seconds` number also as a
/// duration (`duration_seconds=312.4 (5m12s)`).
fn cell(name: &str, value: &serde_json::Value) -> String {
    let shown = match value {
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!("{name}={}", crate::chat::text::cut(&shown, 80));
    if name.ends_with("_seconds")
        && let Some(secs) = value.as_f64().filter(|s| s.is_finite() && *s >= 60.0)
    {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive, finite number of seconds"
        )]
        let whole = secs as u64;
        out.push_str(&format!(" ({})", human(Duration::from_secs(whole))));
    }
    out
}

/// How a role's members are mentioned on a platform, as message text:
/// Slack `<@U…>` / `<!subteam^S…>`, Discord `<@…>` / `<@&…>`, Mattermost
/// `<@ID>` (written as `@username` when posted), console names.
#[must_use]
pub fn mentions(members: &RoleMembers, platform: ChatPlatform) -> Vec<String> {
    match platform {
        ChatPlatform::Slack => members
            .slack_users
            .iter()
            .map(|u| format!("<@{u}>"))
            .chain(
                members
                    .slack_groups
                    .iter()
                    .map(|g| format!("<!subteam^{g}>")),
            )
            .collect(),
        ChatPlatform::Discord => members
            .discord_users
            .iter()
            .map(|u| format!("<@{u}>"))
            .chain(members.discord_roles.iter().map(|r| format!("<@&{r}>")))
            .collect(),
        // `<@ID>` until the Mattermost adapter writes it as `@username`.
        ChatPlatform::Mattermost => members
            .mattermost_users
            .iter()
            .map(|u| format!("<@{u}>"))
            .collect(),
        ChatPlatform::Console => members.console_users.clone(),
    }
}

/// Loads and validates the matrix file.
pub fn load_file(path: &Path, settings: &Settings) -> Result<Matrix, Vec<PlaybookError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![PlaybookError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: "escalation.file".into(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    load_str(path, &text, settings)
}

/// Parses and validates a matrix. Role keys must be declared under
/// `roles`; every duration must be positive; expressions and matchers must
/// parse; each alert has at most one row.
pub fn load_str(
    path: &Path,
    text: &str,
    settings: &Settings,
) -> Result<Matrix, Vec<PlaybookError>> {
    let error = |at: Location, field: String, message: String| PlaybookError {
        file: path.to_owned(),
        line: at.line(),
        column: at.column(),
        field,
        message,
    };
    let spec: MatrixFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        let message = first
            .rsplit_once(&format!("column {column}: "))
            .map_or(first, |(_, m)| m);
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| {
                message.starts_with("unknown field") || message.starts_with("missing field")
            })
            .unwrap_or(".")
            .to_owned();
        vec![PlaybookError {
            file: path.to_owned(),
            line,
            column,
            field,
            message: message.to_owned(),
        }]
    })?;
    let mut errors = Vec::new();
    for (field, list) in [("snooze", &spec.snooze), ("silence", &spec.silence)] {
        if list.is_empty() || list.iter().any(Duration::is_zero) {
            errors.push(error(
                Location::UNKNOWN,
                field.into(),
                "at least one duration, each longer than 0s".into(),
            ));
        }
    }
    let mut policies = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, row) in spec.policies.iter().enumerate() {
        let field = format!("policies[{i}]");
        if let Some(policy) = validate(
            &spec,
            settings,
            &row.value,
            row.referenced,
            &field,
            &mut errors,
            &error,
        ) {
            if let Some(alert) = &row.value.alert
                && let Some(first) = seen.insert(alert.clone(), i)
            {
                errors.push(error(
                    row.referenced,
                    format!("{field}.alert"),
                    format!("`{alert}` already has a row (policies[{first}])"),
                ));
            }
            policies.push(policy);
        }
    }
    let default = validate(
        &spec,
        settings,
        &spec.default.value,
        spec.default.referenced,
        "default",
        &mut errors,
        &error,
    );
    if spec.default.value.alert.is_some() || !spec.default.value.matchers.is_empty() {
        errors.push(error(
            spec.default.referenced,
            "default".into(),
            "the default policy applies to alerts no row matches; it takes no `alert` or `match`"
                .into(),
        ));
    }
    match default {
        Some(default) if errors.is_empty() => Ok(Matrix {
            file: path.to_owned(),
            roles: spec.roles,
            snooze: spec.snooze,
            silence: spec.silence,
            summary_for: spec.summary_for.iter().map(|s| s.to_lowercase()).collect(),
            postmortem_after: spec.postmortem_after,
            policies,
            default,
        }),
        _ => Err(errors),
    }
}

fn validate(
    spec: &MatrixFile,
    settings: &Settings,
    row: &PolicySpec,
    at: Location,
    field: &str,
    errors: &mut Vec<PlaybookError>,
    error: &impl Fn(Location, String, String) -> PlaybookError,
) -> Option<Policy> {
    let before = errors.len();
    let role = |errors: &mut Vec<PlaybookError>, name: &Spanned<String>, f: String| {
        let (at, name) = (name.referenced, name.value.as_str());
        if !spec.roles.contains_key(name) {
            let known: Vec<&str> = spec.roles.keys().map(String::as_str).collect();
            errors.push(error(
                at,
                f,
                format!(
                    "unknown role `{name}` (declared under roles: {})",
                    known.join(", ")
                ),
            ));
        }
    };
    role(errors, &row.initial, format!("{field}.initial"));
    let mut matchers = Vec::new();
    if let Some(alert) = &row.alert {
        match parse_matchers(&format!("alertname={alert:?}")) {
            Ok(mut m) => matchers.append(&mut m),
            Err(e) => errors.push(error(at, format!("{field}.alert"), e.to_string())),
        }
    }
    for (j, m) in row.matchers.iter().enumerate() {
        match parse_matchers(m) {
            Ok(mut m) => matchers.append(&mut m),
            Err(e) => errors.push(error(at, format!("{field}.match[{j}]"), e.to_string())),
        }
    }
    if field != "default" && matchers.is_empty() {
        errors.push(error(
            at,
            format!("{field}.alert"),
            "a row needs `alert` or `match`".into(),
        ));
    }
    let mut levels = Vec::new();
    for (j, level) in row.escalate.iter().enumerate() {
        role(errors, &level.to, format!("{field}.escalate[{j}].to"));
        let at = level.to.referenced;
        if level.after.is_some_and(|a| a.is_zero()) {
            errors.push(error(
                at,
                format!("{field}.escalate[{j}].after"),
                "must be longer than 0s".into(),
            ));
        }
        if let Some(r) = level.repeat
            && (r.every.is_zero() || r.times == 0 || r.times > 10)
        {
            errors.push(error(
                at,
                format!("{field}.escalate[{j}].repeat"),
                "`every` longer than 0s and `times` from 1 to 10 (repeats are bounded)".into(),
            ));
        }
        for (k, pager) in level.page.iter().enumerate() {
            if !settings.pagers.contains_key(&pager.value) {
                let known: Vec<&str> = settings.pagers.keys().map(String::as_str).collect();
                errors.push(error(
                    pager.referenced,
                    format!("{field}.escalate[{j}].page[{k}]"),
                    format!(
                        "unknown pager `{}` (configured as [pagers.NAME] in the settings: {})",
                        pager.value,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        levels.push(Level {
            to: level.to.value.clone(),
            after: level.after,
            repeat: level.repeat.map(|r| (r.every, r.times)),
            pagers: level.page.iter().map(|p| p.value.clone()).collect(),
        });
    }
    if let Some(expression) = &row.threshold
        && let Err(e) = template::check_expression(&expression.value)
    {
        errors.push(error(
            expression.referenced,
            format!("{field}.threshold"),
            format!("expression error: {e}"),
        ));
    }
    if let Some(every) = row.recheck
        && (every.is_zero() || row.threshold.is_none())
    {
        errors.push(error(
            at,
            format!("{field}.recheck"),
            "how often a `threshold` is measured again: longer than 0s, and only with a threshold"
                .into(),
        ));
    }
    if let Some(r) = row.recurring
        && (r.count < 2 || r.within.is_zero())
    {
        errors.push(error(
            at,
            format!("{field}.recurring"),
            "`count` at least 2 and `within` longer than 0s".into(),
        ));
    }
    let triggers = row.threshold.is_some() || row.recurring.is_some();
    if levels.is_empty() && (triggers || row.review_after.is_none()) {
        errors.push(error(
            at,
            format!("{field}.escalate"),
            if triggers {
                "a threshold or recurrence needs a level to escalate to".into()
            } else {
                "give at least one level to escalate to, or `review_after` (pings nobody)".into()
            },
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(Policy {
        name: row.alert.clone().unwrap_or_else(|| {
            if field == "default" {
                "default".into()
            } else {
                field.into()
            }
        }),
        matchers,
        initial: row.initial.value.clone(),
        levels,
        threshold: row.threshold.as_ref().map(|t| t.value.clone()),
        recheck: row.recheck,
        recurring: row.recurring.map(|r| Recurring {
            count: r.count,
            within: r.within,
            by: r.by,
        }),
        on_ineffective_remediation: row.on_ineffective_remediation,
        review_after: row.review_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Matrix, Vec<PlaybookError>> {
        let settings = crate::config::Settings::load_from(
            None,
            [(
                "REMEDY__INTAKE__ALLOW_UNAUTHENTICATED".to_owned(),
                "true".to_owned(),
            )],
        )
        .expect("settings");
        load_str(Path::new("m.yaml"), text, &settings)
    }

    fn matrix(text: &str) -> Matrix {
        load(text).expect("valid")
    }

    #[test]
    fn levels_follow_one_another_and_repeats_are_bounded() {
        let m = matrix(
            "roles: {a: A, b: B, c: C}
default:
  initial: a
  escalate:
    - {to: b, after: 15m, repeat: {every: 5m, times: 2}}
    - {to: c, after: 30m}
",
        );
        let plan = m.default.plan(1_000);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].level, plan[0].role.as_deref()), (1, Some("b")));
        assert_eq!(plan[0].due_at, Some(1_000 + 15 * 60_000));
        assert_eq!(
            (plan[0].repeat_every_ms, plan[0].repeats),
            (Some(300_000), 2)
        );
        assert_eq!((plan[1].level, plan[1].role.as_deref()), (2, Some("c")));
        assert_eq!(plan[1].due_at, Some(1_000 + 30 * 60_000));
        assert_eq!(m.default.roles(), ["a", "b", "c"]);
    }

    fn watched(threshold: &str) -> Matrix {
        matrix(&format!(
            "roles: {{a: A, b: B}}
policies:
  - alert: X
    initial: a
    escalate: [{{to: b}}]
    threshold: '{threshold}'
    recheck: 20s
default:
  initial: a
  escalate: [{{to: b, after: 1m}}]
"
        ))
    }

    #[test]
    fn a_threshold_watches_only_the_steps_it_reads() {
        let ids: Vec<String> = ["long_queries", "lock_chains", "idle"]
            .map(String::from)
            .to_vec();
        let m = watched("steps.long_queries.rows | length > vars.n and labels.x == \"y\"");
        assert_eq!(m.policies[0].threshold_steps(&ids), ["long_queries"]);
        assert_eq!(
            m.policies[0].recheck_every(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        // A whole `steps` lookup reads any of them.
        let m = watched("steps[\"idle\"].rows | length > 1");
        assert_eq!(m.policies[0].threshold_steps(&ids), ids);
        // No threshold, nothing watched; the default is the settings'.
        assert!(m.default.threshold_steps(&ids).is_empty());
        assert_eq!(
            m.default.recheck_every(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn the_measurement_names_the_rows_and_the_columns_the_threshold_compares() {
        let m = watched(
            "steps.q.rows | selectattr(\"duration_seconds\", \"gt\", 300) | list | length > 0",
        );
        let mut report = Report::default();
        let row = |pid: i64, secs: f64| {
            serde_json::json!({"pid": pid, "duration_seconds": secs, "query": "select pg_sleep(600)"})
                .as_object()
                .cloned()
                .expect("object")
        };
        report.steps.insert(
            "q".into(),
            crate::diagnose::StepOutput {
                ok: true,
                rows: vec![row(4711, 312.4), row(4712, 12.0)],
                ..Default::default()
            },
        );
        let at = 1_795_749_300_000 + 7_000; // 2026-11-27 03:15:07 UTC
        let steps = ["q".to_owned()];
        assert_eq!(
            m.policies[0].measurement(&report, &steps, at),
            "measured at 03:15:07 UTC: q: 2 rows (pid=4711 duration_seconds=312.4 (5m12s); pid=4712 duration_seconds=12)"
        );
        // A threshold that only counts: the count.
        let count = watched("steps.q.rows | length > 10");
        assert_eq!(
            count.policies[0].measurement(&report, &steps, at),
            "measured at 03:15:07 UTC: q: 2 rows"
        );
    }

    #[test]
    fn a_level_pages_only_configured_pagers() {
        let errors = load(
            "roles: {a: A}\ndefault:\n  initial: a\n  escalate: [{to: a, after: 15m, page: [pd]}]\n",
        )
        .expect_err("no such pager");
        let text = errors[0].to_string();
        assert!(
            text.contains("default.escalate[0].page[0]") && text.contains("unknown pager `pd`"),
            "{text}"
        );
    }

    #[test]
    fn recheck_needs_a_threshold() {
        let errors = load(
            "roles: {a: A}\ndefault:\n  initial: a\n  recheck: 1m\n  escalate: [{to: a, after: 1m}]\n",
        )
        .expect_err("no threshold");
        assert!(
            errors[0].to_string().contains("default.recheck"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn unbounded_repeats_are_refused() {
        let errors = load(
            "roles: {a: A}\ndefault:\n  initial: a\n  escalate: [{to: a, after: 1m, repeat: {every: 1m, times: 1000}}]\n",
        )
        .expect_err("unbounded");
        assert!(
            errors[0].to_string().contains("default.escalate[0].repeat"),
            "{}",
            errors[0]
        );
    }
}
