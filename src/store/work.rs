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
    /// Periodic, without incident: compare the firing incidents with
    /// Alertmanager's alerts and close those whose alert is gone.
    Reconcile,
    /// Delete what is past its retention window (periodic, no incident).
    Retention,
    /// Recount an open storm's members: update its message when they
    /// changed, resolve it when none fires. Re-armed while the storm fires.
    StormCheck,
    /// Measure again the steps an escalation threshold reads, escalate when
    /// it holds, and freshen the report's evidence. Re-armed every
    /// `recheck_every` while the incident fires and a level is left.
    Recheck,
    /// Send the incident's pending pages (triggers, acknowledges,
    /// resolves) to its pagers, in order.
    Page,
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
            Self::Reconcile => "reconcile",
            Self::Retention => "retention",
            Self::StormCheck => "storm_check",
            Self::Recheck => "recheck",
            Self::Page => "page",
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
            "reconcile" => Some(Self::Reconcile),
            "retention" => Some(Self::Retention),
            "storm_check" => Some(Self::StormCheck),
            "recheck" => Some(Self::Recheck),
            "page" => Some(Self::Page),
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
    /// The claim's lease token (`WORKER/N`): what fences finishing the row.
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

/// Which kinds a claim takes. Urgent kinds (`execute`, `escalate`,
/// `notify`: what someone is waiting for) are claimed before `diagnose` and
/// `verify`, whatever their due times, and the worker gives each lane its
/// own slots, so slow diagnoses never hold the urgent work back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `execute`, `escalate`, `notify`, `page`.
    Urgent,
    /// `diagnose`, `verify`, `recheck`, the periodic kinds (and kinds this
    /// version does not know).
    Background,
}

impl Lane {
    /// The lane number the claim SQL computes (`LANE`).
    fn number(self) -> i64 {
        match self {
            Self::Urgent => 0,
            Self::Background => 1,
        }
    }

    #[must_use]
    pub fn of(kind: &str) -> Self {
        match WorkKind::parse(kind) {
            Some(WorkKind::Execute | WorkKind::Escalate | WorkKind::Notify | WorkKind::Page) => {
                Self::Urgent
            }
            Some(
                WorkKind::Diagnose
                | WorkKind::Verify
                | WorkKind::Reconcile
                | WorkKind::Retention
                | WorkKind::StormCheck
                | WorkKind::Recheck,
            )
            | None => Self::Background,
        }
    }
}

/// What [`Store::take_target_slot`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSlot {
    /// The row now counts against the target; go ahead.
    Taken,
    /// The target already has its bound of running diagnoses.
    Full,
    /// This worker no longer holds the row's lease.
    LeaseLost,
}

impl Store {
    /// Leases up to `limit` due rows of any kind to `owner` until
    /// `now + lease_ms`, urgent kinds first (see [`Lane`]).
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
        self.claim(owner, now, lease_ms, limit, max_attempts, (0, 1))
            .await
    }

    /// [`Store::claim_work`] for one lane only.
    pub async fn claim_lane(
        &self,
        lane: Lane,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
        max_attempts: i64,
    ) -> Result<Vec<ClaimedWork>, StoreError> {
        let n = lane.number();
        self.claim(owner, now, lease_ms, limit, max_attempts, (n, n))
            .await
    }

    /// Each claim leases its rows under a token of its own, `OWNER/N`
    /// ([`ClaimedWork::owner`]), so that a handler of this process that outlived
    /// its lease cannot finish a row the same process claimed again.
    async fn claim(
        &self,
        owner: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
        max_attempts: i64,
        (first_lane, last_lane): (i64, i64),
    ) -> Result<Vec<ClaimedWork>, StoreError> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // SQLite has one writer at a time, so its update is the lock;
        // PostgreSQL's replicas skip rows another worker is claiming.
        let (sql, _writing) = match self {
            Self::Sqlite(_, lock) => (CLAIM_SQLITE, Some(lock.acquire().await)),
            Self::Postgres(_) => (CLAIM_POSTGRES, None),
        };
        let token = format!(
            "{owner}/{}",
            CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let rows = on_pool!(self, |pool| {
            sqlx::query(GIVE_UP_EXPIRED)
                .bind(now)
                .bind(max_attempts)
                .execute(pool)
                .await?;
            sqlx::query(sql)
                .bind(&token)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit)
                .bind(max_attempts)
                .bind(first_lane)
                .bind(last_lane)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| claimed(&row, &token))
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

    /// Gives the row back without spending an attempt, held back until
    /// `until`: the claim counted one, and waiting (a chat 429, pacing, an
    /// execution budget, a target at its bound) is not a failure, so
    /// `max_attempts` stays for real failures. The row keeps its due time,
    /// and with it its place in the queue (oldest first) and the queue's
    /// age metric; the expired-lease rule of the claim keeps it back until
    /// `until`. `reason` is kept as `last_error`. Fenced like
    /// [`Store::complete_work`].
    pub async fn defer_work(
        &self,
        work: &ClaimedWork,
        reason: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "update work set lease_owner = null, lease_until = $3, last_error = $4,
                        attempts = case when attempts > 0 then attempts - 1 else 0 end,
                        updated_at = $5
                  where id = $1 and lease_owner = $2 and state = 'pending'",
            )
            .bind(work.id)
            .bind(&work.owner)
            .bind(until)
            .bind(reason)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Counts the claimed row against `target` when fewer than `bound`
    /// other leased rows run a diagnosis there; across replicas, since the
    /// count and the mark are one transaction under a per-target lock
    /// (PostgreSQL advisory lock; SQLite's single writer).
    pub async fn take_target_slot(
        &self,
        work: &ClaimedWork,
        target: &str,
        bound: i64,
        now: Millis,
    ) -> Result<TargetSlot, StoreError> {
        Ok(transaction!(self, |conn| {
            if matches!(self, Self::Postgres(_)) {
                sqlx::query("select pg_advisory_xact_lock(7221002, hashtext($1))::text")
                    .bind(target)
                    .execute(&mut *conn)
                    .await?;
            }
            let taken = sqlx::query(
                "update work set target = $3, waits_for = null, target_limit = null
                  where id = $1 and lease_owner = $2 and state = 'pending'
                    and (select count(*) from work o
                          where o.target = $3 and o.id <> $1 and o.state = 'pending'
                            and o.lease_owner is not null and o.lease_until > $5) < $4",
            )
            .bind(work.id)
            .bind(&work.owner)
            .bind(target)
            .bind(bound)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if taken {
                TargetSlot::Taken
            } else {
                // Recorded on the waiting row too, so claims pass it over
                // while its target stays at the limit.
                let held = sqlx::query(
                    "update work set waits_for = $3, target_limit = $4
                      where id = $1 and lease_owner = $2 and state = 'pending'",
                )
                .bind(work.id)
                .bind(&work.owner)
                .bind(target)
                .bind(bound)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if held == 1 {
                    TargetSlot::Full
                } else {
                    TargetSlot::LeaseLost
                }
            }
        }))
    }

    /// Gives back every lease `owner` holds (graceful shutdown), so another
    /// worker can take the rows at once instead of after the lease expires.
    pub async fn release_leases(&self, owner: &str, now: Millis) -> Result<u64, StoreError> {
        // Every claim token of this owner: `OWNER/…`.
        let prefix = format!("{owner}/");
        let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "update work set lease_owner = null, lease_until = null, updated_at = $2
                  where substr(lease_owner, 1, $3) = $1 and state = 'pending'",
            )
            .bind(&prefix)
            .bind(now)
            .bind(length)
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

/// Numbers a row's lane (see [`Lane`]). The `work_lane_due_idx` index
/// (migration 0008) is on exactly this expression.
macro_rules! lane {
    () => {
        "(case when kind in ('execute', 'escalate', 'notify', 'page') then 0 else 1 end)"
    };
}

/// Leases due rows: `$1` the claim's token, `$2` lease end, `$3` now, `$4`
/// how many, `$5` the attempt limit, `$6`..`$7` the lanes to take, lowest
/// (most urgent) first, then the oldest due. An incident's `notify` rows
/// run one at a time, oldest first, so an older render never lands after a
/// newer one; its `execute` and `verify` rows too, so one action never runs
/// (or is judged) in two workers at once. "One at a time" is also checked
/// on its own (no other row of the kind holds a live lease): a handler
/// enqueues with its claim's time, so a younger row can be due before an
/// older one and start first. A claim clears `target`: a row
/// counts against a target only once it took a slot in this claim. A row that waits for its target
/// (`waits_for`, `target_limit`, recorded by [`Store::take_target_slot`]) is
/// passed over while the target's leased rows are at the limit, so a
/// backlog of diagnoses for one database is not claimed and given back
/// again and again. `$lock` ends the row selection (PostgreSQL: `for update
/// skip locked`).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "update work set lease_owner = $1, lease_until = $2,
        attempts = attempts + 1, updated_at = $3, target = null
  where id in (select id from work
                where state = 'pending' and due_at <= $3
                  and (lease_until is null or lease_until <= $3) and attempts < $5
                  and ",
            lane!(),
            " between $6 and $7
                  and (waits_for is null or lease_owner is not null
                       or (select count(*) from work t
                            where t.target = work.waits_for and t.lease_owner is not null
                              and t.lease_until > $3) < target_limit)
                  and (kind not in ('notify', 'execute', 'verify', 'escalate') or (id = (
                        select min(n.id) from work n
                         where n.incident_id = work.incident_id and n.kind = work.kind
                           and n.state = 'pending'
                           and (n.due_at <= $3 or n.lease_owner is not null))
                       and not exists (select 1 from work l
                         where l.incident_id = work.incident_id and l.kind = work.kind
                           and l.state = 'pending' and l.id <> work.id
                           and l.lease_owner is not null and l.lease_until > $3)))
                order by ",
            lane!(),
            ", due_at, id limit $4 ",
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

/// PostgreSQL: locks incident `$1`'s row, as an update of it would. A
/// transaction that fences a work row ([`MARK_DONE`]) and then changes the
/// row's incident runs it first (`finish_before_incident!`): a resolve
/// locks the incident and then cancels its pending work, and taking the two
/// locks in the other order deadlocked them (PostgreSQL aborts one after `deadlock_timeout`: a 503 to
/// Alertmanager, or a work row retried). SQLite's one writer needs nothing.
pub(super) const LOCK_INCIDENT: &str = "select 1 from incidents where id = $1 for no key update";

/// Numbers claims, for their lease tokens.
static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
