"""`tandem ask` as users run it (a subprocess): exit codes, messages, --json, the text form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_fixtures import ANSWERABLE, OFF_TOPIC

TANDEM = str(Path(sys.executable).parent / "tandem")


def ask(settings, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(settings.as_env())
    env.update(extra_env or {})
    return subprocess.run([TANDEM, "ask", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args,word", [
    (("",), "the question is empty"),
    (("x" * 1001,), "1001 characters"),
    (("What does Pro cost?", "-k", "0"), "k=0 is out of range"),
    (("What does Pro cost?", "-k", "99"), "k=99 is out of range"),
    (("What does Pro cost?", "--adapter", "newest"), "unknown adapter reference"),
])
def test_bad_input_exits_2_with_the_fix_and_no_traceback(serve_settings, args, word):
    proc = ask(serve_settings, *args)
    assert proc.returncode == 2, proc.stderr
    assert word in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_unknown_version_and_missing_index(serve_settings, serve_index):
    proc = ask(serve_settings, OFF_TOPIC, "--adapter", "999")
    assert proc.returncode == 2 and "adapter version 999 does not exist" in proc.stderr
    assert "tandem adapters list" in proc.stderr
    proc = ask(serve_settings, OFF_TOPIC, "--adapter", "base", extra_env={"TANDEM_INDEX_NAME": "serve_none"})
    assert proc.returncode == 1 and "is empty" in proc.stderr and "tandem reindex" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_is_the_contract_plus_timings(serve_settings, serve_index):
    proc = ask(serve_settings, OFF_TOPIC, "-k", "2", "--adapter", "base", "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["answer"] == "I don't know based on the provided documents." and body["citations"] == []
    assert body["confidence"] == "low" and body["refused"] is True
    assert {"retrieval_ms", "generation_ms", "total_ms"} <= set(body["timings"])
    assert len(body["retrieved"]) == 2 and body["index_version"] == serve_index["index_version"]
    from tandem import tracking  # the answer's trace reached MLflow before the command exited

    trace = tracking.client(serve_settings).get_trace(body["trace_id"], display=False)
    assert trace.info.tags["tandem.source"] == "cli" and trace.info.tags["tandem.refused"] == "true"
    assert {span.name for span in trace.data.spans} == {"tandem.answer", "retrieval"}  # refused: nothing generated


@pytest.mark.slow
def test_text_form_prints_the_answer_then_numbered_citations(serve_settings, serve_index):
    proc = ask(serve_settings, ANSWERABLE, "--adapter", "base")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].strip()  # the answer first
    assert any(line.startswith("Citations:") for line in lines)
    cited = [line for line in lines if line.strip().startswith("[")]
    if "Citations: none" not in proc.stdout:  # numbered: [1] title (doc id), then the URI
        assert cited[0].strip().startswith("[1] ") and "(acme/" in cited[0]
        assert lines[lines.index(cited[0]) + 1].strip().startswith("file://")
    assert "adapter base" in lines[-1] and "generation" in lines[-1]
