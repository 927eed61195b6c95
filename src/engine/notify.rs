//! `notify` work: render the incident's current state (report, requests,
//! decisions, resolved or not) and post it, or update the message already
//! posted. Rate limits and the channel's pace wait exactly as asked,
//! in the queue and without spending an attempt; outages retry with backoff;
//! permanent errors are recorded on the incident and counted, not retried.

use super::{Engine, WorkError};
use crate::chat::report::{ReportEscalation, ReportStorm};
use crate::chat::{ChatError, ChatReport, Reply};
use crate::domain::Millis;
use crate::playbook::Report;
use crate::postmortem::Record;
use crate::store::ClaimedWork;

/// How long a first post is reserved for the worker making it.
const POST_CLAIM_MS: i64 = 60_000;

/// Posts each finished, unreported execution in the thread.
async fn report_outcomes(
    engine: &Engine,
    report: &ChatReport,
    executions: &[crate::store::ExecutionView],
    channel: &str,
    message: &str,
    now: Millis,
) -> Result<(), ChatError> {
    for execution in executions
        .iter()
        .filter(|e| e.state != "running" && !e.reported)
    {
        let key = report
            .actions
            .iter()
            .find(|a| a.approval_id == execution.approval_id)
            .map_or("action", |a| a.key.as_str());
        let approved_by = report
            .actions
            .iter()
            .find(|a| a.approval_id == execution.approval_id)
            .map_or(&[][..], |a| a.approved_by.as_slice());
        let mut reply = outcome_reply(
            key,
            &execution.state,
            execution.verification.as_deref(),
            approved_by,
            execution.output.as_deref().unwrap_or_default(),
        );
        // A change with an undo: the undo is offered from now on.
        // (Offered once: not again with the verdict's repeat, and only
        // while it can still be decided.)
        if execution.verification.is_none()
            && !report.resolved
            && let Some(undo) = report
                .actions
                .iter()
                .find(|a| a.undoes == Some(execution.approval_id) && a.open())
        {
            reply.push_text(&format!("\nUndo offered: {} (`{}`)", undo.title, undo.key));
            reply.action = Some(undo.clone());
        }
        engine.chat.reply_with(channel, message, &reply).await?;
        if let Err(error) = engine
            .store
            .execution_reported(execution.id, execution.verification.as_deref(), now)
            .await
        {
            // Posted but not marked: it may be posted again.
            tracing::warn!(%error, execution = execution.id, "outcome posted but not marked");
        }
    }
    Ok(())
}

/// An executed action's outcome in the thread: "restart: succeeded,
/// effective — approved by <@U1>, <@U2> — output". The clickers are real
/// mentions (they asked for it to run, and are told how it went); the key,
/// state and output are text, escaped by the platform.
#[must_use]
pub fn outcome_reply(
    key: &str,
    state: &str,
    verification: Option<&str>,
    approved_by: &[String],
    output: &str,
) -> Reply {
    let mut reply = Reply::default();
    let verdict = verification.map_or_else(String::new, |v| format!(", {v}"));
    reply.push_text(&format!("{key}: {state}{verdict}"));
    for (i, who) in approved_by.iter().enumerate() {
        reply.push_text(if i == 0 { " — approved by " } else { ", " });
        reply.push_person(who);
    }
    reply.push_text(&format!(" — {}", crate::chat::text::cut(output, 1500)));
    reply
}

/// Who responds and where escalation stands, for the report.
async fn report_escalation(
    engine: &Engine,
    id: crate::domain::IncidentId,
    incident: &crate::store::IncidentRecord,
) -> Result<Option<ReportEscalation>, WorkError> {
    let matrix = &engine.matrix;
    let view = engine.store.escalation(id).await?;
    let initial = view.as_ref().map_or_else(
        || matrix.policy_for(&incident.labels.0).initial.clone(),
        |v| v.initial_role.clone(),
    );
    if initial.is_empty() {
        return Ok(None);
    }
    let members = engine.chat.members(&initial);
    let seconds = |list: &[std::time::Duration]| list.iter().map(|d| d.as_secs()).collect();
    Ok(Some(ReportEscalation {
        responder: matrix.role_name(&initial).to_owned(),
        mentions: engine.chat.mentions(&initial),
        ping_users: members.map(|m| m.discord_users.clone()).unwrap_or_default(),
        ping_roles: members.map(|m| m.discord_roles.clone()).unwrap_or_default(),
        acked_by: view.as_ref().and_then(|v| v.acked_by.clone()),
        escalated_to: view
            .as_ref()
            .and_then(|v| v.reached())
            .and_then(|t| t.role.as_deref())
            .map(|r| matrix.role_name(r).to_owned()),
        next: view.as_ref().and_then(|v| v.next_due()).and_then(|t| {
            let whom = match t.role.as_deref() {
                Some(role) if t.nth == 0 => format!("escalates to {}", matrix.role_name(role)),
                Some(role) => format!("re-pings {}", matrix.role_name(role)),
                None => "review reminder".to_owned(),
            };
            t.due_at.map(|due| (whom, due))
        }),
        snoozed_until: view.as_ref().and_then(|v| v.snoozed_until),
        silenced: view
            .as_ref()
            .filter(|v| v.silenced)
            .map(|v| v.silenced_until),
        snooze: seconds(&matrix.snooze),
        silence: seconds(&matrix.silence),
    }))
}

/// The storm part of the report, when the incident is a storm.
async fn report_storm(
    engine: &Engine,
    id: crate::domain::IncidentId,
) -> Result<Option<ReportStorm>, WorkError> {
    let Some(view) = engine.store.storm(id).await? else {
        return Ok(None);
    };
    let (members, counts) = engine.store.storm_label_counts(id).await?;
    let members = usize::try_from(members).unwrap_or(0);
    Ok(Some(ReportStorm::from_counts(&view, members, counts)))
}

/// Posts the resolution summary (and the postmortem checklist when it
/// lasted long) of a resolved incident whose severity asks for one, once.
async fn post_summary(
    engine: &Engine,
    id: crate::domain::IncidentId,
    now: Millis,
) -> Result<(), ChatError> {
    let store_error = |e: crate::store::StoreError| ChatError::Transient(e.to_string());
    let Some(record) = Record::load(&engine.store, id).await.map_err(store_error)? else {
        return Ok(());
    };
    let Some(postmortem) = crate::postmortem::wants_summary(&record, &engine.matrix) else {
        return Ok(());
    };
    if engine
        .store
        .has_event(id, "resolution_summary")
        .await
        .map_err(store_error)?
    {
        return Ok(());
    }
    let Some(message) = engine.store.chat_message(id).await.map_err(store_error)? else {
        return Ok(());
    };
    let Some(message_id) = message.message_id else {
        return Ok(());
    };
    let text = crate::postmortem::summary(&record, &engine.matrix, postmortem);
    engine
        .chat
        .reply(&message.channel, &message_id, &text)
        .await?;
    engine
        .store
        .add_event(
            id,
            "resolution_summary",
            &serde_json::json!({ "postmortem": postmortem, "text": text }),
            now,
        )
        .await
        .map_err(store_error)
}

pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let Some(report_json) = incident.report.as_ref() else {
        // Not diagnosed (yet): nothing to show.
        return Ok(engine.store.complete_work(work, now).await?);
    };
    let report: Report = serde_json::from_value(report_json.0.clone())
        .map_err(|e| WorkError::Report(e.to_string()))?;
    engine.store.expire_approvals(id, now).await?;
    let approvals = engine.store.approvals(id).await?;
    let executions = engine.store.executions(id).await?;
    let chat_report = ChatReport::build(
        &incident,
        &report,
        &approvals,
        &executions,
        &engine.chat.public_url,
    )
    .with_escalation(report_escalation(engine, id, &incident).await?)
    .with_storm(report_storm(engine, id).await?);
    let platform = engine.chat.platform();
    let existing = engine.store.chat_message(id).await?;
    // A claim token unique to this attempt: a retry or a second row of
    // the same process can never reuse a claim it did not make.
    let token = format!("{}:{}:{}", work.owner, work.id, work.attempts);
    let mut claimed = false;
    let result = match existing
        .as_ref()
        .and_then(|m| m.message_id.clone().map(|mid| (m, mid)))
    {
        Some((message, message_id)) => engine
            .chat
            .update(&message.channel, &message_id, &chat_report)
            .await
            .map(|()| None),
        None => {
            let channel = engine.chat.channel_for(&incident.labels.0);
            if !engine
                .store
                .claim_first_post(id, platform, &channel, &token, now + POST_CLAIM_MS, now)
                .await?
            {
                return Err(WorkError::Busy);
            }
            claimed = true;
            engine.chat.post(&channel, &chat_report).await.map(Some)
        }
    };
    if claimed && result.is_err() {
        engine.store.release_first_post(id, &token).await?;
    }
    // Outcomes of executed actions go into the report's thread, once each.
    let result = match result {
        Ok(posted) => {
            if let Some(message_id) = &posted
                && !engine
                    .store
                    .message_posted(id, &token, message_id, now)
                    .await?
            {
                tracing::warn!(incident = id.0, %message_id, "first-post claim lost; this message may be a duplicate");
            }
            let message = posted.or_else(|| existing.and_then(|m| m.message_id));
            let channel = engine.store.chat_message(id).await?.map(|m| m.channel);
            match (message, channel) {
                (Some(message), Some(channel)) => {
                    report_outcomes(engine, &chat_report, &executions, &channel, &message, now)
                        .await
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    };
    // A resolved CRITICAL incident gets its summary in the thread, once.
    let result = match result {
        Ok(()) => post_summary(engine, id, now).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            metrics::counter!("remedy_chat_deliveries_total", "platform" => platform, "result" => "ok")
                .increment(1);
            Ok(engine.store.complete_work(work, now).await?)
        }
        Err(ChatError::Permanent(error)) => {
            tracing::error!(incident = id.0, platform, %error, "chat delivery failed for good");
            metrics::counter!("remedy_chat_errors_total", "platform" => platform, "kind" => "permanent")
                .increment(1);
            engine.store.chat_failed(id, platform, &error, now).await?;
            Ok(engine.store.complete_work(work, now).await?)
        }
        Err(ChatError::RetryAfter(wait)) => {
            metrics::counter!("remedy_chat_errors_total", "platform" => platform, "kind" => "rate_limited")
                .increment(1);
            Err(WorkError::RetryAfter(wait))
        }
        Err(ChatError::Paced(wait)) => {
            metrics::counter!("remedy_chat_paced_total", "platform" => platform).increment(1);
            Err(WorkError::RetryAfter(wait))
        }
        Err(ChatError::Transient(error)) => {
            metrics::counter!("remedy_chat_errors_total", "platform" => platform, "kind" => "transient")
                .increment(1);
            Err(WorkError::Chat(error))
        }
    }
}
