"""IANA time zones from the `tzdata` package, never the host's files, so every machine and every replay decides
alike; the version is recorded with the decisions that depend on it (DESIGN.md, Time)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

import tzdata

from agents.errors import AgentError

TZ_VERSION: str = tzdata.IANA_VERSION
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


class UnknownZone(AgentError, ValueError):
    """Not an IANA zone of the tz database Baton ships with."""


@cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` from the `tzdata` package; UnknownZone when it is not one."""
    if not _ZONE_NAME.match(name):
        raise UnknownZone(f"unknown IANA time zone {name!r}")
    try:
        with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as data:
            return ZoneInfo.from_file(data, key=name)
    except (OSError, ValueError):
        raise UnknownZone(f"unknown IANA time zone {name!r}") from None
