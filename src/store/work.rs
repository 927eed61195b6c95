//! The work queue: rows with a kind, a due time, a lease and an attempt
//! count. Workers claim due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! replicas never claim the same row), and only the lease holder may finish
//! one, so work whose lease expired is done once by whoever holds it now.

use sqlx::Row;

use super::{Store, StoreError, on_pool, transaction};
use crate::domain::{IncidentId, Millis};

/// The kinds of work remedy queues. Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// Run the matching playbook's diagnosis for a newly opened incident.
    Diagnose,
    /// Post the incident's chat message, or bring it up to date.
    Notify,
    /// Run the incident's approved actions.
    Execute,
    /// Re-run the diagnosis after an action and judge its effect.
    Verify,
    /// Post the pings of fired escalation timers in the incident's thread.
    Escalate,
    /// Recount an open storm's members: update its message when they
    /// changed, resolve it when none fires. Re-armed while the storm fires.
    StormCheck,
}

impl WorkKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Diagnose => "diagnose",
            Self::Notify => "notify",
            Self::Execute => "execute",
            Self::Verify => "verify",
            Self::Escalate => "escalate",
            Self::StormCheck => "storm_check",
        }
    }

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "diagnose" => Some(Self::Diagnose),
            "notify" => Some(Self::Notify),
            "execute" => Some(Self::Execute),
            "verify" => Some(Self::Verify),
            "escalate" => Some(Self::Escalate),
            "storm_check" => Some(Self::StormCheck),
            _ => None,
        }
    }
}

/// A row this worker holds a lease on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedWork {
    pub id: i64,
    /// Raw so that a kind written by a newer remedy is failed, not lost.
    pub kind: String,
    pub incident_id: Option<IncidentId>,
    /// Including this one.
    pub attempts: i64,
    pub owner: String,
}

/// Pending work, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Pending rows, due or not.
    pub depth: i64,
    /// How long the oldest due row has waited, 0 when none is due.
    pub oldest_due_age_ms: i64,
}

impl Store {
    /// Leases up to `limit` due rows to `owner` until `now + lease_ms`.
    /// A row whose last allowed attempt lost its lease (the worker crashed
    /// or hung on it) is failed for good instead, so work that kills its
    /// worker is not retried forever.
    pub async fn claim_work(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
        max_attempts: i64,
    ) -> Result<Vec<ClaimedWork>, StoreError> {
        // SQLite has one writer at a time, so its update is the lock;
        // PostgreSQL's replicas skip rows another worker is claiming.
        let (sql, _writing) = match self {
            Self::Sqlite(_, lock) => (CLAIM_SQLITE, Some(lock.acquire().await)),
            Self::Postgres(_) => (CLAIM_POSTGRES, None),
        };
        let rows = on_pool!(self, |pool| {
            sqlx::query(GIVE_UP_EXPIRED)
                .bind(now)
                .bind(max_attempts)
                .execute(pool)
                .await?;
            sqlx::query(sql)
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit)
                .bind(max_attempts)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| claimed(&row, owner))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Marks claimed work done, if this worker still holds its lease.
    /// Returns false when the lease was lost (expired and taken over).
    pub async fn complete_work(&self, work: &ClaimedWork, now: Millis) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(MARK_DONE)
                .bind(work.id)
                .bind(&work.owner)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// Records a failed attempt: due again at `retry_at`, or `failed` for good
    /// once `max_attempts` is reached. Fenced like [`Store::complete_work`].
    pub async fn fail_work(
        &self,
        work: &ClaimedWork,
        error: &str,
        now: Millis,
        retry_at: Millis,
        max_attempts: i64,
    ) -> Result<bool, StoreError> {
        let state = if work.attempts >= max_attempts {
            "failed"
        } else {
            "pending"
        };
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "update work set state = $3, due_at = $4, last_error = $5,
                        lease_owner = null, lease_until = null, updated_at = $6
                  where id = $1 and lease_owner = $2 and state = 'pending'",
            )
            .bind(work.id)
            .bind(&work.owner)
            .bind(state)
            .bind(retry_at)
            .bind(error)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Gives back every lease `owner` holds (graceful shutdown), so another
    /// worker can take the rows at once instead of after the lease expires.
    pub async fn release_leases(&self, owner: &str, now: Millis) -> Result<u64, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "update work set lease_owner = null, lease_until = null, updated_at = $2
                  where lease_owner = $1 and state = 'pending'",
            )
            .bind(owner)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        }))
    }

    pub async fn queue_stats(&self, now: Millis) -> Result<QueueStats, StoreError> {
        let (depth, oldest): (i64, Option<i64>) = on_pool!(self, |pool| {
            sqlx::query_as(
                "select count(*), min(case when due_at <= $1 then due_at end)
                   from work where state = 'pending'",
            )
            .bind(now)
            .fetch_one(pool)
            .await?
        });
        Ok(QueueStats {
            depth,
            oldest_due_age_ms: oldest.map_or(0, |due| (now - due).max(0)),
        })
    }
}

/// Fails rows whose last allowed attempt's lease expired: `$1` now, `$2`
/// the attempt limit.
const GIVE_UP_EXPIRED: &str = "update work set state = 'failed', lease_owner = null,
        lease_until = null, updated_at = $1,
        last_error = 'gave up: the lease of the last allowed attempt expired (worker crashed or hung)'
  where state = 'pending' and attempts >= $2 and lease_until <= $1";

/// Leases due rows: `$1` owner, `$2` lease end, `$3` now, `$4` how many,
/// `$5` the attempt limit. An incident's `notify` rows run one at a time,
/// oldest first, so an older render never lands after a newer one; its
/// `execute` and `verify` rows too, so one action never runs (or is judged)
/// in two workers at once. `$lock`
/// ends the row selection (PostgreSQL: `for update skip locked`).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "update work set lease_owner = $1, lease_until = $2,
        attempts = attempts + 1, updated_at = $3
  where id in (select id from work
                where state = 'pending' and due_at <= $3
                  and (lease_until is null or lease_until <= $3) and attempts < $5
                  and (kind not in ('notify', 'execute', 'verify', 'escalate') or id = (
                        select min(n.id) from work n
                         where n.incident_id = work.incident_id and n.kind = work.kind
                           and n.state = 'pending'
                           and (n.due_at <= $3 or n.lease_owner is not null)))
                order by due_at, id limit $4 ",
            $lock,
            ")
  returning id, kind, incident_id, attempts"
        )
    };
}

/// SQLite has one writer at a time, so its update is the lock.
const CLAIM_SQLITE: &str = claim_sql!("");

/// Replicas skip rows another worker is claiming.
const CLAIM_POSTGRES: &str = claim_sql!("for update skip locked");

/// Finishes a row only for its current lease holder. `$1` id, `$2` owner,
/// `$3` now. Shared with the store functions that commit a step's effect
/// and its completion together.
pub(super) const MARK_DONE: &str = "update work set state = 'done', lease_owner = null,
        lease_until = null, last_error = null, updated_at = $3
  where id = $1 and lease_owner = $2 and state = 'pending'";

fn claimed<R>(row: &R, owner: &str) -> Result<ClaimedWork, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    Ok(ClaimedWork {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        incident_id: row
            .try_get::<Option<i64>, _>("incident_id")?
            .map(IncidentId),
        attempts: row.try_get("attempts")?,
        owner: owner.to_owned(),
    })
}
