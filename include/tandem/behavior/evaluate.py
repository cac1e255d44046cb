"""Score a model on a set of items: generate answers for (example, contexts) pairs, score, diagnose, aggregate.

``evaluate(spec, generator, items)`` is what the eval run uses over retrieved contexts, and what lora_retrain
uses over a holdout split with fixed contexts. ``score_items`` scores outputs that already exist.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

from tandem.behavior.diagnosis import class_counts, class_rates, diagnose
from tandem.behavior.evalset import Example
from tandem.behavior.metrics import FAILURE_CLASSES, FAITHFUL, VERDICTS
from tandem.behavior.prompt import build_messages, context_text, field as _field, refusal_target, shown_doc_ids
from tandem.behavior.scoring import aggregate, applicable_counts, score_output

log = logging.getLogger(__name__)

Item = tuple[Example, Sequence[Any]]  # (example, contexts with .doc_id/.title/.text)


@dataclasses.dataclass
class EvalResult:
    rows: list[dict]  # one per example, in input order
    metrics: dict[str, float]  # verdict rates, pass_rate, class_<name> rates
    counts: dict[str, int]  # examples per diagnosis class (pass, knowledge, behavior, model_capability)
    applicable: dict[str, int]  # examples each verdict applied to
    stats: dict[str, float] = dataclasses.field(default_factory=dict)  # generation timing
    probe_rows: list[dict] = dataclasses.field(default_factory=list)  # counterfactual probes, when there were any

    @property
    def n(self) -> int:
        return len(self.rows)

    def failures(self, diagnosis: str) -> list[dict]:
        return [row for row in self.rows if row["diagnosis"] == diagnosis]

    def missing_docs(self) -> dict[str, list[str]]:
        """For knowledge failures: example id -> the gold docs that were not retrieved, or, when a gold doc was
        retrieved without the chunk that holds the answer, that doc with the facts its shown chunks lacked."""
        out = {}
        for row in self.failures("knowledge"):
            if row["missing_docs"] and len(row["missing_docs"]) == len(row["gold_doc_ids"]):
                out[row["id"]] = row["missing_docs"]
            else:
                facts = ", ".join(repr(f) for f in row["facts_not_in_context"])
                out[row["id"]] = [f"{doc} (the chunk with {facts})" for doc in row["gold_doc_ids"]]
        return out


def score_items(spec, items: Sequence[Item], outputs: Sequence[str]) -> EvalResult:
    """Score existing outputs (one per item)."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    rows = []
    for (example, contexts), raw in zip(items, outputs):
        shown = shown_doc_ids(contexts)
        doc_texts: dict[str, list[str]] = {}
        for ctx in contexts:
            doc_texts.setdefault(_field(ctx, "doc_id"), []).append(_field(ctx, "text"))
        score = score_output(raw, answerable=example.answerable, gold_doc_ids=example.gold_doc_ids,
                             gold_facts=example.gold_facts, shown_ids=shown, spec=spec,
                             context_text=context_text(contexts, spec.max_context_chars, example.question),
                             old_facts=getattr(example, "old_facts", ()), doc_texts=doc_texts)
        diagnosis = diagnose(score.verdicts, example.answerable)
        rows.append({
            "id": example.id, "question": example.question, "answerable": example.answerable,
            "gold_doc_ids": list(example.gold_doc_ids), "retrieved_ids": shown, "raw_output": raw,
            "answer": score.answer, "citations": score.citations, **score.verdicts, "passed": score.passed,
            "diagnosis": diagnosis, "failed_rules": score.failed_rules(), "missing_docs": score.missing_docs,
            "facts_not_in_context": score.facts_not_in_context, "old_facts_found": score.old_facts_found,
            "ungrounded": score.ungrounded,
            "missing_facts": score.missing_facts, "invented_citations": score.invented_citations,
            "forbidden_found": score.forbidden_found, "parse_error": score.parse_error,
            "schema_errors": score.schema_errors, "words": score.words,
        })
    verdict_rows = [{name: row[name] for name in VERDICTS} for row in rows]
    diagnoses = [row["diagnosis"] for row in rows]
    metrics = {**aggregate(verdict_rows), **class_rates(diagnoses)}
    return EvalResult(rows=rows, metrics=metrics, counts=class_counts(diagnoses),
                      applicable=applicable_counts(verdict_rows))


def score_probes(probes: Sequence[tuple[Any, Sequence[Any]]], outputs: Sequence[str]) -> tuple[list[dict], float]:
    """(rows, faithful rate) of counterfactual probes (``tandem.behavior.faithfulness.build_probes``)."""
    from tandem.behavior.faithfulness import faithful
    from tandem.behavior.scoring import parse_output
    from tandem.behavior.text import contains

    rows = []
    for (probe, _contexts), raw in zip(probes, outputs):
        obj, _ = parse_output(raw)
        answer = obj["answer"] if obj is not None and isinstance(obj.get("answer"), str) else (raw or "").strip()
        rows.append({"id": probe.id, "question": probe.question, "gold": probe.gold, "original": probe.original,
                     "chunk_id": probe.chunk_id, "answer": answer, "raw_output": raw,
                     FAITHFUL: faithful(answer, probe), "recited_original": contains(answer, probe.original)})
    rate = sum(1 for r in rows if r[FAITHFUL]) / len(rows) if rows else 0.0
    return rows, rate


def evaluate(spec, generator, items: Sequence[Item], *, max_new_tokens: int | None = None,
             batch_size: int | None = None, progress: Callable[[int], None] | None = None,
             refuse: Sequence[bool] | None = None, probes: Sequence[tuple[Any, Sequence[Any]]] = ()) -> EvalResult:
    """Generate an answer for every item with ``generator`` (a ``Generator``), then score and diagnose.

    ``refuse[i]`` True: item i gets the spec's refusal without generating, as the answer path does when the
    best retrieved chunk is under the similarity threshold (``tandem.behavior.refusal.refusal_decision``).
    ``probes``: counterfactual probes answered in the same batches; their share that is faithful is the
    ``faithful`` metric (absent without probes)."""
    refuse = list(refuse) if refuse is not None else [False] * len(items)
    if len(refuse) != len(items):
        raise ValueError(f"{len(items)} items but {len(refuse)} refusal flags")
    todo = [i for i, r in enumerate(refuse) if not r]
    conversations = [build_messages(items[i][0].question, items[i][1], spec) for i in todo]
    conversations += [build_messages(probe.question, contexts, spec) for probe, contexts in probes]
    if progress is not None and len(todo) < len(items):
        progress(len(items) - len(todo))
    started = time.monotonic()
    generated = generator.generate(conversations, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                                   batch_size=batch_size or spec.batch_size,
                                   progress=progress) if conversations else []
    seconds = time.monotonic() - started
    outputs = [refusal_target(spec)] * len(items)
    for i, text in zip(todo, generated):
        outputs[i] = text
    result = score_items(spec, items, outputs)
    if probes:
        result.probe_rows, result.metrics[FAITHFUL] = score_probes(probes, generated[len(todo):])
        result.applicable[FAITHFUL] = len(probes)
    for row, refused in zip(result.rows, refuse):
        row["refused_by_similarity"] = refused
    result.stats = {"generation_s": seconds,
                    "examples_per_s": len(conversations) / seconds if seconds else 0.0,
                    "refused_by_similarity": len(items) - len(todo), "probes": len(probes),
                    **{k: v for k, v in (getattr(generator, "last_stats", {}) or {}).items()
                       if k in ("new_tokens", "prompt_tokens")}}
    log.info("scored %d examples: pass_rate %.3f, %s%s", result.n, result.metrics["pass_rate"],
             ", ".join(f"{name} {result.counts[name]}" for name in FAILURE_CLASSES),
             f"; faithful {result.metrics[FAITHFUL]:.3f} on {len(probes)} probes" if probes else "")
    return result
