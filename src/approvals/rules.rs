//! The rules of a decision and of the escalation controls (Ack, Snooze,
//! Silence): which refusal applies, in a fixed order, and how the
//! decisions of distinct people add up to a quorum.

use std::collections::BTreeMap;

pub use crate::domain::{ApprovalState, Decision};
use crate::domain::{IncidentStatus, Millis};

/// Why a decision or a control is refused. The [`code`](Self::code) is what
/// refusals are recorded once by (per approval or incident, per person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownApproval,
    DigestChanged,
    NotAuthorized,
    SelfApproval,
    Resolved,
    ChangedMind(Decision),
    AlreadyDecided(ApprovalState),
    Expired,
    NotResponder,
    NoEscalation,
    AlreadyAcknowledged(String),
    NothingPending,
    /// A silence length the matrix does not offer (the offered ones, in
    /// seconds).
    SilenceLength(Vec<u64>),
    /// A silence with no matchers at all (an alert without labels).
    SilenceWithoutMatchers,
    /// A silence whose matchers name none of `silence.required_labels`.
    SilenceTooBroad {
        matchers: Vec<String>,
        required: Vec<String>,
    },
    /// A silence that would also mute another firing incident outside the
    /// incident's storm: the first such incident, and how many more.
    SilenceMutesOthers {
        incident: i64,
        alertname: String,
        more: usize,
    },
}

impl Refusal {
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownApproval => "unknown_approval",
            Self::DigestChanged => "digest_changed",
            Self::NotAuthorized => "not_authorized",
            Self::SelfApproval => "self_approval",
            Self::Resolved => "resolved",
            Self::ChangedMind(_) => "changed_mind",
            Self::AlreadyDecided(_) => "already_decided",
            Self::Expired => "expired",
            Self::NotResponder => "not_responder",
            Self::NoEscalation => "no_escalation",
            Self::AlreadyAcknowledged(_) => "already_acknowledged",
            Self::NothingPending => "nothing_pending",
            Self::SilenceLength(_) => "silence_length",
            Self::SilenceWithoutMatchers => "silence_without_matchers",
            Self::SilenceTooBroad { .. } => "silence_too_broad",
            Self::SilenceMutesOthers { .. } => "silence_mutes_others",
        }
    }

    /// The text shown to the person (ephemeral reply, API error).
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::UnknownApproval => "unknown approval request".into(),
            Self::DigestChanged => "this button belongs to an earlier version of the action; \
                                    use the current message"
                .into(),
            Self::NotAuthorized => "you are not among the approvers of this action".into(),
            Self::SelfApproval => {
                "you requested this action; another approver must decide it".into()
            }
            Self::Resolved => "the incident is resolved".into(),
            Self::ChangedMind(earlier) => {
                format!("you already chose to {} this action", earlier.as_str())
            }
            Self::AlreadyDecided(state) => format!("this action is already {}", state.as_str()),
            Self::Expired => "this approval request expired".into(),
            Self::NotResponder => "you are not a responder for this incident".into(),
            Self::NoEscalation => "this incident has no escalation".into(),
            Self::AlreadyAcknowledged(by) => {
                format!("already acknowledged by {by}: nothing escalates on time")
            }
            Self::NothingPending => "no escalation is pending".into(),
            Self::SilenceLength(offered) => format!(
                "silence for one of: {}",
                offered
                    .iter()
                    .map(|s| crate::escalation::human(std::time::Duration::from_secs(*s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::SilenceWithoutMatchers => "a silence needs the alert's labels".into(),
            Self::SilenceTooBroad { matchers, required } => format!(
                "silence refused: its matchers ({}) name none of the labels {} \
                 (silence.required_labels), so it would mute every alert like this one; \
                 silence in Alertmanager with narrower matchers instead",
                matchers.join(", "),
                required.join(", ")
            ),
            Self::SilenceMutesOthers {
                incident,
                alertname,
                more,
            } => {
                let more = if *more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "silence refused: its matchers would also mute incident #{incident} \
                     ({alertname}){more}, firing and not in this incident's storm"
                )
            }
        }
    }
}

/// What the store read about one click on one approval request.
#[derive(Debug, Clone)]
pub struct DecisionCheck<'a> {
    /// The digest the button carried is (a prefix of) the stored one.
    pub digest_matches: bool,
    /// The clicker holds one of the action's roles ([`super::Directory::holds`]).
    pub authorized: bool,
    pub incident: IncidentStatus,
    pub state: ApprovalState,
    /// This person's earlier decision on the request, if any.
    pub earlier: Option<Decision>,
    pub decision: Decision,
    pub now: Millis,
    pub expires_at: Millis,
    /// The action forbids self-approval (`forbid_self_approval`).
    pub forbid_self: bool,
    /// The person key who requested the approval (a Silence click), if a
    /// person did; engine-made requests have none.
    pub requested_by: Option<&'a str>,
    /// The clicker's key (`person:alice`, or `slack:U…` when unmapped).
    pub actor: &'a str,
}

/// The refusal that applies to a click, checked in this order: a stale
/// button, an unauthorized or self-approving clicker, a resolved incident,
/// a change of mind, a decided request, an expired one. `None`: record it.
#[must_use]
pub fn decision_refusal(c: &DecisionCheck<'_>) -> Option<Refusal> {
    if !c.digest_matches {
        return Some(Refusal::DigestChanged);
    }
    if !c.authorized {
        return Some(Refusal::NotAuthorized);
    }
    if c.forbid_self && c.decision == Decision::Approve && c.requested_by == Some(c.actor) {
        return Some(Refusal::SelfApproval);
    }
    if c.incident != IncidentStatus::Firing {
        return Some(Refusal::Resolved);
    }
    if let Some(earlier) = c.earlier.filter(|e| *e != c.decision) {
        // A change of mind is not silently dropped: say so.
        return Some(Refusal::ChangedMind(earlier));
    }
    if c.state != ApprovalState::Pending {
        return Some(Refusal::AlreadyDecided(c.state));
    }
    if c.now >= c.expires_at {
        return Some(Refusal::Expired);
    }
    None
}

/// Where a request stands after its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Distinct people who approved.
    pub approvals: i64,
    pub state: ApprovalState,
}

/// Counts decisions by distinct person key (one person's Slack click and
/// console approval share a key, so they count once): one rejection
/// rejects; `quorum` distinct approvals approve.
#[must_use]
pub fn tally<'a>(decisions: impl IntoIterator<Item = (&'a str, Decision)>, quorum: i64) -> Tally {
    let mut by_person: BTreeMap<&str, Decision> = BTreeMap::new();
    for (key, decision) in decisions {
        // The first decision of a person stands (the store refuses changes).
        by_person.entry(key).or_insert(decision);
    }
    let approvals = by_person
        .values()
        .filter(|d| **d == Decision::Approve)
        .count();
    let approvals = i64::try_from(approvals).unwrap_or(i64::MAX);
    let state = if by_person.values().any(|d| *d == Decision::Reject) {
        ApprovalState::Rejected
    } else if approvals >= quorum.max(1) {
        ApprovalState::Approved
    } else {
        ApprovalState::Pending
    };
    Tally { approvals, state }
}

/// Why an Ack, Snooze or Silence is refused whatever it is: the person
/// holds none of the policy's roles, the incident has no escalation, or
/// it is resolved. `escalation` is the incident's status when it has one.
#[must_use]
pub fn control_refusal(authorized: bool, escalation: Option<IncidentStatus>) -> Option<Refusal> {
    match escalation {
        _ if !authorized => Some(Refusal::NotResponder),
        None => Some(Refusal::NoEscalation),
        Some(IncidentStatus::Resolved) => Some(Refusal::Resolved),
        Some(IncidentStatus::Firing) => None,
    }
}

/// A Snooze is refused, beyond [`control_refusal`], once the incident is
/// acknowledged (nothing escalates on time) or when no timer is pending.
#[must_use]
pub fn snooze_refusal(
    authorized: bool,
    escalation: Option<IncidentStatus>,
    acked_by: Option<&str>,
    next_due: Option<Millis>,
) -> Option<Refusal> {
    control_refusal(authorized, escalation).or_else(|| match (acked_by, next_due) {
        (Some(by), _) => Some(Refusal::AlreadyAcknowledged(by.to_owned())),
        (None, None) => Some(Refusal::NothingPending),
        (None, Some(_)) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> DecisionCheck<'static> {
        DecisionCheck {
            digest_matches: true,
            authorized: true,
            incident: IncidentStatus::Firing,
            state: ApprovalState::Pending,
            earlier: None,
            decision: Decision::Approve,
            now: 1_000,
            expires_at: 2_000,
            forbid_self: false,
            requested_by: None,
            actor: "person:alice",
        }
    }

    #[test]
    fn a_fresh_authorized_click_on_a_pending_request_is_recorded() {
        assert_eq!(decision_refusal(&check()), None);
    }

    #[test]
    fn a_stale_button_is_refused_before_anything_else() {
        let c = DecisionCheck {
            digest_matches: false,
            authorized: false,
            ..check()
        };
        assert_eq!(decision_refusal(&c), Some(Refusal::DigestChanged));
    }

    #[test]
    fn a_person_outside_the_roles_is_not_authorized() {
        let c = DecisionCheck {
            authorized: false,
            ..check()
        };
        assert_eq!(decision_refusal(&c), Some(Refusal::NotAuthorized));
    }

    #[test]
    fn the_requester_cannot_approve_when_self_approval_is_forbidden() {
        let c = DecisionCheck {
            forbid_self: true,
            requested_by: Some("person:alice"),
            ..check()
        };
        assert_eq!(decision_refusal(&c), Some(Refusal::SelfApproval));
        // Someone else may; the requester may still reject; without the
        // flag the requester may approve.
        let other = DecisionCheck {
            actor: "person:bob",
            ..c.clone()
        };
        assert_eq!(decision_refusal(&other), None);
        let reject = DecisionCheck {
            decision: Decision::Reject,
            ..c.clone()
        };
        assert_eq!(decision_refusal(&reject), None);
        let allowed = DecisionCheck {
            forbid_self: false,
            ..c
        };
        assert_eq!(decision_refusal(&allowed), None);
    }

    #[test]
    fn a_resolved_incident_takes_no_decisions() {
        let c = DecisionCheck {
            incident: IncidentStatus::Resolved,
            ..check()
        };
        assert_eq!(decision_refusal(&c), Some(Refusal::Resolved));
    }

    #[test]
    fn a_change_of_mind_is_refused_and_a_repeat_while_pending_is_not() {
        let changed = DecisionCheck {
            earlier: Some(Decision::Approve),
            decision: Decision::Reject,
            ..check()
        };
        assert_eq!(
            decision_refusal(&changed),
            Some(Refusal::ChangedMind(Decision::Approve))
        );
        let repeat = DecisionCheck {
            earlier: Some(Decision::Approve),
            ..check()
        };
        assert_eq!(decision_refusal(&repeat), None);
    }

    #[test]
    fn a_decided_request_refuses_newcomers() {
        for state in [
            ApprovalState::Approved,
            ApprovalState::Rejected,
            ApprovalState::Expired,
            ApprovalState::Superseded,
            ApprovalState::Executed,
        ] {
            let c = DecisionCheck { state, ..check() };
            assert_eq!(decision_refusal(&c), Some(Refusal::AlreadyDecided(state)));
        }
    }

    #[test]
    fn a_request_past_its_expiry_is_refused() {
        let c = DecisionCheck {
            now: 2_000,
            ..check()
        };
        assert_eq!(decision_refusal(&c), Some(Refusal::Expired));
    }

    #[test]
    fn quorum_counts_distinct_people_not_clicks() {
        let one_person_twice = [
            ("person:alice", Decision::Approve),
            ("person:alice", Decision::Approve),
        ];
        let t = tally(one_person_twice, 2);
        assert_eq!((t.approvals, t.state), (1, ApprovalState::Pending));
        let two_people = [
            ("person:alice", Decision::Approve),
            ("person:bob", Decision::Approve),
        ];
        let t = tally(two_people, 2);
        assert_eq!((t.approvals, t.state), (2, ApprovalState::Approved));
    }

    #[test]
    fn one_rejection_rejects_whatever_the_approvals() {
        let t = tally(
            [
                ("person:alice", Decision::Approve),
                ("slack:U9", Decision::Reject),
            ],
            1,
        );
        assert_eq!(t.state, ApprovalState::Rejected);
    }

    #[test]
    fn a_zero_quorum_still_needs_one_approval() {
        assert_eq!(tally([], 0).state, ApprovalState::Pending);
    }

    #[test]
    fn controls_need_a_responder_an_escalation_and_a_firing_incident() {
        assert_eq!(
            control_refusal(false, Some(IncidentStatus::Firing)),
            Some(Refusal::NotResponder)
        );
        assert_eq!(control_refusal(true, None), Some(Refusal::NoEscalation));
        assert_eq!(
            control_refusal(true, Some(IncidentStatus::Resolved)),
            Some(Refusal::Resolved)
        );
        assert_eq!(control_refusal(true, Some(IncidentStatus::Firing)), None);
    }

    #[test]
    fn a_snooze_needs_an_unacknowledged_incident_with_a_pending_timer() {
        let firing = Some(IncidentStatus::Firing);
        assert_eq!(
            snooze_refusal(true, firing, Some("alice"), Some(5)),
            Some(Refusal::AlreadyAcknowledged("alice".into()))
        );
        assert_eq!(
            snooze_refusal(true, firing, None, None),
            Some(Refusal::NothingPending)
        );
        assert_eq!(snooze_refusal(true, firing, None, Some(5)), None);
        assert_eq!(
            snooze_refusal(false, firing, None, Some(5)),
            Some(Refusal::NotResponder)
        );
    }
}
