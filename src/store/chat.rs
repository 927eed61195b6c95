//! Approval requests, the decisions people make on them, and the chat
//! message that shows an incident. Every change that the message should
//! show queues `notify` work, so chat delivery never runs on the caller's
//! path (a chat outage never blocks intake or a click).

use serde::Serialize;
use sqlx::types::Json;

use super::execution::audit;
use super::{Store, StoreError, WorkKind, enqueue_notify, on_pool, record_event, transaction};
use crate::domain::{IncidentId, Millis};

/// An approval request to create with a diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApproval {
    pub seq: i64,
    pub key: String,
    pub action_id: String,
    pub title: String,
    pub risk: String,
    pub roles: Vec<String>,
    pub quorum: i64,
    pub digest: String,
    pub expires_at: Millis,
    /// Approved by policy at once (an automatic, safe action).
    pub automatic: bool,
}

/// An approval request with the decisions recorded on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalView {
    pub id: i64,
    pub seq: i64,
    pub key: String,
    pub action_id: String,
    pub title: String,
    pub risk: String,
    pub roles: Vec<String>,
    pub quorum: i64,
    pub digest: String,
    pub state: String,
    pub expires_at: Millis,
    pub decisions: Vec<DecisionView>,
}

impl ApprovalView {
    /// Distinct people who approved.
    #[must_use]
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == "approve")
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionView {
    pub approver: String,
    pub display: String,
    pub decision: String,
    pub at: Millis,
}

/// What a person asks for when clicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// Who clicked: a stable key (`slack:U123`) and a name to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub key: String,
    pub display: String,
}

/// How a click ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionOutcome {
    /// Recorded (or already recorded for this person: `repeat`).
    Recorded {
        state: String,
        approvals: i64,
        quorum: i64,
        repeat: bool,
    },
    /// Refused, with the reason shown to the clicker.
    Refused(String),
}

/// The chat message of an incident.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChatMessage {
    pub platform: String,
    pub channel: String,
    pub message_id: Option<String>,
    pub posting_owner: Option<String>,
    pub posting_until: Option<Millis>,
}

/// Queues `notify` for an incident unless one is already waiting (not yet
/// claimed) and due no later. `$1` incident, `$2` due, `$3` now, `$4` kind.
pub(super) const ENQUEUE_NOTIFY: &str =
    "insert into work (kind, incident_id, due_at, created_at, updated_at)
select $4, $1, $2, $3, $3
 where not exists (select 1 from work
                    where incident_id = $1 and kind = $4 and state = 'pending'
                      and lease_owner is null and due_at <= $2)";

type ApprovalRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    Json<Vec<String>>,
    i64,
    String,
    String,
    Millis,
);

type DecisionRow = (i64, String, String, String, Millis);

impl Store {
    /// Approval requests of an incident, in report order, with decisions.
    pub async fn approvals(&self, incident: IncidentId) -> Result<Vec<ApprovalView>, StoreError> {
        let (rows, decisions): (Vec<ApprovalRow>, Vec<DecisionRow>) = on_pool!(self, |pool| {
            let rows = sqlx::query_as(
                "select id, seq, key, action_id, title, risk, roles, quorum, digest, state, expires_at
                   from approvals where incident_id = $1 order by seq",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?;
            let decisions = sqlx::query_as(
                "select d.approval_id, d.approver, d.display, d.decision, d.at
                   from decisions d join approvals a on a.id = d.approval_id
                  where a.incident_id = $1 order by d.id",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?;
            (rows, decisions)
        });
        Ok(rows
            .into_iter()
            .map(|r| ApprovalView {
                id: r.0,
                seq: r.1,
                key: r.2,
                action_id: r.3,
                title: r.4,
                risk: r.5,
                roles: r.6.0,
                quorum: r.7,
                digest: r.8,
                state: r.9,
                expires_at: r.10,
                decisions: decisions
                    .iter()
                    .filter(|d| d.0 == r.0)
                    .map(|d| DecisionView {
                        approver: d.1.clone(),
                        display: d.2.clone(),
                        decision: d.3.clone(),
                        at: d.4,
                    })
                    .collect(),
            })
            .collect())
    }

    /// The approval request behind a button, for authorization.
    pub async fn approval(&self, id: i64) -> Result<Option<(IncidentId, Vec<String>)>, StoreError> {
        let row: Option<(i64, Json<Vec<String>>)> = on_pool!(self, |pool| {
            sqlx::query_as("select incident_id, roles from approvals where id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(incident, roles)| (IncidentId(incident), roles.0)))
    }

    /// The approval request of an incident by its key (API and CLI).
    pub async fn approval_by_key(
        &self,
        incident: IncidentId,
        key: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("select id, digest from approvals where incident_id = $1 and key = $2")
                .bind(incident.0)
                .bind(key)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Records a click, once per person, bound to the digest the button
    /// carried. `authorized` is the caller's verdict on the clicker's roles;
    /// a refusal is recorded on the incident's timeline too.
    pub async fn decide(
        &self,
        approval_id: i64,
        digest: &str,
        approver: &Approver,
        decision: Decision,
        authorized: bool,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        // PostgreSQL: lock the request so concurrent approvers count each
        // other; SQLite's single writer already serializes.
        let lock = match self {
            Self::Sqlite(..) => LOAD_APPROVAL,
            Self::Postgres(_) => LOAD_APPROVAL_FOR_UPDATE,
        };
        Ok(transaction!(self, |conn| {
            let row: Option<(i64, String, String, i64, Millis, String)> = sqlx::query_as(lock)
                .bind(approval_id)
                .fetch_optional(&mut *conn)
                .await?;
            let Some((incident, stored_digest, state, quorum, expires_at, incident_status)) = row
            else {
                return Ok(DecisionOutcome::Refused("unknown approval request".into()));
            };
            let refusal = if !digest_matches(&stored_digest, digest) {
                Some("this button belongs to an earlier version of the action; use the current message".to_owned())
            } else if !authorized {
                Some("you are not among the approvers of this action".to_owned())
            } else if incident_status != "firing" {
                Some("the incident is resolved".to_owned())
            } else if let Some(earlier) = sqlx::query_scalar::<_, String>(
                "select decision from decisions where approval_id = $1 and approver = $2",
            )
            .bind(approval_id)
            .bind(&approver.key)
            .fetch_optional(&mut *conn)
            .await?
            .filter(|earlier| earlier != decision.as_str())
            {
                // A change of mind is not silently dropped: say so.
                Some(format!("you already chose to {earlier} this action"))
            } else if state != "pending" {
                Some(format!("this action is already {state}"))
            } else if now >= expires_at {
                sqlx::query(
                    "update approvals set state = 'expired', decided_at = $2
                      where id = $1 and state = 'pending'",
                )
                .bind(approval_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                enqueue_notify!(conn, incident, now, now);
                Some("this approval request expired".to_owned())
            } else {
                None
            };
            if let Some(reason) = refusal {
                record_event!(
                    conn,
                    incident,
                    now,
                    "decision_refused",
                    serde_json::json!({
                        "approval_id": approval_id,
                        "approver": approver.key,
                        "display": approver.display,
                        "decision": decision.as_str(),
                        "reason": reason,
                    })
                );
                // Not `return`: that would roll the audit row back.
                DecisionOutcome::Refused(reason)
            } else {
                let inserted = sqlx::query(
                    "insert into decisions (approval_id, approver, display, decision, at)
                 values ($1, $2, $3, $4, $5)
                 on conflict (approval_id, approver) do nothing",
                )
                .bind(approval_id)
                .bind(&approver.key)
                .bind(&approver.display)
                .bind(decision.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1;
                let approvals: i64 = sqlx::query_scalar(
                "select count(*) from decisions where approval_id = $1 and decision = 'approve'",
            )
            .bind(approval_id)
            .fetch_one(&mut *conn)
            .await?;
                let rejected: i64 = sqlx::query_scalar(
                    "select count(*) from decisions where approval_id = $1 and decision = 'reject'",
                )
                .bind(approval_id)
                .fetch_one(&mut *conn)
                .await?;
                let new_state = if rejected > 0 {
                    "rejected"
                } else if approvals >= quorum {
                    "approved"
                } else {
                    "pending"
                };
                if inserted {
                    if new_state != "pending" {
                        sqlx::query(
                            "update approvals set state = $2, decided_at = $3
                          where id = $1 and state = 'pending'",
                        )
                        .bind(approval_id)
                        .bind(new_state)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                        let approvers: Vec<String> = sqlx::query_scalar(
                            "select approver from decisions where approval_id = $1 order by id",
                        )
                        .bind(approval_id)
                        .fetch_all(&mut *conn)
                        .await?;
                        audit!(
                            conn,
                            incident,
                            Some(approval_id),
                            now,
                            new_state,
                            serde_json::json!({ "approvers": approvers, "digest": stored_digest })
                        );
                        if new_state == "approved" {
                            sqlx::query(
                                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                                 values ($1, $2, $3, $3, $3)",
                            )
                            .bind(WorkKind::Execute.as_str())
                            .bind(incident)
                            .bind(now)
                            .execute(&mut *conn)
                            .await?;
                        }
                    }
                    record_event!(
                        conn,
                        incident,
                        now,
                        match new_state {
                            "approved" => "approved",
                            "rejected" => "rejected",
                            _ => "approval_recorded",
                        },
                        serde_json::json!({
                            "approval_id": approval_id,
                            "approver": approver.key,
                            "display": approver.display,
                            "decision": decision.as_str(),
                            "approvals": approvals,
                            "quorum": quorum,
                        })
                    );
                    enqueue_notify!(conn, incident, now, now);
                }
                DecisionOutcome::Recorded {
                    state: new_state.to_owned(),
                    approvals,
                    quorum,
                    repeat: !inserted,
                }
            }
        }))
    }

    /// The incident's chat message, if one was posted or is being posted.
    pub async fn chat_message(
        &self,
        incident: IncidentId,
    ) -> Result<Option<ChatMessage>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select platform, channel, message_id, posting_owner, posting_until
                   from chat_messages where incident_id = $1",
            )
            .bind(incident.0)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Claims the first post of an incident's message for `owner` (a token
    /// unique to one attempt) until `until`, so it is never posted twice.
    /// False when another attempt holds the claim or the message exists.
    pub async fn claim_first_post(
        &self,
        incident: IncidentId,
        platform: &str,
        channel: &str,
        owner: &str,
        until: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "insert into chat_messages (incident_id, platform, channel, posting_owner,
                     posting_until, updated_at)
                 values ($1, $2, $3, $4, $5, $6)
                 on conflict (incident_id) do update
                    set posting_owner = excluded.posting_owner,
                        posting_until = excluded.posting_until,
                        platform = excluded.platform, channel = excluded.channel,
                        updated_at = excluded.updated_at
                  where chat_messages.message_id is null
                    and (chat_messages.posting_owner is null
                         or chat_messages.posting_until <= $6)",
            )
            .bind(incident.0)
            .bind(platform)
            .bind(channel)
            .bind(owner)
            .bind(until)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1
        }))
    }

    /// Gives a first-post claim back after a post that did not happen.
    pub async fn release_first_post(
        &self,
        incident: IncidentId,
        owner: &str,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            sqlx::query(
                "update chat_messages set posting_owner = null, posting_until = null
                  where incident_id = $1 and posting_owner = $2 and message_id is null",
            )
            .bind(incident.0)
            .bind(owner)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Stores the posted message's identity (Slack `ts`, Discord id), if
    /// `owner` still holds the first-post claim. False when it lost it.
    pub async fn message_posted(
        &self,
        incident: IncidentId,
        owner: &str,
        message_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let stored = sqlx::query(
                "update chat_messages set message_id = $2, posting_owner = null,
                        posting_until = null, last_error = null, updated_at = $3
                  where incident_id = $1 and message_id is null and posting_owner = $4",
            )
            .bind(incident.0)
            .bind(message_id)
            .bind(now)
            .bind(owner)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if !stored {
                return Ok(false);
            }
            record_event!(
                conn,
                incident.0,
                now,
                "chat_posted",
                serde_json::json!({ "message_id": message_id })
            );
            true
        }))
    }

    /// Records a chat delivery that will not be retried (wrong channel,
    /// missing permission), on the incident where people look.
    pub async fn chat_failed(
        &self,
        incident: IncidentId,
        platform: &str,
        error: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            sqlx::query(
                "update chat_messages set last_error = $2, posting_owner = null,
                        posting_until = null, updated_at = $3
                  where incident_id = $1",
            )
            .bind(incident.0)
            .bind(error)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            record_event!(
                conn,
                incident.0,
                now,
                "chat_failed",
                serde_json::json!({ "platform": platform, "error": error })
            );
        });
        Ok(())
    }

    /// Marks pending approvals whose time ran out as expired; true when any
    /// was (the message then shows it).
    pub async fn expire_approvals(
        &self,
        incident: IncidentId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            sqlx::query(
                "update approvals set state = 'expired', decided_at = $2
                  where incident_id = $1 and state = 'pending' and expires_at <= $2",
            )
            .bind(incident.0)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0
        }))
    }
}

const LOAD_APPROVAL: &str =
    "select a.incident_id, a.digest, a.state, a.quorum, a.expires_at, i.status
   from approvals a join incidents i on i.id = a.incident_id where a.id = $1";

const LOAD_APPROVAL_FOR_UPDATE: &str =
    "select a.incident_id, a.digest, a.state, a.quorum, a.expires_at, i.status
   from approvals a join incidents i on i.id = a.incident_id where a.id = $1
    for update of a";

/// A button carries a prefix of the digest (platform length limits); the
/// API may send the whole digest.
fn digest_matches(stored: &str, shown: &str) -> bool {
    shown.len() >= 16
        && stored.len() >= shown.len()
        && subtle::ConstantTimeEq::ct_eq(&stored.as_bytes()[..shown.len()], shown.as_bytes()).into()
}
