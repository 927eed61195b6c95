//! Opsgenie's Alert API: create (`POST {url}/v2/alerts` with `message`,
//! `alias`, `description`, `priority` P1–P5 and `details`), acknowledge and
//! close by alias (`POST {url}/v2/alerts/{alias}/acknowledge?identifierType=alias`,
//! `…/close?identifierType=alias`), each with `Authorization: GenieKey KEY`
//! and answered 202 `{"result":"Request will be processed",…}`. Opsgenie
//! deduplicates creates by `alias` while the alert is open.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Page, PageAction};
use crate::config::PagerSettings;

/// Opsgenie's limits on `message` and `description`.
const MESSAGE_MAX: usize = 130;
const DESCRIPTION_MAX: usize = 15_000;

/// The Alert API request for one page.
pub fn request(
    http: &reqwest::Client,
    base: &str,
    settings: &PagerSettings,
    page: &Page,
) -> reqwest::RequestBuilder {
    let url = match page.action {
        PageAction::Trigger => format!("{base}/v2/alerts"),
        PageAction::Acknowledge => format!("{base}/v2/alerts/{}/acknowledge", page.dedup_key),
        PageAction::Resolve => format!("{base}/v2/alerts/{}/close", page.dedup_key),
    };
    let request = http
        .post(url)
        .header(
            reqwest::header::AUTHORIZATION,
            format!("GenieKey {}", settings.api_key.expose()),
        )
        .json(&body(page));
    match page.action {
        PageAction::Trigger => request,
        PageAction::Acknowledge | PageAction::Resolve => {
            request.query(&[("identifierType", "alias")])
        }
    }
}

/// The request body: the alert for a create; who and why for an
/// acknowledge or a close.
#[must_use]
pub fn body(page: &Page) -> Value {
    match page.action {
        PageAction::Trigger => {
            let mut details: BTreeMap<String, String> = page.labels.clone();
            details.insert("remedy_incident".into(), page.incident.to_string());
            details.insert("remedy_level".into(), page.level.to_string());
            details.insert("remedy_reason".into(), page.reason.clone());
            if let Some(role) = &page.role {
                details.insert("remedy_escalated_to".into(), role.clone());
            }
            if let Some(link) = &page.link {
                details.insert("remedy_link".into(), link.clone());
            }
            let mut description = format!("{}\n\n{}", page.summary, page.reason);
            if !page.description.is_empty() {
                description.push_str(&format!("\n\n{}", page.description));
            }
            json!({
                "message": crate::chat::text::cut(
                    &format!("[remedy #{}] {}: {}", page.incident, page.alertname, page.summary),
                    MESSAGE_MAX,
                ),
                "alias": page.dedup_key,
                "description": crate::chat::text::cut(&description, DESCRIPTION_MAX),
                "priority": priority(&page.severity),
                "source": "remedy",
                "tags": [page.alertname, page.severity],
                "details": details,
            })
        }
        PageAction::Acknowledge | PageAction::Resolve => json!({
            "source": "remedy",
            "note": page.reason,
        }),
    }
}

/// Severity label → Opsgenie priority; anything else is P3 (Opsgenie's own
/// default).
#[must_use]
pub fn priority(label: &str) -> &'static str {
    match label.to_ascii_lowercase().as_str() {
        "critical" => "P1",
        "error" => "P2",
        "info" => "P5",
        _ => "P3",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_the_severity_label() {
        assert_eq!(priority("critical"), "P1");
        assert_eq!(priority("warning"), "P3");
        assert_eq!(priority("info"), "P5");
        assert_eq!(priority("whatever"), "P3");
    }
}
