-- Per-group daily counts (accounts and the other configured group types): one row per
-- (event, group type, UTC day, group id), summed over the group's users. The key serves
-- top groups and distinct groups of an event and type over days; the second index one
-- group's history (count with group=). Partitioned by UTC month, as user_daily_counts is:
-- the partitions are created at apply time for a month a batch touches first, and ahead by
-- the hourly upkeep; retention (user_retention_days) drops them like per-user rows.
CREATE TABLE {schema}.group_daily_counts (
    event       text   NOT NULL,
    group_type  text   NOT NULL,
    day         date   NOT NULL,
    group_id    text   NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (event, group_type, day, group_id)
) PARTITION BY RANGE (day);
CREATE INDEX group_daily_counts_group
    ON {schema}.group_daily_counts (event, group_type, group_id, day);

-- The same counts per user of the group ('' for calls without a user: a user id is never
-- empty), so that a group's active users can be told: written in the same transaction.
CREATE TABLE {schema}.group_user_daily_counts (
    event       text   NOT NULL,
    group_type  text   NOT NULL,
    group_id    text   NOT NULL,
    day         date   NOT NULL,
    user_id     text   NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (event, group_type, group_id, day, user_id)
) PARTITION BY RANGE (day);
