"""Structure-aware chunks: Markdown sections (LlamaIndex ``MarkdownNodeParser``) split to size with overlap
(LlamaIndex ``SentenceSplitter`` measuring the embedding model's tokens).

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
CHUNKER_VERSION = 1
HEADING_SEP = " > "
_HEADING_LINE = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
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
                "context": "title > heading path"}


@dataclasses.dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    title: str
    heading_path: str
    text: str

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


def _sections(doc: Extracted) -> list[tuple[list[str], str]]:
    """[(heading path parts, section body)] in document order."""
    if doc.fmt != "markdown":
        return [([], doc.text)]
    from llama_index.core.node_parser import MarkdownNodeParser
    from llama_index.core.schema import Document

    nodes = MarkdownNodeParser(include_metadata=True, include_prev_next_rel=False) \
        .get_nodes_from_documents([Document(text=doc.text)])
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


def chunk_document(doc_id: str, doc: Extracted, config: ChunkConfig) -> list[Chunk]:
    from tandem.knowledge.embedding import token_counter

    count = token_counter(config.model_ref)
    limit = min(config.chunk_size, config.max_seq_length - 2)
    doc_hash = doc.content_hash
    chunks: list[Chunk] = []
    sections = _sections(doc) or [([], doc.text)]  # only headings: index the headings' text itself
    for parts, body in sections:
        heading_path = HEADING_SEP.join(parts)
        context = f"{doc.title}{HEADING_SEP}{heading_path}" if heading_path else doc.title
        budget = max(MIN_BUDGET, limit - len(count(context + "\n\n")))
        for piece in _splitter(budget, config.chunk_overlap, config.model_ref).split_text(body):
            piece = piece.strip()
            if not piece:
                continue
            ordinal = len(chunks)
            chunks.append(Chunk(chunk_id=chunk_id(doc_id, doc_hash, ordinal), doc_id=doc_id, ordinal=ordinal,
                                title=doc.title, heading_path=heading_path, text=piece))
    return chunks
