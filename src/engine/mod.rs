//! The engine drives incidents forward from rows in the store. Its
//! [`Worker`] claims due work into free slots of two lanes (urgent kinds
//! first, with slots of their own), runs each row's handler on its own task,
//! and commits the result fenced by the claim's lease. [`step`] is one pass,
//! public so tests drive it with their own clock; [`run`] keeps claiming
//! while handlers run, so a slow one holds only its own row and slot.

pub mod diagnose;
pub mod escalate;
pub mod execute;
pub mod notify;
pub mod page;
pub mod recheck;
pub mod reconcile;
pub mod retention;
pub mod storm;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::diagnose::Diagnoser;
use crate::domain::{Millis, now_millis};
use crate::playbook::Playbook;
use crate::store::{ClaimedWork, Lane, Store, StoreError, WorkKind};

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
    /// Reconciliation with Alertmanager's API.
    pub reconciler: Arc<reconcile::Reconciler>,
    /// The retention windows (`retention` work).
    pub retention: Arc<crate::config::RetentionSettings>,
    /// The pagers escalation levels name (`page` work).
    pub pagers: Arc<crate::paging::Pagers>,
}

/// Where the worker and the scheduler get the engine for each pass: a
/// fixed one (tests), or the live configuration that a reload replaces
/// ([`crate::reload::Live`]). Work already claimed keeps the engine it was
/// claimed with.
pub trait EngineSource: Send + Sync + 'static {
    fn engine(&self) -> Engine;
}

impl EngineSource for Engine {
    fn engine(&self) -> Engine {
        self.clone()
    }
}

/// How the worker leases and retries.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Identifies this worker's leases; unique per process.
    pub owner: String,
    pub lease: Duration,
    /// The most rows one claim takes.
    pub batch: i64,
    pub max_attempts: i64,
    /// How often to look for due work when nothing wakes the worker (other
    /// replicas' work, expired leases, retries).
    pub poll_interval: Duration,
    /// Handlers of `diagnose`, `verify`, `recheck` and the periodic kinds
    /// running at once.
    pub slots: usize,
    /// Handlers of `execute`, `escalate` and `notify` running at once, on
    /// top of `slots`.
    pub urgent_slots: usize,
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
            slots: 16,
            urgent_slots: 8,
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

/// A handler that ended, with the row it handled.
#[derive(Debug)]
pub struct Finished {
    pub work: i64,
    pub kind: String,
    /// Whether its outcome could be recorded.
    pub result: Result<(), StoreError>,
}

/// Claims due work into free slots and runs each claimed row's handler on
/// a task of its own. Each lane has its own slots (a semaphore, as
/// mini-redis caps its connections): urgent kinds always find one free
/// however many diagnoses run, and a claim never takes more rows than its
/// lane has free slots, so no claimed row waits in memory for another to
/// finish. A handler is given up when its lease runs out: by then another
/// worker may hold the row, and this one could not record anything anyway.
pub struct Worker {
    engine: Engine,
    settings: WorkerSettings,
    urgent: Arc<Semaphore>,
    background: Arc<Semaphore>,
    tasks: JoinSet<Finished>,
}

impl Worker {
    #[must_use]
    pub fn new(engine: Engine, settings: WorkerSettings) -> Self {
        Self {
            urgent: Arc::new(Semaphore::new(settings.urgent_slots.max(1))),
            background: Arc::new(Semaphore::new(settings.slots.max(1))),
            engine,
            settings,
            tasks: JoinSet::new(),
        }
    }

    /// The engine that rows claimed from now on run with (after a reload);
    /// running handlers keep theirs.
    pub fn use_engine(&mut self, engine: Engine) {
        self.engine = engine;
    }

    /// Handlers running now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a lane has a free slot.
    #[must_use]
    pub fn has_free_slot(&self) -> bool {
        self.urgent.available_permits() > 0 || self.background.available_permits() > 0
    }

    /// Claims due rows into each lane's free slots, the urgent lane first,
    /// and starts their handlers (which see `now` as their clock). Returns
    /// how many rows it claimed.
    pub async fn claim(&mut self, now: Millis) -> Result<usize, StoreError> {
        let lease_ms = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let mut count = 0;
        for (lane, slots) in [
            (Lane::Urgent, self.urgent.clone()),
            (Lane::Background, self.background.clone()),
        ] {
            let free = i64::try_from(slots.available_permits())
                .unwrap_or(i64::MAX)
                .min(self.settings.batch);
            if free <= 0 {
                continue;
            }
            let claimed = self
                .engine
                .store
                .claim_lane(
                    lane,
                    &self.settings.owner,
                    now,
                    lease_ms,
                    free,
                    self.settings.max_attempts,
                )
                .await?;
            count += claimed.len();
            for work in claimed {
                let permit = slots
                    .clone()
                    .try_acquire_owned()
                    .expect("a claim takes no more rows than its lane has free slots");
                let engine = self.engine.clone();
                let max_attempts = self.settings.max_attempts;
                let lease = self.settings.lease;
                self.tasks.spawn(async move {
                    let _slot = permit;
                    let result =
                        match tokio::time::timeout(lease, finish(&engine, &work, now, max_attempts))
                            .await
                        {
                            Ok(result) => result,
                            Err(_) => {
                                tracing::warn!(work = work.id, kind = %work.kind, ?lease, "handler outlived its lease; given up (the row is retried)");
                                metrics::counter!("remedy_work_total", "kind" => work.kind.clone(), "result" => "lease_expired")
                                    .increment(1);
                                Ok(())
                            }
                        };
                    Finished {
                        work: work.id,
                        kind: work.kind,
                        result,
                    }
                });
            }
        }
        Ok(count)
    }

    /// Waits for the next handler to end; `None` when none is running.
    pub async fn next_finished(&mut self) -> Option<Finished> {
        loop {
            match self.tasks.join_next().await? {
                Ok(finished) => return Some(finished),
                Err(panic) => {
                    tracing::error!(%panic, "a work handler panicked; its lease will expire and it is retried");
                }
            }
        }
    }

    /// A handler that has already ended, without waiting.
    fn try_finished(&mut self) -> Option<Option<Finished>> {
        match self.tasks.try_join_next()? {
            Ok(finished) => Some(Some(finished)),
            Err(panic) => {
                tracing::error!(%panic, "a work handler panicked; its lease will expire and it is retried");
                Some(None)
            }
        }
    }
}

/// Claims due work once (as much as the lanes have slots) and handles
/// every claimed row, concurrently, before it returns. Returns how many
/// rows were claimed.
pub async fn step(
    engine: &Engine,
    settings: &WorkerSettings,
    now: Millis,
) -> Result<usize, StoreError> {
    let mut worker = Worker::new(engine.clone(), settings.clone());
    let count = worker.claim(now).await?;
    let mut first_error = None;
    while let Some(finished) = worker.next_finished().await {
        if let Err(error) = finished.result {
            first_error.get_or_insert(error);
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
            // Waits count from the failure, not from the claim: a
            // diagnosis may have run for its whole deadline.
            let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
            let after = now.saturating_add(elapsed);
            if let Some(wait) = error.wait() {
                // Told to wait (429, pacing, a budget, a busy target): not
                // a failed attempt.
                let until =
                    after.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                tracing::debug!(work = work.id, %kind, %error, "work deferred");
                metrics::counter!("remedy_work_total", "kind" => kind, "result" => "deferred")
                    .increment(1);
                engine
                    .store
                    .defer_work(work, &error.to_string(), now, until)
                    .await?;
                return Ok(());
            }
            let retry_at = after.saturating_add(backoff_ms(work.attempts));
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
    /// Asked to wait (a chat 429 or the channel's pace, an execution
    /// budget, another replica's run): given back to the queue for exactly
    /// this long, not counted as an attempt.
    #[error("rate limited; retry after {0:?}")]
    RetryAfter(Duration),
    /// The diagnosis's target already runs its bound of diagnoses: given
    /// back to the queue, not counted as an attempt.
    #[error("target `{0}` is at max_concurrent_diagnoses; waiting in the queue")]
    TargetBusy(String),
    #[error("chat: {0}")]
    Chat(String),
    #[error("page: {0}")]
    Page(String),
    /// Another worker is posting this incident's first message.
    #[error("another worker is posting this message")]
    Busy,
}

impl WorkError {
    /// How long the row waits when this is a wait rather than a failure.
    fn wait(&self) -> Option<Duration> {
        match self {
            Self::RetryAfter(wait) => Some(*wait),
            Self::TargetBusy(_) => Some(TARGET_BUSY_WAIT),
            Self::UnknownKind(_)
            | Self::NoIncident
            | Self::IncidentMissing(_)
            | Self::Report(_)
            | Self::Store(_)
            | Self::Chat(_)
            | Self::Page(_)
            | Self::Busy => None,
        }
    }
}

/// How long a diagnosis waits when its target is at its bound before it
/// looks again (a diagnosis takes milliseconds to `playbooks.deadline`).
const TARGET_BUSY_WAIT: Duration = Duration::from_secs(1);

async fn handle(engine: &Engine, work: &ClaimedWork, now: Millis) -> Result<bool, WorkError> {
    let kind =
        WorkKind::parse(&work.kind).ok_or_else(|| WorkError::UnknownKind(work.kind.clone()))?;
    match kind {
        WorkKind::Diagnose => diagnose::run(engine, work, now).await,
        WorkKind::Notify => notify::run(engine, work, now).await,
        WorkKind::Execute => execute::run(engine, work, now).await,
        WorkKind::Verify => verify::run(engine, work, now).await,
        WorkKind::Escalate => escalate::run(engine, work, now).await,
        WorkKind::Reconcile => reconcile::run(engine, work, now).await,
        WorkKind::Retention => retention::run(engine, work, now).await,
        WorkKind::StormCheck => storm::run(engine, work, now).await,
        WorkKind::Recheck => recheck::run(engine, work, now).await,
        WorkKind::Page => page::run(engine, work, now).await,
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

/// Keeps claiming until `shutdown`: whenever a slot is free and work is
/// due, woken by `work_ready`, by a handler ending, or every poll
/// interval. On shutdown it lets running handlers finish, then gives its
/// leases back.
pub async fn run(
    source: impl EngineSource,
    settings: WorkerSettings,
    work_ready: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let engine = source.engine();
    let store = engine.store.clone();
    let owner = settings.owner.clone();
    let poll_interval = settings.poll_interval;
    let mut worker = Worker::new(engine, settings);
    loop {
        worker.use_engine(source.engine());
        let claimed = match worker.claim(now_millis()).await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "worker could not reach the store");
                0
            }
        };
        if claimed > 0 && worker.has_free_slot() {
            continue;
        }
        let busy = worker.in_flight() > 0;
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(finished) = worker.next_finished(), if busy => {
                report(&finished);
                // Claim once for every handler that has ended by now.
                while let Some(finished) = worker.try_finished() {
                    if let Some(finished) = finished {
                        report(&finished);
                    }
                }
            }
            () = work_ready.notified() => {}
            () = tokio::time::sleep(poll_interval) => {}
        }
    }
    while let Some(finished) = worker.next_finished().await {
        report(&finished);
    }
    match store.release_leases(&owner, now_millis()).await {
        Ok(released) => tracing::info!(released, "worker stopped"),
        Err(error) => {
            tracing::warn!(%error, "worker stopped without releasing its leases; they expire");
        }
    }
}

fn report(finished: &Finished) {
    if let Err(error) = &finished.result {
        tracing::error!(work = finished.work, kind = %finished.kind, %error, "work outcome not recorded; the lease expires and it is retried");
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
