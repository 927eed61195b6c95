//! Diagnostic step kinds, a closed set, one file each: `sql` (read-only, on a
//! named PostgreSQL target), `promql` (instant or range query), `http`
//! (probe), `redis` (read-only cache analysis on a named Redis), `explain`
//! (the plans of running statements, for missing indexes), `command`
//! (allow-listed program, argv only). Each yields a [`StepOutput`]
//! or a [`StepError`]; a failed step never stops the others.

pub mod command;
pub mod compose;
pub mod explain;
pub mod http;
pub mod own;
pub mod promql;
pub mod redis;
pub mod sql;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What one step produced, as the report shows it and templates read it
/// (`steps.<id>.rows`, `steps.<id>.value`, `steps.<id>.ok`, `steps.<id>.error`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepOutput {
    /// The step ran to completion. An `explain` step that could not plan a
    /// statement for lack of privilege is not ok either, and keeps the rows
    /// of the statements it did plan.
    pub ok: bool,
    /// Why it did not, when `ok` is false.
    pub error: Option<String>,
    /// sql: result rows; promql: one row per series (its labels plus
    /// `value`); http: one row with `status`, `expected`, `healthy`, `body`;
    /// command: one row per matching output line (`line`).
    pub rows: Vec<Map<String, Value>>,
    /// promql: the scalar, or the first series' value; http: the status
    /// code; command: the exit code.
    pub value: Option<f64>,
    /// Rows dropped by the step's cap.
    pub truncated: u64,
    pub duration_ms: u64,
}

impl StepOutput {
    /// A step that failed, with its reason.
    #[must_use]
    pub fn failed(error: &StepError, duration: Duration) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Runs planned steps against the configured targets, concurrently, under
/// one deadline for the whole diagnosis.
#[derive(Debug)]
pub struct Diagnoser {
    targets: std::collections::BTreeMap<String, sqlx::PgPool>,
    /// `targets.NAME.max_concurrent_diagnoses`.
    bounds: std::collections::BTreeMap<String, u32>,
    /// Per target, the backends its pool holds (remedy's own sessions).
    own: std::collections::BTreeMap<String, own::OwnSessions>,
    /// `[redis.NAME]`, parsed.
    redis: std::collections::BTreeMap<String, redis::RedisTarget>,
    prometheus_url: String,
    allowed_programs: std::collections::BTreeSet<std::path::PathBuf>,
    /// `[compose.NAME]` and `[env_files.NAME]`.
    compose: std::collections::BTreeMap<String, crate::config::ComposeSettings>,
    env_files: std::collections::BTreeMap<String, crate::config::EnvFileSettings>,
    /// `commands.env` with remedy's values, read once at start-up: the
    /// whole environment of every child process.
    child_env: Vec<(String, std::ffi::OsString)>,
    client: reqwest::Client,
    deadline: Duration,
}

impl Diagnoser {
    /// Target pools connect lazily: a database that is down fails its steps,
    /// not remedy's start.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        let mut targets = std::collections::BTreeMap::new();
        let mut bounds = std::collections::BTreeMap::new();
        let mut own = std::collections::BTreeMap::new();
        for (name, target) in &settings.targets {
            bounds.insert(name.clone(), target.max_concurrent_diagnoses);
            let options: sqlx::postgres::PgConnectOptions = target
                .url
                .expose()
                .parse()
                .map_err(|e| format!("targets.{name}.url: {e}"))?;
            // remedy's own sessions are these backends, not whoever sets
            // application_name = 'remedy' (kept below for people reading
            // pg_stat_activity, never trusted).
            let sessions = own::OwnSessions::default();
            let recorder = sessions.clone();
            let limit = usize::try_from(target.max_connections)
                .unwrap_or(usize::MAX)
                .saturating_mul(4)
                .max(16);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(target.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(move |conn, _meta| {
                    let recorder = recorder.clone();
                    Box::pin(async move { recorder.record(conn, limit).await })
                })
                // The system catalogs first, whatever the database's own
                // search_path says: a table or function named like
                // pg_stat_activity or pg_terminate_backend in `public` can
                // never stand in for the real one in a step, a
                // precondition, the protection check or an action.
                .connect_lazy_with(
                    options
                        .application_name("remedy")
                        .options([("search_path", "pg_catalog, \"$user\", public")]),
                );
            targets.insert(name.clone(), pool);
            own.insert(name.clone(), sessions);
        }
        let redis = settings
            .redis
            .iter()
            .map(|(name, r)| {
                redis::RedisTarget::parse(r.url.expose())
                    .map(|t| (name.clone(), t))
                    .map_err(|e| format!("redis.{name}.url: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            targets,
            bounds,
            own,
            redis,
            prometheus_url: settings.prometheus.url.trim_end_matches('/').to_owned(),
            allowed_programs: settings.commands.allow.iter().cloned().collect(),
            compose: settings.compose.clone(),
            env_files: settings.env_files.clone(),
            child_env: settings.commands.child_env(),
            client: crate::net::client(),
            deadline: settings.playbooks.deadline,
        })
    }

    /// The pool of a configured target (actions run on it too).
    #[must_use]
    pub fn target(&self, name: &str) -> Option<&sqlx::PgPool> {
        self.targets.get(name)
    }

    /// How many diagnoses may run against a configured target at once.
    #[must_use]
    pub fn diagnosis_bound(&self, name: &str) -> Option<u32> {
        self.bounds.get(name).copied()
    }

    /// remedy's own sessions on a configured target.
    #[must_use]
    pub fn own_sessions(&self, name: &str) -> Option<&own::OwnSessions> {
        self.own.get(name)
    }

    /// Whether `program` is in `commands.allow`.
    #[must_use]
    pub fn allows(&self, program: &std::path::Path) -> bool {
        self.allowed_programs.contains(program)
    }

    /// A configured compose project.
    #[must_use]
    pub fn compose(&self, name: &str) -> Option<&crate::config::ComposeSettings> {
        self.compose.get(name)
    }

    /// A configured environment file.
    #[must_use]
    pub fn env_file(&self, name: &str) -> Option<&crate::config::EnvFileSettings> {
        self.env_files.get(name)
    }

    /// The exact lines an `env_file` action would change, read from the
    /// file now: what its approvers see and its digest covers.
    ///
    /// # Errors
    /// An unknown file, a key it does not allow, an unreadable file, or a
    /// value that is not plain.
    pub async fn env_file_changes(
        &self,
        name: &str,
        set: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<crate::domain::env_file::EnvChange>, String> {
        let file = self
            .env_files
            .get(name)
            .ok_or_else(|| format!("unknown env file `{name}`"))?;
        if let Some(key) = set.keys().find(|k| !file.allowed_keys.contains(k)) {
            return Err(format!(
                "env_files.{name} does not allow `{key}` (allowed_keys: {})",
                file.allowed_keys.join(", ")
            ));
        }
        let text = tokio::fs::read_to_string(&file.path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.path.display()))?;
        crate::domain::env_file::plan(&text, set).map_err(|e| e.to_string())
    }

    /// The environment of every child process (`commands.env`).
    #[must_use]
    pub fn child_env(&self) -> &[(String, std::ffi::OsString)] {
        &self.child_env
    }

    /// Runs every step; a step that fails or times out is reported as such
    /// and never stops the others.
    pub async fn run(
        self: &std::sync::Arc<Self>,
        planned: Vec<(
            String,
            Result<crate::playbook::evaluate::PlannedStep, String>,
        )>,
    ) -> std::collections::BTreeMap<String, StepOutput> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut set = tokio::task::JoinSet::new();
        for (id, step) in planned {
            let me = self.clone();
            set.spawn(async move {
                let started = std::time::Instant::now();
                let output = match step {
                    Err(e) => Err(StepError::Failed(e)),
                    Ok(step) => match tokio::time::timeout_at(deadline, me.run_step(step)).await {
                        Ok(result) => result,
                        Err(_) => Err(StepError::Timeout(me.deadline)),
                    },
                };
                (
                    id,
                    output.unwrap_or_else(|e| StepOutput::failed(&e, started.elapsed())),
                )
            });
        }
        set.join_all().await.into_iter().collect()
    }

    async fn run_step(
        &self,
        step: crate::playbook::evaluate::PlannedStep,
    ) -> Result<StepOutput, StepError> {
        use crate::playbook::evaluate::PlannedStep;
        match step {
            PlannedStep::Sql {
                target,
                query,
                params,
                timeout,
                max_rows,
            } => {
                let pool = self
                    .targets
                    .get(&target)
                    .ok_or_else(|| StepError::Failed(format!("unknown target `{target}`")))?;
                let own = self.own.get(&target).cloned().unwrap_or_default();
                sql::query(pool, &own, &query, &params, timeout, max_rows).await
            }
            PlannedStep::Promql { query, timeout } => {
                if self.prometheus_url.is_empty() {
                    return Err(StepError::Failed(
                        "no Prometheus configured (prometheus.url)".into(),
                    ));
                }
                promql::query(&self.client, &self.prometheus_url, &query, timeout).await
            }
            PlannedStep::Http {
                method,
                url,
                expect_status,
                timeout,
            } => http::probe(&self.client, &method, &url, expect_status, timeout, 512).await,
            PlannedStep::Explain {
                target,
                query,
                params,
                min_rows,
                timeout,
            } => {
                let pool = self
                    .targets
                    .get(&target)
                    .ok_or_else(|| StepError::Failed(format!("unknown target `{target}`")))?;
                let own = self.own.get(&target).cloned().unwrap_or_default();
                explain::explain(pool, &own, &query, &params, min_rows, timeout).await
            }
            PlannedStep::Redis {
                target,
                slowlog,
                timeout,
            } => {
                let redis = self.redis.get(&target).ok_or_else(|| {
                    StepError::Failed(format!("unknown redis `{target}` ([redis.NAME])"))
                })?;
                redis::diagnose(redis, slowlog, timeout).await
            }
            PlannedStep::Command {
                program,
                args,
                pattern,
                timeout,
                max_lines,
            } => {
                let path = std::path::PathBuf::from(&program);
                if !self.allowed_programs.contains(&path) {
                    return Err(StepError::Failed(format!(
                        "`{program}` is not in commands.allow"
                    )));
                }
                let pattern = pattern
                    .as_deref()
                    .map(regex::Regex::new)
                    .transpose()
                    .map_err(|e| StepError::Failed(format!("bad pattern: {e}")))?;
                command::run(
                    &path,
                    &args,
                    &self.child_env,
                    pattern.as_ref(),
                    timeout,
                    1 << 20,
                    max_lines,
                )
                .await
            }
            PlannedStep::ComposeLogs {
                project,
                service,
                since,
                pattern,
                timeout,
                max_lines,
            } => {
                let settings = self.compose.get(&project).ok_or_else(|| {
                    StepError::Failed(format!("unknown compose project `{project}`"))
                })?;
                let invocation = compose::logs_invocation(settings, &service, since);
                if !self.allowed_programs.contains(&invocation.program) {
                    return Err(StepError::Failed(format!(
                        "`{}` is not in commands.allow",
                        invocation.program.display()
                    )));
                }
                let pattern = pattern
                    .as_deref()
                    .map(regex::Regex::new)
                    .transpose()
                    .map_err(|e| StepError::Failed(format!("bad pattern: {e}")))?;
                compose::logs(
                    &invocation,
                    &self.child_env,
                    pattern.as_ref(),
                    since,
                    timeout,
                    max_lines,
                )
                .await
            }
            PlannedStep::EnvFile { name } => {
                let started = std::time::Instant::now();
                let file = self
                    .env_files
                    .get(&name)
                    .ok_or_else(|| StepError::Failed(format!("unknown env file `{name}`")))?;
                let text = tokio::fs::read_to_string(&file.path).await.map_err(|e| {
                    StepError::Failed(format!("cannot read {}: {e}", file.path.display()))
                })?;
                Ok(StepOutput {
                    ok: true,
                    error: None,
                    rows: vec![crate::domain::env_file::values(&text, &file.allowed_keys)],
                    value: None,
                    truncated: 0,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }
}
