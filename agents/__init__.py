"""Folds (pure), the thin Faust agents that apply them, and effect workers."""
