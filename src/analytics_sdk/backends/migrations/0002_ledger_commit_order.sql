-- The transaction that applied each batch. A query takes a snapshot (pg_current_snapshot())
-- before it reads the store; the batches whose xact that snapshot does not see committed
-- while it read, and tell it to read again. Rows applied before this migration keep NULL:
-- they committed long before any query that compares.
ALTER TABLE {schema}.flush_ledger ADD COLUMN xact xid8;
CREATE INDEX flush_ledger_xact ON {schema}.flush_ledger (xact) WHERE xact IS NOT NULL;
