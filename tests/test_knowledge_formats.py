"""PDF, Word, PowerPoint, Excel and CSV: real files written by real writer libraries (tests/formats_fixtures.py),
extracted in the bounded worker, indexed end to end into the real Postgres with the real embedding model, and
found again with their location; every hostile file fails alone with its reason."""

from __future__ import annotations

import pytest
from formats_fixtures import docx, pdf, pptx, scanned_pdf, xlsx, zip_bomb
from knowledge_fixtures import assert_consistent, corpus, index_state, kn, write_corpus  # noqa: F401

from tandem.knowledge import formats, reindex, search
from tandem.knowledge.extract import ExtractError, extract
from tandem.knowledge.formats.bounded import BoundedExtractor, extract_here

MAX_UNZIPPED = 200_000_000

MANUAL = pdf(["Acme Router manual. Chapter one explains unpacking the box.",
              "Chapter two: the reset button. Hold the reset button for 12 seconds to restore factory settings.",
              "Chapter three: warranty. The warranty lasts 24 months."], title="Acme Router manual")
HANDBOOK = docx([("h1", "Employee handbook"), ("p", "Welcome to Acme."), ("h2", "Travel"),
                 ("p", "Book flights through the travel desk."), ("li", "Economy class below 6 hours"),
                 ("table", [["Trip", "Daily allowance"], ["Domestic", "40 euros"], ["Abroad", "65 euros"]])],
                title="Employee handbook")
DECK = pptx([{"title": "Roadmap 2027", "bullets": ["Two launches"]},
             {"title": "Launch dates", "bullets": ["Falcon ships in March"],
              "table": [["Product", "Quarter"], ["Falcon", "Q1"], ["Osprey", "Q3"]],
              "notes": "Osprey depends on the new chip."}])
PRICES = xlsx({"Hardware": [["Item", "Price"], ["Extra monitor", 149], ["Docking station", 89]],
               "Services": [["Service", "Price"], ["Onboarding", 500]]})


def _extract(fmt: str, data: bytes, path: str | None = None):
    return extract_here(fmt, path or f"file.{fmt}", data, MAX_UNZIPPED)


def test_pdf_pages_keep_their_numbers_and_title():
    doc = _extract("pdf", MANUAL, "manual.pdf")
    assert [p.location for p in doc.parts] == ["p. 1", "p. 2", "p. 3"]
    assert "reset button for 12 seconds" in doc.parts[1].text and "12 seconds" not in doc.parts[0].text
    assert doc.title == "Acme Router manual"
    assert doc.content_hash == formats.document_hash("pdf", MANUAL)


def test_docx_headings_lists_and_tables_become_markdown():
    doc = _extract("docx", HANDBOOK)
    text = doc.text
    assert "# Employee handbook" in text.splitlines() and "## Travel" in text.splitlines()
    assert "- Economy class below 6 hours" in text
    assert "| Trip | Daily allowance |" in text and "| Abroad | 65 euros |" in text
    assert text.index("## Travel") < text.index("Book flights") < text.index("| Trip |")  # document order
    assert doc.title == "Employee handbook"


def test_pptx_slides_are_sections_with_tables_and_notes():
    doc = _extract("pptx", DECK)
    assert [p.location for p in doc.parts] == ["slide 1", "slide 2"]
    second = doc.parts[1].text
    assert second.startswith("## Launch dates") and "Falcon ships in March" in second
    assert "| Falcon | Q1 |" in second and "Notes: Osprey depends on the new chip." in second
    assert "Falcon" not in doc.parts[0].text


def test_xlsx_sheets_are_sections_and_rows_are_records():
    doc = _extract("xlsx", PRICES)
    assert [p.location for p in doc.parts] == ["sheet Hardware", "sheet Services"]
    assert "| Item | Price |" in doc.parts[0].text and "| Extra monitor | 149 |" in doc.parts[0].text
    assert "| Onboarding | 500 |" in doc.parts[1].text


def test_csv_is_a_markdown_table():
    doc = extract("prices.csv", b"item;price\nExtra monitor;149\nDock;89\n")
    assert "| item | price |" in doc.text and "| Extra monitor | 149 |" in doc.text


def test_a_binary_format_is_never_read_as_text():
    with pytest.raises(ExtractError, match="PDF file"):
        extract("manual.pdf", MANUAL)


HOSTILE = {
    "encrypted.pdf": (pdf(["secret numbers"], password="hunter2"), "encrypted PDF"),
    "scanned.pdf": (scanned_pdf(), "no text layer"),
    "truncated.pdf": (MANUAL[: len(MANUAL) // 3], "damaged PDF"),
    "corrupt.docx": (HANDBOOK[:2000], "corrupt .docx"),
    "bomb.docx": (zip_bomb("docx"), "zip bomb"),
    "lying.pdf": (b"<html><body>not a pdf</body></html>", "the content is an HTML page"),
    "lying.docx": (DECK, "the content is a PowerPoint deck"),
    "legacy.xlsx": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600, "OLE container"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_fails_with_its_reason_and_what_to_do(name):
    data, reason = HOSTILE[name]
    with pytest.raises(ExtractError, match=reason) as err:
        _extract(formats.binary_format(name), data, name)
    assert ":" in str(err.value) and len(str(err.value)) < 400  # a reason, then what to do


def test_the_bounded_worker_stops_a_slow_file_and_goes_on():
    # ~1.5 s of work: a loaded 2-core machine can delay the pool's timeout check, never by that much (with 300
    # pages, ~0.4 s, a CI run once finished the file before the check fired)
    big = pdf([f"Page {i}: " + "many words on this page " * 40 for i in range(1200)])
    with BoundedExtractor(timeout_s=0.05, max_memory_mb=1024, max_unzipped=MAX_UNZIPPED) as ex:
        ex.extract("pdf", "warm-up.pdf", MANUAL)  # the worker is started, the library imported
        with pytest.raises(ExtractError, match="longer than 0.05 s"):
            ex.extract("pdf", "big.pdf", big)
        assert ex.extract("pdf", "manual.pdf", MANUAL).parts[1].location == "p. 2"  # a fresh worker


def test_the_bounded_worker_stops_a_file_past_the_memory_bound_and_goes_on():
    # a Word document whose XML (80 MB unzipped, under the zip-bomb bound) needs far more than 400 MB as a tree
    paragraphs = "".join(f"<w:p><w:r><w:t>row {i} of a very long document</w:t></w:r></w:p>" for i in range(800_000))
    import io
    import zipfile

    base = zipfile.ZipFile(io.BytesIO(HANDBOOK))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in base.infolist():
            body = base.read(item)
            if item.filename == "word/document.xml":
                head, _, tail = body.decode().partition("<w:body>")
                body = (head + "<w:body>" + paragraphs + tail).encode()
            archive.writestr(item, body)
    with BoundedExtractor(timeout_s=120, max_memory_mb=400, max_unzipped=MAX_UNZIPPED) as ex:
        with pytest.raises(ExtractError, match="400 MB"):
            ex.extract("docx", "huge.docx", out.getvalue())
        assert "Travel" in ex.extract("docx", "handbook.docx", HANDBOOK).text


def test_formats_index_end_to_end_with_locations_and_hostile_files_quarantined(kn, corpus):
    files = {"manuals/router.pdf": MANUAL, "hr/handbook.docx": HANDBOOK, "plans/roadmap.pptx": DECK,
             "pricing/hardware.xlsx": PRICES, "pricing/addons.csv": "Add-on,Price\nExtra monitor,149\n",
             **{f"bad/{name}": data for name, (data, _) in HOSTILE.items()}}
    write_corpus(corpus, files)
    summary = reindex.run(kn.replace(max_attempts=1), progress=False)
    assert summary["status"] == "succeeded"
    reasons = {d["doc_id"]: d["reason"] for d in summary["quarantined_docs"]}
    assert reasons.keys() == {f"acme/bad/{name}" for name in HOSTILE}
    for name, (_, reason) in HOSTILE.items():
        assert reason in reasons[f"acme/bad/{name}"] and f"acme/bad/{name}" in reasons
    state = index_state(kn)
    assert_consistent(state)
    for good in ("manuals/router.pdf", "hr/handbook.docx", "plans/roadmap.pptx", "pricing/hardware.xlsx",
                 "pricing/addons.csv", "pricing/plans.md"):
        assert state["manifest"][f"acme/{good}"]["status"] == "indexed", good

    hits = search.search(kn, "How long do I hold the reset button?", k=3)
    assert hits[0].doc_id == "acme/manuals/router.pdf" and hits[0].location == "p. 2"
    assert hits[0].cited_as == "router.pdf p. 2"
    hits = search.search(kn, "When does Falcon ship?", k=3)
    assert (hits[0].doc_id, hits[0].location) == ("acme/plans/roadmap.pptx", "slide 2")
    hits = search.search(kn, "docking station price", k=3)
    assert (hits[0].doc_id, hits[0].location) == ("acme/pricing/hardware.xlsx", "sheet Hardware")

    from tandem.serve.answer import _sources, cited_as

    sources = _sources(search.search(kn, "reset button seconds", k=3), ["acme/manuals/router.pdf"])
    assert sources[0]["locations"][0] == "p. 2" and cited_as(sources[0]).startswith("router.pdf p. 2")

    # the same files again: nothing re-extracted, the hostile ones stay quarantined without an attempt
    again = reindex.run(kn.replace(max_attempts=1), progress=False)
    assert again["chunks_embedded"] == 0 and again["quarantined"] == len(HOSTILE)


def test_an_extractor_version_bump_reprocesses_only_its_format(kn, corpus, monkeypatch):
    write_corpus(corpus, {"manuals/router.pdf": MANUAL, "manuals/other.pdf": pdf(["Another manual."]),
                          "hr/handbook.docx": HANDBOOK, "pricing/hardware.xlsx": PRICES})
    first = reindex.run(kn, progress=False)
    assert first["failed"] == 0
    before = index_state(kn)
    suffixes, library, version = formats.FORMATS["pdf"]
    monkeypatch.setitem(formats.FORMATS, "pdf", (suffixes, library, version + 1))
    formats.extractor_id.cache_clear()
    try:
        summary = reindex.run(kn, progress=False)
    finally:
        formats.extractor_id.cache_clear()
    assert summary["changed"] == 2 and summary["new"] == 0 and summary["deleted"] == 0
    after = index_state(kn)
    assert_consistent(after)
    changed = {d for d in after["manifest"] if after["manifest"][d]["hash"] != before["manifest"][d]["hash"]}
    assert changed == {"acme/manuals/router.pdf", "acme/manuals/other.pdf"}
