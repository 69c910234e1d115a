"""The streams package's error base class."""


class StreamsError(Exception):
    """Base class of every error raised by the streams package."""
