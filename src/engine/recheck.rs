//! `recheck` work: watching a measured escalation threshold. While an
//! incident fires and its matrix row's `threshold` has a level left to
//! reach, the steps the threshold reads (only those) run again every
//! `recheck_every`, as a diagnosis runs them: read-only, under the step's
//! timeout and the target's `max_concurrent_diagnoses`. The threshold is
//! evaluated on the report with the new outputs: when it holds, escalation
//! moves at once (once, as at diagnosis) and the ping says what was
//! measured. The report keeps the latest measurement with its time and the
//! message is updated (at most once per `recheck_every`). A step that fails
//! is recorded and measured again at the next interval; it never escalates.
//! Watching ends on resolve, when the threshold escalated, and when no level
//! is left; acknowledging does not end it.

use std::time::Duration;

use super::diagnose::{alert_context, hold_named_target};
use super::{Engine, WorkError};
use crate::domain::{IncidentId, IncidentStatus, Millis, TimerKind, TimerState};
use crate::playbook::evaluate::PlannedStep;
use crate::playbook::{self, Report};
use crate::store::{ClaimedWork, IncidentRecord, RecheckOutcome, StoreError};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// What is watched for an incident: the steps its policy's threshold reads
/// (of its playbook's) and how often; None when nothing is (no threshold,
/// no playbook, or a threshold over no step, which a new measurement
/// cannot change). A storm member is never watched: its storm is.
#[must_use]
pub fn watched(engine: &Engine, incident: &IncidentRecord) -> Option<(Vec<String>, Duration)> {
    if incident.storm_id.is_some() {
        return None;
    }
    let policy = engine.matrix.policy_for(&incident.labels.0);
    policy.threshold.as_ref()?;
    let playbook = playbook::find(&engine.playbooks, &incident.labels.0)?;
    let ids: Vec<String> = playbook
        .spec
        .steps
        .iter()
        .map(|s| s.value.id().to_owned())
        .collect();
    let steps = policy.threshold_steps(&ids);
    (!steps.is_empty()).then(|| (steps, policy.recheck_every(engine.escalation.recheck_every)))
}

/// Whether a level is left for a trigger to reach: a first ping of a level
/// not fired yet (pending, or paused by an Ack).
async fn level_left(engine: &Engine, id: IncidentId) -> Result<bool, StoreError> {
    Ok(engine.store.escalation(id).await?.is_some_and(|e| {
        e.timers.iter().any(|t| {
            t.kind == TimerKind::Escalate
                && t.nth == 0
                && matches!(t.state, TimerState::Pending | TimerState::Paused)
        })
    }))
}

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let stop = |reason: &'static str| async move {
        tracing::debug!(incident = id.0, reason, "watching stopped");
        engine
            .store
            .finish_recheck(work, id, RecheckOutcome::Stopped { reason }, None, now)
            .await
    };
    if incident.status != IncidentStatus::Firing {
        return Ok(stop("the incident resolved").await?);
    }
    if incident.storm_id.is_some() {
        return Ok(stop("a storm member: its storm is watched").await?);
    }
    let Some((steps, every)) = watched(engine, &incident) else {
        return Ok(stop("no threshold over the playbook's steps").await?);
    };
    if engine
        .store
        .triggered(id, super::escalate::THRESHOLD)
        .await?
    {
        return Ok(stop("the threshold escalated").await?);
    }
    if !level_left(engine, id).await? {
        return Ok(stop("the last level is reached").await?);
    }
    let Some(json) = incident.report.as_ref() else {
        return Ok(stop("not diagnosed").await?);
    };
    let mut report: Report =
        serde_json::from_value(json.0.clone()).map_err(|e| WorkError::Report(e.to_string()))?;
    let alert = alert_context(&incident);
    let Some(playbook) = playbook::find(&engine.playbooks, &alert.labels) else {
        return Ok(stop("no playbook matches").await?);
    };
    let planned: Vec<_> = playbook::evaluate::plan(playbook, &alert, &engine.probes)
        .into_iter()
        .filter(|(id, _)| steps.contains(id))
        .collect();
    // The re-check loads the target like a diagnosis and counts against
    // its bound: the target of its first `sql` step.
    let target = planned.iter().find_map(|(_, step)| match step {
        Ok(PlannedStep::Sql { target, .. }) => Some(target.clone()),
        _ => None,
    });
    if !hold_named_target(engine, work, target, now).await? {
        return Ok(false);
    }
    let outputs = engine.diagnoser.run(planned).await;
    let next = now.saturating_add(millis(every));
    let failed: Vec<String> = outputs
        .iter()
        .filter(|(_, o)| !o.ok)
        .map(|(id, o)| format!("{id}: {}", o.error.as_deref().unwrap_or("failed")))
        .collect();
    if !failed.is_empty() {
        // Never judged on a failed measurement: an empty result could read
        // as "over the threshold" (or under it) and mean neither.
        let error = failed.join("; ");
        tracing::warn!(incident = id.0, %error, "re-check failed; measured again at the next interval");
        metrics::counter!("remedy_rechecks_total", "result" => "failed").increment(1);
        let outcome = RecheckOutcome::Failed {
            steps: &steps,
            error: &error,
        };
        return Ok(engine
            .store
            .finish_recheck(work, id, outcome, Some(next), now)
            .await?);
    }
    metrics::counter!("remedy_rechecks_total", "result" => "measured").increment(1);
    // The message is updated at most once per interval.
    let previous = steps.iter().filter_map(|s| report.measured.get(s)).max();
    let notify_at = previous.map_or(now, |p| now.max(p.saturating_add(millis(every))));
    for (step, output) in outputs {
        report.measured.insert(step.clone(), now);
        report.steps.insert(step, output);
    }
    let escalated = super::escalate::check_threshold(engine, id, &incident, &report, now).await?;
    // A threshold escalates once: watching ends with it.
    let next = (!escalated).then_some(next);
    let json = serde_json::to_value(&report).map_err(|e| WorkError::Report(e.to_string()))?;
    let outcome = RecheckOutcome::Measured {
        report: &json,
        notify_at,
    };
    Ok(engine
        .store
        .finish_recheck(work, id, outcome, next, now)
        .await?)
}
