"""The extraction section of `make bench-knowledge` (``--only extraction``): PDF and Office files to chunks.

A folder of generated files (cached under benchmarks/.cache/extraction/, written by the same writer libraries
as the tests: fpdf2, python-docx, python-pptx, openpyxl): ``--extract-files`` files of each of PDF (12 pages
each), Word (sections with headings, lists and a table), PowerPoint (10 slides with a table and notes) and
Excel (3 sheets of 60 rows). Both tools go from files to chunks with the same chunk size and overlap counted
in the embedding model's tokens; embedding is left out (the same model for both, and it would hide the
extraction):

- Tandem: the reindex's own path, each file read, checked and extracted in the bounded worker process
  (``BoundedExtractor``), then chunked (``chunk_document``);
- LlamaIndex: ``SimpleDirectoryReader`` with its default readers (llama-index-readers-file: pypdf's
  ``PDFReader``, ``DocxReader`` (docx2txt), ``PptxReader`` (python-pptx), ``PandasExcelReader``), then
  ``SentenceSplitter``.

Both tools are warmed up once on a few of the files (imports, tokenizers), then each runs ``--runs`` times in
turn; a Tandem run includes starting its extraction worker (as every reindex batch does). The figures are medians: files/s, PDF pages/s (the PDFs alone),
chunks/s, and the share of chunks that carry a location (a page, slide or sheet) per format.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "extraction"
FORMAT_VERSION = 1  # bump when the generated files change
WORDS = ("router firmware warranty invoice refund plan seat license region backup latency token adapter release "
         "index canary account billing support ticket escalation policy retention export import audit").split()
PDF_PAGES, SLIDES, SHEETS, ROWS = 12, 10, 3, 60


def _log(msg: str) -> None:
    print(f"[bench-extraction {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sentence(rng: random.Random, i: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(14)).capitalize() + f" costs {rng.randint(5, 900)} euros (item {i})."


def _paragraph(rng: random.Random, n: int = 5) -> str:
    return " ".join(_sentence(rng, rng.randint(1, 10_000)) for _ in range(n))


def make_folder(files_per_format: int) -> Path:
    """The generated folder (deterministic: seeded), written once per size and FORMAT_VERSION."""
    sys.path.insert(0, str(REPO / "tests"))
    import formats_fixtures as fx

    folder = CACHE / f"v{FORMAT_VERSION}-{files_per_format}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    t0 = time.monotonic()
    for i in range(files_per_format):
        (folder / f"manual-{i:03d}.pdf").write_bytes(
            fx.pdf([f"Chapter {p + 1}\n\n" + _paragraph(rng, 8) for p in range(PDF_PAGES)], title=f"Manual {i}"))
        blocks = [("h1", f"Handbook {i}")]
        for s in range(6):
            blocks += [("h2", f"Section {s + 1}"), ("p", _paragraph(rng)), ("li", _sentence(rng, s)),
                       ("p", _paragraph(rng, 3))]
        blocks.append(("table", [["Item", "Price"]] + [[rng.choice(WORDS), str(rng.randint(1, 99))] for _ in range(8)]))
        (folder / f"handbook-{i:03d}.docx").write_bytes(fx.docx(blocks, title=f"Handbook {i}"))
        (folder / f"deck-{i:03d}.pptx").write_bytes(fx.pptx([
            {"title": f"Slide {s + 1} of deck {i}", "bullets": [_sentence(rng, s) for _ in range(3)],
             "table": [["Quarter", "Target"], ["Q1", str(rng.randint(1, 99))], ["Q2", str(rng.randint(1, 99))]],
             "notes": _sentence(rng, s)} for s in range(SLIDES)]))
        (folder / f"prices-{i:03d}.xlsx").write_bytes(fx.xlsx({
            f"Sheet {s + 1}": [["Item", "Region", "Price"]] + [[rng.choice(WORDS), rng.choice(WORDS), rng.randint(1, 999)]
                                                               for _ in range(ROWS)] for s in range(SHEETS)}))
        if (i + 1) % 10 == 0:
            _log(f"generated {4 * (i + 1)} of {4 * files_per_format} files")
    (folder / ".complete").write_text("ok")
    _log(f"generated {folder} in {time.monotonic() - t0:.1f}s")
    return folder


def _fmt(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower()


def run_tandem(settings, files: list[Path]) -> dict:
    from tandem.knowledge import fingerprint
    from tandem.knowledge.chunking import ChunkConfig, chunk_document
    from tandem.knowledge.formats.bounded import BoundedExtractor

    _, _, info, cfg = fingerprint.current(settings)
    config = ChunkConfig(chunk_size=cfg.chunk_size, chunk_overlap=cfg.chunk_overlap,
                         max_seq_length=cfg.max_seq_length, model_ref=info.ref)
    chunks: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    pdf_s = extract_s = 0.0
    with BoundedExtractor.from_settings(settings) as extractor:
        for path in files:
            t = time.perf_counter()
            doc = extractor.extract(_fmt(path.name), path.name, path.read_bytes())
            extract_s += time.perf_counter() - t
            made = chunk_document(f"bench/{path.name}", doc, config)
            if path.suffix == ".pdf":
                pdf_s += time.perf_counter() - t
            counts = chunks.setdefault(_fmt(path.name), [0, 0])
            counts[0] += len(made)
            counts[1] += sum(1 for c in made if c.location)
    return {"seconds": time.perf_counter() - t0, "pdf_seconds": pdf_s, "extract_seconds": extract_s, "chunks": chunks}


def _peer_location(fmt: str, metadata: dict) -> bool:
    """Does a LlamaIndex node say where in its file it came from (page label, slide or sheet)?"""
    keys = {"pdf": ("page_label",), "pptx": ("page_label", "slide_number", "page_number"),
            "xlsx": ("sheet_name", "sheet"), "docx": ("page_label",)}[fmt]
    return any(metadata.get(k) not in (None, "") for k in keys)


def run_peer(settings, files: list[Path]) -> dict:
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.node_parser import SentenceSplitter

    from tandem.knowledge.embedding import token_counter
    from tandem.knowledge import fingerprint

    _, _, info, cfg = fingerprint.current(settings)
    splitter = SentenceSplitter(chunk_size=cfg.chunk_size, chunk_overlap=cfg.chunk_overlap,
                                tokenizer=token_counter(info.ref))
    chunks: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    pdf_s = 0.0
    for path in files:  # one file at a time, as Tandem: the PDF time is measured the same way
        t = time.perf_counter()
        docs = SimpleDirectoryReader(input_files=[str(path)]).load_data(show_progress=False)
        nodes = splitter.get_nodes_from_documents(docs)
        if path.suffix == ".pdf":
            pdf_s += time.perf_counter() - t
        counts = chunks.setdefault(_fmt(path.name), [0, 0])
        counts[0] += len(nodes)
        counts[1] += sum(1 for n in nodes if _peer_location(_fmt(path.name), n.metadata))
    return {"seconds": time.perf_counter() - t0, "pdf_seconds": pdf_s, "chunks": chunks}


def _summarise(runs: list[dict], files: int, pdf_pages: int) -> dict:
    chunks = runs[0]["chunks"]
    total = sum(c[0] for c in chunks.values())
    secs = statistics.median(r["seconds"] for r in runs)
    pdf_s = statistics.median(r["pdf_seconds"] for r in runs)
    return {"seconds_median": round(secs, 3), "files_per_s_median": round(files / secs, 2),
            "pdf_pages_per_s_median": round(pdf_pages / pdf_s, 1) if pdf_s else None,
            "chunks": total, "chunks_per_s_median": round(total / secs, 1),
            "located_share": {fmt: round(c[1] / c[0], 3) if c[0] else None for fmt, c in sorted(chunks.items())}}


def bench_extraction(args, settings, out: dict) -> None:
    folder = make_folder(args.extract_files)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pdf", ".docx", ".pptx", ".xlsx"))
    pdf_pages = PDF_PAGES * sum(1 for p in files if p.suffix == ".pdf")
    tandem_runs, peer_runs = [], []
    warm = files[:: max(1, len(files) // 8)]  # one-time imports and tokenizer loads of both, left out
    run_tandem(settings, warm)
    run_peer(settings, warm)
    for r in range(args.runs):  # in turn, so a slow minute of the machine hits both
        tandem_runs.append(run_tandem(settings, files))
        peer_runs.append(run_peer(settings, files))
        _log(f"run {r + 1}/{args.runs}: tandem {tandem_runs[-1]['seconds']:.1f}s, "
             f"llamaindex {peer_runs[-1]['seconds']:.1f}s ({len(files)} files)")
    t, p = _summarise(tandem_runs, len(files), pdf_pages), _summarise(peer_runs, len(files), pdf_pages)
    out["extraction"] = {"files": len(files), "pdf_pages": pdf_pages, "folder": str(folder), "tandem": t,
                         "llamaindex": p, "speedup": round(p["seconds_median"] / t["seconds_median"], 2)}


def lines(e: dict) -> list[str]:
    def row(name: str, v: dict) -> str:
        located = ", ".join(f"{fmt} {share:.0%}" for fmt, share in v["located_share"].items() if share is not None)
        return (f"  {name:<10} {v['seconds_median']:.1f}s, {v['files_per_s_median']:.1f} files/s, PDF "
                f"{v['pdf_pages_per_s_median']:.0f} pages/s, {v['chunks']} chunks, {v['chunks_per_s_median']:.0f} "
                f"chunks/s; chunks with a location: {located}")

    return [f"extraction, {e['files']} files (PDF {e['pdf_pages']} pages, Word, PowerPoint, Excel) to chunks:",
            row("tandem", e["tandem"]), row("llamaindex", e["llamaindex"]),
            f"  -> Tandem {e['speedup']:.2f}x the speed of SimpleDirectoryReader + SentenceSplitter (target >= 1x)"]
