-- Unqualified names: the runner sets search_path (see projections/migrations).

CREATE TABLE steps_executions (
    stream_id       text PRIMARY KEY,
    tenant_id       text NOT NULL,
    execution_id    text NOT NULL,
    agent_id        text NOT NULL,
    user_id         text NOT NULL,
    status          text NOT NULL,
    started_at      timestamptz,
    completed_at    timestamptz,
    error           text,
    token_budget    bigint,
    usd_budget      double precision,
    flags           jsonb,
    steps           jsonb NOT NULL,
    metrics         jsonb NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX steps_executions_id ON steps_executions (tenant_id, execution_id);
CREATE INDEX steps_executions_agent ON steps_executions (tenant_id, agent_id, started_at DESC);

-- One row per scope, subject and tenant-local day; scope 'model' rows are the daily roll-up per model.
CREATE TABLE steps_budget_days (
    row_key          text PRIMARY KEY,
    tenant_id        text NOT NULL,
    day              date NOT NULL,
    scope            text NOT NULL,
    subject          text NOT NULL,
    limit_tokens     bigint,
    limit_usd        double precision,
    used_tokens      bigint NOT NULL,
    used_usd         double precision NOT NULL,
    reserved_tokens  bigint NOT NULL,
    reserved_usd     double precision NOT NULL,
    steps            integer NOT NULL,
    rejected         integer NOT NULL,
    tokens_saved     bigint NOT NULL,
    usd_saved        double precision NOT NULL,
    projected_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX steps_budget_days_scope ON steps_budget_days (tenant_id, scope, subject, day);

CREATE TABLE steps_tenants (
    tenant_id     text PRIMARY KEY,
    flags         jsonb,
    timezone      text,
    limits        jsonb NOT NULL,
    reservations  integer NOT NULL,
    open_executions integer NOT NULL,
    projected_at  timestamptz NOT NULL DEFAULT now()
);
