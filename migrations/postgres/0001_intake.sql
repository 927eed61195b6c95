-- Intake, incidents, their timeline and the work queue.
-- Times are bigint milliseconds since the Unix epoch, except an alert's own
-- starts_at / ends_at, kept as Alertmanager's RFC 3339 text (full precision),
-- so that the SQL shared with the SQLite store binds the same types.

create table notifications (
    key              text primary key,
    receiver         text not null,
    group_key        text not null,
    status           text not null,
    alert_count      bigint not null,
    truncated_alerts bigint not null,
    first_seen_at    bigint not null,
    last_seen_at     bigint not null,
    seen_count       bigint not null
);

create table incidents (
    id            bigint generated always as identity primary key,
    fingerprint   text not null,
    starts_at     text not null,
    ends_at       text,
    alertname     text not null,
    severity      text not null,
    status        text not null,
    labels        jsonb not null,
    annotations   jsonb not null,
    generator_url text not null,
    receiver      text not null,
    group_key     text not null,
    opened_at     bigint not null,
    last_seen_at  bigint not null,
    seen_count    bigint not null,
    resolved_at   bigint,
    report        jsonb,
    constraint incidents_episode_key unique (fingerprint, starts_at),
    constraint incidents_status_check check (status in ('firing', 'resolved'))
);

create index incidents_status_idx on incidents (status, id);
create index incidents_alertname_idx on incidents (alertname, id);

create table incident_events (
    id          bigint generated always as identity primary key,
    incident_id bigint not null references incidents (id),
    at          bigint not null,
    kind        text not null,
    detail      jsonb not null
);

create index incident_events_incident_idx on incident_events (incident_id, id);

create table work (
    id          bigint generated always as identity primary key,
    kind        text not null,
    incident_id bigint references incidents (id),
    state       text not null default 'pending',
    due_at      bigint not null,
    lease_owner text,
    lease_until bigint,
    attempts    bigint not null default 0,
    last_error  text,
    created_at  bigint not null,
    updated_at  bigint not null,
    constraint work_state_check check (state in ('pending', 'done', 'failed', 'cancelled'))
);

create index work_due_idx on work (state, due_at) where state = 'pending';
create index work_incident_idx on work (incident_id);
