"""The HTML report in a real headless browser: what it shows, what it does, and that it fetches
nothing.

Debian's chromium renders the page. Two ways of driving it, both with the standard library only:
``--dump-dom`` (the DOM after the page's script ran) and the DevTools protocol over
``--remote-debugging-pipe`` (JSON messages ended by NUL on file descriptors 3 and 4), which
clicks, reads the page and takes screenshots. A 500-deployment upgrade report (built from the
real report types) is filtered to one family, sorted by size and opened in its detail view; the
screenshot is kept in pytest's temporary folder (its path is printed). The no-network test
serves the page from a one-shot local HTTP server that records every request, while chromium's
own network log records every URL the browser asked for: the page must cause exactly one request,
for itself.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.server
import json
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etm_compat.cli import report_files
from etm_compat.cli.main import main
from tests.conftest import FIXTURES
from tests.test_report_files import HOSTILE_NAMES, synthetic_report, synthetic_upgrade

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; ./dev.sh test does it)"
)
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)


def _chromium(url: str, tmp: Path) -> tuple[str, set[str]]:
    assert CHROMIUM is not None
    net = tmp / "net.json"
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--log-net-log={net}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    urls = set(re.findall(r'"url":"([^"]+)"', net.read_text(encoding="utf-8", errors="replace")))
    return proc.stdout, urls


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe: one page, commands and events."""

    def __init__(self, tmp: Path, width: int = 1400, height: int = 1000) -> None:
        assert CHROMIUM is not None
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # The protocol's file descriptors are 3 (commands) and 4 (replies). Moved above 9 first,
        # so that putting one at 3 cannot overwrite the other before it is moved.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        argv = [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={tmp / 'profile'}", "about:blank"]
        self.pid = os.posix_spawn(
            CHROMIUM, argv, os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, high[0], 3),
                (os.POSIX_SPAWN_DUP2, high[1], 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        for fd in high:
            os.close(fd)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.call(domain, session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = end - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(self, method: str, *, session: bool = False, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read(timeout)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def js(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired", timeout=120)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the element."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self) -> list[dict[str, Any]]:
        """Uncaught exceptions and dialogs (an injected alert()) the page caused so far."""
        bad = ("Runtime.exceptionThrown", "Page.javascriptDialogOpening")
        return [e for e in self.events if e.get("method") in bad]

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError):
            self.call("Browser.close", timeout=10)
        end = time.monotonic() + 20
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    tools = DevTools(tmp_path)
    try:
        yield tools
    finally:
        tools.close()


# --- the diagnose report ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "diagnose.html"
    assert main(["diagnose", str(FIXTURES / "broken"), "--output", str(out)]) == 1
    return out


def test_rendered_page_shows_the_counts_and_codes(report_html: Path, tmp_path: Path) -> None:
    dom, _ = _chromium(report_html.as_uri(), tmp_path)
    # The report is made without options, so scenarios that need one (ARGS, e.g. --runtime) are left out.
    expected = {
        p.name: p.joinpath("EXPECTED").read_text().split()
        for p in (FIXTURES / "broken").iterdir()
        if p.is_dir() and not p.joinpath("ARGS").exists()
    }
    assert "etm-compat diagnose report" in dom
    # Every expected code is in the most common findings, or in a row the script drew.
    for codes in expected.values():
        for code in codes:
            assert code in dom
    card = re.search(r'id="count-error"><b>(\d+)</b>', dom)
    assert card is not None and int(card.group(1)) >= 10
    deployments = re.search(r'id="count-deployments"><b>(\d+)</b>', dom)
    scenarios = [p for p in (FIXTURES / "broken").iterdir() if p.is_dir()]
    assert deployments is not None and int(deployments.group(1)) == len(scenarios)
    assert dom.count("<svg") == 3 and "findings by severity" in dom
    # The script ran: it drew rows and filled the filters.
    assert 'data-ready="1"' in dom and re.search(r'<tr class="r[^"]*" tabindex="0" data-row="0">', dom)
    assert re.search(r'<select id="f-family"><option value="">all families</option><option value="llama2">', dom)


def test_page_makes_no_network_request(report_html: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    body = report_html.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = f"http://127.0.0.1:{server.server_address[1]}/report.html"
        dom, urls = _chromium(page, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert "weights-missing-key" in dom and 'data-ready="1"' in dom
    assert seen == ["/report.html"]
    # Whatever chromium's own services ask for, no URL other than the page (and its origin, which
    # the net log names for the connection) points at the server or a file.
    origin = page.rsplit("/", 1)[0] + "/"
    local = {u for u in urls if u.startswith(("http://127.0.0.1", "file:"))}
    assert page in local and local <= {page, origin}


# --- a 500-deployment upgrade report, used ----------------------------------------------------------


def _visible_rows(tools: DevTools) -> list[list[str]]:
    """The cells of the rows the table drew, as the user sees them."""
    rows: list[list[str]] = tools.js(
        "[...document.querySelectorAll('#tbody tr.r')].map(tr => [...tr.cells].map(td => td.textContent))"
    )
    return rows


def _number(text: str) -> int | None:
    return None if text == "-" else int(text.replace(",", ""))


def test_filter_sort_and_open_a_deployment_of_500(browser: DevTools, tmp_path: Path) -> None:
    result = synthetic_upgrade(500, HOSTILE_NAMES)  # the real report types, written as users get them
    page = report_files.write_report(tmp_path / "upgrade.html", result)
    rep = synthetic_report(500, HOSTILE_NAMES)  # the same, as JSON: what to expect
    browser.open(page.as_uri())
    assert browser.js("document.documentElement.dataset.ready") == "1"
    assert browser.js("document.getElementById('shown').textContent") == "500"
    # Drawn lazily: a screenful of rows, not 500.
    drawn = browser.js("document.querySelectorAll('#tbody tr.r').length")
    assert 10 <= drawn < 100
    assert browser.js("document.title") == "etm-compat upgrade report"  # the hostile names ran nothing

    # Filter to one family: exactly its rows, counted and shown.
    family = "qwen2_5"
    mine = [i for i in rep["items"] if i["family"] == family]
    assert 0 < len(mine) < 500
    browser.js(
        f"(() => {{ const s = document.getElementById('f-family'); s.value = {json.dumps(family)};"
        " s.dispatchEvent(new Event('change')); })()"
    )
    assert browser.js("document.getElementById('shown').textContent") == str(len(mine))
    rows = _visible_rows(browser)
    assert rows and {r[2] for r in rows} == {family}

    # Sort by size (a click on the header): smallest first, then largest first.
    sizes = sorted(i["size"] for i in mine)
    browser.click("#head th[data-col='5'] button")
    assert browser.js("document.querySelector(\"#head th[data-col='5']\").getAttribute('aria-sort')") == "ascending"
    shown = [_number(r[5]) for r in _visible_rows(browser)]
    assert shown == sizes[: len(shown)]
    browser.click("#head th[data-col='5'] button")
    shown = [_number(r[5]) for r in _visible_rows(browser)]
    assert shown == sorted(sizes, reverse=True)[: len(shown)]
    browser.js("document.getElementById('deployments').scrollIntoView()")
    table_shot = browser.screenshot(tmp_path / "report-500-table.png")

    # Open one of the largest with findings (a real click on its row): its details, as the report has them.
    largest = sorted(mine, key=lambda i: -i["size"])
    chosen = next(i for i in largest[: len(shown)] if i["findings"] and i["details"])
    browser.click(f"#tbody tr.r[data-row='{rep['items'].index(chosen)}']")
    assert browser.js("document.getElementById('detail').hidden") is False
    assert browser.js("document.getElementById('detail-name').textContent") == chosen["program"]
    text: str = browser.js("document.getElementById('detail').innerText")
    details = chosen["details"]
    for heading in ("Findings (", "bos / eos", "Stop set (", "A sample conversation", "Evidence ("):
        assert heading in text
    for stop in details["stop"]:
        assert stop["token"] in text
    prompt = browser.js("document.querySelector('#detail pre.prompt').textContent")
    assert prompt == details["sample"]["prompt"]
    assert browser.js("document.querySelectorAll('#detail pre.prompt mark').length") >= 4  # special tokens marked
    assert f"Findings ({len(chosen['findings'])})" in text
    for finding in chosen["findings"]:
        assert finding["code"] in text and finding["message"] in text
        assert finding["hint"] is None or f"hint: {finding['hint']}" in text
    assert browser.js("location.hash") == f"#d{rep['items'].index(chosen)}"
    assert browser.js("document.querySelectorAll('#tbody tr.r.sel').length") == 1

    detail_shot = browser.screenshot(tmp_path / "report-500-detail.png")
    print(f"\nscreenshots (kept in pytest's temporary folder): {table_shot} {detail_shot}")
    assert table_shot.stat().st_size > 10_000 and detail_shot.stat().st_size > 10_000

    # A free-text search finds a hostile name, shown as text.
    browser.js(
        "(() => { const s = document.getElementById('f-family'); s.value = ''; s.dispatchEvent(new Event('change'));"
        " const t = document.getElementById('f-text'); t.value = 'pwned'; t.dispatchEvent(new Event('input')); })()"
    )
    assert _visible_rows(browser)[0][0] == f"{HOSTILE_NAMES[0]}/model.pte"
    assert browser.js("document.title") == "etm-compat upgrade report"
    assert browser.problems() == []


@pytest.mark.slow
def test_ten_thousand_rows_draw_a_screenful(browser: DevTools, tmp_path: Path) -> None:
    """10,000 rows: the table draws what is in view, also after scrolling to the end. The load
    time is printed for the record (no assertion on time: the machine is shared)."""
    page = report_files.write_report(tmp_path / "upgrade.html", synthetic_upgrade(10_000))
    browser.open(page.as_uri())
    loaded = browser.js(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return [n.domContentLoadedEventEnd, n.loadEventEnd]; })()"
    )
    print(f"\n10,000 rows, {page.stat().st_size:,} bytes: DOMContentLoaded {loaded[0]:.0f} ms, load {loaded[1]:.0f} ms")
    assert browser.js("document.getElementById('shown').textContent") == "10,000"
    assert browser.js("document.querySelectorAll('#tbody tr').length") < 100
    browser.js("(() => { const v = document.getElementById('viewport'); v.scrollTop = v.scrollHeight; })()")
    browser.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    last = _visible_rows(browser)[-1][0]
    assert last == f"org{9999 % 23}/model-09999/model.pte"  # the 10,000th row
    assert browser.js("document.querySelectorAll('#tbody tr').length") < 100
    assert browser.problems() == []
