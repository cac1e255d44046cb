"""The status page with real data from a small run: the tiny index (reindex + canary), a champion and a
challenger in the real MLflow registry, and a real tracked eval (behavior cadence's run_eval + decision)
of the champion. Rendered by Airflow's real api-server app; checked in headless Chromium where present."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adapters_fixtures import make_adapter, register_adapter
from serve_fixtures import clean_registry, tandem_subapp

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

CHROMIUM = "/usr/bin/chromium"
EVAL_SET = [
    {"id": "s1", "question": "How much does the Pro plan cost?", "gold_doc_ids": ["acme/pricing/plans.md"],
     "gold_facts": ["$49"], "reference_answer": "The Pro plan costs $49 per month.", "answerable": True},
    {"id": "s2", "question": "Who founded Acme?", "gold_doc_ids": [], "gold_facts": [],
     "reference_answer": "I don't know based on the provided documents.", "answerable": False},
]


@pytest.fixture(scope="module")
def small_run(serve_settings, serve_index, base_model_path, tmp_path_factory):
    """A champion (v1) and a challenger (v2) with gate reasons, and one tracked eval of the champion."""
    from tandem import registry
    from tandem.behavior.eval_run import decide_and_record, run_eval

    root = tmp_path_factory.mktemp("page")
    clean_registry(serve_settings)
    v1 = register_adapter(serve_settings, make_adapter(base_model_path, root / "a1", seed=31),
                          metrics={"pass_rate": 0.62, "schema_valid": 0.97})
    v2 = register_adapter(serve_settings, make_adapter(base_model_path, root / "a2", seed=32),
                          metrics={"pass_rate": 0.55, "schema_valid": 0.91})
    registry.promote(serve_settings, v1, reason="page test")
    registry.set_challenger(serve_settings, v2, "pass_rate 0.550 does not beat the incumbent by the margin")
    eval_set = root / "eval_set.jsonl"
    eval_set.write_text("".join(json.dumps(e) + "\n" for e in EVAL_SET))
    import yaml

    spec = yaml.safe_load(Path(serve_settings.spec_path).read_text())
    spec["generation"]["max_new_tokens"] = 12  # a real eval, kept short: the page needs its records, not quality
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    import uuid

    settings = serve_settings.replace(eval_set_path=str(eval_set), spec_path=str(root / "spec.yaml"),
                                      trace_experiment=f"tandem-serving-page-{uuid.uuid4().hex[:8]}")
    summary = run_eval(settings, adapter="champion", source="test")
    decision = decide_and_record(settings, summary)
    traced = _trace_two_answers(settings)
    return {"v1": v1, "v2": v2, "eval": summary, "decision": decision, "settings": settings, "traced": traced}


CITING = "Which ports does the router forward by default?"
REFUSED = "Who founded Acme?"


def _trace_two_answers(settings) -> list[str]:
    """Two answers as `tandem serve` traces them, into the page's own experiment: one citing two pages of a
    PDF and a Markdown file, one refused."""
    import time

    from tandem.serve import tracing
    from tandem.serve.answer import Answer

    def answer(question, *, refused):
        now = time.perf_counter()
        sources = [] if refused else [
            {"doc_id": "acme/manuals/router.pdf", "title": "Router", "uri": "file:///kb/manuals/router.pdf",
             "locations": ["p. 12", "p. 14"]},
            {"doc_id": "acme/support/sla.md", "title": "SLA", "uri": "file:///kb/support/sla.md", "locations": []}]
        return Answer(question=question, contract={"answer": "...", "citations": [s["doc_id"] for s in sources],
                                                   "confidence": "low" if refused else "high"},
                      sources=sources, adapter="v1", index_version=1, refused=refused, best_similarity=0.8,
                      threshold=0.3, valid=True, violations=[], retrieved=[],
                      timings={"retrieval_ms": 1.0, "generation_ms": 0.0, "adapter_load_ms": 0.0, "total_ms": 2.0},
                      raw_output="{}", spec_version="t", output_tokens=1, marks={"start": now})

    tracer = tracing.tracer_for(settings)
    ids = [tracer.record(answer(q, refused=r), started_ns=time.time_ns() + i * 1_000_000, requested="champion",
                         source="test", wait=True) for i, (q, r) in enumerate([(REFUSED, True), (CITING, False)])]
    tracer.flush()
    assert all(ids), tracer.state()
    return ids


@pytest.fixture(scope="module")
def page_app(airflow_app, small_run, serve_settings, serve_cache):
    """The api-server app configured like the eval (its eval set and spec), as a deployment would be."""
    from tandem.serve.api import configure

    sub = tandem_subapp(airflow_app.client.app)
    configure(sub, settings=small_run["settings"], cache=serve_cache)
    yield airflow_app
    configure(sub, settings=serve_settings, cache=serve_cache)


@pytest.fixture(scope="module")
def page_html(page_app) -> str:
    resp = page_app.client.get("/tandem/", headers={**page_app.headers(), "accept": "text/html"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    return resp.text


def test_status_page_shows_both_cadences(page_html, serve_index, small_run):
    html = page_html
    # knowledge: version, counts, last run summary, canary chart
    assert str(serve_index["index_version"]) in html
    assert re.search(r"Documents</dt><dd>4\b", html)
    assert re.search(r"<b>4</b>new", html), re.search(r"What changed.*?</div>", html, re.S).group(0)  # the last reindex
    assert 'aria-label="canary hit@5"' in html and "<polyline" in html
    # releases: the live one marked, with its canary; verification never run yet, and said so
    assert re.search(r"<code>" + re.escape(str(serve_index["index_version"])) + r'</code> <span class="badge ok">live</span>',
                     html)
    assert "Last verify</dt><dd>" in html and "never (knowledge_verify DAG" in html
    # behavior: champion and challenger with the gate reason, last eval with its decision and links
    assert f"champion v{small_run['v1']}" in html
    assert f"v{small_run['v2']}</b> <span class=\"muted\">not promoted: pass_rate 0.550" in html
    assert small_run["eval"]["run_id"] in html  # link to the MLflow run
    assert small_run["decision"].action in html
    assert "Diagnosis mix of the last eval" in html and "Retrain pending" in html
    assert "if the next eval fails on behavior" in html  # the anti-flap state
    assert "Airflow DAG runs" in html and "knowledge_reindex" in html and "lora_retrain" in html
    # recent answers from the traces: newest first, what each cited with its page, the refused one said
    recent = html[html.index('id="answers"'):]
    assert recent.index(CITING) < recent.index(REFUSED)
    assert "<code>router.pdf p. 12, p. 14</code>, <code>acme/support/sla.md</code>" in recent
    assert re.search(re.escape(REFUSED) + r".*?refused", recent, re.S)
    # server-rendered, nothing fetched from anywhere: no scripts, no external stylesheets or images
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']https?://(?!testserver)[^"']*\.(css|js|png|svg|woff2?)""", html)
    assert not re.search(r"<link[^>]+stylesheet", html) and "@import" not in html


def test_status_json_matches_the_page(page_app, small_run):
    body = page_app.client.get("/tandem/api/status", headers=page_app.headers()).json()
    b = body["behavior"]
    assert b["champion"]["version"] == small_run["v1"] and b["challenger"]["version"] == small_run["v2"]
    assert b["last_eval"]["run_id"] == small_run["eval"]["run_id"]
    assert b["last_eval"]["decision"] == small_run["decision"].action
    primary = yaml.safe_load(Path(small_run["settings"].spec_path).read_text())["primary_metric"]
    assert b["primary_metric"] == primary and b["trend"][-1]["value"] == pytest.approx(
        small_run["eval"]["metrics"][primary], abs=1e-4)
    assert set(b["last_eval"]["diagnosis"]) >= {"knowledge", "behavior"}
    policy = yaml.safe_load(Path(small_run["settings"].spec_path).read_text())["anti_flap"]
    assert b["anti_flap"]["policy"]["consecutive_failures"] == policy["consecutive_failures"]
    if small_run["decision"].behavior_failing:  # the eval just recorded counts toward the streak
        assert b["anti_flap"]["consecutive_failures"] == 2
    assert body["knowledge"]["canary_history"][0]["hit_at_k"] is not None
    answers = body["answers"]["items"]
    assert [a["trace_id"] for a in answers] == small_run["traced"][::-1]  # newest first
    assert answers[0]["cited"] == ["router.pdf p. 12, p. 14", "acme/support/sla.md"]
    assert answers[0]["index_version"] == 1 and answers[0]["adapter"] == "v1" and answers[0]["valid"]
    assert answers[1]["question"] == REFUSED and answers[1]["refused"] and answers[1]["cited"] == []


@pytest.mark.chromium
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium (Debian package chromium) is not installed")
def test_status_page_in_headless_chromium(page_html, tmp_path):
    page = tmp_path / "status.html"
    page.write_text(page_html)
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1280,1500"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h2>Knowledge" in dom.stdout and "Behavior" in dom.stdout and "<svg" in dom.stdout
    shot = tmp_path / "status-page.png"
    run = subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real rendering, not a blank page
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1500)
    if os.environ.get("TANDEM_SCREENSHOT_OUT"):  # `TANDEM_SCREENSHOT_OUT=docs/images/status-page.png pytest ...`
        shutil.copyfile(shot, os.environ["TANDEM_SCREENSHOT_OUT"])
