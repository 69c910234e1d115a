-- The newest event of each domain (baton status) without scanning the archive.
CREATE INDEX events_topic_time ON events (topic, occurred_at);
-- Per-type rollups of one tenant (console charts) read an index range, not the archive.
CREATE INDEX events_tenant_type_time ON events (tenant_id, type, occurred_at);
