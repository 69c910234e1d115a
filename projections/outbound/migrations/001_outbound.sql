-- Unqualified names: the runner sets search_path (see projections/migrations).

CREATE TABLE outbound_messages (
    message_id              text PRIMARY KEY,
    tenant_id               text NOT NULL,
    user_id                 text NOT NULL,
    stream_id               text NOT NULL,
    seq                     integer NOT NULL,
    agent_id                text NOT NULL,
    message_type            text NOT NULL,
    message_data            jsonb NOT NULL,
    priority                text NOT NULL,
    priority_rank           integer NOT NULL,
    can_delay               boolean NOT NULL,
    requires_fresh_context  boolean NOT NULL,
    idempotency_key         text,
    status                  text NOT NULL,
    reason                  text,
    queued_at               timestamptz NOT NULL,
    expires_at              timestamptz,
    due_at                  timestamptz,
    decided_at              timestamptz,
    sent_at                 timestamptz,
    attempts                integer NOT NULL,
    retry_at                timestamptz,
    rendered_text           text,
    whatsapp_message_id     text,
    decisions               jsonb NOT NULL,
    projected_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_messages_queue ON outbound_messages (tenant_id, status, priority_rank, queued_at);
CREATE INDEX outbound_messages_user ON outbound_messages (tenant_id, user_id, seq);

CREATE TABLE outbound_users (
    stream_id           text PRIMARY KEY,
    tenant_id           text NOT NULL,
    user_id             text NOT NULL,
    timezone            text,
    quiet_hours_start   text,
    quiet_hours_end     text,
    daily_limit         integer,
    contact             text,
    last_inbound_at     timestamptz,
    last_message_at     timestamptz,
    budget_date         date,
    sent_on_date        integer NOT NULL,
    wakeup_at           timestamptz,
    projected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX outbound_users_user ON outbound_users (tenant_id, user_id);

CREATE TABLE outbound_budgets (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL,
    user_id             text NOT NULL,
    day                 date NOT NULL,
    sent                integer NOT NULL,
    daily_limit         integer NOT NULL,
    last_message_at     timestamptz,
    projected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_budgets_day ON outbound_budgets (tenant_id, day);
