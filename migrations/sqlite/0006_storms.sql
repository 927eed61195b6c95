-- Storms: when more than `storm.threshold` incidents of one Alertmanager
-- group (or of one alertname) open within `storm.window`, the next ones
-- join one storm incident instead of being diagnosed, posted and escalated
-- one by one. The storm incident is an ordinary row in `incidents` (copied
-- from its representative, the member that opened it) so the diagnosis,
-- chat, approval, execution and escalation machinery serves it unchanged;
-- this table says what it stands for.

create table storms (
    -- The storm incident.
    incident_id       integer primary key references incidents (id),
    -- `group` (Alertmanager groupKey) or `alertname`.
    scope             text not null,
    key               text not null,
    -- The member whose labels the storm's diagnosis uses.
    representative_id integer not null references incidents (id),
    opened_at         integer not null,
    -- When its last member resolved.
    resolved_at       integer,
    -- When its representative diagnosis was last re-run (null: only the
    -- first diagnosis, right after `opened_at`).
    rediagnosed_at    integer,
    -- Members and firing members as of the last check (the report shows
    -- live counts; these only tell the check whether anything changed).
    members           integer not null default 0,
    firing            integer not null default 0,
    constraint storms_scope_check check (scope in ('group', 'alertname'))
);

-- One open storm per group or alertname: two workers (replicas) opening the
-- same storm at once meet here, and the loser joins the winner's.
create unique index storms_open_key on storms (scope, key) where resolved_at is null;

alter table incidents add column storm_id integer references storms (incident_id);

create index incidents_storm_idx on incidents (storm_id, status) where storm_id is not null;
create index incidents_group_key_idx on incidents (group_key, id);
