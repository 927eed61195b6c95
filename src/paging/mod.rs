//! Pagers besides chat mentions: an escalation level may name
//! `[pagers.NAME]` of three kinds — PagerDuty (Events API v2), Opsgenie
//! (Alert API) and a signed JSON webhook — one file each. This module only
//! speaks to them; the deliveries themselves are durable rows in the store
//! (`store::paging`), sent by `page` work (`engine::page`).

pub mod opsgenie;
pub mod pagerduty;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::{PagerKind, PagerSettings, Secret, Settings};
use crate::domain::{Labels, Millis};

/// What a delivery asks of a pager. Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PageAction {
    /// Page: the level was reached.
    Trigger,
    /// Someone acknowledged the incident (in chat, or in another pager).
    Acknowledge,
    /// The alert resolved.
    Resolve,
}

impl PageAction {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Acknowledge => "acknowledge",
            Self::Resolve => "resolve",
        }
    }
}

impl TryFrom<String> for PageAction {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        match raw.as_str() {
            "trigger" => Ok(Self::Trigger),
            "acknowledge" => Ok(Self::Acknowledge),
            "resolve" => Ok(Self::Resolve),
            other => Err(format!("unknown page action `{other}`")),
        }
    }
}

/// What one page says about its incident; each kind renders it in its
/// own format. Values from the alert are data: they go into JSON strings.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub action: PageAction,
    /// `PREFIX-INCIDENT`: PagerDuty's `dedup_key`, Opsgenie's `alias`.
    pub dedup_key: String,
    pub incident: i64,
    pub alertname: String,
    /// The alert's `severity` label, lower case.
    pub severity: String,
    /// The alert's `summary` annotation, else its name.
    pub summary: String,
    pub description: String,
    pub labels: Labels,
    /// The escalation level that paged (0 for acknowledge and resolve).
    pub level: i64,
    /// Who the level escalates to, by the name people know.
    pub role: Option<String>,
    /// Why: `not resolved in 15m`, a threshold's measurement, who acknowledged.
    pub reason: String,
    /// The incident in remedy's API (`chat.public_url`), when set.
    pub link: Option<String>,
    /// Where the alert came from (Prometheus' graph).
    pub generator_url: String,
    /// When remedy sends it, RFC 3339.
    pub at: Millis,
}

/// Why a delivery was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// 429: wait this long, in the queue, without spending an attempt.
    #[error("rate limited; retry after {0:?}")]
    RetryAfter(Duration),
    /// Network, timeout, 5xx: retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// Refused (400, 401, 403, 404, …): retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// One configured pager.
#[derive(Debug, Clone)]
struct Pager {
    kind: PagerKind,
    /// The base URL (pagerduty, opsgenie) or the URL (webhook).
    url: String,
    settings: PagerSettings,
}

/// The configured pagers and the client that reaches them.
#[derive(Debug, Clone)]
pub struct Pagers {
    http: reqwest::Client,
    pagers: BTreeMap<String, Pager>,
    prefix: String,
    rate_limited_wait: Duration,
    timeout: Duration,
}

impl Pagers {
    #[must_use]
    pub fn from_settings(settings: &Settings, http: reqwest::Client) -> Self {
        let paging = &settings.paging;
        let pagers = settings
            .pagers
            .iter()
            .map(|(name, pager)| {
                let url = if pager.url.is_empty() {
                    match pager.kind {
                        PagerKind::Pagerduty => paging.pagerduty_url.clone(),
                        PagerKind::Opsgenie => paging.opsgenie_url.clone(),
                        PagerKind::Webhook => String::new(),
                    }
                } else {
                    pager.url.clone()
                };
                (
                    name.clone(),
                    Pager {
                        kind: pager.kind,
                        url: url.trim_end_matches('/').to_owned(),
                        settings: pager.clone(),
                    },
                )
            })
            .collect();
        Self {
            http,
            pagers,
            prefix: paging.dedup_prefix.clone(),
            rate_limited_wait: paging.rate_limited_wait,
            timeout: paging.timeout,
        }
    }

    /// The key that ties an incident to its pages.
    #[must_use]
    pub fn dedup_key(&self, incident: i64) -> String {
        format!("{}-{incident}", self.prefix)
    }

    /// The incident a key of ours names, else None (another integration's
    /// incident in the same PagerDuty service).
    #[must_use]
    pub fn incident_of(&self, key: &str) -> Option<i64> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix('-')?
            .parse()
            .ok()
            .filter(|id: &i64| *id > 0)
    }

    /// How long one delivery's HTTP call may take.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The pager's kind, when one of that name is configured.
    #[must_use]
    pub fn kind(&self, name: &str) -> Option<PagerKind> {
        self.pagers.get(name).map(|p| p.kind)
    }

    /// The v3 webhook signing secret of a PagerDuty pager that takes
    /// acknowledgements.
    #[must_use]
    pub fn pagerduty_webhook_secret(&self, name: &str) -> Option<&Secret> {
        self.pagers
            .get(name)
            .filter(|p| p.kind == PagerKind::Pagerduty)
            .map(|p| &p.settings.webhook_secret)
            .filter(|s| !s.is_empty())
    }

    /// Sends one page to the named pager; the HTTP status when accepted.
    pub async fn send(&self, name: &str, page: &Page) -> Result<u16, PageError> {
        let pager = self
            .pagers
            .get(name)
            .ok_or_else(|| PageError::Permanent(format!("no pager `{name}` is configured")))?;
        let request = match pager.kind {
            PagerKind::Pagerduty => {
                pagerduty::request(&self.http, &pager.url, &pager.settings, page)
            }
            PagerKind::Opsgenie => opsgenie::request(&self.http, &pager.url, &pager.settings, page),
            PagerKind::Webhook => webhook::request(&self.http, &pager.url, &pager.settings, page),
        };
        let mut response = request
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| PageError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(PageError::RetryAfter(
                crate::chat::retry_after_header(response.headers())
                    .unwrap_or(self.rate_limited_wait),
            ));
        }
        // The answer names the problem (PagerDuty's `errors`, Opsgenie's
        // `message`); it never echoes a key.
        let capped = crate::net::read_capped(&mut response, 512).await;
        let body = String::from_utf8_lossy(&capped.body);
        let message = format!("{} answered {status}: {}", pager.kind.as_str(), body.trim());
        if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            Err(PageError::Transient(message))
        } else {
            Err(PageError::Permanent(message))
        }
    }
}

/// RFC 3339 with milliseconds, as the services' examples write timestamps.
#[must_use]
pub fn rfc3339(at: Millis) -> String {
    crate::domain::format_millis(at)
}

/// Constant-time equality of two byte strings (signatures).
#[must_use]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Hex HMAC-SHA256 of `body` under `key`.
#[must_use]
pub fn hmac_hex(key: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
