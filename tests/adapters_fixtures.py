"""Fixtures and helpers for the adapters tests (imported by tests/test_adapters_*.py).

Everything is real: adapters are real peft LoRA folders on the real SmolLM2 base, registered in the
real MLflow server of the session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def make_adapter(base_model_path: Path, dest: Path, seed: int = 0, r: int = 2) -> Path:
    """A real (untrained, randomly initialised, so it changes the logits) LoRA adapter folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(dest)
    (dest / "tandem-adapter.json").write_text(json.dumps({"base_model": str(base_model_path), "seed": seed}))
    return dest


def register_adapter(settings, folder: Path, metrics: dict | None = None, status_ok: bool = True) -> str:
    """Log ``folder`` as a training run's adapter artifacts and register it (the path production uses)."""
    import mlflow

    from tandem import tracking
    from tandem import registry
    from tandem.models import base_model_sha256, weights_sha256

    tracking.use(settings, tracking.EXPERIMENT_TRAINING)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), registry.ARTIFACT_PATH)
    tags = tracking.tags(base_model=settings.base_model, base_model_sha256=base_model_sha256(settings.base_model),
                         adapter_sha256=weights_sha256(folder))
    for name, value in (metrics or {}).items():
        tags[registry.METRIC_TAG_PREFIX + name] = str(value)
    return registry.register_version(settings, run.info.run_id, tags=tags, description="test adapter")


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory, base_model_path) -> list[Path]:
    """Three distinct real adapters."""
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(base_model_path, root / f"a{i}", seed=i) for i in range(3)]


# --- a tiny knowledge base and curated training set, indexed in an index of their own

KB = {
    "pricing.md": "# Pricing\n\nAcme Beacon has two plans. The Starter plan costs $9 per month and monitors up to "
                  "10 endpoints. The Team plan costs $49 per month and monitors up to 100 endpoints. Annual billing "
                  "gives two months free on both plans.\n",
    "api-keys.md": "# API keys\n\nCreate API keys under Settings > API. Each key is either read-only or read-write. "
                   "API keys expire 365 days after they are created; rotate them before that date.\n",
    "retention.md": "# Data retention\n\nCheck results are kept for 90 days on the Starter plan and for 400 days on "
                    "the Team plan. Deleted monitors lose their history after 30 days.\n",
    "status-pages.md": "# Status pages\n\nA status page can live on your own domain: add a CNAME record pointing "
                       "to status.acme-beacon.example and enter the domain under Status page > Domain.\n",
    "support.md": "# Support\n\nWrite to support@acme-beacon.example. Team plan tickets get a first answer within "
                  "4 hours on business days; Starter tickets within 2 business days.\n",
}

TRAIN_SET = [
    ("q-price-team", "How much does the Team plan cost per month?", ["kb/pricing.md"], "The Team plan costs $49 per month."),
    ("q-retention", "How long are check results kept on the Starter plan?", ["kb/retention.md"],
     "Check results are kept for 90 days on the Starter plan."),
    ("q-key-expiry", "When do API keys expire?", ["kb/api-keys.md"], "API keys expire 365 days after they are created."),
    ("q-domain", "How do I put my status page on my own domain?", ["kb/status-pages.md"],
     "Add a CNAME record pointing to status.acme-beacon.example and enter the domain under Status page > Domain."),
    ("q-support", "How fast does support answer Team plan tickets?", ["kb/support.md"],
     "Team plan tickets get a first answer within 4 hours on business days."),
    ("q-annual", "Does annual billing give a discount?", ["kb/pricing.md"], "Yes: annual billing gives two months free."),
    ("q-tires", "Can Beacon measure the tire pressure of my car?", [], ""),
    ("q-football", "Which football team does the Beacon CEO support?", [], ""),
]


def write_train_set(path: Path) -> Path:
    lines = []
    for ex_id, question, oracle, answer in TRAIN_SET:
        lines.append(json.dumps({"id": ex_id, "question": question, "oracle_doc_ids": oracle, "answer": answer,
                                 "gold_facts": [answer] if answer else [], "answerable": bool(oracle)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_test_spec(demo_spec: str, dest: Path) -> Path:
    """The demo spec with tighter generation bounds: a refusal or a short cited answer fits in 48 tokens."""
    import yaml

    spec = yaml.safe_load(Path(demo_spec).read_text())
    spec["version"] = f"{spec['version']}-test"
    spec.setdefault("generation", {})["max_new_tokens"] = 48
    spec.setdefault("prompt", {})["max_context_chars"] = 300
    dest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def adapters_settings(settings, tmp_path_factory):
    """Settings with the tiny KB indexed (own index name and source) and the tiny training set."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("adapters_kb")
    kb = root / "kb"
    kb.mkdir()
    for name, text in KB.items():
        (kb / name).write_text(text)
    train_set = write_train_set(root / "train_set.jsonl")
    s = settings.replace(sources=(f"kb={kb}",), index_name="adapters_test", train_set_path=str(train_set),
                         spec_path=str(write_test_spec(settings.spec_path, root / "spec.yaml")), torch_threads=1)
    env = {**os.environ, **s.as_env()}
    proc = subprocess.run([str(Path(sys.executable).parent / "tandem"), "reindex", "--json"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return s


def gate_promotes(settings, run_id: str, conf: dict) -> bool:
    """Whether the gate must promote: recomputed from the metrics the training run logged, the spec's
    thresholds and the run's params (independent of the tags and aliases the gate task wrote)."""
    from tandem import tracking
    from tandem.adapters import gate, params
    from tandem.behavior.spec import load_spec

    metrics = tracking.client(settings).get_run(run_id).data.metrics
    models: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name, _, metric = key.partition(".")
        if name in ("candidate", "champion", "base") and metric and not metric.startswith("eval_"):
            models.setdefault(name, {})[metric] = value
    spec = load_spec(settings.spec_path)
    thresholds, primary = gate.spec_gate(spec)
    p = params.validate(conf)
    decided = gate.decide(models["candidate"], models.get("champion") or models["base"], thresholds=thresholds,
                          primary=primary, margin=p.promotion_margin, tolerance=p.regression_tolerance,
                          base=models.get("base"), base_tolerance=spec.base_tolerance)
    return decided.promote and p.auto_promote and not p.require_approval
