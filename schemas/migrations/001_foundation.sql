-- rpcache foundation schema: the event log, session and user state, daily
-- counters, consumed positions and dead letters. PostgreSQL is the source of
-- truth: every Redis key can be recomputed from these tables.

-- Every accepted event, exactly once (event_id is the primary key).
CREATE TABLE events (
    event_id      uuid PRIMARY KEY,
    type          text        NOT NULL,
    user_id       text        NOT NULL,
    session_id    uuid,
    occurred_at   timestamptz NOT NULL,
    payload       jsonb       NOT NULL,
    payload_sha   bytea       NOT NULL,
    topic         text        NOT NULL,
    kafka_partition integer   NOT NULL,
    kafka_offset  bigint      NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_user_idx ON events (user_id, occurred_at);
CREATE INDEX events_type_time_idx ON events (type, occurred_at);

-- Current state of every session. status: active | paused | ended | expired.
CREATE TABLE sessions (
    session_id           uuid PRIMARY KEY,
    user_id              text        NOT NULL,
    status               text        NOT NULL,
    speaker_id           integer     NOT NULL,
    scenario_id          text,
    conversation_context jsonb,
    performance_stats    jsonb,
    started_at           timestamptz NOT NULL,
    business_day         date        NOT NULL,
    last_activity        timestamptz NOT NULL,
    ended_at             timestamptz,
    end_reason           text,
    version              bigint      NOT NULL DEFAULT 1
);
CREATE INDEX sessions_open_idx ON sessions (last_activity) WHERE status IN ('active', 'paused');
CREATE INDEX sessions_user_day_idx ON sessions (user_id, business_day);

-- Current state of every user. last_seen: occurred_at of the latest session
-- event of the user; the user:{id}:state key lives until last_seen + 1 h.
CREATE TABLE users (
    user_id             text PRIMARY KEY,
    current_session_id  uuid,
    last_login          timestamptz,
    preferences         jsonb,
    last_seen           timestamptz NOT NULL,
    version             bigint      NOT NULL DEFAULT 1
);

-- Sessions started per user and business day (daily quota).
CREATE TABLE user_daily_sessions (
    user_id  text    NOT NULL,
    day      date    NOT NULL,
    started  integer NOT NULL,
    PRIMARY KEY (user_id, day)
);

-- Named per-day counters behind stats:realtime:{day}. Incremented only in the
-- transaction that first stores the event that causes them, so exact.
CREATE TABLE daily_counters (
    day    date   NOT NULL,
    name   text   NOT NULL,
    value  bigint NOT NULL,
    PRIMARY KEY (day, name)
);

-- When each stats:realtime:{day} hash was last projected (its TTL base).
CREATE TABLE daily_stats_writes (
    day         date PRIMARY KEY,
    written_at  timestamptz NOT NULL
);

-- Highest offset stored per consumer group and partition, written in the same
-- transaction as the state it produced (the "tracking" record).
CREATE TABLE consumer_positions (
    consumer_group  text    NOT NULL,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint  NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Events that could not be accepted. One row per (topic, partition, offset,
-- reason): a redelivered message does not add a second row.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint  NOT NULL,
    message_key     bytea,
    reason          text    NOT NULL,
    detail          text    NOT NULL,
    event_id        text,
    original        bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    UNIQUE (topic, kafka_partition, kafka_offset, reason)
);
CREATE INDEX dead_letters_unpublished_idx ON dead_letters (id) WHERE published_at IS NULL;
