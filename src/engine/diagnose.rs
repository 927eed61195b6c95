//! Diagnosis of a newly opened incident. Until playbooks exist every alert is
//! unmatched, and the report says so with the alert's labels: that is the
//! report an unmatched alert keeps getting once they do.

use serde_json::json;

use super::WorkError;
use crate::domain::Millis;
use crate::store::{ClaimedWork, Store};

pub(super) async fn run(store: &Store, work: &ClaimedWork, now: Millis) -> Result<bool, WorkError> {
    let id = work.incident_id.ok_or(WorkError::NoIncident)?;
    let incident = store
        .get_incident(id)
        .await?
        .ok_or(WorkError::IncidentMissing(id.0))?;
    let summary = format!("No playbook matches alert `{}`", incident.alertname);
    let report = json!({
        "matched": false,
        "playbook": null,
        "summary": summary,
        "labels": incident.labels.0,
        "annotations": incident.annotations.0,
    });
    Ok(store
        .complete_diagnosis(work, id, &report, &summary, now)
        .await?)
}
