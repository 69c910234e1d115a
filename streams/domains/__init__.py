"""The built-in domains: one package each, holding its `Domain` declaration (`DOMAIN`), command routes and CLI."""
