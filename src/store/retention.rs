//! Retention's SQL: deleting rows past their window in small batches, each
//! its own transaction so no lock is held for long, giving SQLite's freed
//! pages back to the file system, and the row counts `/metrics` shows. The
//! caller (`engine::retention`) chooses the cut-offs; nothing here reads the
//! clock.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, Row};

use super::{AuditEntry, Store, StoreError, on_pool, record_event, transaction};
use crate::domain::{IncidentId, Millis};

/// Everything that belongs to an incident, children before their parents:
/// each table with the condition that selects the rows of the incidents
/// being deleted (`{ids}` stands for a parenthesised list or subquery of
/// their ids, bound as one JSON array). A new table that
/// references `incidents` (or one of these tables) adds one line here; a
/// missing line makes the incident's delete fail on its foreign key, so
/// retention never leaves orphans behind. The audit log is not here: it is
/// kept on its own clock (`retention.audit`).
pub const INCIDENT_CHILDREN: &[(&str, &str)] = &[
    (
        "decisions",
        "approval_id in (select id from approvals where incident_id in {ids})",
    ),
    ("executions", "incident_id in {ids}"),
    ("approvals", "incident_id in {ids}"),
    ("chat_messages", "incident_id in {ids}"),
    ("escalation_timers", "incident_id in {ids}"),
    ("escalations", "incident_id in {ids}"),
    ("pages", "incident_id in {ids}"),
    ("incident_events", "incident_id in {ids}"),
    ("incident_absences", "incident_id in {ids}"),
    // A storm goes with its members (they are never selected alone).
    (
        "storms",
        "incident_id in {ids} or representative_id in {ids}",
    ),
    ("work", "incident_id in {ids}"),
];

/// The tables `remedy_store_rows{table}` counts.
pub const STORE_TABLES: &[&str] = &[
    "notifications",
    "incidents",
    "incident_events",
    "incident_absences",
    "storms",
    "work",
    "approvals",
    "decisions",
    "chat_messages",
    "executions",
    "audit_log",
    "escalations",
    "escalation_timers",
    "pages",
    "action_suspensions",
];

/// Resolved incidents past the window, oldest first, never one marked
/// `keep`: `$1` the cut-off, `$2` how many. `$lock` ends the statement
/// (PostgreSQL: skip rows another transaction holds, e.g. one marking an
/// incident `keep` right now).
///
/// A member of a resolved storm is not selected alone: it goes with its
/// storm. A member of a storm still open (one that never ends, a noisy
/// group always over the threshold) is, so such a storm does not keep
/// every member it ever had; the storm counts it in `expired_members`.
/// A storm's representative stays as long as its storm.
macro_rules! expired_incidents {
    ($lock:literal) => {
        concat!(
            "select id from incidents
              where status = 'resolved' and resolved_at < $1 and not keep
                and (storm_id is null
                     or exists (select 1 from storms s
                                 where s.incident_id = incidents.storm_id
                                   and s.resolved_at is null))
                and not exists (select 1 from storms s where s.representative_id = incidents.id)
              order by resolved_at, id limit $2 ",
            $lock
        )
    };
}

/// What `{ids}` stands for on each store: the batch's incident ids, bound
/// as one JSON array in `$1`. The statements' text is then the same whatever
/// the batch holds, so each is prepared once per connection and reused
/// (cached like any other statement) instead of a statement per batch size
/// being compiled, run once and thrown away on every retention pass: on
/// SQLite those compiled programs live in remedy's own heap, and their churn
/// was what kept its RSS rising in the soak.
pub(super) const IDS_SQLITE: &str = "(select value from json_each($1))";
pub(super) const IDS_POSTGRES: &str =
    "(select value::bigint from jsonb_array_elements_text($1::jsonb))";

/// The fixed statements that delete a batch of incidents on one store.
struct IncidentDeletes {
    /// The members of the storms among the ids.
    members: String,
    /// Counts the members among the ids on their (open) storms.
    count_expired: String,
    /// Unlinks the ids from their storms before the storms go.
    unlink: String,
    /// One delete per table, children first, `incidents` last.
    deletes: Vec<(&'static str, String)>,
}

impl IncidentDeletes {
    fn with(ids: &str) -> Self {
        let parent = ("incidents", "id in {ids}");
        Self {
            members: format!("select id from incidents where storm_id in {ids}"),
            count_expired: format!(
                "update storms set expired_members = expired_members
                        + (select count(*) from incidents m
                            where m.storm_id = storms.incident_id and m.id in {ids})
                  where incident_id in (select storm_id from incidents
                                         where id in {ids} and storm_id is not null)"
            ),
            unlink: format!("update incidents set storm_id = null where id in {ids}"),
            deletes: INCIDENT_CHILDREN
                .iter()
                .chain([&parent])
                .map(|&(table, condition)| {
                    (
                        table,
                        format!(
                            "delete from {table} where {}",
                            condition.replace("{ids}", ids)
                        ),
                    )
                })
                .collect(),
        }
    }
}

static SQLITE_INCIDENT_DELETES: LazyLock<IncidentDeletes> =
    LazyLock::new(|| IncidentDeletes::with(IDS_SQLITE));
static POSTGRES_INCIDENT_DELETES: LazyLock<IncidentDeletes> =
    LazyLock::new(|| IncidentDeletes::with(IDS_POSTGRES));

/// Incident ids as the JSON array `{ids}` reads.
pub(super) fn id_list(ids: &[i64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

/// Finished work rows (`done`, `failed`, `cancelled`) last updated before
/// `$1`, at most `$2`.
const DELETE_FINISHED_WORK: &str = "delete from work where id in (
    select id from work where state <> 'pending' and updated_at < $1
     order by updated_at limit $2)";

/// Delivery records (duplicate counting) last seen before `$1`, at most `$2`.
const DELETE_DELIVERIES: &str = "delete from notifications where key in (
    select key from notifications where last_seen_at < $1
     order by last_seen_at limit $2)";

/// Audit entries written before `$1`, at most `$2`.
const DELETE_AUDIT: &str = "delete from audit_log where id in (
    select id from audit_log where at < $1 order by at limit $2)";

/// Rows that expire on their own, independently of any incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    /// Finished work rows, by last update (`retention.work`).
    FinishedWork,
    /// Delivery records, by last delivery (`retention.deliveries`).
    Deliveries,
    /// The audit log, by entry time (`retention.audit`).
    Audit,
}

impl Expiring {
    #[must_use]
    pub fn table(self) -> &'static str {
        match self {
            Self::FinishedWork => "work",
            Self::Deliveries => "notifications",
            Self::Audit => "audit_log",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::FinishedWork => DELETE_FINISHED_WORK,
            Self::Deliveries => DELETE_DELIVERIES,
            Self::Audit => DELETE_AUDIT,
        }
    }
}

impl Store {
    /// Deletes up to `batch` resolved incidents whose resolve is older than
    /// `before` (never one marked `keep`), with everything that belongs to
    /// them, in one transaction. Returns the rows deleted per table
    /// (`incidents` last); empty when nothing was due.
    pub async fn delete_resolved_incidents(
        &self,
        before: Millis,
        batch: i64,
    ) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let select = match self {
            Self::Sqlite(..) => expired_incidents!(""),
            Self::Postgres(_) => expired_incidents!("for update skip locked"),
        };
        let statements = match self {
            Self::Sqlite(..) => &*SQLITE_INCIDENT_DELETES,
            Self::Postgres(_) => &*POSTGRES_INCIDENT_DELETES,
        };
        Ok(transaction!(self, |conn| {
            let mut ids: Vec<i64> = sqlx::query_scalar(select)
                .bind(before)
                .bind(batch)
                .fetch_all(&mut *conn)
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // A storm's members (resolved before it) go with it.
            let members: Vec<i64> = sqlx::query_scalar(statements.members.as_str())
                .bind(id_list(&ids))
                .fetch_all(&mut *conn)
                .await?;
            ids.extend(members);
            let ids = id_list(&ids);
            sqlx::query(statements.count_expired.as_str())
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
            sqlx::query(statements.unlink.as_str())
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
            let mut deleted = Vec::with_capacity(statements.deletes.len());
            for (table, sql) in &statements.deletes {
                let rows = sqlx::query(sql.as_str())
                    .bind(&ids)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                deleted.push((*table, rows));
            }
            deleted
        }))
    }

    /// Deletes up to `batch` rows of one kind that are older than `before`,
    /// in one transaction. Returns how many.
    pub async fn delete_expired(
        &self,
        what: Expiring,
        before: Millis,
        batch: i64,
    ) -> Result<u64, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(what.sql())
                .bind(before)
                .bind(batch)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        }))
    }

    /// SQLite: gives the pages freed by deletions back to the file system
    /// (`incremental_vacuum`, a slice at a time so intake is never held up
    /// for long) and truncates the WAL. Returns the pages freed. PostgreSQL:
    /// nothing to do, autovacuum reuses the space (returns 0).
    pub async fn reclaim_space(&self) -> Result<u64, StoreError> {
        /// Pages freed per write transaction (4 MiB of 4 KiB pages).
        const SLICE: i64 = 1024;
        let Self::Sqlite(pool, lock) = self else {
            return Ok(0);
        };
        let mut freed = 0_u64;
        let mut last_free = i64::MAX;
        loop {
            let _writing = lock.acquire().await;
            let mut conn = pool.acquire().await?;
            let free: i64 = sqlx::query_scalar("pragma freelist_count")
                .fetch_one(&mut *conn)
                .await?;
            // Stops when nothing is left, or when a pass freed nothing (a
            // file whose auto_vacuum is off, where the pragma is a no-op).
            if free == 0 || free >= last_free {
                break;
            }
            last_free = free;
            sqlx::query(AssertSqlSafe(format!("pragma incremental_vacuum({SLICE})")))
                .execute(&mut *conn)
                .await?;
            freed += u64::try_from(free.min(SLICE)).unwrap_or(0);
        }
        let _writing = lock.acquire().await;
        sqlx::query("pragma wal_checkpoint(truncate)")
            .execute(pool)
            .await?;
        Ok(freed)
    }

    /// Rows per table in [`STORE_TABLES`], for `/metrics`.
    pub async fn table_rows(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut out = Vec::with_capacity(STORE_TABLES.len());
        for &table in STORE_TABLES {
            let sql = AssertSqlSafe(format!("select count(*) from {table}"));
            let rows: i64 = on_pool!(self, |pool| {
                sqlx::query_scalar(sql).fetch_one(pool).await?
            });
            out.push((table, rows));
        }
        Ok(out)
    }

    /// Marks an incident kept past `retention.incidents` (a postmortem in
    /// progress), or lets retention take it again; the change is recorded
    /// on its timeline. Returns false when there is no such incident.
    pub async fn set_incident_keep(
        &self,
        id: IncidentId,
        keep: bool,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let found = sqlx::query("update incidents set keep = $2 where id = $1")
                .bind(id.0)
                .bind(keep)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1;
            if found {
                record_event!(
                    conn,
                    id.0,
                    now,
                    if keep { "kept" } else { "unkept" },
                    serde_json::json!({ "keep": keep })
                );
            }
            found
        }))
    }

    /// Whether an incident is marked `keep`; `None` when there is none.
    pub async fn incident_kept(&self, id: IncidentId) -> Result<Option<bool>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query("select keep from incidents where id = $1")
                .bind(id.0)
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<bool, _>("keep"))
                .transpose()?
        }))
    }

    /// Audit entries written at or after `since`, oldest first, after entry
    /// `after_id` (pages for `remedy audit export`).
    pub async fn audit_since(
        &self,
        since: Millis,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, at, incident_id, approval_id, event, detail from audit_log
                  where at >= $1 and id > $2 order by id limit $3",
            )
            .bind(since)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}
