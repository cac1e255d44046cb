"""Deterministic scorers: per-output verdicts and aggregate metrics.

Each verdict is True (passes), False (fails) or None (does not apply to this example). Output that is not
JSON is a scored failure (``json_valid`` False, and the checks that need JSON fail too), never a crash.
Content checks read the parsed ``answer`` when there is one, else the raw text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterable, Sequence

from tandem.behavior.metrics import BEHAVIOR_VERDICTS, CONTENT, PASS_RATE, VERDICTS, RETRIEVAL
from tandem.behavior.text import contains, normalize

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def parse_output(raw: str) -> tuple[dict | None, str]:
    """(JSON object or None, error). One JSON object, optionally inside a single ```json fence."""
    text = (raw or "").strip()
    match = _FENCE.match(text)
    if match:
        text = match.group(1).strip()
    if not text:
        return None, "empty output"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at char {exc.pos}"
    if not isinstance(value, dict):
        return None, f"JSON {type(value).__name__}, not an object"
    return value, ""


def is_refusal(answer: str, refusal_text: str) -> bool:
    return contains(answer, refusal_text)


@dataclasses.dataclass
class Score:
    """The verdicts for one output, with what the checks saw."""

    verdicts: dict[str, bool | None]
    answer: str
    citations: list[str]
    parse_error: str = ""
    schema_errors: list[str] = dataclasses.field(default_factory=list)
    invented_citations: list[str] = dataclasses.field(default_factory=list)
    forbidden_found: list[str] = dataclasses.field(default_factory=list)
    missing_facts: list[str] = dataclasses.field(default_factory=list)
    missing_docs: list[str] = dataclasses.field(default_factory=list)  # gold docs not in the context
    facts_not_in_context: list[str] = dataclasses.field(default_factory=list)  # gold facts the context lacked
    old_facts_found: list[str] = dataclasses.field(default_factory=list)  # stale: old facts the answer repeated
    ungrounded: list[str] = dataclasses.field(default_factory=list)  # values no cited document holds
    words: int = 0

    @property
    def passed(self) -> bool:
        return passed(self.verdicts)

    def failed_rules(self) -> list[str]:
        return [name for name, value in self.verdicts.items() if value is False and VERDICTS[name][0] != RETRIEVAL]


def passed(verdicts: dict[str, bool | None]) -> bool:
    """An example passes when every applicable behavior and content verdict holds (retrieval is diagnosis)."""
    return all(value is not False for name, value in verdicts.items() if VERDICTS[name][0] != RETRIEVAL)


def _schema_errors(obj: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
    return [(".".join(str(p) for p in e.absolute_path) or "(root)") + ": " + e.message for e in errors]


def score_output(raw: str, *, answerable: bool, gold_doc_ids: Sequence[str], gold_facts: Sequence[str],
                 shown_ids: Iterable[str], spec, context_text: str | None = None, old_facts: Sequence[str] = (),
                 doc_texts: dict[str, Sequence[str]] | None = None) -> Score:
    """Score one model output against the spec, the example's gold data and the doc ids that were shown.

    About 70 lines: one verdict per check, in the order docs/architecture.md lists them, all reading the
    same parsed output.

    ``context_text``: the text of the context shown to the model; when given, "the context holds the answer"
    also needs every gold fact in it (``facts_in_context``), not only a gold doc id among the shown ones.
    ``old_facts``: values the example's answer had before the documents changed (``not_stale``).
    ``doc_texts``: doc id -> the texts of its chunks in the context (``values_grounded`` checks an answer's
    values against the documents it cites).
    """
    from tandem.behavior.faithfulness import stale, ungrounded_values

    shown = list(dict.fromkeys(shown_ids))
    obj, parse_error = parse_output(raw)
    answer = obj.get("answer") if obj is not None and isinstance(obj.get("answer"), str) else None
    raw_citations = obj.get("citations") if obj is not None else None
    citations = [c for c in raw_citations if isinstance(c, str)] if isinstance(raw_citations, list) else []
    citations_ok_type = isinstance(raw_citations, list) and len(citations) == len(raw_citations)
    text = answer if answer is not None else (raw or "").strip()

    v: dict[str, bool | None] = {}
    v["json_valid"] = obj is not None
    schema_errors = _schema_errors(obj, spec.output_schema) if obj is not None else ["not a JSON object"]
    v["schema_valid"] = obj is not None and not schema_errors
    invented = [c for c in citations if c not in shown]
    v["citations_valid"] = obj is not None and citations_ok_type and not invented

    gold_shown = [d for d in gold_doc_ids if d in shown]
    missing_docs = [d for d in gold_doc_ids if d not in shown]
    facts_not_in_context = ([f for f in gold_facts if not contains(context_text, f)]
                            if answerable and context_text is not None else [])
    context_has_answer = answerable and bool(gold_shown) and not facts_not_in_context
    refused = is_refusal(text, spec.style.refusal_text)
    v["grounded"] = (any(c in gold_shown for c in citations) and citations_ok_type) if context_has_answer else None

    words = len(text.split())
    v["style_max_words"] = words <= spec.style.max_words
    forbidden = [p for p in spec.style.forbidden_phrases if contains(text, p)]
    v["style_forbidden_phrases"] = not forbidden

    if answerable:
        v["refusal_correct"] = None
    else:  # the refusal form: the refusal text as the answer (JSON), and no citations
        v["refusal_correct"] = (answer is not None and normalize(answer) == normalize(spec.style.refusal_text)
                                and citations_ok_type and not citations)
    v["no_false_refusal"] = (not refused) if context_has_answer else None

    old_found: list[str] = []
    if answerable and old_facts and context_text is not None and all(contains(context_text, f) for f in gold_facts):
        if stale(text, old_facts=old_facts, new_facts=gold_facts, context=context_text):
            old_found = [f for f in old_facts if contains(text, f)]
        v["not_stale"] = not old_found
    else:
        v["not_stale"] = None
    ungrounded: list[str] = []
    if doc_texts is not None and not refused and text.strip():
        ungrounded = ungrounded_values(text, [t for c in citations for t in doc_texts.get(c, ())])
        v["values_grounded"] = not ungrounded
    else:
        v["values_grounded"] = None

    missing_facts = [f for f in gold_facts if not contains(text, f)] if answerable else []
    v["answer_correct"] = (not missing_facts) if answerable else None
    v["retrieval_hit"] = bool(gold_shown) if answerable else None
    v["facts_in_context"] = (not facts_not_in_context) if answerable and context_text is not None else None

    return Score(verdicts={name: v[name] for name in VERDICTS}, answer=text, citations=citations,
                 parse_error=parse_error, schema_errors=[] if v["schema_valid"] else schema_errors,
                 invented_citations=invented, forbidden_found=forbidden, missing_facts=missing_facts,
                 missing_docs=missing_docs if answerable else [], facts_not_in_context=facts_not_in_context,
                 old_facts_found=old_found, ungrounded=ungrounded, words=words)


def aggregate(verdict_rows: Sequence[dict[str, bool | None]]) -> dict[str, float]:
    """Rate per verdict over the examples it applies to (1.0 when it applies to none), plus the pass rate."""
    metrics: dict[str, float] = {}
    for name in VERDICTS:
        values = [row[name] for row in verdict_rows if row.get(name) is not None]
        metrics[name] = sum(1 for x in values if x) / len(values) if values else 1.0
    metrics[PASS_RATE] = (sum(1 for row in verdict_rows if passed(row)) / len(verdict_rows)) if verdict_rows else 0.0
    return metrics


def applicable_counts(verdict_rows: Sequence[dict[str, bool | None]]) -> dict[str, int]:
    return {name: sum(1 for row in verdict_rows if row.get(name) is not None) for name in VERDICTS}


__all__ = ["Score", "score_output", "aggregate", "applicable_counts", "parse_output",
           "is_refusal", "passed", "BEHAVIOR_VERDICTS", "CONTENT"]
