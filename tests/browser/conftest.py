"""Real headless Chromium for page tests: Debian's ``chromium`` driven by Playwright, with the outside world cut off.

Reusable pieces (other page tests build on them):

- ``chromium_path``: ``/usr/bin/chromium``; installed with ``apt-get install -y chromium`` by this set-up when it
  is missing and the tests run as root (CI does), else the tests skip saying why. Playwright's own browser
  download (``playwright install``) is never used: it cannot run on an offline machine.
- ``serve_app(app)``: serves a Litestar app with uvicorn in a background thread on a free loopback port and
  returns its base URL (stopped at the end of the test); ``serve_app_module`` is the same for a whole module (one
  runtime, its models loaded once, for every test of the module).
- ``page``: a fresh browser page whose every request to a host other than loopback is aborted; the aborted URLs
  are in ``page.blocked`` so a test can assert that nothing tried to leave the machine.
- ``chromium_extra_args``: more Chromium flags for a module's browser (override the fixture in the module, e.g. a
  fake camera: ``--use-fake-device-for-media-stream``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) is not installed")

CHROMIUM = "/usr/bin/chromium"
FIREFOX = "/usr/bin/firefox-esr"
# As root in a container Chromium needs --no-sandbox; the rest keep it from calling home (this machine's closed
# network refuses those connections, and each refusal slows start-up) and from using a GPU it does not have.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
APT_TIMEOUT_S = 900  # a first install downloads ~100 MB of Debian packages


def _install_debian(package: str) -> str | None:
    """Install a Debian package (``chromium``, ``firefox-esr``); None when done, else why it could not be."""
    if os.geteuid() != 0:
        return f"not root, so `apt-get install {package}` cannot run"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=APT_TIMEOUT_S, check=False)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        return f"`apt-get install {package}` failed: {proc.stderr.strip().splitlines()[-1:]}"
    return None


def _debian_binary(path: str, package: str) -> str:
    if not os.path.exists(path):
        why = _install_debian(package)
        if why is not None or not os.path.exists(path):
            pytest.skip(f"Debian's {package} is not installed and could not be: {why or 'binary still missing'}")
    return path


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return _debian_binary(CHROMIUM, "chromium")


@pytest.fixture(scope="session")
def firefox_path() -> str:
    """Debian's Firefox ESR (driven over WebDriver BiDi by ``bidi.py``: Playwright's BiDi Firefox needs commands
    this Firefox does not have, and Playwright's own Firefox build would be a download)."""
    return _debian_binary(FIREFOX, "firefox-esr")


@pytest.fixture(scope="module")
def chromium_extra_args() -> list[str]:
    """Flags added to :data:`CHROMIUM_ARGS` for this module's browser; a module overrides this fixture."""
    return []


@pytest.fixture(scope="module")
def browser(chromium_path: str, chromium_extra_args: list[str]) -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop marked as running in this thread while
    # it is open, which would break every asyncio test collected after the browser tests.
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=[*CHROMIUM_ARGS, *chromium_extra_args],
                               headless=True)
        try:
            yield b
        finally:
            b.close()


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOOPBACK_HOSTS or (parts.hostname or "").startswith("127.")


@contextlib.contextmanager
def guarded_page(browser: Any, **context_options: Any) -> Iterator[Any]:
    """A page in a fresh context whose requests to any host but loopback are aborted (and listed in ``.blocked``)."""
    context = browser.new_context(**context_options)
    blocked: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
        else:
            blocked.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", guard)
    pg = context.new_page()
    pg.blocked = blocked  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with guarded_page(browser) as pg:
        yield pg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving() -> Iterator[Callable[..., str]]:
    import uvicorn

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any, *, lifespan: str = "auto") -> str:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan=lifespan,
                                access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        # Started is set once the socket listens; 60 s covers a lifespan that loads the models on a busy machine.
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.05)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server, thread in servers:
            server.should_exit = True
            with contextlib.suppress(RuntimeError):
                thread.join(timeout=30)


@pytest.fixture
def serve_app() -> Iterator[Callable[..., str]]:
    """``base_url = serve_app(app)``: uvicorn serving ``app`` on 127.0.0.1 in a thread until the test ends."""
    with _serving() as start:
        yield start


@pytest.fixture(scope="module")
def serve_app_module() -> Iterator[Callable[..., str]]:
    """Like ``serve_app``, until the module's tests end (one app, its runtime started once, for all of them)."""
    with _serving() as start:
        yield start
