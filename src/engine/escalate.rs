//! Escalation in the engine. When an incident's diagnosis starts, its
//! policy's timers are created (once); a recurrence, a threshold met by
//! the diagnosis, or an ineffective remediation moves escalation forward
//! at once. The scheduler ([`fire_due`], looped by [`run_scheduler`]) fires
//! due timers from the store; `escalate` work posts their pings in the
//! incident's thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Engine, WorkError};
use crate::chat::ChatError;
use crate::domain::{IncidentId, IncidentStatus, Millis, TimerKind, now_millis};
use crate::escalation::{RecurringBy, human};
use crate::playbook::Report;
use crate::store::{ClaimedWork, IncidentRecord, StoreError, TimerView};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Creates the incident's timers from its policy (once: a retried
/// diagnosis finds them), and escalates at once when the alert recurs.
pub async fn schedule(
    engine: &Engine,
    id: IncidentId,
    incident: &IncidentRecord,
    now: Millis,
) -> Result<(), StoreError> {
    let policy = engine.matrix.policy_for(&incident.labels.0);
    let created = engine
        .store
        .schedule_escalation(
            id,
            &policy.name,
            &policy.initial,
            &policy.roles(),
            &policy.plan(incident.opened_at),
            now,
        )
        .await?;
    if created && let Some(recurring) = policy.recurring {
        let seen = engine
            .store
            .recurrences(
                id,
                recurring.by == RecurringBy::Alertname,
                millis(recurring.within),
            )
            .await?;
        if seen >= i64::from(recurring.count) {
            advance(
                engine,
                id,
                &format!("recurring: {seen} times within {}", human(recurring.within)),
                None,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// The reason prefix of a threshold's trigger: a threshold escalates once.
pub const THRESHOLD: &str = "threshold:";

/// Escalates at once when the policy's threshold holds for `report` (a
/// diagnosis, a verification's re-diagnosis or a re-check, measured at
/// `now`), once per incident; the reason, and with it the ping, says what
/// was measured. True when this call escalated.
pub async fn check_threshold(
    engine: &Engine,
    id: IncidentId,
    incident: &IncidentRecord,
    report: &Report,
    now: Millis,
) -> Result<bool, StoreError> {
    let policy = engine.matrix.policy_for(&incident.labels.0);
    let Some(expression) = &policy.threshold else {
        return Ok(false);
    };
    let vars = report
        .playbook
        .as_deref()
        .and_then(|name| engine.playbooks.iter().find(|p| p.spec.name == name))
        .map(|p| p.vars.clone())
        .unwrap_or_default();
    match policy.threshold_met(report, &vars) {
        Ok(true) => {
            let ids: Vec<String> = report.steps.keys().cloned().collect();
            let measured = policy.measurement(report, &policy.threshold_steps(&ids), now);
            let reason = format!("{THRESHOLD} `{}` holds, {measured}", expression.trim());
            advance(engine, id, &reason, Some(THRESHOLD), now).await
        }
        Ok(false) => Ok(false),
        Err(error) => {
            tracing::warn!(incident = id.0, %error, "escalation threshold could not be evaluated");
            Ok(false)
        }
    }
}

/// An executed action was judged ineffective: escalate at once, unless the
/// policy says otherwise.
pub async fn remediation_ineffective(
    engine: &Engine,
    id: IncidentId,
    incident: &IncidentRecord,
    action: &str,
    now: Millis,
) -> Result<(), StoreError> {
    if engine
        .matrix
        .policy_for(&incident.labels.0)
        .on_ineffective_remediation
    {
        advance(
            engine,
            id,
            &format!("remediation ineffective: {action}"),
            None,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Moves escalation to its next level now (see
/// [`Store::advance_escalation`](crate::store::Store::advance_escalation));
/// true when it moved.
async fn advance(
    engine: &Engine,
    id: IncidentId,
    reason: &str,
    once: Option<&str>,
    now: Millis,
) -> Result<bool, StoreError> {
    let Some((level, role)) = engine
        .store
        .advance_escalation(id, reason, once, now)
        .await?
    else {
        return Ok(false);
    };
    tracing::info!(incident = id.0, level, role = ?role, reason, "escalation triggered");
    metrics::counter!("remedy_escalation_triggers_total").increment(1);
    engine.timers_ready.notify_one();
    Ok(true)
}

/// Fires every timer due at `now`, in batches; returns how many fired.
pub async fn fire_due(engine: &Engine, now: Millis) -> Result<usize, StoreError> {
    let settings = &engine.escalation;
    let late_after = millis(settings.late_after);
    let mut total = 0;
    loop {
        let fired = engine
            .store
            .fire_due_timers(now, settings.batch, late_after)
            .await?;
        for timer in &fired {
            let lag = (now - timer.due_at).max(0);
            let level = timer.level.to_string();
            metrics::counter!("remedy_escalations_fired_total", "level" => level, "kind" => timer.kind.as_str())
                .increment(1);
            #[allow(clippy::cast_precision_loss, reason = "a lag in seconds")]
            metrics::histogram!("remedy_escalation_lag_seconds").record(lag as f64 / 1000.0);
            if lag > late_after {
                tracing::warn!(
                    incident = timer.incident_id,
                    level = timer.level,
                    lag_ms = lag,
                    "escalation timer fired late"
                );
            }
        }
        total += fired.len();
        if i64::try_from(fired.len()).unwrap_or(i64::MAX) < settings.batch {
            return Ok(total);
        }
    }
}

/// Fires due timers until `shutdown`: wakes when the next timer is due,
/// when a trigger made one due now, and at least every `escalation.tick`
/// (other replicas add timers too).
pub async fn run_scheduler(
    source: impl super::EngineSource,
    work_ready: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        // The configuration in force for this pass (a reload replaces it).
        let engine = source.engine();
        let tick = engine.escalation.tick;
        let now = now_millis();
        match fire_due(&engine, now).await {
            Ok(0) => {}
            Ok(_) => work_ready.notify_one(),
            Err(error) => tracing::error!(%error, "escalation scheduler could not reach the store"),
        }
        let wait = match engine.store.next_timer_due().await {
            Ok(Some(due)) => {
                Duration::from_millis(u64::try_from((due - now_millis()).max(0)).unwrap_or(0))
                    .min(tick)
            }
            _ => tick,
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = engine.timers_ready.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What a ping says.
fn ping_text(engine: &Engine, incident: &IncidentRecord, timer: &TimerView, now: Millis) -> String {
    let matrix = &engine.matrix;
    let mut text = match (timer.kind, timer.nth) {
        (TimerKind::Review, _) => {
            let policy = matrix.policy_for(&incident.labels.0);
            format!(
                "📋 Review reminder for {}: {} (incident #{}) is {}. Not urgent; nobody is paged.",
                matrix.role_name(&policy.initial),
                incident.alertname,
                incident.id,
                timer.reason
            )
        }
        (TimerKind::Escalate, 0) => {
            let mut text = format!(
                "⏫ Escalation to {}: {} (incident #{}), {}.",
                matrix.role_name(timer.role.as_deref().unwrap_or_default()),
                incident.alertname,
                incident.id,
                timer.reason
            );
            if !timer.pagers.is_empty() {
                text.push_str(&format!(" Paged: {}.", timer.pagers.join(", ")));
            }
            text.push_str(" Acknowledge on the report to stop further escalation.");
            text
        }
        (TimerKind::Escalate, nth) => format!(
            "⏫ Reminder {nth} for {}: {} (incident #{}) is still not acknowledged.",
            matrix.role_name(timer.role.as_deref().unwrap_or_default()),
            incident.alertname,
            incident.id
        ),
    };
    let lag = timer.lag_ms.unwrap_or(0);
    if lag > millis(engine.escalation.late_after) {
        text.push_str(&format!(
            " (late by {}: it was due at {}, when remedy was not running)",
            human(Duration::from_millis(u64::try_from(lag).unwrap_or(0))),
            crate::chat::report::clock(timer.due_at.unwrap_or(now))
        ));
    }
    text
}

/// `escalate` work: posts the pings of the incident's fired timers, each
/// once, in the report's thread (or as a message of its own when there is
/// no report yet). A ping for an incident resolved meanwhile is skipped.
pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let pings = engine.store.unposted_pings(id).await?;
    let message = engine.store.chat_message(id).await?;
    let channel = message.as_ref().map_or_else(
        || engine.chat.channel_for(&incident.labels.0),
        |m| m.channel.clone(),
    );
    let thread = message.and_then(|m| m.message_id);
    let platform = engine.chat.platform();
    for timer in pings {
        if incident.status != IncidentStatus::Firing {
            engine
                .store
                .ping_posted(&timer, Some("resolved before the ping was posted"), now)
                .await?;
            continue;
        }
        let text = ping_text(engine, &incident, &timer, now);
        match engine
            .chat
            .ping(&channel, thread.as_deref(), timer.role.as_deref(), &text)
            .await
        {
            Ok(()) => {
                metrics::counter!("remedy_escalation_pings_total", "result" => "posted")
                    .increment(1);
                engine.store.ping_posted(&timer, None, now).await?;
            }
            Err(ChatError::Permanent(error)) => {
                metrics::counter!("remedy_escalation_pings_total", "result" => "failed")
                    .increment(1);
                engine.store.chat_failed(id, platform, &error, now).await?;
                engine.store.ping_posted(&timer, Some(&error), now).await?;
            }
            Err(ChatError::RetryAfter(wait) | ChatError::Paced(wait)) => {
                return Err(WorkError::RetryAfter(wait));
            }
            Err(ChatError::Transient(error)) => return Err(WorkError::Chat(error)),
        }
    }
    Ok(engine.store.complete_work(work, now).await?)
}
