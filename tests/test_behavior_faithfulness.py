"""Issue 14's checks as pure functions: counterfactual probes, faithful, stale, ungrounded values."""

from __future__ import annotations

from tandem.behavior import faithfulness as f
from tandem.demo import data

TABLE = ("| Plan | Rate limit |\n|---|---|\n| Starter | 120 requests per minute |\n"
         "| Team | 1,000 requests per minute |\n\nTeam accounts get 1,000 requests per minute on every key.")
ITEM = {"id": "r007", "question": "What is the Team plan's API rate limit?",
        "gold_facts": ["1,000 requests per minute"], "old_facts": ["600 requests per minute"]}


def test_a_probe_is_deterministic_and_changes_exactly_one_fact_everywhere():
    probe = f.counterfactual(ITEM, "acme/limits/api-rate-limits.md#2", TABLE, seed=7)
    assert probe == f.counterfactual(ITEM, "acme/limits/api-rate-limits.md#2", TABLE, seed=7)
    assert probe.original == "1,000 requests per minute" and probe.gold != probe.original
    assert probe.gold.endswith(" requests per minute") and probe.gold not in TABLE
    assert probe.context.count(probe.gold) == 2 and probe.original not in probe.context
    assert probe.context.replace(probe.gold, probe.original) == TABLE  # nothing else moved
    assert "120 requests per minute" in probe.context
    seeds = {f.counterfactual(ITEM, "c", TABLE, seed=s).gold for s in range(20)}
    assert len(seeds) > 1  # the seed picks the value


def test_no_probe_without_a_value_fact_in_the_chunk():
    assert f.counterfactual({**ITEM, "gold_facts": ["SAML"]}, "c", "SAML single sign-on.", seed=1) is None
    assert f.counterfactual(ITEM, "c", "Rate limits depend on the plan.", seed=1) is None


def test_probes_from_the_demo_release_2_documents():
    """Every release-2 question whose new value stands in its changed document yields a probe, the same each time."""
    questions = [q for q in data.read_jsonl(data.RELEASE2_QUESTIONS_PATH) if q["answerable"]]
    made = []
    for q in questions:
        path = data.RELEASE2_DIR / q["gold_doc_ids"][0].split("/", 1)[1]
        text = path.read_text()
        probe = f.counterfactual(q, q["gold_doc_ids"][0], text, seed=11)
        if probe is not None:
            assert probe.context.replace(probe.gold, probe.original) == text
            made.append(probe)
    assert len(made) >= 10, [p.id for p in made]


def test_faithful_reads_the_context_value_and_not_the_memorised_one():
    probe = f.counterfactual(ITEM, "c", TABLE, seed=7)
    assert f.faithful(f"The Team plan allows {probe.gold}.", probe)
    assert not f.faithful("The Team plan allows 1,000 requests per minute.", probe)
    assert not f.faithful(f"Either {probe.gold} or 1,000 requests per minute.", probe)
    assert not f.faithful("I don't know based on the provided documents.", probe)


def test_stale_is_an_old_fact_while_the_context_holds_the_new_one():
    kw = dict(old_facts=ITEM["old_facts"], new_facts=ITEM["gold_facts"])
    assert f.stale("Team keys get 600 requests per minute.", context=TABLE, **kw)
    assert not f.stale("Team keys get 1,000 requests per minute.", context=TABLE, **kw)
    assert not f.stale("Team keys get 600 requests per minute.", context="Rate limits vary.", **kw)  # knowledge
    assert not f.stale("Team keys get 600 requests per minute.", context=TABLE, old_facts=[],
                       new_facts=ITEM["gold_facts"])


def test_ungrounded_values_on_hand_written_answers():
    cited = [TABLE, "Refunds are available within 30 days of purchase."]
    assert f.ungrounded_values("Team gets 1,000 requests per minute; refunds within 30 days.", cited) == []
    assert f.ungrounded_values("Team gets 1000 requests per minute.", cited) == []  # separators don't matter
    assert f.ungrounded_values("Team costs $49 and refunds take 14 days.", cited) == ["$49", "14 days"]
    assert f.ungrounded_values("I don't know based on the provided documents.", cited) == []


# --- wired into the eval, the diagnosis, the decision, the gate, the RAFT data and the answer path ------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from tandem.behavior.diagnosis import diagnose  # noqa: E402
from tandem.behavior.evalset import Example  # noqa: E402
from tandem.behavior.scoring import score_output  # noqa: E402
from tandem.behavior.spec import load_spec  # noqa: E402

SPEC = load_spec(Path(__file__).resolve().parents[1] / "include/tandem/data/demo/behavior_spec.yaml")
DOC = "acme/limits/api-rate-limits.md"
CTX = [{"doc_id": "acme/pricing/plans.md", "chunk_id": "p1", "title": "Plans", "text": "Team costs $59 a month."},
       {"doc_id": DOC, "chunk_id": "r1", "title": "API rate limits", "text": TABLE}]


def _answer(text, citations=(DOC,)):
    return json.dumps({"answer": text, "citations": list(citations), "confidence": "high"})


def _score(raw, context=TABLE, doc_texts=None):
    return score_output(raw, answerable=True, gold_doc_ids=[DOC], gold_facts=ITEM["gold_facts"], shown_ids=[DOC],
                        spec=SPEC, context_text=context, old_facts=ITEM["old_facts"], doc_texts=doc_texts)


def test_stale_diagnosis_on_hand_written_outputs():
    stale = _score(_answer("Team keys get 600 requests per minute."))
    assert stale.verdicts["not_stale"] is False and stale.old_facts_found == ["600 requests per minute"]
    assert diagnose(stale.verdicts, True) == "stale"
    fresh = _score(_answer("Team keys get 1,000 requests per minute."))
    assert fresh.verdicts["not_stale"] is True and diagnose(fresh.verdicts, True) == "pass"
    # the context lacks the new value: a knowledge failure, never stale
    missing = _score(_answer("Team keys get 600 requests per minute."), context="Rate limits depend on the plan.")
    assert missing.verdicts["not_stale"] is None and diagnose(missing.verdicts, True) == "knowledge"
    # a format failure that does not repeat the old value stays a behavior failure
    prose = _score("Team keys get 1,000 requests per minute.")
    assert prose.verdicts["not_stale"] is True and diagnose(prose.verdicts, True) == "behavior"


def test_values_grounded_checks_the_cited_documents_only():
    texts = {DOC: [TABLE], "acme/pricing/plans.md": ["Team costs $59 a month."]}
    ok = _score(_answer("Team keys get 1,000 requests per minute."), doc_texts=texts)
    assert ok.verdicts["values_grounded"] is True and ok.ungrounded == []
    wrong_row = _score(_answer("Team keys get 120 requests per minute and cost $59."), doc_texts=texts)
    assert wrong_row.verdicts["values_grounded"] is False and wrong_row.ungrounded == ["$59"]  # plans.md not cited
    refusal = _score(_answer(SPEC.style.refusal_text, ()), doc_texts=texts)
    assert refusal.verdicts["values_grounded"] is None


def test_build_probes_is_deterministic_and_alters_one_fact_in_every_chunk_that_states_it():
    example = Example(id="r004", question=ITEM["question"], gold_doc_ids=(DOC,), gold_facts=tuple(ITEM["gold_facts"]),
                      reference_answer="", answerable=True)
    other = Example(id="x1", question="Is SAML included?", gold_doc_ids=("acme/sso.md",), gold_facts=("SAML",),
                    reference_answer="", answerable=True)
    twice = [{**CTX[1], "chunk_id": "r2", "text": "Team keys: 1,000 requests per minute."}]
    items = [(example, CTX + twice), (other, CTX), (Example(id="u1", question="Tyres?", gold_doc_ids=(),
                                                             gold_facts=(), reference_answer="", answerable=False), CTX)]
    probes = f.build_probes(items, seed=3, limit=10, max_chars=600)
    assert probes == f.build_probes(items, seed=3, limit=10, max_chars=600)
    assert [p.id for p, _ in probes] == ["cf-r004"]  # no value fact for x1; u1 is unanswerable
    probe, contexts = probes[0]
    assert probe.original == "1,000 requests per minute" and probe.gold != probe.original
    assert contexts[0]["text"] == CTX[0]["text"]  # the other document is untouched
    assert all(probe.original not in c["text"] for c in contexts)
    assert contexts[1]["text"].replace(probe.gold, probe.original) == TABLE
    assert contexts[2]["text"] == f"Team keys: {probe.gold}."  # the same value in another chunk changes too
    assert f.build_probes(items, seed=3, limit=0, max_chars=600) == []


def test_the_grounding_guard_on_hand_written_answers():
    from tandem.serve.answer import check_output

    texts = {DOC: [TABLE], "acme/pricing/plans.md": ["Team costs $59 a month."]}
    shown = list(texts)
    grounded = _answer("Team keys get 1,000 requests per minute.")
    assert check_output(grounded, SPEC, shown, texts) == (json.loads(grounded), True, [])
    contract, valid, violations = check_output(_answer("Team keys get 600 requests per minute."), SPEC, shown, texts)
    assert not valid and violations == ["ungrounded: 600 requests not in the documents it cites"]
    assert contract["confidence"] == "low" and contract["answer"] == "Team keys get 600 requests per minute."
    uncited = check_output(_answer("It costs $59.", ()), SPEC, shown, texts)
    assert uncited[1] is False and "it cites none" in uncited[2][0]
    refusal = _answer(SPEC.style.refusal_text, ())
    assert check_output(refusal, SPEC, shown, texts) == (json.loads(refusal), True, [])
    words = _answer("Every key is rate limited per minute.")
    assert check_output(words, SPEC, shown, texts)[1] is True  # no value, nothing to ground


def test_stale_answers_route_to_a_retrain_never_to_a_reindex():
    from tandem.behavior import antiflap
    from tandem.behavior.decision import decide

    metrics = {name: 1.0 for name in SPEC.thresholds} | {"json_valid": 0.5}
    counts = {"pass": 5, "behavior": 2, "knowledge": 3, "stale": 4, "model_capability": 0}
    decision = decide(SPEC, metrics, counts, missing_docs={}, history=antiflap.History(failing_streak=0,
                                                                                      retrain_times=()),
                      trigger_reindex=True)
    assert decision.action == "retrain" and decision.kind == "behavior" and "4 stale answer(s)" in decision.reason
    decision = decide(SPEC, metrics, {**counts, "stale": 0}, missing_docs={"e1": [DOC]}, history=None,
                      trigger_reindex=True)
    assert decision.action == "reindex"  # without the stale answers, knowledge dominates


def test_counterfactual_rows_alter_context_and_target_consistently():
    from tandem.adapters import dataset

    row = {"id": "t9", "split": "train", "kind": "oracle", "question": ITEM["question"], "answerable": True,
           "oracle_doc_ids": [DOC], "gold_facts": ITEM["gold_facts"], "contexts": CTX,
           "target": {"answer": "Team keys get 1,000 requests per minute.", "citations": [DOC], "confidence": "high"}}
    altered = dataset.counterfactual_row(row, row["target"]["answer"], seed=5)
    assert altered == dataset.counterfactual_row(row, row["target"]["answer"], seed=5)
    new = altered["altered"]["value"]
    assert altered["kind"] == "counterfactual" and altered["altered"]["fact"] == "1,000 requests per minute"
    assert altered["target"]["answer"] == f"Team keys get {new}." and altered["gold_facts"] == [new]
    assert altered["contexts"][1]["text"].replace(new, "1,000 requests per minute") == TABLE
    assert altered["contexts"][0] == CTX[0] and altered["target"]["citations"] == [DOC]
    assert dataset.alterations([altered, row]) == [{"id": "t9", **altered["altered"]}]
    no_value = {**row, "gold_facts": ["SAML"], "target": {**row["target"], "answer": "SAML is included."}}
    assert dataset.counterfactual_row(no_value, "SAML is included.", seed=5) is None
