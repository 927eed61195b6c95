//! From a playbook, an alert and step outputs to a report: the steps to run
//! with their values rendered ([`plan`]), then findings, action instances
//! with bound parameters, and suggestions ([`evaluate`]). Pure: no I/O, so
//! `remedy test` runs it on canned outputs.

use std::collections::BTreeMap;
use std::time::Duration;

use minijinja::Value as Ctx;
use serde::{Deserialize, Serialize};

use super::Playbook;
use super::model::{ActionKind, ComposeOperation, Risk, Severity, StepSpec};
use super::template::{self, render, truthy};
use crate::diagnose::StepOutput;
use crate::domain::Labels;

/// What templates may say about the alert.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertContext {
    pub labels: Labels,
    pub annotations: Labels,
    pub status: String,
    pub fingerprint: String,
    pub starts_at: String,
}

/// A step with every template rendered, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedStep {
    Sql {
        target: String,
        query: String,
        params: Vec<String>,
        timeout: Duration,
        max_rows: usize,
    },
    Promql {
        query: String,
        timeout: Duration,
    },
    Http {
        method: String,
        url: String,
        expect_status: u16,
        timeout: Duration,
    },
    Command {
        program: String,
        args: Vec<String>,
        pattern: Option<String>,
        timeout: Duration,
        max_lines: usize,
    },
    Redis {
        target: String,
        slowlog: usize,
        timeout: Duration,
    },
    Explain {
        target: String,
        query: String,
        params: Vec<String>,
        min_rows: f64,
        timeout: Duration,
    },
    ComposeLogs {
        project: String,
        service: String,
        since: Duration,
        pattern: Option<String>,
        timeout: Duration,
        max_lines: usize,
    },
    EnvFile {
        name: String,
    },
}

/// `SLOWLOG GET` entries a `redis` step reads unless it says otherwise.
pub const DEFAULT_SLOWLOG: usize = 10;

/// How far back a `compose` logs step reads by default.
pub const DEFAULT_LOGS_SINCE: Duration = Duration::from_secs(3600);
/// A `compose` step's default timeout: compose itself takes seconds to
/// start (docker-compose 1.x is a Python program).
pub const DEFAULT_COMPOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_ROWS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

/// One executable action as shown to people, parameters bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionInstance {
    pub id: String,
    pub title: String,
    pub kind: ActionKind,
    pub risk: Risk,
    pub approvers: Vec<String>,
    pub quorum: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// role_setting: the setting changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// create_index: `lock_timeout` in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<BoundQuery>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automatic: bool,
    /// compose and env_file: the project and service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<ComposeOperation>,
    /// env_file: the file, the values to set, and the exact lines before
    /// and after (read from the file when the diagnosis ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::domain::env_file::EnvChange>,
    /// The playbook's `verify` expression, judged on the re-diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// The action this one undoes: offered once that one has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<String>,
    /// The position of the `for_each` row this instance was made from: an
    /// undo answers the change made from the same row. Reports stored
    /// before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
}

impl ActionInstance {
    /// sha256 over the action's canonical JSON: kind, target, statement or
    /// program, every parameter and argument, an env file's exact lines,
    /// its precondition. An approval is bound to it.
    #[must_use]
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    }

    /// An env_file action's changes as a diff: `- before` (when the file
    /// set the key) and `+ after` lines.
    #[must_use]
    pub fn diff_lines(&self) -> Vec<String> {
        self.changes
            .iter()
            .flat_map(|c| {
                c.before
                    .iter()
                    .map(|b| format!("- {b}"))
                    .chain(std::iter::once(format!("+ {}", c.after)))
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundQuery {
    pub query: String,
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// The diagnosis of one incident, stored with it and shown in chat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub matched: bool,
    pub playbook: Option<String>,
    pub summary: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub steps: BTreeMap<String, StepOutput>,
    pub findings: Vec<Finding>,
    pub actions: Vec<ActionInstance>,
    pub suggestions: Vec<Suggestion>,
    /// Templates or expressions that failed to evaluate.
    pub errors: Vec<String>,
    /// Steps measured again after the diagnosis (the escalation threshold's,
    /// while the incident fires), with when: their `steps` entry is that
    /// latest measurement.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub measured: BTreeMap<String, crate::domain::Millis>,
    /// The playbook was `dry_run` when this report was made: its approved
    /// actions are recorded, never run, even if a reload changed that.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Report {
    /// The report as plain text, for the console and `remedy simulate`.
    #[must_use]
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.summary);
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let _ = writeln!(out, "labels: {}", labels.join(", "));
        if !self.findings.is_empty() {
            let _ = writeln!(out, "\nFindings:");
            for f in &self.findings {
                let _ = writeln!(out, "  [{:?}] {}", f.severity, f.text);
                if let Some(rows) = f.evidence.as_ref().and_then(|s| self.steps.get(s)) {
                    for row in rows.rows.iter().take(10) {
                        let _ = writeln!(out, "      {}", serde_json::Value::Object(row.clone()));
                    }
                    if rows.rows.len() > 10 || rows.truncated > 0 {
                        let more = rows.rows.len().saturating_sub(10)
                            + usize::try_from(rows.truncated).unwrap_or(0);
                        let _ = writeln!(out, "      … and {more} more rows");
                    }
                }
            }
        }
        let failed: Vec<(&String, &StepOutput)> =
            self.steps.iter().filter(|(_, s)| !s.ok).collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "\nSteps that failed:");
            for (id, s) in failed {
                let _ = writeln!(out, "  {id}: {}", s.error.as_deref().unwrap_or("failed"));
            }
        }
        if !self.actions.is_empty() {
            let _ = writeln!(out, "\nActions (need approval):");
            for a in &self.actions {
                let _ = writeln!(
                    out,
                    "  {} [{:?}, {} approver(s)]: {}",
                    a.id, a.risk, a.quorum, a.title
                );
                for line in a.diff_lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
        if !self.suggestions.is_empty() {
            let _ = writeln!(out, "\nSuggestions:");
            for s in &self.suggestions {
                let _ = writeln!(out, "  {}", s.title);
                if let Some(t) = &s.text {
                    let _ = writeln!(out, "    {t}");
                }
                if let Some(c) = &s.command {
                    for line in c.lines() {
                        let _ = writeln!(out, "    $ {line}");
                    }
                }
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "! {e}");
        }
        out
    }

    /// The report for an alert that no playbook matches.
    #[must_use]
    pub fn unmatched(alert: &AlertContext) -> Self {
        Self {
            matched: false,
            summary: format!(
                "No playbook matches alert `{}`",
                alert.labels.get("alertname").map_or("", String::as_str)
            ),
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            ..Self::default()
        }
    }
}

fn base_context(
    playbook: &Playbook,
    alert: &AlertContext,
    probes: &BTreeMap<String, String>,
) -> serde_json::Value {
    serde_json::json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "alert": alert,
        "vars": playbook.vars,
        "probes": probes,
    })
}

fn with(base: &serde_json::Value, key: &str, value: serde_json::Value) -> Ctx {
    let mut ctx = base.clone();
    if let Some(map) = ctx.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
    template::context(&ctx)
}

/// Renders the playbook's steps for this alert. A step whose templates fail
/// comes back as an error for that step alone.
#[must_use]
pub fn plan(
    playbook: &Playbook,
    alert: &AlertContext,
    probes: &BTreeMap<String, String>,
) -> Vec<(String, Result<PlannedStep, String>)> {
    let env = template::environment();
    let base = base_context(playbook, alert, probes);
    let ctx = template::context(&base);
    let default_target = playbook
        .spec
        .target
        .as_ref()
        .map(|t| render(&env, &t.value, &ctx));
    playbook
        .spec
        .steps
        .iter()
        .map(|s| {
            let step = &s.value;
            let planned = (|| -> Result<PlannedStep, String> {
                Ok(match step {
                    StepSpec::Sql {
                        target,
                        query,
                        params,
                        timeout,
                        max_rows,
                        ..
                    } => PlannedStep::Sql {
                        target: match target {
                            Some(t) => render(&env, t, &ctx)?,
                            None => default_target.clone().ok_or("no target")??,
                        },
                        query: query.clone(),
                        params: params
                            .iter()
                            .map(|p| render(&env, p, &ctx))
                            .collect::<Result<_, _>>()?,
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                        max_rows: max_rows.unwrap_or(DEFAULT_MAX_ROWS),
                    },
                    StepSpec::Promql { query, timeout, .. } => PlannedStep::Promql {
                        query: render(&env, query, &ctx)?,
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                    },
                    StepSpec::Http {
                        url,
                        method,
                        expect_status,
                        timeout,
                        ..
                    } => PlannedStep::Http {
                        method: method.clone(),
                        url: template::render_url(url, &base, probes)?,
                        expect_status: *expect_status,
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                    },
                    StepSpec::Explain {
                        target,
                        query,
                        params,
                        min_rows,
                        timeout,
                        ..
                    } => PlannedStep::Explain {
                        target: match target {
                            Some(t) => render(&env, t, &ctx)?,
                            None => default_target.clone().ok_or("no target")??,
                        },
                        query: query.clone(),
                        params: params
                            .iter()
                            .map(|p| render(&env, p, &ctx))
                            .collect::<Result<_, _>>()?,
                        min_rows: {
                            let text = render(&env, min_rows, &ctx)?;
                            text.trim().parse().map_err(|_| {
                                format!("min_rows renders to `{text}`, not a number")
                            })?
                        },
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                    },
                    StepSpec::Redis {
                        target,
                        slowlog,
                        timeout,
                        ..
                    } => PlannedStep::Redis {
                        target: target.clone(),
                        slowlog: slowlog.unwrap_or(DEFAULT_SLOWLOG).min(128),
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                    },
                    StepSpec::Command {
                        program,
                        args,
                        pattern,
                        timeout,
                        max_lines,
                        ..
                    } => PlannedStep::Command {
                        program: program.clone(),
                        args: args
                            .iter()
                            .enumerate()
                            .map(|(j, a)| a.render(j, &env, &ctx))
                            .collect::<Result<_, _>>()?,
                        pattern: pattern.clone(),
                        timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                        max_lines: max_lines.unwrap_or(DEFAULT_MAX_ROWS),
                    },
                    StepSpec::Compose {
                        project,
                        logs,
                        since,
                        pattern,
                        timeout,
                        max_lines,
                        ..
                    } => PlannedStep::ComposeLogs {
                        project: project.clone(),
                        service: service_name(&env, logs, &ctx)?,
                        since: since.unwrap_or(DEFAULT_LOGS_SINCE),
                        pattern: pattern.clone(),
                        timeout: timeout.unwrap_or(DEFAULT_COMPOSE_TIMEOUT),
                        max_lines: max_lines.unwrap_or(DEFAULT_MAX_ROWS),
                    },
                    StepSpec::EnvFile { env_file, .. } => PlannedStep::EnvFile {
                        name: env_file.clone(),
                    },
                })
            })();
            (step.id().to_owned(), planned)
        })
        .collect()
}

/// Findings, actions and suggestions from the step outputs.
#[must_use]
pub fn evaluate(
    playbook: &Playbook,
    alert: &AlertContext,
    probes: &BTreeMap<String, String>,
    steps: BTreeMap<String, StepOutput>,
) -> Report {
    let env = template::environment();
    let mut base = base_context(playbook, alert, probes);
    if let Some(map) = base.as_object_mut() {
        map.insert(
            "steps".into(),
            serde_json::to_value(&steps).unwrap_or_default(),
        );
    }
    let ctx = template::context(&base);
    let mut errors = Vec::new();

    let mut findings = Vec::new();
    for f in &playbook.spec.findings {
        let f = &f.value;
        if applies(f.when.as_deref(), &env, &ctx, &mut errors) {
            match render(&env, &f.text, &ctx) {
                Ok(text) => findings.push(Finding {
                    severity: f.severity,
                    text: text.trim().to_owned(),
                    evidence: f.evidence.clone(),
                }),
                Err(e) => errors.push(e),
            }
        }
    }

    let default_target = playbook.spec.target.as_ref().map(|t| t.value.as_str());
    let mut actions = Vec::new();
    for a in &playbook.spec.actions {
        let a = &a.value;
        // With `for_each`, `when` is asked per row (it may read `row`).
        if a.for_each.is_none() && !applies(a.when.as_deref(), &env, &ctx, &mut errors) {
            continue;
        }
        let rows: Vec<Option<serde_json::Value>> = match &a.for_each {
            None => vec![None],
            Some(step) => steps
                .get(step)
                .map(|s| {
                    s.rows
                        .iter()
                        .map(|r| Some(serde_json::Value::Object(r.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let cap = a.max_targets.unwrap_or(usize::MAX);
        if rows.len() > cap {
            errors.push(format!(
                "action `{}`: {} targets, only the first {cap} offered (max_targets)",
                a.id,
                rows.len()
            ));
        }
        for (index, row) in rows.into_iter().take(cap).enumerate() {
            let ctx = match &row {
                Some(r) => with(&base, "row", r.clone()),
                None => ctx.clone(),
            };
            if row.is_some() && !applies(a.when.as_deref(), &env, &ctx, &mut errors) {
                continue;
            }
            let rendered = (|| -> Result<ActionInstance, String> {
                let all = |items: &[String]| {
                    items
                        .iter()
                        .map(|p| render(&env, p, &ctx))
                        .collect::<Result<Vec<_>, _>>()
                };
                let target = match (a.kind, a.target.as_deref().or(default_target)) {
                    (
                        ActionKind::Sql | ActionKind::RoleSetting | ActionKind::CreateIndex,
                        Some(t),
                    ) => Some(render(&env, t, &ctx)?),
                    _ => None,
                };
                Ok(ActionInstance {
                    id: a.id.clone(),
                    title: render(&env, &a.title, &ctx)?.trim().to_owned(),
                    kind: a.kind,
                    risk: a.risk,
                    approvers: a.approvers.clone(),
                    quorum: a.quorum,
                    target,
                    statement: a.statement.clone(),
                    params: all(&a.params)?,
                    program: a.program.clone(),
                    args: a
                        .args
                        .iter()
                        .enumerate()
                        .map(|(j, arg)| arg.render(j, &env, &ctx))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("action `{}`: {e}", a.id))?,
                    method: a.method.clone(),
                    url: a
                        .url
                        .as_deref()
                        .map(|u| {
                            let mut data = base.clone();
                            if let (Some(map), Some(row)) = (data.as_object_mut(), &row) {
                                map.insert("row".to_owned(), row.clone());
                            }
                            template::render_url(u, &data, probes)
                        })
                        .transpose()?,
                    body: a
                        .body
                        .as_deref()
                        .map(|b| render(&env, b, &ctx))
                        .transpose()?,
                    expect_status: a.expect_status,
                    duration_seconds: a.duration.map(|d| d.as_secs()),
                    setting: a.setting.clone(),
                    lock_timeout_ms: a
                        .lock_timeout
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    precondition: a
                        .precondition
                        .as_ref()
                        .map(|p| {
                            Ok::<_, String>(BoundQuery {
                                query: p.query.clone(),
                                params: all(&p.params)?,
                            })
                        })
                        .transpose()?,
                    automatic: a.automatic,
                    project: a.project.clone(),
                    service: a
                        .service
                        .as_deref()
                        .map(|s| service_name(&env, s, &ctx))
                        .transpose()
                        .map_err(|e| format!("action `{}`: {e}", a.id))?,
                    operation: a.operation,
                    env_file: a.env_file.clone(),
                    set: a
                        .set
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), render(&env, v, &ctx)?.trim().to_owned())))
                        .collect::<Result<_, String>>()?,
                    changes: Vec::new(),
                    verify: a.verify.clone(),
                    undoes: a.undoes.clone(),
                    row: row.as_ref().map(|_| index),
                })
            })();
            match rendered {
                Ok(instance) => actions.push(instance),
                Err(e) => errors.push(e),
            }
        }
    }

    let mut suggestions = Vec::new();
    for s in &playbook.spec.suggestions {
        let s = &s.value;
        if !applies(s.when.as_deref(), &env, &ctx, &mut errors) {
            continue;
        }
        let rendered = (|| -> Result<Suggestion, String> {
            Ok(Suggestion {
                title: render(&env, &s.title, &ctx)?.trim().to_owned(),
                text: s
                    .text
                    .as_deref()
                    .map(|t| render(&env, t, &ctx).map(|t| t.trim().to_owned()))
                    .transpose()?,
                command: s
                    .command
                    .as_deref()
                    .map(|t| render(&env, t, &ctx).map(|t| t.trim().to_owned()))
                    .transpose()?,
            })
        })();
        match rendered {
            Ok(s) => suggestions.push(s),
            Err(e) => errors.push(e),
        }
    }
    let summary = summarize(&playbook.spec.name, &findings, &steps);
    Report {
        matched: true,
        playbook: Some(playbook.spec.name.clone()),
        summary,
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        steps,
        findings,
        actions,
        suggestions,
        errors,
        measured: BTreeMap::new(),
        dry_run: playbook.spec.dry_run,
    }
}

/// A compose service name rendered from a template: letters, digits and
/// `_ . -`, not starting with `-` (a value from an alert never becomes an
/// option of compose).
fn service_name(
    env: &minijinja::Environment<'_>,
    source: &str,
    ctx: &Ctx,
) -> Result<String, String> {
    let name = render(env, source, ctx)?.trim().to_owned();
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "service `{source}` renders to `{name}`, which is not a compose service name"
        ))
    }
}

/// Whether `expression` holds on a diagnosis (an action's `verify`): the
/// same context as findings (`steps`, `vars`, `labels`).
///
/// # Errors
/// The expression's error.
pub fn holds(
    playbook: &Playbook,
    alert: &AlertContext,
    probes: &BTreeMap<String, String>,
    steps: &BTreeMap<String, StepOutput>,
    expression: &str,
) -> Result<bool, String> {
    let env = template::environment();
    let mut base = base_context(playbook, alert, probes);
    if let Some(map) = base.as_object_mut() {
        map.insert(
            "steps".into(),
            serde_json::to_value(steps).unwrap_or_default(),
        );
    }
    truthy(&env, expression, &template::context(&base))
}

/// A `when` that is absent, or true; an expression that fails counts as
/// false and is reported.
fn applies(
    when: Option<&str>,
    env: &minijinja::Environment<'_>,
    ctx: &Ctx,
    errors: &mut Vec<String>,
) -> bool {
    let Some(when) = when else {
        return true;
    };
    truthy(env, when, ctx).unwrap_or_else(|e| {
        errors.push(e);
        false
    })
}

/// The playbook's name and its most severe finding (the first of equals).
fn summarize(name: &str, findings: &[Finding], steps: &BTreeMap<String, StepOutput>) -> String {
    let failed = steps.values().filter(|s| !s.ok).count();
    let worst = findings
        .iter()
        .rev()
        .max_by_key(|f| f.severity)
        .map(|f| f.text.lines().next().unwrap_or_default());
    let mut summary = match worst {
        Some(text) => format!("{name}: {text}"),
        None => format!("{name}: no findings"),
    };
    if failed > 0 {
        summary.push_str(&format!(" ({failed} step(s) failed)"));
    }
    summary
}
