-- Unqualified names: the runner sets search_path (see projections/migrations).

CREATE TABLE learning_learners (
    stream_id           text PRIMARY KEY,
    tenant_id           text NOT NULL,
    learner             text NOT NULL,
    active_intent       jsonb,
    latest_session      jsonb,
    total_sessions      integer NOT NULL,
    completed_sessions  integer NOT NULL,
    total_time_min      integer NOT NULL,
    confidence_sum      integer NOT NULL,
    completion_days     jsonb NOT NULL,
    projected_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE learning_sessions (
    session_id           uuid PRIMARY KEY,
    tenant_id            text NOT NULL,
    learner              text NOT NULL,
    stream_id            text NOT NULL,
    intent_id            uuid NOT NULL,
    week                 integer NOT NULL,
    day                  integer NOT NULL,
    topic                text NOT NULL,
    plan_title           text NOT NULL,
    degraded_mode        boolean NOT NULL,
    created_at           timestamptz NOT NULL,
    planned_event_id     uuid NOT NULL,
    completion_time_min  integer,
    confidence           integer,
    notes                text,
    completed_at         timestamptz,
    projected_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX learning_sessions_learner ON learning_sessions (tenant_id, learner, created_at DESC);

-- The signal cache: each learner's latest signal per agent.
CREATE TABLE learning_signals (
    signal_key       text PRIMARY KEY,
    tenant_id        text NOT NULL,
    learner          text NOT NULL,
    stream_id        text NOT NULL,
    agent            text NOT NULL,
    available        boolean NOT NULL,
    etag             text,
    data             jsonb,
    fetched_at       timestamptz,
    last_updated     timestamptz,
    last_status      text NOT NULL,
    last_error       text,
    last_attempt_at  timestamptz,
    projected_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX learning_signals_stream ON learning_signals (stream_id);

-- A learner stream lives in one partition, so its archived events are ordered by offset (the SSE cursor).
CREATE INDEX learning_events_stream_offset ON events (tenant_id, stream_id, "offset");
