//! Logs and metrics: `tracing` to stderr (text or JSON), and one
//! process-wide Prometheus recorder rendered by our own `/metrics` route.
//! The recorder keeps every histogram sample until its upkeep folds them
//! into buckets, so [`Upkeep`] runs it on its own clock, scraped or not.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings, MetricsSettings};
use crate::domain::{Millis, now_millis};
use crate::store::Store;

/// Installs the global subscriber. `RUST_LOG` wins over the settings.
pub fn init_logging(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: piped or collected logs get no escape
        // sequences. The check is on stderr because that is where logs go.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide metrics recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(
                    Matcher::Full("remedy_intake_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding, tests):
            // then our handle renders only what we record through it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The metrics upkeep task: every `metrics.upkeep_interval` it runs the
/// recorder's upkeep (without it, memory grows with every request between
/// scrapes, and for ever when nobody scrapes), and at most every
/// `metrics.store_refresh` it reads the row count of each store table into
/// `remedy_store_rows{table}`. [`Upkeep::step`] is one pass, public so tests
/// drive it with their own clock.
pub struct Upkeep {
    handle: PrometheusHandle,
    store: Store,
    interval: std::time::Duration,
    store_refresh: Millis,
    rows_read_at: Option<Millis>,
}

impl Upkeep {
    #[must_use]
    pub fn new(handle: PrometheusHandle, store: Store, settings: &MetricsSettings) -> Self {
        Self {
            handle,
            store,
            interval: settings.upkeep_interval,
            store_refresh: i64::try_from(settings.store_refresh.as_millis()).unwrap_or(i64::MAX),
            rows_read_at: None,
        }
    }

    /// One pass at `now`. Returns whether the store's row counts were read.
    pub async fn step(&mut self, now: Millis) -> bool {
        self.handle.run_upkeep();
        if self
            .rows_read_at
            .is_some_and(|at| now.saturating_sub(at) < self.store_refresh)
        {
            return false;
        }
        // Counted as tried even when it fails: a store that is down is not
        // asked again on every pass.
        self.rows_read_at = Some(now);
        match self.store.table_rows().await {
            Ok(rows) => {
                for (table, count) in rows {
                    metrics::gauge!("remedy_store_rows", "table" => table).set(count as f64);
                }
                true
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot count store rows");
                false
            }
        }
    }

    /// Runs [`Upkeep::step`] every interval until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.step(now_millis()).await;
        }
    }
}
