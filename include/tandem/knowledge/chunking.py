"""Structure-aware chunks: Markdown sections (LlamaIndex ``MarkdownNodeParser``) split to size with overlap
(LlamaIndex ``SentenceSplitter`` measuring the embedding model's tokens).

A Markdown table is rendered row by row as records before splitting: ``Team — Price per month: $59; Monitors:
100.``, each row with its column headers, so that a chunk cut inside a table still says which row a value
belongs to, and a small model reads the value off its row instead of a neighbour's. (LlamaIndex's
``MarkdownElementNodeParser`` also finds tables, but it needs an LLM to summarise each one; a record per row
needs none.)

Each chunk carries its document title and heading path; the text that is embedded is
``"<title> > <heading path>\\n\\n<chunk text>"``, and the whole of it fits the model's maximum sequence length
(the context's tokens are taken from the chunk's budget), so nothing is silently truncated by the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import lru_cache

from tandem.knowledge.extract import Extracted

CHUNKER = "md-sections+sentence-splitter"
CHUNKER_VERSION = 2  # 2: Markdown table rows as records
HEADING_SEP = " > "
_HEADING_LINE = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
MIN_BUDGET = 32


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    chunk_size: int
    chunk_overlap: int
    max_seq_length: int
    model_ref: str

    def spec(self) -> dict:
        return {"name": CHUNKER, "version": CHUNKER_VERSION, "chunk_size": self.chunk_size,
                "chunk_overlap": self.chunk_overlap, "max_seq_length": self.max_seq_length,
                "context": "title > heading path", "tables": "rows as records"}


@dataclasses.dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    title: str
    heading_path: str
    text: str
    location: str = ""  # the part it came from: "p. 12", "slide 3", "sheet Prices" ("" for text formats)

    @property
    def context(self) -> str:
        return f"{self.title}{HEADING_SEP}{self.heading_path}" if self.heading_path else self.title

    @property
    def embed_text(self) -> str:
        return f"{self.context}\n\n{self.text}"


def chunk_id(doc_id: str, doc_hash: str, ordinal: int) -> str:
    return hashlib.sha256(f"{doc_id}\x00{doc_hash}\x00{ordinal}".encode()).hexdigest()[:32]


@lru_cache(maxsize=64)
def _splitter(budget: int, overlap: int, model_ref: str):
    from llama_index.core.node_parser import SentenceSplitter

    from tandem.knowledge.embedding import token_counter

    return SentenceSplitter(chunk_size=budget, chunk_overlap=min(overlap, budget // 2),
                            tokenizer=token_counter(model_ref), paragraph_separator="\n\n")


def _sections(doc: Extracted, text: str) -> list[tuple[list[str], str]]:
    """[(heading path parts, section body)] of ``text`` (the document or one of its parts), in order."""
    if doc.fmt != "markdown":
        return [([], text)]
    from llama_index.core.node_parser import MarkdownNodeParser
    from llama_index.core.schema import Document

    nodes = MarkdownNodeParser(include_metadata=True, include_prev_next_rel=False) \
        .get_nodes_from_documents([Document(text=text)])
    out = []
    for node in nodes:
        text = node.get_content()
        parents = [p for p in str(node.metadata.get("header_path", "/")).split("/") if p]
        lines = text.split("\n")
        own = _HEADING_LINE.match(lines[0]) if lines else None
        path = parents + ([own.group(1).strip()] if own else [])
        body = "\n".join(lines[1:]).strip() if own else text.strip()
        if path and path[0] == doc.title:
            path = path[1:]  # the H1 is the title: do not repeat it in the heading path
        if body:
            out.append((path, body))
    return out


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _record(headers: list[str], cells: list[str]) -> str:
    """One table row as a sentence: the row's first cell, then each other cell under its column header."""
    key, rest = cells[0], list(zip(headers[1:], cells[1:]))
    fields = "; ".join(f"{h}: {c}" if h else c for h, c in rest if c)
    text = f"{key} — {fields}" if key and fields else (key or fields)
    return text if text.endswith((".", "!", "?")) else text + "."


def tables_as_records(body: str) -> str:
    """``body`` with every Markdown table (a header row, a ``|---|`` rule, rows) rendered as one record a row."""
    lines = body.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if (lines[i].lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1].strip())):
            headers = _cells(lines[i])
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _cells(lines[i])
                cells += [""] * (len(headers) - len(cells))
                if any(cells):
                    out.append(_record(headers, cells[:max(len(headers), 1)]))
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def chunk_document(doc_id: str, doc: Extracted, config: ChunkConfig) -> list[Chunk]:
    from tandem.knowledge.embedding import token_counter

    count = token_counter(config.model_ref)
    limit = min(config.chunk_size, config.max_seq_length - 2)
    doc_hash = doc.content_hash
    chunks: list[Chunk] = []
    for part in doc.located_parts:  # a page, slide or sheet is chunked alone: a chunk has one location
        sections = _sections(doc, part.text) or [([], part.text)]  # only headings: index the headings' text
        for parts, body in sections:
            body = tables_as_records(body)
            heading_path = HEADING_SEP.join(parts)
            context = f"{doc.title}{HEADING_SEP}{heading_path}" if heading_path else doc.title
            budget = max(MIN_BUDGET, limit - len(count(context + "\n\n")))
            for piece in _splitter(budget, config.chunk_overlap, config.model_ref).split_text(body):
                piece = piece.strip()
                if not piece:
                    continue
                ordinal = len(chunks)
                chunks.append(Chunk(chunk_id=chunk_id(doc_id, doc_hash, ordinal), doc_id=doc_id, ordinal=ordinal,
                                    title=doc.title, heading_path=heading_path, text=piece, location=part.location))
    return chunks
