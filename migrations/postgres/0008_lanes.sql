-- Work lanes and target protection (issue 12, "Storms").
--
-- `target`: the database a `diagnose` / `verify` row runs its diagnosis
-- against, recorded by the worker when it takes one of the target's
-- diagnosis slots; a row counts against the target's
-- `max_concurrent_diagnoses` while it holds a lease.
alter table work add column target text;

create index work_target_leased_idx on work (target) where lease_owner is not null;

-- Claims take urgent kinds (execute, escalate, notify: lane 0) before
-- diagnose and verify (lane 1), then the oldest due. The expression must
-- stay identical to the claim's (src/store/work.rs, `LANE`).
create index work_lane_due_idx on work (
    (case when kind in ('execute', 'escalate', 'notify') then 0 else 1 end), due_at, id
) where state = 'pending';
