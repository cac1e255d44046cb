"""The HTTP API through Airflow's real api-server app (plugin loaded from plugins/, real auth, real tokens)."""

from __future__ import annotations

import json

import pytest

from adapters_fixtures import make_adapter, register_adapter
from serve_fixtures import ANSWERABLE, OFF_TOPIC, clean_registry, tandem_subapp

pytestmark = pytest.mark.airflow


def test_plugin_is_registered_with_a_nav_link(airflow_app):
    resp = airflow_app.client.get("/api/v2/plugins", headers=airflow_app.headers())
    assert resp.status_code == 200
    plugin = next(p for p in resp.json()["plugins"] if p["name"] == "tandem")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/tandem"
    view = plugin["external_views"][0]
    assert (view["destination"], view["href"], view["url_route"]) == ("nav", "tandem/", "tandem")


def test_openapi_schema_is_served(airflow_app):
    resp = airflow_app.client.get("/tandem/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    assert {"/api/ask", "/api/status", "/"} <= set(schema["paths"])
    ask = schema["paths"]["/api/ask"]["post"]
    assert {"200", "400", "401", "422", "503"} <= set(ask["responses"])
    assert "question" in schema["components"]["schemas"]["AskRequest"]["properties"]


@pytest.mark.parametrize("method,path", [("post", "/tandem/api/ask"), ("get", "/tandem/api/status"),
                                         ("get", "/tandem/")])
def test_unauthenticated_requests_are_refused(airflow_app, method, path):
    client = airflow_app.client
    kwargs = {"json": {"question": ANSWERABLE}} if method == "post" else {}
    resp = getattr(client, method)(path, **kwargs)
    assert resp.status_code == 401 and "Not authenticated" in resp.json()["error"]
    assert "log in" in resp.json()["fix"]
    resp = getattr(client, method)(path, headers={"Authorization": "Bearer not-a-jwt"}, **kwargs)
    assert resp.status_code == 403
    # a token signed with another secret is refused too
    import jwt

    forged = jwt.encode({"sub": "admin", "role": "ADMIN"}, "another-secret-" * 5, algorithm="HS512")
    resp = getattr(client, method)(path, headers={"Authorization": f"Bearer {forged}"}, **kwargs)
    assert resp.status_code in (401, 403)


def test_a_browser_without_a_session_is_sent_to_the_login(airflow_app):
    resp = airflow_app.client.get("/tandem/", headers={"accept": "text/html"}, follow_redirects=False)
    assert resp.status_code == 307 and "/auth/login" in resp.headers["location"]
    assert "next=" in resp.headers["location"]


@pytest.mark.parametrize("body,status,word", [
    ({"question": ""}, 400, "empty"),
    ({"question": "   "}, 400, "empty"),
    ({"question": "x" * 1001}, 400, "limit is 1000"),
    ({"question": ANSWERABLE, "k": 0}, 400, "k=0"),
    ({"question": ANSWERABLE, "k": 21}, 400, "k=21"),
    ({"question": ANSWERABLE, "k": "five"}, 422, "k"),
    ({"question": ANSWERABLE, "k": 2.5}, 422, "k"),
    ({"question": ANSWERABLE, "adapter": "latest"}, 400, "latest"),
    ({"question": ANSWERABLE, "adapter": "999"}, 400, "999"),
    ({"question": ANSWERABLE, "mode": "fast"}, 422, "mode"),
    ({"k": 3}, 422, "question"),
    ({"question": 42}, 422, "question"),
    ({"question": "\ud800 price"}, 400, "unpaired surrogate"),  # valid JSON, not text
    ({"question": "What\x00 does the Pro plan cost?"}, 400, "NUL"),
    ({"question": ANSWERABLE, "adapter": "\ud800"}, 400, "unknown adapter"),
])
def test_invalid_requests_get_4xx_with_a_message(airflow_app, serve_index, body, status, word):
    # sent as JSON with ASCII escapes, as most clients do (a lone surrogate is "\\ud800" on the wire)
    resp = airflow_app.client.post("/tandem/api/ask", content=json.dumps(body).encode(),
                                   headers={**airflow_app.headers(), "content-type": "application/json"})
    assert resp.status_code == status, resp.text
    payload = resp.json()
    assert word in payload["error"] and payload["fix"]


@pytest.mark.parametrize("raw", [b'{"question": "caf\xe9 prices?"}', b'\xff\xfe{"question": "x"}',
                                 b'{"question": "\\ud800"}', b'{"question": "a\\u0000b"}'])
def test_bodies_that_are_not_utf8_text_are_4xx_never_5xx(airflow_app, serve_index, raw):
    """Raw bytes as a client may send them (Latin-1, a BOM of UTF-16, escapes of a lone surrogate and of NUL)."""
    resp = airflow_app.client.post("/tandem/api/ask", content=raw, headers={
        **airflow_app.headers(), "content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"] and resp.json()["fix"]


def test_a_body_that_is_not_json_is_a_4xx(airflow_app):
    resp = airflow_app.client.post("/tandem/api/ask", content=b"question=hi", headers={
        **airflow_app.headers(), "content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]


def test_missing_index_and_missing_champion_are_503_with_what_to_run(airflow_app, serve_settings, serve_cache,
                                                                     serve_index, base_model_path, tmp_path):
    from tandem import registry
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.api import configure

    sub = tandem_subapp(airflow_app.client.app)
    headers = airflow_app.headers()
    try:
        empty = serve_settings.replace(index_name="serve_none")
        configure(sub, settings=empty, cache=AdapterCache(empty))
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": "base"},
                                       headers=headers)
        assert resp.status_code == 503 and "tandem reindex" in resp.json()["fix"]
        assert resp.headers["retry-after"]

        clean_registry(serve_settings)
        configure(sub, settings=serve_settings, cache=AdapterCache(serve_settings))
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE}, headers=headers)
        assert resp.status_code == 503 and "no champion" in resp.json()["error"]
        assert "lora_retrain" in resp.json()["fix"]

        # a champion trained on another base: the deployment is broken (503); asking for it by version is the
        # caller's choice (400)
        version = register_adapter(serve_settings, make_adapter(base_model_path, tmp_path / "other-base", seed=5))
        registry.promote(serve_settings, version, reason="test: champion on another base")
        registry.client(serve_settings).set_model_version_tag(registry.MODEL, version, "tandem.base_model_sha256",
                                                              "0" * 64)
        configure(sub, settings=serve_settings, cache=AdapterCache(serve_settings))
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE}, headers=headers)
        assert resp.status_code == 503 and "champion adapter version" in resp.json()["error"], resp.text
        assert "TANDEM_BASE_MODEL" in resp.json()["fix"] and "promote" in resp.json()["fix"]
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": version},
                                       headers=headers)
        assert resp.status_code == 400 and "trained on base model" in resp.json()["error"], resp.text
        clean_registry(serve_settings)
    finally:
        configure(sub, settings=serve_settings, cache=serve_cache)


def test_an_unforeseen_failure_is_a_json_500_that_says_where_to_look(serve_settings, serve_cache, serve_index,
                                                                     monkeypatch):
    """Not a user's mistake and no known outage (a bug, a broken disk): JSON with the error and a fix, from
    the serve process (the plugin passes a JSON reply on as it is), never bare "Internal Server Error" text."""
    from fastapi.testclient import TestClient

    from tandem.serve import answer
    from tandem.serve.server import create_serve_app

    def broken(*_args, **_kwargs):
        raise OSError("[Errno 5] Input/output error: 'model.safetensors'")  # what a failing disk raises

    monkeypatch.setattr(answer, "_retrieve", broken)
    app = create_serve_app(serve_settings.replace(serve_token="t-unforeseen", trace_answers=False),
                           cache=serve_cache, warm=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.post("/api/ask", json={"question": ANSWERABLE, "adapter": "base"},
                           headers={"Authorization": "Bearer t-unforeseen"})
        assert resp.status_code == 500 and resp.headers["content-type"] == "application/json"
        assert "OSError" in resp.json()["error"] and "Input/output error" in resp.json()["error"]
        assert "log" in resp.json()["fix"]
        assert client.get("/health").status_code == 200  # the process goes on


def test_valid_question_refused_under_threshold(airflow_app, serve_index):
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": OFF_TOPIC, "k": 2, "adapter": "base"},
                                   headers=airflow_app.headers())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["refused"] and body["citations"] == [] and body["confidence"] == "low"
    assert len(body["retrieved"]) == 2 and body["timings"]["generation_ms"] == 0


@pytest.mark.slow
def test_valid_question_answered_with_the_contract(airflow_app, serve_index):
    client = airflow_app.client
    client.cookies.set("_token", airflow_app.token())  # the Airflow UI's cookie authenticates as well
    try:
        resp = client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": "base"})
    finally:
        client.cookies.clear()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {"answer", "citations", "confidence", "sources", "timings"} <= set(body)
    assert body["confidence"] in ("high", "medium", "low") and body["answer"]
    assert set(body["citations"]) <= {r["doc_id"] for r in body["retrieved"]}
    assert [s["doc_id"] for s in body["sources"]] == body["citations"]
    assert body["timings"]["retrieval_ms"] > 0 and body["timings"]["generation_ms"] > 0
    assert body["index_version"] == serve_index["index_version"] and body["adapter"] == "base"


def test_the_plugin_streams_in_process_too(airflow_app, serve_index):
    """Without `tandem serve`, the plugin's own answer path streams: tokens, then the non-streamed object."""
    body = {"question": ANSWERABLE, "adapter": "base"}
    plain = airflow_app.client.post("/tandem/api/ask", json=body, headers=airflow_app.headers()).json()
    resp = airflow_app.client.post("/tandem/api/ask", json={**body, "stream": True}, headers=airflow_app.headers())
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream"), resp.text
    blocks = [dict(line.split(": ", 1) for line in b.splitlines()) for b in resp.text.strip().split("\n\n")]
    assert [b["event"] for b in blocks[:-1]] and {b["event"] for b in blocks[:-1]} == {"token"}
    final = json.loads(blocks[-1]["data"])
    assert blocks[-1]["event"] == "answer"
    per_request = ("timings", "trace_id")  # each answer has its own timings and its own trace
    assert final["trace_id"] and plain["trace_id"] and final["trace_id"] != plain["trace_id"]
    assert ({k: v for k, v in final.items() if k not in per_request}
            == {k: v for k, v in plain.items() if k not in per_request})


def test_status_json(airflow_app, serve_index):
    resp = airflow_app.client.get("/tandem/api/status", headers=airflow_app.headers())
    assert resp.status_code == 200
    body = resp.json()
    assert body["knowledge"]["index_version"] == serve_index["index_version"]
    assert body["knowledge"]["documents"] == 4 and body["knowledge"]["fresh"] is True
    assert "error" not in body["behavior"], body["behavior"]
    assert set(body["airflow"]) == {"knowledge_reindex", "knowledge_verify", "behavior_eval", "lora_retrain", "adapter_rollback"}
    assert body["serving"]["refusal_min_similarity"] == 0.3
