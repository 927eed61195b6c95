//! Writes a batch of webhook deliveries in one transaction (group commit):
//! the delivery itself, one incident per firing episode, the incident's
//! first timeline events and the work that follows from them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;
use sqlx::Connection;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::types::Json;

use super::{Store, StoreError, WorkKind, on_pool, record_event};
use crate::domain::{Alert, AlertStatus, Labels, Millis, Notification, alert_time_key};

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

/// SQLite: the whole batch in one multi-statement call (sqlx binds `$N` by
/// position in every statement), so the writer hands the connection thread
/// one message per batch instead of one per statement. `$1` deliveries,
/// `$2` firing episodes, `$3` now, `$4` the work kind. An episode is new in
/// this batch exactly when its count equals this batch's count `n`.
/// `cross join` makes SQLite walk the batch and look rows up by index,
/// instead of scanning the table.
const SQLITE_BATCH: &str = "
begin immediate;

insert into notifications (key, receiver, group_key, status, alert_count, truncated_alerts,
    first_seen_at, last_seen_at, seen_count)
select value ->> 'key', value ->> 'receiver', value ->> 'group_key', value ->> 'status',
       value ->> 'alert_count', value ->> 'truncated_alerts', $3, $3, value ->> 'n'
  from json_each($1) where true
on conflict (key) do update
   set seen_count = notifications.seen_count + excluded.seen_count,
       last_seen_at = excluded.last_seen_at;

insert into incidents (fingerprint, starts_at, alertname, severity, status, labels, annotations,
    generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
select value ->> 'fingerprint', value ->> 'starts_at', value ->> 'alertname',
       value ->> 'severity', 'firing', value -> 'labels', value -> 'annotations',
       value ->> 'generator_url', value ->> 'receiver', value ->> 'group_key', $3, $3, value ->> 'n'
  from json_each($2) where true
on conflict (fingerprint, starts_at) do update
   set seen_count = incidents.seen_count + excluded.seen_count,
       last_seen_at = excluded.last_seen_at;

with opened as (
  select i.id, i.fingerprint, i.starts_at, i.receiver, i.group_key, i.annotations
    from json_each($2) f
    cross join incidents i on i.fingerprint = f.value ->> 'fingerprint'
                          and i.starts_at = f.value ->> 'starts_at'
   where i.seen_count = f.value ->> 'n'
)
insert into incident_events (incident_id, at, kind, detail)
select id, $3, 'opened', json_object('starts_at', starts_at, 'receiver', receiver,
       'group_key', group_key, 'summary', annotations ->> 'summary')
  from opened order by id;

insert into work (kind, incident_id, due_at, created_at, updated_at)
select $4, i.id, $3, $3, $3
  from json_each($2) f
  cross join incidents i on i.fingerprint = f.value ->> 'fingerprint'
                        and i.starts_at = f.value ->> 'starts_at'
 where i.seen_count = f.value ->> 'n'
 order by i.id;

select (select json_group_object(n.key, n.seen_count)
          from json_each($1) j cross join notifications n on n.key = j.value ->> 'key'),
       (select json_group_array(i.fingerprint || '@' || i.starts_at)
          from json_each($2) f
          cross join incidents i on i.fingerprint = f.value ->> 'fingerprint'
                                and i.starts_at = f.value ->> 'starts_at'
         where i.seen_count = f.value ->> 'n');
";

/// PostgreSQL: the same batch as one statement with data-modifying CTEs, so
/// one round trip commits it (atomic on its own).
const POSTGRES_BATCH: &str = "
with deliveries as (
  select * from jsonb_to_recordset($1::jsonb) as r(key text, receiver text, group_key text,
         status text, alert_count bigint, truncated_alerts bigint, n bigint)
), episodes as (
  select * from jsonb_to_recordset($2::jsonb) as r(fingerprint text, starts_at text,
         alertname text, severity text, labels jsonb, annotations jsonb, generator_url text,
         receiver text, group_key text, n bigint)
), seen as (
  insert into notifications (key, receiver, group_key, status, alert_count, truncated_alerts,
      first_seen_at, last_seen_at, seen_count)
  select key, receiver, group_key, status, alert_count, truncated_alerts, $3, $3, n from deliveries
  on conflict (key) do update
     set seen_count = notifications.seen_count + excluded.seen_count,
         last_seen_at = excluded.last_seen_at
  returning key, seen_count
), upserted as (
  insert into incidents (fingerprint, starts_at, alertname, severity, status, labels, annotations,
      generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
  select fingerprint, starts_at, alertname, severity, 'firing', labels, annotations,
         generator_url, receiver, group_key, $3, $3, n from episodes
  order by fingerprint, starts_at
  on conflict (fingerprint, starts_at) do update
     set seen_count = incidents.seen_count + excluded.seen_count,
         last_seen_at = excluded.last_seen_at
  returning id, fingerprint, starts_at, seen_count, receiver, group_key, annotations
), opened as (
  select u.* from upserted u
    join episodes e on e.fingerprint = u.fingerprint and e.starts_at = u.starts_at
   where u.seen_count = e.n
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
       (select jsonb_agg(fingerprint || '@' || starts_at) from opened)::text
";

/// The intake writer's hold on the store. On SQLite it keeps one connection
/// for itself, so that connection's page cache and prepared statements stay
/// warm between batches (any other connection's write would invalidate
/// them); a connection that failed is dropped, which rolls back, and a new
/// one is taken for the next batch.
pub struct IntakeWriter {
    store: Store,
    sqlite: Option<PoolConnection<Sqlite>>,
}

impl Store {
    #[must_use]
    pub fn intake_writer(&self) -> IntakeWriter {
        IntakeWriter {
            store: self.clone(),
            sqlite: None,
        }
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
        self.sqlite = None;
    }

    /// Commits every notification of the batch, or none. New deliveries and
    /// firing episodes are written by one call for the whole batch;
    /// resolutions, rarer and order-sensitive, one by one after them.
    pub async fn record(
        &mut self,
        batch: &[&Notification],
        now: Millis,
    ) -> Result<Vec<BatchOutcome>, StoreError> {
        let plan = BatchPlan::new(batch);
        let mut outcomes = vec![BatchOutcome::default(); batch.len()];
        let (seen, opened) = match &self.store {
            Store::Sqlite(pool, lock) => {
                let _writing = lock.acquire_first().await;
                let conn = match &mut self.sqlite {
                    Some(conn) => conn,
                    slot @ None => slot.insert(pool.acquire().await?),
                };
                let result = record_sqlite(conn, &plan, batch, now, &mut outcomes).await;
                if result.is_err() {
                    // Closing rolls back whatever the failed batch began.
                    if let Some(conn) = self.sqlite.take() {
                        let _ = conn.detach().close().await;
                    }
                }
                result?
            }
            Store::Postgres(pool) => {
                record_postgres(pool, &plan, batch, now, &mut outcomes).await?
            }
        };
        let seen: BTreeMap<String, i64> = parse_json(seen.as_deref())?;
        for (key, total) in &seen {
            plan.mark_duplicates(key, *total, &mut outcomes);
        }
        let opened: Vec<String> = parse_json(opened.as_deref())?;
        plan.credit_opened(&opened, &mut outcomes);
        Ok(outcomes)
    }
}

type BatchResult = (Option<String>, Option<String>);

/// One call to the connection thread for the batch (`BEGIN IMMEDIATE`
/// included), one per resolution, one for `COMMIT`.
async fn record_sqlite(
    conn: &mut SqliteConnection,
    plan: &BatchPlan<'_>,
    batch: &[&Notification],
    now: Millis,
    outcomes: &mut [BatchOutcome],
) -> Result<BatchResult, StoreError> {
    let rows: Vec<BatchResult> = sqlx::query_as(SQLITE_BATCH)
        .bind(Json(&plan.notifications))
        .bind(Json(&plan.firing))
        .bind(now)
        .bind(WorkKind::Diagnose.as_str())
        .fetch_all(&mut *conn)
        .await?;
    for &(index, alert) in &plan.resolved {
        if conn.resolve(alert, batch[index], now).await? {
            outcomes[index].incidents_resolved += 1;
        }
    }
    sqlx::raw_sql("commit").execute(&mut *conn).await?;
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("batch returned no result row".into()))
}

/// One round trip when the batch resolves nothing (the statement is atomic
/// on its own), else a transaction around it and the resolutions.
async fn record_postgres(
    pool: &PgPool,
    plan: &BatchPlan<'_>,
    batch: &[&Notification],
    now: Millis,
    outcomes: &mut [BatchOutcome],
) -> Result<BatchResult, StoreError> {
    let statement = sqlx::query_as(POSTGRES_BATCH)
        .bind(Json(&plan.notifications))
        .bind(Json(&plan.firing))
        .bind(now)
        .bind(WorkKind::Diagnose.as_str());
    if plan.resolved.is_empty() {
        return Ok(statement.fetch_one(pool).await?);
    }
    let mut tx = pool.begin().await?;
    let row = statement.fetch_one(&mut *tx).await?;
    for &(index, alert) in &plan.resolved {
        if tx.resolve(alert, batch[index], now).await? {
            outcomes[index].incidents_resolved += 1;
        }
    }
    tx.commit().await?;
    Ok(row)
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(
    text: Option<&str>,
) -> Result<T, StoreError> {
    text.map_or_else(
        || Ok(T::default()),
        |t| serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("batch result: {e}"))),
    )
}

/// Resolves one episode: closes it when firing (returns true), or records
/// it as already resolved when remedy never saw it fire (it fired while
/// remedy was down, or began and ended within `group_wait`).
trait Resolve {
    async fn resolve(
        &mut self,
        alert: &Alert,
        notification: &Notification,
        now: Millis,
    ) -> Result<bool, sqlx::Error>;
}

/// Closes the episode when it is firing: marks it resolved, records the
/// event and cancels its pending work. Evaluates to whether it closed it.
macro_rules! close_firing {
    ($conn:expr, $alert:expr, $ends_at:expr, $now:expr, $seen:expr) => {{
        let closed: Option<i64> = sqlx::query_scalar(
            "update incidents
                set status = 'resolved', resolved_at = $3, ends_at = $4,
                    seen_count = seen_count + $5, last_seen_at = $3
              where fingerprint = $1 and starts_at = $2 and status = 'firing'
              returning id",
        )
        .bind($alert.fingerprint.as_str())
        .bind($alert.starts_at_key())
        .bind($now)
        .bind($ends_at.as_deref())
        .bind($seen)
        .fetch_optional(&mut *$conn)
        .await?;
        if let Some(id) = closed {
            record_event!($conn, id, $now, "resolved", json!({ "ends_at": $ends_at }));
            // A resolved incident never triggers anything more (a message
            // update in flight finishes; the one queued below follows it).
            sqlx::query(
                "update work set state = 'cancelled', lease_owner = null,
                        lease_until = null, updated_at = $2
                  where incident_id = $1 and state = 'pending'
                    and not (kind = 'notify' and lease_owner is not null)",
            )
            .bind(id)
            .bind($now)
            .execute(&mut *$conn)
            .await?;
            // Its requests die with it, and a posted report shows it resolved.
            sqlx::query(
                "update approvals set state = 'expired', decided_at = $2
                  where incident_id = $1 and state = 'pending'",
            )
            .bind(id)
            .bind($now)
            .execute(&mut *$conn)
            .await?;
            // Nobody is paged about a resolved incident.
            let cancelled = sqlx::query(
                "update escalation_timers set state = 'cancelled'
                  where incident_id = $1 and state in ('pending', 'paused')",
            )
            .bind(id)
            .execute(&mut *$conn)
            .await?
            .rows_affected();
            if cancelled > 0 {
                record_event!(
                    $conn,
                    id,
                    $now,
                    "escalation_cancelled",
                    json!({ "timers": cancelled, "reason": "resolved" })
                );
            }
            sqlx::query(
                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                 select $3, id, $2, $2, $2 from incidents where id = $1 and report is not null",
            )
            .bind(id)
            .bind($now)
            .bind(WorkKind::Notify.as_str())
            .execute(&mut *$conn)
            .await?;
        }
        closed.is_some()
    }};
}

macro_rules! impl_resolve {
    ($conn:ty) => {
        impl Resolve for $conn {
        async fn resolve(
            &mut self,
            alert: &Alert,
            notification: &Notification,
            now: Millis,
        ) -> Result<bool, sqlx::Error> {
            let conn = self;
            let ends_at = alert.ends_at.map(alert_time_key);
            if close_firing!(conn, alert, ends_at, now, 1_i64) {
                return Ok(true);
            }
            let (id, seen): (i64, i64) = sqlx::query_as(
                "insert into incidents (fingerprint, starts_at, ends_at, alertname,
                    severity, status, labels, annotations, generator_url, receiver,
                    group_key, opened_at, last_seen_at, seen_count, resolved_at)
                 values ($1, $2, $3, $4, $5, 'resolved', $6, $7, $8, $9, $10, $11, $11, 1, $11)
                 on conflict (fingerprint, starts_at) do update
                    set seen_count = incidents.seen_count + 1,
                        last_seen_at = excluded.last_seen_at
                 returning id, seen_count",
            )
            .bind(alert.fingerprint.as_str())
            .bind(alert.starts_at_key())
            .bind(ends_at.as_deref())
            .bind(alert.alertname())
            .bind(alert.severity())
            .bind(Json(&alert.labels))
            .bind(Json(&alert.annotations))
            .bind(&alert.generator_url)
            .bind(&notification.receiver)
            .bind(&notification.group_key)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            // On PostgreSQL another replica may have been inserting the
            // firing episode while the update above ran: the upsert then
            // waited for it and found a firing row, which must be closed.
            if seen > 1 && close_firing!(conn, alert, ends_at, now, 0_i64) {
                return Ok(true);
            }
            if seen == 1 {
                record_event!(
                    conn,
                    id,
                    now,
                    "resolved_unseen",
                    json!({
                        "ends_at": ends_at,
                        "note": "resolved notification for an episode remedy never saw firing"
                    })
                );
            }
            Ok(false)
        }
        }
    };
}

impl_resolve!(sqlx::SqliteConnection);
impl_resolve!(sqlx::PgConnection);

/// A batch aggregated for bulk statements: repeats of one delivery or one
/// episode become a single row with a count `n`, since one statement may not
/// touch a row twice.
struct BatchPlan<'a> {
    notifications: Vec<NotificationRow<'a>>,
    /// Sorted by episode, so concurrent replicas lock rows in one order.
    firing: Vec<FiringRow<'a>>,
    /// (index of the notification, alert), in arrival order.
    resolved: Vec<(usize, &'a Alert)>,
    /// Batch indexes of each delivery key, in arrival order.
    deliveries: BTreeMap<&'a str, Vec<usize>>,
    /// Batch index of the first notification that carried each episode.
    episodes: BTreeMap<(&'a str, String), usize>,
}

#[derive(Serialize)]
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
        let mut firing: BTreeMap<(&str, String), FiringRow<'a>> = BTreeMap::new();
        let mut episodes = BTreeMap::new();
        let mut resolved = Vec::new();
        for (index, notification) in batch.iter().enumerate() {
            deliveries
                .entry(notification.key.as_str())
                .or_default()
                .push(index);
            for alert in &notification.alerts {
                match alert.status {
                    AlertStatus::Firing => {
                        let key = (alert.fingerprint.as_str(), alert.starts_at_key());
                        episodes.entry(key.clone()).or_insert(index);
                        firing
                            .entry(key)
                            .and_modify(|row| row.n += 1)
                            .or_insert_with(|| FiringRow {
                                fingerprint: alert.fingerprint.as_str(),
                                starts_at: alert.starts_at_key(),
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
                    AlertStatus::Resolved => resolved.push((index, alert)),
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
            firing: firing.into_values().collect(),
            resolved,
            deliveries,
            episodes,
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

    /// Credits each episode this batch opened (`fingerprint@startsAt`) to
    /// the first notification that carried it.
    fn credit_opened(&self, opened: &[String], outcomes: &mut [BatchOutcome]) {
        for episode in opened {
            let Some((fingerprint, starts_at)) = episode.split_once('@') else {
                continue;
            };
            if let Some(&index) = self.episodes.get(&(fingerprint, starts_at.to_owned())) {
                outcomes[index].incidents_opened += 1;
            }
        }
    }
}
