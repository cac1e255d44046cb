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
