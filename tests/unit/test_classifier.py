"""AnthropicClassifier: the real anthropic client against a local Messages API fake."""

from __future__ import annotations

import json

import httpx2
import pytest

from agents.classifier import SYSTEM_PROMPT, AnthropicClassifier, ClassifierError

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


def classifier_for(handler, **options) -> tuple[AnthropicClassifier, list[httpx2.Request]]:
    requests: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return handler(request)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(record))
    classifier = AnthropicClassifier("sk-test", MODEL, 5.0, base_url="http://anthropic.test", http_client=client,
                                     **options)
    return classifier, requests


async def test_classify_sends_one_short_request_and_reads_the_lane():
    classifier, requests = classifier_for(lambda r: httpx2.Response(200, json=message_response("commerce")))
    result = await classifier.classify("¿Cuánto cuesta el café?")

    assert result.lane == "commerce"
    assert result.model == "claude-haiku-4-5-20251001"
    assert (result.input_tokens, result.output_tokens) == (120, 2)
    (request,) = requests
    assert request.method == "POST" and str(request.url) == "http://anthropic.test/v1/messages"
    credential = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    assert credential.endswith("sk-test") and "anthropic-version" in request.headers
    body = json.loads(request.content)
    assert body["model"] == MODEL and body["max_tokens"] <= 10 and body["system"] == SYSTEM_PROMPT
    assert body["messages"] == [{"role": "user", "content": "¿Cuánto cuesta el café?"}]


@pytest.mark.parametrize(("answer", "lane"), [("support", "support"), ("Info.", "info"), (" commerce\n", "commerce")])
async def test_answer_is_parsed_leniently(answer, lane):
    classifier, _ = classifier_for(lambda r: httpx2.Response(200, json=message_response(answer)))
    assert (await classifier.classify("x")).lane == lane


async def test_cost_uses_the_per_million_token_prices():
    classifier, _ = classifier_for(lambda r: httpx2.Response(200, json=message_response("info", 1_000, 10)),
                                   input_usd_per_mtok=1.0, output_usd_per_mtok=5.0)
    result = await classifier.classify("horario")
    assert result.cost_usd == pytest.approx(1_000 * 1.0 / 1e6 + 10 * 5.0 / 1e6)


@pytest.mark.parametrize("answer", ["I think it is commerce", "billing", ""])
async def test_unparseable_answer_raises(answer):
    classifier, _ = classifier_for(lambda r: httpx2.Response(200, json=message_response(answer)))
    with pytest.raises(ClassifierError, match="unparseable"):
        await classifier.classify("x")


async def test_answer_without_text_block_raises():
    document = message_response("info") | {"content": []}
    classifier, _ = classifier_for(lambda r: httpx2.Response(200, json=document))
    with pytest.raises(ClassifierError):
        await classifier.classify("x")


@pytest.mark.parametrize(("status", "kind"), [(500, "api_error"), (529, "overloaded_error")])
async def test_server_errors_raise_without_retrying(status, kind):
    error = {"type": "error", "error": {"type": kind, "message": "Overloaded" if status == 529 else "Internal"}}
    classifier, requests = classifier_for(lambda r: httpx2.Response(status, json=error))
    with pytest.raises(ClassifierError, match=str(status)):
        await classifier.classify("x")
    assert len(requests) == 1


async def test_network_timeout_raises_classifier_error():
    def timeout(request):
        raise httpx2.ReadTimeout("timed out", request=request)

    classifier, _ = classifier_for(timeout)
    with pytest.raises(ClassifierError, match="Timeout"):
        await classifier.classify("x")
