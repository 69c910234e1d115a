"""Pure folds: fold(state, envelope) -> (state, emitted). No I/O, no clock, no randomness."""


class FoldError(Exception):
    """An envelope a fold cannot apply; the fold agent dead-letters it with this message as the reason."""
