//! Diagnosis of a newly opened incident: find the matching playbook, run
//! its steps, evaluate findings, actions and suggestions, and store the
//! report with the incident, fenced by the work's lease. An alert that no
//! playbook matches gets a report that says so, with its labels. A
//! diagnosis runs only while its target database has fewer than
//! `max_concurrent_diagnoses` running; otherwise it waits in the queue.

use super::{Engine, WorkError};
use crate::domain::Millis;
use crate::playbook::evaluate::PlannedStep;
use crate::playbook::{self, ActionInstance, AlertContext, Report};
use crate::store::{Admission, ClaimedWork, IncidentRecord, NewApproval, TargetSlot};

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    // A storm member is neither diagnosed, posted nor escalated on its own.
    match super::storm::admit(engine, work, &incident, now).await? {
        Admission::Alone => {}
        Admission::Member { .. } | Admission::Swept { .. } => return Ok(true),
        Admission::LeaseLost => return Ok(false),
    }
    // The timers first: a diagnosis that fails, or waits for its target,
    // must not cost the page.
    super::escalate::schedule(engine, id, &incident, now).await?;
    let alert = alert_context(&incident);
    if !hold_target(engine, work, &alert, now).await? {
        return Ok(false);
    }
    let report = diagnose(engine, &alert).await;
    let json = serde_json::to_value(&report).map_err(|e| WorkError::Report(e.to_string()))?;
    let mut approvals = approval_requests(&report, approval_expiry(engine, now));
    for a in &mut approvals {
        a.automatic &= engine.executor.allow_automatic;
    }
    // A measured threshold is watched from now on (engine::recheck).
    let watch_at = super::recheck::watched(engine, &incident)
        .map(|(_, every)| now.saturating_add(i64::try_from(every.as_millis()).unwrap_or(i64::MAX)));
    let stored = engine
        .store
        .complete_diagnosis(work, id, &json, &report.summary, &approvals, watch_at, now)
        .await?;
    if stored {
        if incident.fingerprint.starts_with("storm:") {
            // Its members' diagnose rows, queued since intake, must not
            // delay the one message the storm gets.
            engine
                .store
                .hasten_storm_message(id, incident.opened_at.saturating_sub(1).min(now), now)
                .await?;
        }
        super::escalate::check_threshold(engine, id, &incident, &report, now).await?;
    }
    Ok(stored)
}

/// Counts this row against its diagnosis's target (see
/// [`Store::take_target_slot`](crate::store::Store::take_target_slot)).
/// `TargetBusy` when the target already runs its bound of diagnoses: the
/// row goes back to the queue, as a row, without spending an attempt.
/// False when the lease is lost. A diagnosis with no `sql` step, or on a
/// target not in the settings (its steps fail), is not held back.
pub(super) async fn hold_target(
    engine: &Engine,
    work: &ClaimedWork,
    alert: &AlertContext,
    now: Millis,
) -> Result<bool, WorkError> {
    hold_named_target(engine, work, diagnosis_target(engine, alert), now).await
}

/// [`hold_target`] for a known target (a re-check's, whose steps may not
/// include the playbook's first).
pub(super) async fn hold_named_target(
    engine: &Engine,
    work: &ClaimedWork,
    target: Option<String>,
    now: Millis,
) -> Result<bool, WorkError> {
    let Some(target) = target else {
        return Ok(true);
    };
    let Some(bound) = engine.diagnoser.diagnosis_bound(&target) else {
        return Ok(true);
    };
    match engine
        .store
        .take_target_slot(work, &target, i64::from(bound), now)
        .await?
    {
        TargetSlot::Taken => Ok(true),
        TargetSlot::Full => {
            metrics::counter!("remedy_diagnoses_waiting_total", "target" => target.clone())
                .increment(1);
            Err(WorkError::TargetBusy(target))
        }
        TargetSlot::LeaseLost => Ok(false),
    }
}

/// The database a diagnosis runs against: the target of its playbook's
/// first `sql` step (the playbook's `target` unless the step names
/// another). One per diagnosis: a playbook whose steps query several
/// targets is counted against the first only.
#[must_use]
pub fn diagnosis_target(engine: &Engine, alert: &AlertContext) -> Option<String> {
    let playbook = playbook::find(&engine.playbooks, &alert.labels)?;
    playbook::evaluate::plan(playbook, alert, &engine.probes)
        .into_iter()
        .find_map(|(_, step)| match step {
            Ok(PlannedStep::Sql { target, .. }) => Some(target),
            _ => None,
        })
}

/// When a request made at `now` expires (`chat.approval_ttl` later).
pub(super) fn approval_expiry(engine: &Engine, now: Millis) -> Millis {
    now.saturating_add(i64::try_from(engine.chat.approval_ttl.as_millis()).unwrap_or(i64::MAX))
}

/// One approval request per action the report offers, keyed `id` (or
/// `id#n` when an action repeats over rows), bound to a digest of exactly
/// what is shown and will run. Undo actions (`undoes`) are left out: each is
/// offered once its change has run ([`undo_request`]).
#[must_use]
pub fn approval_requests(report: &Report, expires_at: Millis) -> Vec<NewApproval> {
    action_keys(report)
        .into_iter()
        .enumerate()
        .filter(|(seq, _)| report.actions[*seq].undoes.is_none())
        .map(|(seq, key)| approval_request(report, seq, key, expires_at))
        .collect()
}

/// The approval request offering the undo of the action at `changed` (a
/// report position) for the same `for_each` row, when the playbook has one.
#[must_use]
pub fn undo_request(report: &Report, changed: usize, expires_at: Millis) -> Option<NewApproval> {
    let change = report.actions.get(changed)?;
    let seq = report
        .actions
        .iter()
        .position(|a| a.undoes.as_deref() == Some(change.id.as_str()) && a.row == change.row)?;
    let key = action_keys(report).swap_remove(seq);
    Some(approval_request(report, seq, key, expires_at))
}

/// The report position of the change an undo at `undo` answers (the
/// reverse of [`undo_request`]).
#[must_use]
pub fn undone_by(report: &Report, undo: usize) -> Option<usize> {
    let undo = report.actions.get(undo)?;
    let id = undo.undoes.as_deref()?;
    report
        .actions
        .iter()
        .position(|a| a.id == id && a.row == undo.row)
}

/// Each report action's approval key: its id, or `id#n` when it repeats.
fn action_keys(report: &Report) -> Vec<String> {
    let mut seen: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let repeats = |id: &str| report.actions.iter().filter(|a| a.id == id).count() > 1;
    report
        .actions
        .iter()
        .map(|action| {
            let n = seen.entry(action.id.as_str()).or_insert(0);
            *n += 1;
            if repeats(&action.id) {
                format!("{}#{n}", action.id)
            } else {
                action.id.clone()
            }
        })
        .collect()
}

fn approval_request(report: &Report, seq: usize, key: String, expires_at: Millis) -> NewApproval {
    let action = &report.actions[seq];
    NewApproval {
        seq: i64::try_from(seq).unwrap_or(i64::MAX),
        key,
        action_id: action.id.clone(),
        title: action.title.clone(),
        risk: serde_json::to_value(action.risk)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "destructive".into()),
        roles: action.approvers.clone(),
        quorum: i64::from(action.quorum.max(1)),
        digest: action_digest(action),
        expires_at,
        automatic: action.automatic,
    }
}

/// sha256 over the action's canonical JSON: kind, target, statement or
/// program, every parameter and argument, its precondition.
#[must_use]
pub fn action_digest(action: &ActionInstance) -> String {
    action.digest()
}

/// The full read-only diagnosis for one alert (also `remedy simulate`).
pub async fn diagnose(engine: &Engine, alert: &AlertContext) -> Report {
    let Some(playbook) = playbook::find(&engine.playbooks, &alert.labels) else {
        return Report::unmatched(alert);
    };
    let planned = playbook::evaluate::plan(playbook, alert, &engine.probes);
    let outputs = engine.diagnoser.run(planned).await;
    let mut report = playbook::evaluate::evaluate(playbook, alert, &engine.probes, outputs);
    env_file_changes(&engine.diagnoser, &mut report).await;
    report
}

/// Fills in the exact lines each `env_file` action changes, read from the
/// file now. An action whose file cannot be read is not offered (the
/// report says why); one whose values are already set has nothing to do.
pub async fn env_file_changes(diagnoser: &crate::diagnose::Diagnoser, report: &mut Report) {
    let mut kept = Vec::with_capacity(report.actions.len());
    for mut action in std::mem::take(&mut report.actions) {
        if action.kind != crate::playbook::model::ActionKind::EnvFile {
            kept.push(action);
            continue;
        }
        let name = action.env_file.clone().unwrap_or_default();
        match diagnoser.env_file_changes(&name, &action.set).await {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => {
                action.changes = changes;
                kept.push(action);
            }
            Err(e) => report.errors.push(format!("action `{}`: {e}", action.id)),
        }
    }
    report.actions = kept;
}

#[must_use]
pub fn alert_context(incident: &IncidentRecord) -> AlertContext {
    AlertContext {
        labels: incident.labels.0.clone(),
        annotations: incident.annotations.0.clone(),
        status: incident.status.as_str().to_owned(),
        fingerprint: incident.fingerprint.clone(),
        starts_at: incident.starts_at.clone(),
    }
}
