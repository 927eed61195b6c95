//! `verify` work: some time after an action ran, run the incident's
//! diagnosis again and judge the action: effective when what it acted on
//! is no longer there (the same action is no longer offered), the findings
//! became less severe, or the alert resolved; ineffective otherwise. The
//! verdict and its evidence go to the audit log, the timeline and the
//! thread; ineffective runs count toward suspending the action. An action
//! judged by its own `verify` expression is "not judged" when a step that
//! expression reads failed (Prometheus down, the target unreachable) or the
//! step is no longer in the playbook: a measurement that could not be made
//! is no evidence against the fix, so nothing is undone, escalated or
//! counted toward suspension; the evidence (timeline, audit) says why. An
//! undo is not verified: it puts back what its change's verification
//! already judged.

use super::diagnose::{action_digest, alert_context, diagnose};
use super::{Engine, WorkError};
use crate::domain::{IncidentStatus, Millis};
use crate::playbook::model::{ActionKind, Severity};
use crate::playbook::{ActionInstance, Report};
use crate::store::{ClaimedWork, ExecutionRef};

fn worst(report: &Report) -> Option<Severity> {
    report.findings.iter().map(|f| f.severity).max()
}

/// Whether two instances are one action on one thing (its id, kind,
/// target, statement, parameters, argv, URL, method, body, project,
/// service, operation, env file and values), whatever their titles say.
fn same_target(a: &ActionInstance, b: &ActionInstance) -> bool {
    a.id == b.id
        && a.kind == b.kind
        && a.target == b.target
        && a.statement == b.statement
        && a.params == b.params
        && a.program == b.program
        && a.args == b.args
        && a.url == b.url
        && a.service == b.service
        && a.setting == b.setting
        && a.set == b.set
        && a.project == b.project
        && a.operation == b.operation
        && a.env_file == b.env_file
        && a.method == b.method
        && a.body == b.body
}

/// Why the steps a `verify` expression reads give no measurement in
/// `after`: the first that failed or is missing, else None.
fn unmeasured(after: &Report, expression: &str) -> Option<String> {
    let mut ids: Vec<String> = after.steps.keys().cloned().collect();
    // A step the expression names that the playbook no longer has (a
    // reload renamed it) reads as missing, never as "none".
    let env = crate::playbook::template::environment();
    if let Ok(compiled) = env.compile_expression(expression) {
        for path in compiled.undeclared_variables(true) {
            if let Some(id) = path
                .strip_prefix("steps.")
                .and_then(|r| r.split('.').next())
                && !ids.iter().any(|known| known == id)
            {
                ids.push(id.to_owned());
            }
        }
    }
    crate::playbook::template::steps_read(expression, &ids)
        .into_iter()
        .find_map(|id| match after.steps.get(&id) {
            None => Some(format!("step `{id}` is not in the playbook now")),
            Some(step) if !step.ok => Some(format!(
                "step `{id}` failed: {}",
                step.error.as_deref().unwrap_or("no reason given")
            )),
            Some(_) => None,
        })
}

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let unverified = engine.store.unverified(id).await?;
    if unverified.is_empty() {
        return Ok(engine.store.complete_work(work, now).await?);
    }
    let before: Report = match incident.report.as_ref() {
        Some(json) => {
            serde_json::from_value(json.0.clone()).map_err(|e| WorkError::Report(e.to_string()))?
        }
        None => Report::default(),
    };
    let after = if incident.status == IncidentStatus::Firing {
        // The re-diagnosis loads the target like any diagnosis.
        let alert = alert_context(&incident);
        if !super::diagnose::hold_target(engine, work, &alert, now).await? {
            return Ok(false);
        }
        Some(diagnose(engine, &alert).await)
    } else {
        None
    };
    let approvals = engine.store.approvals(id).await?;
    let playbook = crate::playbook::find(&engine.playbooks, &incident.labels.0);
    for (execution, approval, output) in unverified {
        let Some(approved) = approvals.iter().find(|a| a.id == approval) else {
            continue;
        };
        let digest = approved.digest.clone();
        // The action as run (its digest is the approval's).
        let action = usize::try_from(approved.seq)
            .ok()
            .and_then(|seq| before.actions.get(seq))
            .filter(|a| a.digest() == digest);
        // An undo puts back what its change's verification judged.
        if action.is_some_and(|a| a.undoes.is_some()) {
            continue;
        }
        let judged_by = action.and_then(|a| a.verify.as_deref()).zip(playbook);
        let (verdict, mut evidence) = match (&after, judged_by) {
            (None, _) => ("effective", "the alert resolved".to_owned()),
            (Some(after), Some((expression, playbook))) => match unmeasured(after, expression) {
                Some(why) => (
                    "not judged",
                    format!("`{expression}` could not be judged: {why}"),
                ),
                None => match crate::playbook::evaluate::holds(
                    playbook,
                    &alert_context(&incident),
                    &engine.probes,
                    &after.steps,
                    expression,
                ) {
                    Ok(true) => (
                        "effective",
                        format!("`{expression}` holds; now: {}", after.summary),
                    ),
                    Ok(false) => (
                        "ineffective",
                        format!("`{expression}` does not hold; now: {}", after.summary),
                    ),
                    Err(e) => ("not judged", format!("`{expression}` failed: {e}")),
                },
            },
            (Some(after), None) => {
                // The same action on the same thing: by digest, or, when a
                // reload changed how the playbook words it, by its id and
                // what it acts on.
                let still_offered = after.actions.iter().any(|a| {
                    action_digest(a) == digest
                        || action.is_some_and(|before| same_target(before, a))
                });
                if !still_offered {
                    (
                        "effective",
                        format!("its target is gone; now: {}", after.summary),
                    )
                } else if worst(after) < worst(&before) {
                    (
                        "effective",
                        format!("findings eased; now: {}", after.summary),
                    )
                } else {
                    ("ineffective", format!("unchanged; now: {}", after.summary))
                }
            }
        };
        // An env file edit that did not help is undone.
        if verdict == "ineffective"
            && let Some(action) = action.filter(|a| a.kind == ActionKind::EnvFile)
        {
            let undone = crate::actions::env_file::undo(
                &engine.diagnoser,
                &engine.executor,
                action,
                output.as_deref().unwrap_or_default(),
            )
            .await;
            tracing::warn!(incident = id.0, approval, %undone, "env file edit undone");
            evidence = format!("{evidence}\n{undone}");
        }
        metrics::counter!("remedy_verifications_total", "verdict" => verdict).increment(1);
        engine
            .store
            .record_verification(
                &ExecutionRef {
                    execution,
                    approval,
                    incident: id,
                },
                verdict,
                &evidence,
                now,
            )
            .await?;
        if verdict == "ineffective" {
            super::escalate::remediation_ineffective(engine, id, &incident, &approved.key, now)
                .await?;
        }
        // An ineffective run counts toward suspending the action.
        if verdict == "ineffective"
            && let Some(limit) = engine.executor.suspend_after
            && let Some(reason) = engine
                .store
                .suspend_if_failing(
                    &approved.action_id,
                    id,
                    i64::from(limit.max),
                    i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX),
                    now,
                )
                .await?
        {
            tracing::warn!(action = %approved.action_id, %reason, "action suspended");
        }
    }
    // What the new diagnosis measured may cross the escalation threshold.
    if let Some(after) = &after {
        super::escalate::check_threshold(engine, id, &incident, after, now).await?;
    }
    Ok(engine.store.complete_work(work, now).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminate(title: &str, pid: &str) -> ActionInstance {
        let mut action =
            crate::engine::execute::silence_action("silence-1h").expect("an action to shape");
        action.id = "terminate".into();
        action.kind = ActionKind::Sql;
        action.title = title.into();
        action.statement = Some("select pg_terminate_backend($1::int)".into());
        action.params = vec![pid.into()];
        action
    }

    #[test]
    fn a_reworded_action_on_the_same_thing_is_the_same_action() {
        let before = terminate("Terminate pid 42", "42");
        assert!(same_target(
            &before,
            &terminate("End session 42 (reworded)", "42")
        ));
        assert!(!same_target(&before, &terminate("Terminate pid 43", "43")));
        let mut other = terminate("Terminate pid 42", "42");
        other.id = "cancel".into();
        assert!(!same_target(&before, &other));
    }
}
