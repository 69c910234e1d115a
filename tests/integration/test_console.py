"""The web console in a real browser (headless Chromium): sign in, conversations as a chat, charts, trace, system."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as until
from selenium.webdriver.support.ui import WebDriverWait

from streams.auth import issue_token
from streams.runtime import Runtime
from streams.settings import Settings
from tests.fixtures.anthropic import FakeAnthropic
from tests.fixtures.pipeline import produce_records
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def console_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime whose router asks a local Anthropic fake, so the cost pages have calls to show."""
    with FakeAnthropic(reply="info") as fake:
        configured = settings.model_copy(update={"api_port": 0, "anthropic_api_key": SecretStr("sk-test"),
                                                 "anthropic_base_url": fake.base_url})
        with Runtime(configured).start() as runtime:
            yield runtime


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        # The one test that needs a program pip cannot install; .ci/run installs it and requires it.
        missing = "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
        (pytest.fail if os.environ.get("BATON_REQUIRE_BROWSER") else pytest.skip)(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def inbound(n: int, text: str) -> dict:
    # One session (two minutes apart) spread over two UTC days, so the chart has two bars.
    at = ("2026-12-01T23:59:00Z", "2026-12-02T00:01:00Z")[n]
    return {"type": "conversation.message.received", "occurred_at": at,
            "source_id": f"console-{n}", "payload": {"contact": "34644000001", "contact_name": "Ana",
                                                     "whatsapp_message_id": f"wamid.console.{n}",
                                                     "message_type": "text", "text": text}}


def test_console_shows_conversations_costs_trace_and_system_pages(console_runtime: Runtime, browser) -> None:
    settings = console_runtime.settings
    service = issue_token(settings, "acme", service=True)
    headers = {"Authorization": f"Bearer {service}"}
    with httpx.Client(base_url=console_runtime.api_url, headers=headers, timeout=10) as api:
        events = [inbound(0, "¿Abrís el domingo?"), inbound(1, "¿Hacéis envíos?")]
        assert api.post("/v1/events", json={"events": events}).status_code == 202
        eventually(lambda: (r := api.get("/v1/conversations/34644000001")).status_code == 200
                   and r.json()["replies_sent"] == 2, "both messages answered")
        eventually(lambda: api.get("/v1/costs").json()["groups"], "routing calls on the cost ledger")
    asyncio.run(produce_records(settings, settings.topic("conversations"),
                                [(b"conversation:acme:x", json.dumps({"type": "conversation.bogus",
                                                                      "tenant_id": "acme"}).encode())]))

    wait = WebDriverWait(browser, 60)
    browser.get(f"{console_runtime.api_url}/console")
    wait.until(until.visibility_of_element_located((By.ID, "token"))).send_keys(service)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
    wait.until(until.text_to_be_present_in_element((By.ID, "who"), "acme (service)"))
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#nav a")]
    # A page per registered domain that has one, in the registry's order, then the system pages.
    assert nav[:2] == ["Conversations", "Costs"] and nav[-2:] == ["Trace", "System"]
    assert {"Learning", "Outbound", "Steps", "Workflow"} <= set(nav)

    # Conversations: the contact listed, messages per day by lane drawn as bars, then the chat.
    row = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "#page tr.link")))
    assert "Ana (34644000001)" in row.text
    bars = browser.find_elements(By.CSS_SELECTOR, "#lanes-per-day rect")
    assert sorted((b.get_attribute("data-category"), b.get_attribute("data-series")) for b in bars) == [
        ("2026-12-01", "info"), ("2026-12-02", "info")]
    row.click()
    wait.until(until.presence_of_element_located((By.CSS_SELECTOR, ".bubble.agent")))
    bubbles = browser.find_elements(By.CSS_SELECTOR, ".bubble")
    roles = [b.get_attribute("class").split()[1] for b in bubbles]
    assert roles[0] == "contact" and sorted(roles) == ["agent", "agent", "contact", "contact"]
    assert "¿Abrís el domingo?" in bubbles[0].text
    replies = [b.text for b in bubbles if "agent" in b.get_attribute("class")]
    assert all("sent" in text and "info" in text for text in replies)

    # Trace from a chat bubble: the message's chain, hop by hop.
    bubbles[0].find_element(By.LINK_TEXT, "trace").click()
    wait.until(until.presence_of_element_located((By.CSS_SELECTOR, ".timeline li")))
    hops = [li.get_attribute("data-type") for li in browser.find_elements(By.CSS_SELECTOR, ".timeline li")]
    assert hops[0] == "conversation.message.received" and "conversation.reply.sent" in hops

    # Costs: a bar per day and model, totals per domain; fractions of a dollar scaled to fill the chart.
    browser.get(f"{console_runtime.api_url}/console#/costs")
    wait.until(until.presence_of_element_located((By.CSS_SELECTOR, "#cost-per-day rect")))
    assert "conversations" in browser.find_element(By.ID, "page").text
    per_day: dict[str, float] = {}
    for rect in browser.find_elements(By.CSS_SELECTOR, "#cost-per-day rect"):
        assert float(rect.get_attribute("data-value")) < 1  # the fake's calls cost far less than a dollar
        category = rect.get_attribute("data-category")
        per_day[category] = per_day.get(category, 0) + float(rect.get_attribute("height"))
    assert abs(max(per_day.values()) - 180) < 0.5, per_day  # the costliest day is as tall as the chart

    # System: roles up, the dead letter listed with its reason, re-drive refused because it still does not decode.
    eventually(lambda: len(httpx.get(f"{console_runtime.api_url}/v1/ops/deadletters", headers=headers,
                                     timeout=10).json()) == 2, "the worker's and the projector's letters")
    browser.get(f"{console_runtime.api_url}/console#/system")
    button = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "button[data-letter]")))
    page = browser.find_element(By.ID, "page").text
    assert "worker" in page and "projector" in page and "decode: invalid envelope" in page
    states = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#page table")[0].find_elements(By.CSS_SELECTOR, ".badge")]
    assert states and set(states) == {"up"}, states  # the API too: it answers for itself
    # The bad record is one row, refused by the worker's fold and by the projector, each stage named.
    assert len(browser.find_elements(By.CSS_SELECTOR, "button[data-letter]")) == 1
    letters = button.find_element(By.XPATH, "./ancestor::tr").find_elements(By.CSS_SELECTOR, ".letter")
    assert sorted(d.get_attribute("data-stage") for d in letters) == ["fold:conversations", "projector"]
    assert sorted(d.find_element(By.CSS_SELECTOR, ".badge").text for d in letters) == [
        "projector · read models", "worker · fold conversations"]
    button.click()
    wait.until(until.text_to_be_present_in_element((By.ID, "redrive-result"), "refused"))

    # Every other domain's page renders (empty here) without an error.
    for page_id in ("outbound", "workflow", "steps", "learning"):
        browser.get(f"{console_runtime.api_url}/console#/{page_id}")
        browser.refresh()
        wait.until(until.presence_of_element_located((By.CSS_SELECTOR, "#page table, #page .columns, #page p")))
        wait.until(lambda d: "Loading" not in d.find_element(By.ID, "page").text)
        assert not browser.find_elements(By.CSS_SELECTOR, "#page p.error"), browser.find_element(By.ID, "page").text

    # The console has an icon (no 404 in the browser's console), and so has every other page of the API.
    icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
    for url in (icon, f"{console_runtime.api_url}/favicon.ico"):
        answer = httpx.get(url, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml"), url
    assert not [e for e in browser.get_log("browser") if "404" in e["message"]]

    # A tenant token sees its pages but not the system's.
    browser.execute_script("localStorage.setItem('baton.console.token', arguments[0])", issue_token(settings, "acme"))
    browser.get(f"{console_runtime.api_url}/console#/system")
    browser.refresh()
    wait.until(until.text_to_be_present_in_element((By.ID, "page"), "need a service token"))
    assert browser.find_element(By.ID, "who").text == "acme"



def test_domain_pages_show_the_queue_trail_board_audit_bugs_and_savings(runtime: Runtime, browser) -> None:
    service = issue_token(runtime.settings, "acme", service=True)
    with httpx.Client(base_url=runtime.api_url, headers={"Authorization": f"Bearer {service}"}, timeout=30) as api:
        prefs = {"timezone": "Europe/Madrid", "quiet_hours": {"start": "00:00", "end": "00:00"}, "daily_limit": 5,
                 "contact": "34633000001"}
        assert api.put("/v1/users/ana/preferences", json=prefs).status_code == 202
        queued = api.post("/v1/outbound", json={"user_id": "ana", "agent_id": "saga",
                                                "message_data": {"type": "text", "text": "Your summary is ready"}})
        message_id = queued.json()["message_id"]
        assert api.post("/v1/sprints", json={"sprint_code": "SPR-9", "title": "Console"}).status_code == 202
        assert api.post("/v1/tasks", json={"task_code": "TSK-9", "title": "Board", "sprint_code": "SPR-9",
                                           "type": "feature"}).status_code == 201
        assert api.post("/v1/tasks/TSK-9/start", json={}).status_code == 200
        overridden = api.post("/v1/tasks/TSK-9/phases/complete",
                              json={"override": True, "reason": "spec lives in the ticket", "actor": "user:ana"})
        assert overridden.status_code == 200, overridden.text
        assert api.post("/v1/bugs", json={"task_code": "TSK-9", "message": "KeyError: 'sku' at 0x7f3a",
                                          "file": "app/orders.py", "line": 42}).status_code == 200
        execution = {"execution_id": "exe-console", "agent_id": "saga", "user_id": "ana",
                     "steps": [{"step_id": "shape", "intent": "transform", "input": {"n": 1}, "spec": {"expression": "input"}}]}
        assert api.post("/v1/executions", json=execution).status_code == 202
        eventually(lambda: (r := api.get(f"/v1/outbound/messages/{message_id}")).status_code == 200
                   and r.json()["status"] == "sent", "the outbound message sent")
        eventually(lambda: api.get("/v1/tasks/TSK-9").json().get("overrides"), "the override projected")
        eventually(lambda: (r := api.get("/v1/executions/exe-console")).status_code == 200
                   and r.json()["status"] not in ("running", "started"), "the execution finished")

    wait = WebDriverWait(browser, 60)
    browser.get(f"{runtime.api_url}/console")
    wait.until(until.visibility_of_element_located((By.ID, "token"))).send_keys(service)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()

    # Outbound: the queue, decisions per day drawn, and the message's decision trail with its inputs.
    browser.get(f"{runtime.api_url}/console#/outbound")
    row = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "#page tr.link")))
    assert "ana" in row.text and "sent" in row.text
    assert browser.find_elements(By.CSS_SELECTOR, "#decisions-per-day rect")
    row.click()
    wait.until(until.text_to_be_present_in_element((By.ID, "page"), "Decision trail"))
    trail = browser.find_element(By.ID, "page").text
    assert "approved" in trail and "Europe/Madrid" in trail

    # Workflow: the task in the research column, then its override audit; the bug with its count.
    browser.get(f"{runtime.api_url}/console#/workflow/SPR-9")
    card = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, ".column[data-phase='research'] [data-task='TSK-9']")))
    assert "1" in browser.find_element(By.ID, "bugs").text and "app/orders.py:42" in browser.find_element(By.ID, "bugs").text
    card.click()
    overrides = wait.until(until.presence_of_element_located((By.ID, "overrides")))
    assert "user:ana" in overrides.text and "spec lives in the ticket" in overrides.text and "TASK.md" in overrides.text

    # Steps: the execution with its budget bars, then the savings ledger step by step.
    browser.get(f"{runtime.api_url}/console#/steps")
    row = wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "#page tr.link")))
    assert "exe-console" in row.text
    status = row.find_element(By.CSS_SELECTOR, ".badge")  # as the API says it, in the colour of a success
    assert status.text == "succeeded" and "ok" in status.get_attribute("class").split()
    row.click()
    ledger = wait.until(until.presence_of_element_located((By.ID, "savings")))
    assert "shape" in ledger.text and "transform" in ledger.text
