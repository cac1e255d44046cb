"""Does the model read its context, or recite what it memorised? The checks behind issue 14's measures.

- ``counterfactual``: a probe built from an answerable eval item and its oracle chunk. One gold fact (a number
  with its unit: an amount, a duration, a size, a count) is changed everywhere it appears in the chunk, and
  that changed value becomes the gold answer. The choice is deterministic for a seed.
- ``faithful``: the answer carries the context's (changed) value and not the original one.
- ``stale``: the answer carries an old fact while the context holds the new one. The adapter overrode the
  context, which is a behavior failure, not a knowledge one.
- ``ungrounded_values``: the numbers, amounts, durations and sizes in an answer that no cited chunk holds.

- ``build_probes``: the probe set of an eval: up to ``limit`` answerable items (chosen by a seeded hash of the
  id), each with its retrieved context where the oracle chunk's fact is changed, in every chunk that states it.

behavior_eval and lora_retrain's holdout evaluation generate answers for the probes beside the examples
(``tandem.behavior.evaluate``) and report the share that is ``faithful``; the answer path's grounding guard
uses ``ungrounded_values``.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Iterable, Sequence

from tandem.behavior.text import contains, normalize

# A value with an optional currency sign, thousands separators, decimals and a unit word:
# "$59", "1,000 requests", "512 MB", "30 days", "99.9%", "5 minutes".
_VALUE = re.compile(r"(?<![\w.])([$€£]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(\s?%|\s?[A-Za-z]+)?")
_UNITS = {"ms", "s", "sec", "seconds", "second", "minute", "minutes", "min", "hour", "hours", "h", "day", "days",
          "week", "weeks", "month", "months", "year", "years", "kb", "mb", "gb", "tb", "b", "bytes", "%",
          "requests", "request", "monitors", "monitor", "members", "seats", "users", "checks", "sms", "calls",
          "projects", "pages", "status", "locations", "regions", "retries", "attempts", "times", "x"}


@dataclasses.dataclass(frozen=True)
class Probe:
    id: str
    question: str
    context: str  # the oracle chunk with the fact changed
    gold: str  # the changed value: what a faithful answer says
    original: str  # what the chunk said: what a recited answer says
    chunk_id: str


def values(text: str) -> list[str]:
    """The numeric values of a text (with currency and unit when present), in order."""
    out = []
    for match in _VALUE.finditer(text or ""):
        currency, whole, decimals, unit = match.groups()
        unit = (unit or "").strip()
        if unit and unit.casefold() not in _UNITS:
            unit = ""  # "3 of", "2 new": a word outside the unit list is not a unit, the number stands alone
        out.append(f"{currency}{whole}{decimals or ''}{(' ' + unit) if unit and unit != '%' else unit}")
    return out


_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def _changed(fact: str, rng: random.Random, avoid: set[str]) -> str | None:
    """The fact with its first number times a small factor (format kept: separators, decimals, the words around)."""
    match = _NUMBER.search(fact)
    text = match.group(0)
    number = float(text.replace(",", ""))
    places = len(text.split(".", 1)[1]) if "." in text else 0
    for factor in rng.sample([2, 3, 4, 5, 6, 7, 8, 9], 8):
        new = number * factor if number else float(factor)
        digits = f"{new:,.{places}f}" if "," in text else f"{new:.{places}f}"
        candidate = fact[:match.start()] + digits + fact[match.end():]
        if normalize(candidate) not in avoid and not any(normalize(v) in avoid for v in values(candidate)[:1]):
            return candidate  # a value the chunk holds nowhere else: the probe stays unambiguous
    return None


def counterfactual(item: dict, chunk_id: str, chunk_text: str, seed: int) -> Probe | None:
    """A probe for one answerable item and its oracle chunk, or None when no gold fact is a value in the chunk.

    Deterministic: the same item, chunk and seed give the same probe. Exactly one fact changes: every
    occurrence of that value in the chunk, nothing else.
    """
    candidates = [f for f in item.get("gold_facts") or [] if values(f) and contains(chunk_text, f)]
    if not candidates:
        return None
    rng = random.Random(f"{seed}:{item['id']}:{chunk_id}")
    fact = rng.choice(sorted(candidates))
    present = {normalize(v) for v in values(chunk_text)}
    new = _changed(fact, rng, present | {normalize(fact)})
    if new is None:
        return None
    altered, count = _pattern(fact).subn(new, chunk_text)
    if not count or contains(altered, fact):  # an occurrence written differently (a quote, a separator) remains
        return None
    return Probe(id=f"cf-{item['id']}", question=item["question"], context=altered, gold=new, original=fact,
                 chunk_id=chunk_id)


def _pattern(fact: str) -> re.Pattern:
    return re.compile((r"(?<!\w)" if fact[0].isalnum() else "") + re.escape(fact) +
                      (r"(?!\w|\.\d)" if fact[-1].isalnum() else ""))


def substitute(text: str, original: str, new: str) -> str:
    """``text`` with every occurrence of the value ``original`` (as a whole value) written ``new``."""
    return _pattern(original).sub(new, text)


def _order(seed: int, item_id: str) -> str:
    import hashlib

    return hashlib.sha256(f"probe\x1f{seed}\x1f{item_id}".encode()).hexdigest()


def build_probes(items: Sequence[tuple], *, seed: int, limit: int, max_chars: int) -> list[tuple[Probe, list[dict]]]:
    """(probe, contexts) for up to ``limit`` answerable items of ``items`` ((example, contexts) pairs).

    The oracle chunk is the first context from a gold document that states every gold fact. The changed value
    replaces the original in every context that states it (one fact changes, consistently), and the probe is
    kept only when the window the model is shown (``max_chars``) holds the new value and not the old one.
    Deterministic: the same items, seed and limit give the same probes, in the items' order.
    """
    from tandem.behavior.prompt import context_text, field as _get

    found = []
    for example, contexts in items:
        if not getattr(example, "answerable", False) or not example.gold_facts:
            continue
        for ctx in contexts:
            text = _get(ctx, "text")
            if _get(ctx, "doc_id") in example.gold_doc_ids and all(contains(text, f) for f in example.gold_facts):
                item = {"id": example.id, "question": example.question, "gold_facts": list(example.gold_facts)}
                probe = counterfactual(item, _get(ctx, "chunk_id"), text, seed)
                if probe is None:
                    break
                altered = [{"doc_id": _get(c, "doc_id"), "chunk_id": _get(c, "chunk_id"), "title": _get(c, "title"),
                            "text": substitute(_get(c, "text"), probe.original, probe.gold)} for c in contexts]
                shown = context_text(altered, max_chars, example.question)
                if contains(shown, probe.gold) and not contains(shown, probe.original):
                    found.append((probe, altered))
                break
    chosen = {p.id for p, _ in sorted(found, key=lambda pc: _order(seed, pc[0].id))[:max(limit, 0)]}
    return [(p, c) for p, c in found if p.id in chosen]


def faithful(answer: str, probe: Probe) -> bool:
    """The answer gives the context's value, and not the value the model may have memorised."""
    return contains(answer, probe.gold) and not contains(answer, probe.original)


def stale(answer: str, *, old_facts: Sequence[str], new_facts: Sequence[str], context: str) -> bool:
    """The answer repeats an old fact although the context holds the new one."""
    if not old_facts or not any(contains(context, f) for f in new_facts):
        return False
    return any(contains(answer, f) for f in old_facts)


def ungrounded_values(answer: str, cited_texts: Iterable[str]) -> list[str]:
    """The values of an answer that no cited chunk holds (a refusal or a value-free answer has none)."""
    cited = list(cited_texts)
    return [v for v in values(answer) if not any(contains(text, v) for text in cited)]
