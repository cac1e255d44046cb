"""The behavior spec and the eval set: valid files load; every bad input names the file, line or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tandem.behavior.evalset import file_digest, load_examples
from tandem.behavior.spec import load_spec
from tandem.errors import UserError

DEMO_SPEC = Path(__file__).resolve().parents[1] / "include/tandem/data/demo/behavior_spec.yaml"


def _spec_data() -> dict:
    return yaml.safe_load(DEMO_SPEC.read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_spec_loads():
    spec = load_spec(DEMO_SPEC)
    assert spec.version == "2026.3"
    assert spec.primary_metric == "schema_valid"  # the demo gates the output contract
    assert spec.thresholds["json_valid"] == 0.90 and "answer_correct" not in spec.thresholds
    assert spec.anti_flap.consecutive_failures == 1  # the demo: one failing eval triggers the retrain
    assert spec.style.refusal_text in spec.system_prompt  # the prompt tells the model the refusal form
    assert "60 words" in spec.system_prompt
    assert len(spec.digest) == 64
    assert spec.refusal == spec.style.refusal_text


def test_anti_flap_defaults_are_the_production_ones(tmp_path):
    data = yaml.safe_load(DEMO_SPEC.read_text())
    del data["anti_flap"]
    af = load_spec(_write(tmp_path, data)).anti_flap
    assert (af.consecutive_failures, af.min_hours_between_retrains, af.max_retrains_per_week) == (2, 24, 2)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["thresholds"].update(jsn_valid=0.9), "thresholds.jsn_valid"),
    (lambda d: d["thresholds"].update(json_valid=1.5), "thresholds.json_valid"),
    (lambda d: d["style"].pop("refusal_text"), "style.refusal_text"),
    (lambda d: d["style"].update(max_words="sixty"), "style.max_words"),
    (lambda d: d.update(primary_metric="accuracy"), "primary_metric"),
    (lambda d: d["anti_flap"].update(consecutive_failures=0), "anti_flap.consecutive_failures"),
    (lambda d: d["output_contract"]["schema"].update(type="bogus"), "output_contract.schema"),
    (lambda d: d["output_contract"]["schema"]["properties"].pop("citations"), "output_contract.schema.properties.citations"),
    (lambda d: d.update(treshold={}), "treshold"),
    (lambda d: d.pop("version"), "version"),
])
def test_bad_spec_names_file_and_field(tmp_path, mutate, field):
    data = _spec_data()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_spec(path)
    text = str(err.value)
    assert str(path) in text and f"`{field}`" in text and "fix:" in text


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nstyle:\n  max_words: [60\n")
    with pytest.raises(UserError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


GOOD = {"id": "e1", "question": "How much is Pro?", "gold_doc_ids": ["acme/pricing/plans.md"],
        "gold_facts": ["$49"], "reference_answer": "$49 per month.", "answerable": True}


def _jsonl(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_eval_set_loads_and_digests(tmp_path):
    unanswerable = {**GOOD, "id": "e2", "gold_doc_ids": [], "gold_facts": [], "answerable": False}
    path = _jsonl(tmp_path, [GOOD, "", unanswerable])
    examples = load_examples(path)
    assert [e.id for e in examples] == ["e1", "e2"]
    assert examples[0].gold_doc_ids == ("acme/pricing/plans.md",) and examples[1].line == 3
    assert file_digest(path) == file_digest(path) and len(file_digest(path)) == 64
    assert examples[0].old_facts == ()


def test_eval_set_old_facts_are_optional_and_checked(tmp_path):
    path = _jsonl(tmp_path, [{**GOOD, "old_facts": ["$39"]}])
    assert load_examples(path)[0].old_facts == ("$39",)
    assert load_examples(path)[0].as_dict()["old_facts"] == ["$39"]
    for bad, needle in (({**GOOD, "old_facts": "$39"}, "`old_facts` must be a list"),
                        ({**GOOD, "old_facts": [""]}, "`old_facts` must be a list of non-empty strings")):
        with pytest.raises(UserError, match=needle):
            load_examples(_jsonl(tmp_path, [bad]))


@pytest.mark.parametrize("row, needle", [
    ({k: v for k, v in GOOD.items() if k != "gold_facts"}, "missing field `gold_facts`"),
    ({**GOOD, "answerable": "yes"}, "`answerable` must be a bool"),
    ({**GOOD, "gold_facts": []}, "answerable example needs"),
    ({**GOOD, "extra": 1}, "unknown field `extra`"),
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_eval_line_names_file_and_line(tmp_path, row, needle):
    path = _jsonl(tmp_path, [{**GOOD, "id": "e0"}, row])
    with pytest.raises(UserError) as err:
        load_examples(path)
    assert f"{path} line 2" in str(err.value) and needle in str(err.value)


def test_duplicate_ids_are_rejected(tmp_path):
    path = _jsonl(tmp_path, [GOOD, GOOD])
    with pytest.raises(UserError, match="duplicate id 'e1' \\(first on line 1\\)"):
        load_examples(path)


def test_demo_eval_set_is_valid():
    demo = DEMO_SPEC.parent / "eval_set.jsonl"
    examples = load_examples(demo)
    assert 60 <= len(examples) <= 100
    assert any(not e.answerable for e in examples)
