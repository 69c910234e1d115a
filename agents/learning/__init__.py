"""The learning domain's write side: its fold, its configuration, its effect worker and its plan composition."""
