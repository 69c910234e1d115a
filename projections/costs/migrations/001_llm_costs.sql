CREATE TABLE llm_costs (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL,
    day                 date NOT NULL,
    domain              text NOT NULL,
    model               text NOT NULL,
    agent_id            text,
    user_id             text,
    calls               integer NOT NULL,
    failed              integer NOT NULL,
    input_tokens        bigint NOT NULL,
    output_tokens       bigint NOT NULL,
    cache_read_tokens   bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    cost_usd            numeric(18, 9) NOT NULL,
    projected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_costs_tenant_day ON llm_costs (tenant_id, day);
