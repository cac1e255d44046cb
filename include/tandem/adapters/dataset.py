"""The RAFT dataset (retrieval-augmented fine-tuning) built from curated behavior examples.

Input: JSONL lines ``{"id", "question", "oracle_doc_ids": [...], "answer", "gold_facts": [...],
"answerable": bool}``. For each example the context is its oracle chunk(s) from the current index (the
chunks of each oracle document most relevant to the question, at most ``ORACLE_CHUNKS_PER_DOC``) plus
``distractors`` chunks retrieved for the question from other documents, shuffled with the seed. A
``no_oracle_fraction`` of the answerable examples (chosen by a seeded hash of the id) loses its oracle
chunks: like unanswerable examples, its target is the spec's refusal with no citations. Targets follow the
spec's output contract ``{"answer", "citations", "confidence"}``.

A ``counterfactual_fraction`` of the training split's oracle rows whose answer states a value (a number with its
unit) that the oracle chunk holds (chosen by a seeded hash of the id) gets that value changed consistently, in
every context chunk and in the target answer (``tandem.behavior.faithfulness``): the answer is right only
when copied from the context, so the adapter learns to read its context rather than recite what the base model
memorised. Such a row has kind ``counterfactual`` and records what was altered (``altered``). Held-out rows
are never altered: the three-way evaluation probes faithfulness with probes of its own.

The train/holdout split depends only on the example ids (sorted by a hash of the id), so an example stays
on the same side across retrains and seeds. The snapshot (one JSON line per row, sorted by id) has a
sha256 digest; the retrain logs it with ``mlflow.log_input`` and stores the file as an artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Iterable, Protocol

from tandem.errors import UserError

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "raft.jsonl"
REQUIRED = {"id": str, "question": str, "oracle_doc_ids": list, "answer": str, "answerable": bool}
ORACLE_CHUNKS_PER_DOC = 2  # an oracle document contributes its chunks most relevant to the question
MAX_CONTEXT_CHARS = 1200  # one chunk's text in a prompt (the demo's chunks are ~256 tokens)


@dataclasses.dataclass(frozen=True)
class Chunk:
    doc_id: str
    chunk_id: str
    title: str
    text: str
    uri: str = ""
    heading_path: str = ""

    @classmethod
    def from_hit(cls, hit: Any) -> "Chunk":
        heading = getattr(hit, "heading_path", "") or ""
        if isinstance(heading, (list, tuple)):
            heading = " > ".join(str(h) for h in heading)
        return cls(doc_id=str(hit.doc_id), chunk_id=str(hit.chunk_id), title=str(getattr(hit, "title", "") or ""),
                   text=str(hit.text), uri=str(getattr(hit, "uri", "") or ""), heading_path=str(heading))


class ChunkSource(Protocol):
    """Where contexts come from: the knowledge index (``IndexSource``) in production."""

    def search(self, query: str, k: int) -> list[Chunk]: ...

    def chunks_of(self, doc_id: str, query: str) -> list[Chunk]:
        """The chunks of ``doc_id`` most relevant to ``query`` (at most ORACLE_CHUNKS_PER_DOC)."""
        ...

    def index_version(self) -> int | None: ...


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    oracle_doc_ids: tuple[str, ...]
    answer: str
    gold_facts: tuple[str, ...]
    answerable: bool


def load_examples(path: str | Path) -> list[Example]:
    """Read and check the curated JSONL; errors name the file, line and field."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"training set {path} does not exist",
                        fix="set TANDEM_TRAIN_SET_PATH (or the `dataset` param) to a JSONL file of curated examples")
    examples, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})", fix="one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object", fix="one JSON object per line")
        for field, typ in REQUIRED.items():
            if not isinstance(obj.get(field), typ):
                raise UserError(f"{where}: field {field!r} is missing or not a {typ.__name__}",
                                fix='lines look like {"id", "question", "oracle_doc_ids": [...], "answer", '
                                    '"gold_facts": [...], "answerable": true}')
        if obj["id"] in seen:
            raise UserError(f"{where}: duplicate id {obj['id']!r}", fix="give every example a unique id")
        if obj["answerable"] and not obj["oracle_doc_ids"]:
            raise UserError(f"{where}: answerable example {obj['id']!r} has no oracle_doc_ids",
                            fix="list the doc ids that answer it, or set answerable to false")
        seen.add(obj["id"])
        examples.append(Example(id=obj["id"], question=obj["question"].strip(),
                                oracle_doc_ids=tuple(str(d) for d in obj["oracle_doc_ids"]), answer=obj["answer"],
                                gold_facts=tuple(str(f) for f in obj.get("gold_facts") or ()),
                                answerable=obj["answerable"]))
    if not examples:
        raise UserError(f"training set {path} has no examples", fix="add curated examples (JSONL)")
    return sorted(examples, key=lambda e: e.id)


def _unit(*parts: Any) -> float:
    """A stable number in [0, 1) from the parts (not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(examples: list[Example], holdout_fraction: float) -> dict[str, str]:
    """{id: "train" | "holdout"}: the first round(n * fraction) ids by hash are held out (>= 1 when n >= 2)."""
    ranked = sorted(examples, key=lambda e: (_unit("split", e.id), e.id))
    n_hold = round(len(ranked) * holdout_fraction)
    if len(ranked) >= 2:
        n_hold = min(max(n_hold, 1), len(ranked) - 1)
    else:
        n_hold = 0
    return {e.id: ("holdout" if i < n_hold else "train") for i, e in enumerate(ranked)}


def _trim(text: str, limit: int = MAX_CONTEXT_CHARS) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return (cut[: cut.rfind(" ")] if " " in cut[limit // 2:] else cut) + " …"


def counterfactual_row(row: dict[str, Any], answer: str, seed: int) -> dict[str, Any] | None:
    """``row`` (an oracle row) with one value of its answer changed in the answer and every context that states
    it, or None when no gold fact is a value that both the answer and an oracle chunk state."""
    from tandem.behavior.faithfulness import counterfactual, substitute, values
    from tandem.behavior.text import contains

    facts = [f for f in row["gold_facts"] if values(f) and contains(answer, f)]
    oracle = set(row["oracle_doc_ids"])
    for ctx in row["contexts"]:
        if ctx["doc_id"] not in oracle:
            continue
        item = {"id": row["id"], "question": row["question"], "gold_facts": facts}
        probe = counterfactual(item, ctx["chunk_id"], ctx["text"], seed)
        if probe is None:
            continue
        new_answer = substitute(answer, probe.original, probe.gold)
        contexts = [dict(c, text=substitute(c["text"], probe.original, probe.gold)) for c in row["contexts"]]
        if not contains(new_answer, probe.gold) or contains(new_answer, probe.original) or \
                any(contains(c["text"], probe.original) for c in contexts):
            continue  # the value is written another way somewhere: altering it would leave the row inconsistent
        return {**row, "kind": "counterfactual", "contexts": contexts,
                "gold_facts": [substitute(f, probe.original, probe.gold) for f in row["gold_facts"]],
                "target": {**row["target"], "answer": new_answer},
                "altered": {"fact": probe.original, "value": probe.gold, "chunk_id": probe.chunk_id}}
    return None


def build_rows(examples: list[Example], source: ChunkSource, spec: Any, *, distractors: int,
               no_oracle_fraction: float, holdout_fraction: float, seed: int, counterfactual_fraction: float = 0.0,
               distractor_chars: int = 0, unanswerable_fraction: float = 1.0,
               progress: Any = None) -> list[dict[str, Any]]:
    """The RAFT rows, sorted by id. ``spec`` gives the refusal (``refusal_target(spec)``).

    About 70 lines: one pass over the examples draws every choice from one seeded generator, in a fixed
    order; split, that generator and its order would have to be threaded through each part.

    ``distractor_chars`` > 0: a training row's distractor chunks keep only their window best matching the
    question, that many characters (shorter sequences, cheaper steps); held-out rows keep them whole, so the
    three-way evaluation sees the prompts ``behavior_eval`` builds.
    ``unanswerable_fraction``: the share of the training split's unanswerable examples (chosen by a seeded hash
    of the id) trained with the refusal target; the others are left out of training. Held-out unanswerable
    rows always stay: they measure ``refusal_correct``."""
    from tandem.behavior.prompt import window
    sides = split(examples, holdout_fraction)
    refusal = refusal_target(spec)
    rows = []
    missing_oracle = []
    for ex in examples:
        if (not ex.answerable and sides[ex.id] == "train"
                and _unit("unanswerable", seed, ex.id) >= unanswerable_fraction):
            if progress is not None:
                progress(1)
            continue
        rng = random.Random(f"{seed}:{ex.id}")
        withhold = ex.answerable and _unit("no-oracle", seed, ex.id) < no_oracle_fraction
        oracle: list[Chunk] = []
        if ex.answerable:
            for doc_id in ex.oracle_doc_ids:
                oracle.extend(source.chunks_of(doc_id, ex.question))
            if not oracle:
                missing_oracle.append(ex.id)
        oracle_ids = set(ex.oracle_doc_ids)
        with_oracle = ex.answerable and not withhold and bool(oracle)
        # contexts without an oracle get as many chunks as an oracle row would (at least one)
        n_distract = distractors if with_oracle else max(1, distractors + (len(oracle) if ex.answerable else 1))
        seen, picked = set(), []
        for c in source.search(ex.question, n_distract + len(oracle) + 4):
            if c.doc_id not in oracle_ids and c.chunk_id not in seen:
                seen.add(c.chunk_id)
                picked.append(c)
        short = distractor_chars if sides[ex.id] == "train" else 0
        contexts = [dataclasses.replace(c, text=window(c.text, short, ex.question)) if short else c
                    for c in picked[:n_distract]] + (oracle if with_oracle else [])
        rng.shuffle(contexts)
        if with_oracle:
            cited = [d for d in dict.fromkeys(c.doc_id for c in contexts) if d in oracle_ids]
            target = {"answer": ex.answer, "citations": cited, "confidence": "high"}
            kind = "oracle"
        else:
            target = dict(refusal)
            kind = "withheld" if ex.answerable else "unanswerable"
        row = {
            "id": ex.id, "split": sides[ex.id], "kind": kind, "question": ex.question,
            "answerable": ex.answerable and kind == "oracle", "oracle_doc_ids": list(ex.oracle_doc_ids),
            "gold_facts": list(ex.gold_facts),
            "contexts": [dict(dataclasses.asdict(c), text=_trim(c.text)) for c in contexts],
            "target": target,
        }
        if (kind == "oracle" and sides[ex.id] == "train"
                and _unit("counterfactual", seed, ex.id) < counterfactual_fraction):
            row = counterfactual_row(row, ex.answer, seed) or row
        rows.append(row)
        if progress is not None:
            progress(1)
    if missing_oracle:
        raise UserError(f"{len(missing_oracle)} answerable example(s) have no oracle chunk in the current index: "
                        f"{', '.join(missing_oracle[:10])}",
                        fix="run the knowledge reindex so the oracle documents are indexed, or fix their oracle_doc_ids")
    return rows


def refusal_target(spec: Any) -> dict[str, Any]:
    """The spec's refusal as an output-contract target (the same as ``tandem.behavior.prompt.refusal_target``)."""
    return {"answer": spec.style.refusal_text, "citations": [], "confidence": "low"}


def snapshot_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in sorted(rows, key=lambda r: r["id"])]


def digest(rows: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for line in snapshot_lines(rows):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def write_snapshot(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(snapshot_lines(rows)) + "\n", encoding="utf-8")
    return path


def read_snapshot(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def alterations(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What each counterfactual row altered: ``{id, fact, value, chunk_id}``, sorted by id."""
    return [{"id": r["id"], **r["altered"]} for r in sorted(rows, key=lambda r: r["id"]) if r.get("altered")]


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {"rows": len(rows)}
    for r in rows:
        out[f"{r['split']}"] = out.get(r["split"], 0) + 1
        out[f"{r['split']}_{r['kind']}"] = out.get(f"{r['split']}_{r['kind']}", 0) + 1
    return dict(sorted(out.items()))


class IndexSource:
    """Chunks from the published knowledge release (``tandem.knowledge.search``), pinned on first use so that a
    whole dataset, and the index version recorded with it, come from one release."""

    def __init__(self, settings):
        self.settings = settings
        self._pinned = None

    def _at(self):
        from tandem.knowledge.search import pin

        if self._pinned is None:
            self._pinned = pin(self.settings)
        return self._pinned

    def search(self, query: str, k: int) -> list[Chunk]:
        from tandem.knowledge.search import search

        return [Chunk.from_hit(h) for h in search(self.settings, query, k, at=self._at())]

    def chunks_of(self, doc_id: str, query: str) -> list[Chunk]:
        from tandem.knowledge.search import search

        hits = search(self.settings, query, ORACLE_CHUNKS_PER_DOC, filters={"doc_id": doc_id}, at=self._at())
        return [Chunk.from_hit(h) for h in hits]

    def index_version(self) -> int | None:
        at = self._at()
        return at.index_version if at is not None else None
