-- Paging: the pagers an escalation level names (PagerDuty, Opsgenie, a
-- signed webhook), and one row per delivery to one of them: a trigger once
-- per level, an acknowledge and a resolve once per pager. Rows are durable
-- work sent by `page` work; a claim (`claimed_by`, `claimed_until`) keeps
-- two workers from sending the same delivery at once.

alter table escalation_timers add column pagers jsonb not null default '[]';

create table pages (
    id            bigint generated always as identity primary key,
    incident_id   bigint not null references incidents (id),
    -- `[pagers.NAME]` in the settings.
    pager         text not null,
    action        text not null,
    -- The escalation level that paged; 0 for acknowledge and resolve.
    level         bigint not null,
    role          text,
    reason        text not null,
    state         text not null default 'pending',
    attempts      bigint not null default 0,
    last_error    text,
    -- The HTTP status of the last answer.
    status_code   bigint,
    claimed_by    text,
    claimed_until bigint,
    created_at    bigint not null,
    sent_at       bigint,
    constraint pages_once unique (incident_id, pager, action, level),
    constraint pages_action_check check (action in ('trigger', 'acknowledge', 'resolve')),
    constraint pages_state_check check (state in ('pending', 'sent', 'failed', 'skipped'))
);

create index pages_pending_idx on pages (incident_id) where state = 'pending';

-- `page` work is urgent (lane 0), like the pings it goes with. The
-- expression must stay identical to the claim's (src/store/work.rs, `LANE`).
drop index work_lane_due_idx;
create index work_lane_due_idx on work (
    (case when kind in ('execute', 'escalate', 'notify', 'page') then 0 else 1 end), due_at, id
) where state = 'pending';
