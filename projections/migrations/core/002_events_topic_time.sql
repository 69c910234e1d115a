-- The newest event of each domain (baton status) without scanning the archive.
CREATE INDEX events_topic_time ON events (topic, occurred_at);
