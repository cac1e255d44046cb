"""Diagnose every failure: is it facts the model was not shown, or behavior it did not show?

- ``knowledge``: an answerable question whose gold document was not in the context, or whose gold facts
  were not in the chunks shown (the right document, the wrong chunk): a retrieval miss that retraining
  cannot fix.
- ``stale``: the example lists the facts its documents used to state (``old_facts``), the context holds the
  new ones, and the answer repeats an old one: the adapter overrode its context. A behavior failure (it routes
  to a retrain with counterfactual data, never to a reindex: the index already holds the new fact).
- ``behavior``: the context held what was needed, but the format, style, grounding or refusal was wrong
  (what LoRA retraining fixes).
- ``model_capability``: the context was right and every behavior rule held, but the content was wrong.
- ``pass``: nothing failed.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from tandem.behavior.metrics import (BEHAVIOR_CLASS, BEHAVIOR_VERDICTS, CAPABILITY, FAILURE_CLASSES, KNOWLEDGE,
                                     PASS, STALE, class_metric)
from tandem.behavior.scoring import passed


def diagnose(verdicts: dict[str, bool | None], answerable: bool) -> str:
    """The class of one scored example (knowledge first: without the document nothing else is fair to judge)."""
    if passed(verdicts):
        return PASS
    if answerable and (verdicts.get("retrieval_hit") is False or verdicts.get("facts_in_context") is False):
        return KNOWLEDGE
    if verdicts.get("not_stale") is False:
        return STALE
    if any(verdicts.get(name) is False for name in BEHAVIOR_VERDICTS):
        return BEHAVIOR_CLASS
    return CAPABILITY


def class_counts(diagnoses: Sequence[str]) -> dict[str, int]:
    counts = Counter(diagnoses)
    return {name: counts.get(name, 0) for name in (PASS, *FAILURE_CLASSES)}


def class_rates(diagnoses: Sequence[str]) -> dict[str, float]:
    """``class_<name>``: the share of all examples diagnosed as each failure class."""
    n = len(diagnoses)
    counts = class_counts(diagnoses)
    return {class_metric(name): (counts[name] / n if n else 0.0) for name in FAILURE_CLASSES}


def dominant_class(counts: dict[str, int], dominance: float) -> str | None:
    """The failure class holding at least ``dominance`` of the failures and strictly more than any other."""
    failures = {name: counts.get(name, 0) for name in FAILURE_CLASSES}
    total = sum(failures.values())
    if not total:
        return None
    ranked = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
    (top, top_n), (_, second_n) = ranked[0], ranked[1]
    if top_n > second_n and top_n / total >= dominance:
        return top
    return None
