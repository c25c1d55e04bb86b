"""schemathesis against the service's own OpenAPI document, on loopback: whatever it
generates from the schema for every operation (valid and invalid bodies, paths and
parameters), the service never answers with a server error; and statefully, following the
document's OpenAPI links (a detected sequence's cache ``key`` into the cache operations, a
correction into its history, undo and delete), it never does either."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from flexlog.serve import Settings, create_app  # noqa: E402
from flexlog.serve.runner import BackgroundServer  # noqa: E402

KEY = "sk-schema"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 40
#: Stateful budget: scenarios, and calls per scenario (a few seconds on one core).
SCENARIOS = 60
STEPS = 8
CACHE_OPERATIONS = {
    "GetCacheEntry": ("get", "/v1/cache/{key}"),
    "CorrectCacheEntry": ("put", "/v1/cache/{key}"),
    "GetCacheHistory": ("get", "/v1/cache/{key}/history"),
    "UndoCacheCorrection": ("post", "/v1/cache/{key}/undo"),
    "DeleteCacheEntry": ("delete", "/v1/cache/{key}"),
}


@pytest.fixture(scope="module")
def live(adfa_demo: Path):
    settings = Settings(admin_api_keys=(KEY,), cache="memory")  # admin: reaches corrections
    app = create_app(adfa_demo / "bundle", settings)
    with BackgroundServer(app) as server:
        yield server


def _schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH)


def test_no_server_error_on_generated_requests(live) -> None:
    def call(case) -> None:
        case.call_and_validate(
            base_url=live.url,
            headers=AUTH,
            checks=[not_a_server_error],
            timeout=60,
        )

    schema = _schema(live)
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


# -- stateful: the OpenAPI links --------------------------------------------------------------
def _pointer(document: dict, ref: str) -> object:
    """The object a local JSON reference (``#/paths/~1v1~1cache~1{key}/get``) points at."""
    assert ref.startswith("#/"), ref
    node: object = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), ref
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_openapi_links_chain_detect_and_corrections(live) -> None:
    """``/openapi.json`` links a detection's first result key into every cache operation, and
    a correction (PUT) into the reads, undo and delete of the same key; every link resolves to
    an operation of the document that takes a ``key`` path parameter."""
    document = httpx.get(f"{live.url}/openapi.json", headers=AUTH, timeout=30).json()
    paths = document["paths"]
    detect = paths["/v1/detect"]["post"]["responses"]["200"]["links"]
    put = paths["/v1/cache/{key}"]["put"]["responses"]["200"]["links"]
    assert set(detect) == set(CACHE_OPERATIONS)
    assert set(put) == set(CACHE_OPERATIONS) - {"CorrectCacheEntry"}
    for links, expression in (
        (detect, "$response.body#/results/0/key"),
        (put, "$request.path.key"),
    ):
        for name, link in links.items():
            method, path = CACHE_OPERATIONS[name]
            assert link["parameters"] == {"key": expression}, (name, link)
            target = _pointer(document, link["operationRef"])
            assert target is paths[path][method], name
            assert any(p["name"] == "key" and p["in"] == "path" for p in target["parameters"])
    # and schemathesis reads them as transitions (a bad link raises here)
    assert _schema(live).as_state_machine().root_rules


#: Sequences the demo bundle answers (ADFA system call numbers), so that a detection has result
#: keys the links can carry into the cache (generated bodies mostly get 4xx or no result).
_EVENTS = st.lists(
    st.sampled_from(["3", "5", "6", "91", "102", "174", "240"]), min_size=1, max_size=8
)
_DETECT_BODIES = st.one_of(
    st.lists(_EVENTS, min_size=1, max_size=3).map(
        lambda seqs: {"sequences": [{"id": f"s{i}", "events": e} for i, e in enumerate(seqs)]}
    ),
    st.builds(
        lambda lines, window: {"lines": lines, "partition": "fixed", "window": window},
        st.lists(st.sampled_from(["open a", "read b 12", "close c"]), min_size=1, max_size=6),
        st.integers(1, 4),
    ),
)


def test_stateful_links_no_server_error(live) -> None:
    """schemathesis's state machine over the links, with an admin key: detect, then read,
    correct, read the history of, undo and delete the detected keys, in generated orders and
    with generated (also invalid) bodies; no call gets a 5xx. The linked transitions really
    ran: history and entry reads of keys that a detection or a correction had produced."""
    schema = _schema(live)

    @schema.hook("before_generate_body")
    def answerable_detections(context, strategy):
        operation = context.operation
        if operation is not None and operation.label == "POST /v1/detect":
            return st.one_of(strategy, _DETECT_BODIES)
        return strategy

    produced: set[str] = set()  # keys a detection answered or a correction wrote
    linked: Counter[tuple[str, int]] = Counter()  # (operation, status) of linked calls
    real: Counter[str] = Counter()  # linked cache calls with a key produced before
    audited = 0  # linked history reads that listed a correction

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case):
            return {"base_url": live.url, "headers": AUTH, "timeout": 60}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                checks=[not_a_server_error],
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

        def step(self, input):
            nonlocal audited
            case = input.case
            key = (case.path_parameters or {}).get("key")
            known = isinstance(key, str) and key.lower() in produced
            output = super().step(input)
            status = output.response.status_code
            if input.transition is not None and input.is_applied:
                linked[case.operation.label, status] += 1
                if known:
                    real[case.operation.label] += 1
                if status == 200 and case.operation.label == "GET /v1/cache/{key}/history":
                    audited += bool(json.loads(output.response.content)["data"])
            if status == 200 and case.operation.label == "POST /v1/detect":
                body = json.loads(output.response.content)
                produced.update(r["key"] for r in body["results"] if "key" in r)
            elif status == 200 and case.operation.label == "PUT /v1/cache/{key}":
                produced.add(key.lower())
            return output

    Workflow.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert produced, "no detection answered a sequence: the links had nothing to carry"
    assert real["GET /v1/cache/{key}/history"] > 0, (linked, real)
    assert real["GET /v1/cache/{key}"] > 0, (linked, real)
    assert linked["GET /v1/cache/{key}", 200] > 0, linked  # a detected key is in the cache
    assert sum(n for (op, _), n in linked.items() if op.startswith("PUT ")) > 0, linked
    assert audited > 0, "no linked history read listed a correction"
