"""A small WebDriver BiDi client for Debian's Firefox ESR: just what the demo page tests need.

Playwright 1.65 drives Firefox over BiDi only through commands (``emulation.setMediaFeaturesOverride``) that this
Firefox lacks, and Playwright's own patched Firefox would be a download, so the Firefox tests speak the W3C protocol
themselves: start ``firefox-esr --headless --remote-debugging-port``, open a session over its WebSocket, navigate,
run functions in the page, set file inputs (``input.setFiles``), and intercept every request: loopback ones
continue, any other is failed and recorded in :attr:`Firefox.blocked`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

# Firefox's own background traffic (updates, telemetry, safe browsing, captive portal checks...) off, the fake
# camera on without a permission prompt. The page's requests are intercepted over BiDi regardless.
PREFS = {
    "app.update.enabled": False, "app.update.auto": False, "browser.shell.checkDefaultBrowser": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False, "browser.newtabpage.enabled": False,
    "browser.startup.page": 0, "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False, "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False,
    "browser.region.network.url": "", "browser.search.update": False, "network.dns.disablePrefetch": True,
    "network.prefetch-next": False, "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True, "remote.active-protocols": 1,
}
START_TIMEOUT_S = 90  # a first start on a loaded 2-core machine
COMMAND_TIMEOUT_S = 90
LOOPBACK = re.compile(r"^(https?|wss?)://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/")


class BiDiError(RuntimeError):
    pass


class Firefox:
    """One headless Firefox with one BiDi session and one tab (:attr:`context`)."""

    def __init__(self, binary: str, port: int) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="facerec-ff-"))
        (self.profile / "user.js").write_text(
            "".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items()))
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-remote", "--profile", str(self.profile), "--remote-debugging-port",
             str(port), "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self.blocked: list[str] = []
        self.log: list[dict[str, Any]] = []
        self._next = 0
        self._ignored: set[int] = set()
        try:
            self.ws = self._stack.enter_context(connect(self._wait_listening(), max_size=None,
                                                        open_timeout=START_TIMEOUT_S))
            self.send("session.new", {"capabilities": {}})
            self.context = self.send("browsingContext.getTree", {"maxDepth": 0})["contexts"][0]["context"]
            self.send("session.subscribe", {"events": ["network.beforeRequestSent", "log.entryAdded"]})
            self.send("network.addIntercept", {"phases": ["beforeRequestSent"]})
        except BaseException:
            self.close()
            raise

    def _wait_listening(self) -> str:
        """The session WebSocket URL, from the line Firefox prints once BiDi listens."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise BiDiError(f"firefox exited ({self.proc.returncode}): {''.join(seen[-5:])}")
            seen.append(line)
            m = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
            if m:
                return m.group(1).rstrip("/") + "/session"
        raise BiDiError(f"firefox did not start BiDi within {START_TIMEOUT_S} s")

    # ------------------------------------------------------------------------------------------ protocol

    def _write(self, method: str, params: dict[str, Any]) -> int:
        assert self.ws is not None
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        return self._next

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "network.beforeRequestSent" and params.get("isBlocked"):
            url, request = params["request"]["url"], params["request"]["request"]
            if LOOPBACK.match(url) or url.startswith(("data:", "blob:", "about:")):
                self._ignored.add(self._write("network.continueRequest", {"request": request}))
            else:
                self.blocked.append(url)
                self._ignored.add(self._write("network.failRequest", {"request": request}))
        elif method == "log.entryAdded":
            self.log.append(params)

    def send(self, method: str, params: dict[str, Any]) -> Any:
        """Run a command and return its result; events that arrive meanwhile are handled as they come."""
        assert self.ws is not None
        wanted = self._write(method, params)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "id" not in msg or msg.get("type") == "event":
                self._event(msg)
                continue
            if msg["id"] in self._ignored:
                self._ignored.discard(msg["id"])
                continue
            if msg["id"] != wanted:
                continue
            if msg.get("type") == "error" or "error" in msg:
                raise BiDiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
            return msg.get("result", {})

    # ------------------------------------------------------------------------------------------ the page

    def navigate(self, url: str) -> None:
        self.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def call(self, function: str, *args: Any) -> Any:
        """``function`` (JavaScript source) called in the page with JSON-able ``args``; its JSON-able result."""
        result = self.send("script.callFunction", {
            "functionDeclaration": f"async (...a) => JSON.stringify(await ({function})(...a))",
            "arguments": [{"type": "string", "value": json.dumps(a)} for a in args],
            "target": {"context": self.context}, "awaitPromise": True,
        })
        if result.get("type") == "exception":
            raise BiDiError(f"page exception: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value in (None, "undefined") else json.loads(value)

    def js(self, body: str, *args: Any) -> Any:
        """Shorthand: ``body`` is a function body with its arguments as ``a`` (already JSON-decoded)."""
        return self.call("(...raw) => { const a = raw.map((x) => JSON.parse(x)); " + body + " }", *args)

    def wait(self, body: str, *args: Any, timeout_s: float = 60.0, what: str = "") -> Any:
        """Until the function body returns something truthy (bounded poll: the page has no event to await)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(body, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BiDiError(f"timed out waiting for {what or body}")
            time.sleep(0.1)

    def set_files(self, selector: str, *paths: Path) -> None:
        node = self.send("script.evaluate", {
            "expression": f"document.querySelector({json.dumps(selector)})", "target": {"context": self.context},
            "awaitPromise": False, "resultOwnership": "root"})["result"]
        self.send("input.setFiles", {"context": self.context, "element": {"sharedId": node["sharedId"]},
                                     "files": [str(p) for p in paths]})

    def errors(self) -> list[str]:
        """The page's console errors and uncaught exceptions (``log.entryAdded`` at level error)."""
        return [str(e.get("text")) for e in self.log if e.get("level") == "error"]

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self._write("session.end", {})
            with contextlib.suppress(Exception):
                self._stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def firefox(binary: str, port: int) -> Iterator[Firefox]:
    ff = Firefox(binary, port)
    try:
        yield ff
    finally:
        ff.close()
