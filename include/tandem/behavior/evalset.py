"""The eval set: versioned JSONL, one example a line.

``{"id": "e001", "question": str, "gold_doc_ids": [doc ids], "gold_facts": [str], "reference_answer": str,
"answerable": bool}``, and optionally ``"old_facts": [str]``: values the documents stated before they changed
(a release-2 question lists release 1's value), which an answer must not repeat while the context holds the new
ones (the ``not_stale`` verdict, diagnosis ``stale``). An answerable example needs at least one gold doc id and one gold fact. Every
problem is reported with the file and line, before any model loads. The file's sha256 is logged with every
eval run (``tandem.eval_set_digest``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from tandem.errors import UserError

FIELDS = {"id": str, "question": str, "gold_doc_ids": list, "gold_facts": list, "reference_answer": str,
          "answerable": bool}
OPTIONAL = {"old_facts": list}


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    gold_doc_ids: tuple[str, ...]
    gold_facts: tuple[str, ...]
    reference_answer: str
    answerable: bool
    line: int = 0
    old_facts: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "gold_doc_ids": list(self.gold_doc_ids),
                "gold_facts": list(self.gold_facts), "reference_answer": self.reference_answer,
                "answerable": self.answerable, **({"old_facts": list(self.old_facts)} if self.old_facts else {})}


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def load_examples(path: str | Path) -> list[Example]:
    """Parse and validate an eval set; raises UserError naming the file and line of the first problem.
    (About 60 lines: each field's check, in the order of the file's documentation.)"""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"eval set {path} does not exist",
                        fix="set TANDEM_EVAL_SET_PATH to a JSONL eval set (the demo's is "
                            "include/tandem/data/demo/eval_set.jsonl)")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"eval set {path}: not UTF-8 text", fix="save the file as UTF-8 JSONL") from None
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue

        def bad(problem: str, fix: str) -> UserError:
            return UserError(f"eval set {path} line {lineno}: {problem}", fix=fix)

        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})", "write one JSON object per line") from None
        if not isinstance(row, dict):
            raise bad("must be a JSON object", "write one JSON object per line")
        for field, kind in FIELDS.items():
            if field not in row:
                raise bad(f"missing field `{field}`", f"add `{field}` (fields: {', '.join(FIELDS)})")
            if not isinstance(row[field], kind):
                raise bad(f"field `{field}` must be a {kind.__name__}, got {row[field]!r}",
                          f"make `{field}` a {kind.__name__}")
        extra = sorted(set(row) - set(FIELDS) - set(OPTIONAL))
        if extra:
            raise bad(f"unknown field `{extra[0]}`", f"remove it (fields: {', '.join([*FIELDS, *OPTIONAL])})")
        row.setdefault("old_facts", [])
        if not isinstance(row["old_facts"], list):
            raise bad(f"field `old_facts` must be a list, got {row['old_facts']!r}", "make `old_facts` a list")
        for field in ("gold_doc_ids", "gold_facts", "old_facts"):
            if not all(isinstance(v, str) and v.strip() for v in row[field]):
                raise bad(f"field `{field}` must be a list of non-empty strings", f"fix `{field}`")
        ex_id = row["id"].strip()
        if not ex_id:
            raise bad("field `id` is empty", "give every example a unique id")
        if ex_id in seen:
            raise bad(f"duplicate id {ex_id!r} (first on line {seen[ex_id]})", "give every example a unique id")
        if not row["question"].strip():
            raise bad("field `question` is empty", "write the question")
        if row["answerable"] and (not row["gold_doc_ids"] or not row["gold_facts"]):
            raise bad("an answerable example needs at least one gold_doc_ids entry and one gold_facts entry",
                      "add the doc id that holds the answer and a short fact a correct answer contains, "
                      "or set answerable to false")
        seen[ex_id] = lineno
        examples.append(Example(id=ex_id, question=row["question"].strip(),
                                gold_doc_ids=tuple(v.strip() for v in row["gold_doc_ids"]),
                                gold_facts=tuple(v.strip() for v in row["gold_facts"]),
                                reference_answer=row["reference_answer"], answerable=row["answerable"],
                                line=lineno, old_facts=tuple(v.strip() for v in row["old_facts"])))
    if not examples:
        raise UserError(f"eval set {path} has no examples", fix="add JSONL lines (see the demo eval set)")
    return examples
