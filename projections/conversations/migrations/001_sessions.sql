-- Unqualified names: the runner sets search_path (see projections/migrations).

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
