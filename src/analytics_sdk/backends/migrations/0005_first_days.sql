-- First days, for first-time retention without a scan of history: for each event and UTC
-- day, the users whose first day with that event is that day (a roaring bitmap of user
-- numbers, like event_day_users), and every user the event ever had. Event '' stands for
-- any event (event names are never empty). Written in the transaction that applies the
-- counts; a batch with an earlier day for a user already seen moves the user to that day.
CREATE TABLE {schema}.first_day_users (
    event  text  NOT NULL,
    day    date  NOT NULL,
    users  bytea NOT NULL,
    PRIMARY KEY (event, day)
);

CREATE TABLE {schema}.ever_users (
    event  text  PRIMARY KEY,
    users  bytea NOT NULL
);
-- The first days of the users already stored are built right after this file, in the same
-- transaction, from their day bitmaps (analytics_sdk.backends.postgres.build_first_days).
