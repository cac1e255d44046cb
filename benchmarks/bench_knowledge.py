"""`make bench-knowledge`: the knowledge cadence's figures, beside their targets. Prints; asserts nothing.

1. cold   Cold full index of ``--docs`` (2,000) generated Markdown documents (0.5-5 KB): docs/s and chunks/s,
          and the raw model's chunks/s on the same chunk texts and batch size, measured in the same run
          (target: pipeline >= 85% of raw).
2. incr   Incremental run with 1% of those documents changed, against a full rebuild (``--full``) of the same
          corpus (target: >= 30x faster).
3. nochange  A run over ``--nochange-docs`` (10,000) unchanged documents, end to end through the CLI
          (`tandem reindex --json` in a fresh process; target <= 15 s).
4. verify `tandem index verify` over that 10,000-document index (target <= 20 s).
5. publish  Publish time at ``--publish-docs`` (15,000 documents, ~100k chunks) with 1% of the documents
          changed (target <= 1 s).
6. query  Query latency at ``--query-chunks`` (100,000) chunks with real embeddings of generated text (cached
          under benchmarks/.cache/knowledge/), with the release filter in place on a table that also holds
          superseded rows of five releases and an unpublished candidate: vector p50/p95 (target p50 within 10%
          of 7.2 ms), hybrid p50/p95 (within 10% of 11.5 ms) - the SQL side, query vector given - beside the
          unfiltered vector query, plus the query-embedding time, and HNSW recall@10 against an exact scan of
          the published rows (target >= 0.95).
7. backends  Raw encode chunks/s of torch, onnx and onnx-int8 on the same texts and batch size, and the
          recall@10 of onnx-int8 against torch's exact top-10 (``backendsreal``: on the real-text chunks).
   coldreal  The cold figures (1.) on the real-text folder of the peer comparison (9.).
   canary  The retrieval canary of the demo knowledge base built with torch, onnx and onnx-int8 (hit@k, MRR).
   fixed  The fixed cost of a run through the CLI on ``--fixed-docs`` (77) documents, torch and onnx: a no-change
          run (target <= 2 s) and a one-document change (target <= 5 s), MLflow logging included.
8. diff   The SQL diff alone at ``--diff-docs`` (1,000,000) documents (COPY-staged scan, classification, plan).
9. peer   Tandem beside the stock LlamaIndex IngestionPipeline (benchmarks/peer_llamaindex.py: docstore plus
          PGVectorStore, UPSERTS_AND_DELETE; same model, chunk size and Postgres), each run a fresh process, on
          the ``--docs`` corpus and on ``--peer-real-docs`` (150) real-text files (a spread of /usr/share/doc, or
          ``--peer-folder``): cold, no change, 1% of the files changed (target: Tandem ahead in every phase).
11. extraction  PDF, Word, PowerPoint and Excel files to chunks, Tandem's bounded extraction beside LlamaIndex's
          SimpleDirectoryReader default readers on the same ``--extract-files`` files per format
          (benchmarks/bench_extraction.py; target: at least as fast, with locations).
10. folder (``--folder PATH``) Cold index of any folder of real text (for example /usr/share/doc).

Every figure is the median of ``--runs`` (>= 3) runs. The benchmark starts its own embedded Postgres under
``--home`` (default /tmp/tandem-bench-knowledge: the socket path must stay short) unless ``--db-url`` is given.
MLflow logging is off (an unreachable tracking URI is skipped in milliseconds) unless ``--mlflow-uri``.

The 10,000-document index of the no-change figure is seeded through the real pipeline with a deterministic
stand-in for the model (the run being measured embeds nothing, and embedding ~5M tokens takes ~20+ minutes
on 2 cores); ``--real-seed`` seeds it with the real model instead.

Usage: python benchmarks/bench_knowledge.py [--only cold,coldreal,incr,nochange,fixed,verify,publish,query,backends,backendsreal,canary,diff,peer,extraction] [--docs 2000]
       [--nochange-docs 10000] [--publish-docs 40000] [--query-chunks 100000] [--queries 200] [--runs 3]
       [--threads 2]
       [--folder PATH] [--db-url URL] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CACHE = REPO / "benchmarks" / ".cache" / "knowledge"
RESULTS = REPO / "benchmarks" / "results"
SEED = 7

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import knowledge_corpus as corpus  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench-knowledge {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else float("nan")


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ----------------------------------------------------------------------------------------------- set-up
def start_postgres(home: Path) -> str:
    from tandem.stack import postgres

    pgdata = home / "pg"
    postgres.start(pgdata)
    postgres.ensure_databases(pgdata, ("tandem",))
    return postgres.url(pgdata, "tandem")


def base_settings(args, db_url: str):
    from tandem.config import Settings

    return Settings.load(home=Path(args.home), db_url=db_url, mlflow_uri=args.mlflow_uri,
                         canary_path=str(Path(args.home) / "no-golden.jsonl"), torch_threads=args.threads,
                         lock_wait_seconds=0)


def drop_index(settings, name: str) -> None:
    from psycopg import sql

    from tandem import db

    with db.connection(settings.db_url) as conn:
        views = [r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE viewname LIKE %s",
                                            (f"kn\\_{name}\\_%",))]
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                                             (f"kn\\_{name}\\_%",))]
        for v in views:
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(v)))
        for t in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(t)))
        conn.commit()


class StandInEmbedder:
    """Deterministic unit vectors from the text's sha256: for seeding an index whose vectors are not measured."""

    def __init__(self, real):
        self.dim, self.max_seq_length, self.ref = real.dim, real.max_seq_length, real.ref

    def encode(self, texts, batch_size=64):
        import numpy as np

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little"))
            v = rng.standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


@contextlib.contextmanager
def stand_in_model(real):
    from tandem.knowledge import embedding

    original = embedding.get_embedder
    fake = StandInEmbedder(real)
    embedding.get_embedder = lambda ref, threads=0, *args, **kwargs: fake
    try:
        yield
    finally:
        embedding.get_embedder = original


def embed_texts_of(settings, table: str) -> list[str]:
    """The exact texts the pipeline embedded (context + chunk), in table order."""
    from psycopg import sql

    from tandem import db
    from tandem.knowledge.chunking import Chunk

    with db.connection(settings.db_url) as conn:
        rows = conn.execute(sql.SQL("SELECT doc_id, ordinal, title, heading_path, text FROM {} ORDER BY doc_id, ordinal")
                            .format(sql.Identifier(table))).fetchall()
    return [Chunk("", d, o, t, h, x).embed_text for d, o, t, h, x in rows]


# ----------------------------------------------------------------------------------------------- figures
def bench_cold(args, settings, embedder, out: dict, folder: Path | None = None, key: str = "cold") -> None:
    """Each run: the raw model on a sample of the corpus's chunk texts, the pipeline, the raw model again.
    The per-run ratio compares the pipeline with the mean of the raw figures taken just before and after it,
    which keeps the comparison fair on a shared, noisy machine. ``folder``: real text instead of the corpus."""
    import random

    from tandem.knowledge import reindex

    real = folder is not None
    if not real:
        folder = corpus.write(CACHE / f"corpus-{SEED}-{args.docs}", args.docs, SEED)  # (re)writes edited files too
    runs, raw, ratios = [], [], []
    name = None
    sample = None

    def raw_rate(texts):
        t0 = time.perf_counter()
        embedder.encode(texts, batch_size=settings.embed_batch_size)
        return len(texts) / (time.perf_counter() - t0)

    for r in range(args.runs):
        name = f"b{key}{r}"
        drop_index(settings, name)
        s = settings.replace(index_name=name, sources=(f"acme={folder}",), mass_delete_fraction=1.0)
        before = raw_rate(sample) if sample else None
        log(f"{key} full index #{r + 1}: {folder}")
        summary = reindex.run(s, progress=False)
        runs.append(summary)
        if sample is None:  # the texts the pipeline embedded (context + chunk), a seeded sample of them
            texts = embed_texts_of(s, summary_table(summary, name))
            sample = texts if not args.raw_sample or len(texts) <= args.raw_sample else \
                random.Random(SEED).sample(texts, args.raw_sample)
        after = raw_rate(sample)
        rate = (before + after) / 2 if before else after
        raw.append(rate)
        pipe = summary["chunks_embedded"] / summary["seconds"]
        ratios.append(pipe / rate)
        log(f"  {summary['seconds']}s, {summary['chunks_embedded']} chunks, {pipe:.1f} chunks/s; raw model "
            f"{rate:.1f} chunks/s -> {pipe / rate:.0%}; phases {summary['phases']}")
    pipeline = [s["chunks_embedded"] / s["seconds"] for s in runs]
    embed_phase = [s["chunks_embedded"] / s["phases"]["embed"] for s in runs]
    out[key] = {
        "docs": runs[-1]["new"], "folder": str(folder), "backend": settings.embed_backend,
        "chunks": runs[-1]["chunks_embedded"], "runs": len(runs),
        "seconds_median": median([s["seconds"] for s in runs]), "run_seconds": [s["seconds"] for s in runs],
        "docs_per_s_median": median([s["new"] / s["seconds"] for s in runs]),
        "chunks_per_s_median": median(pipeline), "raw_sample": len(sample or []),
        "raw_model_chunks_per_s_median": median(raw),
        "pipeline_vs_raw": median(ratios), "ratios": ratios,
        "embed_phase_chunks_per_s_median": median(embed_phase),
        "phases_last": runs[-1]["phases"], "batch_size": settings.embed_batch_size,
        "target": "pipeline chunks/s >= 85% of raw",
    }
    if not real:
        out["_cold_index"] = name


def summary_table(summary: dict, name: str) -> str:
    return f"kn_{name}_chunks_{summary['space']['no']}"


def bench_incremental(args, settings, out: dict) -> None:
    from tandem.knowledge import reindex

    folder = CACHE / f"corpus-{SEED}-{args.docs}"
    name = out.get("_cold_index")
    s = settings.replace(index_name=name or "bincr", sources=(f"acme={folder}",))
    if name is None:
        corpus.write(folder, args.docs, SEED)
        drop_index(settings, "bincr")
        reindex.run(s, progress=False)
    n_changed = max(1, args.docs // 100)
    incr, full = [], []
    for r in range(args.runs):
        start = (r * n_changed * 7) % args.docs
        corpus.modify(folder, [(start + j * 13) % args.docs for j in range(n_changed)], revision=r + 1, seed=SEED)
        summary = reindex.run(s, progress=False)
        assert summary["changed"] == n_changed, summary
        incr.append(summary["seconds"])
        log(f"incremental #{r + 1}: {n_changed} changed docs, {summary['chunks_embedded']} chunks, {summary['seconds']}s")
    for r in range(args.full_runs):
        summary = reindex.run(s, full=True, progress=False)
        full.append(summary["seconds"])
        log(f"full rebuild #{r + 1}: {summary['chunks_embedded']} chunks, {summary['seconds']}s")
    full_kind = "--full rebuilds of the indexed corpus"
    if not full and "cold" in out:  # --full-runs 0: the cold full builds of the same corpus are the baseline
        full = out["cold"]["run_seconds"]
        full_kind = "cold full builds of the same corpus (--full-runs 0)"
    out["incremental"] = {
        "docs": args.docs, "changed": n_changed, "incremental_seconds_median": median(incr),
        "full_rebuild_seconds_median": median(full), "speedup": median(full) / median(incr),
        "incremental_runs": incr, "full_runs": full, "full_kind": full_kind, "target": ">= 30x",
    }


def bench_nochange(args, settings, embedder, out: dict) -> None:
    from tandem.knowledge import reindex

    folder = corpus.write(CACHE / f"corpus-{SEED}-{args.nochange_docs}", args.nochange_docs, SEED)
    name = f"bnochange{args.nochange_docs}"
    s = settings.replace(index_name=name, sources=(f"acme={folder}",), reindex_batch_docs=500)
    log(f"seeding the {args.nochange_docs}-document index ({'real model' if args.real_seed else 'stand-in model'})")
    t0 = time.perf_counter()
    if args.real_seed:
        seed = reindex.run(s, progress=False)
    else:
        with stand_in_model(embedder):
            seed = reindex.run(s, progress=False)
    log(f"  seeded: {seed['new']} new, {seed['chunks_embedded']} chunks in {time.perf_counter() - t0:.0f}s")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(s.as_env())
    walls, reported = [], []
    for r in range(args.runs):
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "tandem"), "reindex", "--json"], env=env,
                              capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        summary = json.loads(proc.stdout)
        assert summary["chunks_embedded"] == 0 and summary["unchanged"] == args.nochange_docs, summary
        walls.append(wall)
        reported.append(summary)
        log(f"no-change CLI run #{r + 1}: {wall:.2f}s wall (the run itself {summary['seconds']}s: {summary['phases']})")
    out["nochange"] = {"docs": args.nochange_docs, "cli_wall_seconds_median": median(walls),
                       "run_seconds_median": median([x["seconds"] for x in reported]),
                       "scan_seconds_median": median([x["phases"]["scan"] for x in reported]),
                       "diff_seconds_median": median([x["phases"]["diff"] for x in reported]),
                       "walls": walls, "seeded_with": "real model" if args.real_seed else "stand-in model",
                       "target": "<= 15 s end to end"}


def bench_fixed(args, settings, out: dict) -> None:
    """The fixed cost of a run through the CLI on a small index (``--fixed-docs``, 77 documents), per backend:
    a no-change run and a one-document change, each a fresh ``tandem reindex --json`` process that logs to
    MLflow (``--mlflow-uri``)."""
    folder = corpus.write(CACHE / f"fixed-corpus-{SEED}-{args.fixed_docs}", args.fixed_docs, SEED)
    from tandem.knowledge.summary import _reachable

    down = _reachable(args.mlflow_uri)
    out["fixed"] = {"docs": args.fixed_docs, "mlflow": f"off: {down}" if down else f"on, {args.mlflow_uri}"}
    for backend in ("torch", "onnx"):
        tools = _Tools(args, settings.replace(embed_backend=backend), folder, f"fixed{backend.replace('-', '')}")
        tools.reset()
        tools.tandem()  # the cold build, not measured
        nochange, one = [], []
        for r in range(args.runs):
            nochange.append(tools.tandem()[0])
            corpus.modify(folder, [r * 5 % args.fixed_docs], revision=100 + r, seed=SEED)
            wall, chunks = tools.tandem()
            assert chunks > 0, chunks
            one.append(wall)
            log(f"fixed cost, {backend}, #{r + 1}: no change {nochange[-1]:.2f}s, one document changed {wall:.2f}s")
        corpus.write(folder, args.fixed_docs, SEED)
        out["fixed"][backend] = {"nochange_seconds_median": median(nochange), "one_doc_seconds_median": median(one),
                                 "nochange_runs": nochange, "one_doc_runs": one}
    out["fixed"]["targets"] = "no change <= 2 s, one document <= 5 s (CLI wall)"


def bench_canary(args, settings, out: dict) -> None:
    """The retrieval canary (the demo's 36 golden queries, k = TANDEM_CANARY_K) on the demo knowledge base built
    with each backend: onnx-int8 should match torch's hit@k and MRR within 0.01."""
    from tandem.knowledge import reindex

    demo = REPO / "include" / "tandem" / "data" / "demo"
    out["canary"] = {"k": settings.canary_k, "queries": None}
    for backend in ("torch", "onnx", "onnx-int8"):
        name = f"bcanary{backend.replace('-', '')}"
        drop_index(settings, name)
        s = settings.replace(index_name=name, sources=(f"acme={demo / 'kb' / 'release1'}",), embed_backend=backend,
                             canary_path=str(demo / "golden_retrieval.jsonl"))
        summary = reindex.run(s, progress=False)
        c = summary["canary"]
        out["canary"]["queries"] = c.get("queries")
        out["canary"][backend] = {"hit_at_k": c["hit_at_k"], "mrr": c["mrr"]}
        log(f"canary on the demo knowledge base, {backend}: hit@{settings.canary_k} {c['hit_at_k']:.3f}, "
            f"MRR {c['mrr']:.3f}")


def bench_fusion(args, settings, out: dict) -> None:
    """The hybrid search's fusion, plain RRF against weighted RRF, on the demo knowledge base (release 1, which
    the eval set asks about): the golden set (hit@k, MRR) and the eval set's ``facts_in_context`` (every gold
    fact of an answerable question in the context the model is shown, at the spec's retrieval.k)."""
    from tandem import db
    from tandem.behavior.evalset import load_examples
    from tandem.behavior.prompt import context_text
    from tandem.behavior.spec import load_spec
    from tandem.behavior.text import contains
    from tandem.knowledge import canary, reindex, search

    demo = REPO / "include" / "tandem" / "data" / "demo"
    spec = load_spec(demo / "behavior_spec.yaml")
    examples = [e for e in load_examples(demo / "eval_set.jsonl") if e.answerable]
    golden = canary.load_golden(demo / "golden_retrieval.jsonl")[0]
    out["fusion"] = {"k_golden": settings.canary_k, "k_eval": spec.retrieval_k, "answerable": len(examples)}
    for release in ("release1",):
        name = f"bfusion{release[-1]}"
        drop_index(settings, name)
        s = settings.replace(index_name=name, sources=(f"acme={demo / 'kb' / release}",),
                             canary_path=str(demo / "no-golden.jsonl"))
        reindex.run(s, progress=False)
        pinned = search.pin(s)
        for fusion in search.FUSIONS:
            f = s.replace(retrieval_fusion=fusion)
            with db.connection(f.db_url) as conn:
                g = canary.evaluate(conn, pinned.table, search.embedder_for(f, pinned), golden, f.canary_k,
                                    f.hnsw_ef_search, release=pinned.index_version, fusion=fusion)
            held = [all(contains(context_text(search.search(f, e.question, k=spec.retrieval_k, at=pinned),
                                              spec.max_context_chars, e.question), fact) for fact in e.gold_facts)
                    for e in examples]
            out["fusion"][f"{release} {fusion}"] = {"hit_at_k": g["hit_at_k"], "mrr": g["mrr"],
                                                    "facts_in_context": round(sum(held) / len(held), 3)}
            log(f"fusion {fusion} on {release}: golden hit@{f.canary_k} {g['hit_at_k']:.3f} MRR {g['mrr']:.3f}, "
                f"facts_in_context {sum(held) / len(held):.3f} ({sum(held)}/{len(held)})")


def query_vectors(embedder, n: int, batch: int):
    """Real embeddings of chunk texts 0..n-1, cached on disk (float32, L2-normalised)."""
    import numpy as np

    from tandem.knowledge.chunking import Chunk

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"query-chunks-{SEED}-{n}.npy"
    if path.exists():
        return np.load(path)
    # reuse a bigger cached set when there is one
    for other in sorted(CACHE.glob(f"query-chunks-{SEED}-*.npy")):
        if int(other.stem.rsplit("-", 1)[1]) >= n:
            return np.load(other, mmap_mode="r")[:n].copy()
    texts = [Chunk("", "", 0, t, h, x).embed_text for t, h, x in (corpus.chunk_text(i, SEED) for i in range(n))]
    log(f"embedding {n} chunk texts with the real model (cached afterwards in {path})")
    vecs = np.empty((n, embedder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    step = 4096
    for start in range(0, n, step):
        vecs[start:start + step] = embedder.encode(texts[start:start + step], batch_size=batch)
        done = min(start + step, n)
        log(f"  {done}/{n} ({done / (time.perf_counter() - t0):.0f} chunks/s)")
    np.save(path, vecs)
    return vecs


RELEASES = 6  # published releases in the query table: 1 (all chunks), then 2..6 each rewriting 1% of the documents


def _load_query_table(conn, names, table: str, vecs, n: int) -> tuple[int, float | None]:
    """The 100k-chunk table as a live index looks after a few nightly runs: release 1 wrote every chunk;
    releases 2..6 each rewrote 1% of the documents (the old rows superseded, kept for rollback); an
    unpublished candidate (release 7) wrote 1% more. Queries read release 6. Returns (rows, HNSW build s)."""
    from psycopg import sql

    from tandem.knowledge import store

    t = sql.Identifier(table)
    per_release = max(1, n // 100)
    expected = n + per_release * RELEASES  # releases 2..6 plus the candidate
    if store.exists(conn, table) and conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0] == expected:
        return expected, None
    log(f"loading {n} chunks into {table} (+{per_release} per release for {RELEASES - 1} releases and a candidate)")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    store.create_chunk_table(conn, names, 1, vecs.shape[1], hnsw=False)
    conn.commit()
    cols = sql.SQL("COPY {} (chunk_id, rel_from, rel_to, doc_id, ordinal, doc_hash, source, uri, title, heading_path, "
                   "text, fingerprint, embedding) FROM STDIN").format(t)
    import random

    rng = random.Random(SEED)
    rewritten = {r: rng.sample(range(n), per_release) for r in range(2, RELEASES + 2)}  # release 7 = candidate
    superseded = {}
    for r in range(2, RELEASES + 1):
        for i in rewritten[r]:
            superseded.setdefault(i, []).append(r)
    with conn.cursor().copy(cols) as copy:
        for i in range(n):
            title, heading, text = corpus.chunk_text(i, SEED)
            doc = f"bench/doc-{i // 4:06d}.md"
            versions = [1] + superseded.get(i, [])
            for k, rel in enumerate(versions):  # each version current until the next one
                rel_to = versions[k + 1] if k + 1 < len(versions) else None
                copy.write_row((f"c{i:07d}", rel, rel_to, doc, i % 4, "h", "bench", f"file:///bench/{doc}", title,
                                heading, text, "bench", vecs[i]))
            if i in rewritten[RELEASES + 1]:  # the candidate's row: invisible in release 6
                copy.write_row((f"c{i:07d}", RELEASES + 1, None, doc, i % 4, "h", "bench", f"file:///bench/{doc}",
                                title, heading, text, "bench", vecs[i]))
    conn.commit()
    log("building the HNSW index")
    t0 = time.perf_counter()
    with conn.transaction():
        store.ensure_hnsw(conn, table)
    build_s = time.perf_counter() - t0
    conn.execute(sql.SQL("ANALYZE {}").format(t))
    conn.commit()
    log(f"  HNSW built in {build_s:.1f}s")
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0]
    return rows, build_s


def _search_before_releases(rev: str):
    """``search_space`` as it was at ``rev`` (before releases: no visibility filter), loaded from git, for a
    same-run baseline; None when git or the revision is not available."""
    import types

    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:include/tandem/knowledge/search.py"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        log(f"no baseline: git show {rev} failed")
        return None
    module = types.ModuleType("search_before_releases")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:search.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module.search_space


def bench_query(args, settings, embedder, out: dict) -> None:
    """Latency and recall at ``--query-chunks`` chunks with the release filter in place (release 6 of a table
    that also holds superseded rows and an unpublished candidate), beside the same vector query without the
    filter (the query shape before releases)."""
    import numpy as np
    from psycopg import sql

    from tandem import db
    from tandem.knowledge import store
    from tandem.knowledge.search import search_space

    n = args.query_chunks
    vecs = query_vectors(embedder, n, settings.embed_batch_size)
    names = store.names(f"bq{n}")
    table = names.chunks(1)
    with db.connection(settings.db_url) as conn:
        store.ensure_schema(conn, names)
        rows, build_s = _load_query_table(conn, names, table, vecs, n)
        queries = [corpus.query(i, SEED) for i in range(args.queries)]
        qvecs = embedder.encode(queries, batch_size=settings.embed_batch_size)
        embed_ms = []
        for q in queries[:50]:
            t1 = time.perf_counter()
            embedder.encode([q])
            embed_ms.append((time.perf_counter() - t1) * 1000)
        exact = np.argsort(-(np.asarray(vecs) @ qvecs.T), axis=0)[:10].T  # exact top-10 per query
        before = _search_before_releases(args.baseline_rev)
        modes = ["vector", "hybrid"] + (["vector_before", "hybrid_before"] if before else [])
        results: dict[str, list] = {m: [] for m in modes}
        recall_runs = []
        for r in range(args.runs):
            lat: dict[str, list[float]] = {m: [] for m in modes}
            for i, (q, v) in enumerate(zip(queries, qvecs)):
                for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # interleaved, rotating order
                    t1 = time.perf_counter()
                    if mode.endswith("_before"):  # the same search without releases (no filter)
                        before(conn, table, q, v, k=10, mode=mode.split("_")[0], ef_search=settings.hnsw_ef_search)
                    else:
                        hits = search_space(conn, table, q, v, release=RELEASES, k=10, mode=mode,
                                            ef_search=settings.hnsw_ef_search)
                    lat[mode].append((time.perf_counter() - t1) * 1000)
                    conn.rollback()
                    if mode == "vector" and r == 0:
                        got = [int(h.chunk_id[1:]) for h in hits]
                        assert len(got) == len(set(got)), "a chunk id twice: the filter let two versions through"
                        recall_runs.append(len(set(got) & set(exact[i].tolist())) / 10)
            for mode in modes:
                results[mode].append((pct(lat[mode], 0.5), pct(lat[mode], 0.95)))
            log(f"query run #{r + 1}: " + ", ".join(f"{m} p50 {results[m][-1][0]:.2f} ms" for m in modes))
        out["query"] = {
            "chunks": n, "rows": rows, "release": RELEASES, "queries": len(queries), "runs": args.runs,
            "ef_search": settings.hnsw_ef_search,
            "vector_p50_ms": median([x[0] for x in results["vector"]]),
            "vector_p95_ms": median([x[1] for x in results["vector"]]),
            **({f"{m}_p50_ms": median([x[0] for x in results[m]]) for m in modes if m.endswith("_before")}),
            "baseline_rev": args.baseline_rev if before else None,
            "hybrid_p50_ms": median([x[0] for x in results["hybrid"]]),
            "hybrid_p95_ms": median([x[1] for x in results["hybrid"]]),
            "query_embedding_p50_ms": pct(embed_ms, 0.5),
            "recall_at_10": sum(recall_runs) / len(recall_runs),
            "hnsw_build_seconds": build_s,
            "targets": "with the release filter: vector and hybrid p50 within 10% of the search before releases "
                       "(issue figures 7.2 ms and 11.5 ms), recall@10 >= 0.95",
        }


def bench_publish(args, settings, embedder, out: dict) -> None:
    """Publish time at ``--publish-docs`` documents (about 100k chunks) with 1% of the documents changed: the
    index is seeded with the stand-in model, then each run changes 1% and reindexes (stand-in model too: the
    figure is the publish transaction, which does not embed)."""
    from tandem.knowledge import reindex

    docs = args.publish_docs
    folder = corpus.write(CACHE / f"corpus-{SEED}-{docs}", docs, SEED)
    name = f"bpublish{docs}"
    s = settings.replace(index_name=name, sources=(f"acme={folder}",), reindex_batch_docs=2000)
    with stand_in_model(embedder):
        t0 = time.perf_counter()
        seed = reindex.run(s, progress=False) if _release_of(s) is None else None
        if seed:
            log(f"seeded {seed['new']} docs / {seed['chunks_embedded']} chunks in {time.perf_counter() - t0:.0f}s")
        n_changed = max(1, docs // 100)
        publish, totals, chunks = [], [], None
        for r in range(args.runs):
            start = (r * n_changed * 7) % docs
            corpus.modify(folder, [(start + j * 13) % docs for j in range(n_changed)], revision=100 + r, seed=SEED)
            summary = reindex.run(s, progress=False)
            assert summary["changed"] == n_changed and summary["release"]["published"], summary
            publish.append(summary["phases"]["publish"])
            totals.append(summary["seconds"])
            log(f"publish #{r + 1}: {n_changed} changed docs, release {summary['index_version']}: publish "
                f"{summary['phases']['publish']}s (collect {summary['phases'].get('collect')}s), run {summary['seconds']}s")
    from tandem.knowledge.status import index_status

    chunks = index_status(s)["chunks"]
    out["publish"] = {"docs": docs, "chunks": chunks, "changed": n_changed, "publish_seconds_median": median(publish),
                      "publish_runs": publish, "run_seconds_median": median(totals), "target": "<= 1 s"}


def _release_of(settings):
    from tandem.knowledge import search

    try:
        return search.live_index_version(settings)
    except Exception:  # noqa: BLE001 - no schema yet
        return None


def bench_verify(args, settings, out: dict) -> None:
    """``tandem index verify`` over the ``--nochange-docs`` index (seeded by the no-change benchmark)."""
    from tandem.knowledge import verify

    folder = CACHE / f"corpus-{SEED}-{args.nochange_docs}"
    s = settings.replace(index_name=f"bnochange{args.nochange_docs}", sources=(f"acme={folder}",))
    secs = []
    for r in range(args.runs):
        t0 = time.perf_counter()
        report = verify.check(s)
        secs.append(time.perf_counter() - t0)
        assert report["ok"], report["drift"]
        log(f"verify #{r + 1}: {report['scanned']} docs, {report['published_chunks']} chunks: consistent in "
            f"{secs[-1]:.2f}s")
    out["verify"] = {"docs": args.nochange_docs, "seconds_median": median(secs), "runs": secs, "target": "<= 20 s"}


def _pipeline_texts(settings, n: int, folder: Path | None = None) -> list[str]:
    """The first ``n`` texts the pipeline embeds for the generated corpus (or the files of ``folder``, sorted):
    their chunks (context + text), made by the same extraction and chunker as a reindex, so the backends
    encode chunks of realistic length."""
    from tandem.knowledge import fingerprint
    from tandem.knowledge.chunking import chunk_document
    from tandem.knowledge.extract import extract

    _fp, _spec, _info, cfg = fingerprint.current(settings)
    if folder is not None:
        docs = ((str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file())
    else:
        docs = ((rel, text.encode()) for rel, text in (corpus.document(i, SEED) for i in range(10**9)))
    texts: list[str] = []
    for rel, data in docs:
        try:
            texts += [c.embed_text for c in chunk_document(f"docs/{rel}", extract(rel, data), cfg)]
        except Exception as exc:  # noqa: BLE001 - a file the pipeline would fail on is skipped here too
            log(f"  skipped {rel}: {exc}")
        if len(texts) >= n:
            break
    return texts[:n]


def bench_backends(args, settings, embedder, out: dict, folder: Path | None = None, key: str = "backends") -> None:
    """Raw encode chunks/s of torch, onnx and onnx-int8 on the same ``--backend-texts`` pipeline chunk texts and
    batch size (interleaved runs), and the quality of onnx-int8 against torch: recall@10 of its top-10 (its own
    query and chunk vectors) against torch's exact top-10 over those chunks, for 200 corpus queries."""
    import numpy as np

    from tandem.knowledge.embedding import get_embedder, model_info

    texts = _pipeline_texts(settings, args.backend_texts, folder)
    n = len(texts)
    ref = embedder.ref
    encoders = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        t0 = time.perf_counter()
        encoders[backend] = get_embedder(ref, args.threads, backend, settings.models_dir)
        log(f"{backend}: ready in {time.perf_counter() - t0:.1f}s (export on first use, then cached)")
    rates: dict[str, list[float]] = {b: [] for b in encoders}
    vectors = {}
    for r in range(args.runs):
        for backend, enc in encoders.items():
            t0 = time.perf_counter()
            vecs = enc.encode(texts, batch_size=settings.embed_batch_size)
            rates[backend].append(n / (time.perf_counter() - t0))
            vectors[backend] = vecs
        log(f"raw encode run #{r + 1}: " + ", ".join(f"{b} {v[-1]:.1f} chunks/s" for b, v in rates.items()))
    queries = [corpus.query(i, SEED) for i in range(200)] if folder is None else \
        [t.split("\n")[-1][:200] for t in texts[::max(1, n // 200)][:200]]  # a sentence of the text as the query
    qv = {b: encoders[b].encode(queries) for b in ("torch", "onnx-int8")}
    exact = np.argsort(-(vectors["torch"] @ qv["torch"].T), axis=0)[:10].T
    got = np.argsort(-(vectors["onnx-int8"] @ qv["onnx-int8"].T), axis=0)[:10].T
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got)]))
    cos = (vectors["onnx-int8"] * vectors["torch"]).sum(axis=1)
    cos_fp32 = (vectors["onnx"] * vectors["torch"]).sum(axis=1)
    torch_rate = median(rates["torch"])
    out[key] = {"texts": n, "corpus": str(folder or "generated"), "batch_size": settings.embed_batch_size, "threads": args.threads,
                       **{f"{b}_chunks_per_s_median": median(v) for b, v in rates.items()},
                       **{f"{b}_vs_torch": median(v) / torch_rate for b, v in rates.items() if b != "torch"},
                       "int8_recall_at_10_vs_torch": recall, "int8_cosine_min": float(cos.min()),
                       "int8_cosine_mean": float(cos.mean()), "onnx_cosine_min": float(cos_fp32.min()),
                       "weights_sha256": model_info(ref).weights_sha256[:16],
                       "targets": "onnx-int8 >= 2x torch to become the default; recall@10 >= 0.95"}


def bench_diff(args, settings, out: dict) -> None:
    """The SQL diff alone at ``--diff-docs`` (1,000,000) documents: COPY the scan into a temp table, classify,
    persist the plan. 1% changed, 0.5% new, 0.5% deleted. Each run is rolled back (identical repeats)."""
    from psycopg import sql

    from tandem import db
    from tandem.knowledge import diff, store

    total = args.diff_docs
    n = store.names(f"bdiff{total}")
    h = lambda i, v=0: hashlib.sha256(f"{i}:{v}".encode()).hexdigest()  # noqa: E731
    with db.connection(settings.db_url) as conn:
        store.ensure_schema(conn, n)
        have = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE space_no = 1").format(sql.Identifier(n.manifest))
                            ).fetchone()[0]
        if have != total:
            log(f"seeding a {total}-row manifest")
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(n.manifest)))
            with conn.cursor().copy(sql.SQL("COPY {} (space_no, doc_id, source, uri, title, content_hash, chunk_count,"
                                            " status, index_version) FROM STDIN").format(sql.Identifier(n.manifest))) as cp:
                for i in range(total):
                    cp.write_row((1, f"acme/d/{i:07d}.md", "acme", f"file:///kb/d/{i:07d}.md", "t", h(i), 3,
                                  "indexed", 1))
            conn.commit()
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(n.manifest)))
            conn.commit()

        def scan_rows():
            for i in range(total):
                if i % 200 == 1:
                    continue  # deleted (0.5%)
                yield diff.ScanRow(f"acme/d/{i:07d}.md", "acme", f"file:///kb/d/{i:07d}.md", "t",
                                   h(i, 1) if i % 100 == 0 else h(i))  # changed (1%)
            for j in range(total // 200):
                yield diff.ScanRow(f"acme/new/{j:07d}.md", "acme", f"file:///kb/new/{j:07d}.md", "t", h(-j))

        rows = list(scan_rows())
        stage_s, classify_s, record_s = [], [], []
        for r in range(args.runs):
            with conn.transaction(force_rollback=True):
                t0 = time.perf_counter()
                staged = diff.stage(conn, iter(rows))
                t1 = time.perf_counter()
                diff.classify(conn, n, 1, False)
                counts = diff.counts(conn, staged)
                t2 = time.perf_counter()
                diff.record_plan(conn, n, f"bench-{r}", 1, 200, 3)
                t3 = time.perf_counter()
            stage_s.append(t1 - t0)
            classify_s.append(t2 - t1)
            record_s.append(t3 - t2)
            log(f"diff at {total}: COPY {t1 - t0:.2f}s, classify {t2 - t1:.2f}s, persist plan {t3 - t2:.2f}s "
                f"({counts['new']} new, {counts['changed']} changed, {counts['deleted']} deleted)")
    out["diff"] = {"docs": total, "copy_seconds_median": median(stage_s), "classify_seconds_median": median(classify_s),
                   "persist_plan_seconds_median": median(record_s),
                   "total_seconds_median": median([a + b + c for a, b, c in zip(stage_s, classify_s, record_s)])}


def bench_folder(args, settings, out: dict) -> None:
    from tandem.knowledge import reindex

    runs = []
    for r in range(args.runs):
        name = f"bfolder{r}"
        drop_index(settings, name)
        s = settings.replace(index_name=name, sources=(f"folder={args.folder}",), mass_delete_fraction=1.0)
        summary = reindex.run(s, progress=False)
        runs.append(summary)
        log(f"folder #{r + 1}: {summary['new']} docs ({summary['failed']} failed), {summary['chunks_embedded']} chunks, "
            f"{summary['seconds']}s")
    out["folder"] = {"folder": args.folder, "docs": runs[-1]["new"], "failed": runs[-1]["failed"],
                     "chunks": runs[-1]["chunks_embedded"], "seconds_median": median([s["seconds"] for s in runs]),
                     "docs_per_s_median": median([s["new"] / s["seconds"] for s in runs]),
                     "chunks_per_s_median": median([s["chunks_embedded"] / s["seconds"] for s in runs])}


# ------------------------------------------------------------------------------------------- the peer
REAL_TEXT_ROOT = Path("/usr/share/doc")
REAL_TEXT_EXTS = (".md", ".rst", ".txt", ".html")


def real_text_folder(dest: Path, n: int, source: Path = REAL_TEXT_ROOT) -> Path:
    """A fresh copy of ``n`` real-text files (2-40 KB), spread evenly over the sorted list under ``source``."""
    import shutil

    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.suffix in REAL_TEXT_EXTS and 2_000 <= p.stat().st_size <= 40_000)
    if len(files) < n:
        raise SystemExit(f"only {len(files)} real-text files under {source}; give --peer-folder with more")
    step = len(files) / n
    shutil.rmtree(dest, ignore_errors=True)
    for k in range(n):
        src = files[int(k * step)]
        target = dest / src.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


def _real_folder(args) -> Path:
    """The real-text folder of the cold and backend figures (a fresh copy; the peer makes its own)."""
    return real_text_folder(CACHE / "realtext", args.peer_real_docs,
                            Path(args.peer_folder) if args.peer_folder else REAL_TEXT_ROOT)


def _edit_files(folder: Path, fraction: float, revision: int) -> int:
    """Append a sentence to ``fraction`` of the files (at least one), chosen by ``revision``: an edit."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    count = max(1, int(len(files) * fraction))
    for j in range(count):
        path = files[(revision * 7919 + j * 97) % len(files)]
        with path.open("a", encoding="utf-8", errors="replace") as f:
            f.write(f"\n\nRevision {revision}: this paragraph was added by the benchmark's edit number {j}.\n")
    return count


def _timed(argv: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1] if argv[-1] != "--json" else proc.stdout)


class _Tools:
    """Runs Tandem (``tandem reindex --json``) and the LlamaIndex peer on one folder, each a fresh process."""

    def __init__(self, args, settings, folder: Path, tag: str):
        from tandem.models import embedding_model_path

        self.folder, self.tag, self.settings = folder, tag, settings
        self.name = f"bpeer{tag}"
        self.s = settings.replace(index_name=self.name, sources=(f"docs={folder}",), mass_delete_fraction=1.0)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
        self.env.update(self.s.as_env())
        self.state = CACHE / f"peer-state-{tag}"
        self.peer = [sys.executable, str(REPO / "benchmarks" / "peer_llamaindex.py"), "--folder", str(folder),
                     "--db-url", settings.db_url, "--table", self.name, "--state", str(self.state),
                     "--model", embedding_model_path(settings.embed_model), "--threads", str(args.threads),
                     "--chunk-size", str(settings.chunk_size), "--chunk-overlap", str(settings.chunk_overlap),
                     "--batch-size", str(settings.embed_batch_size)]

    def reset(self) -> None:
        import shutil

        from psycopg import sql

        from tandem import db

        drop_index(self.settings, self.name)
        with db.connection(self.settings.db_url) as conn:  # PGVectorStore's table is data_<table_name>
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"data_{self.name}")))
            conn.commit()
        shutil.rmtree(self.state, ignore_errors=True)

    def tandem(self) -> tuple[float, int]:
        wall, summary = _timed([str(Path(sys.executable).parent / "tandem"), "reindex", "--json"], self.env)
        return wall, summary["chunks_embedded"]

    def llamaindex(self) -> tuple[float, int]:
        wall, result = _timed(self.peer, self.env)
        return wall, result["nodes_embedded"]


def bench_peer(args, settings, out: dict) -> None:
    """Tandem beside the stock LlamaIndex IngestionPipeline on the same folders, model and chunk size, each run
    a fresh process as a scheduler would start it: cold, no change, 1% of the files changed."""
    corpora = [("synthetic", corpus.write(CACHE / f"peer-corpus-{SEED}-{args.docs}", args.docs, SEED),
                args.peer_cold_runs_synthetic)]
    wanted = set(args.peer_corpora.split(","))
    if "synthetic" not in wanted:
        corpora = []
    real = Path(args.peer_folder) if args.peer_folder else None
    if "realtext" in wanted and (real is not None or REAL_TEXT_ROOT.is_dir()):
        corpora.append(("realtext", None, args.runs))
    out["peer"] = {}
    for tag, folder, cold_runs in corpora:
        res = {k: {"tandem": [], "llamaindex": []} for k in ("cold", "nochange", "changed1pct")}
        chunks = {}
        for r in range(cold_runs):
            if tag == "realtext":
                folder = real_text_folder(CACHE / "peer-realtext", args.peer_real_docs, real or REAL_TEXT_ROOT)
            else:
                corpus.write(folder, args.docs, SEED)  # undoes the previous run's edits
            tools = _Tools(args, settings, folder, tag)
            tools.reset()
            for tool in ("tandem", "llamaindex"):
                wall, n = getattr(tools, tool)()
                res["cold"][tool].append(wall)
                chunks[tool] = n
                log(f"peer {tag} cold #{r + 1}: {tool} {wall:.1f}s, {n} chunks")
            if r > 0:
                continue
            for k in range(args.runs):  # the phases after the first cold build, repeated for medians
                for tool in ("tandem", "llamaindex"):
                    wall, n = getattr(tools, tool)()
                    assert n == 0, (tool, n)
                    res["nochange"][tool].append(wall)
                edited = _edit_files(folder, 0.01, revision=k + 1)
                for tool in ("tandem", "llamaindex"):
                    wall, n = getattr(tools, tool)()
                    res["changed1pct"][tool].append(wall)
                log(f"peer {tag} #{k + 1}: no change tandem {res['nochange']['tandem'][-1]:.1f}s / llamaindex "
                    f"{res['nochange']['llamaindex'][-1]:.1f}s; {edited} files edited: tandem "
                    f"{res['changed1pct']['tandem'][-1]:.1f}s / llamaindex {res['changed1pct']['llamaindex'][-1]:.1f}s")
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        out["peer"][tag] = {"files": files, "chunks": chunks, "cold_runs": cold_runs, **{
            phase: {"tandem_seconds_median": median(v["tandem"]), "llamaindex_seconds_median": median(v["llamaindex"]),
                    "llamaindex_over_tandem": median(v["llamaindex"]) / median(v["tandem"]), "runs": v}
            for phase, v in res.items()}, "target": "Tandem ahead in every phase (ratio > 1)"}


def _peer_lines(peer: dict) -> list[str]:
    lines = []
    for tag, p in peer.items():
        lines.append(f"beside the stock LlamaIndex IngestionPipeline, {tag} ({p['files']} files; chunks: Tandem "
                     f"{p['chunks'].get('tandem')}, LlamaIndex {p['chunks'].get('llamaindex')}), fresh processes:")
        for phase in ("cold", "nochange", "changed1pct"):
            q = p[phase]
            lines.append(f"  {phase:<12} LlamaIndex {q['llamaindex_seconds_median']:7.1f}s  Tandem "
                         f"{q['tandem_seconds_median']:7.1f}s  -> {q['llamaindex_over_tandem']:.2f}x "
                         f"(target > 1; {len(q['runs']['tandem'])} runs)")
    return lines


def _query_line(q: dict, mode: str) -> str:
    line = (f"  {mode} p50 {q[f'{mode}_p50_ms']:.2f} ms, p95 {q[f'{mode}_p95_ms']:.2f} ms (target: within 10% of the "
            f"search before releases")
    before = q.get(f"{mode}_before_p50_ms")
    if before:
        line += f", {before:.2f} ms here -> {q[f'{mode}_p50_ms'] / before - 1:+.0%}"
    return line + ")"


def report(out: dict) -> str:
    lines = ["", "knowledge cadence benchmark (medians of %s runs; machine: %s cores)" % (out["runs"], os.cpu_count())]
    for c in filter(None, (out.get("cold"), out.get("cold_realtext"))):
        lines += [f"cold full index ({c['backend']}) of {c['folder']}, {c['docs']} docs / {c['chunks']} chunks: "
                  f"{c['seconds_median']:.1f}s, "
                  f"{c['docs_per_s_median']:.2f} docs/s, {c['chunks_per_s_median']:.1f} chunks/s",
                  f"  raw model on the same texts (batch {c['batch_size']}, {c['raw_sample']} sampled texts, before and "
                  f"after each run): {c['raw_model_chunks_per_s_median']:.1f} chunks/s -> pipeline at "
                  f"{c['pipeline_vs_raw']:.0%} of raw (median of per-run ratios; target >= 85%)"]
    i = out.get("incremental")
    if i:
        lines += [f"incremental ({i['changed']} of {i['docs']} docs changed): {i['incremental_seconds_median']:.2f}s vs "
                  f"full rebuild {i['full_rebuild_seconds_median']:.1f}s -> {i['speedup']:.1f}x faster (target >= 30x)",
                  f"  (full = {i['full_kind']})"]
    nc = out.get("nochange")
    if nc:
        lines += [f"no-change run over {nc['docs']} docs through the CLI: {nc['cli_wall_seconds_median']:.2f}s end to end "
                  f"(run {nc['run_seconds_median']:.2f}s: scan {nc['scan_seconds_median']:.2f}s, diff "
                  f"{nc['diff_seconds_median']:.3f}s) (target <= 15 s)"]
    v = out.get("verify")
    if v:
        lines += [f"tandem index verify over {v['docs']} docs: {v['seconds_median']:.2f}s (target <= 20 s)"]
    for b in filter(None, (out.get("backends"), out.get("backends_realtext"))):
        lines += [f"raw encode, {b['texts']} chunk texts of {b['corpus']}, batch {b['batch_size']}, {b['threads']} threads: torch "
                  f"{b['torch_chunks_per_s_median']:.1f} chunks/s, onnx {b['onnx_chunks_per_s_median']:.1f} "
                  f"({b['onnx_vs_torch']:.2f}x), onnx-int8 {b['onnx-int8_chunks_per_s_median']:.1f} "
                  f"({b['onnx-int8_vs_torch']:.2f}x; default if >= 2x)",
                  f"  onnx-int8 quality: recall@10 vs torch's exact top-10 {b['int8_recall_at_10_vs_torch']:.3f} "
                  f"(target >= 0.95), cosine to torch min {b['int8_cosine_min']:.3f} mean {b['int8_cosine_mean']:.4f}",
                  f"  onnx (float32) cosine to torch: min {b['onnx_cosine_min']:.5f}"]
    pb = out.get("publish")
    if pb:
        lines += [f"publish at {pb['chunks']} chunks ({pb['docs']} docs, {pb['changed']} changed): "
                  f"{pb['publish_seconds_median']:.3f}s (target <= 1 s; whole run {pb['run_seconds_median']:.1f}s)"]
    q = out.get("query")
    if q:
        lines += [f"queries at {q['chunks']} chunks ({q['rows']} rows: superseded rows and a candidate beside them), "
                  f"release filter in place (ef_search {q['ef_search']}, {q['queries']} queries, SQL side):",
                  *(_query_line(q, mode) for mode in ("vector", "hybrid")),
                  f"  + query embedding p50 {q['query_embedding_p50_ms']:.2f} ms",
                  f"  HNSW recall@10 vs exact: {q['recall_at_10']:.3f} (target >= 0.95)"]
    d = out.get("diff")
    if d:
        lines += [f"SQL diff at {d['docs']} documents (1% changed, 0.5% new, 0.5% deleted): {d['total_seconds_median']:.2f}s "
                  f"(COPY {d['copy_seconds_median']:.2f}s, classify {d['classify_seconds_median']:.2f}s, "
                  f"persist plan {d['persist_plan_seconds_median']:.2f}s)"]
    cn = out.get("canary")
    if cn:
        lines += [f"canary on the demo knowledge base ({cn['queries']} golden queries, k={cn['k']}): " + ", ".join(
            f"{b} hit@k {cn[b]['hit_at_k']:.3f} MRR {cn[b]['mrr']:.3f}" for b in ("torch", "onnx", "onnx-int8"))
            + " (target: onnx-int8 within 0.01 of torch)"]
    fu = out.get("fusion")
    if fu:
        lines += [f"hybrid fusion on the demo knowledge base (golden k={fu['k_golden']}, eval k={fu['k_eval']}, "
                  f"{fu['answerable']} answerable questions):"] + [
            f"  {key:<28} golden hit@k {v['hit_at_k']:.3f} MRR {v['mrr']:.3f}, facts_in_context {v['facts_in_context']:.3f}"
            for key, v in fu.items() if isinstance(v, dict)]
    fx = out.get("fixed")
    if fx:
        lines += [f"fixed cost through the CLI, {fx['docs']} docs, MLflow logging {fx['mlflow']}:"] + [
            f"  {b:<6} no change {fx[b]['nochange_seconds_median']:.2f}s (target <= 2 s), one document changed "
            f"{fx[b]['one_doc_seconds_median']:.2f}s (target <= 5 s)" for b in ("torch", "onnx") if b in fx]
    if out.get("peer"):
        lines += _peer_lines(out["peer"])
    if out.get("extraction"):
        from bench_extraction import lines as extraction_lines

        lines += extraction_lines(out["extraction"])
    f = out.get("folder")
    if f:
        lines += [f"folder {f['folder']}: {f['docs']} docs ({f['failed']} failed), {f['chunks']} chunks, "
                  f"{f['seconds_median']:.1f}s, {f['docs_per_s_median']:.2f} docs/s, {f['chunks_per_s_median']:.1f} chunks/s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="cold,coldreal,incr,nochange,fixed,verify,publish,query,backends,backendsreal,canary,"
                                     "fusion,diff,peer,extraction")
    p.add_argument("--backend-texts", type=int, default=2000, help="chunk texts of the backend comparison")
    p.add_argument("--baseline-rev", default="7cdacfe",
                   help="git revision whose search (before releases) is timed beside today's on the same table")
    p.add_argument("--publish-docs", type=int, default=15000, help="documents of the publish benchmark (~100k chunks)")
    p.add_argument("--diff-docs", type=int, default=1_000_000)
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--nochange-docs", type=int, default=10000)
    p.add_argument("--fixed-docs", type=int, default=77, help="documents of the fixed-cost figures")
    p.add_argument("--query-chunks", type=int, default=100000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--full-runs", type=int, default=None,
                   help="--full rebuilds for the incremental ratio (default --runs; 0: use the cold builds)")
    p.add_argument("--raw-sample", type=int, default=3000,
                   help="raw-model throughput on a seeded sample of this many of the run's chunk texts (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--folder", default=None, help="also index this folder of real text")
    p.add_argument("--peer-folder", default=None,
                   help="real-text files for the peer comparison (default: a spread of /usr/share/doc)")
    p.add_argument("--peer-real-docs", type=int, default=150, help="real-text files of the peer comparison")
    p.add_argument("--peer-corpora", default="synthetic,realtext", help="corpora of the peer comparison")
    p.add_argument("--peer-cold-runs-synthetic", type=int, default=1,
                   help="cold builds of the synthetic corpus per tool in the peer comparison (~8 min each)")
    p.add_argument("--extract-files", type=int, default=20, help="files per format of the extraction benchmark")
    p.add_argument("--db-url", default=None)
    p.add_argument("--home", default="/tmp/tandem-bench-knowledge")
    p.add_argument("--mlflow-uri", default="http://127.0.0.1:9")
    p.add_argument("--real-seed", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes to check the benchmark itself")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.docs, args.nochange_docs, args.query_chunks, args.queries, args.diff_docs = 100, 500, 5000, 50, 20000
        args.publish_docs, args.backend_texts, args.peer_real_docs = 400, 200, 20
        args.extract_files = 3
    if args.runs < 3:
        log("note: fewer than 3 runs: medians are not the reported standard")
    args.full_runs = args.runs if args.full_runs is None else args.full_runs
    only = set(args.only.split(","))
    Path(args.home).mkdir(parents=True, exist_ok=True)
    db_url = args.db_url or start_postgres(Path(args.home))
    settings = base_settings(args, db_url)
    from tandem.knowledge.embedding import get_embedder
    from tandem.models import embedding_model_path

    import torch

    torch.set_num_threads(args.threads)
    # the raw model of the pipeline's own backend (TANDEM_EMBED_BACKEND, default onnx)
    embedder = get_embedder(embedding_model_path(settings.embed_model), args.threads, settings.embed_backend,
                            settings.models_dir)
    log(f"embedding backend: {settings.embed_backend}")
    embedder.encode(["warm up the model"] * 8)
    out: dict = {"runs": args.runs, "threads": args.threads, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        if "cold" in only:
            bench_cold(args, settings, embedder, out)
        if "coldreal" in only:
            bench_cold(args, settings, embedder, out, folder=_real_folder(args), key="cold_realtext")
        if "incr" in only:
            bench_incremental(args, settings, out)
        if "nochange" in only:
            bench_nochange(args, settings, embedder, out)
        if "verify" in only:
            bench_verify(args, settings, out)
        if "publish" in only:
            bench_publish(args, settings, embedder, out)
        if "query" in only:
            bench_query(args, settings, embedder, out)
        if "backends" in only:
            bench_backends(args, settings, embedder, out)
        if "backendsreal" in only:
            bench_backends(args, settings, embedder, out, folder=_real_folder(args), key="backends_realtext")
        if "diff" in only:
            bench_diff(args, settings, out)
        if "canary" in only:
            bench_canary(args, settings, out)
        if "fusion" in only:
            bench_fusion(args, settings, out)
        if "fixed" in only:
            bench_fixed(args, settings, out)
        if "peer" in only:
            bench_peer(args, settings, out)
        if "extraction" in only:
            from bench_extraction import bench_extraction

            bench_extraction(args, settings, out)
        if args.folder:
            bench_folder(args, settings, out)
    finally:
        if not args.db_url:
            from tandem.stack import postgres

            postgres.stop(Path(args.home) / "pg")
    out.pop("_cold_index", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"knowledge-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
