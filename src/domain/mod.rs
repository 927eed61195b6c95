//! Pure types with invariants, shared by every layer: alerts as remedy
//! understands them once they have crossed the intake edge, incidents and
//! their ids. Nothing here does I/O; everything here is already validated.

mod alert;
pub mod env_file;
mod incident;
mod states;

pub use alert::{
    Alert, AlertStatus, Fingerprint, Labels, Notification, NotificationKey, alert_time_key,
};
pub use incident::{IncidentId, IncidentStatus};
pub use states::{ApprovalState, Decision, TimerKind, TimerState, WorkState};

/// Milliseconds since the Unix epoch. Every stored time but an alert's own
/// `startsAt` is kept in this unit, so both stores compare times as integers.
pub type Millis = i64;

/// The current time in [`Millis`]. Callers read the clock once at the edge
/// and pass the value in, so tests can move time.
#[must_use]
pub fn now_millis() -> Millis {
    to_millis(time::OffsetDateTime::now_utc())
}

/// Converts a timestamp to [`Millis`], saturating outside the i64 range.
#[must_use]
pub fn to_millis(t: time::OffsetDateTime) -> Millis {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Formats [`Millis`] as RFC 3339 for people and JSON.
#[must_use]
pub fn format_millis(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
