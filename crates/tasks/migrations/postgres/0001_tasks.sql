-- One row per task. Ids are consecutive from 0 (tasks_meta.next_id), never reused.
CREATE TABLE tasks (
    id               BIGINT PRIMARY KEY,
    state            BIGINT NOT NULL,   -- 0 not started, 1 in progress, 2 finished, 3 failed
    held             BIGINT NOT NULL,   -- 1: created held, not released yet
    payload          TEXT,               -- JSON
    attempts         BIGINT NOT NULL,
    error            TEXT,
    lease            TEXT,               -- names the current claim
    lease_expires_at BIGINT,            -- unix ms
    hold_expires_at  BIGINT,            -- unix ms
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- Claiming takes the oldest ready task: O(log n) however long the backlog.
CREATE INDEX tasks_ready ON tasks (id) WHERE state = 0 AND held = 0;
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 1;
CREATE INDEX tasks_holds ON tasks (hold_expires_at) WHERE state = 0 AND held = 1;
CREATE INDEX tasks_by_state ON tasks (state, id);

CREATE TABLE tasks_meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    next_id BIGINT NOT NULL
);

INSERT INTO tasks_meta (id, next_id) VALUES (1, 0);
