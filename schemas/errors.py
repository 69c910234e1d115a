"""Errors raised by the schemas package, and where in a document they are."""

import re

_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def locate(message: str, prefix: str = "") -> str:
    """A msgspec error 'X - at `$.a[0]`' rewritten as 'prefix.a[0]: X'."""
    match = _AT.match(message)
    path, message = (prefix + match["path"], match["message"]) if match else (prefix, message)
    path = path.lstrip(".")
    return f"{path}: {message}" if path else message


class SchemaError(Exception):
    """Base class for every schema, codec and upcasting error."""


class DecodeError(SchemaError):
    """Bytes or a document could not be decoded into a valid envelope."""


class UnknownEventType(DecodeError):
    """The event type is not registered."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class UnsupportedSchemaVersion(DecodeError):
    """The schema version of a known type has no decoder or upcaster."""

    def __init__(self, event_type: str, version: int, current: int) -> None:
        super().__init__(
            f"unsupported schema_version {version} for {event_type!r} (current is {current})"
        )
        self.event_type = event_type
        self.version = version


class UnstorableEvent(SchemaError):
    """A valid event holding a value PostgreSQL or the read models cannot hold; names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem
