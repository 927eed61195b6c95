-- Reconciliation with Alertmanager's API (GET /api/v2/alerts).
--
-- When a firing incident's alert was first found missing from every peer, in
-- a run that reached all of them; deleted when the alert is seen again. The
-- incident closes once it has been missing for `reconcile.grace`.
create table incident_absences (
    incident_id bigint primary key references incidents (id),
    since       bigint not null
);

-- An incident whose alert Alertmanager reports silenced: since when, the
-- silences (JSON list of ids) and when the last of them ends (null:
-- unknown). Its pending escalation timers are held back while it lasts:
-- `held_from` keeps a held timer's own due time, to restore it when the
-- silence ends early. Separate from Ack (timer state `paused`) and Snooze
-- (`snoozed_until`), so none of them undoes another.
alter table escalations add column silenced_at bigint;
alter table escalations add column silenced_by text;
alter table escalations add column silenced_until bigint;
alter table escalation_timers add column held_from bigint;
