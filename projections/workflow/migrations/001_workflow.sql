-- The workflow read models, and context search over the events archive of every domain.

CREATE TABLE workflow_tasks (
    stream_id       text PRIMARY KEY,
    tenant_id       text NOT NULL,
    task_code       text NOT NULL,
    sprint_code     text,
    title           text NOT NULL,
    type            text NOT NULL,
    description     text NOT NULL,
    status          text NOT NULL,
    phase           text,
    active_session  text,
    phases          jsonb NOT NULL,
    fields          jsonb NOT NULL,
    sessions        jsonb NOT NULL,
    history         jsonb NOT NULL,
    overrides       jsonb NOT NULL,
    rejections      jsonb NOT NULL,
    artifacts       jsonb NOT NULL,
    commits         jsonb NOT NULL,
    pull_request    jsonb,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX workflow_tasks_code ON workflow_tasks (tenant_id, task_code);
CREATE INDEX workflow_tasks_sprint ON workflow_tasks (tenant_id, sprint_code);

-- One row per session of a task (the session scope of search reads its time window here).
CREATE TABLE workflow_sessions (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    session_key     text NOT NULL,
    task_code       text NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    forced          boolean NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_sessions_key ON workflow_sessions (tenant_id, session_key);

CREATE TABLE workflow_sprints (
    stream_id       text PRIMARY KEY,
    tenant_id       text NOT NULL,
    sprint_code     text NOT NULL,
    title           text NOT NULL,
    status          text NOT NULL,
    description     text NOT NULL,
    fields          jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX workflow_sprints_code ON workflow_sprints (tenant_id, sprint_code);

CREATE TABLE workflow_bugs (
    stream_id           text PRIMARY KEY,
    tenant_id           text NOT NULL,
    fingerprint         text NOT NULL,
    rules_version       integer NOT NULL,
    classification      text NOT NULL,
    message             text NOT NULL,
    normalized_message  text NOT NULL,
    file                text NOT NULL,
    line                integer,
    first_seen          timestamptz NOT NULL,
    last_seen           timestamptz NOT NULL,
    occurrences         integer NOT NULL,
    tasks               jsonb NOT NULL,
    last_task           text,
    projected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_bugs_tenant ON workflow_bugs (tenant_id, rules_version, last_seen DESC);
CREATE INDEX workflow_bugs_tasks ON workflow_bugs USING gin (tasks);

CREATE TABLE workflow_bug_rules (
    stream_id       text PRIMARY KEY,
    tenant_id       text NOT NULL,
    version         integer NOT NULL,
    adopted_at      timestamptz NOT NULL,
    previous        jsonb NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);

-- `baton bugs regroup` writes its shadow grouping here (not a read model: a what-if, rebuilt per run).
CREATE TABLE workflow_bug_regroup (
    tenant_id        text NOT NULL,
    rules_version    integer NOT NULL,
    event_id         uuid NOT NULL,
    fingerprint      text NOT NULL,
    live_fingerprint text NOT NULL,
    PRIMARY KEY (tenant_id, rules_version, event_id)
);

-- Context search: every string of every payload, in English and Spanish (stemmed, stop words dropped), with
-- the event type weighted above the payload; the task an event belongs to, for the task/sprint/session scopes.
ALTER TABLE events
    ADD COLUMN task_code text GENERATED ALWAYS AS (payload->>'task_code') STORED,
    ADD COLUMN context_search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', replace(type, '.', ' ')), 'A')
        || setweight(jsonb_to_tsvector('english', payload, '["string"]'), 'B')
        || setweight(jsonb_to_tsvector('spanish', payload, '["string"]'), 'B')
    ) STORED;
CREATE INDEX events_context_search ON events USING gin (context_search);
CREATE INDEX events_task_scope ON events (tenant_id, task_code, projected_at) WHERE task_code IS NOT NULL;
CREATE INDEX events_tenant_projected ON events (tenant_id, projected_at);
-- Large scopes rank the most recent windows first.
CREATE INDEX events_tenant_time ON events (tenant_id, occurred_at);
-- The API waits for a request's decision: the event it caused.
CREATE INDEX events_caused_by ON events (causation_id) WHERE causation_id IS NOT NULL;
