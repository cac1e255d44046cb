"""The refusal policy the answer path and the eval share: refuse when retrieval found nothing close enough."""

from __future__ import annotations

from typing import Any, Sequence


def refusal_decision(hits: Sequence[Any], threshold: float) -> tuple[bool, float | None]:
    """(refuse, best similarity): refuse when nothing was retrieved or the best chunk is under ``threshold``.

    Hits without a similarity do not count; if none has one, the threshold cannot apply and nothing is refused.
    """
    if not hits:
        return True, None
    sims = [h.vector_similarity for h in hits if h.vector_similarity is not None]
    if not sims:
        return False, None
    best = max(sims)
    return best < threshold, best
