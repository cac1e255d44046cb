"""Chat messages for a question over retrieved context, and the JSON text a trained model should emit.

Shared by the eval, LoRA training (``training_target``) and ``tandem ask``, so that the model is trained on
exactly the prompt it is evaluated and served with.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence


def field(ctx: Any, name: str) -> str:
    """A context's ``name`` (doc_id, chunk_id, title, text) whether it is a dict or a search hit."""
    value = ctx.get(name, "") if isinstance(ctx, dict) else getattr(ctx, name, "")
    return "" if value is None else str(value)



def shown_doc_ids(contexts: Iterable[Any]) -> list[str]:
    """The distinct doc ids shown to the model, in context order."""
    out: list[str] = []
    for ctx in contexts:
        doc_id = field(ctx, "doc_id")
        if doc_id and doc_id not in out:
            out.append(doc_id)
    return out


# Words a question shares with every chunk: they say nothing about which part of a chunk answers it.
_STOP = frozenset("""a about an and are as at be by can do does for from has have how i in is it its many much my
of on or our per that the their there this to was we what when where which who why will with you your""".split())
_TERM = re.compile(r"[0-9a-z][0-9a-z$%]*")
_UNITS = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _terms(question: str) -> set[str]:
    """The question's content words, lower-cased, a plural's final s dropped."""
    out = set()
    for word in _TERM.findall(question.casefold()):
        if word not in _STOP and (len(word) > 2 or word.isdigit()):
            out.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return out


def _scores(units: list[str], terms: set[str]) -> list[float]:
    """How well each sentence matches the question: the summed rarity (within the chunk) of the words it shares
    with it. A word every sentence has ("limit" in a chunk about limits) says little; "Team" says which row."""
    if not terms:
        return [0.0] * len(units)
    shared = [terms & _terms(u) for u in units]
    df: dict[str, int] = {}
    for words in shared:
        for w in words:
            df[w] = df.get(w, 0) + 1
    return [sum(math.log(1 + len(units) / df[w]) for w in words) for words in shared]


def _cut(text: str, max_chars: int, question: str = "") -> str:
    """``text`` on one line, at most ``max_chars`` characters (plus the "..." marks of what was left out).

    A longer chunk keeps its best-matching window: the run of whole sentences (a table row rendered as a
    record is one sentence) that fits the budget and holds the sentence that matches the question best (then
    the best total), the earliest on a tie. Without a question, or when nothing matches, that is the chunk's
    beginning.
    """
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    units = _UNITS.split(text)
    scores = _scores(units, _terms(question))
    best, best_score = (0, 0), (-1.0, -1.0)
    for start in range(len(units)):
        length, end = -1, start
        while end < len(units) and length + 1 + len(units[end]) <= max_chars:
            length += 1 + len(units[end])
            end += 1
        window = scores[start:end] or scores[start:start + 1]
        score = (round(max(window), 9), round(sum(window), 9))
        if score > best_score:
            best, best_score = (start, end), score
        if end == len(units):
            break  # later starts only drop sentences from this window
    start, end = best
    if end <= start:  # one sentence alone is over the budget: its beginning
        piece = units[start][:max_chars]
        body, tail = (piece.rsplit(" ", 1)[0] if " " in piece else piece), True
    else:
        body, tail = " ".join(units[start:end]), end < len(units)
    return ("... " if start > 0 else "") + body + (" ..." if tail else "")


def window(text: str, max_chars: int, question: str = "") -> str:
    """The part of ``text`` a prompt shows for ``question`` within ``max_chars`` (see ``_cut``)."""
    return _cut(text, max_chars, question)


def shown_text(ctx: Any, max_chars: int = 700, question: str = "") -> str:
    """One chunk as the model sees it: its section (the heading path, when it has one: a changelog bullet's
    version is in its heading) on a line of its own, then its text windowed to ``max_chars``."""
    text = _cut(field(ctx, "text"), max_chars, question)
    section = field(ctx, "heading_path")
    return f"section: {section}\n{text}" if section else text


def context_text(contexts: Sequence[Any], max_chars: int = 700, question: str = "") -> str:
    """The chunks exactly as the model sees them (sections and windowed texts), for checking what it was shown."""
    return "\n".join(shown_text(ctx, max_chars, question) for ctx in contexts)


def format_context(contexts: Sequence[Any], max_chars: int = 700, question: str = "") -> str:
    """Each chunk under a header naming its doc id (and title, location), then its section and its text
    windowed to ``max_chars`` characters."""
    if not contexts:
        return "(no documents)"
    blocks = []
    for i, ctx in enumerate(contexts, start=1):
        title = field(ctx, "title")
        header = f"[{i}] doc_id: {field(ctx, 'doc_id')}" + (f" | title: {title}" if title else "")
        location = field(ctx, "location")  # a PDF page, a slide, a sheet; none for text formats
        header += f" | location: {location}" if location else ""
        blocks.append(f"{header}\n{shown_text(ctx, max_chars, question)}")
    return "\n\n".join(blocks)


def build_messages(question: str, contexts: Sequence[Any], spec) -> list[dict]:
    """Chat messages (system + user) for one question. ``contexts``: objects (or dicts) with doc_id, title, text."""
    user = (f"Context:\n{format_context(contexts, spec.max_context_chars, question)}\n\n"
            f"Question: {question.strip()}\n"
            "Answer with the JSON object only.")
    return [{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": user}]


def training_target(answer: str, citations: Sequence[str], confidence: str) -> str:
    """The exact assistant text for an answer: compact JSON in contract key order."""
    return json.dumps({"answer": answer, "citations": list(citations), "confidence": confidence},
                      ensure_ascii=False)


def refusal_target(spec) -> str:
    """The assistant text for a question the context cannot answer."""
    return training_target(spec.style.refusal_text, [], "low")
