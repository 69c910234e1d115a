"""The learning routers without a broker: who the learner is, the error format, and what reaches the publisher."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from projections.learning.routes import LearningRoute
from schemas.learning import IntentSynced
from streams.auth import issue_token
from streams.domains.learning import DOMAIN as LEARNING
from streams.publisher import PublishError
from streams.settings import Settings

INTENT = {"topic": "Machine Learning", "depth": "informed", "end_goal": "Build production ML models",
          "time_per_day_min": 60}


class RecordingPublisher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.envelopes: list = []

    async def publish(self, envelopes):
        if self.fail:
            raise PublishError("broker down")
        self.envelopes.extend(envelopes)
        return [e.event_id for e in envelopes]


def client(publisher: RecordingPublisher) -> tuple[TestClient, Settings]:
    settings = Settings()
    app = FastAPI()
    app.state.settings = settings
    app.state.publisher = publisher
    for router in LEARNING.routers():  # the command and the query routes, as the API includes them
        app.include_router(router)
    return TestClient(app), settings


def bearer(settings: Settings, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, 'acme', **claims)}"}


def test_intent_sync_answers_the_intent_and_logs_it_for_the_tokens_learner():
    publisher = RecordingPublisher()
    api, settings = client(publisher)
    response = api.post("/v1/learning/intent.sync", json=INTENT,
                        headers={**bearer(settings, subject="ada"), "X-User-ID": "mallory"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] is True and body["user_tz"] == "UTC" and body["meta"] == {}
    (envelope,) = publisher.envelopes
    assert isinstance(envelope.payload, IntentSynced) and envelope.payload.learner == "ada"
    assert envelope.stream_id == "learner:acme:ada" and str(envelope.payload.intent.intent_id) == body["intent_id"]
    assert envelope.occurred_at.isoformat().replace("+00:00", "Z") == body["created_at"]


def test_a_service_token_acts_for_x_user_id_and_needs_it():
    publisher = RecordingPublisher()
    api, settings = client(publisher)
    service = bearer(settings, subject="edge", service=True)
    assert api.post("/v1/learning/intent.sync", json=INTENT, headers={**service, "X-User-ID": "ada"}).status_code == 200
    assert publisher.envelopes[0].payload.learner == "ada"
    missing = api.post("/v1/learning/intent.sync", json=INTENT, headers=service)
    assert missing.status_code == 400 and missing.json() == {"error": "X-User-ID: required with a service token",
                                                             "code": "invalid_request"}


def test_errors_have_the_error_and_code_fields():
    publisher = RecordingPublisher()
    api, settings = client(publisher)
    assert api.post("/v1/learning/intent.sync", json=INTENT).json()["code"] == "unauthorized"
    malformed = api.post("/v1/learning/intent.sync", content=b"{", headers={**bearer(settings, subject="ada"),
                                                                           "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["code"] == "invalid_request"
    short = api.post("/v1/learning/intent.sync", json={**INTENT, "time_per_day_min": 0},
                     headers=bearer(settings, subject="ada"))
    assert short.status_code == 400 and short.json()["field"] == "time_per_day_min"
    assert publisher.envelopes == []  # bad input never reaches the log


def test_a_log_failure_is_a_503_and_an_unexpected_one_a_500():
    api, settings = client(RecordingPublisher(fail=True))
    down = api.post("/v1/learning/intent.sync", json=INTENT, headers=bearer(settings, subject="ada"))
    assert down.status_code == 503 and down.json()["code"] == "log_unavailable" and down.headers["Retry-After"]

    router = APIRouter(route_class=LearningRoute)

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a detail callers must not see")

    app = FastAPI()
    app.include_router(router)
    failed = TestClient(app).get("/boom")
    assert failed.status_code == 500 and failed.json() == {"error": "internal error", "code": "internal"}
