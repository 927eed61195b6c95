//! Periodic jobs as durable work: a job of a kind is one pending `work` row
//! without an incident (`work_periodic_key` allows one), claimed like any
//! other work, so with several replicas each run happens on one of them.
//! Finishing a run and scheduling the next commit together.

use super::work::MARK_DONE;
use super::{Store, StoreError, WorkKind, transaction};
use crate::domain::Millis;
use crate::store::ClaimedWork;

/// Schedules the next run of a periodic job: inserts its pending row due at
/// `due_at` unless one is pending already (then nothing changes). Every
/// replica calls it at start-up; returns whether a row was added.
const SCHEDULE: &str = "insert into work (kind, incident_id, due_at, created_at, updated_at)
     values ($1, null, $2, $3, $3)
     on conflict do nothing";

impl Store {
    /// Makes sure a run of `kind` is pending, due at `due_at` if it has to
    /// be added. Returns whether one was added.
    pub async fn schedule_periodic(
        &self,
        kind: WorkKind,
        due_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(SCHEDULE)
                .bind(kind.as_str())
                .bind(due_at)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// Marks a claimed run done and schedules the next one at `next_due`, in
    /// one transaction, if this worker still holds the lease (else returns
    /// false and changes nothing: whoever took the lease over finishes it).
    pub async fn complete_periodic(
        &self,
        work: &ClaimedWork,
        kind: WorkKind,
        next_due: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let done = sqlx::query(MARK_DONE)
                .bind(work.id)
                .bind(&work.owner)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1;
            if done {
                sqlx::query(SCHEDULE)
                    .bind(kind.as_str())
                    .bind(next_due)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            done
        }))
    }
}
