//! Writes a batch of webhook deliveries in one transaction (group commit):
//! the delivery itself, one incident per firing episode, the incident's
//! first timeline events and the work that follows from them.

use serde_json::json;
use sqlx::Row;
use sqlx::types::Json;

use super::{Store, StoreError, WorkKind, transaction};
use crate::domain::{Alert, AlertStatus, Millis, Notification};

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
    /// Commits every notification of the batch, or none.
    pub async fn record_notifications(
        &self,
        batch: &[&Notification],
        now: Millis,
    ) -> Result<Vec<BatchOutcome>, StoreError> {
        let outcomes = transaction!(self, |conn| {
            let mut outcomes = Vec::with_capacity(batch.len());
            for notification in batch {
                let seen: i64 = sqlx::query_scalar(
                    "insert into notifications (key, receiver, group_key, status, alert_count,
                        truncated_alerts, first_seen_at, last_seen_at, seen_count)
                     values ($1, $2, $3, $4, $5, $6, $7, $7, 1)
                     on conflict (key) do update
                        set seen_count = notifications.seen_count + 1,
                            last_seen_at = excluded.last_seen_at
                     returning seen_count",
                )
                .bind(notification.key.as_str())
                .bind(&notification.receiver)
                .bind(&notification.group_key)
                .bind(notification.status.as_str())
                .bind(i64::try_from(notification.alerts.len()).unwrap_or(i64::MAX))
                .bind(i64::try_from(notification.truncated_alerts).unwrap_or(i64::MAX))
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
                let mut outcome = BatchOutcome {
                    duplicate: seen > 1,
                    ..BatchOutcome::default()
                };
                for alert in &notification.alerts {
                    match alert.status {
                        AlertStatus::Firing => {
                            let row = sqlx::query(
                                "insert into incidents (fingerprint, starts_at, alertname, severity,
                                    status, labels, annotations, generator_url, receiver, group_key,
                                    opened_at, last_seen_at, seen_count)
                                 values ($1, $2, $3, $4, 'firing', $5, $6, $7, $8, $9, $10, $10, 1)
                                 on conflict (fingerprint, starts_at) do update
                                    set seen_count = incidents.seen_count + 1,
                                        last_seen_at = excluded.last_seen_at
                                 returning id, seen_count",
                            )
                            .bind(alert.fingerprint.as_str())
                            .bind(alert.starts_at_key())
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
                            let id: i64 = row.try_get("id")?;
                            let seen: i64 = row.try_get("seen_count")?;
                            if seen == 1 {
                                outcome.incidents_opened += 1;
                                sqlx::query(
                                    "insert into incident_events (incident_id, at, kind, detail)
                                     values ($1, $2, 'opened', $3)",
                                )
                                .bind(id)
                                .bind(now)
                                .bind(Json(opened_detail(alert, notification)))
                                .execute(&mut *conn)
                                .await?;
                                sqlx::query(
                                    "insert into work (kind, incident_id, due_at, created_at, updated_at)
                                     values ($1, $2, $3, $3, $3)",
                                )
                                .bind(WorkKind::Diagnose.as_str())
                                .bind(id)
                                .bind(now)
                                .execute(&mut *conn)
                                .await?;
                            }
                        }
                        AlertStatus::Resolved => {
                            let ends_at = alert.ends_at.map(crate::domain::alert_time_key);
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
                                outcome.incidents_resolved += 1;
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
                                continue;
                            }
                            // Already resolved, or an episode never seen firing
                            // (it fired while remedy was down, or began and ended
                            // within group_wait): recorded, not an error.
                            let row = sqlx::query(
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
                            let id: i64 = row.try_get("id")?;
                            let seen: i64 = row.try_get("seen_count")?;
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
                        }
                    }
                }
                outcomes.push(outcome);
            }
            outcomes
        });
        Ok(outcomes)
    }
}

fn opened_detail(alert: &Alert, notification: &Notification) -> serde_json::Value {
    json!({
        "starts_at": alert.starts_at_key(),
        "receiver": notification.receiver,
        "group_key": notification.group_key,
        "summary": alert.annotations.get("summary"),
    })
}
