-- One row per key. A NULL value is a tombstone: the key was removed or expired at
-- `revision`; tombstones let watchers learn about removals and are purged after a while.
CREATE TABLE kv_entries (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BYTEA,
    revision   BIGINT NOT NULL,
    expires_at BIGINT,          -- unix milliseconds, NULL = never
    updated_at BIGINT NOT NULL  -- unix milliseconds of the last write
);

CREATE INDEX kv_entries_by_revision ON kv_entries (revision);

-- The store-wide revision counter (ever increasing: removals and expiries take numbers too,
-- so it cannot be derived from the rows) and the newest purged tombstone revision.
CREATE TABLE kv_meta (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    revision       BIGINT NOT NULL,
    purged_through BIGINT NOT NULL
);

INSERT INTO kv_meta (id, revision, purged_through) VALUES (1, 0, 0);
