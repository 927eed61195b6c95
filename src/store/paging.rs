//! Pages: one row per delivery to a pager — a trigger per escalation level
//! that names the pager, created in the transaction that fires the level's
//! timer (so once across replicas); an acknowledge and a resolve per pager
//! that was triggered, created in the transactions that acknowledge and
//! close the incident. `page` work sends them in order; a claim on the row
//! keeps two workers from sending one delivery at once.

use serde::Serialize;
use serde_json::json;

use super::conn::Conn;
use super::{Store, StoreError, WorkKind, on_pool};
use crate::domain::{IncidentId, Millis};
use crate::paging::PageAction;

/// A delivery waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingPage {
    pub id: i64,
    pub incident_id: i64,
    pub pager: String,
    #[sqlx(try_from = "String")]
    pub action: PageAction,
    pub level: i64,
    pub role: Option<String>,
    pub reason: String,
    pub attempts: i64,
}

/// How a claimed delivery ended (the `pages.state` it leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOutcome<'a> {
    /// Accepted, with the answer's HTTP status.
    Sent(u16),
    /// Refused for good (bad key, invalid event), with why.
    Failed(&'a str),
    /// Not sent (the incident resolved first, nothing was paged there).
    Skipped(&'a str),
}

/// A delivery as the API and the export show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PageView {
    pub id: i64,
    pub pager: String,
    pub action: String,
    pub level: i64,
    pub role: Option<String>,
    pub reason: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub status_code: Option<i64>,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
}

/// Queues `page` work for an incident unless some is already queued and
/// not taken: `$1` incident, `$2` due, `$3` now, `$4` the kind.
const ENQUEUE_PAGE: &str = super::chat::ENQUEUE_NOTIFY;

/// Queues the acknowledge or resolve of every pager this incident's
/// triggers went (or are going) to, except `except` (the pager that told
/// remedy), and the `page` work that sends them; in the caller's
/// transaction. Returns how many were queued.
pub(super) async fn queue_followups(
    conn: &mut Conn<'_>,
    incident: i64,
    action: PageAction,
    except: Option<&str>,
    reason: &str,
    now: Millis,
) -> Result<u64, sqlx::Error> {
    let queued = conn
        .execute(
            "insert into pages (incident_id, pager, action, level, reason, created_at)
             select distinct incident_id, pager, $2, 0, $4, $5 from pages
              where incident_id = $1 and action = 'trigger' and state in ('pending', 'sent')
                and pager <> $3
             on conflict (incident_id, pager, action, level) do nothing",
            &[
                incident.into(),
                action.as_str().into(),
                except.unwrap_or_default().into(),
                reason.into(),
                now.into(),
            ],
        )
        .await?;
    if queued > 0 {
        conn.record_event(
            incident,
            now,
            "page_queued",
            json!({ "action": action.as_str(), "pagers": queued, "reason": reason }),
        )
        .await?;
        conn.execute(
            ENQUEUE_PAGE,
            &[
                incident.into(),
                now.into(),
                now.into(),
                WorkKind::Page.as_str().into(),
            ],
        )
        .await?;
    }
    Ok(queued)
}

impl Store {
    /// The deliveries of an incident still to send, in the order they were
    /// queued (a trigger before its acknowledge and resolve).
    pub async fn pending_pages(
        &self,
        incident: IncidentId,
    ) -> Result<Vec<PendingPage>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, incident_id, pager, action, level, role, reason, attempts
                   from pages where incident_id = $1 and state = 'pending' order by id",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Every delivery of an incident, for the API and the export.
    pub async fn pages(&self, incident: IncidentId) -> Result<Vec<PageView>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, pager, action, level, role, reason, state, attempts, last_error,
                        status_code, created_at, sent_at
                   from pages where incident_id = $1 order by id",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims a pending delivery for `owner` until `until`, unless another
    /// worker holds an unexpired claim on it. True when this call claimed.
    pub async fn claim_page(
        &self,
        page: i64,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.in_transaction(async |conn| {
            let claimed = conn
                .execute(
                    "update pages set claimed_by = $2, claimed_until = $4,
                            attempts = attempts + 1
                      where id = $1 and state = 'pending'
                        and (claimed_until is null or claimed_until < $3 or claimed_by = $2)",
                    &[page.into(), owner.into(), now.into(), until.into()],
                )
                .await?;
            Ok(claimed == 1)
        })
        .await
    }

    /// Whether a trigger to `pager` was accepted for this incident.
    pub async fn page_triggered(
        &self,
        incident: IncidentId,
        pager: &str,
    ) -> Result<bool, StoreError> {
        let n: i64 = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "select count(*) from pages
                  where incident_id = $1 and pager = $2 and action = 'trigger' and state = 'sent'",
            )
            .bind(incident.0)
            .bind(pager)
            .fetch_one(pool)
            .await?
        });
        Ok(n > 0)
    }

    /// Ends a claimed delivery (see [`PageOutcome`]) and records it on the
    /// timeline. Fenced by the claim: false when another worker took the
    /// row over.
    pub async fn page_done(
        &self,
        page: &PendingPage,
        owner: &str,
        outcome: PageOutcome<'_>,
        dedup_key: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (state, event, status, detail) = match outcome {
            PageOutcome::Sent(status) => ("sent", "paged", Some(status), None),
            PageOutcome::Failed(why) => ("failed", "page_failed", None, Some(why)),
            PageOutcome::Skipped(why) => ("skipped", "page_skipped", None, Some(why)),
        };
        self.in_transaction(async |conn| {
            let done = conn
                .execute(
                    "update pages set state = $3, status_code = $4, last_error = $5,
                            sent_at = case when $3 = 'sent' then $6 else sent_at end,
                            claimed_by = null, claimed_until = null
                      where id = $1 and claimed_by = $2 and state = 'pending'",
                    &[
                        page.id.into(),
                        owner.into(),
                        state.into(),
                        status.map(i64::from).into(),
                        detail.into(),
                        now.into(),
                    ],
                )
                .await?
                == 1;
            if done {
                conn.record_event(
                    page.incident_id,
                    now,
                    event,
                    json!({ "pager": page.pager, "action": page.action.as_str(),
                            "level": page.level, "role": page.role, "status": status,
                            "detail": detail, "dedup_key": dedup_key,
                            "attempts": page.attempts + 1 }),
                )
                .await?;
            }
            Ok(done)
        })
        .await
    }

    /// Gives a claimed delivery back after a failed attempt (it stays
    /// pending; the `page` work is retried), with why.
    pub async fn page_released(
        &self,
        page: &PendingPage,
        owner: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.in_transaction(async |conn| {
            conn.execute(
                "update pages set claimed_by = null, claimed_until = null, last_error = $3
                  where id = $1 and claimed_by = $2 and state = 'pending'",
                &[page.id.into(), owner.into(), error.into()],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
