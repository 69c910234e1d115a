"""The causal chain of events around any id: its view and its route."""
