"""One answer as an MLflow trace: the root span and its four stage spans, with their measured times
(``tandem.serve.tracing`` says what each holds and how it is exported)."""

from __future__ import annotations

import hashlib
from typing import Any

from tandem.behavior.metrics import REFERENCE_FREE
from tandem.config import Settings
from tandem.serve.answer import cited_as

CITED_MAX_CHARS = 500  # the tag a status page and a reviewer read: "manual.pdf p. 12, p. 14; sla.md"

TRACE_NAME = "tandem.answer"


def text_field(settings: Settings, value: str | None) -> Any:
    """A text as a trace keeps it: cut at ``trace_field_max_chars``, or only its hash and length."""
    if value is None:
        return None
    if settings.trace_redact_text:
        return {"sha256": hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest(), "chars": len(value)}
    cap = settings.trace_field_max_chars
    return value if len(value) <= cap else value[:cap] + f"... [cut: {len(value) - cap} more characters]"


def _wall_ns(ans, started_ns: int, perf: float) -> int:
    """A ``time.perf_counter()`` reading of the answer path as wall-clock nanoseconds."""
    return started_ns + int((perf - ans.marks["start"]) * 1e9)


VERDICTS = REFERENCE_FREE  # what a served answer is judged on without gold data (``tandem.failed``)


def failed_verdicts(ans) -> list[str]:
    """The reference-free verdicts ``ans`` failed, from its violations (``ungrounded`` is values_grounded)."""
    names = {v.split(":", 1)[0].strip() for v in ans.violations}
    names = {"values_grounded" if n == "ungrounded" else n for n in names}
    return [v for v in VERDICTS if v in names]


def trace_tags(ans, *, requested: str | None, source: str) -> dict[str, str]:
    """The tags a reviewer filters on in the MLflow UI (and the traffic eval scores: ``tandem.failed``)."""
    values = {"index_version": ans.index_version, "adapter": ans.adapter, "adapter_ref": requested,
              "spec_version": ans.spec_version, "latency_ms": ans.timings.get("total_ms"),
              "valid": str(ans.valid).lower(), "refused": str(ans.refused).lower(), "source": source,
              "failed": ",".join(failed_verdicts(ans)) or "none",
              "cited": "; ".join(cited_as(s) for s in ans.sources)[:CITED_MAX_CHARS] or None}
    return {f"tandem.{k}": str(v) for k, v in values.items() if v is not None}


def _stages(settings: Settings, ans) -> list[tuple[str, str, str, dict, dict, dict]]:
    """(mark, span name, span type, inputs, outputs, attributes) of each stage the answer went through."""
    grounded = not any(v.startswith("ungrounded") for v in ans.violations)
    stages = [("retrieval", "retrieval", "RETRIEVER", {"k": len(ans.retrieved)},
               {"chunks": [{k: r[k] for k in ("chunk_id", "doc_id", "score", "vector_similarity")}
                           for r in ans.retrieved]},
               {"tandem.index_version": ans.index_version, "best_similarity": ans.best_similarity,
                "refusal_threshold": ans.threshold})]
    if ans.refused:
        return stages
    shown = sorted({r["doc_id"] for r in ans.retrieved})
    stages.append(("generation", "prompt", "PARSER", {"chunk_ids": [r["chunk_id"] for r in ans.retrieved]},
                   {"doc_ids_shown": shown}, {"spec_version": ans.spec_version}))
    stages.append(("generation", "generation", "LLM", {"adapter": ans.adapter},
                   {"raw_output": text_field(settings, ans.raw_output)},
                   {"tandem.adapter": ans.adapter, "output_tokens": ans.output_tokens,
                    "seconds": round(ans.timings.get("generation_ms", 0.0) / 1000, 3),
                    "batch_size": ans.timings.get("batch_size"),
                    "adapter_load_ms": ans.timings.get("adapter_load_ms")}))
    stages.append(("validation", "validation", "EVALUATOR", {"citations": ans.contract["citations"]},
                   {"valid": ans.valid, "violations": ans.violations, "values_grounded": grounded,
                    "refused": ans.refused, "confidence": ans.contract["confidence"]}, {}))
    return stages


def write(client, settings: Settings, ans, *, experiment_id: str, started_ns: int, requested: str | None,
          source: str) -> str:
    """Start and end the trace of ``ans`` (MLflow exports it in the background); returns its id."""
    ends = [end for key, value in ans.marks.items() if key != "start" for _start, end in [value]]
    end_ns = max([started_ns + int(ans.timings.get("total_ms", 0.0) * 1e6)]
                 + [_wall_ns(ans, started_ns, end) for end in ends])  # total_ms is rounded: never before a stage
    contract = {**ans.contract, "answer": text_field(settings, ans.contract["answer"])}
    root = client.start_trace(TRACE_NAME, span_type="CHAIN", inputs={"question": text_field(settings, ans.question)},
                              tags=trace_tags(ans, requested=requested, source=source),
                              experiment_id=experiment_id, start_time_ns=started_ns)
    trace_id = root.trace_id
    for mark, name, span_type, inputs, outputs, attributes in _stages(settings, ans):
        start, end = ans.marks.get(mark, (ans.marks["start"], ans.marks["start"]))
        if name == "prompt":  # building the prompt is the instant before generation starts
            end = start
        span = client.start_span(name, trace_id=trace_id, parent_id=root.span_id, span_type=span_type,
                                 inputs=inputs, attributes=_clean(attributes),
                                 start_time_ns=_wall_ns(ans, started_ns, start))
        client.end_span(trace_id, span.span_id, outputs=outputs, end_time_ns=_wall_ns(ans, started_ns, end))
    client.end_trace(trace_id, outputs={**contract, "valid": ans.valid, "refused": ans.refused},
                     attributes={"tandem.sources": [s["doc_id"] for s in ans.sources]},
                     end_time_ns=max(end_ns, started_ns))
    return trace_id


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
