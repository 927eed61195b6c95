//! Builds the shared state once, spawns the background tasks (the intake
//! writer and the work-queue worker), serves HTTP, and shuts down in order:
//! stop accepting, finish in-flight requests, drain the writer, give back
//! leases, close the store.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, SqliteSynchronous};
use crate::diagnose::Diagnoser;
use crate::engine::{self, Engine, WorkerSettings};
use crate::http::{self, AppState};
use crate::intake::Intake;
use crate::playbook::{self, Playbook, References};
use crate::reload::{Live, SettingsSource};
use crate::store::{Store, StoreOptions, redact_url};
use crate::telemetry;

/// A built application: its state (with the router built from it) and the
/// tasks it owns.
pub struct App {
    pub state: AppState,
    /// The engine built at start-up, for tests that drive [`engine::step`]
    /// themselves; the worker and the scheduler follow reloads through
    /// `state.live`.
    pub engine: Engine,
    pub work_ready: Arc<Notify>,
    writer: JoinHandle<()>,
}

impl App {
    /// Connects and migrates the store and starts the intake writer. The
    /// worker is started separately ([`App::spawn_worker`]) so tests can
    /// drive [`engine::step`] themselves.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_reloading(settings, None).await
    }

    /// As [`App::build`], with where a reload reads the settings again
    /// (none: a reload re-reads the playbooks and the matrix only).
    pub async fn build_reloading(
        settings: Settings,
        source: Option<SettingsSource>,
    ) -> anyhow::Result<Self> {
        let store = connect_store(&settings).await?;
        let engine = build_engine(&settings, Some(store.clone()))?;
        let work_ready = Arc::new(Notify::new());
        let (intake, writer) = Intake::start(
            store.clone(),
            settings.intake.queue_capacity,
            settings.intake.max_batch,
            work_ready.clone(),
        );
        let limiter =
            http::SourceLimiter::new(settings.server.source_rate, settings.server.source_burst);
        // The recorder first: the reload gauges are set from the start.
        let metrics = telemetry::metrics_handle();
        let state = AppState {
            store,
            intake,
            work_ready: work_ready.clone(),
            live: Live::new(Arc::new(settings), engine.clone(), source),
            metrics,
            probes: Arc::default(),
            limiter,
        };
        Ok(Self {
            state,
            engine,
            work_ready,
            writer,
        })
    }

    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    pub fn spawn_worker(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let settings = self.state.settings();
        let worker = &settings.worker;
        let settings = WorkerSettings {
            owner: engine::worker_name(),
            lease: worker.lease,
            batch: worker.batch,
            max_attempts: worker.max_attempts,
            poll_interval: worker.poll_interval,
            slots: usize::try_from(worker.slots).unwrap_or(usize::MAX),
            urgent_slots: usize::try_from(worker.urgent_slots).unwrap_or(usize::MAX),
        };
        tokio::spawn(engine::run(
            self.state.live.clone(),
            settings,
            self.work_ready.clone(),
            shutdown,
        ))
    }

    /// The escalation timer scheduler (runs beside the worker).
    pub fn spawn_scheduler(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(engine::escalate::run_scheduler(
            self.state.live.clone(),
            self.work_ready.clone(),
            shutdown,
        ))
    }

    /// Makes sure reconciliation's periodic run is pending (due at `now`
    /// when this adds it) when reconciliation is on; every replica calls it
    /// at start-up and the store keeps one pending run.
    pub async fn schedule_reconcile(&self, now: crate::domain::Millis) -> anyhow::Result<()> {
        if !self.engine.reconciler.enabled {
            return Ok(());
        }
        self.state
            .store
            .schedule_periodic(crate::store::WorkKind::Reconcile, now, now)
            .await
            .context("scheduling reconciliation")?;
        let peers: Vec<String> = self
            .engine
            .reconciler
            .urls
            .iter()
            .map(|u| redact_url(u))
            .collect();
        tracing::info!(?peers, "reconciliation with Alertmanager on");
        Ok(())
    }

    /// Metrics upkeep on its own clock, scraped or not (see
    /// [`telemetry::Upkeep`]).
    pub fn spawn_metrics_upkeep(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let upkeep = telemetry::Upkeep::new(
            self.state.metrics.clone(),
            self.state.store.clone(),
            &self.state.settings().metrics,
        );
        tokio::spawn(upkeep.run(shutdown))
    }

    /// Makes sure the periodic jobs (retention) have their pending row; every
    /// replica calls it at start-up and one row is kept.
    pub async fn schedule_periodic(&self) -> anyhow::Result<()> {
        engine::retention::schedule(&self.state.store, crate::domain::now_millis())
            .await
            .context("scheduling the retention job")?;
        Ok(())
    }

    /// Drops this handle's intake sender and waits for the writer to commit
    /// what is queued.
    pub async fn drain(self) -> Store {
        let store = self.state.store.clone();
        drop(self.state);
        if let Err(error) = self.writer.await {
            tracing::error!(%error, "intake writer ended abnormally");
        }
        store
    }
}

/// The engine: playbooks and the diagnoser. Without a store (`simulate`) it
/// gets an in-memory one it never writes to.
pub fn build_engine(settings: &Settings, store: Option<Store>) -> anyhow::Result<Engine> {
    let store = match store {
        Some(s) => s,
        None => Store::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_lazy("sqlite::memory:")
                .context("in-memory store")?,
            crate::store::WriteLock::default(),
        ),
    };
    let playbooks = load_playbooks(settings)?;
    let matrix = load_matrix(settings)?;
    assemble_engine(
        settings,
        store,
        playbooks,
        matrix,
        Arc::new(Notify::new()),
        crate::net::client(),
    )
}

/// A new engine for reloaded settings, playbooks and matrix, sharing the
/// store, the scheduler's wake-up and the HTTP client with `old`.
pub fn rebuild_engine(
    old: &Engine,
    settings: &Settings,
    playbooks: Vec<Playbook>,
    matrix: crate::escalation::Matrix,
) -> anyhow::Result<Engine> {
    assemble_engine(
        settings,
        old.store.clone(),
        playbooks,
        matrix,
        old.timers_ready.clone(),
        old.http.clone(),
    )
}

fn assemble_engine(
    settings: &Settings,
    store: Store,
    playbooks: Vec<Playbook>,
    matrix: crate::escalation::Matrix,
    timers_ready: Arc<Notify>,
    http: reqwest::Client,
) -> anyhow::Result<Engine> {
    Ok(Engine {
        store,
        playbooks: Arc::new(playbooks),
        diagnoser: Arc::new(Diagnoser::from_settings(settings).map_err(anyhow::Error::msg)?),
        probes: Arc::new(settings.probes.clone()),
        chat: Arc::new(
            crate::chat::Chat::from_settings(settings, crate::net::client())
                .map_err(anyhow::Error::msg)?,
        ),
        executor: Arc::new(settings.executor.clone()),
        http,
        matrix: Arc::new(matrix),
        escalation: Arc::new(settings.escalation.clone()),
        storm: settings.storm.rules(),
        timers_ready,
        reconciler: Arc::new(engine::reconcile::Reconciler::from_settings(
            settings,
            crate::net::client(),
        )),
        retention: Arc::new(settings.retention.clone()),
        pagers: Arc::new(crate::paging::Pagers::from_settings(
            settings,
            crate::net::client(),
        )),
    })
}

/// Loads and validates the escalation matrix; any problem stops start-up
/// with all of them listed. (Roles nobody holds are warned about once, by
/// `serve`.)
pub fn load_matrix(settings: &Settings) -> anyhow::Result<crate::escalation::Matrix> {
    crate::escalation::load_file(&settings.escalation.file, settings).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid escalation matrix:\n{}", list.join("\n"))
    })
}

/// Loads and validates every playbook; any problem stops start-up with all
/// of them listed (file:line:column: field: message).
pub fn load_playbooks(settings: &Settings) -> anyhow::Result<Vec<Playbook>> {
    let refs = References::from_settings(settings);
    playbook::load_dir(&settings.playbooks.dir, &refs).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid playbooks:\n{}", list.join("\n"))
    })
}

pub async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = settings.store.url.expose();
    let options = StoreOptions {
        // The intake writer keeps one connection for itself.
        max_connections: settings.store.pool_size(url).max(2),
        acquire_timeout: settings.store.acquire_timeout,
        sqlite_synchronous_full: settings.store.sqlite_synchronous == SqliteSynchronous::Full,
    };
    let store = Store::connect(url, &options)
        .await
        .with_context(|| format!("connecting to the store at {}", redact_url(url)))?;
    store.migrate().await.context("applying store migrations")?;
    Ok(store)
}

/// `remedy serve`: runs until SIGTERM or Ctrl-C; SIGHUP reloads the
/// configuration from `source`.
pub async fn serve(settings: Settings, source: Option<SettingsSource>) -> anyhow::Result<()> {
    if !settings.intake_has_credentials() {
        tracing::warn!(
            "intake.allow_unauthenticated is set: anyone who can reach the webhook can submit alerts"
        );
    }
    if settings.api.token.is_empty() {
        tracing::warn!(
            "api.token is not set: only personal tokens ([people.NAME]) can read the incidents API"
        );
    }
    let listen = settings.server.listen;
    let grace = settings.server.shutdown_grace;
    // Registered before the socket is bound: from the moment remedy
    // answers, a SIGHUP reloads instead of ending the process.
    let hangups = hangup_signals()?;
    let store_url = redact_url(settings.store.url.expose());
    let app = App::build_reloading(settings, source).await?;
    {
        let current = app.state.live.current();
        let settings = &current.settings;
        let engine = &current.engine;
        for warning in crate::reload::startup_warnings(settings, &engine.playbooks, &engine.matrix)
        {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            %listen,
            store = %store_url,
            platform = %format!("{:?}", settings.chat.platform).to_lowercase(),
            playbooks = engine.playbooks.len(),
            escalation_rows = engine.matrix.policies.len(),
            targets = settings.targets.len(),
            worker = settings.worker.enabled,
            "remedy starting"
        );
    }
    app.schedule_reconcile(crate::domain::now_millis()).await?;

    app.schedule_periodic().await?;
    let shutdown = CancellationToken::new();
    let upkeep = app.spawn_metrics_upkeep(shutdown.child_token());
    let reloader = tokio::spawn(reload_on_hangup(
        hangups,
        app.state.live.clone(),
        shutdown.child_token(),
    ));
    let worker_enabled = app.state.settings().worker.enabled;
    let worker = worker_enabled.then(|| app.spawn_worker(shutdown.child_token()));
    let scheduler = worker_enabled.then(|| app.spawn_scheduler(shutdown.child_token()));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let signal = shutdown.clone();
    let server = app.state.settings().server.clone();
    let limits = http::ConnectionLimits {
        max_connections: server.max_connections,
        header_read_timeout: server.header_read_timeout,
    };
    http::serve(listener, app.router(), limits, async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
        signal.cancel();
    })
    .await;

    shutdown.cancel();
    let finish = async {
        let store = app.drain().await;
        if let Some(Err(error)) = match worker {
            Some(worker) => Some(worker.await),
            None => None,
        } {
            tracing::error!(%error, "worker ended abnormally");
        }
        if let Some(scheduler) = scheduler
            && let Err(error) = scheduler.await
        {
            tracing::error!(%error, "escalation scheduler ended abnormally");
        }
        if let Err(error) = reloader.await {
            tracing::error!(%error, "reload listener ended abnormally");
        }
        if let Err(error) = upkeep.await {
            tracing::error!(%error, "metrics upkeep ended abnormally");
        }
        store.close().await;
    };
    if tokio::time::timeout(grace, finish).await.is_err() {
        tracing::warn!(?grace, "shutdown grace elapsed; leases left to expire");
    }
    tracing::info!("remedy stopped");
    Ok(())
}

/// SIGHUP, as Prometheus and Alertmanager take it: reload the configuration.
#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> anyhow::Result<Hangups> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")
}

#[cfg(not(unix))]
fn hangup_signals() -> anyhow::Result<Hangups> {
    Ok(())
}

/// Reloads on every SIGHUP until `shutdown` (the outcome is logged and in
/// the `remedy_config_last_reload_*` metrics).
#[cfg(unix)]
async fn reload_on_hangup(mut hangups: Hangups, live: Live, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = hangups.recv() => {
                if received.is_none() {
                    break;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let live = live.clone();
                // Reading files and building pools: off the async threads.
                // `reload` logs its outcome itself.
                let _ = tokio::task::spawn_blocking(move || live.reload()).await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup((): Hangups, _live: Live, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
