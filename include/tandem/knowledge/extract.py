"""Bytes -> normalised text and title, and the content hash.

Formats: Markdown (.md, .markdown), plain text (.txt and anything else selected), reStructuredText (.rst,
section titles become Markdown headings), HTML (.html, .htm: text extracted, h1..h6 become Markdown
headings) and CSV (.csv: a Markdown table, its first row the header). PDF, Word, PowerPoint and Excel are
``tandem.knowledge.formats`` (extracted in a bounded worker process, in parts that keep their location). Everything is normalised the same way (``NORMALISATION``, part of the embedding-space
fingerprint): NFC, ``\\n`` newlines, no trailing spaces, at most one blank line in a row.

The content hash is sha256 over the title and the normalised text only: never mtime, size or crawl time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata

NORMALISATION = "nfc-lf-rstrip-blank1-v1"


class ExtractError(Exception):
    """The document cannot be indexed; the message is the reason shown to the user."""


@dataclasses.dataclass(frozen=True)
class Part:
    """A piece of a document that has a location of its own: a PDF page (``p. 12``), a slide, a sheet."""

    location: str  # "" when the heading path is the only location (text formats, Word)
    text: str


@dataclasses.dataclass(frozen=True)
class Extracted:
    title: str
    text: str  # normalised; Markdown headings mark the structure (md, rst, html, csv, the binary formats)
    fmt: str  # "markdown" or "text"
    parts: tuple[Part, ...] = ()  # the binary formats: the text in located parts (empty: one part, no location)
    doc_hash: str | None = None  # the binary formats: the hash of the bytes and the extractor (formats)

    @property
    def content_hash(self) -> str:
        return self.doc_hash or content_hash(self.title, self.text)

    @property
    def located_parts(self) -> tuple[Part, ...]:
        return self.parts or (Part("", self.text),)


def content_hash(title: str, text: str) -> str:
    digest = hashlib.sha256()
    digest.update(title.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def format_of(path: str) -> str:
    low = path.lower()
    if low.endswith((".md", ".markdown")):
        return "md"
    if low.endswith(".rst"):
        return "rst"
    if low.endswith((".html", ".htm")):
        return "html"
    if low.endswith(".csv"):
        return "csv"
    return "txt"


_BLANKS = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def decode(data: bytes) -> str:
    if not data.strip():
        raise ExtractError("empty file")
    if b"\x00" in data[:8192]:
        raise ExtractError("binary content (NUL bytes): not a text document")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractError(f"not valid UTF-8 (undecodable byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                           "re-save the file as UTF-8") from None


def stem_title(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[-_]+", " ", stem).strip() or stem


_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")


def markdown_title(text: str) -> str | None:
    """The first H1 (ATX or setext) outside code fences, else the first heading."""
    first_heading = None
    in_fence = False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = _ATX.match(line)
        if m:
            if len(m.group(1)) == 1:
                return m.group(2).strip()
            first_heading = first_heading or m.group(2).strip()
        elif i + 1 < len(lines) and line.strip() and re.fullmatch(r"=+", lines[i + 1].strip() or "-"):
            return line.strip()
    return first_heading


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:._])\1{2,}$")


def rst_to_markdown(text: str) -> str:
    """Section titles (underlined, optionally overlined) -> Markdown headings, levels in order of appearance."""
    lines = text.split("\n")
    levels: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        # overline + title + underline
        if _RST_UNDERLINE.match(line.strip()) and i + 2 < len(lines) and lines[i + 1].strip() \
                and lines[i + 2].strip() == line.strip():
            style = "o" + line.strip()[0]
            title = lines[i + 1].strip()
            i += 3
        elif line.strip() and _RST_UNDERLINE.match(nxt.strip()) and len(nxt.strip()) >= len(line.strip()) \
                and not _RST_UNDERLINE.match(line.strip()):
            style = nxt.strip()[0]
            title = line.strip()
            i += 2
        else:
            out.append(line)
            i += 1
            continue
        if style not in levels:
            levels.append(style)
        level = min(levels.index(style) + 1, 6)
        out.extend(["", "#" * level + " " + title, ""])
    return "\n".join(out)


def html_to_markdown(data: str) -> tuple[str | None, str]:
    """(title, text): <title> or the first h1; headings as Markdown, block elements as paragraphs."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
        tag.decompose()
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(soup.new_string(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n"))
    for tag in soup.find_all(["p", "div", "section", "article", "li", "tr", "pre", "blockquote", "br", "table", "ul", "ol"]):
        tag.insert_before(soup.new_string("\n\n" if tag.name not in ("li", "br", "tr") else "\n"))
        tag.insert_after(soup.new_string("\n\n" if tag.name not in ("li", "br", "tr") else "\n"))
    text = soup.get_text()
    text = "\n".join(re.sub(r"[ \u00a0]+", " ", line).strip() for line in text.split("\n"))
    if not title:
        title = markdown_title(normalise(text))
    return title, text


def csv_to_markdown(raw: str) -> str:
    """A CSV file as one Markdown table (its dialect sniffed; the first row is the header)."""
    import csv
    import io

    from tandem.knowledge.formats.tables import markdown_table

    try:
        dialect = csv.Sniffer().sniff(raw[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        return markdown_table(csv.reader(io.StringIO(raw), dialect))
    except csv.Error as exc:
        raise ExtractError(f"not a readable CSV ({exc}): check its quoting") from None


def extract(path: str, data: bytes) -> Extracted:
    """Extract one text document. ``path`` is its relative path (for the format and a fallback title).

    PDF and Office files are not text: ``tandem.knowledge.formats`` extracts them, in a bounded process."""
    from tandem.knowledge.formats import binary_format

    if binary_format(path) is not None:
        raise ExtractError(f"{path} is a {binary_format(path).upper()} file: extract it with "
                           "tandem.knowledge.formats.bounded (the reindex does)")
    fmt = format_of(path)
    raw = decode(data)
    title: str | None
    if fmt == "html":
        title, body = html_to_markdown(raw)
        text, out_fmt = normalise(body), "markdown"
    elif fmt == "rst":
        text, out_fmt = normalise(rst_to_markdown(raw)), "markdown"
        title = markdown_title(text)
    elif fmt == "csv":
        text, out_fmt = normalise(csv_to_markdown(raw)), "markdown"
        title = None
    elif fmt == "md":
        text, out_fmt = normalise(raw), "markdown"
        title = markdown_title(text)
    else:
        text, out_fmt = normalise(raw), "text"
        title = None
    if not text:
        raise ExtractError("no text after extraction" if fmt == "html" else "empty file (only whitespace)")
    title = normalise(title or "") or stem_title(path)
    return Extracted(title=title[:500], text=text, fmt=out_fmt)
