CREATE TABLE policy_adoptions (
    event_id        text PRIMARY KEY,
    scope           text NOT NULL,
    seq             integer NOT NULL,
    policy          text NOT NULL,
    previous        text,
    sections        jsonb NOT NULL,
    reason          text NOT NULL,
    actor           text NOT NULL,
    adopted_at      timestamptz NOT NULL,
    in_force        boolean NOT NULL,
    projected_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_adoptions_scope ON policy_adoptions (scope, seq);
