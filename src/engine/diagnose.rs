//! Diagnosis of a newly opened incident: find the matching playbook, run
//! its steps, evaluate findings, actions and suggestions, and store the
//! report with the incident, fenced by the work's lease. An alert that no
//! playbook matches gets a report that says so, with its labels.

use super::{Engine, WorkError};
use crate::domain::Millis;
use crate::playbook::{self, AlertContext, Report};
use crate::store::{ClaimedWork, IncidentRecord};

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let id = work.incident_id.ok_or(WorkError::NoIncident)?;
    let incident = engine
        .store
        .get_incident(id)
        .await?
        .ok_or(WorkError::IncidentMissing(id.0))?;
    let report = diagnose(engine, &alert_context(&incident)).await;
    let json = serde_json::to_value(&report).map_err(|e| WorkError::Report(e.to_string()))?;
    Ok(engine
        .store
        .complete_diagnosis(work, id, &json, &report.summary, now)
        .await?)
}

/// The full read-only diagnosis for one alert (also `remedy simulate`).
pub async fn diagnose(engine: &Engine, alert: &AlertContext) -> Report {
    let Some(playbook) = playbook::find(&engine.playbooks, &alert.labels) else {
        return Report::unmatched(alert);
    };
    let planned = playbook::evaluate::plan(playbook, alert, &engine.probes);
    let outputs = engine.diagnoser.run(planned).await;
    playbook::evaluate::evaluate(playbook, alert, &engine.probes, outputs)
}

#[must_use]
pub fn alert_context(incident: &IncidentRecord) -> AlertContext {
    AlertContext {
        labels: incident.labels.0.clone(),
        annotations: incident.annotations.0.clone(),
        status: incident.status.clone(),
        fingerprint: incident.fingerprint.clone(),
        starts_at: incident.starts_at.clone(),
    }
}
