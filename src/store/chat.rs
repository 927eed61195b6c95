//! Approval requests, the decisions people make on them, and the chat
//! message that shows an incident. Every change that the message should
//! show queues `notify` work, so chat delivery never runs on the caller's
//! path (a chat outage never blocks intake or a click).

use serde::Serialize;
use sqlx::types::Json;

use serde_json::{Value, json};

use super::conn::Conn;
use super::{
    Store, StoreError, WorkKind, enqueue_notify, insert_approval, on_pool, record_event,
    transaction,
};
use crate::approvals::{self, ApprovalState, Refusal};
use crate::domain::{IncidentId, IncidentStatus, Millis};

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
    pub state: ApprovalState,
    pub expires_at: Millis,
    pub decisions: Vec<DecisionView>,
}

impl ApprovalView {
    /// Distinct people who approved.
    #[must_use]
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == Decision::Approve)
            .count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionView {
    pub approver: String,
    pub display: String,
    pub decision: Decision,
    pub at: Millis,
}

pub use crate::approvals::{Actor as Approver, Decision};

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
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut shown = Vec::new();
            for d in decisions.iter().filter(|d| d.0 == r.0) {
                shown.push(DecisionView {
                    approver: d.1.clone(),
                    display: d.2.clone(),
                    decision: d.3.parse().map_err(decode)?,
                    at: d.4,
                });
            }
            out.push(ApprovalView {
                id: r.0,
                seq: r.1,
                key: r.2,
                action_id: r.3,
                title: r.4,
                risk: r.5,
                roles: r.6.0,
                quorum: r.7,
                digest: r.8,
                state: r.9.parse().map_err(decode)?,
                expires_at: r.10,
                decisions: shown,
            });
        }
        Ok(out)
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

    /// Records a click, once per person (decisions are keyed by the
    /// person, so one person's clicks on several channels count once),
    /// bound to the digest the button carried. `authorized` is the
    /// caller's verdict on the clicker's roles; the rules are
    /// [`approvals::decision_refusal`] and [`approvals::tally`]. A refusal
    /// is recorded on the timeline once per person and reason.
    pub async fn decide(
        &self,
        approval_id: i64,
        digest: &str,
        approver: &Approver,
        decision: Decision,
        authorized: bool,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        self.in_transaction(async |conn| {
            // PostgreSQL: lock the request so concurrent approvers count
            // each other; SQLite's single writer already serializes.
            let lock = if conn.is_postgres() {
                LOAD_APPROVAL_FOR_UPDATE
            } else {
                LOAD_APPROVAL
            };
            let row: Option<LoadedApproval> =
                conn.fetch_optional(lock, &[approval_id.into()]).await?;
            let Some((incident, stored, state, quorum, expires_at, status, requested_by, forbid)) =
                row
            else {
                return Ok(DecisionOutcome::Refused(Refusal::UnknownApproval.message()));
            };
            let state: ApprovalState = state.parse().map_err(decode)?;
            let status: IncidentStatus = status.parse().map_err(decode)?;
            let earlier: Option<(String,)> = conn
                .fetch_optional(
                    "select decision from decisions where approval_id = $1 and approver = $2",
                    &[approval_id.into(), approver.key.as_str().into()],
                )
                .await?;
            let earlier = earlier
                .map(|(d,)| d.parse::<Decision>())
                .transpose()
                .map_err(decode)?;
            let check = approvals::DecisionCheck {
                digest_matches: digest_matches(&stored, digest),
                authorized,
                incident: status,
                state,
                earlier,
                decision,
                now,
                expires_at,
                forbid_self: forbid != 0,
                requested_by: requested_by.as_deref(),
                actor: &approver.key,
            };
            if let Some(refusal) = approvals::decision_refusal(&check) {
                if refusal == Refusal::Expired {
                    conn.execute(
                        "update approvals set state = 'expired', decided_at = $2
                          where id = $1 and state = 'pending'",
                        &[approval_id.into(), now.into()],
                    )
                    .await?;
                    conn.enqueue_notify(incident, now, now).await?;
                }
                let subject = format!("approval:{approval_id}");
                refuse_once(
                    conn,
                    incident,
                    &subject,
                    now,
                    "decision_refused",
                    approver,
                    &refusal,
                    json!({ "approval_id": approval_id, "decision": decision.as_str() }),
                )
                .await?;
                // Returned as a value, not an error: the record commits.
                return Ok(DecisionOutcome::Refused(refusal.message()));
            }
            let inserted = conn
                .execute(
                    "insert into decisions (approval_id, approver, display, decision, at,
                         channel, person)
                     values ($1, $2, $3, $4, $5, $6, $7)
                     on conflict (approval_id, approver) do nothing",
                    &[
                        approval_id.into(),
                        approver.key.as_str().into(),
                        approver.display.as_str().into(),
                        decision.as_str().into(),
                        now.into(),
                        approver.channel.as_str().into(),
                        approver.person.as_deref().into(),
                    ],
                )
                .await?
                == 1;
            let rows: Vec<(String, String, Option<String>)> = conn
                .fetch_all(
                    "select approver, decision, channel from decisions
                      where approval_id = $1 order by id",
                    &[approval_id.into()],
                )
                .await?;
            let decided: Vec<(&str, Decision)> = rows
                .iter()
                .map(|(key, d, _)| Ok((key.as_str(), d.parse::<Decision>()?)))
                .collect::<Result<_, String>>()
                .map_err(decode)?;
            let tally = approvals::tally(decided.iter().copied(), quorum);
            if inserted {
                if tally.state != ApprovalState::Pending {
                    conn.execute(
                        "update approvals set state = $2, decided_at = $3
                          where id = $1 and state = 'pending'",
                        &[approval_id.into(), tally.state.as_str().into(), now.into()],
                    )
                    .await?;
                    // Who decided, and through which channel (slack,
                    // discord, console, api).
                    let approvers: Vec<&str> = rows.iter().map(|(key, ..)| key.as_str()).collect();
                    let channels: Vec<Value> = rows
                        .iter()
                        .map(|(key, decision, channel)| {
                            json!({ "approver": key, "decision": decision, "channel": channel })
                        })
                        .collect();
                    conn.audit(
                        incident,
                        Some(approval_id),
                        now,
                        tally.state.as_str(),
                        json!({ "approvers": approvers, "decisions": channels, "digest": stored }),
                    )
                    .await?;
                    if tally.state == ApprovalState::Approved {
                        conn.execute(
                            "insert into work (kind, incident_id, due_at, created_at, updated_at)
                             values ($1, $2, $3, $3, $3)",
                            &[
                                WorkKind::Execute.as_str().into(),
                                incident.into(),
                                now.into(),
                            ],
                        )
                        .await?;
                    }
                }
                let kind = match tally.state {
                    ApprovalState::Approved => "approved",
                    ApprovalState::Rejected => "rejected",
                    ApprovalState::Pending
                    | ApprovalState::Expired
                    | ApprovalState::Superseded
                    | ApprovalState::Executed => "approval_recorded",
                };
                conn.record_event(
                    incident,
                    now,
                    kind,
                    json!({
                        "approval_id": approval_id,
                        "approver": approver.key,
                        "person": approver.person,
                        "channel": approver.channel.as_str(),
                        "display": approver.display,
                        "decision": decision.as_str(),
                        "approvals": tally.approvals,
                        "quorum": quorum,
                    }),
                )
                .await?;
                conn.enqueue_notify(incident, now, now).await?;
            }
            Ok(DecisionOutcome::Recorded {
                state: tally.state.as_str().to_owned(),
                approvals: tally.approvals,
                quorum,
                repeat: !inserted,
            })
        })
        .await
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

    /// Offers one more approval request on an incident (an undo, once its
    /// change has run), with a timeline event; false when the incident
    /// already has a request of that key (offered before: nothing changes).
    pub async fn offer_approval(
        &self,
        incident: IncidentId,
        approval: &NewApproval,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let offered = insert_approval!(conn, incident.0, approval, now) == 1;
            if offered {
                // The message shows the request expired when it does.
                enqueue_notify!(conn, incident.0, approval.expires_at, now);
                record_event!(
                    conn,
                    incident.0,
                    now,
                    "undo_offered",
                    serde_json::json!({ "key": approval.key, "title": approval.title,
                                         "expires_at": approval.expires_at })
                );
            }
            offered
        }))
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

type LoadedApproval = (
    i64,
    String,
    String,
    i64,
    Millis,
    String,
    Option<String>,
    i64,
);

const LOAD_APPROVAL: &str = "select a.incident_id, a.digest, a.state, a.quorum, a.expires_at,
        i.status, a.requested_by, a.forbid_self
   from approvals a join incidents i on i.id = a.incident_id where a.id = $1";

const LOAD_APPROVAL_FOR_UPDATE: &str = "select a.incident_id, a.digest, a.state, a.quorum,
        a.expires_at, i.status, a.requested_by, a.forbid_self
   from approvals a join incidents i on i.id = a.incident_id where a.id = $1
    for update of a";

/// A state the schema's CHECK constraint allows but Rust does not know.
fn decode(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

/// Records a refusal on the incident's timeline, once per subject (an
/// approval request, an incident's control), clicker and reason: a
/// non-approver clicking twenty times leaves one record.
#[allow(clippy::too_many_arguments, reason = "one event's fields")]
pub(super) async fn refuse_once(
    conn: &mut Conn<'_>,
    incident: i64,
    subject: &str,
    now: Millis,
    kind: &str,
    who: &Approver,
    refusal: &Refusal,
    mut detail: Value,
) -> Result<(), sqlx::Error> {
    let first = conn
        .execute(
            "insert into refusals (subject, approver, reason, at) values ($1, $2, $3, $4)
             on conflict (subject, approver, reason) do nothing",
            &[
                subject.into(),
                who.key.as_str().into(),
                refusal.code().into(),
                now.into(),
            ],
        )
        .await?
        == 1;
    if first {
        detail["approver"] = who.key.clone().into();
        detail["by"] = who.key.clone().into();
        detail["person"] = who.person.clone().into();
        detail["channel"] = who.channel.as_str().into();
        detail["display"] = who.display.clone().into();
        detail["reason"] = refusal.message().into();
        conn.record_event(incident, now, kind, detail).await?;
    }
    Ok(())
}

/// A button carries a prefix of the digest (platform length limits); the
/// API may send the whole digest.
fn digest_matches(stored: &str, shown: &str) -> bool {
    shown.len() >= 16
        && stored.len() >= shown.len()
        && subtle::ConstantTimeEq::ct_eq(&stored.as_bytes()[..shown.len()], shown.as_bytes()).into()
}
