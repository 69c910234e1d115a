"""Seen from outside: a running `baton dev` whose worker and projector are SIGKILLed while signed webhooks flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest

from agents.tenants import load_tenants
from streams.domains.conversations.demo import message_delivery, post_signed
from streams.embedded import child_env
from streams.settings import Settings
from tests.fixtures.apis import FakeApis
from tests.fixtures.runtime import Dev, running_dev
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

CONTACTS, PER_CONTACT, DUPLICATES = 12, 10, 10
APP_ID, PREFIX = "baton-fire", "fire."


def contact(c: int) -> str:
    return f"3466{c:07d}"


def deliveries() -> list[dict]:
    acme = load_tenants(Settings().tenants_file).by_id["acme"]
    bodies = [message_delivery(acme, contact(c), f"C{c}", f"wamid.fire.{c}.{n}", f"consulta {n}",
                               1_790_000_000 + 60 * n) for n in range(PER_CONTACT) for c in range(CONTACTS)]
    # WhatsApp redelivers some webhooks: the same message ids again, later on.
    return bodies + bodies[:DUPLICATES]


def sessions(dev: Dev) -> dict[str, tuple[int, int, int, int, int]]:
    url = dev_env(dev)["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT contact, messages_received, duplicates_dropped, replies_requested, replies_sent,"
                            " replies_failed FROM conversation_sessions").fetchall()
    return {name: tuple(rest) for name, *rest in rows}


def dev_env(dev: Dev) -> dict[str, str]:
    import json

    return json.loads((dev.data_dir / "runtime.json").read_text())


def restarted(dev: Dev, role: str, old_pid: int) -> int | None:
    pid = dev.children().get(role)
    return pid if pid not in (None, old_pid) else None


def test_dev_keeps_answering_while_its_worker_and_projector_are_killed(tmp_path: Path) -> None:
    fake = FakeApis(lane="support")  # support replies name a ticket derived from the message: unique texts
    try:
        with running_dev(tmp_path, BATON_APP_ID=APP_ID, BATON_TOPIC_PREFIX=PREFIX,
                         BATON_WHATSAPP_ACCESS_TOKEN="graph-token", BATON_WHATSAPP_API_BASE=fake.url,
                         ANTHROPIC_API_KEY="sk-ant-fake", ANTHROPIC_BASE_URL=fake.url) as dev:
            settings = Settings()  # the dev secrets `baton dev` runs with, to sign webhooks
            statuses: list[int] = []

            def post_all() -> None:
                with httpx.Client(base_url=dev.api_url(), timeout=30) as client:
                    for body in deliveries():
                        statuses.append(post_signed(client, settings, body).status_code)
                        time.sleep(0.05)  # a steady trickle (pacing only; nothing is timed)

            poster = threading.Thread(target=post_all, daemon=True)
            poster.start()
            eventually(lambda: len(fake.sends) >= 10, "some replies sent before the first kill")
            worker = dev.children()["worker"]
            os.kill(worker, signal.SIGKILL)
            eventually(lambda: restarted(dev, "worker", worker), "worker restarted by baton dev")
            eventually(lambda: len(statuses) >= 70, "more webhooks after the worker came back")
            projector = dev.children()["projector"]
            os.kill(projector, signal.SIGKILL)
            eventually(lambda: restarted(dev, "projector", projector), "projector restarted by baton dev")
            poster.join(120)
            assert not poster.is_alive()
            # The API kept answering through both kills: every delivery accepted, none refused or lost.
            assert Counter(statuses) == {200: CONTACTS * PER_CONTACT + DUPLICATES}

            def settled():
                rows = sessions(dev)
                done = len(rows) == CONTACTS and all(
                    r[0] == PER_CONTACT and r[2] == PER_CONTACT and r[3] + r[4] == PER_CONTACT for r in rows.values())
                return rows if done else None

            rows = eventually(settled, "every message folded once and answered", within_s=180)
            # Each message folded once; the redelivered webhooks counted as duplicates, not as messages.
            assert sum(r[1] for r in rows.values()) == DUPLICATES
            # No reply reached a contact twice. A reply is reported sent only if it reached the fake; the others
            # are the sends the kill interrupted (their outcome was lost), reported so and never retried.
            assert max(fake.sent().values()) == 1
            assert sum(r[3] for r in rows.values()) <= len(fake.sent()) <= CONTACTS * PER_CONTACT
            with psycopg.connect(dev_env(dev)["DATABASE_URL"]) as conn:
                reasons = Counter(r for (r,) in conn.execute(
                    "SELECT coalesce(payload->>'reason', payload->>'failure_reason') FROM events"
                    " WHERE type = 'conversation.reply.failed'"
                    " OR (type = 'conversation.message.answered' AND payload->>'whatsapp_message_id' IS NULL)"))
            assert set(reasons) <= {"outcome unknown: the worker stopped during the send; not retried"}
            assert sum(reasons.values()) == sum(r[4] for r in rows.values())
            assert "worker exited with code -9" in dev.output() and "projector exited with code -9" in dev.output()

            verify = subprocess.run(
                [sys.executable, "-m", "streams.cli", "replay", "--verify"],
                env=child_env(BATON_DATA_DIR=str(dev.data_dir), BATON_APP_ID=APP_ID, BATON_TOPIC_PREFIX=PREFIX,
                              COLUMNS="200"),
                capture_output=True, text=True, timeout=300, check=False)
            assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        fake.close()
