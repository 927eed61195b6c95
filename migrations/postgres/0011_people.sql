-- People behind decisions: the channel each decision came through and the
-- person it belongs to; who requested an approval (a Silence click) and
-- whether the action forbids that person approving it; refusals recorded
-- once per subject, clicker and reason.

alter table decisions add column channel text
    constraint decisions_channel_check check (channel in ('slack', 'discord', 'console', 'api'));
alter table decisions add column person text;

alter table approvals add column requested_by text;
alter table approvals add column forbid_self bigint not null default 0;

create table refusals (
    -- `approval:12`, `incident:7:ack`, …
    subject  text not null,
    -- The clicker's key: `person:alice`, or `slack:U123` when unmapped.
    approver text not null,
    -- A refusal code (`not_authorized`, `expired`, …), not its message.
    reason   text not null,
    at       bigint not null,
    constraint refusals_once primary key (subject, approver, reason)
);
