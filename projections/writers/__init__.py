"""Read-model writers per domain: pure row builders and batched upserts."""
