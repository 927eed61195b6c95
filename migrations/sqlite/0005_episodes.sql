-- Episode identity: an episode is a fingerprint's open interval, not
-- (fingerprint, startsAt). Alertmanager merges copies of an alert and keeps
-- the earliest startsAt, so a later notification of the same episode can
-- carry an earlier startsAt (Prometheus HA pairs, `amtool alert add --end`).
-- At most one firing incident per fingerprint; the alert's times also as
-- milliseconds, so that intervals compare as numbers (the RFC 3339 text has
-- a variable number of fractional digits and does not sort).

alter table incidents add column starts_ms integer;
alter table incidents add column ends_ms integer;

update incidents
   set starts_ms = cast(round((julianday(starts_at) - 2440587.5) * 86400000) as integer),
       ends_ms = case when ends_at is null then null
                      else cast(round((julianday(ends_at) - 2440587.5) * 86400000) as integer) end;

-- Stores written before this migration may hold several firing incidents of
-- one fingerprint (the first copy's and the merged copy's). The oldest one
-- holds the chat message and the timers people saw: keep it, close the rest.
create temporary table superseded as
select i.id, (select min(o.id) from incidents o
               where o.fingerprint = i.fingerprint and o.status = 'firing') as kept
  from incidents i
 where i.status = 'firing'
   and exists (select 1 from incidents o
                where o.fingerprint = i.fingerprint and o.status = 'firing' and o.id < i.id);

insert into incident_events (incident_id, at, kind, detail)
select id, cast(round((julianday('now') - 2440587.5) * 86400000) as integer), 'superseded',
       json_object('by', kept, 'reason', 'a second firing incident of one fingerprint (migration 0005)')
  from superseded;

update work set state = 'cancelled', lease_owner = null, lease_until = null,
       updated_at = cast(round((julianday('now') - 2440587.5) * 86400000) as integer)
 where state = 'pending' and incident_id in (select id from superseded);

update escalation_timers set state = 'cancelled'
 where state in ('pending', 'paused') and incident_id in (select id from superseded);

update approvals set state = 'expired', decided_at = cast(round((julianday('now') - 2440587.5) * 86400000) as integer)
 where state = 'pending' and incident_id in (select id from superseded);

update incidents set status = 'resolved', resolved_at = cast(round((julianday('now') - 2440587.5) * 86400000) as integer)
 where id in (select id from superseded);

drop table superseded;

create unique index incidents_open_episode on incidents (fingerprint) where status = 'firing';
create index incidents_fingerprint_idx on incidents (fingerprint, ends_ms);
