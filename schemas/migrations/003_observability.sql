-- Observability: one heartbeat row per worker. The worker updates beat_at
-- every HEARTBEAT_INTERVAL_S; `rpcache check` calls the worker healthy while
-- beat_at is younger than HEARTBEAT_MAX_AGE_S. Both sides use PostgreSQL's
-- clock (now()), so clock skew between their hosts does not matter.
-- A clean stop sets stopped_at; a killed worker just stops beating.
CREATE TABLE worker_heartbeats (
    app_id      text        NOT NULL,
    worker_id   text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    web_port    integer,
    started_at  timestamptz NOT NULL,
    beat_at     timestamptz NOT NULL,
    stopped_at  timestamptz,
    PRIMARY KEY (app_id, worker_id)
);
