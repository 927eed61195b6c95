-- Retention: incidents kept past `retention.incidents` (postmortems in
-- progress), and the indexes the retention job's batched deletes walk
-- (foreign keys from child tables are indexed so deleting an incident
-- does not scan them).

alter table incidents add column keep boolean not null default false;

create index incidents_resolved_idx on incidents (resolved_at) where status = 'resolved';
create index work_finished_idx on work (updated_at) where state <> 'pending';
create index notifications_last_seen_idx on notifications (last_seen_at);
create index audit_log_at_idx on audit_log (at);
create index executions_incident_idx on executions (incident_id);
