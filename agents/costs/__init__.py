"""The costs domain's write side: its fold, its configuration and its effects."""
