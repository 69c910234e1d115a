"""The agents package's errors: one base class, and the error a fold raises for an envelope it cannot apply."""


class AgentError(Exception):
    """Base class of every error raised by the agents package."""


class FoldError(AgentError):
    """An envelope a fold cannot apply; the fold agent dead-letters it with this message as the reason."""
