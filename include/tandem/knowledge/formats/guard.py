"""What a file's bytes are, checked before a parser opens them.

- A ``.pdf`` must start with a PDF header (``%PDF-`` in its first 1 KiB).
- A ``.docx`` / ``.pptx`` / ``.xlsx`` must be a zip holding its format's main part (``word/document.xml``,
  ``ppt/presentation.xml``, ``xl/workbook.xml``); an encrypted Office file is an OLE container, not a zip.
- The zip's members may unzip to at most ``extract_max_unzipped_bytes`` together: a zip bomb is refused from its
  directory, before anything is inflated. (Python's zipfile never inflates a member past the size its
  directory declares, and the worker's memory bound stops whatever gets past both.) No ratio rule: real
  Office XML reaches 300x, deflate tops out near 1000x, so a ratio tells a bomb from a long table poorly.
"""

from __future__ import annotations

import io
import zipfile

from tandem.knowledge.extract import ExtractError

MAIN_PART = {"docx": "word/document.xml", "pptx": "ppt/presentation.xml", "xlsx": "xl/workbook.xml"}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc/.xls/.ppt, and encrypted OOXML files
NAMES = {"pdf": "PDF", "docx": "Word document", "pptx": "PowerPoint deck", "xlsx": "Excel workbook"}


def sniff(data: bytes) -> str:
    """A short description of what the bytes look like (for the error when the extension lies)."""
    head = data[:1024]
    if b"%PDF-" in head:
        return "a PDF"
    if head.startswith(b"PK\x03\x04"):
        try:
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        for fmt, part in MAIN_PART.items():
            if part in names:
                return f"a {NAMES[fmt]} (.{fmt})"
        return "a zip archive"
    if head.startswith(OLE_MAGIC):
        return "an OLE container (a legacy .doc/.xls/.ppt, or an encrypted Office file)"
    if head.lstrip().startswith((b"<!DOCTYPE html", b"<html", b"<HTML")):
        return "an HTML page"
    try:
        head.decode("utf-8")
        return "plain text"
    except UnicodeDecodeError:
        return "binary data"


def check(fmt: str, path: str, data: bytes, max_unzipped: int) -> None:
    """Raise ExtractError naming what is wrong and what to do; return when the parser may open the bytes."""
    if fmt == "pdf":
        if b"%PDF-" not in data[:1024]:
            raise ExtractError(f"the extension says PDF but the content is {sniff(data)}: rename the file to its "
                               "real type, or export it as PDF")
        return
    if not data.startswith(b"PK") and data[:8] != OLE_MAGIC:
        raise ExtractError(f"the extension says .{fmt} but the content is {sniff(data)}: rename the file to its "
                           "real type, or re-save it")
    if data[:8] == OLE_MAGIC:
        raise ExtractError(f"not a .{fmt} zip but {sniff(data)}: if it is password-protected, save an unprotected "
                           f"copy; if it is a legacy file, save it as .{fmt}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise ExtractError(f"a corrupt .{fmt} (its zip is unreadable: {exc}): re-save the file from its "
                           "application") from None
    if MAIN_PART[fmt] not in {m.filename for m in members}:
        raise ExtractError(f"the extension says .{fmt} but the content is {sniff(data)} (no {MAIN_PART[fmt]}): "
                           "rename the file to its real type, or re-save it")
    total = sum(m.file_size for m in members)
    if total > max_unzipped:
        raise ExtractError(f"unzips to {total} bytes, more than the limit of {max_unzipped} "
                           "(TANDEM_EXTRACT_MAX_UNZIPPED_BYTES): a zip bomb, or a document to split")
