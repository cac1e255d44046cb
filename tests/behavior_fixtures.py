"""Fixtures for the behavior eval tests (imported by tests/test_behavior_eval_*.py).

Real parts only: a tiny corpus indexed by the knowledge cadence's own reindex into the session's Postgres
(index ``behavior_t``), the real SmolLM2 base model, the session's real MLflow server. The spec is the demo
spec with a 16-token budget (no contract-valid answer fits in 16 tokens, so every answer is a behavior
failure: the decision under test is deterministic) and an anti-flap policy without time rules (other tests
log training runs to the same server).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DOCS = {
    "pricing/plans.md": "# Plans and pricing\n\nAcme Beacon has three plans. The Starter plan costs $15 per month. "
                        "The Pro plan costs $49 per month and includes 50 monitors.\n",
    "support/hours.md": "# Support hours\n\nSupport is available from 9am to 5pm CET on weekdays. Pro customers "
                        "can also open tickets at weekends.\n",
    "integrations/slack.md": "# Slack integration\n\nConnect Slack from Integrations > Slack. The Slack app needs "
                             "the chat:write permission.\n",
}


def examples(prefix: str = "c") -> list[dict]:
    return [
        {"id": f"{prefix}1", "question": "How much does the Pro plan cost per month?",
         "gold_doc_ids": ["acme/pricing/plans.md"], "gold_facts": ["$49"],
         "reference_answer": "The Pro plan costs $49 per month.", "answerable": True},
        {"id": f"{prefix}2", "question": "When is support available?", "gold_doc_ids": ["acme/support/hours.md"],
         "gold_facts": ["9am", "5pm"], "reference_answer": "From 9am to 5pm CET on weekdays.", "answerable": True},
        {"id": f"{prefix}3", "question": "Who founded Acme?", "gold_doc_ids": [], "gold_facts": [],
         "reference_answer": "", "answerable": False},
    ]


def write_eval_set(path: Path, prefix: str = "c") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples(prefix)))
    return path


@pytest.fixture(scope="session")
def behavior_settings(settings, tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("behavior")
    corpus = root / "acme"
    for rel, text in DOCS.items():
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    golden = root / "golden.jsonl"
    golden.write_text(json.dumps({"query": "Pro plan price", "expected_doc_ids": ["acme/pricing/plans.md"]}) + "\n")
    spec = yaml.safe_load((REPO / "include/tandem/data/demo/behavior_spec.yaml").read_text())
    spec["generation"] = {"max_new_tokens": 16, "batch_size": 4}
    spec["retrieval"] = {"k": 3}
    spec["anti_flap"] = {"consecutive_failures": 2, "min_hours_between_retrains": 0, "max_retrains_per_week": 1000}
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return settings.replace(index_name="behavior_t", sources=(f"acme={corpus}",), canary_path=str(golden),
                            spec_path=str(spec_path), eval_set_path=str(write_eval_set(root / "eval.jsonl", "c")),
                            torch_threads=1)  # 1 thread: far faster than 2 on a shared 2-core machine


@pytest.fixture(scope="session")
def behavior_index(behavior_settings) -> dict:
    """The tiny corpus, indexed once per session by the knowledge cadence's reindex."""
    from tandem.knowledge import reindex

    return reindex.run(behavior_settings, progress=False)
