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
    from tandem.adapters import registry
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
