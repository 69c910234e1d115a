"""Time zones come from the `tzdata` package, one loader for every fold and edge (agents.zones)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import tzdata

from agents.learning import fold as learning
from agents.outbound import fold as outbound
from agents.steps import budgets as steps
from agents.zones import TZ_VERSION, UnknownZone, zone


def test_zones_are_tzdata_s_and_its_version_is_recorded() -> None:
    assert TZ_VERSION == tzdata.IANA_VERSION
    madrid = zone("Europe/Madrid")
    assert madrid.key == "Europe/Madrid" and zone("Europe/Madrid") is madrid  # loaded once
    assert datetime(2026, 7, 1, 12, tzinfo=UTC).astimezone(madrid).utcoffset().total_seconds() == 7200


@pytest.mark.parametrize("name", ["", "../etc/passwd", "/etc/localtime", "Mars/Olympus", "Europe/Madrid "])
def test_a_name_that_is_no_iana_zone_is_refused(name: str) -> None:
    with pytest.raises(UnknownZone, match="unknown IANA time zone"):
        zone(name)


def test_every_fold_uses_the_one_loader() -> None:
    # The learning fold read the host's tz database before; the steps fold had a loader of its own.
    assert learning.tz_zone is zone and outbound.zone is zone and steps.zone is zone
