"""Rows of cells -> a Markdown table (the chunker renders each row as a record with its column headers)."""

from __future__ import annotations

from typing import Iterable, Sequence


def cell_text(value: object) -> str:
    """One cell as table text: no newlines or pipes that would break the row."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = " ".join(str(value).split())
    return text.replace("|", "/")


def markdown_table(rows: Iterable[Sequence[object]]) -> str:
    """The first non-empty row is the header; empty rows and trailing empty columns are dropped."""
    cleaned = [[cell_text(c) for c in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return ""
    width = max(max((i + 1 for i, c in enumerate(row) if c), default=0) for row in cleaned)
    cleaned = [(row + [""] * width)[:width] for row in cleaned]
    header = [c or f"column {i + 1}" for i, c in enumerate(cleaned[0])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(row) + " |" for row in cleaned[1:]]
    return "\n".join(lines)
