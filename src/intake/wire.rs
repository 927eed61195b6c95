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

/// What one notification may hold. Anything beyond is refused with 400 at
/// parse time, the same on both stores, instead of failing the commit (a
/// 5xx that Alertmanager would retry for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `intake.max_alerts_per_notification`.
    pub max_alerts: usize,
    /// `intake.max_value_bytes`: any label or annotation value, and the
    /// other stored strings (receiver, group key, generator URL).
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_alerts: 10_000,
            max_value_bytes: 32 * 1024,
        }
    }
}

/// Parses and validates a webhook body into a [`Notification`], with the
/// default [`Limits`].
pub fn parse(body: &[u8]) -> Result<Notification, InvalidPayload> {
    parse_with(body, Limits::default())
}

/// Parses and validates a webhook body into a [`Notification`].
pub fn parse_with(body: &[u8], limits: Limits) -> Result<Notification, InvalidPayload> {
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
    check_storable(&message, limits)?;
    Notification::try_from(message)
}

/// Refuses what no store can hold or what exceeds the limits, naming the
/// field: a NUL character (PostgreSQL text and jsonb cannot store it), an
/// integer beyond a signed 64-bit column, an empty label name, too many
/// alerts, a value over `max_value_bytes`.
fn check_storable(message: &WebhookMessage, limits: Limits) -> Result<(), InvalidPayload> {
    if message.alerts.len() > limits.max_alerts {
        return Err(InvalidPayload {
            field: "alerts".into(),
            message: format!(
                "{} alerts; at most {} per notification (intake.max_alerts_per_notification)",
                message.alerts.len(),
                limits.max_alerts
            ),
        });
    }
    if i64::try_from(message.truncated_alerts).is_err() {
        return Err(InvalidPayload {
            field: "truncatedAlerts".into(),
            message: format!(
                "{} does not fit a signed 64-bit integer",
                message.truncated_alerts
            ),
        });
    }
    check_text("receiver", &message.receiver, limits)?;
    check_text("groupKey", &message.group_key, limits)?;
    for (i, alert) in message.alerts.iter().enumerate() {
        check_labels(&format!("alerts[{i}].labels"), &alert.labels, limits)?;
        check_labels(
            &format!("alerts[{i}].annotations"),
            &alert.annotations,
            limits,
        )?;
        check_text(
            &format!("alerts[{i}].generatorURL"),
            &alert.generator_url,
            limits,
        )?;
        check_text(&format!("alerts[{i}].startsAt"), &alert.starts_at, limits)?;
        if let Some(ends_at) = &alert.ends_at {
            check_text(&format!("alerts[{i}].endsAt"), ends_at, limits)?;
        }
        check_text(
            &format!("alerts[{i}].fingerprint"),
            &alert.fingerprint,
            limits,
        )?;
    }
    Ok(())
}

fn check_labels(field: &str, labels: &Labels, limits: Limits) -> Result<(), InvalidPayload> {
    for (name, value) in labels {
        if name.is_empty() {
            return Err(InvalidPayload {
                field: field.to_owned(),
                message: "empty label name".into(),
            });
        }
        // A name is shown in the path, so a hostile one is shown escaped.
        let path = format!("{field}.{}", name.escape_debug());
        if name.contains('\0') {
            return Err(InvalidPayload {
                field: path,
                message: "NUL character in the label name".into(),
            });
        }
        if name.len() > limits.max_value_bytes {
            return Err(too_long(path, name.len(), limits));
        }
        check_text(&path, value, limits)?;
    }
    Ok(())
}

fn check_text(field: &str, value: &str, limits: Limits) -> Result<(), InvalidPayload> {
    if value.contains('\0') {
        return Err(InvalidPayload {
            field: field.to_owned(),
            message: "NUL character".into(),
        });
    }
    if value.len() > limits.max_value_bytes {
        return Err(too_long(field.to_owned(), value.len(), limits));
    }
    Ok(())
}

fn too_long(field: String, len: usize, limits: Limits) -> InvalidPayload {
    InvalidPayload {
        field,
        message: format!(
            "{len} bytes; at most {} (intake.max_value_bytes)",
            limits.max_value_bytes
        ),
    }
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
    fn what_a_store_cannot_hold_is_refused_naming_the_field() {
        let nul_value = with(|v| v["alerts"][0]["labels"]["x"] = "a\u{0}b".into());
        let err = parse(&nul_value).expect_err("NUL value");
        assert_eq!(err.field, "alerts[0].labels.x");
        assert_eq!(err.message, "NUL character");
        let nul_name = with(|v| v["alerts"][0]["annotations"]["a\u{0}"] = "b".into());
        assert_eq!(field_of_error(&nul_name), "alerts[0].annotations.a\\0");
        let empty_name = with(|v| v["alerts"][0]["labels"][""] = "b".into());
        assert_eq!(field_of_error(&empty_name), "alerts[0].labels");
        let nul_receiver = with(|v| v["receiver"] = "re\u{0}".into());
        assert_eq!(field_of_error(&nul_receiver), "receiver");
        let huge = with(|v| v["truncatedAlerts"] = serde_json::json!(u64::MAX));
        assert_eq!(field_of_error(&huge), "truncatedAlerts");
    }

    #[test]
    fn limits_are_enforced_with_their_setting_named() {
        let limits = Limits {
            max_alerts: 1,
            max_value_bytes: 1000,
        };
        let long = with(|v| v["alerts"][0]["annotations"]["summary"] = "x".repeat(1001).into());
        let err = parse_with(&long, limits).expect_err("too long");
        assert_eq!(err.field, "alerts[0].annotations.summary");
        assert!(
            err.message.contains("intake.max_value_bytes"),
            "{}",
            err.message
        );
        let two = with(|v| {
            let first = v["alerts"][0].clone();
            v["alerts"].as_array_mut().expect("array").push(first);
        });
        let err = parse_with(
            &two,
            Limits {
                max_value_bytes: 1 << 20,
                ..limits
            },
        )
        .expect_err("too many");
        assert_eq!(err.field, "alerts");
        assert!(parse(&two).is_ok());
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
