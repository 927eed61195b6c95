-- Chat: approval requests for each action a diagnosis offered, the
-- decisions people made on them, and the chat message that shows them.

create table approvals (
    id           bigint generated always as identity primary key,
    incident_id  bigint not null references incidents (id),
    -- Position of the action in the report, and its key for the API/CLI
    -- (`terminate_leaks`, or `terminate_leaks#2` when an action repeats).
    seq          bigint not null,
    key          text not null,
    action_id    text not null,
    title        text not null,
    risk         text not null,
    roles        jsonb not null,
    quorum       bigint not null,
    -- sha256 of the exact action and parameters shown.
    digest       text not null,
    state        text not null default 'pending',
    created_at   bigint not null,
    expires_at   bigint not null,
    decided_at   bigint,
    constraint approvals_key unique (incident_id, key),
    constraint approvals_state_check
        check (state in ('pending', 'approved', 'rejected', 'expired', 'superseded', 'executed'))
);

create table decisions (
    id          bigint generated always as identity primary key,
    approval_id bigint not null references approvals (id),
    -- `slack:U123`, `discord:4567`, `console:alice`.
    approver    text not null,
    display     text not null,
    decision    text not null,
    at          bigint not null,
    constraint decisions_once unique (approval_id, approver),
    constraint decisions_decision_check check (decision in ('approve', 'reject'))
);

create table chat_messages (
    incident_id  bigint primary key references incidents (id),
    platform     text not null,
    channel      text not null,
    -- Slack `ts` or Discord message id; null while the first post is in flight.
    message_id   text,
    posting_owner text,
    posting_until bigint,
    last_error   text,
    updated_at   bigint not null
);
