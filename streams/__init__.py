"""Write side: settings, the Faust app, topics, publisher, HTTP ingest, embedded runtime, CLI."""
