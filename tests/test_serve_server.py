"""`tandem serve` as a real process (uvicorn) on the real models and index; the plugin forwards to it."""

from __future__ import annotations

import httpx
import pytest

from serve_fixtures import ANSWERABLE, serve_process, tandem_subapp  # noqa: F401 - fixtures
from tandem.stack import process


def test_the_serve_process_answers_with_its_token_only(serve_process):
    settings, url = serve_process
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    body = {"question": ANSWERABLE, "adapter": "base", "k": 2}
    denied = httpx.post(f"{url}/api/ask", json=body, timeout=10)
    assert denied.status_code == 401 and "TANDEM_SERVE_TOKEN" in denied.json()["fix"]
    wrong = httpx.post(f"{url}/api/ask", json=body, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    ok = httpx.post(f"{url}/api/ask", json=body, headers={"Authorization": f"Bearer {settings.serve_token}"},
                    timeout=300)
    assert ok.status_code == 200, ok.text
    data = ok.json()
    assert data["adapter"] == "base" and ok.headers["X-Tandem-Adapter"] == "base"
    assert set(data) >= {"answer", "citations", "confidence", "index_version"}
    # the status page reads the serving state from this process
    from tandem.serve.status import serving_state

    state = serving_state(settings.replace(serve_url=url))
    assert state["process"] == url and "base" in [item["adapter"] for item in state["loaded"]]
    assert "error" in serving_state(settings.replace(serve_url=f"http://127.0.0.1:{process.free_port()}"))
    bad = httpx.post(f"{url}/api/ask", json={"question": ""}, headers={"Authorization": f"Bearer {settings.serve_token}"},
                     timeout=10)
    assert bad.status_code == 400 and bad.json()["fix"]


def test_the_plugin_forwards_ask_to_the_serve_process(serve_process, airflow_app):
    from tandem.serve.api import configure

    settings, url = serve_process
    sub = tandem_subapp(airflow_app.client.app)
    configure(sub, settings=settings.replace(serve_url=url))
    try:
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": "base", "k": 2},
                                       headers=airflow_app.headers())
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-tandem-adapter"] == "base"  # set by the serve process, passed through
        assert airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE}).status_code == 401
        # the serve process down: a clear 503, not a 500
        configure(sub, settings=settings.replace(serve_url=f"http://127.0.0.1:{process.free_port()}"))
        down = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": "base"},
                                       headers=airflow_app.headers())
        assert down.status_code == 503 and "tandem serve" in down.json()["fix"]
    finally:
        configure(sub, settings=settings)  # the session's other serve tests answer in-process again


@pytest.mark.parametrize("raw,status", [
    (b'{"question": "\\ud800 price"}', 400),  # valid JSON, a lone surrogate: not text
    (b'{"question": "What\\u0000 does it cost?"}', 400),
    (b'{"question": "caf\xe9 prices?"}', 400),  # Latin-1, not UTF-8
    (b'{"question": "' + b"x" * 20_000 + b'"}', 413),  # over TANDEM_ASK_MAX_BODY_BYTES
])
def test_bad_bodies_get_4xx_from_the_serve_process(serve_process, raw, status):
    settings, url = serve_process
    resp = httpx.post(f"{url}/api/ask", content=raw, timeout=60, headers={
        "Authorization": f"Bearer {settings.serve_token}", "content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] and resp.json()["fix"]
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the process and its connection survive


def _events(text: str) -> list[tuple[str, dict]]:
    import json

    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def _comparable(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("timings", "trace_id")}  # each answer has its own


def test_a_stream_ends_with_the_non_streamed_answer(serve_process, airflow_app):
    """Tokens as they come, then the final object, equal to the JSON answer; the plugin passes the stream on."""
    from tandem.serve.api import configure

    settings, url = serve_process
    auth = {"Authorization": f"Bearer {settings.serve_token}"}
    body = {"question": ANSWERABLE, "adapter": "base", "k": 2}
    plain = httpx.post(f"{url}/api/ask", json=body, headers=auth, timeout=300)
    assert plain.status_code == 200 and not plain.json()["refused"], plain.text
    streamed = httpx.post(f"{url}/api/ask", json={**body, "stream": True}, headers=auth, timeout=300)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    names = [name for name, _ in events]
    assert names[-1] == "answer" and names.count("answer") == 1 and names[:-1] and set(names[:-1]) == {"token"}
    assert _comparable(events[-1][1]) == _comparable(plain.json())
    tokens = "".join(data["text"] for name, data in events if name == "token")
    assert tokens.strip() == plain.json()["raw_output"]
    # a stream's input errors are plain 4xx replies, before any event
    bad = httpx.post(f"{url}/api/ask", json={"question": "", "stream": True}, headers=auth, timeout=30)
    assert bad.status_code == 400 and bad.json()["fix"]

    sub = tandem_subapp(airflow_app.client.app)
    configure(sub, settings=settings.replace(serve_url=url))
    try:
        through = airflow_app.client.post("/tandem/api/ask", json={**body, "stream": True},
                                          headers=airflow_app.headers())
        assert through.status_code == 200, through.text
        assert _comparable(_events(through.text)[-1][1]) == _comparable(plain.json())
        bad = airflow_app.client.post("/tandem/api/ask", json={"question": " ", "stream": True},
                                      headers=airflow_app.headers())
        assert bad.status_code == 400 and bad.json()["fix"]
    finally:
        configure(sub, settings=settings)


def test_health_reports_the_queue_and_the_batches(serve_process):
    settings, url = serve_process
    queue = httpx.get(f"{url}/health", timeout=10).json()["queue"]
    assert queue["queue_max"] == settings.serve_queue_max and queue["batch_max"] == settings.serve_batch_max
    assert queue["batches"] >= 1 and sum(queue["batch_sizes"].values()) >= 1  # the answers above were generated
