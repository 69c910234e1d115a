-- The content hash of the policy each event was decided under (README, "Policies"); null: the built-in defaults.
ALTER TABLE events ADD COLUMN policy text;
