//! An alert as Alertmanager described it, validated: a firing episode is
//! identified by its fingerprint (a hash of the label set) and its `startsAt`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Label or annotation set. Ordered, so it serialises the same way every time.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// Alertmanager's fingerprint of a label set: lowercase hex
/// (`model.Fingerprint.String()`, 16 digits today).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Accepts 1 to 64 hex digits and normalises them to lowercase.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > 64 {
            return Err("must be 1 to 64 hex digits");
        }
        if !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("must be hex digits");
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: OffsetDateTime,
    /// `None` for firing alerts, which Alertmanager sends with the zero time.
    pub ends_at: Option<OffsetDateTime>,
    pub generator_url: String,
    pub fingerprint: Fingerprint,
}

impl Alert {
    #[must_use]
    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    #[must_use]
    pub fn severity(&self) -> &str {
        self.labels.get("severity").map_or("", String::as_str)
    }

    /// `startsAt` in UTC with its full precision: with the fingerprint, the
    /// identity of one firing episode.
    #[must_use]
    pub fn starts_at_key(&self) -> String {
        alert_time_key(self.starts_at)
    }
}

/// An alert's time as stored: RFC 3339 in UTC with full precision.
#[must_use]
pub fn alert_time_key(t: OffsetDateTime) -> String {
    // The parser refuses times without a UTC form; this never panics anyway.
    t.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|utc| utc.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.unix_timestamp().to_string())
}

/// The identity of one delivery, the same on every HA peer and every retry:
/// sha256 over group key, receiver, status and each alert's
/// `fingerprint@startsAt@status`, sorted (protocols reference §1.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationKey(String);

impl NotificationKey {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One webhook delivery, validated.
#[derive(Debug, Clone)]
pub struct Notification {
    pub receiver: String,
    pub group_key: String,
    pub status: AlertStatus,
    pub alerts: Vec<Alert>,
    pub truncated_alerts: u64,
    pub key: NotificationKey,
}

impl Notification {
    #[must_use]
    pub fn new(
        receiver: String,
        group_key: String,
        status: AlertStatus,
        alerts: Vec<Alert>,
        truncated_alerts: u64,
    ) -> Self {
        let key = notification_key(&receiver, &group_key, status, &alerts);
        Self {
            receiver,
            group_key,
            status,
            alerts,
            truncated_alerts,
            key,
        }
    }
}

fn notification_key(
    receiver: &str,
    group_key: &str,
    status: AlertStatus,
    alerts: &[Alert],
) -> NotificationKey {
    let mut parts: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{}@{}@{}",
                a.fingerprint,
                a.starts_at_key(),
                a.status.as_str()
            )
        })
        .collect();
    parts.sort_unstable();
    let mut hasher = Sha256::new();
    for part in [group_key, receiver, status.as_str()]
        .into_iter()
        .chain(parts.iter().map(String::as_str))
    {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    NotificationKey(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(fp: &str, status: AlertStatus) -> Alert {
        Alert {
            status,
            labels: Labels::new(),
            annotations: Labels::new(),
            starts_at: time::macros::datetime!(2026-11-26 17:46:18.814059248 UTC),
            ends_at: None,
            generator_url: String::new(),
            fingerprint: Fingerprint::parse(fp).expect("valid fingerprint"),
        }
    }

    #[test]
    fn notification_key_ignores_alert_order() {
        let a = alert("aa", AlertStatus::Firing);
        let b = alert("bb", AlertStatus::Firing);
        let one = Notification::new(
            "r".into(),
            "g".into(),
            AlertStatus::Firing,
            vec![a.clone(), b.clone()],
            0,
        );
        let two = Notification::new("r".into(), "g".into(), AlertStatus::Firing, vec![b, a], 0);
        assert_eq!(one.key, two.key);
    }

    #[test]
    fn notification_key_changes_when_an_alert_resolves() {
        let firing = Notification::new(
            "r".into(),
            "g".into(),
            AlertStatus::Firing,
            vec![alert("aa", AlertStatus::Firing)],
            0,
        );
        let resolved = Notification::new(
            "r".into(),
            "g".into(),
            AlertStatus::Firing,
            vec![alert("aa", AlertStatus::Resolved)],
            0,
        );
        assert_ne!(firing.key, resolved.key);
    }

    #[test]
    fn starts_at_key_keeps_nanoseconds() {
        assert_eq!(
            alert("aa", AlertStatus::Firing).starts_at_key(),
            "2026-11-26T17:46:18.814059248Z"
        );
    }

    #[test]
    fn fingerprint_rejects_non_hex_and_lowercases() {
        assert!(Fingerprint::parse("xyz").is_err());
        assert!(Fingerprint::parse("").is_err());
        assert_eq!(Fingerprint::parse("4C3F").expect("hex").as_str(), "4c3f");
    }
}
