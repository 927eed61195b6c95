//! Watching a measured escalation threshold: `recheck` work rows, one
//! pending per firing incident, each re-armed by the one before it. A
//! re-check's measurement, its failure or the end of watching is committed
//! together with the row's completion (fenced by its lease), so a crash
//! loses no re-check and none runs twice. Resolve cancels the pending row
//! with the incident's other work (`intake::close_incident`).

use serde_json::json;
use sqlx::types::Json;

use super::{
    ClaimedWork, Store, StoreError, WorkKind, enqueue_notify, finish_before_incident, record_event,
    transaction,
};
use crate::domain::{IncidentId, Millis};

/// Queues the incident's next re-check at `$2` (`$3` now), unless it is no
/// longer firing or one is already pending. Shared with the diagnosis,
/// which arms the first.
pub(super) const ARM_RECHECK: &str = "insert into work (kind, incident_id, due_at, created_at,
        updated_at)
  select $4, i.id, $2, $3, $3 from incidents i
   where i.id = $1 and i.status = 'firing'
     and not exists (select 1 from work w
                      where w.incident_id = $1 and w.kind = $4 and w.state = 'pending')";

/// How a finished re-check ends.
#[derive(Debug, Clone, PartialEq)]
pub enum RecheckOutcome<'a> {
    /// The steps ran: the report with their new outputs, and when the
    /// message's update is due (debounced by the caller).
    Measured {
        report: &'a serde_json::Value,
        notify_at: Millis,
    },
    /// A watched step failed: recorded on the timeline, never escalated.
    Failed { steps: &'a [String], error: &'a str },
    /// Nothing left to watch (the last level was reached, the threshold
    /// already escalated, the incident resolved).
    Stopped { reason: &'a str },
}

impl Store {
    /// Completes a claimed `recheck` row with its outcome and, with
    /// `next`, arms the next re-check; all in one transaction fenced by the
    /// row's lease. False when the lease was lost (or the row was cancelled
    /// by a resolve): nothing is recorded.
    pub async fn finish_recheck(
        &self,
        work: &ClaimedWork,
        incident: IncidentId,
        outcome: RecheckOutcome<'_>,
        next: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let done = finish_before_incident!(self, conn, work, incident.0, now);
            if done != 1 {
                return Ok(false);
            }
            match outcome {
                RecheckOutcome::Measured { report, notify_at } => {
                    let updated = sqlx::query(
                        "update incidents set report = $2 where id = $1 and status = 'firing'",
                    )
                    .bind(incident.0)
                    .bind(Json(report))
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if updated == 1 {
                        enqueue_notify!(conn, incident.0, notify_at, now);
                    }
                }
                RecheckOutcome::Failed { steps, error } => {
                    record_event!(
                        conn,
                        incident.0,
                        now,
                        "recheck_failed",
                        json!({ "steps": steps, "error": error, "attempt": work.attempts })
                    );
                }
                RecheckOutcome::Stopped { reason } => {
                    record_event!(
                        conn,
                        incident.0,
                        now,
                        "watch_stopped",
                        json!({ "reason": reason })
                    );
                }
            }
            if let Some(due) = next {
                sqlx::query(ARM_RECHECK)
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
}
