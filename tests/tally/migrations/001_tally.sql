CREATE TABLE tally_counters (
    stream_id     text PRIMARY KEY,
    tenant_id     text NOT NULL,
    counter       text NOT NULL,
    total         bigint NOT NULL,
    counts        integer NOT NULL,
    milestones    integer NOT NULL,
    announced     integer NOT NULL,
    projected_at  timestamptz NOT NULL DEFAULT now()
);
