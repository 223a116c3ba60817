-- The store revision follows every row write, so a whole batch commits as one multi-row
-- upsert (one statement, one implicit transaction, one hand-off to SQLite's thread).
CREATE TRIGGER kv_entries_revision_after_insert AFTER INSERT ON kv_entries
BEGIN
    UPDATE kv_meta SET revision = MAX(revision, NEW.revision) WHERE id = 1;
END;

CREATE TRIGGER kv_entries_revision_after_update AFTER UPDATE OF revision ON kv_entries
BEGIN
    UPDATE kv_meta SET revision = MAX(revision, NEW.revision) WHERE id = 1;
END;
