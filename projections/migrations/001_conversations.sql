-- Unqualified names: the runner sets search_path, so replay builds a shadow schema from the same DDL.

CREATE TABLE events (
    event_id        uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    stream_id       text NOT NULL,
    type            text NOT NULL,
    schema_version  integer NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    correlation_id  uuid NOT NULL,
    causation_id    uuid,
    actor           text NOT NULL,
    payload         jsonb NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now(),
    search          tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', replace(type, '.', ' ')), 'A')
        || setweight(to_tsvector('simple',
               coalesce(payload->>'text', '') || ' ' || coalesce(payload->>'summary', '') || ' '
               || coalesce(payload->>'contact_name', '') || ' ' || coalesce(payload->>'reason', '')
               || ' ' || coalesce(payload->>'lane', '')), 'B')
    ) STORED
);
CREATE INDEX events_stream ON events (tenant_id, stream_id, occurred_at);
CREATE INDEX events_search ON events USING gin (search);

CREATE TABLE conversation_sessions (
    session_id          uuid PRIMARY KEY,
    tenant_id           text NOT NULL,
    contact             text NOT NULL,
    contact_name        text,
    stream_id           text NOT NULL,
    session_number      integer NOT NULL,
    started_at          timestamptz NOT NULL,
    last_activity_at    timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    lane                text,
    lane_history        jsonb NOT NULL,
    dialogue            jsonb NOT NULL,
    messages_received   integer NOT NULL,
    duplicates_dropped  integer NOT NULL,
    routed_info         integer NOT NULL,
    routed_commerce     integer NOT NULL,
    routed_support      integer NOT NULL,
    replies_requested   integer NOT NULL,
    replies_sent        integer NOT NULL,
    replies_failed      integer NOT NULL,
    tickets             jsonb NOT NULL,
    projected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_sessions_contact ON conversation_sessions (tenant_id, contact, started_at DESC);
CREATE INDEX conversation_sessions_lane ON conversation_sessions (tenant_id, lane);

CREATE TABLE projector_offsets (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
