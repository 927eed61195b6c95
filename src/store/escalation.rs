//! Escalation state: per incident its policy and acknowledgement, and its
//! timers as durable rows. A timer fires once: the scheduler claims due
//! rows (`for update skip locked` on PostgreSQL, the single writer on
//! SQLite), flips them to `fired` and queues the ping in the same
//! transaction; a timer due while remedy was down fires at the next start,
//! with its lag recorded. Resolve cancels, Ack pauses, Snooze moves.

use serde::Serialize;
use serde_json::json;

use super::conn::Conn;
use sqlx::types::Json;

use super::chat::{Approver, DecisionOutcome, ENQUEUE_NOTIFY, refuse_once};
use super::{Store, StoreError, WorkKind, enqueue_notify, on_pool, record_event, transaction};
use crate::approvals::{self, Refusal};
use crate::domain::{IncidentId, IncidentStatus, Millis, TimerKind, TimerState};
use crate::escalation::PlannedTimer;
use crate::paging::PageAction;

/// An incident's escalation as the report, the API and the export show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscalationView {
    pub policy: String,
    pub initial_role: String,
    /// Who may acknowledge, snooze and silence.
    pub roles: Vec<String>,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
    pub snoozed_until: Option<Millis>,
    /// Alertmanager reports the alert silenced (reconciliation): pending
    /// timers are held back until the silence ends.
    pub silenced: bool,
    /// When the silence ends, when known.
    pub silenced_until: Option<Millis>,
    pub timers: Vec<TimerView>,
}

impl EscalationView {
    /// The next timer that will fire on its own, if any.
    #[must_use]
    pub fn next_due(&self) -> Option<&TimerView> {
        self.timers
            .iter()
            .filter(|t| t.state == TimerState::Pending && t.due_at.is_some())
            .min_by_key(|t| t.due_at)
    }

    /// The highest level pinged so far.
    #[must_use]
    pub fn reached(&self) -> Option<&TimerView> {
        self.timers
            .iter()
            .filter(|t| t.state == TimerState::Fired && t.kind == TimerKind::Escalate)
            .max_by_key(|t| (t.level, t.nth))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TimerView {
    pub id: i64,
    pub incident_id: i64,
    pub level: i64,
    pub nth: i64,
    #[sqlx(try_from = "String")]
    pub kind: TimerKind,
    pub role: Option<String>,
    pub reason: String,
    pub due_at: Option<Millis>,
    #[sqlx(try_from = "String")]
    pub state: TimerState,
    pub fired_at: Option<Millis>,
    pub lag_ms: Option<i64>,
    pub pinged_at: Option<Millis>,
    /// Pagers its first ping triggers (`page:` on the level).
    pub pagers: Json<Vec<String>>,
}

/// A timer this scheduler just fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FiredTimer {
    pub id: i64,
    pub incident_id: i64,
    pub level: i64,
    pub nth: i64,
    #[sqlx(try_from = "String")]
    pub kind: TimerKind,
    pub role: Option<String>,
    pub reason: String,
    pub due_at: Millis,
    pub repeat_every: Option<i64>,
    pub repeats_left: i64,
    /// Pagers to trigger (the first ping of a level that names them).
    pub pagers: Json<Vec<String>>,
}

/// Claims due timers and marks them fired: `$1` now, `$2` how many.
const FIRE_SQLITE: &str = "update escalation_timers
    set state = 'fired', fired_at = $1, lag_ms = $1 - due_at
  where id in (select id from escalation_timers
                where state = 'pending' and due_at is not null and due_at <= $1
                order by due_at, id limit $2)
  returning id, incident_id, level, nth, kind, role, reason, due_at, repeat_every, repeats_left,
            pagers";

const FIRE_POSTGRES: &str = "update escalation_timers t
    set state = 'fired', fired_at = $1, lag_ms = $1 - t.due_at
   from (select id from escalation_timers
          where state = 'pending' and due_at is not null and due_at <= $1
          order by due_at, id limit $2
          for update skip locked) due
  where t.id = due.id
  returning t.id, t.incident_id, t.level, t.nth, t.kind, t.role, t.reason, t.due_at,
            t.repeat_every, t.repeats_left, t.pagers";

/// One timeline event per fired timer, from a JSON array: `$1` rows, `$2` now.
const EVENTS_SQLITE: &str = "insert into incident_events (incident_id, at, kind, detail)
  select value ->> 'incident_id', $2, value ->> 'event', value -> 'detail'
    from json_each($1) order by key";

const EVENTS_POSTGRES: &str = "insert into incident_events (incident_id, at, kind, detail)
  select (e ->> 'incident_id')::bigint, $2, e ->> 'event', e -> 'detail'
    from jsonb_array_elements($1::jsonb) with ordinality as r(e, n) order by n";

/// The next re-ping of each fired timer that repeats: `$1` rows, `$2` now.
const REPEATS_SQLITE: &str = "insert into escalation_timers (incident_id, level, nth, kind, role,
      reason, due_at, repeat_every, repeats_left, created_at)
  select value ->> 'incident_id', value ->> 'level', value ->> 'nth', value ->> 'kind',
         value ->> 'role', value ->> 'reason', value ->> 'due_at', value ->> 'repeat_every',
         value ->> 'repeats_left', $2
    from json_each($1) where true
  on conflict (incident_id, level, nth) do nothing";

const REPEATS_POSTGRES: &str = "insert into escalation_timers (incident_id, level, nth, kind, role,
      reason, due_at, repeat_every, repeats_left, created_at)
  select incident_id, level, nth, kind, role, reason, due_at, repeat_every, repeats_left, $2
    from jsonb_to_recordset($1::jsonb) as r(incident_id bigint, level bigint, nth bigint,
         kind text, role text, reason text, due_at bigint, repeat_every bigint,
         repeats_left bigint)
  on conflict (incident_id, level, nth) do nothing";

const TIMER_COLUMNS: &str = "id, incident_id, level, nth, kind, role, reason, due_at, state,
    fired_at, lag_ms, pinged_at, pagers";

impl Store {
    /// Records an incident's policy and creates its timers, once (a retried
    /// diagnosis finds them there). Nothing for an incident already
    /// resolved. True when this call created them.
    pub async fn schedule_escalation(
        &self,
        incident: IncidentId,
        policy: &str,
        initial_role: &str,
        roles: &[String],
        timers: &[PlannedTimer],
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let created = sqlx::query(
                "insert into escalations (incident_id, policy, initial_role, roles, created_at)
                 select id, $2, $3, $4, $5 from incidents where id = $1 and status = 'firing'
                 on conflict (incident_id) do nothing",
            )
            .bind(incident.0)
            .bind(policy)
            .bind(initial_role)
            .bind(Json(roles))
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if !created {
                return Ok(false);
            }
            for t in timers {
                sqlx::query(
                    "insert into escalation_timers (incident_id, level, nth, kind, role, reason,
                         due_at, repeat_every, repeats_left, created_at, pagers)
                     values ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(incident.0)
                .bind(t.level)
                .bind(t.kind)
                .bind(t.role.as_deref())
                .bind(&t.reason)
                .bind(t.due_at)
                .bind(t.repeat_every_ms)
                .bind(t.repeats)
                .bind(now)
                .bind(Json(&t.pagers))
                .execute(&mut *conn)
                .await?;
            }
            record_event!(
                conn,
                incident.0,
                now,
                "escalation_scheduled",
                json!({
                    "policy": policy,
                    "initial": initial_role,
                    "timers": timers.iter().map(|t| json!({
                        "level": t.level, "kind": t.kind, "role": t.role,
                        "due_at": t.due_at, "reason": t.reason, "pagers": t.pagers,
                    })).collect::<Vec<_>>(),
                })
            );
            true
        }))
    }

    /// How many incidents of the same alert (same fingerprint, or same
    /// alert name) opened within `within_ms` before this one, this one
    /// included.
    pub async fn recurrences(
        &self,
        incident: IncidentId,
        by_alertname: bool,
        within_ms: i64,
    ) -> Result<i64, StoreError> {
        let sql = if by_alertname {
            "select count(*) from incidents o join incidents i on i.id = $1
              where o.alertname = i.alertname and o.opened_at >= i.opened_at - $2
                and o.opened_at <= i.opened_at and o.id <= i.id"
        } else {
            "select count(*) from incidents o join incidents i on i.id = $1
              where o.fingerprint = i.fingerprint and o.opened_at >= i.opened_at - $2
                and o.opened_at <= i.opened_at and o.id <= i.id"
        };
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar(sql)
                .bind(incident.0)
                .bind(within_ms)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Moves escalation to the next level at once (a threshold, a
    /// recurrence, an ineffective remediation): the lowest level not yet
    /// fired becomes due now — even when acknowledged, since what was
    /// measured is worse than what was acknowledged. With `once`, nothing
    /// moves when a trigger whose reason starts with it already did (a
    /// threshold escalates once, whether the diagnosis, a verification or
    /// a re-check measured it; the escalation row is locked on PostgreSQL so
    /// two of them cannot both move). Returns the level and role, or None
    /// when every level has fired, the incident is closed, or `once` held.
    pub async fn advance_escalation(
        &self,
        incident: IncidentId,
        reason: &str,
        once: Option<&str>,
        now: Millis,
    ) -> Result<Option<(i64, Option<String>)>, StoreError> {
        let lock = matches!(self, Self::Postgres(_));
        Ok(transaction!(self, |conn| {
            if lock {
                sqlx::query(
                    "select incident_id from escalations where incident_id = $1 for update",
                )
                .bind(incident.0)
                .fetch_optional(&mut *conn)
                .await?;
            }
            if let Some(prefix) = once {
                let before: i64 = sqlx::query_scalar(
                    "select count(*) from incident_events
                      where incident_id = $1 and kind = 'escalation_triggered'
                        and substr(detail ->> 'reason', 1, length($2)) = $2",
                )
                .bind(incident.0)
                .bind(prefix)
                .fetch_one(&mut *conn)
                .await?;
                if before > 0 {
                    return Ok(None);
                }
            }
            let next: Option<(i64, i64, Option<String>)> = sqlx::query_as(
                "select t.id, t.level, t.role from escalation_timers t
                   join incidents i on i.id = t.incident_id and i.status = 'firing'
                  where t.incident_id = $1 and t.kind = 'escalate' and t.nth = 0
                    and t.state in ('pending', 'paused')
                  order by t.level limit 1",
            )
            .bind(incident.0)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((timer, level, role)) = next else {
                return Ok(None);
            };
            sqlx::query(
                "update escalation_timers set state = 'pending', due_at = $2, reason = $3
                  where id = $1 and state in ('pending', 'paused')",
            )
            .bind(timer)
            .bind(now)
            .bind(reason)
            .execute(&mut *conn)
            .await?;
            record_event!(
                conn,
                incident.0,
                now,
                "escalation_triggered",
                json!({ "level": level, "role": role, "reason": reason })
            );
            Some((level, role))
        }))
    }

    /// Fires up to `limit` due timers, once each across replicas: marks
    /// them fired, records `escalated` / `review_reminder` events, creates
    /// the next re-ping of repeating timers, and queues `escalate` work
    /// that posts the pings. Four statements per batch, whatever its size.
    pub async fn fire_due_timers(
        &self,
        now: Millis,
        limit: i64,
        late_after_ms: i64,
    ) -> Result<Vec<FiredTimer>, StoreError> {
        let (fire, events, repeats) = match self {
            Self::Sqlite(..) => (FIRE_SQLITE, EVENTS_SQLITE, REPEATS_SQLITE),
            Self::Postgres(_) => (FIRE_POSTGRES, EVENTS_POSTGRES, REPEATS_POSTGRES),
        };
        Ok(transaction!(self, |conn| {
            let mut fired: Vec<FiredTimer> = sqlx::query_as(fire)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            if fired.is_empty() {
                return Ok(fired);
            }
            fired.sort_by_key(|t| (t.due_at, t.id));
            let rows: Vec<serde_json::Value> = fired
                .iter()
                .map(|t| {
                    let lag = now - t.due_at;
                    json!({
                        "incident_id": t.incident_id,
                        "event": match t.kind {
                            TimerKind::Review => "review_reminder",
                            TimerKind::Escalate => "escalated",
                        },
                        "detail": {
                            "timer": t.id, "level": t.level, "nth": t.nth, "role": t.role,
                            "reason": t.reason, "due_at": t.due_at, "lag_ms": lag,
                            "late": lag > late_after_ms,
                        },
                    })
                })
                .collect();
            sqlx::query(events)
                .bind(Json(&rows))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            let next: Vec<serde_json::Value> = fired
                .iter()
                .filter(|t| t.repeats_left > 0)
                .filter_map(|t| {
                    let every = t.repeat_every.filter(|e| *e > 0)?;
                    let due = t.due_at.saturating_add(every);
                    Some(json!({
                        "incident_id": t.incident_id, "level": t.level, "nth": t.nth + 1,
                        "kind": t.kind, "role": t.role,
                        "reason": format!("still not acknowledged (re-ping {})", t.nth + 1),
                        "due_at": if due > now { due } else { now.saturating_add(every) },
                        "repeat_every": every, "repeats_left": t.repeats_left - 1,
                    }))
                })
                .collect();
            if !next.is_empty() {
                sqlx::query(repeats)
                    .bind(Json(&next))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            // A level's pagers are triggered once, with its first ping.
            let mut paged: Vec<i64> = Vec::new();
            for t in fired
                .iter()
                .filter(|t| t.nth == 0 && t.kind == TimerKind::Escalate)
            {
                for pager in t.pagers.iter() {
                    let queued = sqlx::query(
                        "insert into pages (incident_id, pager, action, level, role, reason,
                             created_at)
                         values ($1, $2, 'trigger', $3, $4, $5, $6)
                         on conflict (incident_id, pager, action, level) do nothing",
                    )
                    .bind(t.incident_id)
                    .bind(pager)
                    .bind(t.level)
                    .bind(t.role.as_deref())
                    .bind(&t.reason)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if queued == 1 {
                        record_event!(
                            conn,
                            t.incident_id,
                            now,
                            "page_queued",
                            json!({ "pager": pager, "action": "trigger", "level": t.level,
                                    "role": t.role, "timer": t.id })
                        );
                        paged.push(t.incident_id);
                    }
                }
            }
            paged.sort_unstable();
            paged.dedup();
            for incident in paged {
                sqlx::query(ENQUEUE_NOTIFY)
                    .bind(incident)
                    .bind(now)
                    .bind(now)
                    .bind(WorkKind::Page.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            let mut incidents: Vec<i64> = fired.iter().map(|t| t.incident_id).collect();
            incidents.sort_unstable();
            incidents.dedup();
            for incident in incidents {
                sqlx::query(ENQUEUE_NOTIFY)
                    .bind(incident)
                    .bind(now)
                    .bind(now)
                    .bind(WorkKind::Escalate.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            fired
        }))
    }

    /// When the next pending timer is due (the scheduler sleeps until then).
    pub async fn next_timer_due(&self) -> Result<Option<Millis>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar(
                "select min(due_at) from escalation_timers
                  where state = 'pending' and due_at is not null",
            )
            .fetch_one(pool)
            .await?
        }))
    }

    /// Pending timers, for `/metrics`.
    pub async fn pending_timers(&self) -> Result<i64, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("select count(*) from escalation_timers where state = 'pending'")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Fired timers of an incident whose ping is not posted yet, in order.
    pub async fn unposted_pings(&self, incident: IncidentId) -> Result<Vec<TimerView>, StoreError> {
        let sql = format!(
            "select {TIMER_COLUMNS} from escalation_timers
              where incident_id = $1 and state = 'fired' and pinged_at is null
              order by fired_at, level, nth"
        );
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(incident.0)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Marks a ping posted (or skipped, with why, for a resolved incident).
    pub async fn ping_posted(
        &self,
        timer: &TimerView,
        skipped: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            let marked = sqlx::query(
                "update escalation_timers set pinged_at = $2 where id = $1 and pinged_at is null",
            )
            .bind(timer.id)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if marked == 1 {
                record_event!(
                    conn,
                    timer.incident_id,
                    now,
                    if skipped.is_some() {
                        "ping_skipped"
                    } else {
                        "pinged"
                    },
                    json!({ "timer": timer.id, "level": timer.level, "nth": timer.nth,
                            "role": timer.role, "skipped": skipped })
                );
                // The report shows how far escalation has gone.
                enqueue_notify!(conn, timer.incident_id, now, now);
            }
        });
        Ok(())
    }

    /// The incident's escalation and its timers.
    pub async fn escalation(
        &self,
        incident: IncidentId,
    ) -> Result<Option<EscalationView>, StoreError> {
        type Row = (
            String,
            String,
            Json<Vec<String>>,
            Option<String>,
            Option<Millis>,
            Option<Millis>,
            Option<Millis>,
            Option<Millis>,
        );
        let sql = format!(
            "select {TIMER_COLUMNS} from escalation_timers where incident_id = $1
              order by level, nth"
        );
        let (row, timers): (Option<Row>, Vec<TimerView>) = on_pool!(self, |pool| {
            let row = sqlx::query_as(
                "select policy, initial_role, roles, acked_display, acked_at, snoozed_until,
                        silenced_at, silenced_until
                   from escalations where incident_id = $1",
            )
            .bind(incident.0)
            .fetch_optional(pool)
            .await?;
            let timers = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(incident.0)
                .fetch_all(pool)
                .await?;
            (row, timers)
        });
        Ok(row.map(|r| EscalationView {
            policy: r.0,
            initial_role: r.1,
            roles: r.2.0,
            acked_by: r.3,
            acked_at: r.4,
            snoozed_until: r.5,
            silenced: r.6.is_some(),
            silenced_until: r.7,
            timers,
        }))
    }

    /// Acknowledges an incident: its pending timers pause (nothing more
    /// escalates on time; a measured trigger still does). Refused for the
    /// unauthorized and for a resolved incident; a second Ack is a repeat.
    pub async fn acknowledge(
        &self,
        incident: IncidentId,
        who: &Approver,
        authorized: bool,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        self.acknowledge_from(incident, who, authorized, None, now)
            .await
    }

    /// [`Store::acknowledge`], told by a pager (`from`: a PagerDuty
    /// webhook). Every pager the incident paged is told too, except the
    /// one the acknowledgement came from.
    pub async fn acknowledge_from(
        &self,
        incident: IncidentId,
        who: &Approver,
        authorized: bool,
        from: Option<&str>,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        self.in_transaction(async |conn| {
            let state = control_state(conn, incident).await?;
            if let Some(refusal) = approvals::control_refusal(authorized, status_of(&state)?) {
                return refuse(conn, incident, now, "ack", who, refusal).await;
            }
            if let Some((_, Some(_))) = state {
                return Ok(DecisionOutcome::Recorded {
                    state: "acknowledged".into(),
                    approvals: 1,
                    quorum: 1,
                    repeat: true,
                });
            }
            conn.execute(
                "update escalations set acked_by = $2, acked_display = $3, acked_at = $4
                  where incident_id = $1 and acked_at is null",
                &[
                    incident.0.into(),
                    who.key.as_str().into(),
                    who.display.as_str().into(),
                    now.into(),
                ],
            )
            .await?;
            let paused = conn
                .execute(
                    "update escalation_timers set state = 'paused'
                      where incident_id = $1 and state = 'pending'",
                    &[incident.0.into()],
                )
                .await?;
            conn.record_event(
                incident.0,
                now,
                "acknowledged",
                json!({ "by": who.key, "person": who.person, "channel": who.channel.as_str(),
                    "display": who.display, "paused_timers": paused, "pager": from }),
            )
            .await?;
            super::paging::queue_followups(
                conn,
                incident.0,
                PageAction::Acknowledge,
                from,
                &format!("acknowledged in remedy by {}", who.display),
                now,
            )
            .await?;
            conn.enqueue_notify(incident.0, now, now).await?;
            Ok(DecisionOutcome::Recorded {
                state: "acknowledged".into(),
                approvals: 1,
                quorum: 1,
                repeat: false,
            })
        })
        .await
    }

    /// Snoozes an incident's escalation: the pending timers move so that
    /// the next one is due `for_ms` from now (none fires earlier).
    pub async fn snooze(
        &self,
        incident: IncidentId,
        who: &Approver,
        for_ms: i64,
        authorized: bool,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        self.in_transaction(async |conn| {
            let state = control_state(conn, incident).await?;
            let (next,): (Option<Millis>,) = conn
                .fetch_one(
                    "select min(due_at) from escalation_timers
                      where incident_id = $1 and state = 'pending' and due_at is not null",
                    &[incident.0.into()],
                )
                .await?;
            let acked_by = state.as_ref().and_then(|(_, by)| by.as_deref());
            if let Some(refusal) =
                approvals::snooze_refusal(authorized, status_of(&state)?, acked_by, next)
            {
                return refuse(conn, incident, now, "snooze", who, refusal).await;
            }
            let until = now.saturating_add(for_ms);
            let shift = next.map_or(0, |due| (until - due).max(0));
            conn.execute(
                "update escalation_timers set due_at = due_at + $2
                  where incident_id = $1 and state = 'pending' and due_at is not null",
                &[incident.0.into(), shift.into()],
            )
            .await?;
            conn.execute(
                "update escalations set snoozed_until = $2 where incident_id = $1",
                &[incident.0.into(), until.into()],
            )
            .await?;
            conn.record_event(
                incident.0,
                now,
                "snoozed",
                json!({ "by": who.key, "person": who.person, "channel": who.channel.as_str(),
                    "display": who.display, "for_ms": for_ms,
                    "until": until, "shifted_ms": shift }),
            )
            .await?;
            conn.enqueue_notify(incident.0, now, now).await?;
            Ok(DecisionOutcome::Recorded {
                state: "snoozed".into(),
                approvals: 1,
                quorum: 1,
                repeat: false,
            })
        })
        .await
    }

    /// What a silence of `incident` would match and what it is checked
    /// against (see [`approvals::silence_refusal`]), read outside any
    /// transaction: for the confirmations shown before a silence is
    /// requested and for the executor's last check. `None`: no incident.
    pub async fn silence_scope(
        &self,
        incident: IncidentId,
    ) -> Result<Option<SilenceScope>, StoreError> {
        Ok(match self {
            Self::Sqlite(pool, _) => {
                let mut c = pool.acquire().await?;
                silence_scope(&mut Conn::Sqlite(&mut c), incident).await?
            }
            Self::Postgres(pool) => {
                let mut c = pool.acquire().await?;
                silence_scope(&mut Conn::Postgres(&mut c), incident).await?
            }
        })
    }

    /// A Silence click: an approval request already approved by the
    /// clicker, for the executor's built-in `silence` action (so it runs
    /// under the same budgets, single flight and audit log). `key` names
    /// the duration (`silence-1h`): the same length twice is one silence.
    /// Refused, and the refusal recorded once, by
    /// [`approvals::control_refusal`] and then
    /// [`approvals::silence_refusal`] over the firing incidents read here.
    #[allow(clippy::too_many_arguments, reason = "one row's columns")]
    pub async fn request_silence(
        &self,
        incident: IncidentId,
        who: &Approver,
        authorized: bool,
        rules: &SilenceRules<'_>,
        key: &str,
        title: &str,
        roles: &[String],
        digest: &str,
        now: Millis,
    ) -> Result<DecisionOutcome, StoreError> {
        self.in_transaction(async |conn| {
            let state = control_state(conn, incident).await?;
            if let Some(refusal) = approvals::control_refusal(authorized, status_of(&state)?) {
                return refuse(conn, incident, now, "silence", who, refusal).await;
            }
            let Some(scope) = silence_scope(conn, incident).await? else {
                return Err(sqlx::Error::RowNotFound);
            };
            if let Some(refusal) = scope.refusal(rules) {
                metrics::counter!("remedy_silences_refused_total", "reason" => refusal.code())
                    .increment(1);
                return refuse(conn, incident, now, "silence", who, refusal).await;
            }
            let approval: Option<(i64,)> = conn
                .fetch_optional(
                    "insert into approvals (incident_id, seq, key, action_id, title, risk, roles,
                         quorum, digest, created_at, expires_at, state, decided_at, requested_by)
                     values ($1, -1, $2, 'silence', $3, 'safe', $4, 1, $5, $6, $6, 'approved', $6,
                             $7)
                     on conflict (incident_id, key) do nothing
                     returning id",
                    &[
                        incident.0.into(),
                        key.into(),
                        title.into(),
                        json!(roles).into(),
                        digest.into(),
                        now.into(),
                        who.key.as_str().into(),
                    ],
                )
                .await?;
            let Some((approval,)) = approval else {
                return Ok(DecisionOutcome::Recorded {
                    state: "approved".into(),
                    approvals: 1,
                    quorum: 1,
                    repeat: true,
                });
            };
            conn.execute(
                "insert into decisions (approval_id, approver, display, decision, at,
                     channel, person)
                 values ($1, $2, $3, 'approve', $4, $5, $6)",
                &[
                    approval.into(),
                    who.key.as_str().into(),
                    who.display.as_str().into(),
                    now.into(),
                    who.channel.as_str().into(),
                    who.person.as_deref().into(),
                ],
            )
            .await?;
            conn.audit(
                incident.0,
                Some(approval),
                now,
                "approved",
                json!({ "approvers": [who.key],
                    "decisions": [{ "approver": who.key, "decision": "approve",
                                    "channel": who.channel.as_str() }],
                    "digest": digest, "control": "silence" }),
            )
            .await?;
            conn.record_event(
                incident.0,
                now,
                "silence_requested",
                json!({ "by": who.key, "person": who.person, "channel": who.channel.as_str(),
                    "display": who.display, "key": key,
                    "approval_id": approval }),
            )
            .await?;
            conn.execute(
                "insert into work (kind, incident_id, due_at, created_at, updated_at)
                 values ($1, $2, $3, $3, $3)",
                &[
                    WorkKind::Execute.as_str().into(),
                    incident.0.into(),
                    now.into(),
                ],
            )
            .await?;
            conn.enqueue_notify(incident.0, now, now).await?;
            Ok(DecisionOutcome::Recorded {
                state: "approved".into(),
                approvals: 1,
                quorum: 1,
                repeat: false,
            })
        })
        .await
    }
}

/// The lengths and labels a silence is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SilenceRules<'a> {
    pub seconds: u64,
    /// The lengths offered, in seconds.
    pub offered: &'a [u64],
    /// `silence.required_labels`.
    pub required: &'a [String],
}

/// An incident's silence as it would be posted, and the firing incidents
/// it is checked against.
#[derive(Debug, Clone)]
pub struct SilenceScope {
    pub incident: IncidentId,
    pub status: IncidentStatus,
    /// The storm it belongs to, or its own id when it is a storm incident.
    pub storm: Option<i64>,
    pub matchers: Vec<approvals::SilenceMatcher>,
    /// Every other firing incident the matchers could match (same
    /// alertname when the matchers name one).
    pub firing: Vec<approvals::FiringIncident>,
}

impl SilenceScope {
    /// [`approvals::silence_refusal`] over this scope.
    #[must_use]
    pub fn refusal(&self, rules: &SilenceRules<'_>) -> Option<Refusal> {
        approvals::silence_refusal(&approvals::SilenceCheck {
            incident: self.incident.0,
            storm: self.storm,
            matchers: &self.matchers,
            seconds: rules.seconds,
            offered: rules.offered,
            required: rules.required,
            firing: &self.firing,
        })
    }
}

type ScopeRow = (String, Json<crate::domain::Labels>, Option<i64>, i64);
type FiringRow = (i64, Option<i64>, i64, String, Json<crate::domain::Labels>);

/// Reads an incident's silence scope in the caller's connection. Only
/// firing incidents are read, and only those of the same alertname when
/// the matchers name it: an equality matcher cannot match another name.
async fn silence_scope(
    conn: &mut Conn<'_>,
    incident: IncidentId,
) -> Result<Option<SilenceScope>, sqlx::Error> {
    let row: Option<ScopeRow> = conn
        .fetch_optional(
            "select i.status, i.labels, i.storm_id,
                    (select count(*) from storms s where s.incident_id = i.id)
               from incidents i where i.id = $1",
            &[incident.0.into()],
        )
        .await?;
    let Some((status, labels, storm_id, is_storm)) = row else {
        return Ok(None);
    };
    let storm_of =
        |id: i64, storm_id: Option<i64>, is_storm: i64| storm_id.or((is_storm > 0).then_some(id));
    let matchers = approvals::silence_matchers(&labels.0);
    let rows: Vec<FiringRow> = match labels.0.get("alertname") {
        Some(name) => {
            conn.fetch_all(
                "select i.id, i.storm_id,
                        (select count(*) from storms s where s.incident_id = i.id),
                        i.alertname, i.labels
                   from incidents i
                  where i.status = 'firing' and i.id <> $1 and i.alertname = $2
                  order by i.id",
                &[incident.0.into(), name.as_str().into()],
            )
            .await?
        }
        None => {
            conn.fetch_all(
                "select i.id, i.storm_id,
                        (select count(*) from storms s where s.incident_id = i.id),
                        i.alertname, i.labels
                   from incidents i
                  where i.status = 'firing' and i.id <> $1
                  order by i.id",
                &[incident.0.into()],
            )
            .await?
        }
    };
    let firing = rows
        .into_iter()
        .map(
            |(id, storm_id, is_storm, alertname, labels)| approvals::FiringIncident {
                id,
                storm: storm_of(id, storm_id, is_storm),
                alertname,
                labels: labels.0,
            },
        )
        .collect();
    Ok(Some(SilenceScope {
        incident,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        storm: storm_of(incident.0, storm_id, is_storm),
        matchers,
        firing,
    }))
}

/// The incident's status and who acknowledged it, `None` without an
/// escalation; on PostgreSQL the escalation row is locked, so concurrent
/// clicks on one incident queue.
async fn control_state(
    conn: &mut Conn<'_>,
    incident: IncidentId,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    let sql = if conn.is_postgres() {
        "select i.status, e.acked_display from escalations e
           join incidents i on i.id = e.incident_id
          where e.incident_id = $1 for update of e"
    } else {
        "select i.status, e.acked_display from escalations e
           join incidents i on i.id = e.incident_id
          where e.incident_id = $1"
    };
    conn.fetch_optional(sql, &[incident.0.into()]).await
}

/// The incident's status when it has an escalation.
fn status_of(
    state: &Option<(String, Option<String>)>,
) -> Result<Option<IncidentStatus>, sqlx::Error> {
    state
        .as_ref()
        .map(|(status, _)| status.parse::<IncidentStatus>())
        .transpose()
        .map_err(|e| sqlx::Error::Decode(e.into()))
}

/// Records a refused control on the timeline (once per incident, control,
/// person and reason); the caller returns the refusal, which commits the
/// record.
async fn refuse(
    conn: &mut Conn<'_>,
    incident: IncidentId,
    now: Millis,
    control: &str,
    who: &Approver,
    refusal: Refusal,
) -> Result<DecisionOutcome, sqlx::Error> {
    let subject = format!("incident:{}:{control}", incident.0);
    let kind = format!("{control}_refused");
    refuse_once(
        conn,
        incident.0,
        &subject,
        now,
        &kind,
        who,
        &refusal,
        json!({}),
    )
    .await?;
    Ok(DecisionOutcome::Refused(refusal.message()))
}
