-- Decisions may come through Mattermost.

alter table decisions drop constraint decisions_channel_check;
alter table decisions add constraint decisions_channel_check
    check (channel in ('slack', 'discord', 'mattermost', 'console', 'api'));
