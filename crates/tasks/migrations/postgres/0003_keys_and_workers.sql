-- An upload retried with the same Idempotency-Key finds its task instead of creating another.
ALTER TABLE tasks ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Who claimed a task, so a restarted host can hand back the claims its dead workers held.
ALTER TABLE tasks ADD COLUMN worker TEXT;
CREATE INDEX tasks_by_worker ON tasks (worker) WHERE state = 1;
