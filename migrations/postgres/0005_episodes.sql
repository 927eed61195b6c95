-- Episode identity: an episode is a fingerprint's open interval, not
-- (fingerprint, startsAt). Alertmanager merges copies of an alert and keeps
-- the earliest startsAt, so a later notification of the same episode can
-- carry an earlier startsAt (Prometheus HA pairs, `amtool alert add --end`).
-- At most one firing incident per fingerprint, enforced by a partial unique
-- index (race-free across replicas); the alert's times also as
-- milliseconds, so that intervals compare as numbers.

alter table incidents add column starts_ms bigint;
alter table incidents add column ends_ms bigint;

update incidents
   set starts_ms = (extract(epoch from starts_at::timestamptz) * 1000)::bigint,
       ends_ms = (extract(epoch from ends_at::timestamptz) * 1000)::bigint;

-- Stores written before this migration may hold several firing incidents of
-- one fingerprint (the first copy's and the merged copy's). The oldest one
-- holds the chat message and the timers people saw: keep it, close the rest.
create temporary table superseded on commit drop as
select i.id, (select min(o.id) from incidents o
               where o.fingerprint = i.fingerprint and o.status = 'firing') as kept
  from incidents i
 where i.status = 'firing'
   and exists (select 1 from incidents o
                where o.fingerprint = i.fingerprint and o.status = 'firing' and o.id < i.id);

insert into incident_events (incident_id, at, kind, detail)
select id, (extract(epoch from now()) * 1000)::bigint, 'superseded',
       jsonb_build_object('by', kept, 'reason', 'a second firing incident of one fingerprint (migration 0005)')
  from superseded;

update work set state = 'cancelled', lease_owner = null, lease_until = null,
       updated_at = (extract(epoch from now()) * 1000)::bigint
 where state = 'pending' and incident_id in (select id from superseded);

update escalation_timers set state = 'cancelled'
 where state in ('pending', 'paused') and incident_id in (select id from superseded);

update approvals set state = 'expired', decided_at = (extract(epoch from now()) * 1000)::bigint
 where state = 'pending' and incident_id in (select id from superseded);

update incidents set status = 'resolved', resolved_at = (extract(epoch from now()) * 1000)::bigint
 where id in (select id from superseded);

create unique index incidents_open_episode on incidents (fingerprint) where status = 'firing';
create index incidents_fingerprint_idx on incidents (fingerprint, ends_ms);
