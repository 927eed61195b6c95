-- Intake, incidents, their timeline and the work queue.
-- Times are integer milliseconds since the Unix epoch, except an alert's own
-- starts_at / ends_at, kept as Alertmanager's RFC 3339 text (full precision).

create table notifications (
    key              text primary key,
    receiver         text not null,
    group_key        text not null,
    status           text not null,
    alert_count      integer not null,
    truncated_alerts integer not null,
    first_seen_at    integer not null,
    last_seen_at     integer not null,
    seen_count       integer not null
) without rowid;

create table incidents (
    id            integer primary key,
    fingerprint   text not null,
    starts_at     text not null,
    ends_at       text,
    alertname     text not null,
    severity      text not null,
    status        text not null,
    labels        text not null,
    annotations   text not null,
    generator_url text not null,
    receiver      text not null,
    group_key     text not null,
    opened_at     integer not null,
    last_seen_at  integer not null,
    seen_count    integer not null,
    resolved_at   integer,
    report        text,
    constraint incidents_episode_key unique (fingerprint, starts_at),
    constraint incidents_status_check check (status in ('firing', 'resolved'))
);

create index incidents_status_idx on incidents (status, id);
create index incidents_alertname_idx on incidents (alertname, id);

create table incident_events (
    id          integer primary key,
    incident_id integer not null references incidents (id),
    at          integer not null,
    kind        text not null,
    detail      text not null
);

create index incident_events_incident_idx on incident_events (incident_id, id);

create table work (
    id          integer primary key,
    kind        text not null,
    incident_id integer references incidents (id),
    state       text not null default 'pending',
    due_at      integer not null,
    lease_owner text,
    lease_until integer,
    attempts    integer not null default 0,
    last_error  text,
    created_at  integer not null,
    updated_at  integer not null,
    constraint work_state_check check (state in ('pending', 'done', 'failed', 'cancelled'))
);

create index work_due_idx on work (state, due_at);
create index work_incident_idx on work (incident_id);
