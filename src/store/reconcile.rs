//! Reconciliation's state: which firing incidents Alertmanager no longer
//! has (and since when), closing one whose resolve never came, and holding
//! an incident's escalation back while Alertmanager reports its alert
//! silenced. The engine's reconciler decides; these functions store.
//!
//! Closing is the webhook resolve's (`intake::close_incident`), with its
//! own reason.

use serde_json::json;

use super::intake::close_incident;
use super::{Store, StoreError, enqueue_notify, on_pool, record_event, transaction};
use crate::domain::{IncidentId, Millis, format_millis};

/// A firing incident as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReconcileCandidate {
    pub id: i64,
    pub fingerprint: String,
    /// The episode's `startsAt` (RFC 3339, as the webhook carried it).
    pub starts_at: String,
    /// When a complete run first found its alert missing from every peer.
    pub absent_since: Option<Millis>,
    /// Set while its escalation is held back by a silence.
    pub silenced_at: Option<Millis>,
    pub silenced_until: Option<Millis>,
    /// JSON list of silence ids.
    pub silenced_by: Option<String>,
}

/// A silence Alertmanager reports on an incident's alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceState {
    /// The silences' ids, sorted.
    pub silences: Vec<String>,
    /// When the last of them ends, when known.
    pub until: Option<Millis>,
    /// Pending timers due earlier are held back to this time: the silence's
    /// end, or (end unknown) a little past the next run, which renews it.
    pub hold_until: Millis,
}

/// Why a closed incident's pending escalation timers were cancelled.
const CLOSED_REASON: &str = "resolved_by_reconciliation";

impl Store {
    /// Every firing incident with what reconciliation recorded about it.
    pub async fn reconcile_candidates(&self) -> Result<Vec<ReconcileCandidate>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select i.id, i.fingerprint, i.starts_at, a.since as absent_since, e.silenced_at,
                        e.silenced_until, e.silenced_by
                   from incidents i
                   left join incident_absences a on a.incident_id = i.id
                   left join escalations e on e.incident_id = i.id
                  where i.status = 'firing' and i.fingerprint not like 'storm:%'
                  order by i.id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records that a complete run found the alerts of `absent` missing
    /// (keeping the first time) and those of `present` there again.
    pub async fn record_absences(
        &self,
        absent: &[IncidentId],
        present: &[IncidentId],
        now: Millis,
    ) -> Result<(), StoreError> {
        if absent.is_empty() && present.is_empty() {
            return Ok(());
        }
        transaction!(self, |conn| {
            for id in absent {
                sqlx::query(
                    "insert into incident_absences (incident_id, since)
                     select id, $2 from incidents where id = $1 and status = 'firing'
                     on conflict (incident_id) do nothing",
                )
                .bind(id.0)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            for id in present {
                sqlx::query("delete from incident_absences where incident_id = $1")
                    .bind(id.0)
                    .execute(&mut *conn)
                    .await?;
            }
        });
        Ok(())
    }

    /// Closes a firing incident whose alert Alertmanager no longer has:
    /// resolved now (`ends_at` is now, as RFC 3339 UTC), a
    /// `resolved_by_reconciliation` event, its pending work cancelled, its
    /// approval requests expired, its escalation timers cancelled, and its
    /// chat message brought up to date, as a resolve does. Fenced on the
    /// status: false when it was no longer firing (a resolve came first).
    pub async fn close_by_reconciliation(
        &self,
        incident: IncidentId,
        detail: serde_json::Value,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let ends_at = format_millis(now);
        self.in_transaction(async |conn| {
            let closed = conn
                .execute(
                    "update incidents
                        set status = 'resolved', resolved_at = $2, ends_at = $3,
                            ends_ms = case when $2 > starts_ms then $2 else starts_ms end
                      where id = $1 and status = 'firing'",
                    &[incident.0.into(), now.into(), ends_at.as_str().into()],
                )
                .await?;
            if closed == 0 {
                return Ok(false);
            }
            conn.execute(
                "delete from incident_absences where incident_id = $1",
                &[incident.0.into()],
            )
            .await?;
            let mut detail = detail;
            detail["ends_at"] = json!(ends_at);
            close_incident(conn, incident.0, now, CLOSED_REASON, detail).await?;
            Ok(true)
        })
        .await
    }

    /// Alertmanager reports the incident's alert silenced: records the
    /// silence on its escalation and holds its pending timers back to
    /// `state.hold_until` (each keeps its own due time in `held_from`). A
    /// new silence, or a new end, is recorded on the timeline and shown in
    /// the chat message. False when the incident has no escalation or is
    /// not firing.
    pub async fn hold_for_silence(
        &self,
        incident: IncidentId,
        state: &SilenceState,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let silences = serde_json::to_string(&state.silences)
            .map_err(|e| StoreError::Corrupt(format!("silence ids: {e}")))?;
        Ok(transaction!(self, |conn| {
            let before: Option<(Option<Millis>, Option<Millis>, Option<String>)> = sqlx::query_as(
                "select e.silenced_at, e.silenced_until, e.silenced_by
                       from escalations e join incidents i on i.id = e.incident_id
                      where e.incident_id = $1 and i.status = 'firing'",
            )
            .bind(incident.0)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((silenced_at, until, by)) = before else {
                return Ok(false);
            };
            sqlx::query(
                "update escalations set silenced_at = coalesce(silenced_at, $2),
                        silenced_by = $3, silenced_until = $4
                  where incident_id = $1",
            )
            .bind(incident.0)
            .bind(now)
            .bind(&silences)
            .bind(state.until)
            .execute(&mut *conn)
            .await?;
            let held = sqlx::query(
                "update escalation_timers set held_from = coalesce(held_from, due_at), due_at = $2
                  where incident_id = $1 and state = 'pending' and due_at is not null
                    and due_at < $2",
            )
            .bind(incident.0)
            .bind(state.hold_until)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            let changed = silenced_at.is_none()
                || until != state.until
                || by.as_deref() != Some(silences.as_str());
            if changed {
                record_event!(
                    conn,
                    incident.0,
                    now,
                    if silenced_at.is_none() {
                        "silenced_in_alertmanager"
                    } else {
                        "silence_changed"
                    },
                    json!({ "silences": state.silences, "until": state.until.map(format_millis),
                            "held_timers": held })
                );
                enqueue_notify!(conn, incident.0, now, now);
            }
            true
        }))
    }

    /// The incident's alert is active and no longer silenced: its held
    /// timers get their own due times back (those that fell due meanwhile
    /// are due now), the silence is cleared, and the message says so. False
    /// when no silence was recorded.
    pub async fn end_silence_hold(
        &self,
        incident: IncidentId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let ended = sqlx::query(
                "update escalations set silenced_at = null, silenced_by = null,
                        silenced_until = null
                  where incident_id = $1 and silenced_at is not null",
            )
            .bind(incident.0)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if !ended {
                return Ok(false);
            }
            let released = sqlx::query(
                "update escalation_timers
                    set due_at = case when held_from > $2 then held_from else $2 end,
                        held_from = null
                  where incident_id = $1 and state = 'pending' and held_from is not null",
            )
            .bind(incident.0)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            record_event!(
                conn,
                incident.0,
                now,
                "silence_ended",
                json!({ "released_timers": released })
            );
            enqueue_notify!(conn, incident.0, now, now);
            true
        }))
    }
}
