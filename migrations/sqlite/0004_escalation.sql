-- Escalation: per incident, its policy and who acknowledged it; its timers
-- as durable rows, fired once (the scheduler claims due rows with
-- `for update skip locked` and flips them to `fired` in one transaction).

create table escalations (
    incident_id   integer primary key references incidents (id),
    policy        text not null,
    initial_role  text not null,
    -- Roles that may acknowledge, snooze and silence.
    roles         text not null,
    acked_by      text,
    acked_display text,
    acked_at      integer,
    snoozed_until integer,
    created_at    integer not null
);

create table escalation_timers (
    id            integer primary key,
    incident_id   integer not null references incidents (id),
    -- 1.. escalation levels; 0 the review reminder.
    level         integer not null,
    -- 0 the first ping of a level, 1.. its re-pings.
    nth           integer not null,
    kind          text not null,
    role          text,
    reason        text not null,
    -- null: reached only by a trigger (threshold, recurrence, ineffective run).
    due_at        integer,
    state         text not null default 'pending',
    repeat_every  integer,
    repeats_left  integer not null default 0,
    created_at    integer not null,
    fired_at      integer,
    lag_ms        integer,
    -- When the ping was posted in the incident's thread.
    pinged_at     integer,
    constraint escalation_timers_once unique (incident_id, level, nth),
    constraint escalation_timers_state_check
        check (state in ('pending', 'paused', 'fired', 'cancelled')),
    constraint escalation_timers_kind_check check (kind in ('escalate', 'review'))
);

create index escalation_timers_due_idx on escalation_timers (due_at)
    where state = 'pending' and due_at is not null;
