//! Diagnostic step kinds, a closed set, one file each: `sql` (read-only, on a
//! named PostgreSQL target), `promql` (instant query), `http` (probe),
//! `command` (allow-listed program, argv only). Each yields a [`StepOutput`]
//! or a [`StepError`]; a failed step never stops the others.

pub mod command;
pub mod http;
pub mod promql;
pub mod sql;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What one step produced, as the report shows it and templates read it
/// (`steps.<id>.rows`, `steps.<id>.value`, `steps.<id>.ok`, `steps.<id>.error`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepOutput {
    /// The step ran to completion.
    pub ok: bool,
    /// Why it did not, when `ok` is false.
    pub error: Option<String>,
    /// sql: result rows; promql: one row per series (its labels plus
    /// `value`); http: one row with `status`, `expected`, `healthy`, `body`;
    /// command: one row per matching output line (`line`).
    pub rows: Vec<Map<String, Value>>,
    /// promql: the scalar, or the first series' value; http: the status
    /// code; command: the exit code.
    pub value: Option<f64>,
    /// Rows dropped by the step's cap.
    pub truncated: u64,
    pub duration_ms: u64,
}

impl StepOutput {
    /// A step that failed, with its reason.
    #[must_use]
    pub fn failed(error: &StepError, duration: Duration) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}
