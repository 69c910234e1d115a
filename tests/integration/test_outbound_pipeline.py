"""Outbound end to end on the real broker and PostgreSQL: queue → decision → send through a fake WhatsApp server,
retries by the wake-up timer, a redelivered tick and send request, activity from a conversation message, the
simulate diff, and replay --verify."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest
import typer
import tzdata
from typer.testing import CliRunner

from schemas import Envelope, payload_from_builtins
from streams.auth import issue_token
from streams.embedded import child_env
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import Settings, get_settings, settings_env
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

OUTBOUND_ENV = {"BATON_OUTBOUND_RETRY_BACKOFF_S": "0.5", "BATON_OUTBOUND_TICK_INTERVAL_S": "0.3"}


class FakeWhatsApp:
    """The Graph API messages endpoint on loopback: records every send; `fail_next(n)` answers n sends with 503."""

    def __init__(self) -> None:
        self.sends: list[dict] = []
        self.failures = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    failing = fake.failures > 0
                    fake.failures -= failing
                    if not failing:
                        fake.sends.append(body)
                    wamid = f"wamid.fake.{len(fake.sends)}"
                status, answer = (503, {"error": {"message": "busy", "code": 2}}) if failing else (
                    200, {"messaging_product": "whatsapp", "messages": [{"id": wamid}]})
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_next(self, count: int) -> None:
        with self.lock:
            self.failures = count

    def texts_to(self, contact: str) -> list[str]:
        with self.lock:
            return [s["text"]["body"] for s in self.sends if s["to"] == contact]


@pytest.fixture(scope="module")
def whatsapp() -> Iterator[FakeWhatsApp]:
    fake = FakeWhatsApp()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def runtime(bootstrap_servers: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory,
            whatsapp: FakeWhatsApp) -> Iterator[Runtime]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in OUTBOUND_ENV.items():  # the worker, a child process, reads its outbound settings here
            env.setenv(key, value)
        with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("ob") / "baton",
                            whatsapp_access_token="graph-token", whatsapp_api_base=whatsapp.url) as running:
            yield running


@pytest.fixture(scope="module")
def api(runtime: Runtime) -> Iterator[httpx.Client]:
    token = issue_token(runtime.settings, "acme")
    with httpx.Client(base_url=runtime.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def prefs(api: httpx.Client, user: str, contact: str, start: str = "00:00", end: str = "00:00", limit: int = 10) -> None:
    body = {"timezone": "Europe/Madrid", "quiet_hours": {"start": start, "end": end}, "daily_limit": limit,
            "contact": contact}
    response = api.put(f"/v1/users/{user}/preferences", json=body)
    assert response.status_code == 202, response.text


def queue(api: httpx.Client, user: str, text: str, **fields: object) -> str:
    body = {"user_id": user, "agent_id": fields.pop("agent_id", "saga"), "message_data": {"type": "text", "text": text},
            **fields}
    response = api.post("/v1/outbound", json=body)
    assert response.status_code == 202, response.text
    return response.json()["message_id"]


def message(api: httpx.Client, message_id: str, status: str) -> dict | None:
    response = api.get(f"/v1/outbound/messages/{message_id}")
    return response.json() if response.status_code == 200 and response.json()["status"] == status else None


def quiet_now() -> tuple[str, str]:
    """Quiet hours (Madrid) from an hour ago to an hour from now."""
    local = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Madrid"))
    return (local - timedelta(hours=1)).strftime("%H:%M"), (local + timedelta(hours=1)).strftime("%H:%M")


def test_queue_decide_and_send_through_whatsapp_with_one_retry(api: httpx.Client, whatsapp: FakeWhatsApp) -> None:
    prefs(api, "ana", "34611000001")
    first = queue(api, "ana", "Your summary is ready", idempotency_key="summary-1")
    assert queue(api, "ana", "Your summary is ready", idempotency_key="summary-1") == first
    sent = eventually(lambda: message(api, first, "sent"), "the message sent")
    assert sent["decisions"][0]["decision"] == "approved" and sent["decisions"][0]["reason"] == "slot_available"
    inputs = sent["decisions"][0]["inputs"]
    assert inputs["timezone"] == "Europe/Madrid" and inputs["tz_version"] == tzdata.IANA_VERSION
    assert inputs["budget_after"] == 1
    assert sent["rendered_text"] == "Your summary is ready" and sent["whatsapp_message_id"].startswith("wamid.fake.")

    whatsapp.fail_next(1)  # the next send gets a 503; the wake-up timer retries it after the backoff
    second = queue(api, "ana", "Your invoice is ready", agent_id="billing")
    retried = eventually(lambda: message(api, second, "sent"), "the failed send retried by the timer")
    assert retried["attempts"] == 2
    assert whatsapp.texts_to("34611000001") == ["Your summary is ready", "Your invoice is ready"]
    queue_view = api.get("/v1/outbound/queue", params={"user_id": "ana"}).json()
    assert {(c["status"], c["priority"], c["count"]) for c in queue_view["counts"]} == {("sent", "medium", 2)}
    budget = eventually(lambda: [b for b in api.get("/v1/outbound/budgets", params={
        "date": inputs["local_date"]}).json() if b["user_id"] == "ana" and b["last_message_at"]], "ana's budget")
    assert (budget[0]["sent"], budget[0]["limit"]) == (2, 10)
    # The console's chart counts decisions and sends per day; the trace follows one message end to end.
    daily = api.get("/v1/outbound/decisions/daily").json()
    totals = {d["decision"]: 0 for d in daily}
    for d in daily:
        totals[d["decision"]] += d["count"]
    assert totals["approved"] >= 2 and totals["sent"] >= 2
    hops = [h["type"] for h in api.get(f"/v1/trace/{first}").json()["hops"]]
    # Three events: the approval is the send request, and the send carries its rendering.
    assert hops == ["outbound.message.queued", "outbound.message.approved", "outbound.message.sent"]
    assert api.post("/v1/outbound", json={"user_id": "ana", "agent_id": "x", "message_data": {"type": "text"},
                                          "priority": "now"}).status_code == 422


def test_a_redelivered_tick_and_send_request_each_send_once(api: httpx.Client, runtime: Runtime,
                                                           whatsapp: FakeWhatsApp) -> None:
    start, end = quiet_now()
    prefs(api, "bea", "34611000002", start, end)
    held = queue(api, "bea", "Good morning, Bea")
    deferred = eventually(lambda: message(api, held, "deferred"), "the message held for quiet hours")
    assert deferred["reason"] == "quiet_hours"
    due = datetime.fromisoformat(deferred["due_at"])
    tick = {"type": "outbound.user.ticked", "occurred_at": (due + timedelta(seconds=1)).isoformat(),
            "source_id": "scheduler:bea:1", "payload": {"user_id": "bea"}}
    assert api.post("/v1/events", json={"events": [tick, tick]}).status_code == 202
    assert api.post("/v1/events", json=tick).status_code == 202
    released = eventually(lambda: message(api, held, "sent"), "the message released by the external tick")
    assert [d["decision"] for d in released["decisions"]] == ["deferred", "released"]
    # The deferral still says when it was due, in UTC and on the user's clock with the zone.
    until = released["decisions"][0]["deferred_until"]
    assert datetime.fromisoformat(until["at"]) == due and until["timezone"] == "Europe/Madrid"
    assert datetime.fromisoformat(until["local_time"]) == due and until["abbreviation"] in ("CET", "CEST")

    request = _release(runtime.settings, held)
    assert request.payload.send is not None and request.payload.send.attempt == 1
    asyncio.run(_publish(runtime.settings, request))  # the same release and send request, delivered again
    # An urgent message on the same stream is handled after the redelivered request: once it is sent, that is done.
    marker = queue(api, "bea", "Urgent: card expired", priority="urgent", can_delay=False)
    eventually(lambda: message(api, marker, "sent"), "the urgent message sent in quiet hours")
    assert whatsapp.texts_to("34611000002") == ["Good morning, Bea", "Urgent: card expired"]
    assert message(api, held, "sent") is not None


def test_activity_from_a_conversation_message_releases_a_held_message(api: httpx.Client, whatsapp: FakeWhatsApp) -> None:
    start, end = quiet_now()
    prefs(api, "carla", "34611000003", start, end)
    held = queue(api, "carla", "Carla, your match is here")
    eventually(lambda: message(api, held, "deferred"), "the message held for quiet hours")
    assert api.get("/v1/users/carla/activity").json()["active"] is False
    inbound = {"type": "conversation.message.received", "occurred_at": datetime.now(UTC).isoformat(),
               "source_id": "wamid.carla.1", "payload": {"contact": "34611000003", "whatsapp_message_id": "wamid.carla.1",
                                                         "message_type": "text", "text": "hola"}}
    assert api.post("/v1/events", json=inbound).status_code == 202
    sent = eventually(lambda: message(api, held, "sent"), "the held message released by activity")
    assert sent["decisions"][-1]["reason"] == "active_user" and sent["decisions"][-1]["inputs"]["active"]
    activity = api.get("/v1/users/carla/activity").json()
    assert activity["active"] is True and activity["last_inbound_at"]
    assert "Carla, your match is here" in whatsapp.texts_to("34611000003")


def test_simulate_shows_the_diff_and_replay_verifies(api: httpx.Client, runtime: Runtime,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.domains.outbound import DOMAIN

    for key, value in settings_env(runtime.settings).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    cli = typer.Typer()
    DOMAIN.commands(cli)  # type: ignore[misc]
    result = CliRunner().invoke(cli, ["outbound", "simulate", "--daily-limit", "0", "--quiet-hours", "00:00-00:00"],
                                env={"COLUMNS": "200"})
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    # With a limit of 0 only urgent messages could go: every sent message becomes deferred.
    assert "budget_exhausted" in result.output and "messages change outcome" in result.output
    assert "Good morning, Bea" not in result.output  # no rendering, no sends: decisions only

    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(runtime.settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "outbound_messages" in verify.stdout and "outbound_budgets" in verify.stdout


# -- log helpers ------------------------------------------------------------------------------------------------


def _release(settings: Settings, message_id: str) -> Envelope:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT event_id, tenant_id, stream_id, type, schema_version, occurred_at, recorded_at, correlation_id,"
            " causation_id, actor, payload FROM events WHERE type = 'outbound.message.released'"
            " AND payload->>'message_id' = %s", (message_id,)).fetchone()
    names = ("event_id", "tenant_id", "stream_id", "type", "schema_version", "occurred_at", "recorded_at",
             "correlation_id", "causation_id", "actor")
    document = dict(zip(names, row[:-1], strict=True))
    return Envelope(**document, payload=payload_from_builtins(row[3], row[4], row[-1]))


async def _publish(settings: Settings, envelope: Envelope) -> None:
    async with Publisher(settings) as publisher:
        await publisher.publish([envelope])
