//! PagerDuty, both ways. Out: the Events API v2 (`POST {url}/v2/enqueue`,
//! answered 202 `{"status":"success","dedup_key":…}`; 429 when rate
//! limited): a `trigger` per escalation level, `acknowledge` and `resolve`,
//! all under one `dedup_key` per incident. In: webhooks v3, signed
//! `X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, raw body)>` (several,
//! comma-separated, while a secret rotates); an `incident.acknowledged`
//! event names the incident by `event.data.incident_key`, which PagerDuty
//! sets to the `dedup_key` of the event that opened it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Page, PageAction, hmac_hex, rfc3339, same};
use crate::config::PagerSettings;

/// `payload.summary` is cut to PagerDuty's 1024 characters.
const SUMMARY_MAX: usize = 1024;

/// The Events API v2 request for one page.
pub fn request(
    http: &reqwest::Client,
    base: &str,
    settings: &PagerSettings,
    page: &Page,
) -> reqwest::RequestBuilder {
    http.post(format!("{base}/v2/enqueue"))
        .json(&body(settings.routing_key.expose(), page))
}

/// The Events API v2 body: a trigger carries the alert; acknowledge and
/// resolve only name the `dedup_key`.
#[must_use]
pub fn body(routing_key: &str, page: &Page) -> Value {
    match page.action {
        PageAction::Trigger => {
            let mut links = Vec::new();
            if let Some(link) = &page.link {
                links.push(
                    json!({"href": link, "text": format!("remedy incident #{}", page.incident)}),
                );
            }
            if !page.generator_url.is_empty() {
                links.push(json!({"href": page.generator_url, "text": "Prometheus"}));
            }
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": page.dedup_key,
                "payload": {
                    "summary": crate::chat::text::cut(&summary(page), SUMMARY_MAX),
                    "source": source(page),
                    "severity": severity(&page.severity),
                    "timestamp": rfc3339(page.at),
                    "class": page.alertname,
                    "custom_details": {
                        "incident": page.incident,
                        "level": page.level,
                        "escalated_to": page.role,
                        "reason": page.reason,
                        "description": page.description,
                        "labels": page.labels,
                    },
                },
                "client": "remedy",
                "links": links,
            })
        }
        PageAction::Acknowledge | PageAction::Resolve => json!({
            "routing_key": routing_key,
            "event_action": page.action.as_str(),
            "dedup_key": page.dedup_key,
        }),
    }
}

/// `[remedy #12] DatabasePoolExhaustionCritical: pool exhausted — not
/// resolved in 15m, escalated to Team Lead`.
fn summary(page: &Page) -> String {
    let mut text = format!(
        "[remedy #{}] {}: {} — {}",
        page.incident, page.alertname, page.summary, page.reason
    );
    if let Some(role) = &page.role {
        text.push_str(&format!(", escalated to {role}"));
    }
    text
}

/// Where the problem is: the alert's `instance`, else its `service`, else
/// its `job`, else remedy.
fn source(page: &Page) -> String {
    ["instance", "service", "job"]
        .iter()
        .find_map(|k| page.labels.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| "remedy".to_owned())
}

/// PagerDuty's four severities; any other label value pages as `error`.
#[must_use]
pub fn severity(label: &str) -> &'static str {
    match label.to_ascii_lowercase().as_str() {
        "critical" => "critical",
        "warning" => "warning",
        "info" => "info",
        _ => "error",
    }
}

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-PagerDuty-Signature header")]
    Missing,
    #[error("no v1 signature in X-PagerDuty-Signature matches the body")]
    Mismatch,
}

/// Checks `X-PagerDuty-Signature` over the raw body: at least one of its
/// comma-separated `v1=` signatures must be the body's HMAC-SHA256 under
/// the subscription's secret (compared in constant time).
pub fn verify(secret: &str, header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
    let header = header
        .filter(|h| !h.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let expected = hmac_hex(secret, body);
    let matched = header
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .any(|sig| same(sig.to_ascii_lowercase().as_bytes(), expected.as_bytes()));
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `X-PagerDuty-Signature` as PagerDuty sends it, for tests and tools.
#[must_use]
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("v1={}", hmac_hex(secret, body))
}

/// The webhook v3 envelope, with the fields remedy reads.
#[derive(Debug, Deserialize)]
struct Envelope {
    event: Event,
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    event_type: String,
    #[serde(default)]
    agent: Option<Reference>,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct Reference {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    summary: Option<String>,
}

/// What a v3 webhook tells remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `incident.acknowledged`.
    Acknowledged {
        event_id: String,
        /// `data.incident_key`: the `dedup_key` of the triggering event.
        incident_key: String,
        /// PagerDuty's incident id (`data.id`).
        pagerduty_incident: String,
        /// Who acknowledged (`agent.id`, `agent.summary`), when a user did.
        agent_id: Option<String>,
        agent_name: Option<String>,
    },
    /// Any other event type (remedy follows Alertmanager for resolves).
    Ignored {
        event_id: String,
        event_type: String,
    },
}

/// Why a webhook body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PagerDuty webhook: {0}")]
pub struct InvalidWebhook(pub String);

/// Reads a verified v3 webhook body.
pub fn parse(body: &[u8]) -> Result<Inbound, InvalidWebhook> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| InvalidWebhook(e.to_string()))?;
    let event = envelope.event;
    if event.event_type != "incident.acknowledged" {
        return Ok(Inbound::Ignored {
            event_id: event.id,
            event_type: event.event_type,
        });
    }
    let text = |field: &str| {
        event
            .data
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let incident_key = text("incident_key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| InvalidWebhook("event.data.incident_key: missing".into()))?;
    Ok(Inbound::Acknowledged {
        event_id: event.id,
        incident_key,
        pagerduty_incident: text("id").unwrap_or_default(),
        agent_id: event.agent.as_ref().and_then(|a| a.id.clone()),
        agent_name: event.agent.and_then(|a| a.summary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(action: PageAction) -> Page {
        Page {
            action,
            dedup_key: "remedy-12".into(),
            incident: 12,
            alertname: "DatabasePoolExhaustionCritical".into(),
            severity: "critical".into(),
            summary: "pool exhausted".into(),
            description: String::new(),
            labels: [("instance".to_owned(), "db-1".to_owned())]
                .into_iter()
                .collect(),
            level: 1,
            role: Some("Team Lead".into()),
            reason: "not resolved in 15m".into(),
            link: None,
            generator_url: String::new(),
            at: 1_795_749_300_000,
        }
    }

    #[test]
    fn a_trigger_carries_the_alert_and_a_resolve_only_the_key() {
        let trigger = body("R0UTING", &page(PageAction::Trigger));
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "remedy-12");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "db-1");
        assert_eq!(trigger["payload"]["timestamp"], "2026-11-27T03:15:00Z");
        assert_eq!(
            trigger["payload"]["summary"],
            "[remedy #12] DatabasePoolExhaustionCritical: pool exhausted — not resolved in 15m, escalated to Team Lead"
        );
        let resolve = body("R0UTING", &page(PageAction::Resolve));
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "remedy-12"})
        );
    }

    #[test]
    fn unknown_severities_page_as_error() {
        assert_eq!(severity("CRITICAL"), "critical");
        assert_eq!(severity("page"), "error");
    }

    #[test]
    fn any_of_several_signatures_may_match_and_a_wrong_one_is_refused() {
        let body = br#"{"event":{}}"#;
        let good = sign("s3cret", body);
        let rotated = format!("v1={},{good}", "0".repeat(64));
        assert_eq!(verify("s3cret", Some(&rotated), body), Ok(()));
        assert_eq!(
            verify("other", Some(&good), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify("s3cret", None, body), Err(SignatureError::Missing));
        assert_eq!(
            verify("s3cret", Some(&good), br#"{"event":{"x":1}}"#),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn an_acknowledgement_names_the_incident_key_and_the_agent() {
        let body = json!({"event": {
            "id": "01ABC", "event_type": "incident.acknowledged", "resource_type": "incident",
            "occurred_at": "2026-11-27T03:20:00.000Z",
            "agent": {"id": "PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
            "client": null,
            "data": {"id": "PGR0VU2", "type": "incident", "status": "acknowledged",
                     "incident_key": "remedy-12", "title": "x"}
        }});
        assert_eq!(
            parse(body.to_string().as_bytes()),
            Ok(Inbound::Acknowledged {
                event_id: "01ABC".into(),
                incident_key: "remedy-12".into(),
                pagerduty_incident: "PGR0VU2".into(),
                agent_id: Some("PLH1HKV".into()),
                agent_name: Some("Tenex Engineer".into()),
            })
        );
        let other = json!({"event": {"id": "1", "event_type": "incident.resolved", "data": {}}});
        assert!(matches!(
            parse(other.to_string().as_bytes()),
            Ok(Inbound::Ignored { .. })
        ));
    }
}
