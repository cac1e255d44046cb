"""The fast variant of the demo (``make demo DEMO_ARGS=--fast``, and the CI test): the same steps on slices.

The story and the DAG runs are the real ones; only the amounts shrink. The slices are written under
``$TANDEM_HOME/demo/fast/`` and handed to the stack through its settings (so the stack must be started by
the demo for them to apply):

- the eval set: the first ``EVAL_ANSWERABLE`` answerable and ``EVAL_UNANSWERABLE`` unanswerable examples;
- the training set: the first ``TRAIN_ROWS`` answerable curated examples (by id). Off-topic questions are
  refused by the answer path's similarity gate; a 135M model trained a few steps on refusal targets answers
  most questions with the refusal (measured: 12 steps on a 22% refusal mix refused 6 of 7 answerable
  held-out questions);
- the spec: the demo spec with a shorter context per chunk, fewer new tokens, fewer counterfactual probes, and
  lower contract thresholds and a wider base-model tolerance (a few steps, and rates over a handful of rows);
- ``lora_retrain`` trains ``MAX_STEPS`` steps (``TANDEM_RETRAIN_MAX_STEPS``);
- ``tandem serve`` re-reads the champion alias every ``CHAMPION_CHECK_SECONDS`` (step 7 waits for it).
"""

from __future__ import annotations

import json
from pathlib import Path

from tandem.demo import data

# Step 6's question for this variant: the refund window of annual plans (14 -> 30 days). The 20-step adapter
# gives its new value (measured in the CI test; the full demo's 80-step adapter answers 7 of the 15).
ASK_QUESTION = "r011"
EVAL_ANSWERABLE = 5
EVAL_UNANSWERABLE = 1
TRAIN_ROWS = 56
MAX_STEPS = 20
CHAMPION_CHECK_SECONDS = 2
SPEC_OVERRIDES = {"prompt": {"max_context_chars": 400}, "generation": {"max_new_tokens": 64, "batch_size": 8},
                  # ~8 held-out rows and 6 eval examples: one miss moves a rate by 0.12-0.17, and 20 steps are
                  # not 40 (measured after 20 steps: schema_valid 0.875, citations_valid 0.75 on 8 rows)
                  "thresholds": {"json_valid": 0.75, "schema_valid": 0.75, "citations_valid": 0.6,
                                 "style_max_words": 0.8, "style_forbidden_phrases": 0.98, "retrieval_hit": 0.6},
                  # 4 probes keep the eval short, so one probe moves `faithful` by 0.25 (and one of ~8 held-out rows
                  # a content rate by 0.12-0.17): the base-model check allows one miss (the full demo: 0.05).
                  # Measured with weighted RRF: the 20-step adapter got 0 of 4 probes, the base model 1 of 4
                  "faithfulness": {"probes": 4}, "gate": {"base_tolerance": 0.25}}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def prepare(folder: Path) -> dict[str, str]:
    """Write the slices into ``folder``; returns the TANDEM_* environment that points the stack at them."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    examples = sorted(data.read_jsonl(data.EVAL_SET_PATH), key=lambda e: e["id"])
    answerable = [e for e in examples if e["answerable"]][:EVAL_ANSWERABLE]
    unanswerable = [e for e in examples if not e["answerable"]][:EVAL_UNANSWERABLE]
    train = [e for e in sorted(data.read_jsonl(data.TRAIN_SET_PATH), key=lambda e: e["id"]) if e["answerable"]]
    train = train[:TRAIN_ROWS]
    spec = yaml.safe_load(Path(data.BEHAVIOR_SPEC_PATH).read_text())
    spec["version"] = f"{spec['version']}-fast"
    for section, values in SPEC_OVERRIDES.items():
        if section == "thresholds":
            spec[section] = dict(values)  # replaced, not merged: the fast gate is its own
        else:
            spec.setdefault(section, {}).update(values)
    (folder / "behavior_spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return {
        "TANDEM_EVAL_SET_PATH": str(_write_jsonl(folder / "eval_set.jsonl", answerable + unanswerable)),
        "TANDEM_TRAIN_SET_PATH": str(_write_jsonl(folder / "train_set.jsonl", train)),
        "TANDEM_SPEC_PATH": str(folder / "behavior_spec.yaml"),
        "TANDEM_RETRAIN_MAX_STEPS": str(MAX_STEPS),
        # step 7 waits for `tandem serve` to re-read the champion alias after `promote base`: 3 s, not 31
        "TANDEM_CHAMPION_CHECK_SECONDS": str(CHAMPION_CHECK_SECONDS),
    }
