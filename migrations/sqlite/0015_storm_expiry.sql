-- A storm that never ends (a noisy group that always has more than
-- `storm.threshold` incidents open) would keep every member it ever had:
-- retention deletes a resolved member of an open storm once it is past
-- `retention.incidents`, like any other resolved incident, and counts it
-- here so the storm's member total stays true.
alter table storms add column expired_members integer not null default 0;
