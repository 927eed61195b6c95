//! `page` work: sends an incident's pending deliveries to its pagers, in
//! the order they were queued, each once — a trigger when a level that
//! names pagers was reached, an acknowledge and a resolve for every pager
//! that was triggered. A 429 waits in the queue exactly as long as asked
//! without spending an attempt; outages retry with backoff; a refusal
//! (bad key, invalid event) is recorded on the timeline, not retried.

use std::time::Duration;

use super::{Engine, WorkError};
use crate::domain::{IncidentStatus, Millis};
use crate::paging::{Page, PageAction, PageError};
use crate::store::{ClaimedWork, IncidentRecord, PageOutcome, PendingPage};

/// How long a worker holds a delivery it is sending, at least (twice
/// `paging.timeout` when that is longer); another worker takes it over
/// after.
const CLAIM_MS: i64 = 60_000;

/// How long the work waits when another worker is sending a delivery of
/// the same incident.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// What a delivery says: the incident, the level's role as people know it,
/// and why.
fn page_of(engine: &Engine, incident: &IncidentRecord, row: &PendingPage, now: Millis) -> Page {
    let annotation = |k: &str| incident.annotations.0.get(k).cloned().unwrap_or_default();
    let summary = annotation("summary");
    let public = engine.chat.public_url.trim_end_matches('/');
    Page {
        action: row.action,
        dedup_key: engine.pagers.dedup_key(incident.id),
        incident: incident.id,
        alertname: incident.alertname.clone(),
        severity: incident.severity.to_lowercase(),
        summary: if summary.is_empty() {
            incident.alertname.clone()
        } else {
            summary
        },
        description: annotation("description"),
        labels: incident.labels.0.clone(),
        level: row.level,
        role: row
            .role
            .as_deref()
            .map(|r| engine.matrix.role_name(r).to_owned()),
        reason: row.reason.clone(),
        link: (!public.is_empty()).then(|| format!("{public}/v1/incidents/{}", incident.id)),
        generator_url: incident.generator_url.clone(),
        at: now,
    }
}

/// Why a delivery is not sent, if it is not.
async fn skip_reason(
    engine: &Engine,
    incident: &IncidentRecord,
    row: &PendingPage,
) -> Result<Option<&'static str>, WorkError> {
    let firing = incident.status == IncidentStatus::Firing;
    Ok(match row.action {
        PageAction::Trigger if !firing => Some("resolved before the page was sent"),
        PageAction::Trigger => None,
        PageAction::Acknowledge if !firing => Some("resolved: the resolve closes it"),
        PageAction::Acknowledge | PageAction::Resolve => {
            let id = crate::domain::IncidentId(incident.id);
            if engine.store.page_triggered(id, &row.pager).await? {
                None
            } else {
                Some("nothing was paged there")
            }
        }
    })
}

/// Sends the incident's pending deliveries. Each pager's deliveries go in
/// order (its trigger before its acknowledge and resolve); a pager that is
/// rate limited or down holds back only its own, and the work comes back
/// for them: after the wait asked when every failure was a 429, with
/// backoff otherwise.
pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let (id, incident) = super::incident_of(engine, work).await?;
    let owner = work.owner.as_str();
    let dedup_key = engine.pagers.dedup_key(id.0);
    let claim_ms = i64::try_from(engine.pagers.timeout().as_millis().saturating_mul(2))
        .unwrap_or(i64::MAX)
        .max(CLAIM_MS);
    let mut held: Vec<String> = Vec::new();
    let mut wait: Option<Duration> = None;
    let mut failure: Option<String> = None;
    for row in engine.store.pending_pages(id).await? {
        if held.contains(&row.pager) {
            continue;
        }
        if !engine
            .store
            .claim_page(row.id, owner, now, now.saturating_add(claim_ms))
            .await?
        {
            // Another worker is sending it; the pager's next ones wait.
            held.push(row.pager.clone());
            wait = Some(wait.map_or(BUSY_WAIT, |w| w.min(BUSY_WAIT)));
            continue;
        }
        let action = row.action.as_str();
        if let Some(why) = skip_reason(engine, &incident, &row).await? {
            engine
                .store
                .page_done(&row, owner, PageOutcome::Skipped(why), &dedup_key, now)
                .await?;
            continue;
        }
        let page = page_of(engine, &incident, &row, now);
        match engine.pagers.send(&row.pager, &page).await {
            Ok(status) => {
                metrics::counter!("remedy_pages_total", "action" => action, "result" => "sent")
                    .increment(1);
                tracing::info!(incident = id.0, pager = %row.pager, action, level = row.level, "paged");
                engine
                    .store
                    .page_done(&row, owner, PageOutcome::Sent(status), &dedup_key, now)
                    .await?;
            }
            Err(PageError::Permanent(error)) => {
                metrics::counter!("remedy_pages_total", "action" => action, "result" => "failed")
                    .increment(1);
                tracing::warn!(incident = id.0, pager = %row.pager, action, %error, "page refused");
                engine
                    .store
                    .page_done(&row, owner, PageOutcome::Failed(&error), &dedup_key, now)
                    .await?;
            }
            Err(error @ PageError::RetryAfter(after)) => {
                metrics::counter!("remedy_pages_total", "action" => action, "result" => "rate_limited")
                    .increment(1);
                engine
                    .store
                    .page_released(&row, owner, &error.to_string())
                    .await?;
                held.push(row.pager.clone());
                wait = Some(wait.map_or(after, |w| w.min(after)));
            }
            Err(PageError::Transient(error)) => {
                metrics::counter!("remedy_pages_total", "action" => action, "result" => "retried")
                    .increment(1);
                tracing::warn!(incident = id.0, pager = %row.pager, action, %error, "page not delivered; retried");
                engine.store.page_released(&row, owner, &error).await?;
                held.push(row.pager.clone());
                failure.get_or_insert(format!("{}: {error}", row.pager));
            }
        }
    }
    if let Some(error) = failure {
        return Err(WorkError::Page(error));
    }
    if let Some(wait) = wait {
        return Err(WorkError::RetryAfter(wait));
    }
    Ok(engine.store.complete_work(work, now).await?)
}
