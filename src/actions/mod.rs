//! Running one approved action: the closed set of kinds, one file each.
//! Every run re-checks the action's precondition right before it acts,
//! refuses protected targets, and reports an outcome and an output excerpt
//! for the audit log and the incident's message.

pub mod command;
pub mod compose;
pub mod ddl;
pub mod env_file;
pub mod http;
pub mod silence;
pub mod sql;

use serde_json::{Value, json};

use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::playbook::ActionInstance;
use crate::playbook::model::ActionKind;

/// How a run ended: `done`, `failed`, `precondition_failed`, `refused`,
/// `dry_run`; and what it printed or why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: &'static str,
    pub output: String,
}

impl Outcome {
    fn new(state: &'static str, output: impl Into<String>) -> Self {
        Self {
            state,
            output: output.into(),
        }
    }
}

/// Exactly what an action runs, for the audit log.
#[must_use]
pub fn describe(action: &ActionInstance) -> Value {
    json!({
        "action": action.id,
        "kind": action.kind,
        "risk": action.risk,
        "target": action.target,
        "statement": action.statement,
        "params": action.params,
        "program": action.program,
        "args": action.args,
        "method": action.method,
        "url": action.url,
        "body": action.body,
        "expect_status": action.expect_status,
        "setting": action.setting,
        "lock_timeout_ms": action.lock_timeout_ms,
        "precondition": action.precondition,
        "project": action.project,
        "service": action.service,
        "operation": action.operation,
        "env_file": action.env_file,
        "changes": action.changes,
    })
}

/// What an action may need beyond itself.
pub struct Context<'a> {
    pub incident: i64,
    /// The alert's labels (a silence matches them).
    pub labels: &'a crate::domain::Labels,
    /// Who approved (`console:alice`, `slack:U…`).
    pub approvers: Vec<String>,
    pub alertmanager_url: Option<&'a str>,
    pub http: &'a reqwest::Client,
    /// Whole-request limit of `http` and `silence` actions.
    pub timeout: std::time::Duration,
    /// Bytes of an `http` action's response body read, at most
    /// (`executor.max_output_bytes`).
    pub max_output_bytes: usize,
}

/// Runs `action` (or, in dry-run, says what would run).
pub async fn run(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
    context: &Context<'_>,
) -> Outcome {
    if settings.dry_run {
        return Outcome::new("dry_run", format!("would run: {}", describe(action)));
    }
    match action.kind {
        ActionKind::Sql => sql::run(diagnoser, settings, action).await,
        ActionKind::Command => command::run(diagnoser, settings, action).await,
        ActionKind::Http => http::run(action, context).await,
        ActionKind::Silence => silence::run(action, context).await,
        ActionKind::RoleSetting => ddl::role_setting(diagnoser, settings, action).await,
        ActionKind::CreateIndex => ddl::create_index(diagnoser, action).await,
        ActionKind::Compose => compose::run(diagnoser, settings, action).await,
        ActionKind::EnvFile => env_file::run(diagnoser, settings, action).await,
    }
}
