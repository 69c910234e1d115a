"""Read side: SQL migrations, the projector, read-model writers, views, the query API, replay."""


class ProjectionError(Exception):
    """Base class of every error raised by the projections package."""
