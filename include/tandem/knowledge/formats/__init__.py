"""Binary document formats: PDF, Word (.docx), PowerPoint (.pptx) and Excel (.xlsx), extracted into Markdown
parts that keep where each came from (``Part.location``: ``p. 12``, ``slide 3``, ``sheet Prices``).

- ``guard``: what the bytes are, checked before any parser opens them (a PDF header, an Office zip with its
  main part, a bounded unzipped size: no zip bomb reaches a parser);
- ``pdf``, ``office``: the extractors (pypdfium2, python-docx, python-pptx, openpyxl; docs/decisions.md says
  why these);
- ``bounded``: each file extracted in a worker process with a time and a memory bound, so that no file can
  hang or kill a batch.

A binary document's hash is the sha256 of its bytes and of its extractor's id (``extractor_id``: the format,
the library and its version, this module's own version for the format). The plan reads the bytes only; the
batch extracts. A new extractor version re-processes exactly the documents of its format, through the usual
shadow space, canary and release.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata

# format -> (suffixes, the library that extracts it, Tandem's version of that extractor)
FORMATS = {
    "pdf": ((".pdf",), "pypdfium2", 1),
    "docx": ((".docx",), "python-docx", 1),
    "pptx": ((".pptx",), "python-pptx", 1),
    "xlsx": ((".xlsx",), "openpyxl", 1),
}
SUFFIXES = {suffix: fmt for fmt, (suffixes, _, _) in FORMATS.items() for suffix in suffixes}


def binary_format(path: str) -> str | None:
    """The binary format a path names by its extension ("pdf", "docx", "pptx", "xlsx"), else None."""
    low = path.lower()
    dot = low.rfind(".")
    return SUFFIXES.get(low[dot:]) if dot >= 0 else None


@lru_cache(maxsize=None)
def extractor_id(fmt: str) -> str:
    """``pdf:pypdfium2==5.15.2:tandem-1``: part of the document hash, so a new extractor re-processes its format."""
    _, library, version = FORMATS[fmt]
    return f"{fmt}:{library}=={metadata.version(library)}:tandem-{version}"


def document_hash(fmt: str, data: bytes) -> str:
    """The hash of a binary document: its bytes and its extractor."""
    digest = hashlib.sha256()
    digest.update(extractor_id(fmt).encode())
    digest.update(b"\x00")
    digest.update(data)
    return digest.hexdigest()
