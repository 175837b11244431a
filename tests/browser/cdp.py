"""A minimal Chrome DevTools Protocol client: headless Chromium driven over the pinned ``websockets``.

No browser-automation package is needed: Chromium is started with ``--remote-debugging-port=0``,
its DevTools websocket URL is read from stderr, one page target is created and attached (flat
session), and the test speaks CDP commands over that socket. Clicks and typing are real input
events (``Input.dispatchMouseEvent`` / ``Input.insertText``), not ``element.click()``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = os.environ.get("SAGE_CHROMIUM", "/usr/bin/chromium")  # override: another build
DEVTOOLS_RE = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(RuntimeError):
    """A CDP command answered with an error, or a wait timed out."""


class Page:
    """One attached page target; every call is synchronous (send, then read until its answer)."""

    def __init__(self, ws: ClientConnection, session_id: str, log: deque[str]) -> None:
        self._ws = ws
        self._session = session_id
        self._ids = itertools.count(1000)
        self._log = log

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params, "sessionId": self._session}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError(f"{method}: no answer in {timeout}s")
            message = json.loads(self._ws.recv(timeout=remaining))
            if message.get("method") == "Runtime.exceptionThrown":
                self._log.append(f"page exception: {message['params']['exceptionDetails'].get('text')}")
            if message.get("id") != msg_id:
                continue  # an event, or an answer nobody waits for
            if "error" in message:
                raise CdpError(f"{method}: {message['error']}")
            return message.get("result", {})

    def eval(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(
                f"{expression!r} threw {result['exceptionDetails'].get('text')}: "
                f"{result['exceptionDetails'].get('exception', {}).get('description')}"
            )
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """Poll until ``expression`` is truthy (navigations in between are tolerated)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
            except CdpError as exc:  # context destroyed mid-navigation: try again
                last = str(exc)
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise CdpError(
            f"timed out after {timeout}s waiting for {what}; last value {last!r}; "
            f"page {self.location()} says:\n{self.text()[:1500]}"
        )

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def location(self) -> str:
        with contextlib.suppress(CdpError):
            return str(self.eval("location.href"))
        return "?"

    def text(self) -> str:
        with contextlib.suppress(CdpError):
            return str(self.eval("document.body ? document.body.innerText : ''"))
        return ""

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return r.width && r.height ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()",
            f"a visible {selector}",
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        """Focus the field, clear it, and type ``text`` as keyboard input."""
        self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.focus(); e.select && e.select(); return document.activeElement === e; })()",
            f"{selector} focused",
        )
        self.call("Input.dispatchKeyEvent", type="rawKeyDown", key="Delete", code="Delete", windowsVirtualKeyCode=46)
        self.call("Input.dispatchKeyEvent", type="keyUp", key="Delete", code="Delete", windowsVirtualKeyCode=46)
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """The viewport as a PNG, or (``full_page``) the whole page down to its end."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1},
            )
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def console(self) -> str:
        return "\n".join(self._log)


@contextlib.contextmanager
def chromium(user_data_dir: Path, *, startup_timeout: float = 30.0) -> Iterator[Page]:
    """Headless Chromium with one blank page attached; the whole process group is killed on exit."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--window-size=1280,900",
        f"--user-data-dir={user_data_dir}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    process = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    log: deque[str] = deque(maxlen=200)
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:  # keep reading stderr so Chromium never blocks on a full pipe
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            match = DEVTOOLS_RE.search(line)
            if match and not found.is_set():
                url.append(match.group(1))
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not found.wait(startup_timeout):
            raise CdpError(f"chromium printed no DevTools URL in {startup_timeout}s:\n" + "\n".join(log))
        with connect(url[0], max_size=64 * 1024 * 1024, open_timeout=15) as ws:
            ids = itertools.count(1)

            def browser_call(method: str, **params: Any) -> dict[str, Any]:
                msg_id = next(ids)
                ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=30))
                    if message.get("id") == msg_id:
                        if "error" in message:
                            raise CdpError(f"{method}: {message['error']}")
                        return message["result"]

            target = browser_call("Target.createTarget", url="about:blank")["targetId"]
            session = browser_call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            page = Page(ws, session, log)
            page.call("Page.enable")
            page.call("Runtime.enable")
            yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
