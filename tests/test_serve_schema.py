"""schemathesis against the service's own OpenAPI document, on loopback: whatever it
generates from the schema for every operation (valid and invalid bodies, paths and
parameters), the service never answers with a server error."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from flexlog.serve import Settings, create_app  # noqa: E402
from flexlog.serve.runner import BackgroundServer  # noqa: E402

KEY = "sk-schema"
EXAMPLES = 40


@pytest.fixture(scope="module")
def live(adfa_demo: Path):
    settings = Settings(admin_api_keys=(KEY,), cache="memory")  # admin: reaches corrections
    app = create_app(adfa_demo / "bundle", settings)
    with BackgroundServer(app) as server:
        yield server


def test_no_server_error_on_generated_requests(live) -> None:
    def call(case) -> None:
        case.call_and_validate(
            base_url=live.url,
            headers={"Authorization": f"Bearer {KEY}"},
            checks=[not_a_server_error],
            timeout=60,
        )

    schema = schemathesis.openapi.from_url(
        f"{live.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/detect",
        "/v1/cache/{key}",
        "/metrics",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            call(case)
            # generated model names are unknown (404); ask the real one with the same body
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
                case.body["model"] = "flexlog"
                call(case)
            if "model" in (case.path_parameters or {}):
                case.path_parameters["model"] = "dt"
                call(case)

        check()
