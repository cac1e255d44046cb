"""The plugin's forward to `tandem serve` is bounded: a limit on concurrent forwards (429 past it), a capped
body and reply, and a broken reply becomes a clear 502, never a 500; the Airflow UI keeps answering.

The upstream here is a small HTTP server on 127.0.0.1 that misbehaves on purpose (holds every request, or
answers HTML, or sends a huge body): the real `tandem serve` never does, so it cannot stand in for these
cases. `test_serve_server.py` forwards to the real one.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_fixtures import ANSWERABLE, tandem_subapp


class _Upstream:
    def __init__(self, mode: str):
        self.mode, self.release, self.lock = mode, threading.Event(), threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.bodies: list[bytes] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                """Quiet: the test reads what the upstream saw from its counters, not from stderr."""

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with upstream.lock:
                    upstream.bodies.append(body)
                    upstream.in_flight += 1
                    upstream.most_in_flight = max(upstream.most_in_flight, upstream.in_flight)
                try:
                    if upstream.mode == "hold":
                        upstream.release.wait(60)
                        self._send(200, b'{"answer": "held"}', "application/json")
                    elif upstream.mode == "html":
                        self._send(502, b"<html><body>Bad Gateway</body></html>", "text/html")
                    elif upstream.mode == "huge":
                        self._send(200, b'{"answer": "' + b"x" * 5_000 + b'"}', "application/json")
                    else:
                        self._send(200, b'{"answer": "ok", "question": "\\ud800 price"}', "application/json")
                finally:
                    with upstream.lock:
                        upstream.in_flight -= 1

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forward_to(airflow_app, serve_settings):
    from tandem.serve.api import configure

    sub = tandem_subapp(airflow_app.client.app)
    upstreams = []

    def point(mode: str, **changes) -> _Upstream:
        upstream = _Upstream(mode)
        upstreams.append(upstream)
        configure(sub, settings=serve_settings.replace(serve_url=upstream.url, serve_token="forward-test", **changes))
        return upstream

    yield point
    for upstream in upstreams:
        upstream.close()
    configure(sub, settings=serve_settings)  # the session's other serve tests answer in-process again


def test_forwards_past_the_limit_get_429_and_the_ui_keeps_answering(airflow_app, forward_to):
    upstream = forward_to("hold", forward_max_concurrent=4)
    headers = airflow_app.headers()
    client = airflow_app.client

    def ask():
        return client.post("/tandem/api/ask", json={"question": ANSWERABLE}, headers=headers)

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(ask) for _ in range(40)]
        deadline = time.monotonic() + 30
        while upstream.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.in_flight == 4
        started = time.monotonic()
        health = client.get("/api/v2/monitor/health")
        health_seconds = time.monotonic() - started
        upstream.release.set()
        statuses = sorted(f.result().status_code for f in futures)
    assert health.status_code == 200 and health_seconds < 2.0, health_seconds
    assert upstream.most_in_flight == 4
    assert statuses.count(200) >= 4 and set(statuses) == {200, 429}, statuses
    limited = next(f.result() for f in futures if f.result().status_code == 429)
    assert "TANDEM_FORWARD_MAX_CONCURRENT" in limited.json()["fix"] and limited.headers["retry-after"]


def test_a_reply_that_is_not_json_is_a_502_that_says_so(airflow_app, forward_to):
    forward_to("html")
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE}, headers=airflow_app.headers())
    assert resp.status_code == 502 and "not JSON" in resp.json()["error"]
    assert "TANDEM_SERVE_URL" in resp.json()["fix"]


def test_a_reply_over_the_cap_is_a_502(airflow_app, forward_to):
    forward_to("huge", forward_max_reply_bytes=1_000)
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE}, headers=airflow_app.headers())
    assert resp.status_code == 502 and "1000 bytes" in resp.json()["error"]


def test_a_lone_surrogate_is_forwarded_as_an_escape_and_passed_back(airflow_app, forward_to):
    upstream = forward_to("echo")
    body = b'{"question": "\\ud800 price"}'
    resp = airflow_app.client.post("/tandem/api/ask", content=body,
                                   headers={**airflow_app.headers(), "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert upstream.bodies == [b'{"question": "\\ud800 price"}']
    assert resp.json()["answer"] == "ok"


def test_a_body_over_the_cap_is_413(airflow_app, forward_to):
    upstream = forward_to("echo", ask_max_body_bytes=200)
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": "x" * 500}, headers=airflow_app.headers())
    assert resp.status_code == 413 and "200" in resp.json()["error"] and resp.json()["fix"]
    assert upstream.bodies == []
