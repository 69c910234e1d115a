-- The archive's generated full-text column and its GIN index served the first context search. Context search has a
-- read model of its own since (workflow_search, derived after the archive's transaction) and nothing reads them any
-- more: they only cost every archived event of every domain a tsvector and a GIN insert on the write path.
DROP INDEX IF EXISTS events_search;
ALTER TABLE events DROP COLUMN IF EXISTS search;
