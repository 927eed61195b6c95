//! The states the schema lists in CHECK constraints, as enums: each parses
//! from and prints as the exact text the migrations allow, so Rust code
//! never compares state strings (SQL literals stay in SQL).

use std::str::FromStr;

use serde::Serialize;

/// Generates `as_str`, `FromStr`, `TryFrom<String>` (for `#[sqlx(try_from)]`)
/// for a state enum whose names are its schema text.
macro_rules! schema_enum {
    ($name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " {:?}"), other)),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What a person asks for when clicking (`decisions_decision_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Reject,
}

schema_enum!(Decision, "decision", { Approve => "approve", Reject => "reject" });

/// An approval request's state (`approvals_state_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
    Superseded,
    Executed,
}

schema_enum!(ApprovalState, "approval state", {
    Pending => "pending",
    Approved => "approved",
    Rejected => "rejected",
    Expired => "expired",
    Superseded => "superseded",
    Executed => "executed",
});

/// An escalation timer's state (`escalation_timers_state_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerState {
    Pending,
    Paused,
    Fired,
    Cancelled,
}

schema_enum!(TimerState, "timer state", {
    Pending => "pending",
    Paused => "paused",
    Fired => "fired",
    Cancelled => "cancelled",
});

/// An escalation timer's kind (`escalation_timers_kind_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerKind {
    Escalate,
    Review,
}

schema_enum!(TimerKind, "timer kind", { Escalate => "escalate", Review => "review" });

/// A work item's state (`work_state_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkState {
    Pending,
    Done,
    Failed,
    Cancelled,
}

schema_enum!(WorkState, "work state", {
    Pending => "pending",
    Done => "done",
    Failed => "failed",
    Cancelled => "cancelled",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_schema_text() {
        for s in [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Rejected,
            ApprovalState::Expired,
            ApprovalState::Superseded,
            ApprovalState::Executed,
        ] {
            assert_eq!(s.as_str().parse::<ApprovalState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
        }
        for s in [
            TimerState::Pending,
            TimerState::Paused,
            TimerState::Fired,
            TimerState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<TimerState>(), Ok(s));
        }
        for s in [
            WorkState::Pending,
            WorkState::Done,
            WorkState::Failed,
            WorkState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<WorkState>(), Ok(s));
        }
        assert_eq!("review".parse::<TimerKind>(), Ok(TimerKind::Review));
        assert_eq!("reject".parse::<Decision>(), Ok(Decision::Reject));
        assert!("done".parse::<ApprovalState>().is_err());
    }
}
