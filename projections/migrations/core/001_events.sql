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

CREATE TABLE projector_offsets (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
