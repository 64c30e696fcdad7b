"""Token claims and credentials beyond the signature, over HTTP and gRPC: time claims must be JSON numbers, a token
may live at most ``FACEREC_AUTH_MAX_TTL_S`` (default 24 h), ``nbf`` is optional (checked when present), and a
request carrying more than one ``Authorization`` header is refused instead of using the first.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import SCANS, Harness, assert_grpc, assert_problem, grpc_error

from server.api.grpc.gen.facerec.v1 import face_recognition_pb2 as pb
from server.auth import ALL_ROLES
from server.settings import PROJECT_ROOT

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.served()]

DAY = 86_400
YEAR_9999 = 253_402_300_799


async def _assert_refused(env: Harness, token: str) -> None:
    assert_problem(await env.http.get(SCANS, headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")
    err = await grpc_error(env.stub.ListScans(pb.ListScansRequest(),
                                              metadata=(("authorization", f"Bearer {token}"),)))
    assert_grpc(err, 401, "unauthorized")


async def _assert_accepted(env: Harness, token: str) -> None:
    resp = await env.http.get(SCANS, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    await env.stub.ListScans(pb.ListScansRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=60)


def _now() -> int:
    return int(time.time())


REFUSED: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("exp-numeric-string", lambda: {"exp": str(_now() + 600)}),
    ("exp-float-string", lambda: {"exp": f"{_now() + 600}.5"}),
    ("exp-bool", lambda: {"exp": True, "iat": None, "nbf": None}),
    ("exp-year-9999", lambda: {"exp": YEAR_9999}),
    ("exp-year-9999-without-iat", lambda: {"exp": YEAR_9999, "iat": None, "nbf": None}),
    ("lifetime-over-24h", lambda: {"iat": _now(), "exp": _now() + DAY + 3600}),
    ("backdated-iat-over-24h", lambda: {"iat": _now() - DAY, "exp": _now() + 3600}),
    ("no-iat-expiring-in-25h", lambda: {"iat": None, "exp": _now() + DAY + 3600}),
    ("iat-string", lambda: {"iat": str(_now())}),
    ("iat-list", lambda: {"iat": [_now()]}),
    ("nbf-string", lambda: {"nbf": str(_now())}),
    ("nbf-string-null", lambda: {"nbf": "null"}),
]


@pytest.mark.parametrize("changes", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_bad_time_claims_are_refused(env: Harness, changes: Callable[[], dict[str, Any]]) -> None:
    await _assert_refused(env, env.signed(**changes()))


ACCEPTED: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("no-nbf", lambda: {"nbf": None}),  # nbf is optional: several IdPs omit it (README "Tokens")
    ("no-iat-no-nbf", lambda: {"iat": None, "nbf": None}),
    ("float-times", lambda: {"iat": _now() + 0.25, "nbf": _now() - 0.5, "exp": _now() + 600.75}),
    ("lifetime-just-under-24h", lambda: {"iat": _now(), "exp": _now() + DAY - 60}),
]


@pytest.mark.parametrize("changes", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
async def test_valid_time_claims_are_accepted(env: Harness, changes: Callable[[], dict[str, Any]]) -> None:
    await _assert_accepted(env, env.signed(**changes()))


async def test_a_shorter_lifetime_cap_applies(serve_target: Any) -> None:
    async with serve_target(auth_max_ttl_s=300) as api:
        assert (await api.http.get(SCANS, headers=api.headers())).status_code == 401  # minted for 600 s
        issuer = api.runtime.local_issuer
        assert issuer is not None
        short = issuer.mint(api.company, "alice", ALL_ROLES, 240, "facerec")
        assert (await api.http.get(SCANS, headers={"Authorization": f"Bearer {short}"})).status_code == 200


# --------------------------------------------------------------------------- more than one Authorization header


async def test_two_authorization_headers_are_refused(env: Harness) -> None:
    a, b = env.token(company="acme"), env.token(company="globex")
    for values in ([f"Bearer {b}", f"Bearer {a}"], [f"Bearer {a}", "Bearer garbage.gar.bage"],
                   ["Bearer garbage.gar.bage", f"Bearer {a}"], [f"Bearer {a}", f"Bearer {a}"]):
        headers = [("Authorization", v) for v in values]
        assert_problem(await env.http.get(SCANS, headers=headers), 401, "unauthorized")
    # A proxy may fold them into one comma-separated value: not a bearer token either.
    assert_problem(await env.http.get(SCANS, headers={"Authorization": f"Bearer {b}, Bearer {a}"}), 401,
                   "unauthorized")
    for doubled in ((("authorization", f"Bearer {b}"), ("authorization", f"Bearer {a}")),
                    (("authorization", f"Bearer {a}"), ("authorization", "Bearer garbage.gar.bage"))):
        assert_grpc(await grpc_error(env.stub.ListScans(pb.ListScansRequest(), metadata=doubled)), 401,
                    "unauthorized")
    # One header still works.
    assert (await env.http.get(SCANS, headers={"Authorization": f"Bearer {a}"})).status_code == 200


# --------------------------------------------------------------------------- the CLI mints within the cap


async def test_cli_refuses_to_mint_past_the_cap(tmp_path: Path) -> None:
    env = {"FACEREC_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "server", "token", "--company", "acme"]

    def token(ttl: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, "--ttl", str(ttl)], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT,
                              check=False)

    over = await asyncio.to_thread(token, DAY + 1)
    assert over.returncode == 2 and "FACEREC_AUTH_MAX_TTL_S" in over.stderr, over.stderr
    ok = await asyncio.to_thread(token, DAY)
    assert ok.returncode == 0 and ok.stdout.count(".") == 2, ok.stderr
