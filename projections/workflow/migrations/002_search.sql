-- Context search moves off the archive's insert: the generated tsvector column on `events` and the indexes only
-- search used go, and a search table of its own takes their place, filled in batches after the archive's
-- transaction commits (projections/workflow/search.py: derive_search), so writing an event pays nothing for search.
-- `events.task_code` and `events_task_scope` stay: the task command path reads them.
DROP INDEX IF EXISTS events_context_search;
ALTER TABLE events DROP COLUMN IF EXISTS context_search;
DROP INDEX IF EXISTS events_tenant_projected;
DROP INDEX IF EXISTS events_tenant_time;

-- One row per archived event: the type's words (weight A, English) and every string of the payload (weight B,
-- English and Spanish stems), the columns the scopes select on, and when the row was written (the cache marker).
CREATE TABLE workflow_search (
    event_id        uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    task_code       text,
    stream_id       text NOT NULL,
    type            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    doc             tsvector NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_search_doc ON workflow_search USING gin (doc);
-- Project and sprint scopes rank newest windows first.
CREATE INDEX workflow_search_time ON workflow_search (tenant_id, occurred_at);
CREATE INDEX workflow_search_task ON workflow_search (tenant_id, task_code, occurred_at) INCLUDE (projected_at)
    WHERE task_code IS NOT NULL;
CREATE INDEX workflow_search_sprint ON workflow_search (tenant_id, stream_id) WHERE stream_id LIKE 'sprint:%';

-- The event types each tenant's archive holds (how high a query's relevance can go), and when the tenant's
-- search rows last changed (the project scope's cache marker).
CREATE TABLE workflow_search_types (
    key             text PRIMARY KEY,
    tenant_id       text NOT NULL,
    type            text NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_search_types_tenant ON workflow_search_types (tenant_id, projected_at);
