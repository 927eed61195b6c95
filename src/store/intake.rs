//! Writes a batch of webhook deliveries in one transaction (group commit):
//! the delivery itself, one incident per firing episode, the incident's
//! first timeline events and the work that follows from them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;
use sqlx::types::Json;

use super::{Store, StoreError, WorkKind, transaction};
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

impl Store {
    /// Commits every notification of the batch, or none. New deliveries and
    /// firing episodes are written with one statement per table for the
    /// whole batch (rows passed as one JSON parameter); resolutions, rarer
    /// and order-sensitive, one by one after them.
    pub async fn record_notifications(
        &self,
        batch: &[&Notification],
        now: Millis,
    ) -> Result<Vec<BatchOutcome>, StoreError> {
        let plan = BatchPlan::new(batch);
        let mut outcomes = vec![BatchOutcome::default(); batch.len()];
        let upsert_notifications = self.dialect(
            "insert into notifications (key, receiver, group_key, status, alert_count,
                truncated_alerts, first_seen_at, last_seen_at, seen_count)
             select value ->> 'key', value ->> 'receiver', value ->> 'group_key',
                    value ->> 'status', value ->> 'alert_count', value ->> 'truncated_alerts',
                    $2, $2, value ->> 'n'
               from json_each($1) where true
             on conflict (key) do update
                set seen_count = notifications.seen_count + excluded.seen_count,
                    last_seen_at = excluded.last_seen_at
             returning key, seen_count",
            "insert into notifications (key, receiver, group_key, status, alert_count,
                truncated_alerts, first_seen_at, last_seen_at, seen_count)
             select r.key, r.receiver, r.group_key, r.status, r.alert_count, r.truncated_alerts,
                    $2, $2, r.n
               from jsonb_to_recordset($1::jsonb) as r(key text, receiver text, group_key text,
                    status text, alert_count bigint, truncated_alerts bigint, n bigint)
             on conflict (key) do update
                set seen_count = notifications.seen_count + excluded.seen_count,
                    last_seen_at = excluded.last_seen_at
             returning key, seen_count",
        );
        let upsert_firing = self.dialect(
            "insert into incidents (fingerprint, starts_at, alertname, severity, status, labels,
                annotations, generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
             select value ->> 'fingerprint', value ->> 'starts_at', value ->> 'alertname',
                    value ->> 'severity', 'firing', value -> 'labels', value -> 'annotations',
                    value ->> 'generator_url', value ->> 'receiver', value ->> 'group_key',
                    $2, $2, value ->> 'n'
               from json_each($1) where true
             on conflict (fingerprint, starts_at) do update
                set seen_count = incidents.seen_count + excluded.seen_count,
                    last_seen_at = excluded.last_seen_at
             returning id, fingerprint, starts_at, seen_count",
            "insert into incidents (fingerprint, starts_at, alertname, severity, status, labels,
                annotations, generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
             select r.fingerprint, r.starts_at, r.alertname, r.severity, 'firing', r.labels,
                    r.annotations, r.generator_url, r.receiver, r.group_key, $2, $2, r.n
               from jsonb_to_recordset($1::jsonb) as r(fingerprint text, starts_at text,
                    alertname text, severity text, labels jsonb, annotations jsonb,
                    generator_url text, receiver text, group_key text, n bigint)
             on conflict (fingerprint, starts_at) do update
                set seen_count = incidents.seen_count + excluded.seen_count,
                    last_seen_at = excluded.last_seen_at
             returning id, fingerprint, starts_at, seen_count",
        );
        let insert_opened = self.dialect(
            "insert into incident_events (incident_id, at, kind, detail)
             select value ->> 'id', $2, 'opened', value -> 'detail' from json_each($1)",
            "insert into incident_events (incident_id, at, kind, detail)
             select r.id, $2, 'opened', r.detail
               from jsonb_to_recordset($1::jsonb) as r(id bigint, detail jsonb)",
        );
        let insert_work = self.dialect(
            "insert into work (kind, incident_id, due_at, created_at, updated_at)
             select $3, value ->> 'id', $2, $2, $2 from json_each($1)",
            "insert into work (kind, incident_id, due_at, created_at, updated_at)
             select $3, r.id, $2, $2, $2 from jsonb_to_recordset($1::jsonb) as r(id bigint)",
        );

        transaction!(self, |conn| {
            let seen: Vec<(String, i64)> = sqlx::query_as(upsert_notifications)
                .bind(Json(&plan.notifications))
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            for (key, total) in seen {
                plan.mark_duplicates(&key, total, &mut outcomes);
            }
            if !plan.firing.is_empty() {
                let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(upsert_firing)
                    .bind(Json(&plan.firing))
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?;
                let opened = plan.opened(&rows, &mut outcomes);
                if !opened.is_empty() {
                    sqlx::query(insert_opened)
                        .bind(Json(&opened))
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(insert_work)
                        .bind(Json(&opened))
                        .bind(now)
                        .bind(WorkKind::Diagnose.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
            for &(index, alert) in &plan.resolved {
                if conn.resolve(alert, batch[index], now).await? {
                    outcomes[index].incidents_resolved += 1;
                }
            }
        });
        Ok(outcomes)
    }

    /// Picks the statement for this store's SQL dialect.
    fn dialect(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Self::Sqlite(_) => sqlite,
            Self::Postgres(_) => postgres,
        }
    }
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
            let closed: Option<i64> = sqlx::query_scalar(
                "update incidents
                    set status = 'resolved', resolved_at = $3, ends_at = $4,
                        seen_count = seen_count + 1, last_seen_at = $3
                  where fingerprint = $1 and starts_at = $2 and status = 'firing'
                  returning id",
            )
            .bind(alert.fingerprint.as_str())
            .bind(alert.starts_at_key())
            .bind(now)
            .bind(ends_at.as_deref())
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(id) = closed {
                sqlx::query(
                    "insert into incident_events (incident_id, at, kind, detail)
                     values ($1, $2, 'resolved', $3)",
                )
                .bind(id)
                .bind(now)
                .bind(Json(json!({ "ends_at": ends_at })))
                .execute(&mut *conn)
                .await?;
                // A resolved incident never triggers anything more.
                sqlx::query(
                    "update work set state = 'cancelled', lease_owner = null,
                            lease_until = null, updated_at = $2
                      where incident_id = $1 and state = 'pending'",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
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
            if seen == 1 {
                sqlx::query(
                    "insert into incident_events (incident_id, at, kind, detail)
                     values ($1, $2, 'resolved_unseen', $3)",
                )
                .bind(id)
                .bind(now)
                .bind(Json(json!({
                    "ends_at": ends_at,
                    "note": "resolved notification for an episode remedy never saw firing"
                })))
                .execute(&mut *conn)
                .await?;
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

#[derive(Serialize)]
struct OpenedRow {
    id: i64,
    detail: serde_json::Value,
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

    /// The episodes this batch inserted (their count is only this batch's),
    /// credited to the first notification that carried each.
    fn opened(
        &self,
        rows: &[(i64, String, String, i64)],
        outcomes: &mut [BatchOutcome],
    ) -> Vec<OpenedRow> {
        let mut opened = Vec::new();
        for (id, fingerprint, starts_at, seen) in rows {
            let Some(row) = self
                .firing
                .iter()
                .find(|r| r.fingerprint == fingerprint && &r.starts_at == starts_at)
            else {
                continue;
            };
            if *seen != row.n {
                continue;
            }
            if let Some(&index) = self.episodes.get(&(row.fingerprint, row.starts_at.clone())) {
                outcomes[index].incidents_opened += 1;
            }
            opened.push(OpenedRow {
                id: *id,
                detail: json!({
                    "starts_at": row.starts_at,
                    "receiver": row.receiver,
                    "group_key": row.group_key,
                    "summary": row.annotations.get("summary"),
                }),
            });
        }
        opened.sort_by_key(|o| o.id);
        opened
    }
}
