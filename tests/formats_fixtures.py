"""Real PDF, Word, PowerPoint and Excel files, written by real writer libraries (fpdf2, python-docx,
python-pptx, openpyxl) for the format tests, and the hostile ones: encrypted, scanned, truncated, corrupt,
zip bombs, lying extensions."""

from __future__ import annotations

import io
import zipfile


def pdf(pages: list[str], *, title: str | None = None, password: str | None = None) -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.set_font("helvetica", size=12)
    if title:
        doc.set_title(title)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 8, text)
    if password:
        doc.set_encryption(owner_password=password + "-owner", user_password=password)
    return bytes(doc.output())


def scanned_pdf(pages: int = 2) -> bytes:
    """Pages that are only pictures (what a scanner makes): no text layer."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    doc = FPDF()
    for i in range(pages):
        img = Image.new("RGB", (400, 200), "white")
        ImageDraw.Draw(img).text((20, 80), f"scanned page {i + 1}: the price is 42 dollars", fill="black")
        doc.add_page()
        doc.image(img, x=10, y=10, w=180)
    return bytes(doc.output())


def docx(blocks: list[tuple[str, object]], *, title: str | None = None) -> bytes:
    """``blocks``: ("h1".."h3", text), ("p", text), ("li", text), ("table", rows)."""
    import docx as python_docx

    document = python_docx.Document()
    if title:
        document.core_properties.title = title
    for kind, value in blocks:
        if kind.startswith("h"):
            document.add_heading(str(value), level=int(kind[1:]))
        elif kind == "li":
            document.add_paragraph(str(value), style="List Bullet")
        elif kind == "table":
            rows = list(value)
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = str(cell)
        else:
            document.add_paragraph(str(value))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx(slides: list[dict]) -> bytes:
    """``slides``: {"title": ..., "bullets": [...], "table": rows?, "notes": ...}."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for spec in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = spec["title"]
        body = slide.placeholders[1].text_frame
        for i, bullet in enumerate(spec.get("bullets", [])):
            para = body.paragraphs[0] if i == 0 else body.add_paragraph()
            para.text = bullet
        if spec.get("table"):
            rows = spec["table"]
            shape = slide.shapes.add_table(len(rows), len(rows[0]), Inches(1), Inches(4), Inches(6), Inches(1.5))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    shape.table.cell(r, c).text = str(cell)
        if spec.get("notes"):
            slide.notes_slide.notes_text_frame.text = spec["notes"]
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def zip_bomb(fmt: str = "docx", inflated: int = 300_000_000) -> bytes:
    """A valid-looking Office zip whose one member inflates to ``inflated`` bytes of zeros (about 1000x: a 300 kB
    file that unzips past the default extract_max_unzipped_bytes)."""
    main = {"docx": "word/document.xml", "pptx": "ppt/presentation.xml", "xlsx": "xl/workbook.xml"}[fmt]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open(main, "w", force_zip64=True) as member:
            block = b"\0" * 1_000_000
            for _ in range(inflated // len(block)):
                member.write(block)
    return out.getvalue()
