"""Word, PowerPoint and Excel -> Markdown parts.

- ``.docx`` (python-docx): paragraphs and tables in document order; ``Heading N`` / ``Title`` styles become
  Markdown headings, list styles items, tables Markdown tables. One part: the heading path is its location.
- ``.pptx`` (python-pptx): one part per slide (``slide N``): its title as a heading, the text of its shapes
  (groups included) and tables, then its speaker notes.
- ``.xlsx`` (openpyxl, read-only, cached values): one part per sheet (``sheet <name>``), its rows as a table
  whose first non-empty row is the header.
"""

from __future__ import annotations

import io
import re

from tandem.knowledge.extract import Part
from tandem.knowledge.formats.tables import markdown_table

_HEADING_STYLE = re.compile(r"^heading\s*([1-6])$", re.I)


def extract_docx(data: bytes) -> tuple[str | None, list[Part]]:
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    # python-docx's ``paragraph.style`` searches every style per paragraph (40k paragraphs: minutes), so the
    # style names are mapped from their ids once and each paragraph reads its id.
    style_names = {s.style_id: s.name or "" for s in document.styles}
    default = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    default_name = default.name if default is not None else ""
    blocks: list[str] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.append(markdown_table([cell.text for cell in row.cells] for row in item.rows))
            continue
        text = item.text.strip()
        if not text:
            continue
        style_id = item._p.style  # the pStyle id, None for the default style
        style = style_names.get(style_id, "") if style_id else default_name
        heading = _HEADING_STYLE.match(style)
        if style.lower() == "title":
            blocks.append(f"# {text}")
        elif heading:
            blocks.append(f"{'#' * int(heading.group(1))} {text}")
        elif style.lower().startswith("list"):
            blocks.append(f"- {text}")
        else:
            blocks.append(text)
    title = (document.core_properties.title or "").strip() or None
    return title, [Part("", "\n\n".join(b for b in blocks if b))]


def _shape_texts(shapes) -> list[str]:
    out = []
    for shape in shapes:
        if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):  # a group
            out += _shape_texts(shape.shapes)
        elif getattr(shape, "has_table", False) and shape.has_table:
            out.append(markdown_table([cell.text for cell in row.cells] for row in shape.table.rows))
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            text = "\n".join(p.text.strip() for p in shape.text_frame.paragraphs if p.text.strip())
            if text:
                out.append(text)
    return out


def extract_pptx(data: bytes) -> tuple[str | None, list[Part]]:
    from pptx import Presentation

    deck = Presentation(io.BytesIO(data))
    parts = []
    for number, slide in enumerate(deck.slides, 1):
        title_shape = slide.shapes.title
        heading = title_shape.text.strip() if title_shape is not None and title_shape.has_text_frame else ""
        texts = _shape_texts(s for s in slide.shapes if title_shape is None or s.shape_id != title_shape.shape_id)
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame.text.strip() if slide.notes_slide.notes_text_frame else ""
            if notes:
                texts.append(f"Notes: {notes}")
        if heading or texts:
            parts.append(Part(f"slide {number}", "\n\n".join([f"## {heading or f'Slide {number}'}", *texts])))
    title = (deck.core_properties.title or "").strip() or None
    return title, parts


def extract_xlsx(data: bytes) -> tuple[str | None, list[Part]]:
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        parts = []
        for sheet in book.worksheets:
            table = markdown_table(sheet.iter_rows(values_only=True))
            if table:
                parts.append(Part(f"sheet {sheet.title}", f"## {sheet.title}\n\n{table}"))
        title = (book.properties.title or "").strip() or None
    finally:
        book.close()
    return title, parts
