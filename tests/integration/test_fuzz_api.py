"""Every route of the OpenAPI document fuzzed (schemathesis, bounded) against the running API: no 5xx, and every
answer matches the document (a 422's body included).

Valid and invalid inputs are generated per operation, with a tenant token, a service token and a learner token, so
each route is reached past its authentication. The run is bounded (FUZZ_EXAMPLES cases per operation, mode and token:
about 1,700 requests, under a minute on two cores); `BATON_FUZZ_EXAMPLES` raises it for a longer hunt.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.errors import InvalidSchema  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from streams.auth import issue_token  # noqa: E402
from streams.runtime import Runtime  # noqa: E402
from tests.fixtures.runtime import module_runtime

FUZZ_EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "6"))
# A route that streams until the client leaves: fuzzed with the tenant token only, which it refuses.
STREAMING = {"/v1/events/stream"}


@pytest.fixture(scope="module")
def fuzzed_runtime(bootstrap_servers: str, postgres_server_url: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("fuzz") / "baton") as running:
        yield running


def fuzz(api_url: str, tokens: dict[str, str], max_examples: int) -> dict[str, object]:
    """Run every operation × generation mode × token for max_examples cases; count answers, 5xx and mismatches."""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    mismatches: list[str] = []
    cases = 0

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for who, token in tokens.items():
                if operation.path in STREAMING and who != "tenant":
                    continue

                @given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis_settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.explicit, Phase.generate],
                                     suppress_health_check=list(HealthCheck))
                def run(case: schemathesis.Case) -> None:
                    nonlocal cases
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    cases += 1
                    try:
                        response = case.call(base_url=api_url, headers=headers, timeout=30)
                    except requests.RequestException as exc:  # no answer at all counts as a server error
                        statuses[0] += 1
                        server_errors.append(f"{who} {mode.value} {case.method} {case.formatted_path} → no answer: "
                                             f"{type(exc).__name__}")
                        return
                    statuses[response.status_code] += 1
                    where = f"{who} {mode.value} {case.method} {case.formatted_path} → {response.status_code}"
                    if response.status_code >= 500:
                        server_errors.append(f"{where}: {response.text[:200]}")
                        return
                    try:
                        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                    except FailureGroup as exc:
                        mismatches.append(f"{where}: {str(exc.exceptions[0])[:300]}")
                    except InvalidSchema as exc:  # the document itself cannot describe what was answered
                        mismatches.append(f"{where}: invalid schema: {str(exc)[:300]}")

                try:
                    run()
                except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
                    pass
    return {"cases": cases, "statuses": dict(sorted(statuses.items())), "server_errors": server_errors,
            "mismatches": mismatches}


def test_every_route_of_the_openapi_document_answers_fuzzed_input_without_a_server_error(
        fuzzed_runtime: Runtime) -> None:
    settings = fuzzed_runtime.settings
    tokens = {"tenant": issue_token(settings, "acme"), "service": issue_token(settings, "acme", service=True),
              "learner": issue_token(settings, "acme", subject="fuzz-learner")}
    started = time.monotonic()
    found = fuzz(fuzzed_runtime.api_url, tokens, FUZZ_EXAMPLES)
    report = (f"fuzz: {found['cases']} cases in {time.monotonic() - started:.0f} s, "
              f"{len(found['server_errors'])} 5xx, {len(found['mismatches'])} schema mismatches; "
              f"statuses {found['statuses']}")
    print(report)
    report_file = os.environ.get("BATON_FUZZ_REPORT")
    if report_file:
        Path(report_file).write_text("\n".join([report, *found["server_errors"], *found["mismatches"]]) + "\n")
    assert not found["server_errors"], "\n".join([report, *found["server_errors"][:20]])
    assert not found["mismatches"], "\n".join([report, *found["mismatches"][:20]])
