-- Hourly counts: one row per (event, UTC hour, property set). The property set is stored as
-- jsonb for subset filters (properties @> a jsonb object), identified in the key by a
-- 128-bit hash of its canonical text, so a long property set never exceeds a btree row.
CREATE TABLE {schema}.hourly_counts (
    event       text        NOT NULL,
    hour        timestamptz NOT NULL,
    props_hash  uuid        NOT NULL,
    properties  jsonb       NOT NULL,
    count       bigint      NOT NULL,
    PRIMARY KEY (event, hour, props_hash)
);
-- The primary key serves "event = $1 AND hour in [$2, $3)"; this serves property filters.
CREATE INDEX hourly_counts_properties ON {schema}.hourly_counts USING gin (properties jsonb_path_ops);

-- Daily totals, kept after hourly rows are pruned by retention.
CREATE TABLE {schema}.daily_counts (
    event       text   NOT NULL,
    day         date   NOT NULL,
    props_hash  uuid   NOT NULL,
    properties  jsonb  NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (event, day, props_hash)
);
CREATE INDEX daily_counts_properties ON {schema}.daily_counts USING gin (properties jsonb_path_ops);

-- Per-user daily counts (the seed's separate user table). The key serves top users and
-- distinct users of an event over days; the second index serves one user's history.
CREATE TABLE {schema}.user_daily_counts (
    event    text   NOT NULL,
    day      date   NOT NULL,
    user_id  text   NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (event, day, user_id)
);
CREATE INDEX user_daily_counts_user ON {schema}.user_daily_counts (event, user_id, day);

-- The flush ledger: a batch id is applied once. applied_at serves pruning.
CREATE TABLE {schema}.flush_ledger (
    batch_id    text        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    counters    integer     NOT NULL
);
CREATE INDEX flush_ledger_applied_at ON {schema}.flush_ledger (applied_at);
