"""Chat messages for a question over retrieved context, and the JSON text a trained model should emit.

Shared by the eval, LoRA training (``training_target``) and ``tandem ask``, so that the model is trained on
exactly the prompt it is evaluated and served with.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence


def _field(ctx: Any, name: str) -> str:
    value = ctx.get(name, "") if isinstance(ctx, dict) else getattr(ctx, name, "")
    return "" if value is None else str(value)


def shown_doc_ids(contexts: Iterable[Any]) -> list[str]:
    """The distinct doc ids shown to the model, in context order."""
    out: list[str] = []
    for ctx in contexts:
        doc_id = _field(ctx, "doc_id")
        if doc_id and doc_id not in out:
            out.append(doc_id)
    return out


def _cut(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " ..."
    return text


def context_text(contexts: Sequence[Any], max_chars: int = 700) -> str:
    """The chunk texts exactly as the model sees them (cut to ``max_chars``), for checking what it was shown."""
    return "\n".join(_cut(_field(ctx, "text"), max_chars) for ctx in contexts)


def format_context(contexts: Sequence[Any], max_chars: int = 700) -> str:
    """Each chunk under a header naming its doc id (and title), its text cut to ``max_chars`` characters."""
    if not contexts:
        return "(no documents)"
    blocks = []
    for i, ctx in enumerate(contexts, start=1):
        text = _cut(_field(ctx, "text"), max_chars)
        title = _field(ctx, "title")
        header = f"[{i}] doc_id: {_field(ctx, 'doc_id')}" + (f" | title: {title}" if title else "")
        blocks.append(f"{header}\n{text}")
    return "\n\n".join(blocks)


def build_messages(question: str, contexts: Sequence[Any], spec) -> list[dict]:
    """Chat messages (system + user) for one question. ``contexts``: objects (or dicts) with doc_id, title, text."""
    user = (f"Context:\n{format_context(contexts, spec.max_context_chars)}\n\n"
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
