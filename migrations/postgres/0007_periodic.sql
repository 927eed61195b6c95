-- Periodic jobs (reconciliation with Alertmanager, retention) are work rows
-- without an incident. At most one of each kind is pending at a time, so
-- however many replicas schedule the next run, it runs once, on whichever
-- replica claims it.
create unique index work_periodic_key on work (kind) where incident_id is null and state = 'pending';
