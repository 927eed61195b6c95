//! Incidents and their timelines: listing, reading, and recording what a
//! diagnosis found.

use serde::Serialize;
use sqlx::types::Json;

use super::WorkKind;
use super::execution::audit;
use super::{
    ClaimedWork, NewApproval, Store, StoreError, enqueue_notify, finish_before_incident,
    insert_approval, on_pool, record_event, transaction,
};
use crate::domain::{IncidentId, IncidentStatus, Labels, Millis, format_millis};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IncidentRecord {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub status: IncidentStatus,
    pub alertname: String,
    pub severity: String,
    pub fingerprint: String,
    pub starts_at: String,
    pub ends_at: Option<String>,
    pub labels: Json<Labels>,
    pub annotations: Json<Labels>,
    pub generator_url: String,
    pub receiver: String,
    pub group_key: String,
    #[serde(serialize_with = "as_rfc3339")]
    pub opened_at: Millis,
    #[serde(serialize_with = "as_rfc3339")]
    pub last_seen_at: Millis,
    /// Deliveries of this episode, firing and resolved, duplicates included.
    pub seen_count: i64,
    #[serde(serialize_with = "as_rfc3339_opt")]
    pub resolved_at: Option<Millis>,
    pub report: Option<Json<serde_json::Value>>,
    /// The storm incident this one joined (it was then neither diagnosed,
    /// posted nor escalated on its own).
    pub storm_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IncidentEvent {
    pub id: i64,
    #[serde(serialize_with = "as_rfc3339")]
    pub at: Millis,
    pub kind: String,
    pub detail: Json<serde_json::Value>,
}

/// One entry of an incident's record: a timeline event or an audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    #[serde(serialize_with = "as_rfc3339")]
    pub at: Millis,
    /// `timeline` or `audit`.
    pub source: &'static str,
    pub seq: i64,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// `GET /v1/incidents` filters, newest first, keyset-paged by id.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    pub alertname: Option<String>,
    /// Only incidents with a smaller id (the previous page's last id).
    pub before: Option<i64>,
    pub limit: i64,
}

macro_rules! incident_columns {
    () => {
        "id, status, alertname, severity, fingerprint, starts_at, ends_at, labels, annotations,
         generator_url, receiver, group_key, opened_at, last_seen_at, seen_count, resolved_at,
         report, storm_id"
    };
}

impl Store {
    pub async fn list_incidents(
        &self,
        filter: &IncidentFilter,
    ) -> Result<Vec<IncidentRecord>, StoreError> {
        const SQL: &str = concat!(
            "select ",
            incident_columns!(),
            " from incidents
              where ($1 is null or status = $1) and ($2 is null or alertname = $2)
                and ($3 is null or id < $3)
              order by id desc limit $4"
        );
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(filter.status.map(IncidentStatus::as_str))
                .bind(filter.alertname.as_deref())
                .bind(filter.before)
                .bind(filter.limit)
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn get_incident(&self, id: IncidentId) -> Result<Option<IncidentRecord>, StoreError> {
        const SQL: &str = concat!(
            "select ",
            incident_columns!(),
            " from incidents where id = $1"
        );
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(SQL).bind(id.0).fetch_optional(pool).await?
        }))
    }

    /// The incident's timeline, oldest first.
    pub async fn incident_events(&self, id: IncidentId) -> Result<Vec<IncidentEvent>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, at, kind, detail from incident_events
                  where incident_id = $1 order by id",
            )
            .bind(id.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Every recorded event of an incident, oldest first: its timeline and
    /// its audit log (approvals, execution starts and outcomes) merged.
    pub async fn timeline(&self, id: IncidentId) -> Result<Vec<TimelineEntry>, StoreError> {
        let events = self.incident_events(id).await?;
        let audit: Vec<(i64, Millis, String, Json<serde_json::Value>)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, at, event, detail from audit_log where incident_id = $1 order by id",
            )
            .bind(id.0)
            .fetch_all(pool)
            .await?
        });
        let mut all: Vec<TimelineEntry> = events
            .into_iter()
            .map(|e| TimelineEntry {
                at: e.at,
                source: "timeline",
                seq: e.id,
                kind: e.kind,
                detail: e.detail.0,
            })
            .chain(
                audit
                    .into_iter()
                    .map(|(seq, at, kind, detail)| TimelineEntry {
                        at,
                        source: "audit",
                        seq,
                        kind,
                        detail: detail.0,
                    }),
            )
            .collect();
        // Same millisecond: the timeline's own order first (it records the
        // decision that led to the audited act).
        all.sort_by_key(|e| (e.at, e.source != "timeline", e.seq));
        Ok(all)
    }

    /// Whether an incident's timeline has an event of `kind`.
    pub async fn has_event(&self, id: IncidentId, kind: &str) -> Result<bool, StoreError> {
        let n: i64 = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "select count(*) from incident_events where incident_id = $1 and kind = $2",
            )
            .bind(id.0)
            .bind(kind)
            .fetch_one(pool)
            .await?
        });
        Ok(n > 0)
    }

    /// Whether escalation was already triggered for a reason starting with
    /// `prefix` (`threshold:`): a condition that still holds moves
    /// escalation once, not one level per check.
    pub async fn triggered(&self, id: IncidentId, prefix: &str) -> Result<bool, StoreError> {
        let n: i64 = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "select count(*) from incident_events
                  where incident_id = $1 and kind = 'escalation_triggered'
                    and substr(detail ->> 'reason', 1, length($2)) = $2",
            )
            .bind(id.0)
            .bind(prefix)
            .fetch_one(pool)
            .await?
        });
        Ok(n > 0)
    }

    /// Appends one event to an incident's timeline.
    pub async fn add_event(
        &self,
        id: IncidentId,
        kind: &str,
        detail: &serde_json::Value,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            record_event!(conn, id.0, now, kind, detail);
        });
        Ok(())
    }

    /// Stores a diagnosis report and finishes its work row in one
    /// transaction, only while `work`'s lease is still held: a worker whose
    /// lease expired and was taken over records nothing. `watch_at` arms
    /// the first `recheck` of a measured escalation threshold.
    #[allow(clippy::too_many_arguments, reason = "one diagnosis's outcome")]
    pub async fn complete_diagnosis(
        &self,
        work: &ClaimedWork,
        incident: IncidentId,
        report: &serde_json::Value,
        summary: &str,
        approvals: &[NewApproval],
        watch_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let done = finish_before_incident!(self, conn, work, incident.0, now);
            if done != 1 {
                return Ok(false);
            }
            sqlx::query("update incidents set report = $2 where id = $1")
                .bind(incident.0)
                .bind(Json(report))
                .execute(&mut *conn)
                .await?;
            record_event!(
                conn,
                incident.0,
                now,
                "diagnosed",
                serde_json::json!({ "summary": summary, "attempt": work.attempts }),
            );
            for a in approvals {
                insert_approval!(conn, incident.0, a, now);
            }
            if approvals.iter().any(|a| a.automatic) {
                audit!(
                    conn,
                    incident.0,
                    None::<i64>,
                    now,
                    "auto_approved",
                    serde_json::json!({
                        "actions": approvals.iter().filter(|a| a.automatic).map(|a| &a.key).collect::<Vec<_>>(),
                        "policy": "executor.allow_automatic and risk: safe",
                    })
                );
                sqlx::query(
                    "insert into work (kind, incident_id, due_at, created_at, updated_at)
                     values ('execute', $1, $2, $2, $2)",
                )
                .bind(incident.0)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            // Post the report now, and show the requests as expired when
            // their time runs out.
            let expiry = approvals.iter().map(|a| a.expires_at).max();
            for due in std::iter::once(now).chain(expiry) {
                enqueue_notify!(conn, incident.0, due, now);
            }
            // The first re-check of a measured threshold, with the report.
            if let Some(due) = watch_at {
                sqlx::query(super::watch::ARM_RECHECK)
                    .bind(incident.0)
                    .bind(due)
                    .bind(now)
                    .bind(WorkKind::Recheck.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            true
        }))
    }

    /// Open incidents, for `/metrics`.
    pub async fn count_open_incidents(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("select count(*) from incidents where status = 'firing'")
                .fetch_one(pool)
                .await?
        }))
    }
}

fn as_rfc3339<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(*ms))
}

#[allow(
    clippy::ref_option,
    reason = "the signature serde's serialize_with requires"
)]
fn as_rfc3339_opt<S: serde::Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&format_millis(*ms)),
        None => s.serialize_none(),
    }
}
