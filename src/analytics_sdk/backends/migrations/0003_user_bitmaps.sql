-- User numbers: each user id gets a dense integer, once, when a batch first counts it
-- (numbers are 32-bit, the bitmaps' domain). Never pruned: the bitmaps refer to them.
CREATE TABLE {schema}.user_numbers (
    user_id  text    PRIMARY KEY,
    number   integer GENERATED ALWAYS AS IDENTITY UNIQUE
);

-- The users of each event and UTC day: a roaring bitmap of user numbers (the portable
-- serialization), written in the transaction that applies the counts. Kept after per-user
-- rows are pruned, as daily_counts outlives hourly rows.
CREATE TABLE {schema}.event_day_users (
    event  text  NOT NULL,
    day    date  NOT NULL,
    users  bytea NOT NULL,
    PRIMARY KEY (event, day)
);

-- The users of each UTC day over every event (active users of any event).
CREATE TABLE {schema}.day_users (
    day    date  PRIMARY KEY,
    users  bytea NOT NULL
);
-- The rows of user_daily_counts already stored get their numbers and bitmaps right after
-- this file, in the same transaction (analytics_sdk.backends.postgres.build_user_bitmaps).
