-- Executor: one execution per approved action (single flight by
-- constraint), and an append-only audit log of who did what.

create table executions (
    id            bigint generated always as identity primary key,
    approval_id   bigint not null references approvals (id),
    incident_id   bigint not null references incidents (id),
    -- For rate limits: the playbook action and what it acts on.
    action_id     text not null,
    target        text not null,
    -- running, done, failed, precondition_failed, refused, dry_run, unknown
    state         text not null,
    -- What exactly ran: kind, target, statement and parameters, or argv.
    detail        jsonb not null,
    output        text,
    running_until bigint,
    started_at    bigint not null,
    finished_at   bigint,
    -- effective / ineffective, from re-running the diagnosis after it.
    verification  text,
    -- When the outcome was posted in the incident's thread.
    reported_at   bigint,
    constraint executions_once unique (approval_id)
);

create table audit_log (
    id          bigint generated always as identity primary key,
    at          bigint not null,
    incident_id bigint not null,
    approval_id bigint,
    event       text not null,
    detail      jsonb not null
);

create index executions_started_idx on executions (started_at);
create index audit_log_incident_idx on audit_log (incident_id, id);

-- Actions suspended after too many failed runs, until re-enabled.
create table action_suspensions (
    action_id    text primary key,
    suspended_at bigint not null,
    reason       text not null
);
