//! `notify` work: render the incident's current state (report, requests,
//! decisions, resolved or not) and post it, or update the message already
//! posted. Rate limits wait exactly as asked; outages retry with backoff;
//! permanent errors are recorded on the incident and counted, not retried.

use super::{Engine, WorkError};
use crate::chat::{ChatError, ChatReport};
use crate::domain::Millis;
use crate::playbook::Report;
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
        let output = execution.output.as_deref().unwrap_or_default();
        let verdict = execution
            .verification
            .as_deref()
            .map_or_else(String::new, |v| format!(", {v}"));
        let text = format!(
            "{key}: {}{verdict} — {}",
            execution.state,
            crate::chat::text::cut(output, 1500)
        );
        engine.chat.reply(channel, message, &text).await?;
        if let Err(error) = engine.store.execution_reported(execution.id, now).await {
            // Posted but not marked: it may be posted again.
            tracing::warn!(%error, execution = execution.id, "outcome posted but not marked");
        }
    }
    Ok(())
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
    );
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
        Err(ChatError::Transient(error)) => {
            metrics::counter!("remedy_chat_errors_total", "platform" => platform, "kind" => "transient")
                .increment(1);
            Err(WorkError::Chat(error))
        }
    }
}
