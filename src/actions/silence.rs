//! `silence` actions: an Alertmanager v2 silence (`POST /api/v2/silences`)
//! with [`approvals::silence_matchers`] (the alert's labels exactly, the
//! matchers the confirmations showed), for the action's duration,
//! `createdBy` the people who approved it and a comment naming the
//! incident. The executor checks [`approvals::silence_refusal`] first.

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Context, Outcome};
use crate::approvals;
use crate::playbook::ActionInstance;

/// The exact v2 body remedy sends.
#[must_use]
pub fn body(action: &ActionInstance, context: &Context<'_>, now: OffsetDateTime) -> Value {
    let duration = Duration::from_secs(action.duration_seconds.unwrap_or(3600));
    let matchers: Vec<Value> = approvals::silence_matchers(context.labels)
        .into_iter()
        .map(|m| json!({"name": m.name, "value": m.value, "isRegex": false, "isEqual": true}))
        .collect();
    let format = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    // Alertmanager requires createdBy: the people, not their platform keys.
    let created_by = approvals::created_by(context.approvers.iter().map(String::as_str));
    json!({
        "matchers": matchers,
        "startsAt": format(now),
        "endsAt": format(now + duration),
        "createdBy": created_by,
        "comment": format!(
            "remedy incident #{}: {} (approved by {created_by})",
            context.incident,
            action.title,
        ),
    })
}

pub async fn run(action: &ActionInstance, context: &Context<'_>) -> Outcome {
    let Some(base) = context.alertmanager_url.filter(|u| !u.is_empty()) else {
        return Outcome::new("refused", "alertmanager.url is not configured");
    };
    if context.labels.is_empty() {
        return Outcome::new("refused", "a silence needs the alert's labels");
    }
    let body = body(action, context, OffsetDateTime::now_utc());
    let url = format!("{}/api/v2/silences", base.trim_end_matches('/'));
    let response = match context
        .http
        .post(&url)
        .timeout(context.timeout)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::new("failed", format!("alertmanager: {}", e.without_url())),
    };
    let mut response = response;
    let status = response.status();
    // Alertmanager answers `{"silenceID": …}`; anything longer is not read.
    let capped = crate::net::read_capped(&mut response, 64 * 1024).await;
    let reply: Value = serde_json::from_slice(&capped.body).unwrap_or(Value::Null);
    if status.is_success() {
        Outcome::new(
            "done",
            format!(
                "silence {} until {}",
                reply["silenceID"].as_str().unwrap_or("?"),
                body["endsAt"]
            ),
        )
    } else {
        Outcome::new("failed", format!("alertmanager answered {status}: {reply}"))
    }
}
