//! Storm coalescing in the engine. Before an incident is diagnosed, the
//! store decides whether it joins a storm (`Store::admit_to_storm`); a
//! member's own diagnosis, message and timers never happen, the storm
//! incident's do. `storm_check` work recounts an open storm's members every
//! `storm.update_every`: it queues the message update when they changed and
//! resolves the storm when none fires any more; at most every
//! `storm.rediagnose_every` it re-runs the representative diagnosis first.

use super::{Engine, WorkError};
use crate::domain::{IncidentId, Millis};
use crate::playbook::Report;
use crate::store::{Admission, ClaimedWork, IncidentRecord, StormCheck};

/// Whether `incident` is diagnosed on its own or joins a storm.
pub(super) async fn admit(
    engine: &Engine,
    work: &ClaimedWork,
    incident: &IncidentRecord,
    now: Millis,
) -> Result<Admission, WorkError> {
    let admission = engine
        .store
        .admit_to_storm(work, incident, engine.storm, now)
        .await?;
    if let Admission::Member {
        storm,
        opened,
        swept,
    } = admission
    {
        if opened {
            tracing::warn!(storm = storm.0, representative = incident.id, alertname = %incident.alertname, "alert storm: incidents coalesce into one storm incident");
            metrics::counter!("remedy_storms_total").increment(1);
        }
        metrics::counter!("remedy_storm_members_total").increment(1 + swept);
    }
    Ok(admission)
}

/// `storm_check` work for a storm incident.
pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let storm = work.incident_id.ok_or(WorkError::NoIncident)?;
    if !rediagnose(engine, work, storm, now).await? {
        return Ok(false);
    }
    let next = now.saturating_add(engine.storm.update_every_ms);
    let outcome = engine.store.check_storm(work, storm, now, next).await?;
    if outcome == StormCheck::Resolved {
        tracing::info!(
            storm = storm.0,
            "alert storm resolved: its last member resolved"
        );
        metrics::counter!("remedy_storms_resolved_total").increment(1);
    }
    Ok(outcome != StormCheck::LeaseLost)
}

/// Re-runs the storm's representative diagnosis when it is due (at most
/// every `storm.rediagnose_every`), keeping the actions of the report its
/// approvals are bound to. Returns false when the lease was lost.
async fn rediagnose(
    engine: &Engine,
    work: &ClaimedWork,
    storm: IncidentId,
    now: Millis,
) -> Result<bool, WorkError> {
    let every = engine.storm.rediagnose_every_ms;
    if every <= 0 {
        return Ok(true);
    }
    let Some(incident) = engine
        .store
        .storm_due_for_diagnosis(storm, now.saturating_sub(every).saturating_add(1))
        .await?
    else {
        return Ok(true);
    };
    let Some(stored) = incident.report.as_ref() else {
        return Ok(true);
    };
    let stored: Report =
        serde_json::from_value(stored.0.clone()).map_err(|e| WorkError::Report(e.to_string()))?;
    let mut report =
        super::diagnose::diagnose(engine, &super::diagnose::alert_context(&incident)).await;
    report.actions = stored.actions;
    let json = serde_json::to_value(&report).map_err(|e| WorkError::Report(e.to_string()))?;
    Ok(engine
        .store
        .store_storm_rediagnosis(work, storm, &json, &report.summary, now)
        .await?)
}
