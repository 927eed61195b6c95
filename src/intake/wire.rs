//! Alertmanager's webhook payload, version 4 (`notify/webhook/webhook.go`
//! `Message` embedding `template.Data`), mirrored field by field. Unknown
//! fields are ignored and the newer optional ones (`notification_reason`,
//! `routeLabels`, `truncatedAlerts`) are accepted when present.

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::domain::{Alert, AlertStatus, Fingerprint, Labels, Notification};

/// The body Alertmanager POSTs to a `webhook_configs` receiver.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    pub version: String,
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub receiver: String,
    pub status: AlertStatus,
    pub alerts: Vec<WireAlert>,
    #[serde(default)]
    pub group_labels: Labels,
    #[serde(default)]
    pub common_labels: Labels,
    #[serde(default)]
    pub common_annotations: Labels,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    /// Alertmanager v0.32.0 and later.
    #[serde(default, rename = "notification_reason")]
    pub notification_reason: Option<String>,
    /// Alertmanager v0.34.0 and later.
    #[serde(default)]
    pub route_labels: Labels,
}

/// One entry of `alerts[]` (`template.Alert`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAlert {
    pub status: AlertStatus,
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// A payload remedy cannot accept, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct InvalidPayload {
    /// JSON path of the field, such as `alerts[0].startsAt`, or `.` for the
    /// document itself.
    pub field: String,
    pub message: String,
}

/// Parses and validates a webhook body into a [`Notification`].
pub fn parse(body: &[u8]) -> Result<Notification, InvalidPayload> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message: WebhookMessage = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let text = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            // The position is the useful part of a syntax error; the path
            // ends in `?` where the parser stopped.
            let field = path.trim_end_matches('?').trim_end_matches('.');
            return InvalidPayload {
                field: if field.is_empty() {
                    ".".into()
                } else {
                    field.to_owned()
                },
                message: format!("malformed JSON: {text}"),
            };
        }
        InvalidPayload {
            field: field_of(&path, &text),
            message: strip_position(&text),
        }
    })?;
    Notification::try_from(message)
}

/// serde names a missing field only in its message; join it to the path.
fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (missing, path) {
        (Some(name), "." | "") => name.to_owned(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, path) => path.to_owned(),
    }
}

fn strip_position(message: &str) -> String {
    message
        .find(" at line ")
        .map_or(message, |i| &message[..i])
        .to_owned()
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl TryFrom<WebhookMessage> for Notification {
    type Error = InvalidPayload;

    fn try_from(message: WebhookMessage) -> Result<Self, Self::Error> {
        if message.version != "4" {
            return Err(InvalidPayload {
                field: "version".into(),
                message: format!(
                    "unsupported version {:?}; remedy reads Alertmanager's version \"4\" payload",
                    message.version
                ),
            });
        }
        let alerts = message
            .alerts
            .into_iter()
            .enumerate()
            .map(|(i, alert)| to_alert(i, alert))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Notification::new(
            message.receiver,
            message.group_key,
            message.status,
            alerts,
            message.truncated_alerts,
        ))
    }
}

fn to_alert(index: usize, wire: WireAlert) -> Result<Alert, InvalidPayload> {
    let invalid = |name: &str, message: String| InvalidPayload {
        field: format!("alerts[{index}].{name}"),
        message,
    };
    let starts_at = parse_time(&wire.starts_at).map_err(|m| invalid("startsAt", m))?;
    let ends_at = match wire.ends_at.as_deref() {
        None | Some("" | ZERO_TIME) => None,
        Some(raw) => Some(parse_time(raw).map_err(|m| invalid("endsAt", m))?),
    };
    let fingerprint =
        Fingerprint::parse(&wire.fingerprint).map_err(|m| invalid("fingerprint", m.to_owned()))?;
    Ok(Alert {
        status: wire.status,
        labels: wire.labels,
        annotations: wire.annotations,
        starts_at,
        ends_at,
        generator_url: wire.generator_url,
        fingerprint,
    })
}

fn parse_time(raw: &str) -> Result<OffsetDateTime, String> {
    let time =
        OffsetDateTime::parse(raw, &Rfc3339).map_err(|e| format!("not an RFC 3339 time ({e})"))?;
    // Alert times are stored in UTC (`alert_time_key`); a time such as
    // 9999-12-31T23:59:59-01:00 has no UTC form within year 9999.
    match time.checked_to_offset(UtcOffset::UTC) {
        Some(_) => Ok(time),
        None => Err("outside the supported range once converted to UTC".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../../tests/fixtures/firing_single.json");

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_str(FIRING).expect("fixture is JSON");
        edit(&mut value);
        serde_json::to_vec(&value).expect("serialises")
    }

    fn field_of_error(body: &[u8]) -> String {
        parse(body).expect_err("should be refused").field
    }

    #[test]
    fn the_real_fixture_parses() {
        let n = parse(FIRING.as_bytes()).expect("fixture parses");
        assert_eq!(n.alerts.len(), 1);
        assert_eq!(n.alerts[0].alertname(), "DatabasePoolExhaustionCritical");
        assert_eq!(n.alerts[0].ends_at, None);
        assert_eq!(n.alerts[0].fingerprint.as_str(), "4c3f5dd55641e094");
    }

    #[test]
    fn missing_alerts_names_the_field() {
        assert_eq!(
            field_of_error(&with(|v| {
                v.as_object_mut().expect("object").remove("alerts");
            })),
            "alerts"
        );
    }

    #[test]
    fn missing_nested_field_names_its_path() {
        let body = with(|v| {
            v["alerts"][0]
                .as_object_mut()
                .expect("object")
                .remove("fingerprint");
        });
        assert_eq!(field_of_error(&body), "alerts[0].fingerprint");
    }

    #[test]
    fn wrong_type_names_its_path() {
        assert_eq!(
            field_of_error(&with(|v| v["alerts"][0]["labels"] = 5.into())),
            "alerts[0].labels"
        );
        assert_eq!(
            field_of_error(&with(|v| v["truncatedAlerts"] = "x".into())),
            "truncatedAlerts"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            field_of_error(&with(|v| v["version"] = "3".into())),
            "version"
        );
        assert_eq!(
            field_of_error(&with(|v| v["alerts"][0]["startsAt"] = "yesterday".into())),
            "alerts[0].startsAt"
        );
        assert_eq!(
            field_of_error(&with(|v| v["alerts"][0]["status"] = "burning".into())),
            "alerts[0].status"
        );
        assert_eq!(
            field_of_error(&with(|v| v["alerts"][0]["fingerprint"] = "zz".into())),
            "alerts[0].fingerprint"
        );
    }

    #[test]
    fn truncated_json_names_the_document_and_the_position() {
        let cut = FIRING.find("\"alertname\"").expect("fixture has labels") + 4;
        let err = parse(&FIRING.as_bytes()[..cut]).expect_err("truncated");
        assert_eq!(err.field, "alerts[0].labels");
        assert!(err.message.contains("line"), "{}", err.message);
        assert_eq!(parse(b"{").expect_err("eof").field, ".");
    }

    #[test]
    fn unknown_and_newer_fields_are_accepted() {
        let body = with(|v| {
            v["notification_reason"] = "first notification".into();
            v["routeLabels"] = serde_json::json!({"team": "db"});
            v["somethingFromTheFuture"] = serde_json::json!([1, 2]);
        });
        assert!(parse(&body).is_ok());
    }
}
