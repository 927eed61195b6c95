//! `execute` work: run an incident's approved actions, each at most once.
//! The action run is the one stored in the report and shown in chat; its
//! digest must still match the approval's. A resolved incident runs
//! nothing. Results go to the audit log and the incident's message.

use super::{Engine, WorkError};
use crate::actions::{self, Outcome};
use crate::domain::{Millis, now_millis};
use crate::engine::diagnose::action_digest;
use crate::playbook::Report;
use crate::store::{BeginExecution, ClaimedWork, ExecutionRef};

/// Time a run may take before another worker treats it as interrupted.
const RUN_MARGIN_MS: i64 = 30_000;

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let report: Report = match incident.report.as_ref() {
        Some(json) => {
            serde_json::from_value(json.0.clone()).map_err(|e| WorkError::Report(e.to_string()))?
        }
        None => Report::default(),
    };
    let settings = &engine.executor;
    let longest = settings.statement_timeout.max(settings.command_timeout);
    let until = now + i64::try_from(longest.as_millis()).unwrap_or(i64::MAX / 2) + RUN_MARGIN_MS;
    for (approval, seq, digest) in engine.store.approved_actions(id).await? {
        let action = usize::try_from(seq)
            .ok()
            .and_then(|seq| report.actions.get(seq));
        let detail = action.map_or(serde_json::Value::Null, actions::describe);
        let execution = match engine
            .store
            .begin_execution(approval, id, &detail, until, now)
            .await?
        {
            BeginExecution::Started(execution) => execution,
            BeginExecution::Settled | BeginExecution::Interrupted => continue,
        };
        let outcome = match action {
            None => Outcome {
                state: "refused",
                output: "the approved action is not in the incident's report".into(),
            },
            Some(_) if incident.status != "firing" => Outcome {
                state: "refused",
                output: "the incident is resolved; nothing runs".into(),
            },
            Some(action) if action_digest(action) != digest => Outcome {
                state: "refused",
                output: "the action differs from the one approved; nothing runs".into(),
            },
            Some(action) => actions::run(&engine.diagnoser, settings, action).await,
        };
        tracing::info!(
            incident = id.0,
            approval,
            outcome = outcome.state,
            "action executed"
        );
        metrics::counter!("remedy_executions_total", "outcome" => outcome.state).increment(1);
        engine
            .store
            .finish_execution(
                &ExecutionRef {
                    execution,
                    approval,
                    incident: id,
                },
                outcome.state,
                &outcome.output,
                now.max(now_millis()),
                now,
            )
            .await?;
    }
    Ok(engine.store.complete_work(work, now).await?)
}
