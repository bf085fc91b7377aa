-- AI responses and voice clips: the content behind ai_response:{H(prompt)} and
-- voice:{speaker_id}:{H(text)}, with how often and when they were last used
-- (warm-up and frequency-based eviction rank by use_count).
--
-- cached_at / source_event_id: the cache-miss event whose content the key
-- holds (the latest one by occurred_at wins). A row that has only seen hits
-- has no cached_at and is not projected.

CREATE TABLE ai_responses (
    prompt_hash     text PRIMARY KEY,
    prompt          text        NOT NULL,
    response        text,
    provider        text,
    model           text,
    cached_at       timestamptz,
    source_event_id uuid,
    use_count       bigint      NOT NULL DEFAULT 0,
    hit_count       bigint      NOT NULL DEFAULT 0,
    last_used_at    timestamptz NOT NULL
);
CREATE INDEX ai_responses_use_idx ON ai_responses (use_count DESC);

CREATE TABLE voice_clips (
    speaker_id      integer     NOT NULL,
    text_hash       text        NOT NULL,
    text            text        NOT NULL,
    audio           bytea,
    audio_format    text,
    cached_at       timestamptz,
    source_event_id uuid,
    use_count       bigint      NOT NULL DEFAULT 0,
    hit_count       bigint      NOT NULL DEFAULT 0,
    last_used_at    timestamptz NOT NULL,
    PRIMARY KEY (speaker_id, text_hash)
);
CREATE INDEX voice_clips_use_idx ON voice_clips (use_count DESC);

-- Alerts: the current state of each alert rule and every message published.
CREATE TABLE alert_state (
    rule        text PRIMARY KEY,
    firing      boolean     NOT NULL,
    since       timestamptz NOT NULL
);

CREATE TABLE alert_log (
    id          bigserial PRIMARY KEY,
    rule        text        NOT NULL,
    state       text        NOT NULL,
    level       text        NOT NULL,
    metric      text        NOT NULL,
    value       double precision NOT NULL,
    threshold   double precision NOT NULL,
    at          timestamptz NOT NULL
);
