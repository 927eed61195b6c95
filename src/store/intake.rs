//! Writes a batch of webhook deliveries in one transaction (group commit):
//! the delivery itself, one incident per episode, the incident's first
//! timeline events and the work that follows from them.
//!
//! An episode is a fingerprint's open interval (protocols.md §1.5a): a
//! firing copy of a fingerprint with an open incident belongs to it whatever
//! its `startsAt` (the incident keeps the earliest); a resolve closes the
//! fingerprint's open incident; a late firing copy of a resolved episode
//! (its `startsAt` not after that episode's end) changes nothing; a firing
//! copy that starts after the last episode ended opens a new one. The
//! partial unique index `incidents_open_episode` keeps one open incident per
//! fingerprint, also across replicas.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Serialize;
use serde_json::json;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::types::Json;
use sqlx::{Column, Connection, Row};
use time::OffsetDateTime;

use super::conn::Conn;
use super::{Store, StoreError, WorkKind, on_pool};
use crate::domain::{
    Alert, AlertStatus, IncidentStatus, Labels, Millis, Notification, alert_time_key,
};

/// What one delivery changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The same delivery (same key) was committed before.
    pub duplicate: bool,
    pub incidents_opened: u32,
    pub incidents_resolved: u32,
}

impl BatchOutcome {
    #[must_use]
    pub fn queued_work(&self) -> bool {
        self.incidents_opened > 0
    }
}

/// Why one notification was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The store is down, overloaded or failed the transaction: ask again
    /// later (503, which Alertmanager retries).
    #[error("store could not commit: {0}")]
    Unavailable(String),
    /// The store refused this notification's data (it passed the edge's
    /// checks, yet a constraint or type said no): it would never commit, so
    /// it is answered 400 rather than retried for ever.
    #[error("the store cannot hold this notification: {0}")]
    Refused(String),
}

impl StoreError {
    /// Whether the failure is about the data sent, not the store's health:
    /// a constraint, PostgreSQL's data-exception (22) and program-limit (54)
    /// classes, SQLite's too-big and type-mismatch codes.
    fn is_data_error(&self) -> bool {
        use sqlx::error::ErrorKind;
        let Self::Unavailable(sqlx::Error::Database(e)) = self else {
            return false;
        };
        if matches!(
            e.kind(),
            ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation
        ) {
            return true;
        }
        let code = e.code().unwrap_or_default();
        if e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
        {
            return code.starts_with("22") || code.starts_with("54");
        }
        // SQLite's primary result code is the extended code's low byte:
        // too big, constraint (a trigger's RAISE too), type mismatch.
        code.parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 18..=20))
    }
}

// The SQLite statements read the batch with `jsonb_each`, not `json_each`:
// each row's `value` is then SQLite's binary JSON, which `->>` reads in
// place, where `json_each` renders every element back to JSON text for
// `->>` to parse again. Under callgrind that was a quarter of intake's
// instructions per request (593k → 437k, README, Performance, Intake).

/// The deliveries of a batch: inserted, or their count raised when seen
/// before. Returns each key's total count. `$4` deliveries, `$2` now.
const SQLITE_DELIVERIES: &str = "
insert into notifications (key, receiver, group_key, status, alert_count, truncated_alerts,
    first_seen_at, last_seen_at, seen_count)
select value ->> 'key', value ->> 'receiver', value ->> 'group_key', value ->> 'status',
       value ->> 'alert_count', value ->> 'truncated_alerts', $2, $2, value ->> 'n'
  from jsonb_each($4) where true
on conflict (key) do update
   set seen_count = notifications.seen_count + excluded.seen_count,
       last_seen_at = excluded.last_seen_at
returning key, seen_count";

/// SQLite, firing copies of fingerprints with an open incident: the event
/// for a `startsAt` that moves earlier (unless another episode of the
/// fingerprint already starts then), then the count and the earliest start.
/// `$1` episodes, `$2` now. `cross join` makes SQLite walk the batch and
/// look incidents up by index.
///
/// The two updates below read the batch in a `materialized` CTE: as a
/// plain subquery in `update … from`, SQLite may flatten it and scan
/// `incidents` outside `jsonb_each`, parsing the whole batch again for every
/// row of the table (measured: 24 s for a 2,000-alert notification over a
/// store of 4,000 incidents; 40 ms materialized).
const SQLITE_MOVED: &str = "
insert into incident_events (incident_id, at, kind, detail)
select i.id, $2, 'starts_at_moved', json_object('from', i.starts_at, 'to', e.value ->> 'starts_at')
  from jsonb_each($1) e
  cross join incidents i on i.fingerprint = e.value ->> 'fingerprint' and i.status = 'firing'
 where e.value ->> 'starts_ms' < i.starts_ms
   and not exists (select 1 from incidents o where o.fingerprint = i.fingerprint
                      and o.starts_at = e.value ->> 'starts_at')
 order by i.id";

const SQLITE_BUMP_OPEN: &str = "
with e as materialized (
        select i.id, f.value ->> 'starts_at' as starts_at, f.value ->> 'starts_ms' as starts_ms,
               f.value ->> 'n' as n,
               (f.value ->> 'starts_ms' < i.starts_ms and not exists (
                   select 1 from incidents o where o.fingerprint = i.fingerprint
                      and o.starts_at = f.value ->> 'starts_at')) as moves
          from jsonb_each($1) f
          cross join incidents i on i.fingerprint = f.value ->> 'fingerprint'
                                and i.status = 'firing')
update incidents
   set seen_count = incidents.seen_count + e.n, last_seen_at = $2,
       starts_at = case when e.moves then e.starts_at else incidents.starts_at end,
       starts_ms = case when e.moves then e.starts_ms else incidents.starts_ms end
  from e
 where incidents.id = e.id";

/// SQLite, late firing copies of an episode already resolved (the copy
/// starts before that episode ended) when none is open: counted, not
/// reopened. `$1` episodes, `$2` now.
const SQLITE_LATE: &str = "
with e as materialized (
        select (select max(r.id) from incidents r
                 where r.fingerprint = f.value ->> 'fingerprint' and r.status = 'resolved'
                   and coalesce(r.ends_ms, r.resolved_at) >= f.value ->> 'starts_ms') as id,
               f.value ->> 'n' as n
          from jsonb_each($1) f
         where not exists (select 1 from incidents o
                            where o.fingerprint = f.value ->> 'fingerprint'
                              and o.status = 'firing'))
update incidents
   set seen_count = incidents.seen_count + e.n, last_seen_at = $2
  from e
 where incidents.id = e.id";

/// SQLite, new episodes: a fingerprint with no open incident and no
/// episode that ended at or after this copy's start. `$1` episodes, `$2` now.
const SQLITE_OPEN: &str = "
insert into incidents (fingerprint, starts_at, starts_ms, alertname, severity, status, labels,
    annotations, generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
select e.value ->> 'fingerprint', e.value ->> 'starts_at', e.value ->> 'starts_ms',
       e.value ->> 'alertname', e.value ->> 'severity', 'firing', e.value -> 'labels',
       e.value -> 'annotations', e.value ->> 'generator_url', e.value ->> 'receiver',
       e.value ->> 'group_key', $2, $2, e.value ->> 'n'
  from jsonb_each($1) e
 where not exists (select 1 from incidents o
                    where o.fingerprint = e.value ->> 'fingerprint'
                      and (o.status = 'firing' or o.starts_at = e.value ->> 'starts_at'
                           or coalesce(o.ends_ms, o.resolved_at) >= e.value ->> 'starts_ms'))
 order by e.value ->> 'fingerprint'
on conflict do nothing
returning id, fingerprint";

/// SQLite: the largest incident id before a segment's new episodes go in
/// (`intake_mark`, a table of the writer's own connection, [`WRITER_SETUP`]).
/// Under `BEGIN IMMEDIATE` only this transaction inserts incidents, and
/// SQLite gives a new row of an `integer primary key` table the largest id
/// plus one, so the incidents above the mark are exactly those
/// [`SQLITE_OPEN`] inserted.
const SQLITE_MARK: &str = "
insert or replace into temp.intake_mark (rowid, id) select 1, coalesce(max(id), 0) from incidents";

/// SQLite: the first event and the diagnosis of each incident opened since
/// [`SQLITE_MARK`]. `$2` now, `$3` the work kind.
const SQLITE_OPENED: &str = "
insert into incident_events (incident_id, at, kind, detail)
select i.id, $2, 'opened', json_object('starts_at', i.starts_at, 'receiver', i.receiver,
       'group_key', i.group_key, 'summary', i.annotations ->> 'summary')
  from incidents i where i.id > (select id from temp.intake_mark)
 order by i.id;
insert into work (kind, incident_id, due_at, created_at, updated_at)
select $3, i.id, $2, $2, $2 from incidents i where i.id > (select id from temp.intake_mark)
 order by i.id";

/// The SQLite intake statements, joined into the few queries a batch sends
/// to the writer's connection thread. Each query is one round trip however
/// many statements it holds, and round trips were the intake's limit:
/// eight a batch took 5,200–5,300 requests/s, one 7,950–8,000 (README,
/// Performance, Intake). Every query binds the same parameters: `$1` the
/// segment's episodes, `$2` now, `$3` the work kind, `$4` the deliveries.
struct SqliteQueries {
    /// A batch of one segment with no resolved alert (nearly every batch):
    /// the whole transaction.
    whole: String,
    /// `BEGIN IMMEDIATE` and the deliveries, for any other batch.
    begin: String,
    /// One segment's firing alerts, for any other batch.
    firing: String,
}

static SQLITE_QUERIES: LazyLock<SqliteQueries> = LazyLock::new(|| {
    let join = |parts: &[&str]| {
        parts
            .iter()
            .map(|part| part.trim().trim_end_matches(';'))
            .collect::<Vec<_>>()
            .join(";\n")
    };
    let begin = join(&["begin immediate", SQLITE_DELIVERIES]);
    let firing = join(&[
        SQLITE_MARK,
        SQLITE_MOVED,
        SQLITE_BUMP_OPEN,
        SQLITE_LATE,
        SQLITE_OPEN,
        SQLITE_OPENED,
    ]);
    SqliteQueries {
        whole: join(&[&begin, &firing, "commit"]),
        begin,
        firing,
    }
});

/// PostgreSQL: a segment of the batch as one statement with data-modifying
/// CTEs. Every look-up of `incidents` is by fingerprint or id, written so
/// the planner cannot turn it into a join (`lateral … offset 0`, `offset 0`
/// in `exists`, `id = any (array(…))`, updates that read `open` per row,
/// `status <> 'firing'` for "resolved", which the partial index of every
/// resolved incident cannot serve, and `max(id + 0)`, which the primary key
/// cannot answer by reading the whole table backwards, so the
/// fingerprint's index does):
/// estimating the batch at 100 rows, and a table never analyzed
/// (autovacuum off), it chose hash joins that read all of `incidents` (or
/// all its firing rows) for every batch, about 1,100 requests/s on a table
/// of 10,000 incidents and a p99 that grew with the table. Its prepared
/// statement is made again as the store grows ([`plan_epoch`]): a generic
/// plan cached while the table was small kept its sequential scans after
/// it grew. The unit test
/// `the_postgres_intake_statement_never_scans_incidents` runs it on 20,000
/// incidents and checks that no plan node touches more rows than the batch.
///
/// CTEs, so one round trip commits it (atomic on its own). Every CTE sees
/// the statement's snapshot, so `open` is the open incidents before any
/// change. A replica inserting the same new episode concurrently makes the
/// insert wait on `incidents_open_episode` and then count the copy instead
/// (`xmax = 0` tells an insert from that update). `$1` deliveries, `$2`
/// episodes, `$3` now, `$4` the work kind.
const POSTGRES_BATCH: &str = "
with deliveries as (
  select * from jsonb_to_recordset($1::jsonb) as r(key text, receiver text, group_key text,
         status text, alert_count bigint, truncated_alerts bigint, n bigint)
), episodes as (
  select * from jsonb_to_recordset($2::jsonb) as r(fingerprint text, starts_at text,
         starts_ms bigint, alertname text, severity text, labels jsonb, annotations jsonb,
         generator_url text, receiver text, group_key text, n bigint)
), seen as (
  insert into notifications (key, receiver, group_key, status, alert_count, truncated_alerts,
      first_seen_at, last_seen_at, seen_count)
  select key, receiver, group_key, status, alert_count, truncated_alerts, $3, $3, n from deliveries
  order by key
  on conflict (key) do update
     set seen_count = notifications.seen_count + excluded.seen_count,
         last_seen_at = excluded.last_seen_at
  returning key, seen_count
), open as (
  select i.id, i.fingerprint, i.starts_at, e.starts_at as new_starts_at,
         e.starts_ms as new_starts_ms, e.n,
         (e.starts_ms < i.starts_ms and not exists (
             select 1 from incidents o where o.fingerprint = e.fingerprint
                and o.starts_at = e.starts_at offset 0)) as moves
    from episodes e
    cross join lateral (select i.id, i.fingerprint, i.starts_at, i.starts_ms from incidents i
                         where i.fingerprint = e.fingerprint and i.status = 'firing'
                         offset 0) i
), moved as (
  insert into incident_events (incident_id, at, kind, detail)
  select id, $3, 'starts_at_moved', jsonb_build_object('from', starts_at, 'to', new_starts_at)
    from open where moves order by id
), bumped as (
  update incidents i
     set (seen_count, last_seen_at, starts_at, starts_ms) = (
           select i.seen_count + o.n, $3,
                  case when o.moves then o.new_starts_at else i.starts_at end,
                  case when o.moves then o.new_starts_ms else i.starts_ms end
             from open o where o.id = i.id)
   where i.id = any (array(select id from open)) and i.status = 'firing'
), late_ids as (
  select (select max(r.id + 0) from incidents r
           where r.fingerprint = e.fingerprint and r.status <> 'firing'
             and coalesce(r.ends_ms, r.resolved_at) >= e.starts_ms offset 0) as id, e.n
    from episodes e
   where not exists (select 1 from open o where o.fingerprint = e.fingerprint)
), late as (
  update incidents i
     set seen_count = i.seen_count + (select sum(l.n) from late_ids l where l.id = i.id),
         last_seen_at = $3
   where i.id = any (array(select id from late_ids where id is not null))
), inserted as (
  insert into incidents (fingerprint, starts_at, starts_ms, alertname, severity, status, labels,
      annotations, generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
  select fingerprint, starts_at, starts_ms, alertname, severity, 'firing', labels, annotations,
         generator_url, receiver, group_key, $3, $3, n
    from episodes e
   where not exists (select 1 from incidents o
                      where o.fingerprint = e.fingerprint
                        and (o.status = 'firing' or o.starts_at = e.starts_at
                             or coalesce(o.ends_ms, o.resolved_at) >= e.starts_ms)
                      offset 0)
   order by fingerprint
  on conflict (fingerprint) where status = 'firing' do update
     set seen_count = incidents.seen_count + excluded.seen_count,
         last_seen_at = excluded.last_seen_at
  returning id, fingerprint, starts_at, receiver, group_key, annotations, (xmax = 0) as fresh
), opened as (
  select * from inserted where fresh
), events as (
  insert into incident_events (incident_id, at, kind, detail)
  select id, $3, 'opened', jsonb_build_object('starts_at', starts_at, 'receiver', receiver,
         'group_key', group_key, 'summary', annotations ->> 'summary')
    from opened order by id
), queued as (
  insert into work (kind, incident_id, due_at, created_at, updated_at)
  select $4, id, $3, $3, $3 from opened order by id
)
select (select jsonb_object_agg(key, seen_count) from seen)::text,
       (select jsonb_agg(fingerprint) from opened)::text
";

/// The intake writer's SQLite connection: its page cache, so hot pages of
/// every table and index it writes stay in memory between batches (pooled
/// connections keep 512 KiB each), and the table of [`SQLITE_MARK`], which
/// only this connection sees.
const WRITER_SETUP: &str = "pragma cache_size = -16384;
create temp table if not exists intake_mark (id integer not null)";

/// The intake writer's PostgreSQL session plans its prepared statements
/// once, generically, from the first call: the batch statement is planned
/// once per plan epoch instead of six times (five custom plans before the
/// generic one, about 2 ms each). Only this connection has it; it is
/// closed, not given back to the pool, when it fails.
const WRITER_PLANS: &str = "set plan_cache_mode = force_generic_plan";

/// The intake writer's hold on the store. It keeps one connection for
/// itself. On SQLite that connection's page cache and prepared statements
/// stay warm between batches (any other connection's write would invalidate
/// them); on PostgreSQL the batch statement is prepared on one connection
/// only, with generic plans ([`WRITER_PLANS`]). A connection that failed is
/// closed, which rolls back, and a new one is taken for the next batch.
pub struct IntakeWriter {
    store: Store,
    sqlite: Option<PoolConnection<Sqlite>>,
    postgres: Option<PoolConnection<Postgres>>,
    /// PostgreSQL: batches written, for [`plan_epoch`].
    batches: u64,
    /// PostgreSQL: the batch statement of the current plan epoch.
    postgres_sql: Option<(u64, String)>,
}

impl Store {
    #[must_use]
    pub fn intake_writer(&self) -> IntakeWriter {
        IntakeWriter {
            store: self.clone(),
            sqlite: None,
            postgres: None,
            batches: 0,
            postgres_sql: None,
        }
    }
}

/// Batches between two plan epochs once the first ones are over.
const PLAN_EPOCH_BATCHES: u64 = 4096;

/// The PostgreSQL batch statement is prepared (planning it costs about as
/// much as running it), and PostgreSQL keeps the generic plan it makes
/// after five calls for as long as the statement lives. Made while
/// `incidents` was nearly empty, that plan scanned the table, and kept
/// scanning it as it grew (9 million rows read in a 10-second run). So the
/// statement's text changes with the epoch: a new text is a new prepared
/// statement, planned again for the table as it is then. Epochs are short
/// while the store is young (batch 2, 4, 8, …, 4096: the table at most
/// doubles within one), then every [`PLAN_EPOCH_BATCHES`]; sqlx's statement
/// cache closes the old statements as new ones come. The writer's session
/// makes the generic plan at the first call ([`WRITER_PLANS`]), so each
/// epoch costs one planning.
fn plan_epoch(batches: u64) -> u64 {
    if batches < PLAN_EPOCH_BATCHES {
        u64::from(batches.max(1).ilog2())
    } else {
        u64::from(PLAN_EPOCH_BATCHES.ilog2()) + batches / PLAN_EPOCH_BATCHES
    }
}

impl IntakeWriter {
    /// Resolves when the store is being closed; the writer must then give
    /// its connection back, or closing would wait for it forever.
    pub async fn store_closing(&self) {
        on_pool!(&self.store, |pool| { pool.close_event().await });
    }

    /// Gives the dedicated connection back to the pool.
    pub fn release(&mut self) {
        // The pool is closing: neither is handed out again.
        self.sqlite = None;
        self.postgres = None;
    }

    /// Commits every notification of the batch in one transaction. When
    /// that fails for one notification's data, each is committed on its own
    /// instead, so the others still commit and only the bad one is refused;
    /// when the store itself fails, every notification gets `Unavailable`.
    pub async fn record(
        &mut self,
        batch: &[&Notification],
        now: Millis,
    ) -> Vec<Result<BatchOutcome, RecordError>> {
        match self.record_together(batch, now).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(error) if batch.len() > 1 && error.is_data_error() => {
                tracing::warn!(%error, notifications = batch.len(), "batch refused; committing its notifications one by one");
                let mut results = Vec::with_capacity(batch.len());
                for notification in batch {
                    results.push(match self.record_together(&[notification], now).await {
                        Ok(mut outcome) => Ok(outcome.pop().unwrap_or_default()),
                        Err(error) => Err(record_error(&error)),
                    });
                }
                results
            }
            Err(error) => {
                let error = record_error(&error);
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    /// Commits the notifications of `batch` together, or none of them.
    async fn record_together(
        &mut self,
        batch: &[&Notification],
        now: Millis,
    ) -> Result<Vec<BatchOutcome>, StoreError> {
        let plan = BatchPlan::new(batch);
        let mut outcomes = vec![BatchOutcome::default(); batch.len()];
        match &self.store {
            Store::Sqlite(pool, lock) => {
                let _writing = lock.acquire_first().await;
                let conn = match &mut self.sqlite {
                    Some(conn) => conn,
                    slot @ None => {
                        let mut conn = pool.acquire().await?;
                        sqlx::raw_sql(WRITER_SETUP).execute(&mut *conn).await?;
                        slot.insert(conn)
                    }
                };
                let result = record_sqlite(conn, &plan, batch, now, &mut outcomes).await;
                if result.is_err() {
                    // Closing rolls back whatever the failed batch began.
                    if let Some(conn) = self.sqlite.take() {
                        let _ = conn.detach().close().await;
                    }
                }
                result?;
            }
            Store::Postgres(pool) => {
                self.batches += 1;
                let epoch = plan_epoch(self.batches);
                let sql = match &mut self.postgres_sql {
                    Some((at, sql)) if *at == epoch => sql,
                    slot => {
                        &mut slot
                            .insert((epoch, format!("{POSTGRES_BATCH}-- plan epoch {epoch}\n")))
                            .1
                    }
                };
                let conn = match &mut self.postgres {
                    Some(conn) => conn,
                    slot @ None => {
                        let mut conn = pool.acquire().await?;
                        sqlx::raw_sql(WRITER_PLANS).execute(&mut *conn).await?;
                        slot.insert(conn)
                    }
                };
                let result = record_postgres(conn, sql, &plan, batch, now, &mut outcomes).await;
                if result.is_err()
                    && let Some(conn) = self.postgres.take()
                {
                    let _ = conn.detach().close().await;
                }
                result?;
            }
        }
        Ok(outcomes)
    }
}

fn record_error(error: &StoreError) -> RecordError {
    if error.is_data_error() {
        RecordError::Refused(error.to_string())
    } else {
        RecordError::Unavailable(error.to_string())
    }
}

/// SQLite: one query for a batch of firing alerts only
/// ([`SqliteQueries::whole`]); else the deliveries, each segment's firing
/// alerts and its resolved ones in turn, between `BEGIN IMMEDIATE` and
/// `COMMIT`. All on the writer's own connection.
async fn record_sqlite(
    conn: &mut SqliteConnection,
    plan: &BatchPlan<'_>,
    batch: &[&Notification],
    now: Millis,
    outcomes: &mut [BatchOutcome],
) -> Result<(), StoreError> {
    let queries = &*SQLITE_QUERIES;
    if let [segment] = plan.segments.as_slice()
        && segment.resolved.is_empty()
        && !segment.firing.is_empty()
    {
        return sqlite_query(conn, &queries.whole, plan, Some(segment), now, outcomes).await;
    }
    sqlite_query(conn, &queries.begin, plan, None, now, outcomes).await?;
    for segment in &plan.segments {
        if !segment.firing.is_empty() {
            sqlite_query(conn, &queries.firing, plan, Some(segment), now, outcomes).await?;
        }
        let mut tx = Conn::Sqlite(&mut *conn);
        for &(index, alert) in &segment.resolved {
            if resolve(&mut tx, alert, batch[index], now).await? {
                outcomes[index].incidents_resolved += 1;
            }
        }
    }
    sqlx::raw_sql("commit").execute(&mut *conn).await?;
    Ok(())
}

/// Runs one of [`SqliteQueries`] for `segment`'s firing alerts (none for
/// [`SqliteQueries::begin`]) and reads what it returns: the deliveries'
/// totals (`key`, `seen_count`) and the incidents opened (`id`,
/// `fingerprint`), told apart by their first column.
async fn sqlite_query(
    conn: &mut SqliteConnection,
    sql: &str,
    plan: &BatchPlan<'_>,
    segment: Option<&Segment<'_>>,
    now: Millis,
    outcomes: &mut [BatchOutcome],
) -> Result<(), StoreError> {
    let firing: Vec<&FiringRow<'_>> = segment
        .map(|s| s.firing.values().collect())
        .unwrap_or_default();
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(Json(&firing))
        .bind(now)
        .bind(WorkKind::Diagnose.as_str())
        .bind(Json(&plan.notifications))
        .fetch_all(&mut *conn)
        .await?;
    let mut opened = Vec::new();
    for row in &rows {
        if row.columns().first().is_some_and(|c| c.name() == "key") {
            plan.mark_duplicates(row.try_get(0)?, row.try_get(1)?, outcomes);
        } else {
            opened.push(row.try_get::<&str, _>(1)?);
        }
    }
    if let Some(segment) = segment {
        segment.credit_opened(opened.into_iter(), outcomes);
    }
    Ok(())
}

/// PostgreSQL: one statement per segment; in a transaction with the
/// resolutions when the batch has any (else the statement is atomic alone).
async fn record_postgres(
    conn: &mut PgConnection,
    sql: &str,
    plan: &BatchPlan<'_>,
    batch: &[&Notification],
    now: Millis,
    outcomes: &mut [BatchOutcome],
) -> Result<(), StoreError> {
    let simple = plan.segments.len() == 1 && plan.segments[0].resolved.is_empty();
    let mut results = Vec::with_capacity(plan.segments.len());
    if simple {
        let firing: Vec<&FiringRow<'_>> = plan.segments[0].firing.values().collect();
        results.push(
            postgres_segment(sql, &plan.notifications, &firing, now)
                .fetch_one(&mut *conn)
                .await?,
        );
    } else {
        let mut tx = conn.begin().await?;
        for (nth, segment) in plan.segments.iter().enumerate() {
            let firing: Vec<&FiringRow<'_>> = segment.firing.values().collect();
            let deliveries = if nth == 0 {
                &plan.notifications[..]
            } else {
                &[]
            };
            results.push(
                postgres_segment(sql, deliveries, &firing, now)
                    .fetch_one(&mut *tx)
                    .await?,
            );
            let mut conn = Conn::Postgres(&mut tx);
            for &(index, alert) in &segment.resolved {
                if resolve(&mut conn, alert, batch[index], now).await? {
                    outcomes[index].incidents_resolved += 1;
                }
            }
        }
        tx.commit().await?;
    }
    for (segment, (seen, opened)) in plan.segments.iter().zip(results) {
        let seen: BTreeMap<String, i64> = parse_json(seen.as_deref())?;
        for (key, total) in &seen {
            plan.mark_duplicates(key, *total, outcomes);
        }
        let opened: Vec<String> = parse_json(opened.as_deref())?;
        segment.credit_opened(opened.iter().map(String::as_str), outcomes);
    }
    Ok(())
}

type SegmentResult = (Option<String>, Option<String>);

/// `sql` is [`POSTGRES_BATCH`] marked with its plan epoch ([`plan_epoch`]).
fn postgres_segment<'q>(
    sql: &'q str,
    deliveries: &'q [NotificationRow<'_>],
    firing: &'q [&FiringRow<'_>],
    now: Millis,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, SegmentResult, sqlx::postgres::PgArguments> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Json(deliveries))
        .bind(Json(firing))
        .bind(now)
        .bind(WorkKind::Diagnose.as_str())
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(
    text: Option<&str>,
) -> Result<T, StoreError> {
    text.map_or_else(
        || Ok(T::default()),
        |t| serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("batch result: {e}"))),
    )
}

/// An alert time in milliseconds since the epoch, for comparing intervals.
fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// Closes the fingerprint's open incident (returns true), or counts a
/// repeat of a resolved episode, or records an episode remedy never saw
/// firing (it fired while remedy was down, or began and ended within
/// `group_wait`) as already resolved.
///
/// The open incident is closed whatever the resolve's `startsAt` (a merged
/// copy's may be earlier), unless the resolve ended before the open
/// incident began and matches an episode already resolved: then it is a
/// late repeat of that episode, and the open one is a new episode.
pub(super) async fn resolve(
    conn: &mut Conn<'_>,
    alert: &Alert,
    notification: &Notification,
    now: Millis,
) -> Result<bool, sqlx::Error> {
    let starts_ms = millis(alert.starts_at);
    let ends_at = alert.ends_at.map(alert_time_key);
    let ends_ms = alert.ends_at.map_or(now, millis).max(starts_ms);
    let fingerprint = alert.fingerprint.as_str();
    let closed: Option<(i64,)> = conn
        .fetch_optional(
            "update incidents
                set status = 'resolved', resolved_at = $2, ends_at = $3,
                    ends_ms = case when $4 > starts_ms then $4 else starts_ms end,
                    seen_count = seen_count + 1, last_seen_at = $2
              where fingerprint = $1 and status = 'firing'
                and not ($4 < starts_ms and exists (
                      select 1 from incidents r
                       where r.fingerprint = $1 and r.status = 'resolved'
                         and r.starts_ms <= $4 and coalesce(r.ends_ms, r.resolved_at) >= $5))
              returning id",
            &[
                fingerprint.into(),
                now.into(),
                ends_at.as_deref().into(),
                ends_ms.into(),
                starts_ms.into(),
            ],
        )
        .await?;
    if let Some((id,)) = closed {
        close_incident(conn, id, now, "resolved", json!({ "ends_at": ends_at })).await?;
        return Ok(true);
    }
    let repeat: Option<(i64,)> = conn
        .fetch_optional(
            "update incidents set seen_count = seen_count + 1, last_seen_at = $2
              where id = (select max(r.id) from incidents r
                           where r.fingerprint = $1 and r.status = 'resolved'
                             and r.starts_ms <= $3 and coalesce(r.ends_ms, r.resolved_at) >= $4)
              returning id",
            &[
                fingerprint.into(),
                now.into(),
                ends_ms.into(),
                starts_ms.into(),
            ],
        )
        .await?;
    if repeat.is_some() {
        return Ok(false);
    }
    let starts_at = alert.starts_at_key();
    let (id, seen, status): (i64, i64, String) = conn
        .fetch_one(
            "insert into incidents (fingerprint, starts_at, starts_ms, ends_at, ends_ms, alertname,
                severity, status, labels, annotations, generator_url, receiver,
                group_key, opened_at, last_seen_at, seen_count, resolved_at)
             values ($1, $2, $3, $4, $5, $6, $7, 'resolved', $8, $9, $10, $11, $12, $13, $13, 1, $13)
             on conflict (fingerprint, starts_at) do update
                set seen_count = incidents.seen_count + 1,
                    last_seen_at = excluded.last_seen_at
             returning id, seen_count, status",
            &[
                fingerprint.into(),
                starts_at.as_str().into(),
                starts_ms.into(),
                ends_at.as_deref().into(),
                ends_ms.into(),
                alert.alertname().into(),
                alert.severity().into(),
                json!(alert.labels).into(),
                json!(alert.annotations).into(),
                alert.generator_url.as_str().into(),
                notification.receiver.as_str().into(),
                notification.group_key.as_str().into(),
                now.into(),
            ],
        )
        .await?;
    // On PostgreSQL another replica may have been inserting this very
    // episode, firing, while the update above ran: the upsert then waited
    // for it and found it firing, so it is closed now.
    let status: IncidentStatus = status
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if status == IncidentStatus::Firing {
        let closed = conn
            .execute(
                "update incidents set status = 'resolved', resolved_at = $2, ends_at = $3,
                        ends_ms = $4
                  where id = $1 and status = 'firing'",
                &[
                    id.into(),
                    now.into(),
                    ends_at.as_deref().into(),
                    ends_ms.into(),
                ],
            )
            .await?;
        if closed == 1 {
            close_incident(conn, id, now, "resolved", json!({ "ends_at": ends_at })).await?;
            return Ok(true);
        }
    }
    if seen == 1 {
        conn.record_event(
            id,
            now,
            "resolved_unseen",
            json!({
                "ends_at": ends_at,
                "note": "resolved notification for an episode remedy never saw firing"
            }),
        )
        .await?;
    }
    Ok(false)
}

/// What closing an incident does, once its row says `resolved`: records
/// why (`kind`: `resolved`, `resolved_by_reconciliation`), cancels its
/// pending work (a message update in flight finishes; the one queued here
/// follows it), expires its requests (their buttons say so), cancels its
/// timers (nobody is paged about a resolved incident), queues a resolve for
/// every pager that was paged, and queues the update of its message when
/// one was posted.
pub(super) async fn close_incident(
    conn: &mut Conn<'_>,
    id: i64,
    now: Millis,
    kind: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    conn.record_event(id, now, kind, detail).await?;
    // A storm member's storm is rechecked now, not at its next check.
    conn.execute(
        super::storms::STORM_MEMBER_RESOLVED,
        &[id.into(), now.into()],
    )
    .await?;
    // Pages stay: the resolve queued below goes to every pager paged.
    conn.execute(
        "update work set state = 'cancelled', lease_owner = null,
                lease_until = null, updated_at = $2
          where incident_id = $1 and state = 'pending' and kind <> 'page'
            and not (kind = 'notify' and lease_owner is not null)",
        &[id.into(), now.into()],
    )
    .await?;
    conn.execute(
        "update approvals set state = 'expired', decided_at = $2
          where incident_id = $1 and state = 'pending'",
        &[id.into(), now.into()],
    )
    .await?;
    let cancelled = conn
        .execute(
            "update escalation_timers set state = 'cancelled'
              where incident_id = $1 and state in ('pending', 'paused')",
            &[id.into()],
        )
        .await?;
    if cancelled > 0 {
        conn.record_event(
            id,
            now,
            "escalation_cancelled",
            json!({ "timers": cancelled, "reason": kind }),
        )
        .await?;
    }
    super::paging::queue_followups(
        conn,
        id,
        crate::paging::PageAction::Resolve,
        None,
        &format!("{kind} in remedy"),
        now,
    )
    .await?;
    conn.execute(
        "insert into work (kind, incident_id, due_at, created_at, updated_at)
         select $3, id, $2, $2, $2 from incidents where id = $1 and report is not null",
        &[id.into(), now.into(), WorkKind::Notify.as_str().into()],
    )
    .await?;
    Ok(())
}

/// A batch aggregated for bulk statements: repeats of one delivery become a
/// single row with a count `n`, and the firing copies of one fingerprint
/// too (with the earliest `startsAt`), since one statement may not touch a
/// row twice. Resolutions run one by one after their segment's firing
/// copies; a firing copy that follows a resolve of its fingerprint starts a
/// new segment, so arrival order is kept where it matters.
struct BatchPlan<'a> {
    notifications: Vec<NotificationRow<'a>>,
    segments: Vec<Segment<'a>>,
    /// Batch indexes of each delivery key, in arrival order.
    deliveries: BTreeMap<&'a str, Vec<usize>>,
}

#[derive(Default)]
struct Segment<'a> {
    /// By fingerprint, so concurrent replicas lock rows in one order.
    firing: BTreeMap<&'a str, FiringRow<'a>>,
    /// (index of the notification, alert), in arrival order.
    resolved: Vec<(usize, &'a Alert)>,
    /// Batch index of the first notification that carried each fingerprint.
    first: BTreeMap<&'a str, usize>,
}

#[derive(Clone, Serialize)]
struct NotificationRow<'a> {
    key: &'a str,
    receiver: &'a str,
    group_key: &'a str,
    status: &'a str,
    alert_count: usize,
    truncated_alerts: u64,
    n: usize,
}

#[derive(Serialize)]
struct FiringRow<'a> {
    fingerprint: &'a str,
    starts_at: String,
    starts_ms: i64,
    alertname: &'a str,
    severity: &'a str,
    labels: &'a Labels,
    annotations: &'a Labels,
    generator_url: &'a str,
    receiver: &'a str,
    group_key: &'a str,
    n: i64,
}

impl<'a> BatchPlan<'a> {
    fn new(batch: &[&'a Notification]) -> Self {
        let mut deliveries: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut segments = vec![Segment::default()];
        for (index, notification) in batch.iter().enumerate() {
            deliveries
                .entry(notification.key.as_str())
                .or_default()
                .push(index);
            for alert in &notification.alerts {
                let fingerprint = alert.fingerprint.as_str();
                let mut segment = segments.last_mut().expect("at least one segment");
                match alert.status {
                    AlertStatus::Firing => {
                        if segment
                            .resolved
                            .iter()
                            .any(|(_, a)| a.fingerprint.as_str() == fingerprint)
                        {
                            segments.push(Segment::default());
                            segment = segments.last_mut().expect("just pushed");
                        }
                        segment.first.entry(fingerprint).or_insert(index);
                        let starts_ms = millis(alert.starts_at);
                        segment
                            .firing
                            .entry(fingerprint)
                            .and_modify(|row| {
                                row.n += 1;
                                if starts_ms < row.starts_ms {
                                    row.starts_ms = starts_ms;
                                    row.starts_at = alert.starts_at_key();
                                }
                            })
                            .or_insert_with(|| FiringRow {
                                fingerprint,
                                starts_at: alert.starts_at_key(),
                                starts_ms,
                                alertname: alert.alertname(),
                                severity: alert.severity(),
                                labels: &alert.labels,
                                annotations: &alert.annotations,
                                generator_url: &alert.generator_url,
                                receiver: &notification.receiver,
                                group_key: &notification.group_key,
                                n: 1,
                            });
                    }
                    AlertStatus::Resolved => segment.resolved.push((index, alert)),
                }
            }
        }
        let notifications = deliveries
            .iter()
            .map(|(key, indexes)| {
                let first = batch[indexes[0]];
                NotificationRow {
                    key,
                    receiver: &first.receiver,
                    group_key: &first.group_key,
                    status: first.status.as_str(),
                    alert_count: first.alerts.len(),
                    truncated_alerts: first.truncated_alerts,
                    n: indexes.len(),
                }
            })
            .collect();
        Self {
            notifications,
            segments,
            deliveries,
        }
    }

    /// Every copy of a delivery but the first is a duplicate, and the first
    /// too when the store had it before (`total` exceeds this batch's count).
    fn mark_duplicates(&self, key: &str, total: i64, outcomes: &mut [BatchOutcome]) {
        let Some(indexes) = self.deliveries.get(key) else {
            return;
        };
        let seen_before = total > i64::try_from(indexes.len()).unwrap_or(i64::MAX);
        for (nth, &index) in indexes.iter().enumerate() {
            outcomes[index].duplicate = seen_before || nth > 0;
        }
    }
}

impl<'a> Segment<'a> {
    /// Credits each episode this segment opened (by fingerprint) to the
    /// first notification that carried it.
    fn credit_opened<'f>(
        &self,
        opened: impl Iterator<Item = &'f str>,
        outcomes: &mut [BatchOutcome],
    ) {
        for fingerprint in opened {
            if let Some(&index) = self.first.get(fingerprint) {
                outcomes[index].incidents_opened += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{POSTGRES_BATCH, SQLITE_QUERIES, WRITER_SETUP, plan_epoch};
    use crate::store::{Store, StoreOptions};

    /// Every SQLite intake statement walks the batch (`jsonb_each`) once and
    /// looks incidents up by index; none scans `incidents` with the batch
    /// inside the loop, which re-parses the whole notification for every
    /// row of the table (a 2,000-alert notification over 4,000 incidents
    /// took 24 s that way and answered 503).
    #[tokio::test]
    async fn sqlite_intake_statements_never_scan_incidents_around_the_batch() {
        let store = Store::connect("sqlite::memory:", &StoreOptions::default())
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let Store::Sqlite(pool, _) = &store else {
            unreachable!("a sqlite url")
        };
        let mut conn = pool.acquire().await.expect("connection");
        sqlx::raw_sql(WRITER_SETUP)
            .execute(&mut *conn)
            .await
            .expect("writer setup");
        let statements: Vec<&str> = SQLITE_QUERIES
            .whole
            .split(";\n")
            .filter(|sql| !matches!(sql.trim(), "begin immediate" | "commit"))
            .collect();
        assert_eq!(statements.len(), 8, "{statements:#?}");
        for sql in statements {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("explain query plan {sql}")))
                    .bind("[]")
                    .bind(0_i64)
                    .bind("diagnose")
                    .bind("[]")
                    .fetch_all(&mut *conn)
                    .await
                    .expect("plan");
            let steps: Vec<&str> = plan.iter().map(|(_, _, _, d)| d.as_str()).collect();
            assert!(
                !steps.iter().any(|d| d.starts_with("SCAN incidents")),
                "{sql}\n{steps:#?}"
            );
        }
    }

    /// The batch statement is prepared again when the store has doubled
    /// (in batches) while young, then every 4,096 batches; never within an
    /// epoch.
    #[test]
    fn plan_epochs_are_short_while_the_store_is_young() {
        let changes: Vec<u64> = (1..20_000_u64)
            .filter(|&n| plan_epoch(n) != plan_epoch(n - 1))
            .collect();
        assert_eq!(
            changes,
            [
                2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 12288, 16384
            ]
        );
    }

    /// The PostgreSQL intake statement finds every incident it touches by
    /// an index, even on a table never analyzed (autovacuum off) holding
    /// 20,000 incidents, half of them firing: run for real (`explain
    /// analyze`, rolled back) on a batch of new episodes and copies of open
    /// and resolved ones, no node of its plan reads (returns or filters
    /// out) more rows of `incidents` than the batch has, both with a generic
    /// plan (what the intake writer's session makes, [`super::WRITER_PLANS`])
    /// and with a plan made for the call (what any other session would
    /// make for its first five calls).
    #[tokio::test]
    async fn the_postgres_intake_statement_never_scans_incidents() {
        use sqlx::Connection;
        let admin_url = std::env::var("REMEDY_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("remedy_t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = format!(
            "{}/{name}",
            admin_url.rsplit_once('/').expect("a database").0
        );
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let Store::Postgres(pool) = &store else {
            unreachable!("a postgres url")
        };
        sqlx::raw_sql(
            "insert into incidents (fingerprint, starts_at, starts_ms, alertname, severity, status,
                 labels, annotations, generator_url, receiver, group_key, opened_at,
                 last_seen_at, seen_count, resolved_at)
             select 'old' || g, '2026-01-01T00:00:00Z', 0, 'A', 'warning',
                 case when g % 2 = 0 then 'resolved' else 'firing' end, '{}',
                 '{}', '', 'r', 'g', 0, 0, 1, case when g % 2 = 0 then 0 end
               from generate_series(1, 20000) g",
        )
        .execute(pool)
        .await
        .expect("incidents");
        // 12 new episodes, 2 copies of open ones, 2 of resolved ones.
        let fingerprints = (0..12)
            .map(|i| format!("new{i}"))
            .chain(["old1", "old3", "old2", "old4"].map(str::to_owned));
        let episodes: Vec<serde_json::Value> = fingerprints
            .map(|fingerprint| {
                serde_json::json!({"fingerprint": fingerprint, "starts_at": "2026-11-26T10:00:00Z",
                    "starts_ms": 1_764_151_200_000_i64, "alertname": "A", "severity": "warning",
                    "labels": {}, "annotations": {}, "generator_url": "", "receiver": "r",
                    "group_key": "g", "n": 1})
            })
            .collect();
        let batch = episodes.len();
        let episodes = serde_json::Value::from(episodes).to_string();
        let mut tx = pool.begin().await.expect("begin");
        let custom: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain (analyze, costs off, timing off) {POSTGRES_BATCH}"
        )))
        .persistent(false)
        .bind("[]")
        .bind(&episodes)
        .bind(0_i64)
        .bind("diagnose")
        .fetch_all(&mut *tx)
        .await
        .expect("custom plan");
        tx.rollback().await.expect("rollback");
        let mut tx = pool.begin().await.expect("begin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "set local plan_cache_mode = force_generic_plan;
             prepare batch (text, text, bigint, text) as {POSTGRES_BATCH}"
        )))
        .execute(&mut *tx)
        .await
        .expect("prepare");
        let generic: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain (analyze, costs off, timing off)
             execute batch ('[]', '{episodes}', 0, 'diagnose')"
        )))
        .fetch_all(&mut *tx)
        .await
        .expect("generic plan");
        tx.rollback().await.expect("rollback");
        store.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database {name} with (force)"
        )))
        .execute(&mut admin)
        .await
        .expect("drop database");
        for plan in [custom, generic] {
            let read = |line: &str| -> usize {
                let number = |key: &str| {
                    line.split(key).nth(1).and_then(|rest| {
                        rest.split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|n| n.parse::<usize>().ok())
                    })
                };
                number(" rows=").unwrap_or(0) * number(" loops=").unwrap_or(1)
                    + number("Rows Removed by Filter: ").unwrap_or(0)
                    + number("Rows Removed by Index Recheck: ").unwrap_or(0)
            };
            let wide: Vec<&String> = plan
                .iter()
                .filter(|line| {
                    (line.contains(" on incidents") || line.contains("Rows Removed"))
                        && read(line) > batch
                })
                .collect();
            assert!(
                wide.is_empty() && plan.iter().any(|l| l.contains(" on incidents")),
                "{wide:?} in\n{}",
                plan.join("\n")
            );
        }
    }
}
