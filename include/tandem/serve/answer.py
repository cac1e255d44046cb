"""The answer path: the one function behind `tandem ask`, ``POST /tandem/api/ask`` and (where they want it)
the evals.

1. Check the input (``validation``), and which adapter version the reference names (``adapter_cache``),
   before anything is loaded: bad input is a UserError, a missing index or champion a ServiceUnavailable.
2. Hybrid retrieval from the live index (``tandem.knowledge.search``), recording the index version.
3. If the best chunk's cosine similarity to the question is under ``refusal_min_similarity`` (or nothing
   was retrieved), answer the spec's refusal and generate nothing.
4. Otherwise build the prompt with the chunks and their doc ids (``tandem.behavior.prompt``), generate with
   base + adapter (``tandem.behavior.generate`` via the cache), and validate the output against the
   contract (``tandem.behavior.scoring``).
5. The grounding guard: every number, amount, duration and size in the answer must appear in a chunk of a
   document it cites. One that does not makes the answer ``valid: false`` with an ``ungrounded`` violation
   naming the values, and its confidence ``low``: a small model that copies a neighbour's value, or recites
   one it memorised, is flagged, not trusted.

The result always has the contract's shape (``answer``, ``citations``, ``confidence``). Model output that
breaks the contract is not hidden: ``valid`` is false and ``violations`` says how, and the contract object
is repaired conservatively (invented citations dropped, a non-JSON answer kept as text with
``confidence: low``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tandem.behavior.refusal import refusal_decision
from tandem.config import Settings
from tandem.registry.versions import label as registry_label
from tandem.serve import validation
from tandem.serve.adapter_cache import AdapterCache

log = logging.getLogger(__name__)

CONFIDENCE = ("high", "medium", "low")
MAX_RAW_CHARS = 4000  # raw model output kept in a response (the budget is bounded anyway)

_spec_cache: dict[str, tuple[float, Any]] = {}
_spec_lock = threading.Lock()


@dataclasses.dataclass
class Answer:
    """An answer in the contract, plus where it came from and how long it took."""

    question: str
    contract: dict[str, Any]  # {"answer": str, "citations": [doc_id], "confidence": "high"|"medium"|"low"}
    sources: list[dict[str, Any]]  # the cited documents: doc_id, title, uri, locations (in citation order)
    adapter: str  # "base" or "v<version>"
    index_version: int | None
    refused: bool  # answered with the spec's refusal without generating (similarity under the threshold)
    best_similarity: float | None
    threshold: float
    valid: bool  # the generated output met the contract as it was (a refusal is valid)
    violations: list[str]
    retrieved: list[dict[str, Any]]  # doc_id, chunk_id, title, uri, score, vector_similarity
    timings: dict[str, float]  # retrieval_ms, generation_ms, adapter_load_ms, total_ms
    raw_output: str | None = None
    spec_version: str | None = None
    output_tokens: int | None = None  # tokens the model generated (None: refused, nothing generated)
    marks: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage: (start, end) perf_counter s
    trace_id: str | None = None  # the MLflow trace of this answer (``tandem.serve.tracing``), once recorded

    def to_dict(self) -> dict[str, Any]:
        """The contract object first, then the rest (``--json`` and the API)."""
        return {**self.contract, "sources": self.sources, "timings": self.timings, "adapter": self.adapter,
                "index_version": self.index_version, "refused": self.refused,
                "best_similarity": self.best_similarity, "threshold": self.threshold, "valid": self.valid,
                "violations": self.violations, "retrieved": self.retrieved, "raw_output": self.raw_output,
                "question": self.question, "trace_id": self.trace_id}

    def text(self) -> str:
        """The human form: the answer, then numbered citations with title and URI."""
        lines = [self.contract["answer"], ""]
        if self.sources:
            lines.append("Citations:")
            for i, src in enumerate(self.sources, 1):
                lines.append(f"  [{i}] {src['title'] or src['doc_id']} ({cited_as(src)})")
                lines.append(f"      {src['uri']}")
        else:
            lines.append("Citations: none")
        meta = [f"adapter {self.adapter}", f"index {self.index_version}",
                f"confidence {self.contract['confidence']}",
                f"retrieval {self.timings['retrieval_ms']:.0f} ms", f"generation {self.timings['generation_ms']:.0f} ms"]
        if self.refused:
            meta.append(f"refused: best similarity {_fmt(self.best_similarity)} < {self.threshold}")
        if not self.valid:
            meta.append("output broke the contract: " + "; ".join(self.violations))
        lines += ["", "(" + ", ".join(meta) + ")"]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- the spec (cached by path and mtime: the API re-reads it only when the file changes)


def load_spec(settings: Settings):
    from tandem.behavior.spec import load_spec as _load

    path = str(settings.spec_path)
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        mtime = -1.0
    with _spec_lock:
        cached = _spec_cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        spec = _load(path)
        _spec_cache[path] = (mtime, spec)
        return spec


def refusal_text(spec) -> str:
    return spec.style.refusal_text


# --- validation of generated output against the contract

# The scorer's verdicts that a served answer must meet (the others need gold data, which serving lacks).
CONTRACT_VERDICTS = ("json_valid", "schema_valid", "citations_valid", "style_max_words", "style_forbidden_phrases")


def check_output(raw: str, spec, shown_ids: Sequence[str],
                 doc_texts: dict[str, Sequence[str]] | None = None) -> tuple[dict[str, Any], bool, list[str]]:
    """(contract object, valid, violations) for a model output; never raises on bad output.

    The verdicts come from the behavior cadence's scorer (``tandem.behavior.scoring``), so an answer is
    judged here exactly as the evals judge it; the repair keeps only what the contract allows.
    ``doc_texts`` (doc id -> its chunk texts in the context): the grounding guard checks the answer's values
    against the documents it cites (``ungrounded``; the confidence becomes ``low``).
    """
    from tandem.behavior import scoring

    score = scoring.score_output(raw, answerable=True, gold_doc_ids=[], gold_facts=[], shown_ids=shown_ids,
                                 spec=spec)
    violations = []
    for name in CONTRACT_VERDICTS:
        if score.verdicts.get(name) is False:
            detail = {"json_valid": score.parse_error,
                      "schema_valid": "; ".join(score.schema_errors[:3]),
                      "citations_valid": ("cites ids that were not shown: " + ", ".join(score.invented_citations))
                      if score.invented_citations else "citations is not a list of doc ids",
                      "style_max_words": f"{score.words} words > {spec.style.max_words}",
                      "style_forbidden_phrases": "uses " + ", ".join(repr(p) for p in score.forbidden_found)}[name]
            violations.append(f"{name}: {detail}" if detail else name)
    parsed, _error = scoring.parse_output(raw)
    if parsed is None:
        text = " ".join(str(raw).split())[:MAX_RAW_CHARS]
        return {"answer": text, "citations": [], "confidence": "low"}, False, violations
    answer_value = parsed.get("answer")
    if not isinstance(answer_value, str):
        answer_value = "" if answer_value is None else json.dumps(answer_value, ensure_ascii=False)
    shown = set(shown_ids)
    kept: list[str] = []
    for cid in parsed.get("citations") if isinstance(parsed.get("citations"), list) else []:
        if isinstance(cid, str) and cid in shown and cid not in kept:
            kept.append(cid)
    confidence = parsed.get("confidence") if parsed.get("confidence") in CONFIDENCE else "low"
    if scoring.is_refusal(answer_value, spec.style.refusal_text):
        kept = []  # the refusal form has no citations
    elif doc_texts is not None:
        from tandem.behavior.faithfulness import ungrounded_values

        missing = ungrounded_values(answer_value, [t for cid in kept for t in doc_texts.get(cid, ())])
        if missing:
            where = "the documents it cites" if kept else "any cited document (it cites none)"
            violations.append(f"ungrounded: {', '.join(dict.fromkeys(missing))} not in {where}")
            confidence = "low"
    return {"answer": answer_value, "citations": kept, "confidence": confidence}, not violations, violations


# --- the answer path


def answer(settings: Settings, question: str, k: int | None = None, adapter: str | None = "champion", *,
           cache: AdapterCache | None = None, progress: Callable[[str], None] | None = None,
           on_token: Callable[[str], None] | None = None) -> Answer:
    """Answer ``question`` from the live index with base + the ``adapter`` reference (see the module doc).

    ``k`` defaults to the spec's ``retrieval.k`` (what the evals measure); the token budget is the spec's
    ``generation.max_new_tokens``. Raises UserError for bad input or an unknown adapter version,
    ServiceUnavailable when the index, the champion, Postgres or MLflow is missing.
    """
    step = progress or (lambda _stage: None)
    started = time.perf_counter()
    question, ref = validation.question(settings, question), validation.adapter(adapter)
    spec = load_spec(settings)  # a broken spec is the operator's error: UserError naming the file
    k = validation.k(settings, spec.retrieval_k if k is None else k)
    cache = cache or AdapterCache(settings)

    step("resolve adapter")
    key = cache.key_for(ref)  # unknown version -> UserError; no champion / MLflow down -> ServiceUnavailable
    step("retrieve")
    marks: dict[str, Any] = {"start": started}
    t0 = time.perf_counter()
    index_version, hits = _retrieve(settings, question, k)
    marks["retrieval"] = (t0, time.perf_counter())
    retrieved = _retrieved_rows(hits)
    threshold = float(settings.refusal_min_similarity)
    refuse, best = refusal_decision(hits, threshold)
    timings = {"retrieval_ms": round((marks["retrieval"][1] - t0) * 1000, 1), "generation_ms": 0.0,
               "adapter_load_ms": 0.0}

    if refuse:
        log.info("refusing %r: best similarity %s < %s", question[:80], _fmt(best), threshold)
        timings["total_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return Answer(question=question, contract={"answer": refusal_text(spec), "citations": [], "confidence": "low"},
                      sources=[], adapter=registry_label(key), index_version=index_version, refused=True,
                      best_similarity=best, threshold=threshold, valid=True, violations=[], retrieved=retrieved,
                      timings=timings, spec_version=spec.version, marks=marks)

    if not cache.is_loaded(key):
        step("load model")
    from tandem.behavior.prompt import build_messages, shown_doc_ids

    raw, label, tokens = _generate(cache, key, build_messages(question, hits, spec), spec, timings, step, on_token,
                                   marks)
    step("validate")
    tv = time.perf_counter()
    contract, valid, violations = check_output(raw, spec, shown_doc_ids(hits), _doc_texts(hits))
    sources = _sources(hits, contract["citations"])
    marks["validation"] = (tv, time.perf_counter())
    timings["total_ms"] = round((time.perf_counter() - started) * 1000, 1)
    if not valid:
        log.info("output of %s broke the contract: %s", label, "; ".join(violations))
    return Answer(question=question, contract=contract, sources=sources, adapter=label,
                  index_version=index_version, refused=False, best_similarity=best, threshold=threshold,
                  valid=valid, violations=violations, retrieved=retrieved, timings=timings,
                  raw_output=str(raw)[:MAX_RAW_CHARS], spec_version=spec.version, output_tokens=tokens, marks=marks)


def _doc_texts(hits) -> dict[str, list[str]]:
    """Each retrieved document's chunk texts (what the grounding guard checks values against)."""
    texts: dict[str, list[str]] = {}
    for h in hits:
        texts.setdefault(h.doc_id, []).append(h.text)
    return texts


def _sources(hits, citations: list[str]) -> list[dict[str, Any]]:
    """The cited documents with title, URI and the locations of their retrieved chunks, in citation order."""
    first_hit: dict[str, Any] = {}
    locations: dict[str, list[str]] = {}
    for h in hits:
        first_hit.setdefault(h.doc_id, h)
        where = getattr(h, "location", "")
        if where and where not in locations.setdefault(h.doc_id, []):
            locations[h.doc_id].append(where)
    return [{"doc_id": cid, "title": first_hit[cid].title, "uri": first_hit[cid].uri,
             "locations": locations.get(cid, [])} for cid in citations]


def cited_as(source: dict[str, Any]) -> str:
    """``manual.pdf p. 12, p. 14``: a cited document's file name and locations (its doc id when it has none)."""
    if not source.get("locations"):
        return source["doc_id"]
    return f"{source['doc_id'].rsplit('/', 1)[-1]} {', '.join(source['locations'])}"


def _retrieved_rows(hits) -> list[dict[str, Any]]:
    return [{"doc_id": h.doc_id, "chunk_id": h.chunk_id, "title": h.title, "uri": h.uri, "score": round(h.score, 6),
             "vector_similarity": None if h.vector_similarity is None else round(h.vector_similarity, 4),
             "location": getattr(h, "location", "")}
            for h in hits]


def _retrieve(settings: Settings, question: str, k: int) -> tuple[str, list]:
    """(index_version, hits) from one pinned release: the answer and its index_version always agree."""
    from tandem.knowledge import search as knowledge_search

    pinned = knowledge_search.pin(settings)
    if pinned is None:
        from tandem.errors import ServiceUnavailable

        raise ServiceUnavailable(f"the knowledge index {settings.index_name!r} is empty: there is nothing to answer from",
                                 fix="run `tandem reindex` (or trigger the knowledge_reindex DAG) first")
    return pinned.index_version, knowledge_search.search(settings, question, k=k, at=pinned)


def _generate(cache: AdapterCache, key: str, messages: list, spec, timings: dict, step,
              on_token: Callable[[str], None] | None = None, marks: dict | None = None) -> tuple[str, str, int | None]:
    """(raw output, the label of the exact version that produced it, its token count); fills the load and
    generation timings (and ``marks``). The question joins the process's next batch for this version
    (``tandem.serve.batcher``)."""
    t0 = time.perf_counter()
    with cache.use(key) as loaded:  # the generator stays alive until this answer is generated
        if time.perf_counter() - t0 > 0.05:
            timings["adapter_load_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        step("generate")
        t0 = time.perf_counter()
        raw, size = cache.batcher.generate(key, loaded.generator, messages, max_new_tokens=spec.max_new_tokens,
                                           on_token=on_token)
        if marks is not None:
            marks["generation"] = (t0, time.perf_counter())
        timings["generation_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        timings["batch_size"] = size
        label = loaded.label
        tokens = _token_count(loaded.generator, raw)
    del loaded  # the cache may free it now
    return raw, label, tokens


def _token_count(generator, text: str) -> int | None:
    try:
        return len(generator.tokenizer(str(text), add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - a count for the trace; never the answer's failure
        return None
