//! The playbook file format, as operators write it (see playbooks/README.md).
//! Unknown fields are errors; values that need more than serde's checks
//! (matchers, templates, targets, programs) keep their position
//! (`Spanned`) so `remedy check` can point at them. The JSON Schema in
//! `schemas/playbook.json` is generated from these types (`remedy schema`):
//! `Spanned<T>` is described as `T`, durations as text.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::schema::HumanDuration;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Approved actions of this playbook are recorded and posted as "would
    /// run …", never executed (as `executor.dry_run`, for one playbook).
    #[serde(default)]
    pub dry_run: bool,
    /// Alertmanager matchers; all must match (`alertname="X"`, `severity=~"a|b"`).
    #[serde(rename = "match")]
    #[schemars(with = "Vec<String>")]
    pub matchers: Vec<Spanned<String>>,
    /// Thresholds and knobs, readable in templates as `vars.NAME`. A value
    /// written as a duration (`5m`) is also given as `vars.NAME_seconds`.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Default PostgreSQL target of `sql` steps and actions: a target name
    /// from the settings, or a template over the alert (`{{ labels.cluster }}`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub target: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<StepSpec>")]
    pub steps: Vec<Spanned<StepSpec>>,
    #[serde(default)]
    #[schemars(with = "Vec<FindingSpec>")]
    pub findings: Vec<Spanned<FindingSpec>>,
    #[serde(default)]
    #[schemars(with = "Vec<ActionSpec>")]
    pub actions: Vec<Spanned<ActionSpec>>,
    #[serde(default)]
    #[schemars(with = "Vec<SuggestionSpec>")]
    pub suggestions: Vec<Spanned<SuggestionSpec>>,
}

/// One diagnostic step. `id` names its output in templates (`steps.ID`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StepSpec {
    /// A read-only query; `params` are templates whose results are bound as
    /// `$1`, `$2`… (text; cast in SQL), never spliced.
    Sql {
        id: String,
        #[serde(default)]
        target: Option<String>,
        query: String,
        #[serde(default)]
        params: Vec<String>,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
        #[serde(default)]
        max_rows: Option<usize>,
    },
    /// An instant query; label values inserted with the `promql` filter are quoted.
    Promql {
        id: String,
        query: String,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
    },
    /// A probe; `url` may start with `{{ probes.NAME }}` from the settings.
    Http {
        id: String,
        url: String,
        #[serde(default = "default_method")]
        method: String,
        #[serde(default = "default_status")]
        expect_status: u16,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
    },
    /// The runbook's `validate_indexes.sh`: `query` (read-only, like a
    /// `sql` step) lists running statements in a `query` column; each one
    /// without `$n` parameters is planned (`EXPLAIN (FORMAT JSON,
    /// VERBOSE)`, never `ANALYZE`), and every sequential scan with a filter
    /// on a table larger than `min_rows` (a template) is a row.
    Explain {
        id: String,
        #[serde(default)]
        target: Option<String>,
        query: String,
        #[serde(default)]
        params: Vec<String>,
        min_rows: String,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
    },
    /// The runbook's cache analysis on a named Redis (`[redis.NAME]`):
    /// read-only `INFO`, `DBSIZE`, `CONFIG GET maxmemory*` and `SLOWLOG`,
    /// summarised in one row (hit ratio, evictions, memory against
    /// `maxmemory`, the `slowlog` slowest entries).
    Redis {
        id: String,
        target: String,
        /// `SLOWLOG GET` entries read (default 10).
        #[serde(default)]
        slowlog: Option<usize>,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
    },
    /// An allow-listed program with argv (templates, each one argument).
    Command {
        id: String,
        program: String,
        #[serde(default)]
        args: Vec<ArgSpec>,
        /// Keep only output lines matching this regex.
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
        #[serde(default)]
        max_lines: Option<usize>,
    },
    /// A service's recent log lines from a configured compose project
    /// (`compose logs --timestamps --no-color [--since]`): the newest
    /// `max_lines` matching lines are kept, and `value` counts every match.
    Compose {
        id: String,
        /// A `[compose.NAME]` from the settings.
        project: String,
        /// The service whose logs are read (a template; never an option).
        logs: String,
        /// How far back (default 1h).
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        since: Option<Duration>,
        /// Keep only lines matching this regex.
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default, with = "humantime_serde::option")]
        #[schemars(with = "Option<HumanDuration>")]
        timeout: Option<Duration>,
        #[serde(default)]
        max_lines: Option<usize>,
    },
    /// The allow-listed keys of a configured environment file, as one row
    /// (`steps.ID.rows[0].KEY`); a key the file does not set is absent.
    #[serde(rename = "env_file")]
    EnvFile {
        id: String,
        /// An `[env_files.NAME]` from the settings.
        env_file: String,
    },
}

impl StepSpec {
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Sql { id, .. }
            | Self::Promql { id, .. }
            | Self::Http { id, .. }
            | Self::Redis { id, .. }
            | Self::Explain { id, .. }
            | Self::Command { id, .. }
            | Self::Compose { id, .. }
            | Self::EnvFile { id, .. } => id,
        }
    }

    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sql { .. } => "sql",
            Self::Promql { .. } => "promql",
            Self::Http { .. } => "http",
            Self::Redis { .. } => "redis",
            Self::Explain { .. } => "explain",
            Self::Command { .. } => "command",
            Self::Compose { .. } => "compose",
            Self::EnvFile { .. } => "env_file",
        }
    }
}

/// One argv element of a `command` step or action: a template, or
/// `{arg: TEMPLATE, allow_dash: true}` for an argument whose rendered value
/// may start with `-`. Without the mark, an argument whose template does not
/// itself start with `-` but renders to a value that does (`service:
/// "--no-deps"` in a label) is refused: a value from an alert never becomes
/// an option.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ArgSpec {
    Plain(String),
    Marked(MarkedArg),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkedArg {
    pub arg: String,
    #[serde(default)]
    pub allow_dash: bool,
}

impl ArgSpec {
    /// The argument's template.
    #[must_use]
    pub fn source(&self) -> &str {
        match self {
            Self::Plain(source) | Self::Marked(MarkedArg { arg: source, .. }) => source,
        }
    }

    /// Whether a rendered value may start with `-` although the template
    /// does not.
    #[must_use]
    pub fn allow_dash(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Marked(marked) => marked.allow_dash,
        }
    }

    /// Renders the argument, refusing a dash the template did not write.
    ///
    /// # Errors
    /// The template's error, or the refusal naming argument `index`.
    pub fn render(
        &self,
        index: usize,
        env: &minijinja::Environment<'_>,
        ctx: &minijinja::Value,
    ) -> Result<String, String> {
        let source = self.source();
        let value = super::template::render(env, source, ctx)?;
        if value.starts_with('-') && !source.trim_start().starts_with('-') && !self.allow_dash() {
            return Err(format!(
                "argument {index} `{source}` renders to `{value}`, which starts with `-` and would be read as an option; refused (mark it `allow_dash: true` if that is intended)"
            ));
        }
        Ok(value)
    }
}

fn default_method() -> String {
    "GET".into()
}

fn default_status() -> u16 {
    200
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// A line for people: shown when `when` is true.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    /// An expression over `steps`, `vars`, `labels`; absent means always.
    #[serde(default)]
    pub when: Option<String>,
    pub severity: Severity,
    /// A template.
    pub text: String,
    /// A step whose rows are attached as evidence.
    #[serde(default)]
    pub evidence: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Safe,
    Disruptive,
    Destructive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Sql,
    Command,
    Http,
    Silence,
    /// `ALTER ROLE … SET setting = value` (`RESET` for an empty value) on
    /// the target: `params` are the role and the value; the previous value
    /// is read first and reported.
    #[serde(rename = "role_setting")]
    RoleSetting,
    /// `CREATE INDEX CONCURRENTLY` on the target: `params` are the schema,
    /// the table and its comma-separated columns; identifiers are quoted by
    /// the server, the index is checked valid, an invalid leftover dropped.
    #[serde(rename = "create_index")]
    CreateIndex,
    /// `restart`, `up` or `recreate` one service of a configured compose
    /// project.
    Compose,
    /// Set keys in a configured environment file, then recreate the
    /// service that reads it and check the value inside the new container.
    #[serde(rename = "env_file")]
    EnvFile,
}

/// What a `compose` action does to its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComposeOperation {
    /// `restart SERVICE`: the same container, started again. It keeps the
    /// environment the container was created with: an edited `.env` is
    /// NOT read again.
    Restart,
    /// `up -d --no-deps SERVICE`: recreates the container when its
    /// configuration (an edited `.env` included) changed.
    Up,
    /// `up -d --no-deps --force-recreate SERVICE`: a new container whatever
    /// changed.
    Recreate,
}

impl ComposeOperation {
    /// The compose arguments before the service name.
    #[must_use]
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Self::Restart => &["restart"],
            Self::Up => &["up", "-d", "--no-deps"],
            Self::Recreate => &["up", "-d", "--no-deps", "--force-recreate"],
        }
    }
}

/// Something that can be executed after approval. With `for_each: STEP`
/// there is one instance per row of that step, and templates (and `when`,
/// asked per row) see `row`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub id: String,
    /// A template.
    pub title: String,
    pub kind: ActionKind,
    pub risk: Risk,
    /// Roles that may approve; empty means any configured approver.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Distinct approvers needed.
    #[serde(default = "one")]
    pub quorum: u32,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub for_each: Option<String>,
    /// Most instances one execution may touch (blast radius).
    #[serde(default)]
    pub max_targets: Option<usize>,
    #[serde(default)]
    pub target: Option<String>,
    /// sql: the statement; `params` are bound as `$1`…
    #[serde(default)]
    pub statement: Option<String>,
    #[serde(default)]
    pub params: Vec<String>,
    /// command: the program and its argv templates.
    #[serde(default)]
    pub program: Option<String>,
    #[serde(default)]
    pub args: Vec<ArgSpec>,
    /// http: method and URL.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// http: a JSON or text body (a template) and the status that means
    /// success (default: any 2xx).
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// silence: how long.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<HumanDuration>")]
    pub duration: Option<Duration>,
    /// role_setting: the setting (one of
    /// `actions::ddl::ROLE_SETTINGS`; not a template).
    #[serde(default)]
    pub setting: Option<String>,
    /// create_index: how long it may wait for a lock (default 5s); the
    /// build itself runs without a statement timeout.
    #[serde(default, with = "humantime_serde::option")]
    #[schemars(with = "Option<HumanDuration>")]
    pub lock_timeout: Option<Duration>,
    /// compose and env_file: a `[compose.NAME]` from the settings, and the
    /// service (a template) acted on.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// compose: what to do to the service.
    #[serde(default)]
    pub operation: Option<ComposeOperation>,
    /// env_file: an `[env_files.NAME]` from the settings, and the keys to
    /// set with their values (templates).
    #[serde(default)]
    pub env_file: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// An expression over the diagnosis run again `executor.verify_after`
    /// later (`steps`, `vars`, `labels`): true means the run was effective.
    /// Without it, a run is effective when the action is no longer offered
    /// or the findings eased. An env_file edit judged ineffective is undone.
    #[serde(default)]
    pub verify: Option<String>,
    /// The id of the action of this playbook that this one undoes (same
    /// `for_each` and `when`). An undo is not offered with the report: once
    /// that action has run for a row, this one is offered for the same row
    /// in the incident's thread, with an approval of its own.
    #[serde(default)]
    pub undoes: Option<String>,
    /// Re-checked right before running (by the executor).
    #[serde(default)]
    pub precondition: Option<PreconditionSpec>,
    /// Runs without waiting for people, when `executor.allow_automatic` is
    /// on. Only `risk: safe` actions may be automatic.
    #[serde(default)]
    pub automatic: bool,
}

fn one() -> u32 {
    1
}

/// A query that must return a row for the action to still be valid.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreconditionSpec {
    pub query: String,
    #[serde(default)]
    pub params: Vec<String>,
}

/// Advice and commands for a human to copy; never executed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuggestionSpec {
    pub title: String,
    #[serde(default)]
    pub when: Option<String>,
    /// A template.
    #[serde(default)]
    pub text: Option<String>,
    /// A template, shown as a code block.
    #[serde(default)]
    pub command: Option<String>,
}
