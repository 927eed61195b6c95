//! A pager of your own: remedy posts a JSON body to the configured URL,
//! signed like GitHub signs its webhooks:
//! `X-Remedy-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. The
//! body carries `event` (`trigger`, `acknowledge`, `resolve`), `dedup_key`
//! and the incident; `sent_at` lets a receiver refuse replays.

use serde_json::{Value, json};

use super::{Page, hmac_hex, rfc3339};
use crate::config::PagerSettings;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-remedy-signature";

/// The signed request for one page.
pub fn request(
    http: &reqwest::Client,
    url: &str,
    settings: &PagerSettings,
    page: &Page,
) -> reqwest::RequestBuilder {
    let body = body(page).to_string();
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            SIGNATURE_HEADER,
            sign(settings.secret.expose(), body.as_bytes()),
        )
        .body(body)
}

/// `sha256=<hex>` over the raw body.
#[must_use]
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(secret, body))
}

/// The JSON body.
#[must_use]
pub fn body(page: &Page) -> Value {
    json!({
        "version": "1",
        "event": page.action.as_str(),
        "dedup_key": page.dedup_key,
        "sent_at": rfc3339(page.at),
        "incident": {
            "id": page.incident,
            "alertname": page.alertname,
            "severity": page.severity,
            "summary": page.summary,
            "labels": page.labels,
            "url": page.link,
            "generator_url": page.generator_url,
        },
        "level": page.level,
        "escalated_to": page.role,
        "reason": page.reason,
    })
}
