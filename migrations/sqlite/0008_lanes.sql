-- Work lanes and target protection (issue 12, "Storms").
--
-- `target`: the database whose diagnosis slot a `diagnose` / `verify` row
-- took in its current claim (each claim clears it); it counts against the
-- target's `max_concurrent_diagnoses` while it holds its lease.
-- `waits_for`, `target_limit`: a row given back because its target was at
-- its limit; claims pass it over while the target still is.
alter table work add column target text;
alter table work add column waits_for text;
alter table work add column target_limit bigint;

create index work_target_leased_idx on work (target) where lease_owner is not null;

-- Claims take urgent kinds (execute, escalate, notify: lane 0) before
-- diagnose and verify (lane 1), then the oldest due. The expression must
-- stay identical to the claim's (src/store/work.rs, `LANE`).
create index work_lane_due_idx on work (
    (case when kind in ('execute', 'escalate', 'notify') then 0 else 1 end), due_at, id
) where state = 'pending';
