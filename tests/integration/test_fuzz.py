"""Schemathesis against the served OpenAPI document: zero server errors, zero schema violations.

The real server (`facerec serve`: its lifespan loads the real models and opens a SQLite store) runs on a loopback
port; schemathesis reads ``/schema/openapi.json`` from it and sends bounded, generated requests with
a valid bearer token. Stateful runs follow the schema's links (compare -> get / update / delete); their compare
steps carry two real photos so that the links have a scan to follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from harness import LOCAL_CPU
from hypothesis import HealthCheck, Phase, given
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tooling.serve import ServeProcess

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, fast
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Served:
    url: str
    token: str
    photos: tuple[bytes, bytes]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _small_jpeg(path: Path) -> bytes:
    import io

    with Image.open(path) as raw:
        img = raw.convert("RGB")
    img.thumbnail((320, 320))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[Served]:
    """`facerec serve` (models, store and retention owned by the app's lifespan) on a loopback port."""
    env = {**LOCAL_CPU, "FACEREC_ORT_INTRA_THREADS": "1", "FACEREC_MAX_FILE_BYTES": "1000000",
           "FACEREC_MAX_REQUEST_BYTES": "2500000", "FACEREC_RETENTION_DAYS": "30"}
    server = ServeProcess(tmp_path_factory.mktemp("fuzz") / "data", env=env, grpc=False,
                          ready_path="/health/ready").start()
    try:
        photos = (_small_jpeg(faces_dir / "obama_01_portrait_2012.jpg"),
                  _small_jpeg(faces_dir / "obama_02_congress_2009.jpg"))
        yield Served(server.url, server.token("fuzz-co", "fuzzer"), photos)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def schema(served: Served) -> Any:
    loaded = schemathesis.openapi.from_url(f"{served.url}/schema/openapi.json")
    return loaded


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_is_valid_and_has_links(schema: Any) -> None:
    ops = _operations(schema)
    labels = {op.label for op in ops}
    assert {"POST /v1/compare_face", "GET /v1/face-recognition/{scan_id}", "PUT /v1/face-recognition/{scan_id}",
            "DELETE /v1/face-recognition/{scan_id}", "GET /v1/face-recognition"} <= labels
    links = schema.raw_schema["paths"]["/v1/compare_face"]["post"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in links.values()} == {"getScan", "updateScan", "deleteScan"}


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_every_operation_stateless(schema: Any, served: Served, mode: schemathesis.GenerationMode) -> None:
    """Each operation, MAX_EXAMPLES generated requests (valid ones, then schema-violating ones): never a 5xx,
    every answer as documented."""
    failures: list[str] = []
    for operation in _operations(schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @SETTINGS
        def run(case: Any) -> None:
            case.call_and_validate(headers=served.auth, checks=CHECKS, timeout=60)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing in the schema can be violated
        except Exception as exc:  # collect every operation's failure, report them together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_unauthenticated_fuzzing_never_errors(schema: Any, served: Served) -> None:
    """Without a token every protected operation answers its documented 401 (a few examples each)."""
    failures: list[str] = []
    for operation in _operations(schema):

        @given(case=operation.as_strategy())
        @hypothesis.settings(SETTINGS, max_examples=5)
        def run(case: Any) -> None:
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_stateful_links_compare_get_update_delete(schema: Any, served: Served) -> None:
    """Scenarios following the links; compares carry real photos, so get/update/delete reach a stored scan."""
    calls: dict[str, list[int]] = {}

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            if case.operation.path.endswith("/compare_face"):
                case.body = {"channel": "WEB", "reference": "fuzz-stateful", "file1": served.photos[0],
                             "file2": served.photos[1]}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": served.auth, "timeout": 60}

        def after_call(self, response: Any, case: Any) -> None:
            calls.setdefault(case.operation.label, []).append(response.status_code)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Machine.run(settings=hypothesis.settings(SETTINGS, max_examples=12, stateful_step_count=4))
    compared = calls.get("POST /v1/compare_face", []) + calls.get("POST /face-recognition-sdk/v1/compare_face", [])
    assert 200 in compared, calls
    followed = [s for label, codes in calls.items() if "{scan_id}" in label for s in codes]
    assert 200 in followed or 204 in followed, calls  # a link reached a stored scan
