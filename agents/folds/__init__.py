"""Pure folds: fold(state, envelope) -> (state, emitted). No I/O, no clock, no randomness."""
