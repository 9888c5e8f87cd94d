-- Hourly and per-user counts partitioned by UTC month (declarative range partitioning), so
-- retention drops whole months instead of deleting their rows one by one. The tables keep
-- their names, keys and indexes; each partition is created with fillfactor 70 (a
-- partitioned table takes no storage parameters) as the sink needs it: at this migration for
-- the months that hold rows and the current and next month, then at apply time for a month
-- a batch touches first, and ahead by the hourly upkeep.
ALTER TABLE {schema}.hourly_counts RENAME TO hourly_counts_unpartitioned;
ALTER INDEX {schema}.hourly_counts_pkey RENAME TO hourly_counts_unpartitioned_pkey;
ALTER TABLE {schema}.user_daily_counts RENAME TO user_daily_counts_unpartitioned;
ALTER INDEX {schema}.user_daily_counts_pkey RENAME TO user_daily_counts_unpartitioned_pkey;
ALTER INDEX {schema}.user_daily_counts_user RENAME TO user_daily_counts_unpartitioned_user;

CREATE TABLE {schema}.hourly_counts (
    event       text        NOT NULL,
    hour        timestamptz NOT NULL,
    props_hash  uuid        NOT NULL,
    count       bigint      NOT NULL,
    PRIMARY KEY (event, hour, props_hash)
) PARTITION BY RANGE (hour);

CREATE TABLE {schema}.user_daily_counts (
    event    text   NOT NULL,
    day      date   NOT NULL,
    user_id  text   NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (event, day, user_id)
) PARTITION BY RANGE (day);
CREATE INDEX user_daily_counts_user ON {schema}.user_daily_counts (event, user_id, day);
-- Right after this file, in the same transaction: the partitions of the months that hold
-- rows are created, the rows copied, the old tables dropped
-- (analytics_sdk.backends.postgres.partition_counts).
