"""docs/screenshots.py drives the Debian chromedriver through Selenium and waits for client-side rendering."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("screenshots", REPO / "docs" / "screenshots.py")
screenshots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshots)

# A page that renders its content 1.5 s after load, as the Airflow and MLflow UIs render client-side.
LATE_PAGE = """<html><body><div id="app">loading</div><script>
setTimeout(() => { document.getElementById('app').textContent = 'Knowledge rendered late'; }, 1500);
</script></body></html>"""


@pytest.mark.chromium
@pytest.mark.skipif(not (Path(screenshots.CHROMIUM).exists() and Path(screenshots.CHROMEDRIVER).exists()),
                    reason="headless Chromium and its driver (Debian chromium, chromium-driver) are not installed")
def test_a_shot_waits_for_client_side_rendering(tmp_path):
    (tmp_path / "index.html").write_text(LATE_PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = screenshots.Browser(timeout=20)
    try:
        dest = browser.shot(f"http://127.0.0.1:{server.server_port}/index.html", tmp_path / "page.png",
                            "rendered late", height=600)
        assert "Knowledge rendered late" in browser.driver.page_source  # shot after the render, not before
    finally:
        browser.close()
        server.shutdown()
    data = dest.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") > 0 and int.from_bytes(data[20:24], "big") > 0
