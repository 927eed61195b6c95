//! The retention job: deletes what is past its window (finished work,
//! delivery records, resolved incidents with everything that belongs to
//! them, the audit log), batch after batch, then gives SQLite's freed pages
//! back. It is a periodic work row (`retention`), so with several replicas
//! one of them runs it at a time; [`run_once`] is one pass, public so tests
//! drive it with their own clock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Engine, WorkError};
use crate::config::RetentionSettings;
use crate::domain::Millis;
use crate::store::{ClaimedWork, Expiring, Store, StoreError, WorkKind};

/// Batches per table in one run, so a run stays well inside its lease even
/// on a store that has never been cleaned; what is left is taken by the next
/// run, due soon after ([`AGAIN_AFTER_MS`]).
const MAX_BATCHES: u32 = 100;

/// When a run stopped at [`MAX_BATCHES`], the next one is due this soon.
const AGAIN_AFTER_MS: i64 = 1_000;

/// What one run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows per table.
    pub rows: BTreeMap<&'static str, u64>,
    /// A table still had rows past its window when the run stopped.
    pub more: bool,
    /// SQLite pages given back to the file system.
    pub pages_freed: u64,
}

impl Deleted {
    #[must_use]
    pub fn total(&self) -> u64 {
        self.rows.values().sum()
    }

    fn add(&mut self, table: &'static str, rows: u64) {
        if rows > 0 {
            *self.rows.entry(table).or_default() += rows;
            metrics::counter!("remedy_retention_deleted_total", "table" => table).increment(rows);
        }
    }
}

/// One retention pass at `now`: each window that is not `0` deletes what is
/// older than `now - window`, in batches of `settings.batch` rows, each its
/// own transaction. After at least one full batch, SQLite's free pages are
/// released and its WAL truncated.
pub async fn run_once(
    store: &Store,
    settings: &RetentionSettings,
    now: Millis,
) -> Result<Deleted, StoreError> {
    let batch = settings.batch.max(1);
    let full = u64::try_from(batch).unwrap_or(u64::MAX);
    let mut deleted = Deleted::default();

    // Incidents first: their finished work goes with them.
    if let Some(before) = cutoff(now, settings.incidents) {
        let mut batches = 0;
        loop {
            let rows = store.delete_resolved_incidents(before, batch).await?;
            let incidents = rows
                .iter()
                .find(|(table, _)| *table == "incidents")
                .map_or(0, |(_, n)| *n);
            for (table, n) in rows {
                deleted.add(table, n);
            }
            batches += 1;
            if incidents < full {
                break;
            }
            if batches == MAX_BATCHES {
                deleted.more = true;
                break;
            }
        }
    }
    let expiring = [
        (Expiring::FinishedWork, settings.work),
        (Expiring::Deliveries, settings.deliveries),
        (Expiring::Audit, settings.audit),
    ];
    for (what, window) in expiring {
        let Some(before) = cutoff(now, window) else {
            continue;
        };
        for batches in 1..=MAX_BATCHES {
            let rows = store.delete_expired(what, before, batch).await?;
            deleted.add(what.table(), rows);
            if rows < full {
                break;
            }
            if batches == MAX_BATCHES {
                deleted.more = true;
            }
        }
    }

    if deleted.total() >= full {
        deleted.pages_freed = store.reclaim_space().await?;
    }
    Ok(deleted)
}

/// `now - window`, or `None` when the window is `0` (kept for ever).
fn cutoff(now: Millis, window: Duration) -> Option<Millis> {
    if window.is_zero() {
        return None;
    }
    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    Some(now.saturating_sub(window))
}

/// Makes sure a retention run is pending (every replica calls it at
/// start-up; one row is kept whoever calls). The first run is due at once.
pub async fn schedule(store: &Store, now: Millis) -> Result<bool, StoreError> {
    store.schedule_periodic(WorkKind::Retention, now, now).await
}

/// The `retention` work row: one pass, then the next one scheduled in the
/// same transaction that finishes this one. A pass that fails is logged and
/// the next one scheduled all the same (retention is best effort; the next
/// run picks up where this one stopped).
pub async fn run(engine: &Engine, work: &ClaimedWork, now: Millis) -> Result<bool, WorkError> {
    let settings = &engine.retention;
    let interval = i64::try_from(settings.interval.as_millis()).unwrap_or(i64::MAX);
    let next = match run_once(&engine.store, settings, now).await {
        Ok(deleted) => {
            if deleted.total() > 0 {
                tracing::info!(rows = ?deleted.rows, more = deleted.more, pages_freed = deleted.pages_freed, "retention deleted expired rows");
            }
            if deleted.more {
                now.saturating_add(AGAIN_AFTER_MS)
            } else {
                now.saturating_add(interval)
            }
        }
        Err(error) => {
            tracing::warn!(%error, "retention run failed; the next one is scheduled");
            now.saturating_add(interval)
        }
    };
    Ok(engine
        .store
        .complete_periodic(work, WorkKind::Retention, next, now)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::cutoff;
    use std::time::Duration;

    #[test]
    fn a_zero_window_keeps_everything() {
        assert_eq!(cutoff(1_000_000, Duration::ZERO), None);
        assert_eq!(cutoff(1_000_000, Duration::from_secs(60)), Some(940_000));
    }
}
