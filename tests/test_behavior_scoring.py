"""Scorers and diagnosis on hand-written outputs: valid, invalid JSON, wrong schema, invented citations,
style violations, correct and incorrect refusals; one test per diagnosis class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.behavior.diagnosis import class_rates, diagnose, dominant_class
from tandem.behavior.evalset import Example
from tandem.behavior.evaluate import score_items
from tandem.behavior.prompt import build_messages, shown_doc_ids, training_target
from tandem.behavior.scoring import aggregate, parse_output, score_output
from tandem.behavior.text import contains, normalize
from tandem.behavior.spec import load_spec

SPEC = load_spec(Path(__file__).resolve().parents[1] / "include/tandem/data/demo/behavior_spec.yaml")
REFUSAL = SPEC.style.refusal_text
PLANS, HOURS = "acme/pricing/plans.md", "acme/support/hours.md"
SHOWN = [PLANS, HOURS]


def out(answer, citations=(PLANS,), confidence="high", **extra) -> str:
    return json.dumps({"answer": answer, "citations": list(citations), "confidence": confidence, **extra})


def score(raw, answerable=True, gold=(PLANS,), facts=("$49",), shown=SHOWN):
    return score_output(raw, answerable=answerable, gold_doc_ids=gold, gold_facts=facts if answerable else (),
                        shown_ids=shown, spec=SPEC)


def test_valid_answer_passes_every_rule():
    s = score(out("The Pro plan costs $49 per month."))
    assert s.passed and all(v is not False for v in s.verdicts.values())
    assert s.verdicts["refusal_correct"] is None  # only for unanswerable questions
    assert diagnose(s.verdicts, True) == "pass"


def test_training_target_is_a_passing_output():
    s = score(training_target("Pro is $49 per month.", [PLANS], "high"))
    assert s.passed


@pytest.mark.parametrize("raw", ["The Pro plan costs $49.", "{'answer': 'x'}", '{"answer": "$49", ', "", "[1, 2]"])
def test_non_json_is_a_scored_failure_not_a_crash(raw):
    s = score(raw)
    assert s.verdicts["json_valid"] is False and s.verdicts["schema_valid"] is False
    assert s.verdicts["citations_valid"] is False and not s.passed
    assert s.parse_error


def test_fenced_json_is_accepted():
    assert score("```json\n" + out("It is $49 per month.") + "\n```").passed


def test_wrong_schema():
    s = score(json.dumps({"answer": "$49 per month", "citations": [PLANS], "confidence": "certain"}))
    assert s.verdicts["json_valid"] is True and s.verdicts["schema_valid"] is False
    assert any("confidence" in e for e in s.schema_errors)
    s = score(json.dumps({"answer": "$49 per month", "sources": [PLANS]}))
    assert s.verdicts["schema_valid"] is False and s.verdicts["grounded"] is False


def test_invented_citation():
    s = score(out("Pro is $49.", citations=[PLANS, "acme/made/up.md"]))
    assert s.verdicts["citations_valid"] is False and s.invented_citations == ["acme/made/up.md"]
    assert diagnose(s.verdicts, True) == "behavior"


def test_citing_a_shown_but_non_gold_doc_is_ungrounded():
    s = score(out("Pro is $49.", citations=[HOURS]))
    assert s.verdicts["citations_valid"] is True and s.verdicts["grounded"] is False


def test_style_violations():
    long = out("Pro costs $49. " + "word " * 70)
    assert score(long).verdicts["style_max_words"] is False
    s = score(out("As an AI, I can tell you Pro costs $49."))
    assert s.verdicts["style_forbidden_phrases"] is False and s.forbidden_found == ["as an ai"]


def test_correct_and_incorrect_refusals():
    ok = score(out(REFUSAL, citations=[], confidence="low"), answerable=False, gold=())
    assert ok.verdicts["refusal_correct"] is True and ok.passed
    assert ok.verdicts["answer_correct"] is None and ok.verdicts["retrieval_hit"] is None
    with_citation = score(out(REFUSAL, citations=[PLANS]), answerable=False, gold=())
    assert with_citation.verdicts["refusal_correct"] is False
    made_up = score(out("The CEO is John Smith."), answerable=False, gold=())
    assert made_up.verdicts["refusal_correct"] is False and diagnose(made_up.verdicts, False) == "behavior"
    false_refusal = score(out(REFUSAL, citations=[], confidence="low"))
    assert false_refusal.verdicts["no_false_refusal"] is False and diagnose(false_refusal.verdicts, True) == "behavior"


def test_answer_correct_needs_every_gold_fact():
    s = score(out("Support is open 9am to 5 pm.", citations=[HOURS]), gold=(HOURS,), facts=("9am", "5pm"))
    assert s.verdicts["answer_correct"] is False and s.missing_facts == ["5pm"]
    s = score(out("Support: 9AM\u20135PM, weekdays.", citations=[HOURS]), gold=(HOURS,), facts=("9am", "5pm"))
    assert s.verdicts["answer_correct"] is True


def test_diagnosis_knowledge_when_gold_doc_not_retrieved():
    s = score(out(REFUSAL, citations=[], confidence="low"), shown=[HOURS])
    assert s.verdicts["retrieval_hit"] is False and s.missing_docs == [PLANS]
    assert s.verdicts["grounded"] is None and s.verdicts["no_false_refusal"] is None  # not fair to judge
    assert diagnose(s.verdicts, True) == "knowledge"


def test_diagnosis_model_capability_when_context_and_format_are_right():
    s = score(out("The Pro plan costs $59 per month."))
    assert [k for k, v in s.verdicts.items() if v is False] == ["answer_correct"]
    assert diagnose(s.verdicts, True) == "model_capability"


def test_diagnosis_behavior_when_format_breaks_over_the_right_context():
    assert diagnose(score("Pro costs $49 per month.").verdicts, True) == "behavior"


def test_normalization():
    assert normalize("  It costs\u00a0$1,000.  ") == "it costs $1000"
    assert contains("Costs $49/month", "$49") and not contains("Costs $490", "$49")
    assert parse_output('```json\n{"a": 1}\n```') == ({"a": 1}, "")


def test_aggregate_and_dominance():
    rows = [score(out("Pro is $49.")).verdicts, score("nope").verdicts,
            score(out("x", citations=[]), answerable=False, gold=()).verdicts]
    m = aggregate(rows)
    assert m["json_valid"] == pytest.approx(2 / 3) and m["pass_rate"] == pytest.approx(1 / 3)
    assert m["refusal_correct"] == 0.0  # applies to one example, which failed
    assert m["grounded"] == pytest.approx(1 / 2)  # applies to the two answerable examples
    assert dominant_class({"pass": 1, "knowledge": 1, "behavior": 3, "model_capability": 0}, 0.5) == "behavior"
    assert dominant_class({"pass": 1, "knowledge": 2, "behavior": 2, "model_capability": 0}, 0.5) is None  # tie
    assert dominant_class({"knowledge": 4, "behavior": 3, "model_capability": 3}, 0.5) is None  # 40% < 50%
    assert dominant_class({"pass": 5}, 0.5) is None
    assert class_rates(["pass", "knowledge", "behavior", "behavior"])["class_behavior"] == 0.5


def test_prompt_lists_each_chunk_with_its_doc_id():
    class Hit:  # the attributes of tandem.knowledge.search.Hit that the prompt reads
        def __init__(self, doc_id, title, text):
            self.doc_id, self.title, self.text = doc_id, title, text

    hits = [Hit(PLANS, "Plans", "Pro costs $49 per month. " * 100), Hit(HOURS, "Hours", "9am to 5pm"),
            Hit(PLANS, "Plans", "Enterprise is custom.")]
    messages = build_messages("How much is Pro?", hits, SPEC)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert f"doc_id: {PLANS}" in user and f"doc_id: {HOURS}" in user and "How much is Pro?" in user
    assert len(user) < 3 * SPEC.max_context_chars + 400  # chunks are cut to the spec's bound
    assert shown_doc_ids(hits) == [PLANS, HOURS]
    assert "(no documents)" in build_messages("q", [], SPEC)[1]["content"]


def test_score_items_rows_carry_what_a_reviewer_needs():
    ex = Example("e1", "How much is Pro?", (PLANS,), ("$49",), "$49", True)
    ctx = [{"doc_id": HOURS, "title": "Hours", "text": "9am to 5pm"}]
    result = score_items(SPEC, [(ex, ctx)], ["not json"])
    row = result.rows[0]
    assert row["retrieved_ids"] == [HOURS] and row["raw_output"] == "not json"
    assert row["diagnosis"] == "knowledge" and row["missing_docs"] == [PLANS]
    assert result.counts["knowledge"] == 1 and result.metrics["class_knowledge"] == 1.0
    assert result.missing_docs() == {"e1": [PLANS]}


def test_right_document_wrong_chunk_is_knowledge():
    # the gold doc was retrieved, but the chunk shown does not hold the fact: refusing is right, not a failure
    # of behavior; the failure is the retrieval's
    ctx = "Acme offers three plans. Enterprise pricing is custom."
    s = score_output(out(REFUSAL, citations=[], confidence="low"), answerable=True, gold_doc_ids=(PLANS,),
                     gold_facts=("$49",), shown_ids=SHOWN, spec=SPEC, context_text=ctx)
    assert s.verdicts["retrieval_hit"] is True and s.verdicts["facts_in_context"] is False
    assert s.verdicts["no_false_refusal"] is None and s.verdicts["grounded"] is None
    assert s.facts_not_in_context == ["$49"] and diagnose(s.verdicts, True) == "knowledge"
    with_fact = score_output(out(REFUSAL, citations=[], confidence="low"), answerable=True, gold_doc_ids=(PLANS,),
                             gold_facts=("$49",), shown_ids=SHOWN, spec=SPEC, context_text=ctx + " Pro is $49.")
    assert with_fact.verdicts["facts_in_context"] is True and diagnose(with_fact.verdicts, True) == "behavior"


def test_missing_docs_names_the_chunk_when_the_doc_was_retrieved():
    ex = Example("e2", "How much is Pro?", (PLANS,), ("$49",), "$49", True)
    ctx = [{"doc_id": PLANS, "title": "Plans", "text": "Enterprise pricing is custom."}]
    result = score_items(SPEC, [(ex, ctx)], [out("Pro costs $59.")])
    assert result.rows[0]["diagnosis"] == "knowledge"
    assert result.missing_docs() == {"e2": [f"{PLANS} (the chunk with '$49')"]}


def test_a_long_chunk_shows_its_window_that_matches_the_question():
    from tandem.behavior.prompt import context_text

    rows = [f"{plan} — Requests per API key: {n} requests per minute." for plan, n in
            (("Free", 60), ("Starter", 120), ("Team", "1,000"), ("Business", "1,200"), ("Enterprise", "3,000"))]
    text = "Rate limits are counted per key over a rolling minute. " * 4 + " ".join(rows) + " Bulk calls count 5."
    shown = context_text([{"text": text}], 150, "What is the API rate limit on the Team plan?")
    assert "Team — Requests per API key: 1,000 requests per minute." in shown and len(shown) <= 150 + 8
    assert shown.startswith("... ") and shown.endswith(" ...")
    assert context_text([{"text": text}], 150).startswith("Rate limits are counted")  # no question: the start
    assert context_text([{"text": "short"}], 150, "Team?") == "short"
