"""The model card of an adapter version (Markdown; the registered version's description)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def render(*, version_hint: str = "", base_model: str, base_sha256: str, params: dict, dataset: dict,
           training: dict, evaluation: dict, decision: dict | None = None, context: dict | None = None) -> str:
    """``evaluation``: {"models": {"candidate": {metric: v}, "champion": ..., "base": ...}, "primary": name}."""
    models = evaluation.get("models", {})
    metrics = sorted({m for scores in models.values() for m in scores})
    names = [n for n in ("candidate", "champion", "base") if n in models]
    lines = [
        f"# Tandem LoRA adapter {version_hint}".rstrip(),
        "",
        "Adapter weights only (peft `save_pretrained`). Load it on the base model below; "
        "`tandem.registry.resolve` checks the base's sha256 before serving it.",
        "",
        "## Base model",
        f"- reference: `{base_model}`",
        f"- weights sha256: `{base_sha256}`",
        "",
        "## Training data (RAFT)",
        f"- digest: `{dataset.get('digest', '')}`",
        f"- rows: {dataset.get('counts', {})}",
        f"- source: `{dataset.get('source', '')}`, index version `{dataset.get('index_version') or '-'}`",
        "",
        "## Training",
        f"- LoRA r={params.get('lora_r')} alpha={params.get('lora_alpha')} dropout={params.get('lora_dropout')} "
        f"on {', '.join(params.get('target_modules', []))}",
        f"- {training.get('steps')} steps, batch {params.get('batch_size')}, lr {params.get('learning_rate')}, "
        f"max_seq_len {params.get('max_seq_len')}, seed {params.get('seed')}, device {training.get('device')}",
        f"- loss {training.get('first_loss')} -> {training.get('final_loss')}; "
        f"{training.get('s_per_step')} s/step, {training.get('train_seconds')} s",
        "",
        "## Held-out evaluation",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_fmt(models[n].get(metric)) for n in names) + " |")
    if decision:
        lines += ["", "## Gate", f"- {'promoted' if decision.get('promote') else 'not promoted'}: {decision.get('reason', '')}"]
    if context:
        lines += ["", "## Provenance"] + [f"- {k}: {v}" for k, v in sorted(context.items()) if v]
    return "\n".join(lines) + "\n"
