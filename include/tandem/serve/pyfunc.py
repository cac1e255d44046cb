"""A registered adapter version as an MLflow ``pyfunc`` model, loadable through MLflow's own APIs.

    model = mlflow.pyfunc.load_model("models:/tandem-adapter@champion")
    model.predict(["How much does the Team plan cost?"])   # -> [{"answer", "citations", "confidence", ...}]

The model's artifacts are the peft adapter only (weights, adapter_config.json, tandem-adapter.json); the base
model is a reference plus the sha256 of its weights (``model_config``), never a copy. This sidesteps the
``mlflow.transformers`` trap for a PEFT model on a local base (it logs re-initialised LoRA weights; see
docs/decisions.md). ``predict`` answers through Tandem's answer path: retrieval from the live index named by
the TANDEM_* settings of the loading process, generation by the configured base model with this adapter, the
output contract checked. A configured base model whose sha256 differs from the recorded one is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow.pyfunc

log = logging.getLogger(__name__)

ARTIFACT_KEY = "adapter"
MODEL_NAME = "tandem-adapter"  # the logged model's name inside its run


class TandemAdapterModel(mlflow.pyfunc.PythonModel):
    """Answers questions with the configured base model + this adapter, over the live index."""

    def load_context(self, context) -> None:
        from tandem.registry import ResolvedAdapter
        from tandem.config import Settings
        from tandem.errors import UserError
        from tandem.model_store import ensure_base_model
        from tandem.models import base_model_sha256, weights_sha256
        from tandem.serve.adapter_cache import AdapterCache

        config = dict(context.model_config or {})
        self.settings = Settings.load()
        base = ensure_base_model(self.settings)
        recorded = config.get("base_model_sha256", "")
        if recorded and base_model_sha256(base) != recorded:
            raise UserError(f"this adapter was trained on base model {config.get('base_model')} (sha256 {recorded[:12]}), "
                            f"but the configured base model {self.settings.base_model} differs",
                            fix=f"set TANDEM_BASE_MODEL to {config.get('base_model')}")
        folder = self.adapter_dir = Path(context.artifacts[ARTIFACT_KEY])
        # the version number is the registry's, not the artifacts': answers name the exact adapter weights
        self.version = "adapter-sha256:" + weights_sha256(folder)[:12]
        resolved = ResolvedAdapter(ref=self.version, version=self.version, path=folder,
                                   base_sha256=recorded, base_model=config.get("base_model", ""))
        # a cache of one: every reference ("champion" included) names this adapter
        self.cache = AdapterCache(self.settings, check_seconds=10**9, resolver=lambda _s, _ref, _dl: resolved)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[dict]:
        from tandem.serve.answer import answer

        k = (params or {}).get("k")
        out = []
        for question in _questions(model_input):
            result = answer(self.settings, question, k=k, adapter="champion", cache=self.cache).to_dict()
            out.append(result)
        return out


def _questions(model_input) -> list[str]:
    """Questions from a list of strings, a dict or list of dicts with "question", or a DataFrame column."""
    if hasattr(model_input, "columns"):  # pandas DataFrame
        column = "question" if "question" in model_input.columns else model_input.columns[0]
        return [str(q) for q in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        return [str(model_input["question"])]
    return [str(q["question"]) if isinstance(q, dict) else str(q) for q in model_input]


def log_adapter_model(adapter_dir: Path, *, base_model: str, base_sha256: str, metrics: dict[str, float],
                      dataset: Any = None) -> Any:
    """Log the adapter as this run's pyfunc model (adapter artifacts only), its held-out metrics linked to it
    and to the dataset they were measured on."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=TandemAdapterModel(),
        artifacts={ARTIFACT_KEY: str(adapter_dir)},
        model_config={"base_model": base_model, "base_model_sha256": base_sha256},
        # the serving environment is Tandem's own (requirements.txt): no slow inference of pip requirements
        pip_requirements=["tandem"],
        input_example=None,
    )
    if metrics:
        mlflow.log_metrics({f"candidate.{k}": float(v) for k, v in metrics.items()}, model_id=info.model_id,
                           dataset=dataset)
    return info
