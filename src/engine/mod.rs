//! The engine drives incidents forward from rows in the store. Its worker
//! claims due work, runs the step for the work's kind, and commits the
//! result fenced by its lease. [`step`] is one pass, public so tests drive it
//! with their own clock; [`run`] loops it until shutdown.

pub mod diagnose;
pub mod escalate;
pub mod execute;
pub mod notify;
pub mod storm;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::diagnose::Diagnoser;
use crate::domain::{Millis, now_millis};
use crate::playbook::Playbook;
use crate::store::{ClaimedWork, Store, StoreError, WorkKind};

/// What the worker needs: the store, the loaded playbooks and the means to
/// run their steps. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    pub store: Store,
    pub playbooks: Arc<Vec<Playbook>>,
    pub diagnoser: Arc<Diagnoser>,
    pub probes: Arc<BTreeMap<String, String>>,
    pub chat: Arc<crate::chat::Chat>,
    pub executor: Arc<crate::config::ExecutorSettings>,
    /// For `http` and `silence` actions.
    pub http: reqwest::Client,
    /// The escalation matrix and the scheduler's settings.
    pub matrix: Arc<crate::escalation::Matrix>,
    pub escalation: Arc<crate::config::EscalationSettings>,
    /// When incidents coalesce into a storm.
    pub storm: crate::store::StormRules,
    /// Wakes the timer scheduler when a trigger made a timer due now.
    pub timers_ready: Arc<Notify>,
}

/// How the worker leases and retries.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Identifies this worker's leases; unique per process.
    pub owner: String,
    pub lease: Duration,
    pub batch: i64,
    pub max_attempts: i64,
    /// How often to look for due work when nothing wakes the worker (other
    /// replicas' work, expired leases, retries).
    pub poll_interval: Duration,
}

impl WorkerSettings {
    #[must_use]
    pub fn new(owner: String) -> Self {
        Self {
            owner,
            lease: Duration::from_secs(60),
            batch: 16,
            max_attempts: 5,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A unique worker name: process id plus a random suffix.
#[must_use]
pub fn worker_name() -> String {
    format!(
        "remedy-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Claims due work once and handles every claimed row, concurrently (a slow
/// diagnosis must not hold the others past their leases). Returns how many
/// rows were claimed.
pub async fn step(
    engine: &Engine,
    settings: &WorkerSettings,
    now: Millis,
) -> Result<usize, StoreError> {
    let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
    let claimed = engine
        .store
        .claim_work(
            &settings.owner,
            now,
            lease_ms,
            settings.batch,
            settings.max_attempts,
        )
        .await?;
    let count = claimed.len();
    let mut tasks = tokio::task::JoinSet::new();
    for work in claimed {
        let engine = engine.clone();
        let max_attempts = settings.max_attempts;
        tasks.spawn(async move { finish(&engine, &work, now, max_attempts).await });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(panic) => {
                tracing::error!(%panic, "a work handler panicked; its lease will expire and it is retried");
            }
        }
    }
    first_error.map_or(Ok(count), Err)
}

/// Handles one claimed row and records its outcome.
async fn finish(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
    max_attempts: i64,
) -> Result<(), StoreError> {
    let kind = work.kind.clone();
    let started = std::time::Instant::now();
    match handle(engine, work, now).await {
        Ok(true) => {
            metrics::counter!("remedy_work_total", "kind" => kind, "result" => "done").increment(1);
        }
        Ok(false) => {
            tracing::warn!(work = work.id, %kind, "lease lost before completion; another worker owns this work");
            metrics::counter!("remedy_work_total", "kind" => kind, "result" => "lease_lost")
                .increment(1);
        }
        Err(error) => {
            // The backoff counts from the failure, not from the claim: a
            // diagnosis may have run for its whole deadline.
            let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            let wait = match &error {
                WorkError::RetryAfter(wait) => i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
                _ => backoff_ms(work.attempts),
            };
            let retry_at = now.saturating_add(elapsed).saturating_add(wait);
            tracing::warn!(work = work.id, %kind, attempt = work.attempts, %error, "work failed");
            metrics::counter!("remedy_work_total", "kind" => kind, "result" => "failed")
                .increment(1);
            engine
                .store
                .fail_work(work, &error.to_string(), now, retry_at, max_attempts)
                .await?;
        }
    }
    Ok(())
}

/// Failures of one piece of work, recorded on its row and retried.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("unknown work kind `{0}` (written by a newer remedy?)")]
    UnknownKind(String),
    #[error("work row has no incident")]
    NoIncident,
    #[error("incident {0} not found")]
    IncidentMissing(i64),
    #[error("report cannot be stored: {0}")]
    Report(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chat API asked to wait (429): retried after exactly this long.
    #[error("chat rate limited; retry after {0:?}")]
    RetryAfter(Duration),
    #[error("chat: {0}")]
    Chat(String),
    /// Another worker is posting this incident's first message.
    #[error("another worker is posting this message")]
    Busy,
}

async fn handle(engine: &Engine, work: &ClaimedWork, now: Millis) -> Result<bool, WorkError> {
    let kind =
        WorkKind::parse(&work.kind).ok_or_else(|| WorkError::UnknownKind(work.kind.clone()))?;
    match kind {
        WorkKind::Diagnose => diagnose::run(engine, work, now).await,
        WorkKind::Notify => notify::run(engine, work, now).await,
        WorkKind::Execute => execute::run(engine, work, now).await,
        WorkKind::Verify => verify::run(engine, work, now).await,
        WorkKind::Escalate => escalate::run(engine, work, now).await,
        WorkKind::StormCheck => storm::run(engine, work, now).await,
    }
}

/// The incident a piece of work is about.
async fn incident_of(
    engine: &Engine,
    work: &ClaimedWork,
) -> Result<(crate::domain::IncidentId, crate::store::IncidentRecord), WorkError> {
    let id = work.incident_id.ok_or(WorkError::NoIncident)?;
    let incident = engine
        .store
        .get_incident(id)
        .await?
        .ok_or(WorkError::IncidentMissing(id.0))?;
    Ok((id, incident))
}

fn backoff_ms(attempts: i64) -> i64 {
    let exponent = u32::try_from(attempts.clamp(0, 8)).unwrap_or(8);
    (1_000_i64 << exponent).min(300_000)
}

/// Runs [`step`] until `shutdown`, waking on `work_ready` or every poll
/// interval. On shutdown it gives its leases back.
pub async fn run(
    engine: Engine,
    settings: WorkerSettings,
    work_ready: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let store = engine.store.clone();
    loop {
        let claimed = match step(&engine, &settings, now_millis()).await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "worker could not reach the store");
                0
            }
        };
        if claimed > 0 {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = work_ready.notified() => {}
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
    match store.release_leases(&settings.owner, now_millis()).await {
        Ok(released) => tracing::info!(released, "worker stopped"),
        Err(error) => {
            tracing::warn!(%error, "worker stopped without releasing its leases; they expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(2), 4_000);
        assert_eq!(backoff_ms(50), 256_000);
        assert!(backoff_ms(8) <= 300_000);
    }
}
