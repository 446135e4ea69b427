"""The HTML report in a real headless browser: what it shows, and that it fetches nothing.

Debian's chromium renders the page (``--dump-dom`` gives the DOM after layout). The page is
served from a one-shot local HTTP server that records every request it gets, while chromium's
own network log records every URL the browser asked for; the page must cause exactly one
request, for itself.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from etm_compat.cli.main import main
from tests.conftest import FIXTURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; ./dev.sh test does it)"
)


def _chromium(url: str, tmp: Path) -> tuple[str, set[str]]:
    assert CHROMIUM is not None
    net = tmp / "net.json"
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
            f"--log-net-log={net}", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    urls = set(re.findall(r'"url":"([^"]+)"', net.read_text(encoding="utf-8", errors="replace")))
    return proc.stdout, urls


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
    for codes in expected.values():
        for code in codes:
            assert code in dom
    # The error card shows a number: at least one error per error-level scenario of the spec.
    card = re.search(r'id="count-error"><b>(\d+)</b>', dom)
    assert card is not None and int(card.group(1)) >= 10
    deployments = re.search(r'id="count-deployments"><b>(\d+)</b>', dom)
    scenarios = [p for p in (FIXTURES / "broken").iterdir() if p.is_dir()]
    assert deployments is not None and int(deployments.group(1)) == len(scenarios)
    assert "<svg" in dom and "findings by check" in dom


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
    assert "weights-missing-key" in dom
    assert seen == ["/report.html"]
    # Whatever chromium's own services ask for, no URL other than the page (and its origin, which
    # the net log names for the connection) points at the server or a file.
    origin = page.rsplit("/", 1)[0] + "/"
    local = {u for u in urls if u.startswith(("http://127.0.0.1", "file:"))}
    assert page in local and local <= {page, origin}
