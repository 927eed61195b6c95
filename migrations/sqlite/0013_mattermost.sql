-- Decisions may come through Mattermost. SQLite cannot change a CHECK
-- constraint in place: the table is rebuilt with the same columns, keys
-- and rows (nothing references it).

create table decisions_new (
    id          integer primary key,
    approval_id integer not null references approvals (id),
    -- `person:alice`, or `slack:U123`, `discord:4567`, `mattermost:x5h7…`.
    approver    text not null,
    display     text not null,
    decision    text not null,
    at          integer not null,
    channel     text,
    person      text,
    constraint decisions_once unique (approval_id, approver),
    constraint decisions_decision_check check (decision in ('approve', 'reject')),
    constraint decisions_channel_check
        check (channel in ('slack', 'discord', 'mattermost', 'console', 'api'))
);

insert into decisions_new (id, approval_id, approver, display, decision, at, channel, person)
    select id, approval_id, approver, display, decision, at, channel, person from decisions;

drop table decisions;
alter table decisions_new rename to decisions;
