-- Counting tasks per state reads only small partial indexes: failed tasks get one (they are
-- few), and finished is every id ever made, less those retention deleted, less the others.
-- Counting finished tasks row by row grew with the table, and the master counts on every upload.
CREATE INDEX tasks_failed ON tasks (id) WHERE state = 3;
ALTER TABLE tasks_meta ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
