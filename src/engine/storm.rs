//! Storm coalescing in the engine. Before an incident is diagnosed, the
//! store decides whether it joins a storm (`Store::admit_to_storm`); a
//! member's own diagnosis, message and timers never happen, the storm
//! incident's do. `storm_check` work recounts an open storm's members every
//! `storm.update_every`: it queues the message update when they changed and
//! resolves the storm when none fires any more.

use super::{Engine, WorkError};
use crate::domain::Millis;
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
    if let Admission::Member { storm, opened } = admission {
        if opened {
            tracing::warn!(storm = storm.0, representative = incident.id, alertname = %incident.alertname, "alert storm: incidents coalesce into one storm incident");
            metrics::counter!("remedy_storms_total").increment(1);
        }
        metrics::counter!("remedy_storm_members_total").increment(1);
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
