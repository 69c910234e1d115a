"""The routing model (agents/routing.py LaneModel): the shared LlmClient and real `anthropic` client against the
local Messages API fake, priced by the settings' one price table."""

from __future__ import annotations

import json
import time

import httpx2
import pytest
from pydantic import SecretStr

from agents.conversations.routing import ROUTING_SYSTEM, LaneModel, RoutingError
from agents.llm import LlmClient
from streams.settings import ModelPrice, Settings
from tests.fixtures.anthropic import FakeAnthropic, error_body

MODEL = "claude-haiku-4-5"


def message_response(text: str, input_tokens: int = 120, output_tokens: int = 2) -> dict:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def model_for(fake: FakeAnthropic, timeout_s: float = 5.0,
              **settings) -> tuple[LaneModel, list[httpx2.Request]]:
    """A lane model on a fresh shared client for the fake; the HTTP requests it sends are recorded as sent."""
    requests: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        requests.append(request)

    client = LlmClient(Settings(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=fake.base_url, **settings),
                       http_client=httpx2.AsyncClient(event_hooks={"request": [record]}))
    return LaneModel(client, MODEL, timeout_s), requests


def answering(document: dict, status: int = 200):
    return lambda _body: (status, document)


async def test_classify_sends_one_short_request_and_reads_the_lane():
    with FakeAnthropic(responder=answering(message_response("commerce"))) as fake:
        model, requests = model_for(fake)
        result = await model.classify("¿Cuánto cuesta el café?")
        await model.llm.aclose()

    assert result.lane == "commerce"
    assert result.completion.model == "claude-haiku-4-5-20251001"
    assert (result.completion.usage.input_tokens, result.completion.usage.output_tokens) == (120, 2)
    (request,) = requests
    assert request.method == "POST" and str(request.url) == f"{fake.base_url}/v1/messages"
    credential = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    assert credential.endswith("sk-test") and "anthropic-version" in request.headers
    body = json.loads(request.content)
    assert body["model"] == MODEL and body["max_tokens"] <= 10 and body["system"] == ROUTING_SYSTEM
    assert body["messages"] == [{"role": "user", "content": "¿Cuánto cuesta el café?"}]
    assert [r["path"] for r in fake.requests] == ["/v1/messages"]


@pytest.mark.parametrize(("answer", "lane"), [("support", "support"), ("Info.", "info"), (" commerce\n", "commerce")])
async def test_answer_is_parsed_leniently(answer, lane):
    with FakeAnthropic(reply=answer) as fake:
        model, _ = model_for(fake)
        assert (await model.classify("x")).lane == lane
        await model.llm.aclose()


async def test_cost_uses_the_per_million_token_prices():
    # The routing model's cost comes from the one price table; its default prices the Haiku model at 1 / 5 USD.
    with FakeAnthropic(responder=answering(message_response("info", 1_000, 10))) as fake:
        model, _ = model_for(fake)
        result = await model.classify("horario")
        await model.llm.aclose()
    assert result.completion.cost_usd == pytest.approx(1_000 * 1.0 / 1e6 + 10 * 5.0 / 1e6)


async def test_cost_follows_the_configured_price_table():
    prices = {MODEL: ModelPrice(input_usd_per_mtok=2.0, output_usd_per_mtok=7.0)}
    with FakeAnthropic(responder=answering(message_response("info", 1_000, 10))) as fake:
        model, _ = model_for(fake, llm_prices=prices)
        result = await model.classify("horario")
        await model.llm.aclose()
    assert result.completion.cost_usd == pytest.approx(1_000 * 2.0 / 1e6 + 10 * 7.0 / 1e6)


@pytest.mark.parametrize("answer", ["I think it is commerce", "billing", ""])
async def test_unparseable_answer_raises(answer):
    with FakeAnthropic(responder=answering(message_response(answer))) as fake:
        model, _ = model_for(fake)
        with pytest.raises(RoutingError, match="unparseable") as raised:
            await model.classify("x")
        await model.llm.aclose()
    # The answered call is kept on the error: its tokens were billed.
    assert raised.value.completion is not None and raised.value.completion.usage.input_tokens == 120


async def test_answer_without_text_block_raises():
    document = message_response("info") | {"content": []}
    with FakeAnthropic(responder=answering(document)) as fake:
        model, _ = model_for(fake)
        with pytest.raises(RoutingError):
            await model.classify("x")
        await model.llm.aclose()


@pytest.mark.parametrize(("status", "kind"), [(500, "api_error"), (529, "overloaded_error")])
async def test_server_errors_raise_without_retrying(status, kind):
    error = error_body(kind, "Overloaded" if status == 529 else "Internal")
    with FakeAnthropic(responder=answering(error, status)) as fake:
        model, requests = model_for(fake)
        with pytest.raises(RoutingError, match=str(status)) as raised:
            await model.classify("x")
        await model.llm.aclose()
    assert len(requests) == 1 and len(fake.requests) == 1
    assert raised.value.completion is None


async def test_network_timeout_raises_routing_error():
    def slow(_body):
        time.sleep(1.0)
        return None

    with FakeAnthropic(reply="info", responder=slow) as fake:
        model, _ = model_for(fake, timeout_s=0.2)
        with pytest.raises(RoutingError, match="Timeout"):
            await model.classify("x")
        await model.llm.aclose()
