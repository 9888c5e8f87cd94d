-- Property sets, stored once: the key is a 128-bit hash of the set's canonical text, the
-- jsonb serves subset filters (properties @> a jsonb object) through the GIN index. Counter
-- rows refer to a set by its hash, so they stay narrow and cheap to update.
CREATE TABLE {schema}.property_sets (
    props_hash  uuid  PRIMARY KEY,
    properties  jsonb NOT NULL
);
CREATE INDEX property_sets_properties ON {schema}.property_sets USING gin (properties jsonb_path_ops);

-- Hourly counts: one row per (event, UTC hour, property set). The key serves
-- "event = $1 AND hour in [$2, $3)". Pages keep 30% free so that adding to a count is a
-- HOT update that touches no index.
CREATE TABLE {schema}.hourly_counts (
    event       text        NOT NULL,
    hour        timestamptz NOT NULL,
    props_hash  uuid        NOT NULL,
    count       bigint      NOT NULL,
    PRIMARY KEY (event, hour, props_hash)
) WITH (fillfactor = 70);

-- Daily totals (UTC days), kept after hourly rows are pruned by retention.
CREATE TABLE {schema}.daily_counts (
    event       text   NOT NULL,
    day         date   NOT NULL,
    props_hash  uuid   NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (event, day, props_hash)
) WITH (fillfactor = 70);

-- Per-user daily counts (the seed's separate user table). The key serves top users and
-- distinct users of an event over days; the second index serves one user's history.
CREATE TABLE {schema}.user_daily_counts (
    event    text   NOT NULL,
    day      date   NOT NULL,
    user_id  text   NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (event, day, user_id)
) WITH (fillfactor = 70);
CREATE INDEX user_daily_counts_user ON {schema}.user_daily_counts (event, user_id, day);

-- The flush ledger: a batch id is applied once. applied_at serves pruning.
CREATE TABLE {schema}.flush_ledger (
    batch_id    text        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    counters    integer     NOT NULL
);
CREATE INDEX flush_ledger_applied_at ON {schema}.flush_ledger (applied_at);
