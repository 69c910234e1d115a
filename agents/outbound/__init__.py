"""The outbound domain's worker side: its fold, configuration, effects, wake-up timer and what-if re-fold."""
