"""The scan: every selected file of every source, read and extracted, as (doc id, uri, hash or error).

A binary document (PDF, Office) is only read and hashed here (``load``); the batch extracts it.

A file that cannot be a document (broken symlink, not a regular file, unreadable, too large, empty,
undecodable, binary) becomes a row with the reason. Its ``content_hash`` is then a marker of the failing
content, so the same failure repeated counts towards quarantine, and a fixed file is retried at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Iterable, Iterator

from tandem.knowledge import formats
from tandem.knowledge import sources as src
from tandem.knowledge.diff import ScanRow
from tandem.knowledge.extract import ExtractError, Extracted, extract

log = logging.getLogger(__name__)


def _marker(kind: str, payload: bytes) -> str:
    return f"error:{kind}:" + hashlib.sha256(payload).hexdigest()[:32]


def load(reader: src.Reader, doc_id: str, uri: str, max_bytes: int, extractor=None,
         ) -> tuple[Extracted | None, str, str | None]:
    """(extracted or None, content hash or failure marker, error reason or None).

    A binary document (PDF, Office: ``tandem.knowledge.formats``) is hashed from its bytes and extractor; it
    is extracted only with an ``extractor`` (a ``BoundedExtractor``: the batch), never in the plan's scan. Its
    failure keeps that hash, so the same file failing again counts towards quarantine.
    """
    rel = doc_id.split("/", 1)[1] if "/" in doc_id else doc_id
    try:
        data = reader.read(uri, max_bytes)
    except src.FileTooLarge as exc:
        return None, _marker("too-large", uri.encode()), str(exc)
    except IsADirectoryError:
        return None, _marker("not-a-file", uri.encode()), "not a regular file (a folder)"
    except FileNotFoundError:
        return None, _marker("missing", uri.encode()), "file vanished or is a broken symlink"
    except PermissionError as exc:
        return None, _marker("unreadable", uri.encode()), f"unreadable: permission denied ({exc.strerror or exc})"
    except OSError as exc:
        return None, _marker("unreadable", uri.encode()), f"unreadable: {exc.strerror or exc}"
    fmt = formats.binary_format(rel)
    if fmt is not None:
        digest = formats.document_hash(fmt, data)
        if extractor is None:
            return None, digest, None
        try:  # the hash is this process's (the plan's): the worker's extractor id can only be the same or stale
            return dataclasses.replace(extractor.extract(fmt, rel, data), doc_hash=digest), digest, None
        except ExtractError as exc:
            return None, digest, str(exc)
    try:
        doc = extract(rel, data)
    except ExtractError as exc:
        return None, _marker("extract", data), str(exc)
    except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not stop the run
        return None, _marker("extract", data), f"extraction failed: {type(exc).__name__}: {exc}"
    return doc, doc.content_hash, None


def scan(source_list: Iterable[src.Source], include, exclude, max_bytes: int,
         reader: src.Reader | None = None, progress=None) -> Iterator[ScanRow]:
    """Rows in doc-id order for each source (sources sorted by name). Raises UserError for a bad root."""
    reader = reader or src.Reader()
    entries_by_source = [(s, list(src.list_entries(s, include, exclude))) for s in source_list]
    if progress is not None:
        progress.set_total(sum(len(e) for _, e in entries_by_source))
    for source, entries in entries_by_source:
        log.info("source %s (%s): %d files selected", source.name, source.root, len(entries))
        for entry in entries:
            if entry.problem:
                row = ScanRow(entry.doc_id, entry.source, entry.uri, None, _marker("entry", entry.problem.encode()),
                              entry.problem)
            elif entry.size > max_bytes:
                row = ScanRow(entry.doc_id, entry.source, entry.uri, None, _marker("too-large", entry.uri.encode()),
                              f"{entry.size} bytes: larger than the limit of {max_bytes} bytes (TANDEM_MAX_FILE_BYTES)")
            else:
                doc, digest, error = load(reader, entry.doc_id, entry.uri, max_bytes)
                row = ScanRow(entry.doc_id, entry.source, entry.uri, doc.title if doc else None, digest, error)
            if progress is not None:
                progress.update()
            yield row
