"""The workflow domain's worker side: its fold, its settings and its templates."""
