"""Every answer an MLflow trace, and feedback on it: a real `tandem serve` process, the real MLflow server
(basic-auth), the real models and index, and the plugin's forward inside Airflow's real api-server app.

MLflow "stopped mid-run" is a real network cut: the serve process reaches MLflow through a TCP relay in this
test process, and the relay is closed while serve keeps answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time

import httpx
import pytest

from serve_fixtures import ANSWERABLE, serve_process, start_serve, tandem_subapp  # noqa: F401 - fixtures

SPANS = {"tandem.answer", "retrieval", "prompt", "generation", "validation"}


class Relay:
    """A TCP relay 127.0.0.1:<port> -> ``target``; ``cut()`` closes it and every connection through it."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.closed:  # accepted as the relay was being cut: refuse it
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):  # either side closed: the relay's job for this pair is over
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):  # already shut down from the other direction
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):  # cut twice (the test's finally): already shut down
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way: close() alone does not
        self.server.close()
        for s in self.sockets:
            s.close()


def _trace(settings, trace_id: str, timeout: float = 60):
    """The trace as MLflow holds it, once the background export has delivered it."""
    from tandem import tracking

    client = tracking.client(settings)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_trace(trace_id, display=False)
        except Exception:  # noqa: BLE001 - not exported yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _auth(settings) -> dict:
    return {"Authorization": f"Bearer {settings.serve_token}"}


@pytest.fixture(scope="module")
def traced_answer(serve_process) -> tuple[dict, str]:
    settings, url = serve_process
    resp = httpx.post(f"{url}/api/ask", json={"question": ANSWERABLE, "adapter": "base", "k": 2},
                      headers=_auth(settings), timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json(), resp.headers.get("X-Tandem-Trace")


def test_an_answer_is_one_trace_with_its_stages_and_tags(serve_process, traced_answer):
    settings, url = serve_process
    data, header = traced_answer
    assert data["trace_id"] and data["trace_id"] == header
    trace = _trace(settings, data["trace_id"])
    spans = {span.name: span for span in trace.data.spans}
    assert set(spans) == SPANS
    tags = trace.info.tags
    assert tags["tandem.index_version"] == str(data["index_version"])
    assert tags["tandem.adapter"] == "base" and tags["tandem.adapter_ref"] == "base"
    assert tags["tandem.source"] == "serve" and tags["tandem.valid"] == str(data["valid"]).lower()
    assert tags["tandem.spec_version"] and float(tags["tandem.latency_ms"]) == data["timings"]["total_ms"]
    retrieval = spans["retrieval"]
    assert [c["chunk_id"] for c in retrieval.outputs["chunks"]] == [r["chunk_id"] for r in data["retrieved"]]
    assert retrieval.attributes["tandem.index_version"] == data["index_version"]
    generation = spans["generation"]
    assert generation.attributes["output_tokens"] > 0 and generation.outputs["raw_output"] == data["raw_output"]
    assert spans["validation"].outputs["valid"] == data["valid"]
    assert spans["tandem.answer"].inputs == {"question": ANSWERABLE}
    # the stages lie inside the answer, in order
    root = spans["tandem.answer"]
    assert root.start_time_ns <= retrieval.start_time_ns <= retrieval.end_time_ns <= generation.start_time_ns
    assert generation.end_time_ns <= spans["validation"].end_time_ns <= root.end_time_ns
    from tandem import tracking

    experiment = tracking.client(settings).get_experiment(trace.info.experiment_id)
    assert experiment.name == settings.trace_experiment
    health = httpx.get(f"{url}/health", timeout=10).json()["tracing"]
    assert health["recorded"] >= 1 and health["dropped"] == 0 and health["ready"]


def test_redaction_keeps_every_text_out_of_the_trace(serve_settings, serve_index, serve_cache):
    from tandem.serve import tracing

    settings = serve_settings.replace(trace_redact_text=True, trace_experiment="tandem-serving-redacted")
    result, trace_id = tracing.answer(settings, ANSWERABLE, source="test", k=2, adapter="base", cache=serve_cache,
                                      wait=True)
    assert trace_id and not result.refused and len(result.contract["answer"]) > 10
    stored = _trace(settings, trace_id).to_json()
    for text in (ANSWERABLE, result.contract["answer"], result.raw_output):
        assert text not in stored and json.dumps(text)[1:-1] not in stored
    assert hashlib.sha256(ANSWERABLE.encode()).hexdigest() in stored  # what the trace keeps instead


def test_a_field_over_the_cap_is_cut_and_says_so(serve_settings):
    from tandem.serve.trace_spans import text_field

    settings = serve_settings.replace(trace_field_max_chars=10)
    assert text_field(settings, "short") == "short"
    assert text_field(settings, "x" * 25) == "x" * 10 + "... [cut: 15 more characters]"


def test_feedback_lands_on_the_trace_and_bad_feedback_gets_4xx(serve_process, traced_answer):
    settings, url = serve_process
    trace_id = traced_answer[0]["trace_id"]
    ok = httpx.post(f"{url}/api/feedback", headers=_auth(settings), timeout=60, json={
        "trace_id": trace_id, "rating": "down", "comment": "wrong price",
        "corrected_answer": "The Pro plan costs $49 per month."})
    assert ok.status_code == 200, ok.text
    assert ok.json()["feedback_id"] and ok.json()["expectation_id"]
    assessments = {a.name: a for a in _trace(settings, trace_id).info.assessments}
    assert assessments["user_rating"].value is False
    assert assessments["user_rating"].rationale == "wrong price"
    assert assessments["user_rating"].source.source_type == "HUMAN"
    assert assessments["corrected_answer"].value == "The Pro plan costs $49 per month."

    def post(body, **kw):
        return httpx.post(f"{url}/api/feedback", headers={**_auth(settings), **kw.pop("headers", {})}, timeout=60,
                          **({"content": body} if isinstance(body, bytes) else {"json": body}), **kw)

    unknown = post({"trace_id": "tr-" + "0" * 32, "rating": "up"})
    assert unknown.status_code == 404 and "trace_id" in unknown.json()["error"]
    bad_rating = post({"trace_id": trace_id, "rating": "meh"})
    assert bad_rating.status_code == 422 and "rating" in bad_rating.json()["error"]
    assert '"rating"' in bad_rating.json()["fix"]  # the fix shows a feedback body, not a question
    bad_id = post({"trace_id": "1234", "rating": "up"})
    assert bad_id.status_code == 422 and "trace_id" in bad_id.json()["error"]
    huge = post(json.dumps({"trace_id": trace_id, "rating": "up", "comment": "x" * 20_000}).encode(),
                headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["fix"]
    surrogate = post(b'{"trace_id": "%s", "rating": "up", "comment": "\\ud800"}' % trace_id.encode(),
                     headers={"content-type": "application/json"})
    assert surrogate.status_code in (400, 422) and surrogate.json()["error"]
    assert httpx.post(f"{url}/api/feedback", json={"trace_id": trace_id, "rating": "up"}, timeout=10).status_code == 401


def test_the_plugin_forwards_feedback_and_records_it_in_process(serve_process, traced_answer, airflow_app):
    from tandem.serve.api import configure

    settings, url = serve_process
    trace_id = traced_answer[0]["trace_id"]
    sub = tandem_subapp(airflow_app.client.app)
    configure(sub, settings=settings.replace(serve_url=url))
    try:
        forwarded = airflow_app.client.post("/tandem/api/feedback", json={"trace_id": trace_id, "rating": "up"},
                                            headers=airflow_app.headers())
        assert forwarded.status_code == 200, forwarded.text
        unknown = airflow_app.client.post("/tandem/api/feedback", json={"trace_id": "tr-" + "1" * 32, "rating": "up"},
                                          headers=airflow_app.headers())
        assert unknown.status_code == 404 and "trace_id" in unknown.json()["error"]  # serve's answer, passed on
        bad = airflow_app.client.post("/tandem/api/feedback", json={"trace_id": trace_id, "rating": 5},
                                      headers=airflow_app.headers())
        assert bad.status_code == 422 and "rating" in bad.json()["error"]
        huge = airflow_app.client.post("/tandem/api/feedback", content=b'{"comment": "' + b"x" * 20_000 + b'"}',
                                       headers={**airflow_app.headers(), "content-type": "application/json"})
        assert huge.status_code == 413
        viewer = airflow_app.client.post("/tandem/api/feedback", json={"trace_id": trace_id, "rating": "up"},
                                         headers=airflow_app.headers("viewer"))
        assert viewer.status_code == 403
        # in the api-server's own process: recorded with the Airflow user as its source
        configure(sub, settings=settings)
        own = airflow_app.client.post("/tandem/api/feedback", json={"trace_id": trace_id, "rating": "up",
                                                                   "comment": "fine"}, headers=airflow_app.headers())
        assert own.status_code == 200, own.text
        sources = {a.source.source_id for a in _trace(settings, trace_id).info.assessments}
        assert "admin" in sources
    finally:
        configure(sub, settings=settings)


def test_answers_go_on_when_mlflow_stops_and_the_lost_traces_are_counted(serve_settings, serve_index, monkeypatch):
    from urllib.parse import urlparse

    mlflow = urlparse(serve_settings.mlflow_uri)
    relay = Relay((mlflow.hostname, mlflow.port))
    settings = serve_settings.replace(serve_token="test-token-" + os.urandom(4).hex(),
                                      mlflow_uri=f"http://127.0.0.1:{relay.port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a lost trace is counted in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    proc, url = start_serve(settings)
    try:
        def ask():
            return httpx.post(f"{url}/api/ask", json={"question": ANSWERABLE, "adapter": "base", "k": 2},
                              headers=_auth(settings), timeout=300)

        first = ask()
        assert first.status_code == 200 and first.json()["trace_id"], first.text
        _trace(serve_settings, first.json()["trace_id"])  # MLflow up: it arrived
        relay.cut()
        started = time.monotonic()
        second = ask()
        assert second.status_code == 200, second.text
        assert second.json()["answer"] == first.json()["answer"]
        deadline = time.monotonic() + 120
        while (state := httpx.get(f"{url}/health", timeout=10).json()["tracing"])["dropped"] < 1:
            assert time.monotonic() < deadline, f"the lost trace was never counted: {state}"
            time.sleep(1)
        assert state["recorded"] >= 1 and state["last_drop"]
        from tandem.serve.page import render
        from tandem.serve.status import collect

        page = render(collect(serve_settings.replace(serve_url=url)))  # the status page reads serve's /health
        assert "Answer traces" in page and f"{state['dropped']} dropped" in page
        assert time.monotonic() - started < 120
    finally:
        relay.cut()
        proc.terminate()
        proc.wait(timeout=30)
