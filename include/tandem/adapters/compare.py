"""The three-way evaluation: candidate, champion and base scored on the same holdout items with the
scorers of ``behavior_eval`` (``tandem.behavior.evaluate.evaluate``): no second scorer.

Holdout rows keep the contexts the RAFT dataset gave them (oracle + distractors, or none for refusal rows),
so the three models see exactly the same prompts. A row whose oracle was withheld counts as unanswerable:
the context cannot answer it, and the spec's refusal is the right output. The same counterfactual probes
(``tandem.behavior.faithfulness.build_probes`` over the oracle rows, the spec's seed) give each model its
``faithful`` metric.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Callable

from tandem.config import Settings

log = logging.getLogger(__name__)

ORDER = ("candidate", "champion", "base")


def holdout_items(rows: list[dict]) -> list[tuple[Any, list[dict]]]:
    """(behavior Example, contexts) for each holdout row."""
    from tandem.behavior.evalset import Example

    items = []
    for r in rows:
        oracle = r["kind"] == "oracle"
        example = Example(id=r["id"], question=r["question"],
                          gold_doc_ids=tuple(r["oracle_doc_ids"]) if oracle else (),
                          gold_facts=tuple(r.get("gold_facts") or ()) if oracle else (),
                          reference_answer=r["target"]["answer"], answerable=oracle)
        items.append((example, r["contexts"]))
    return items


def gate_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a spec can threshold (verdict rates + pass_rate); the diagnosis class shares are left out."""
    from tandem.behavior.metrics import THRESHOLD_METRICS

    return {k: float(v) for k, v in metrics.items() if k in THRESHOLD_METRICS}


def three_way(settings: Settings, spec: Any, rows: list[dict], adapters: dict[str, Path | None], *,
              base_model: str, progress: Callable[[str, int, int], None] | None = None,
              known: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Score each model of ``adapters`` ({"candidate": folder, "champion": folder, "base": None}) on ``rows``.

    ``known``: models whose metrics on exactly these rows are already known (the base model's, cached by
    ``base_scores_key``): they are not generated again, and their per-item columns are left out.
    Returns {"models": {name: gate metrics}, "table": {column: [...]}, "items": per-item rows, "stats": ...}.
    """
    from tandem.behavior.evaluate import evaluate
    from tandem.behavior.faithfulness import build_probes
    from tandem.behavior.generate import Generator

    items = holdout_items(rows)
    probes = build_probes(items, seed=spec.probe_seed, limit=spec.probes, max_chars=spec.max_context_chars)
    log.info("holdout: %d rows and %d counterfactual probes per model", len(items), len(probes))
    probe_rows: dict[str, list[dict]] = {}
    models: dict[str, dict[str, float]] = {}
    per_item: dict[str, list[dict]] = {}
    stats: dict[str, dict] = {}
    for name in [n for n in ORDER if n in adapters]:
        if known and name in known:
            models[name] = dict(known[name])
            log.info("%s: scores reused, not generated again: %s", name, {k: round(v, 3) for k, v in models[name].items()})
            continue
        started = time.monotonic()
        generator = Generator(base_model, None if adapters[name] is None else str(adapters[name]),
                              threads=settings.torch_threads)
        done = [0]

        def tick(n: int, _name=name, _done=done) -> None:
            _done[0] += n
            if progress is not None:
                progress(_name, _done[0], len(items) + len(probes))

        result = evaluate(spec, generator, items, progress=tick, probes=probes)
        probe_rows[name] = result.probe_rows
        models[name] = gate_metrics(result.metrics)
        per_item[name] = result.rows
        stats[name] = {**result.stats, "seconds": round(time.monotonic() - started, 2)}
        log.info("%s: %s", name, {k: round(v, 3) for k, v in models[name].items()})
        del generator
        gc.collect()
    metrics = sorted({m for scores in models.values() for m in scores})
    names = list(models)
    table = {"metric": metrics, **{n: [models[n].get(m) for m in metrics] for n in names}}
    items_table: dict[str, list] = {"id": [r["id"] for r in rows], "kind": [r["kind"] for r in rows]}
    for n in per_item:
        items_table[f"{n}_output"] = [row["raw_output"] for row in per_item[n]]
        items_table[f"{n}_passed"] = [bool(row["passed"]) for row in per_item[n]]
        items_table[f"{n}_failed_rules"] = [",".join(row["failed_rules"]) for row in per_item[n]]
    probes_table: dict[str, list] = {"id": [p.id for p, _ in probes], "gold": [p.gold for p, _ in probes],
                                     "original": [p.original for p, _ in probes]}
    for n in probe_rows:
        probes_table[f"{n}_answer"] = [row["answer"] for row in probe_rows[n]]
        probes_table[f"{n}_faithful"] = [bool(row["faithful"]) for row in probe_rows[n]]
    return {"models": models, "table": table, "items": items_table, "probes": probes_table, "stats": stats}


SCORER_VERSION = 2  # bump when scoring or probe generation changes: cached base scores no longer apply


def base_scores_key(base_sha256: str, dataset_digest: str, spec_digest: str, n_rows: int) -> str:
    """What the base model's holdout scores depend on: the weights, the rows, the spec and the scorer."""
    import hashlib

    text = "\x1f".join([base_sha256, dataset_digest, spec_digest, str(n_rows), str(SCORER_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]
