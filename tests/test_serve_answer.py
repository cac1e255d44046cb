"""The answer path end to end: a real tiny index, the real SmolLM2 base model, real adapters in MLflow."""

from __future__ import annotations

import pytest

from serve_fixtures import ANSWERABLE, OFF_TOPIC, clean_registry
from tandem.errors import ServiceUnavailable, UserError


def test_input_validation_names_the_input(serve_settings):
    from tandem.serve import validation

    for bad, word in (("", "empty"), ("   ", "empty"), ("x" * 1001, "1001 characters"), (None, "text")):
        with pytest.raises(UserError, match=word) as err:
            validation.question(serve_settings, bad)
        assert err.value.fix
    assert validation.question(serve_settings, "  hi  ") == "hi"
    for bad in (0, 21, -1, "5", 2.5, True):
        with pytest.raises(UserError, match="k"):
            validation.k(serve_settings, bad)
    assert validation.k(serve_settings, 20) == 20
    assert [validation.adapter(v) for v in (None, "champion", "Base", "v3", "007")] == ["champion", "champion", "base", "3", "7"]
    for bad in ("latest", "v", "3a", "../x", "0", ""):
        with pytest.raises(UserError):
            validation.adapter(bad)


def test_refusal_under_threshold_generates_nothing(serve_settings, serve_index):
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer, load_spec

    cache = AdapterCache(serve_settings)
    result = answer(serve_settings, OFF_TOPIC, adapter="base", cache=cache)
    spec = load_spec(serve_settings)
    assert result.refused
    assert result.contract == {"answer": spec.style.refusal_text, "citations": [], "confidence": "low"}
    assert result.best_similarity is not None and result.best_similarity < serve_settings.refusal_min_similarity
    assert result.timings["generation_ms"] == 0.0 and result.raw_output is None
    assert not cache.is_loaded("base")  # no model was even loaded
    assert result.index_version == serve_index["index_version"]

    # the same relevant question is refused once the threshold is above its best similarity
    strict = serve_settings.replace(refusal_min_similarity=0.99)
    refused = answer(strict, ANSWERABLE, adapter="base", cache=AdapterCache(strict))
    assert refused.refused and refused.best_similarity >= serve_settings.refusal_min_similarity
    assert refused.retrieved[0]["doc_id"] == "acme/pricing/plans.md"


@pytest.mark.slow
def test_answer_end_to_end_with_the_real_base_model(serve_settings, serve_index, serve_cache):
    from tandem.behavior import scoring
    from tandem.serve.answer import answer, load_spec

    steps = []
    cold = not serve_cache.is_loaded("base")  # other tests of this process may have loaded it already
    result = answer(serve_settings, ANSWERABLE, adapter="base", cache=serve_cache, progress=steps.append)
    assert steps == ["resolve adapter", "retrieve", *(["load model"] if cold else []), "generate", "validate"]
    assert not result.refused and result.adapter == "base"
    assert result.retrieved[0]["doc_id"] == "acme/pricing/plans.md"
    assert len(result.retrieved) == load_spec(serve_settings).retrieval_k  # k defaults to the spec's
    # the contract's shape always holds, and citations are a subset of what was shown
    assert set(result.contract) == {"answer", "citations", "confidence"}
    assert isinstance(result.contract["answer"], str) and result.contract["answer"]
    assert result.contract["confidence"] in ("high", "medium", "low")
    shown = {r["doc_id"] for r in result.retrieved}
    assert set(result.contract["citations"]) <= shown
    assert [s["doc_id"] for s in result.sources] == result.contract["citations"]
    assert all(s["uri"] and s["title"] for s in result.sources)
    assert result.timings["generation_ms"] > 0 and result.timings["retrieval_ms"] > 0
    # valid/violations agree with the behavior cadence's own scorer on the raw output
    score = scoring.score_output(result.raw_output, answerable=True, gold_doc_ids=[], gold_facts=[],
                                 shown_ids=list(dict.fromkeys(r["doc_id"] for r in result.retrieved)),
                                 spec=load_spec(serve_settings))
    assert result.valid == all(score.verdicts[n] is not False for n in
                               ("json_valid", "schema_valid", "citations_valid", "style_max_words",
                                "style_forbidden_phrases"))
    assert result.valid == (not result.violations)
    assert serve_cache.is_loaded("base")  # later questions reuse the loaded model
    text = result.text()
    assert text.startswith(result.contract["answer"]) and ("Citations:" in text)


def test_check_output_repairs_but_reports(serve_settings):
    from tandem.serve.answer import check_output, load_spec

    spec = load_spec(serve_settings)
    shown = ["acme/a.md", "acme/b.md"]
    ok = '{"answer": "It costs $49.", "citations": ["acme/a.md"], "confidence": "high"}'
    assert check_output(ok, spec, shown) == ({"answer": "It costs $49.", "citations": ["acme/a.md"],
                                              "confidence": "high"}, True, [])
    invented = '{"answer": "It costs $49.", "citations": ["acme/a.md", "acme/zzz.md"], "confidence": "sure"}'
    contract, valid, violations = check_output(invented, spec, shown)
    assert contract == {"answer": "It costs $49.", "citations": ["acme/a.md"], "confidence": "low"}
    assert not valid and any("acme/zzz.md" in v for v in violations) and any("schema_valid" in v for v in violations)
    contract, valid, violations = check_output("The Pro plan is $49", spec, shown)
    assert contract == {"answer": "The Pro plan is $49", "citations": [], "confidence": "low"}
    assert not valid and violations[0].startswith("json_valid")
    refusal = '{"answer": "%s", "citations": ["acme/a.md"], "confidence": "low"}' % spec.style.refusal_text
    assert check_output(refusal, spec, shown)[0]["citations"] == []


def test_missing_index_is_a_clear_503(serve_settings):
    from tandem.serve.answer import answer

    empty = serve_settings.replace(index_name="serve_none")
    with pytest.raises(ServiceUnavailable, match="empty") as err:
        answer(empty, ANSWERABLE, adapter="base")
    assert "tandem reindex" in err.value.fix


def test_missing_champion_is_a_clear_503_unless_base_is_allowed(serve_settings, serve_index):
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer

    clean_registry(serve_settings)
    with pytest.raises(ServiceUnavailable, match="no champion") as err:
        answer(serve_settings, OFF_TOPIC, cache=AdapterCache(serve_settings))
    assert "lora_retrain" in err.value.fix and "--adapter base" in err.value.fix
    lenient = serve_settings.replace(serve_base_without_champion=True)
    assert answer(lenient, OFF_TOPIC, cache=AdapterCache(lenient)).adapter == "base"
    with pytest.raises(UserError, match="999"):
        answer(serve_settings, OFF_TOPIC, adapter="999", cache=AdapterCache(serve_settings))
