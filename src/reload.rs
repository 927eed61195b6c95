//! Reloading settings, playbooks and the escalation matrix while serving
//! (`SIGHUP`, `POST /-/reload`), as Prometheus and Alertmanager do. A reload
//! checks everything first, with the checks of `remedy check`, and swaps in
//! one step: on any problem the running configuration stays, and the
//! problems are logged and returned. The engine is an immutable snapshot:
//! each piece of work runs on the snapshot current when it was claimed, so
//! none sees half of a reload. Settings that only take effect at start-up
//! (the listen address, the store) keep their running values and are
//! reported as needing a restart.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;

use crate::config::{ConfigError, Settings};
use crate::engine::{Engine, EngineSource};
use crate::escalation::Matrix;
use crate::http::IntakeAuth;
use crate::playbook::{self, Playbook, References};

/// Reads the settings again: the same layers as at start-up (defaults, the
/// `--config` file, `REMEDY__*` variables, `*_file` secrets).
pub type SettingsSource = Arc<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>;

/// One loaded configuration: the settings and everything built from them.
pub struct Current {
    pub settings: Arc<Settings>,
    pub engine: Engine,
    pub intake_auth: Arc<IntakeAuth>,
}

/// The configuration in force, shared by the HTTP handlers, the worker and
/// the escalation scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Arc<Current>>,
    /// None: reloads re-read the playbooks and the matrix under the
    /// settings in force (an app built from settings in a test).
    source: Option<SettingsSource>,
    /// One reload at a time (a SIGHUP and a POST together).
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// What a successful reload loaded.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub playbooks: usize,
    pub escalation_rows: usize,
    /// Settings that changed but take effect only after a restart; they
    /// keep their running values until then.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload was refused: every problem found, one a line
/// (`file:line:column: field: message` for playbooks and the matrix).
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ReloadError {
    pub problems: Vec<String>,
}

impl Live {
    /// The configuration built at start-up; the reload metrics say it
    /// loaded now.
    #[must_use]
    pub fn new(settings: Arc<Settings>, engine: Engine, source: Option<SettingsSource>) -> Self {
        let intake_auth = Arc::new(IntakeAuth::from_settings(&settings.intake));
        record_outcome(true);
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(Current {
                    settings,
                    engine,
                    intake_auth,
                })),
                source,
                reloading: Mutex::new(()),
            }),
        }
    }

    /// The configuration in force now.
    #[must_use]
    pub fn current(&self) -> Arc<Current> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        self.current().settings.clone()
    }

    /// Loads and checks the settings, the playbooks and the matrix, builds
    /// a new engine from them and swaps it in; on any problem nothing
    /// changes. Sets `remedy_config_last_reload_successful` either way.
    ///
    /// # Errors
    /// Every problem found, when the configuration stays as it was.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current();
        match self.load(&old) {
            Ok((current, reloaded)) => {
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(current);
                record_outcome(true);
                tracing::info!(
                    playbooks = reloaded.playbooks,
                    escalation_rows = reloaded.escalation_rows,
                    "configuration reloaded"
                );
                if !reloaded.needs_restart.is_empty() {
                    tracing::warn!(
                        "configuration reloaded, but these settings changed and take effect only after a restart (their running values stay): {}",
                        reloaded.needs_restart.join(", ")
                    );
                }
                Ok(reloaded)
            }
            Err(error) => {
                record_outcome(false);
                tracing::error!(
                    "configuration reload failed; the running configuration stays:\n{error}"
                );
                Err(error)
            }
        }
    }

    fn load(&self, old: &Current) -> Result<(Current, Reloaded), ReloadError> {
        let mut settings = match &self.inner.source {
            Some(source) => source().map_err(|e| ReloadError {
                problems: vec![format!("configuration invalid: {e}")],
            })?,
            None => (*old.settings).clone(),
        };
        let needs_restart = keep_restart_only(&old.settings, &mut settings);
        let (playbooks, matrix) =
            load_checked(&settings).map_err(|problems| ReloadError { problems })?;
        for warning in startup_warnings(&settings, &playbooks, &matrix) {
            tracing::warn!("{warning}");
        }
        let reloaded = Reloaded {
            playbooks: playbooks.len(),
            escalation_rows: matrix.policies.len(),
            needs_restart,
        };
        let engine = crate::app::rebuild_engine(&old.engine, &settings, playbooks, matrix)
            .map_err(|e| ReloadError {
                problems: vec![format!("{e:#}")],
            })?;
        let intake_auth = Arc::new(IntakeAuth::from_settings(&settings.intake));
        Ok((
            Current {
                settings: Arc::new(settings),
                engine,
                intake_auth,
            },
            reloaded,
        ))
    }
}

impl EngineSource for Live {
    fn engine(&self) -> Engine {
        self.current().engine.clone()
    }
}

fn record_outcome(ok: bool) {
    metrics::gauge!("remedy_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
    if ok {
        #[allow(
            clippy::cast_precision_loss,
            reason = "milliseconds since 1970 fit a float's 52 bits for ages"
        )]
        let seconds = crate::domain::now_millis() as f64 / 1000.0;
        metrics::gauge!("remedy_config_last_reload_success_timestamp_seconds").set(seconds);
    }
}

/// Loads and checks the playbooks and the matrix under `settings`, as
/// `remedy check` does: every problem of both, one a line.
///
/// # Errors
/// The problems, when there is any.
pub fn load_checked(settings: &Settings) -> Result<(Vec<Playbook>, Matrix), Vec<String>> {
    let refs = References::from_settings(settings);
    let playbooks = playbook::load_dir(&settings.playbooks.dir, &refs);
    let matrix = crate::escalation::load_file(&settings.escalation.file, settings);
    match (playbooks, matrix) {
        (Ok(playbooks), Ok(matrix)) => Ok((playbooks, matrix)),
        (playbooks, matrix) => {
            let mut problems: Vec<String> = Vec::new();
            if let Err(errors) = playbooks {
                problems.extend(errors.iter().map(ToString::to_string));
            }
            if let Err(errors) = matrix {
                problems.extend(errors.iter().map(ToString::to_string));
            }
            Err(problems)
        }
    }
}

/// Roles that playbooks or the matrix name but nobody holds on the
/// configured platform, one line per file.
#[must_use]
pub fn startup_warnings(
    settings: &Settings,
    playbooks: &[Playbook],
    matrix: &Matrix,
) -> Vec<String> {
    let mut out = crate::chat::unheld_roles(settings, playbooks);
    out.extend(matrix.unheld_roles(settings));
    out
}

/// The settings that are read only at start-up (the listening socket, the
/// store's pool, the intake queue, the worker's slots, logging, the
/// metrics upkeep, whether reconciliation is scheduled, the pages' key
/// prefix): those that changed
/// in `new` are named and given back their running values, so the
/// settings in force always say what is in effect.
fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    let (o, n) = (&old.server, &new.server);
    check("server.listen", o.listen != n.listen);
    check(
        "server.request_timeout",
        o.request_timeout != n.request_timeout,
    );
    check(
        "server.shutdown_grace",
        o.shutdown_grace != n.shutdown_grace,
    );
    check(
        "server.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
    );
    check(
        "server.max_connections",
        o.max_connections != n.max_connections,
    );
    check("server.source_rate", o.source_rate != n.source_rate);
    check("server.source_burst", o.source_burst != n.source_burst);
    let (o, n) = (&old.store, &new.store);
    check("store.url", o.url != n.url || o.url_file != n.url_file);
    check(
        "store.max_connections",
        o.max_connections != n.max_connections,
    );
    check(
        "store.acquire_timeout",
        o.acquire_timeout != n.acquire_timeout,
    );
    check(
        "store.sqlite_synchronous",
        o.sqlite_synchronous != n.sqlite_synchronous,
    );
    let (o, n) = (&old.intake, &new.intake);
    check(
        "intake.queue_capacity",
        o.queue_capacity != n.queue_capacity,
    );
    check("intake.max_batch", o.max_batch != n.max_batch);
    let (o, n) = (&old.worker, &new.worker);
    check("worker.enabled", o.enabled != n.enabled);
    check("worker.lease", o.lease != n.lease);
    check("worker.poll_interval", o.poll_interval != n.poll_interval);
    check("worker.batch", o.batch != n.batch);
    check("worker.max_attempts", o.max_attempts != n.max_attempts);
    check("worker.slots", o.slots != n.slots);
    check("worker.urgent_slots", o.urgent_slots != n.urgent_slots);
    check("log.format", old.log.format != new.log.format);
    check("log.filter", old.log.filter != new.log.filter);
    check(
        "metrics.upkeep_interval",
        old.metrics.upkeep_interval != new.metrics.upkeep_interval,
    );
    // Pages already sent carry the prefix in their key: a new one would
    // acknowledge and resolve them under a key PagerDuty never saw.
    check(
        "paging.dedup_prefix",
        old.paging.dedup_prefix != new.paging.dedup_prefix,
    );
    check(
        "reconcile.enabled",
        old.reconcile_enabled() != new.reconcile_enabled(),
    );

    new.server = old.server.clone();
    new.store = old.store.clone();
    new.intake.queue_capacity = old.intake.queue_capacity;
    new.intake.max_batch = old.intake.max_batch;
    new.worker = old.worker.clone();
    new.log = old.log.clone();
    new.metrics.upkeep_interval = old.metrics.upkeep_interval;
    new.reconcile.enabled = Some(old.reconcile_enabled());
    new.paging.dedup_prefix.clone_from(&old.paging.dedup_prefix);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("REMEDY__INTAKE__BEARER_TOKEN".to_owned(), "t".to_owned())]);
        Settings::load_from(None, env).expect("settings")
    }

    #[test]
    fn start_up_only_settings_are_named_and_keep_their_running_values() {
        let old = settings(&[]);
        let mut new = settings(&[
            ("REMEDY__SERVER__LISTEN", "127.0.0.1:1"),
            ("REMEDY__STORE__URL", "sqlite://elsewhere.db"),
            ("REMEDY__WORKER__SLOTS", "3"),
            ("REMEDY__EXECUTOR__DRY_RUN", "true"),
        ]);
        let changed = keep_restart_only(&old, &mut new);
        assert_eq!(changed, ["server.listen", "store.url", "worker.slots"]);
        assert_eq!(new.server.listen, old.server.listen);
        assert_eq!(new.store.url, old.store.url);
        assert_eq!(new.worker.slots, old.worker.slots);
        // A setting read at run time takes its new value.
        assert!(new.executor.dry_run);
    }

    #[test]
    fn unchanged_settings_need_no_restart() {
        let old = settings(&[]);
        let mut new = settings(&[]);
        assert!(keep_restart_only(&old, &mut new).is_empty());
    }
}
