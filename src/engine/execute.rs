//! `execute` work: run an incident's approved actions, each at most once.
//! The action run is the one stored in the report and shown in chat; its
//! digest must still match the approval's. A resolved incident runs
//! nothing. Results go to the audit log and the incident's message.

use super::{Engine, WorkError};
use crate::actions::{self, Outcome};
use crate::config::{ExecutorSettings, RateLimit};
use crate::domain::{Decision, IncidentStatus, Millis, now_millis};
use crate::engine::diagnose::action_digest;
use crate::playbook::ActionInstance;
use crate::playbook::Report;
use crate::playbook::model::ActionKind;
use crate::store::{BeginExecution, Budget, ClaimedWork, ExecutionRef, NewRun, SilenceRules};

/// Time a run may take before another worker treats it as interrupted.
const RUN_MARGIN_MS: i64 = 30_000;

/// What an action acts on, for per-target budgets.
fn target_of(action: &ActionInstance) -> String {
    match action.kind {
        ActionKind::Sql | ActionKind::RoleSetting | ActionKind::CreateIndex => {
            format!("sql:{}", action.target.as_deref().unwrap_or("main"))
        }
        ActionKind::Command => format!("command:{}", action.program.as_deref().unwrap_or_default()),
        // A service's restart and its env file's edit share one budget.
        ActionKind::Compose | ActionKind::EnvFile => format!(
            "compose:{}/{}",
            action.project.as_deref().unwrap_or_default(),
            action.service.as_deref().unwrap_or_default()
        ),
        ActionKind::Http | ActionKind::Silence => {
            format!(
                "{:?}:{}",
                action.kind,
                action.url.as_deref().unwrap_or_default()
            )
        }
    }
}

fn budgets(settings: &ExecutorSettings, run: &NewRun<'_>) -> Vec<Budget> {
    let limits = &settings.rate_limits;
    let budget = |scope, limit: &Option<RateLimit>, action: Option<&str>, target: Option<&str>| {
        limit.map(|l| Budget {
            scope,
            action: action.map(str::to_owned),
            target: target.map(str::to_owned),
            max: i64::from(l.max),
            window_ms: i64::try_from(l.window.as_millis()).unwrap_or(i64::MAX),
        })
    };
    [
        budget("global", &limits.global, None, None),
        budget("per action", &limits.per_action, Some(run.action_id), None),
        budget("per target", &limits.per_target, None, Some(run.target)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The built-in silence behind a Silence button: `silence-1h` silences the
/// alert's labels ([`crate::approvals::silence_matchers`]) for an hour.
#[must_use]
pub fn silence_action(key: &str) -> Option<ActionInstance> {
    let length = humantime::parse_duration(key.strip_prefix("silence-")?).ok()?;
    Some(ActionInstance {
        id: "silence".into(),
        title: format!(
            "Silence this alert for {}",
            crate::escalation::human(length)
        ),
        kind: ActionKind::Silence,
        risk: crate::playbook::model::Risk::Safe,
        approvers: Vec::new(),
        quorum: 1,
        target: None,
        statement: None,
        params: Vec::new(),
        program: None,
        args: Vec::new(),
        method: None,
        url: None,
        body: None,
        expect_status: None,
        duration_seconds: Some(length.as_secs()),
        setting: None,
        lock_timeout_ms: None,
        precondition: None,
        automatic: false,
        project: None,
        service: None,
        operation: None,
        env_file: None,
        set: std::collections::BTreeMap::new(),
        changes: Vec::new(),
        verify: None,
        undoes: None,
        row: None,
    })
}

/// A best-effort line in the incident's thread (the audit log has it too).
async fn say_in_thread(engine: &Engine, incident: crate::domain::IncidentId, text: &str) {
    let Ok(Some(message)) = engine.store.chat_message(incident).await else {
        return;
    };
    if let Some(id) = message.message_id
        && let Err(error) = engine.chat.reply(&message.channel, &id, text).await
    {
        tracing::warn!(%error, "thread reply failed");
    }
}

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
    // An env_file action runs up to four compose commands (recreate, read
    // the value back, and on failure restore and recreate again).
    let longest = settings
        .statement_timeout
        .max(settings.command_timeout.saturating_mul(4));
    let run_ms = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX / 2) + RUN_MARGIN_MS;
    let approvals = engine.store.approvals(id).await?;
    for (approval, seq, digest) in engine.store.approved_actions(id).await? {
        // Each run reads the clock itself: earlier runs in this loop took time.
        let started = now.max(now_millis());
        // A Silence click is the executor's built-in silence action; the
        // rest are the report's, shown and approved as they are.
        let builtin = approvals
            .iter()
            .find(|a| a.id == approval && a.seq < 0 && a.action_id == "silence")
            .and_then(|a| silence_action(&a.key));
        let action = builtin.as_ref().or_else(|| {
            usize::try_from(seq)
                .ok()
                .and_then(|seq| report.actions.get(seq))
        });
        let detail = action.map_or(serde_json::Value::Null, actions::describe);
        let run = NewRun {
            approval,
            incident: id,
            action_id: action.map_or("", |a| a.id.as_str()),
            target: &action.map(target_of).unwrap_or_default(),
            detail: &detail,
        };
        let execution = match engine
            .store
            .begin_execution(&run, &budgets(settings, &run), started + run_ms, started)
            .await?
        {
            BeginExecution::Started(execution) => execution,
            BeginExecution::Settled | BeginExecution::Interrupted => continue,
            // Another worker's run is in flight: look again when it must
            // have ended (or be marked interrupted).
            BeginExecution::Running { until } => {
                return Err(WorkError::RetryAfter(std::time::Duration::from_millis(
                    u64::try_from((until - started).max(1_000)).unwrap_or(1_000),
                )));
            }
            BeginExecution::RateLimited { scope, wait_ms } => {
                engine
                    .store
                    .audit_rate_limited(&run, scope, wait_ms, now)
                    .await?;
                metrics::counter!("remedy_executions_rate_limited_total", "scope" => scope)
                    .increment(1);
                say_in_thread(
                    engine,
                    id,
                    &format!(
                        "{}: rate limit ({scope}) reached; runs in {}",
                        run.action_id,
                        humantime::format_duration(std::time::Duration::from_secs(
                            u64::try_from((wait_ms + 999) / 1000).unwrap_or(0)
                        ))
                    ),
                )
                .await;
                return Err(WorkError::RetryAfter(std::time::Duration::from_millis(
                    u64::try_from(wait_ms).unwrap_or(0),
                )));
            }
        };
        let suspended = match action {
            Some(a) => engine.store.suspension(&a.id).await?,
            None => None,
        };
        // A silence is checked once more right before it is posted: the
        // firing incidents may have changed since it was requested.
        let silence_refused = match action {
            Some(a)
                if a.kind == ActionKind::Silence && incident.status == IncidentStatus::Firing =>
            {
                let seconds = a.duration_seconds.unwrap_or(3600);
                // The matrix bounds the Silence control; a playbook's own
                // silence action has the length its playbook gives.
                let offered: Vec<u64> = if builtin.is_some() {
                    engine.matrix.silence.iter().map(|d| d.as_secs()).collect()
                } else {
                    vec![seconds]
                };
                engine.store.silence_scope(id).await?.and_then(|scope| {
                    scope.refusal(&SilenceRules {
                        seconds,
                        offered: &offered,
                        required: &settings.silence_required_labels,
                    })
                })
            }
            _ => None,
        };
        let outcome = match action {
            _ if suspended.is_some() => Outcome {
                state: "refused",
                output: format!("the action is suspended: {}", suspended.unwrap_or_default()),
            },
            None => Outcome {
                state: "refused",
                output: "the approved action is not in the incident's report".into(),
            },
            Some(_) if incident.status != IncidentStatus::Firing => Outcome {
                state: "refused",
                output: "the incident is resolved; nothing runs".into(),
            },
            Some(action) if action_digest(action) != digest => Outcome {
                state: "refused",
                output: "the action differs from the one approved; nothing runs".into(),
            },
            Some(_) if silence_refused.is_some() => Outcome {
                state: "refused",
                output: silence_refused.map(|r| r.message()).unwrap_or_default(),
            },
            Some(action) => {
                let approvers = approvals
                    .iter()
                    .find(|a| a.id == approval)
                    .map(|a| {
                        a.decisions
                            .iter()
                            .filter(|d| d.decision == Decision::Approve)
                            .map(|d| d.approver.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let context = actions::Context {
                    incident: id.0,
                    labels: &incident.labels.0,
                    approvers,
                    alertmanager_url: Some(settings.alertmanager_url.as_str()),
                    http: &engine.http,
                    timeout: settings.statement_timeout,
                    max_output_bytes: settings.max_output_bytes,
                };
                // Dry run when the playbook was when the report was made,
                // or is now (a reload may have turned it on since).
                let playbook_dry_run = report.dry_run
                    || report.playbook.as_deref().is_some_and(|name| {
                        engine
                            .playbooks
                            .iter()
                            .any(|p| p.spec.name == name && p.spec.dry_run)
                    });
                if playbook_dry_run {
                    Outcome {
                        state: "dry_run",
                        output: format!(
                            "would run (playbook dry_run): {}",
                            actions::describe(action)
                        ),
                    }
                } else {
                    actions::run(&engine.diagnoser, settings, action, &context).await
                }
            }
        };
        tracing::info!(
            incident = id.0,
            approval,
            outcome = outcome.state,
            "action executed"
        );
        metrics::counter!("remedy_executions_total", "outcome" => outcome.state).increment(1);
        // The run's own end: later than the claim's clock by however long it took.
        let finished = started.max(now_millis());
        // A change that ran offers its undo, with an approval of its own
        // (the report's requests may have expired by now); the message
        // update the outcome queues shows it.
        if outcome.state == "done"
            && builtin.is_none()
            && let Some(undo) = usize::try_from(seq).ok().and_then(|seq| {
                super::diagnose::undo_request(
                    &report,
                    seq,
                    super::diagnose::approval_expiry(engine, finished),
                )
            })
            && let Err(error) = engine.store.offer_approval(id, &undo, finished).await
        {
            // The change's outcome is recorded all the same; its undo is
            // then not offered (the report still names the change).
            tracing::warn!(incident = id.0, %error, "undo not offered");
        }
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
                finished,
                // An undo puts back what was there: its change's own
                // verification judged that state already.
                (builtin.is_none()
                    && action.is_some_and(|a| a.undoes.is_none())
                    && !settings.verify_after.is_zero())
                .then(|| {
                    finished
                        + i64::try_from(settings.verify_after.as_millis()).unwrap_or(i64::MAX / 2)
                }),
                now,
            )
            .await?;
        if matches!(outcome.state, "failed")
            && let Some(limit) = settings.suspend_after
            && let Some(reason) = engine
                .store
                .suspend_if_failing(
                    run.action_id,
                    id,
                    i64::from(limit.max),
                    i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX),
                    now,
                )
                .await?
        {
            tracing::warn!(action = run.action_id, %reason, "action suspended");
            say_in_thread(
                engine,
                id,
                &format!("{} suspended: {reason}", run.action_id),
            )
            .await;
        }
    }
    Ok(engine.store.complete_work(work, now).await?)
}
