"""PDF -> one part per page (``p. N``), with pypdfium2 (PDFium: the text layer in reading order, fast, offline).

Refused with a reason: an encrypted PDF (it needs a password), a damaged file PDFium cannot open, and a PDF
without a text layer (scanned pages: it needs OCR first). Pages without text are skipped; the rest keep their
numbers.
"""

from __future__ import annotations

from tandem.knowledge.extract import ExtractError, Part


def extract_pdf(data: bytes) -> tuple[str | None, list[Part]]:
    """(the PDF's title metadata or None, one part per page that has text)."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            raise ExtractError("an encrypted PDF (it needs a password): save an unencrypted copy, or remove the "
                               "password in the application that made it") from None
        raise ExtractError(f"a damaged PDF that cannot be opened ({reason}): re-export or re-download it") from None
    try:
        title = (doc.get_metadata_dict().get("Title") or "").strip() or None
        parts = []
        for number in range(1, len(doc) + 1):
            page = doc[number - 1]
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_bounded()
            finally:
                textpage.close()
                page.close()
            if text.strip():
                parts.append(Part(f"p. {number}", text))
        if not parts:
            raise ExtractError(f"no text layer on any of its {len(doc)} page(s), a scanned PDF: OCR it first (for "
                               "example with ocrmypdf) and index the OCR'd copy")
        return title, parts
    finally:
        doc.close()
