"""Re-driving dead letters: a record that holds a valid event is published again and folded; others stay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from schemas import encode
from streams.deadletter import dead_letter_record
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.conversation_logs import inbound
from tests.fixtures.pipeline import produce_records
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def test_a_fixed_dead_letter_is_redriven_and_folded_while_a_bad_one_is_refused(runtime: Runtime,
                                                                                 api: httpx.Client) -> None:
    settings = runtime.settings
    topic = settings.topic("conversations")
    # As if a fold had failed on this message once (a bug since fixed): its record sits on the dead-letter topic.
    message = inbound("acme", "34655000001", "wamid.redrive.1", datetime(2026, 12, 1, 9, tzinfo=UTC), text="hola")
    letters = [
        dead_letter_record(source_topic=topic, partition=1, offset=7, key=message.stream_id.encode(),
                           value=encode(message), reason="fold: KeyError: 'lane'", stage="fold:conversations"),
        dead_letter_record(source_topic=topic, partition=0, offset=3, key=b"conversation:acme:x",
                           value=b'{"type": "conversation.bogus"}', reason="decode: invalid envelope",
                           stage="fold:conversations"),
    ]

    asyncio.run(produce_records(settings, settings.deadletter_topic, [(None, letter) for letter in letters]))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", "deadletter", *args],
                              env=child_env(COLUMNS="200", **settings_env(settings)), capture_output=True, text=True,
                              timeout=60, check=False)

    assert cli("redrive").returncode == 2  # nothing named
    assert cli("redrive", f"{topic}[0]:99").returncode == 2  # no such letter
    result = cli("redrive", "--all")
    assert result.returncode == 1
    assert f"re-driven {topic}[1]:7" in result.stdout
    assert f"refused {topic}[0]:3: decode:" in result.stderr
    conversation = eventually(lambda: (r := api.get("/v1/conversations/34655000001")).status_code == 200 and r.json(),
                              "the re-driven message folded and projected")
    assert conversation["messages_received"] == 1
