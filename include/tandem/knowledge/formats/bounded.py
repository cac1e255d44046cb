"""Each binary document extracted in a worker process with a time and a memory bound.

One worker process (``spawn``: a clean interpreter, not a copy of a task holding a model) serves a batch; its
address space is capped with ``RLIMIT_AS`` (``extract_max_memory_mb``) and each file gets
``extract_timeout_seconds``. Pebble's ``ProcessPool`` kills a worker past its timeout and starts a fresh one,
so a file that hangs, loops or exhausts memory fails alone, with its reason, and the batch goes on.
"""

from __future__ import annotations

import logging
import multiprocessing

from tandem.config import Settings
from tandem.knowledge import formats
from tandem.knowledge.extract import ExtractError, Extracted, Part, markdown_title, normalise, stem_title

log = logging.getLogger(__name__)


def _limit_memory(max_mb: int) -> None:
    import resource

    limit = int(max_mb) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _extractors():
    from tandem.knowledge.formats import office, pdf

    return {"pdf": pdf.extract_pdf, "docx": office.extract_docx, "pptx": office.extract_pptx,
            "xlsx": office.extract_xlsx}


def assemble(fmt: str, path: str, data: bytes, title: str | None, parts: list[Part]) -> Extracted:
    """Normalised parts (empty ones dropped), the whole text, a title, and the document's hash."""
    from tandem.knowledge.formats.guard import NAMES

    kept = tuple(Part(p.location, text) for p in parts if (text := normalise(p.text)))
    if not kept:
        raise ExtractError(f"no text in this {NAMES[fmt]}: nothing to index (if its text is in "
                           "images, OCR it first)")
    text = "\n\n".join(p.text for p in kept)
    title = normalise(title or markdown_title(text) or "") or stem_title(path)
    return Extracted(title=title[:500], text=text, fmt="markdown", parts=kept, doc_hash=formats.document_hash(fmt, data))


def extract_here(fmt: str, path: str, data: bytes, max_unzipped: int) -> Extracted:
    """Check and extract in this process (what the worker runs)."""
    from tandem.knowledge.formats import guard

    guard.check(fmt, path, data, max_unzipped)
    title, parts = _extractors()[fmt](data)
    return assemble(fmt, path, data, title, parts)


class MemoryBound(ExtractError):
    """The file needed more than the worker's address space (the worker is replaced after it)."""

    def __init__(self, max_mb: int):
        self.max_mb = max_mb
        super().__init__(f"extraction needed more than {max_mb} MB (TANDEM_EXTRACT_MAX_MEMORY_MB) and was "
                         "stopped: split the file, or raise the bound")

    def __reduce__(self):  # it comes back from the worker by pickle
        return MemoryBound, (self.max_mb,)


def _near_memory_bound(max_mb: int) -> bool:
    """Did this process reach its address-space bound? Parsers report a failed allocation in their own words
    (lxml: "unknown error"), so the process's peak virtual size (VmPeak) is what tells."""
    try:
        with open("/proc/self/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmPeak:"))
    except (OSError, StopIteration, ValueError):
        return False
    return peak_kb >= 0.9 * max_mb * 1024


def _work(fmt: str, path: str, data: bytes, max_unzipped: int, max_mb: int) -> Extracted:
    """The worker's task: a parser's own exception becomes an ExtractError here (some, like lxml's, cannot be
    pickled back), and a failure at the address-space bound is named as the memory bound."""
    try:
        return extract_here(fmt, path, data, max_unzipped)
    except ExtractError:
        raise
    except MemoryError:
        raise MemoryBound(max_mb) from None
    except Exception as exc:  # noqa: BLE001 - a parser's error on one file: the file fails, the batch goes on
        if _near_memory_bound(max_mb):
            raise MemoryBound(max_mb) from None
        raise ExtractError(f"extraction failed: {type(exc).__name__}: {str(exc)[:300]}") from None


class BoundedExtractor:
    """``with BoundedExtractor.from_settings(s) as ex: ex.extract("pdf", "manual.pdf", data)``."""

    def __init__(self, timeout_s: float, max_memory_mb: int, max_unzipped: int):
        self.timeout_s, self.max_memory_mb, self.max_unzipped = timeout_s, max_memory_mb, max_unzipped
        self._pool = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "BoundedExtractor":
        return cls(settings.extract_timeout_seconds, settings.extract_max_memory_mb,
                   settings.extract_max_unzipped_bytes)

    def __enter__(self) -> "BoundedExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def _pool_now(self):
        from pebble import ProcessPool

        if self._pool is None:
            self._pool = ProcessPool(max_workers=1, initializer=_limit_memory, initargs=(self.max_memory_mb,),
                                     context=multiprocessing.get_context("spawn"))
        return self._pool

    def extract(self, fmt: str, path: str, data: bytes) -> Extracted:
        """The document, or ExtractError with the reason (bad content, past the time or the memory bound)."""
        from concurrent.futures import TimeoutError as FutureTimeout

        from pebble import ProcessExpired

        future = self._pool_now().schedule(_work, args=(fmt, path, data, self.max_unzipped, self.max_memory_mb),
                                           timeout=self.timeout_s)
        try:
            return future.result()
        except FutureTimeout:
            raise ExtractError(f"extraction took longer than {self.timeout_s:g} s (TANDEM_EXTRACT_TIMEOUT_SECONDS) "
                               "and was stopped: split the file, or raise the bound") from None
        except ProcessExpired as exc:
            raise ExtractError(f"the extractor process died (exit code {exc.exitcode}), most likely past the "
                               f"memory bound of {self.max_memory_mb} MB (TANDEM_EXTRACT_MAX_MEMORY_MB): split "
                               "the file, or raise the bound") from None
        except MemoryBound:
            self.close()  # its peak stays: a fresh worker for the next file
            raise
        except ExtractError:
            raise
        except Exception as exc:  # noqa: BLE001 - the result could not come back (pickling): this file fails
            raise ExtractError(f"extraction failed: {type(exc).__name__}: {str(exc)[:300]}") from None
