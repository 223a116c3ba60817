-- Subscribers. A subscriber receives every message with id >= first_message_id (the messages
-- accepted while it is registered), in order; delivered_through is its durable cursor. Per
-- subscriber state is a cursor, not a row per delivery, because deliveries are strictly ordered.
CREATE TABLE mc_subscribers (
    address           TEXT PRIMARY KEY NOT NULL,
    registered_at     BIGINT NOT NULL,  -- unix ms
    keepalive_at      BIGINT NOT NULL,  -- unix ms
    first_message_id  BIGINT NOT NULL,
    delivered_through BIGINT NOT NULL   -- last message id finished (delivered or failed)
);

-- Accepted messages (the outbox). Deleted once every subscriber's cursor has passed them.
CREATE TABLE mc_messages (
    id           BIGINT PRIMARY KEY,
    uid          TEXT NOT NULL,         -- the webhook-id receivers deduplicate on
    body         BYTEA NOT NULL,
    content_type TEXT,
    accepted_at  BIGINT NOT NULL       -- unix ms
);

-- Idempotency keys of recent sends, so a retried send is accepted once.
CREATE TABLE mc_idempotency (
    key         TEXT PRIMARY KEY NOT NULL,
    message_id  BIGINT NOT NULL,
    uid         TEXT NOT NULL,
    accepted_at BIGINT NOT NULL
);

-- Deliveries that finally failed (permanent 4xx, attempts or age exhausted, refused address).
CREATE TABLE mc_failures (
    id          BIGSERIAL PRIMARY KEY,
    address     TEXT NOT NULL,
    message_id  BIGINT NOT NULL,
    uid         TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    error       TEXT NOT NULL,
    failed_at   BIGINT NOT NULL
);

CREATE INDEX mc_failures_by_address ON mc_failures (address, id);

-- The next message id, kept even when every message has been delivered and deleted.
CREATE TABLE mc_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    next_message_id BIGINT NOT NULL
);

INSERT INTO mc_meta (id, next_message_id) VALUES (1, 1);
