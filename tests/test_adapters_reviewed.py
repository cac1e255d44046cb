"""Reviewed answers into the retrain: corrected answer traces in the real MLflow server become a versioned
MLflow evaluation dataset and training rows built from the real index; never held-out rows."""

from __future__ import annotations

import time
import uuid

import pytest

from serve_fixtures import ANSWERABLE  # noqa: F401 - fixtures


def _answer(question: str, citations: list[str]):
    from tandem.serve.answer import Answer

    now = time.perf_counter()
    return Answer(question=question, contract={"answer": "The Pro plan costs $15.", "citations": citations,
                                               "confidence": "high"},
                  sources=[], adapter="v1", index_version=1, refused=False, best_similarity=0.8, threshold=0.3,
                  valid=True, violations=[], retrieved=[], raw_output="{}", spec_version="t",
                  timings={"retrieval_ms": 1.0, "generation_ms": 1.0, "adapter_load_ms": 0.0, "total_ms": 3.0},
                  marks={"start": now, "retrieval": (now, now), "generation": (now, now), "validation": (now, now)})


@pytest.fixture
def corrected(serve_settings, serve_index):
    """Three served answers, two corrected by a reviewer, one of them traced with its text redacted."""
    from tandem.serve import feedback, tracing
    from tandem.serve.contract import FeedbackRequest

    settings = serve_settings.replace(trace_experiment=f"tandem-serving-{uuid.uuid4().hex[:8]}")
    redacted = settings.replace(trace_redact_text=True)
    plan = [(settings, ANSWERABLE, ["acme/pricing/plans.md"], "The Pro plan costs $49 per month."),
            (settings, "How do I rotate an API key?", [], "Create a new key, then delete the old one."),
            (settings, "What uptime is guaranteed?", ["acme/support/sla.md"], None),
            (redacted, "Which Slack permission is needed?", [], "chat:write")]
    for s, question, cites, correction in plan:
        tracer = tracing.tracer_for(s)
        trace_id = tracer.record(_answer(question, cites), started_ns=time.time_ns(), requested="champion",
                                 source="test", wait=True)
        tracer.flush()
        feedback.record(s, FeedbackRequest(trace_id=trace_id, rating="down" if correction else "up",
                                           corrected_answer=correction))
    return settings


def test_corrected_answers_become_a_dataset_and_training_rows_only(corrected):
    from tandem.adapters import dataset, reviewed

    records, counts = reviewed.collect(corrected)
    assert counts == {"traces_read": 4, "corrected": 3, "redacted": 1}  # the redacted one is counted, not used
    assert {r["inputs"]["question"]: r["expectations"]["corrected_answer"] for r in records} == {
        ANSWERABLE: "The Pro plan costs $49 per month.",
        "How do I rotate an API key?": "Create a new key, then delete the old one."}
    ds = reviewed.sync(corrected, records)
    assert ds.name == reviewed.DATASET_NAME and ds.digest
    assert {r["inputs"]["question"] for r in ds.to_df().to_dict("records")} >= {r["inputs"]["question"]
                                                                               for r in records}
    rows = reviewed.rows(records, dataset.IndexSource(corrected), distractors=1)
    assert all(r["split"] == "train" and r["kind"] == "reviewed" for r in rows) and len(rows) == 2
    pricing = next(r for r in rows if r["question"] == ANSWERABLE)
    assert pricing["target"]["citations"] == ["acme/pricing/plans.md"]
    assert {c["doc_id"] for c in pricing["contexts"]} == {"acme/pricing/plans.md"}  # the cited document's chunks
    keys = next(r for r in rows if r["question"].startswith("How do I rotate"))
    assert keys["contexts"] and keys["target"]["citations"] == [keys["contexts"][0]["doc_id"]]  # best chunks


def test_merging_keeps_the_held_out_rows_as_they_were():
    from tandem.adapters import reviewed

    curated = [{"id": "a", "split": "holdout"}, {"id": "b", "split": "train"}]
    extra = [{"id": "reviewed:tr-1", "split": "train"}]
    merged = reviewed.merge(curated, extra)
    assert [r for r in merged if r["split"] == "holdout"] == [{"id": "a", "split": "holdout"}]
    assert [r["id"] for r in merged] == ["a", "b", "reviewed:tr-1"]
    with pytest.raises(ValueError):
        reviewed.merge(curated, [{"id": "reviewed:tr-2", "split": "holdout"}])


def test_the_retrain_param_is_off_by_default_and_typed():
    from tandem.adapters import params
    from tandem.errors import UserError

    assert params.validate({}).reviewed_answers is False
    assert params.validate({"reviewed_answers": True}).reviewed_answers is True
    with pytest.raises(UserError) as err:
        params.validate({"reviewed_answers": "yes"})
    assert "reviewed_answers" in str(err.value)


def test_the_retrain_adds_them_and_tags_the_dataset_digest(corrected):
    from types import SimpleNamespace

    from tandem.adapters import dataset, retrain

    curated = [{"id": "ex-1", "split": "holdout", "kind": "oracle"}, {"id": "ex-2", "split": "train", "kind": "oracle"}]
    source = dataset.IndexSource(corrected)
    off, no_tags = retrain._with_reviewed(corrected, SimpleNamespace(reviewed_answers=False, distractors=1), curated,
                                          source)
    assert off == curated and no_tags == {}
    rows, tags = retrain._with_reviewed(corrected, SimpleNamespace(reviewed_answers=True, distractors=1), curated,
                                        source)
    assert dataset.counts(rows)["train_reviewed"] == 2 and dataset.counts(rows)["holdout"] == 1
    assert tags["reviewed_dataset"] == "tandem-reviewed-answers" and tags["reviewed_dataset_digest"]
    assert tags["reviewed_rows"] == 2
