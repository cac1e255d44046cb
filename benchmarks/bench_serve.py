"""`make bench-serve`: latency figures of the answer path. Prints figures; asserts nothing.

1. Retrieval at N chunks (default 100,000): the knowledge cadence's hybrid search (HNSW + tsvector, RRF)
   end to end (query embedding + SQL) and the SQL part alone, p50/p95 over the demo's golden queries.
2. Generation on CPU with the demo base model: p50/p95 of the generation step of `tandem ask`.
3. End-to-end `tandem ask` latency (retrieval + prompt + generation + validation).
4. The first request after a champion change: the alias is re-checked, the new adapter downloaded and
   loaded (base + LoRA, merged), then the answer generated; against a steady request.
5. ``--load``: `tandem serve` under 8 clients for 60 s while the champion flips every 5 s, in three arms of
   one run: one answer at a time (batch 1, no prefix cache: serving as before batching), continuous
   batching without the prefix cache (``--skip-no-prefix`` leaves it out), optionally batching with one batch
   per version (``--unmixed``: no mixed-adapter steps), and the defaults.

Every figure is the median (p50) and p95 of at least ``--runs`` (>= 3) repetitions.

The 100k-chunk corpus (``--corpus``): ``knowledge`` reuses the knowledge benchmark's generated chunk
texts and their REAL per-chunk embeddings cached by ``make bench-knowledge``
(``benchmarks/.cache/knowledge/query-chunks-7-N.npy``, N >= ``--chunks``), with its queries; ``auto`` (the
default) takes it when that cache is there, else ``synthetic``: ``--chunks`` chunks of synthetic product
documentation (deterministic: seeded, sorted) built from a pool of distinct template sentences. By default each chunk's vector is the
normalised mean of the real all-MiniLM-L6-v2 embeddings of its sentences (the pool is embedded for real,
~3,000 sentences), which keeps the set-up to minutes on 2 cores; ``--exact-embeddings`` embeds every
chunk with the model instead (about 10+ minutes per 100k chunks on 2 cores). Either way the vectors are
cached under ``benchmarks/.cache/serve/`` and the loaded index is kept in the bench's own Postgres under
``--home`` (default ``benchmarks/.cache/serve/home``), so a second run starts measuring at once.

Usage: python benchmarks/bench_serve.py [--chunks 100000] [--corpus auto|knowledge|synthetic] [--runs 3] [--gen-questions 3]
       [--max-new-tokens N] [--skip-generation] [--skip-swap] [--exact-embeddings] [--json]
       [--load [--load-clients 8] [--load-seconds 60] [--before REV] [--skip-no-prefix] [--unmixed]] [--tracing]
       --medians benchmarks/results/serve-*.json   (medians of several --load runs, and their ratios)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "serve"
RESULTS = REPO / "benchmarks" / "results"
SEED = 20261122
INDEX = "bench_serve"
CHUNKS_PER_DOC = 5

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TOPICS = {
    "billing": ["invoices", "the billing contact", "a credit card", "annual billing", "a refund", "VAT numbers"],
    "plans": ["the Free plan", "the Starter plan", "the Pro plan", "the Business plan", "the Enterprise plan"],
    "monitors": ["HTTP monitors", "keyword monitors", "DNS monitors", "TCP monitors", "heartbeat monitors"],
    "alerts": ["alert policies", "escalations", "SMS alerts", "email alerts", "voice calls", "quiet hours"],
    "status pages": ["a status page", "a custom domain", "subscribers", "incident updates", "a logo"],
    "integrations": ["Slack", "Microsoft Teams", "PagerDuty", "Opsgenie", "webhooks", "Zapier", "Datadog"],
    "security": ["single sign-on", "two-factor authentication", "the audit log", "API keys", "data residency"],
    "agents": ["the private agent", "agent v1", "the Docker image", "probe locations", "the agent token"],
    "limits": ["the API rate limit", "file uploads", "data retention", "check intervals", "team seats"],
    "support": ["the SLA", "severity levels", "the support portal", "response times", "account cancellation"],
}
TEMPLATES = [
    "To configure {x}, open Settings and choose {topic}; changes apply within {n} seconds.",
    "{X} is available on plans from {plan} upward and is limited to {n} per account.",
    "If {x} stops working, check the {topic} log for error {code} and retry after {n} minutes.",
    "Administrators can export {x} as CSV from the {topic} page at any time.",
    "Since release {ver}, {x} supports regions in {region} and keeps history for {n} days.",
    "{X} costs ${price} per month as an add-on, billed with the {topic} invoice.",
    "The {topic} API exposes {x} at /v2/{slug} with a limit of {n} requests per minute.",
    "Teams on {plan} can assign {x} to up to {n} members with the editor role.",
    "When {x} changes, Beacon notifies the owners by email and records it in the audit log.",
    "Deleting {x} is permanent after {n} days; before that, support can restore it.",
]
PLANS = ["Free", "Starter", "Pro", "Business", "Enterprise"]
REGIONS = ["the EU", "the US", "Asia-Pacific", "the UK", "Canada"]


def log(msg: str) -> None:
    print(f"[bench-serve {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 2), "p95": round(pct(values, 0.95), 2), "n": len(values),
            "min": round(min(values), 2), "max": round(max(values), 2)}


# --- the corpus


def sentence_pool(seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    pool = set()
    for topic, things in sorted(TOPICS.items()):
        for thing in things:
            for template in TEMPLATES:
                for _ in range(5):
                    pool.add(template.format(
                        x=thing, X=thing[0].upper() + thing[1:], topic=topic, n=rng.choice([5, 10, 15, 30, 60, 90, 100, 500]),
                        plan=rng.choice(PLANS), code=rng.randint(400, 599), ver=f"{rng.randint(1, 4)}.{rng.randint(0, 12)}",
                        region=rng.choice(REGIONS), price=rng.choice([5, 9, 19, 29, 49, 99]),
                        slug=thing.replace(" ", "-").lower()))
    return sorted(pool)


def corpus(n: int, pool: list[str], seed: int = SEED) -> list[dict]:
    """``n`` chunks: 3 sentences each from one topic's sentences, 5 chunks per document. Deterministic."""
    rng = random.Random(seed + n)
    by_topic: dict[str, list[int]] = {}
    for i, sentence in enumerate(pool):
        topic = next((t for t in sorted(TOPICS) if t in sentence), None) or "general"
        by_topic.setdefault(topic, []).append(i)
    topics = sorted(by_topic)
    rows = []
    for c in range(n):
        doc = c // CHUNKS_PER_DOC
        topic = topics[doc % len(topics)]
        picks = rng.sample(by_topic[topic], 3)
        doc_id = f"bench/{topic.replace(' ', '-')}/doc-{doc:06d}.md"
        rows.append({"chunk_id": f"{doc_id}#{c % CHUNKS_PER_DOC}", "doc_id": doc_id, "ordinal": c % CHUNKS_PER_DOC,
                     "title": f"{topic.title()} guide {doc}", "heading_path": f"{topic.title()} > Part {c % CHUNKS_PER_DOC + 1}",
                     "text": " ".join(pool[i] for i in picks), "sentences": picks})
    return rows


def vectors(rows: list[dict], pool: list[str], exact: bool, embedder):
    """Chunk vectors (cached): mean of the real sentence embeddings, or the real chunk embeddings."""
    import numpy as np

    digest = hashlib.sha256(("\n".join(r["text"] for r in rows[:1000]) + str(len(rows)) + embedder.ref).encode()).hexdigest()[:12]
    path = CACHE / f"vectors-{'exact' if exact else 'mean'}-{len(rows)}-{digest}.npy"
    if path.exists():
        log(f"vectors from cache {path.relative_to(REPO)}")
        return np.load(path), path
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if exact:
        texts = [f"{r['title']}\n{r['heading_path']}\n{r['text']}" for r in rows]
        out = []
        for start in range(0, len(texts), 256):
            out.append(embedder.encode(texts[start:start + 256]))
            done = start + len(out[-1])
            if done % 5120 < 256:
                rate = done / (time.monotonic() - started)
                log(f"embedded {done}/{len(texts)} chunks ({rate:.0f}/s)")
        vecs = np.concatenate(out)
    else:
        sent = embedder.encode(pool)
        log(f"embedded the sentence pool: {len(pool)} sentences in {time.monotonic() - started:.1f}s")
        idx = np.array([r["sentences"] for r in rows])
        vecs = sent[idx].mean(axis=1)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs.astype(np.float32)
    np.save(path, vecs)
    log(f"vectors: {len(vecs)} in {time.monotonic() - started:.1f}s, cached at {path.relative_to(REPO)}")
    return vecs, path


def knowledge_corpus(n: int):
    """(rows, vectors, queries) of the knowledge benchmark's cached corpus, or None when it is not cached."""
    import numpy as np

    folder = REPO / "benchmarks" / ".cache" / "knowledge"
    cached = []
    for path in folder.glob("query-chunks-7-*.npy"):
        try:
            size = int(path.stem.rsplit("-", 1)[1])
        except ValueError:
            continue
        if size >= n:
            cached.append((size, path))
    if not cached:
        return None
    _size, path = min(cached)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import knowledge_corpus as kc

    vecs = np.load(path, mmap_mode="r")[:n]
    rows = []
    for i in range(n):
        title, heading, text = kc.chunk_text(i)
        doc_id = f"bench/doc-{i // CHUNKS_PER_DOC:06d}.md"
        rows.append({"chunk_id": f"{doc_id}#{i % CHUNKS_PER_DOC}", "doc_id": doc_id, "ordinal": i % CHUNKS_PER_DOC,
                     "title": title, "heading_path": heading, "text": text})
    log(f"corpus: the knowledge benchmark's {n} chunks with real embeddings from {path.relative_to(REPO)}")
    return rows, np.asarray(vecs, dtype=np.float32), [kc.query(i) for i in range(36)]


def load_index(settings, rows: list[dict], vecs) -> str:
    """The corpus as the live space of index ``bench_serve`` (the knowledge cadence's own tables)."""
    from psycopg import sql

    from tandem import db
    from tandem.knowledge import fingerprint, releases, spaces, store

    n = store.names(settings.index_name)
    fp, spec, info, _ = fingerprint.current(settings)
    with db.connection(settings.db_url) as conn:
        store.ensure_schema(conn, n)
        live = spaces.live(conn, n)
        if live is not None:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {v}").format(v=db.ident(n.live_view))).fetchone()[0]
            first = conn.execute(sql.SQL("SELECT text FROM {t} WHERE chunk_id = %s").format(t=db.ident(live.table)),
                                 (rows[0]["chunk_id"],)).fetchone()
            if count == len(rows) and first and first[0] == rows[0]["text"]:
                log(f"index {settings.index_name} already holds the {count} chunks (version {live.index_version})")
                return live.index_version
            raise SystemExit(f"index {settings.index_name} in {settings.home} holds another corpus ({count} chunks): "
                             f"delete {settings.home} or pass another --home")
        space, _mode = spaces.target(conn, n, fp, spec, info.dim, full=True)
        table = db.ident(space.table)
        started = time.monotonic()
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {i}").format(i=db.ident(space.table + "_hnsw")))
        release = releases.allocate(conn, n, space.space_no, "bench-serve-load")
        with conn.cursor().copy(sql.SQL(
                "COPY {t} (chunk_id, rel_from, doc_id, ordinal, doc_hash, source, uri, title, heading_path, text, "
                "fingerprint, embedding) FROM STDIN").format(t=table)) as copy:
            for r, v in zip(rows, vecs):
                copy.write_row((r["chunk_id"], release, r["doc_id"], r["ordinal"], "bench", "bench",
                                f"file:///bench/{r['doc_id']}", r["title"], r["heading_path"], r["text"], fp,
                                "[" + ",".join(f"{x:.6f}" for x in v) + "]"))
        conn.commit()
        log(f"copied {len(rows)} chunks in {time.monotonic() - started:.1f}s; building the HNSW index")
        started = time.monotonic()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(sql.SQL("CREATE INDEX {i} ON {t} USING hnsw (embedding vector_cosine_ops)")
                     .format(i=db.ident(space.table + "_hnsw"), t=table))
        conn.execute(sql.SQL("ANALYZE {t}").format(t=table))
        drop = releases.publish(conn, n, space, release, "bench-serve-load", switch=True, counts={"new": len(rows)},
                                canary=None)
        conn.commit()
        spaces.drop_tables(conn, drop)
        log(f"HNSW built in {time.monotonic() - started:.1f}s; release {release} published")
        return release


# --- the figures


def bench_retrieval(settings, queries: list[str], runs: int) -> dict:
    from tandem import db
    from tandem.knowledge import search, spaces, store
    from tandem.knowledge.search import embedder_for, search_space

    search.search(settings, queries[0], k=5)  # warm: model, connection, caches
    conn = db.connect(settings.db_url)
    space = spaces.live(conn, store.names(settings.index_name))
    embedder = embedder_for(settings, space)
    conn.rollback()
    e2e, sql_only, embed = [], [], []
    by_mode: dict[str, list[float]] = {"vector": [], "keyword": []}
    for _ in range(runs):
        for q in queries:
            t0 = time.perf_counter()
            search.search(settings, q, k=5)
            e2e.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            vec = embedder.encode([q])[0]
            embed.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            search_space(conn, space.table, q, vec, release=space.index_version, k=5, ef_search=settings.hnsw_ef_search)
            sql_only.append((time.perf_counter() - t0) * 1000)
            conn.rollback()
            for mode, times in by_mode.items():  # where the SQL time goes
                t0 = time.perf_counter()
                search_space(conn, space.table, q, vec, release=space.index_version, k=5, mode=mode, ef_search=settings.hnsw_ef_search)
                times.append((time.perf_counter() - t0) * 1000)
                conn.rollback()
    conn.close()
    return {"search_ms": summary(e2e), "sql_ms": summary(sql_only), "query_embedding_ms": summary(embed),
            "sql_vector_only_ms": summary(by_mode["vector"]), "sql_keyword_only_ms": summary(by_mode["keyword"])}


def bench_answers(settings, questions: list[str], runs: int) -> dict:
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer

    forced = settings.replace(refusal_min_similarity=0.0)  # always generate: this measures generation
    cache = AdapterCache(forced)
    t0 = time.perf_counter()
    first = answer(forced, questions[0], adapter="base", cache=cache)
    load_s = time.perf_counter() - t0
    gen, total, retr, tokens, valid = [], [], [], [], []
    for _ in range(runs):
        for q in questions:
            a = answer(forced, q, adapter="base", cache=cache)
            gen.append(a.timings["generation_ms"])
            total.append(a.timings["total_ms"])
            retr.append(a.timings["retrieval_ms"])
            stats = cache.load("base").generator.last_stats
            tokens.append(stats.get("new_tokens", 0) / max(stats.get("seconds", 1e-9), 1e-9))
            valid.append(a.valid)
    return {"generation_ms": summary(gen), "end_to_end_ms": summary(total), "retrieval_ms_in_answer": summary(retr),
            "new_tokens_per_s": summary(tokens), "first_answer_incl_model_load_s": round(load_s, 2),
            "contract_valid_rate": round(sum(valid) / len(valid), 3), "example_output": first.raw_output}


def bench_tracing(settings, questions: list[str], runs: int) -> dict:
    """The same answers with tracing off and on, interleaved (off, on, off, on, ...) so drift hits both alike:
    each answer's wall time from the request to its return, which with tracing on includes building the trace
    (its export to MLflow runs in MLflow's background threads, as in `tandem serve`)."""
    from tandem.serve import tracing
    from tandem.serve.adapter_cache import AdapterCache

    forced = settings.replace(refusal_min_similarity=0.0)  # always generate: every answer has all its spans
    modes = {"off": forced.replace(trace_answers=False), "on": forced.replace(trace_answers=True,
                                                                              trace_experiment="tandem-serving-bench")}
    cache = AdapterCache(forced)
    tracing.answer(modes["on"], questions[0], source="bench", adapter="base", cache=cache, wait=True)  # warm both
    walls: dict[str, list[float]] = {"off": [], "on": []}
    seconds = {"off": 0.0, "on": 0.0}
    for run in range(runs):
        for q in questions:
            for mode in (("off", "on") if run % 2 == 0 else ("on", "off")):
                t0 = time.perf_counter()
                result, trace_id = tracing.answer(modes[mode], q, source="bench", adapter="base", cache=cache)
                walls[mode].append((time.perf_counter() - t0) * 1000)
                seconds[mode] += walls[mode][-1] / 1000
                assert (trace_id is not None) == (mode == "on"), (mode, trace_id)
    tracing.tracer_for(modes["on"]).flush()
    state = tracing.tracer_for(modes["on"]).state()
    out = {mode: {"answer_ms": summary(w), "answers_per_s": round(len(w) / seconds[mode], 4)}
           for mode, w in walls.items()}
    out["traces"] = {"recorded": state["recorded"], "dropped": state["dropped"]}
    out["p50_overhead"] = round(out["on"]["answer_ms"]["p50"] / out["off"]["answer_ms"]["p50"] - 1, 4)
    return out


def register_two_adapters(settings, work: Path) -> list[str]:
    """Two real LoRA adapters (random init, so they change the logits), registered as MLflow pyfunc versions.

    Their B matrices are scaled by 0.3: each version then answers in words, as a trained adapter does, and
    the two answer differently. (At full scale, random B made version 2's first token end-of-sequence: empty
    answers that cost one prefill each and counted as answers, so they inflated every answers/s figure.)"""
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tandem import tracking
    from tandem import registry
    from tandem.serve import pyfunc
    from tandem.models import base_model_sha256, weights_sha256

    versions = []
    for seed in (1, 2):
        folder = work / f"adapter-{seed}-b0.3"
        if not (folder / "adapter_config.json").exists():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
            peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                    init_lora_weights=False, task_type="CAUSAL_LM"))
            with torch.no_grad():
                for name, param in peft.named_parameters():
                    if "lora_B" in name:
                        param.mul_(0.3)
            peft.save_pretrained(folder)
        base_sha = base_model_sha256(settings.base_model)
        tracking.use(settings, tracking.EXPERIMENT_TRAINING)
        with mlflow.start_run(run_name=f"bench-serve adapter {seed}") as run:
            info = pyfunc.log_adapter_model(folder, base_model=settings.base_model, base_sha256=base_sha, metrics={})
        tags = tracking.tags(base_model=settings.base_model, base_model_sha256=base_sha,
                             adapter_sha256=weights_sha256(folder))
        versions.append(registry.register_version(settings, run.info.run_id, tags=tags, description="bench-serve",
                                                  model_info=info))
    return versions


def bench_swap(settings, question: str, runs: int, work: Path) -> dict:
    """Champion moves between two real adapters; the first request after each move vs a steady one."""
    from tandem import registry
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer

    versions = register_two_adapters(settings, work)
    forced = settings.replace(refusal_min_similarity=0.0, champion_check_seconds=0)
    registry.promote(forced, versions[0], reason="bench-serve")
    cache = AdapterCache(forced, check_seconds=0, max_loaded=1)  # one adapter in memory: every swap loads
    answer(forced, question, cache=cache)  # warm: the first champion is loaded
    first_ms, load_s, steady_ms, check_ms = [], [], [], []
    for i in range(runs):
        target = versions[(i + 1) % 2]
        registry.promote(forced, target, reason="bench-serve swap")
        t0 = time.perf_counter()
        a = answer(forced, question, cache=cache)
        first_ms.append((time.perf_counter() - t0) * 1000)
        assert a.adapter == f"v{target}", a.adapter
        load_s.append(cache.last_load_seconds)
        t0 = time.perf_counter()
        answer(forced, question, cache=cache)
        steady_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        cache.key_for("champion")  # the alias check alone (MLflow round trip)
        check_ms.append((time.perf_counter() - t0) * 1000)
    return {"first_request_after_change_ms": summary(first_ms), "adapter_load_s": summary(load_s),
            "steady_request_ms": summary(steady_ms), "alias_check_ms": summary(check_ms), "swaps": cache.swaps}


def _serve_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def bench_load(settings, questions: list[str], work: Path, *, clients: int = 8, seconds: float = 60,
               flip_every: float = 5, batch_max: int | None = None, window_ms: int | None = None,
               prefix_cache_mb: int | None = None, mix: bool | None = None, versions: list[str] | None = None,
               code: Path | None = None) -> dict:
    """`tandem serve` under load: ``clients`` concurrent askers for ``seconds`` while the champion alias flips
    between two real adapters every ``flip_every`` s. Every answer must be 2xx and name a version that was
    champion at some moment of its request. ``batch_max`` / ``window_ms`` / ``prefix_cache_mb``: the serve
    process's batching (``batch_max=1, window_ms=0, prefix_cache_mb=0``: one answer at a time, as before
    batching). ``code``: a folder holding another revision's ``include/`` (``code_at``), whose `tandem serve`
    runs instead of this tree's (the same venv, models and stack). Also measured before the load:
    a request alone (median of 3) and the time to the first streamed token."""
    import subprocess
    import threading

    import httpx

    from tandem import registry
    from tandem.stack import process

    versions = versions or register_two_adapters(settings, work)
    batching = {k: v for k, v in {"serve_batch_max": batch_max, "serve_batch_window_ms": window_ms,
                                  "serve_prefix_cache_mb": prefix_cache_mb,
                                  "serve_mix_adapters": mix}.items() if v is not None}
    forced = settings.replace(refusal_min_similarity=0.0, champion_check_seconds=0, serve_port=process.free_port(),
                              serve_token="bench-" + os.urandom(6).hex(), serve_queue_max=max(32, 4 * clients),
                              **batching)
    registry.promote(forced, versions[0], reason="bench-serve load")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(forced.as_env())
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code / "include"), env.get("PYTHONPATH")]))
    serve = subprocess.Popen([str(Path(sys.executable).parent / "tandem"), "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{forced.serve_port}"
    headers = {"Authorization": f"Bearer {forced.serve_token}"}
    flips: list[tuple[float, float, str]] = [(0.0, time.monotonic(), versions[0])]
    records: list[dict] = []
    rss_peak = [0]
    stop = threading.Event()
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        warm = httpx.post(f"{url}/api/ask", json={"question": questions[0]}, headers=headers, timeout=600)
        alone = []
        for q in questions[1:4]:
            t0 = time.monotonic()
            httpx.post(f"{url}/api/ask", json={"question": q}, headers=headers, timeout=600).raise_for_status()
            alone.append((time.monotonic() - t0) * 1000)
        first_token = []
        for q in questions[1:4]:
            t0 = time.monotonic()
            with httpx.stream("POST", f"{url}/api/ask", json={"question": q, "stream": True}, headers=headers,
                              timeout=600) as resp:
                for line in resp.iter_lines():
                    if line.startswith("event: token") and len(first_token) < len(alone):
                        first_token.append((time.monotonic() - t0) * 1000)
        log(f"load: serve warm ({warm.status_code}, {warm.json().get('adapter')}); {clients} clients for {seconds:.0f}s, "
            f"champion flips every {flip_every:.0f}s")

        def flipper() -> None:
            i = 1
            while not stop.wait(flip_every):
                target = versions[i % 2]
                before = time.monotonic()
                registry.promote(forced, target, reason="bench-serve flip")
                flips.append((before, time.monotonic(), target))
                i += 1

        def client(n: int) -> None:
            with httpx.Client(timeout=600) as http:
                j = n
                while not stop.is_set():
                    q = questions[j % len(questions)]
                    j += 1
                    t0 = time.monotonic()
                    try:
                        resp = http.post(f"{url}/api/ask", json={"question": q}, headers=headers)
                        body = resp.json()
                        status, adapter = resp.status_code, body.get("adapter")
                        said = body.get("raw_output", body.get("answer"))  # the model's own text
                    except httpx.HTTPError as exc:
                        status, adapter, said = 599, type(exc).__name__, None
                    records.append({"t0": t0, "t1": time.monotonic(), "status": status, "adapter": adapter,
                                    "question": q, "answer": said})

        def sampler() -> None:
            while not stop.wait(0.5):
                rss_peak[0] = max(rss_peak[0], _serve_rss(serve.pid))

        threads = [threading.Thread(target=flipper), threading.Thread(target=sampler),
                   *[threading.Thread(target=client, args=(n,)) for n in range(clients)]]
        before = _health_queue(url)  # the counters so far hold the warm-up and the requests alone
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=900)
        wall = time.monotonic() - started
        queue = _health_queue(url)
    finally:
        serve.terminate()
        serve.wait(timeout=60)

    def champion_during(label: str, t0: float, t1: float) -> bool:
        """Was ``label``'s version champion at some moment of [t0, t1]? (flip windows count for both sides)."""
        for i, (_before, after, version) in enumerate(flips):
            start = flips[i][0] if i else 0.0
            end = flips[i + 1][1] if i + 1 < len(flips) else float("inf")
            if label == f"v{version}" and start <= t1 and t0 <= end:
                return True
        return False

    ok = [r for r in records if 200 <= r["status"] < 300]
    return {
        "clients": clients, "seconds": round(wall, 1), "flips": len(flips) - 1, "requests": len(records),
        "answers_2xx": len(ok), "responses_5xx": sum(1 for r in records if r["status"] >= 500),
        "other_status": sorted({r["status"] for r in records if not (200 <= r["status"] < 300 or r["status"] >= 500)}),
        "answers_per_s": round(len(ok) / wall, 3),
        "empty_answers": sum(1 for r in ok if not str(r["answer"] or "").strip()),  # the model said nothing
        "latency_ms": summary([(r["t1"] - r["t0"]) * 1000 for r in ok]) if ok else None,
        "by_version": {v: sum(1 for r in ok if r["adapter"] == f"v{v}") for v in versions},
        "misattributed": sum(1 for r in ok if not champion_during(r["adapter"], r["t0"], r["t1"])),
        "serve_peak_rss_mb": round(rss_peak[0] / 2**20, 1),
        "batch_max": forced.serve_batch_max, "batch_window_ms": forced.serve_batch_window_ms,
        "prefix_cache_mb": forced.serve_prefix_cache_mb, "prefix_cache": queue.get("prefix_cache"),
        "batch_sizes": queue.get("batch_sizes"), "mean_batch_size": queue.get("mean_batch_size"),
        "mean_rows_per_step": queue.get("mean_rows_per_step"),
        "mix_adapters": forced.serve_mix_adapters, "mixed_steps": queue.get("mixed_steps"),
        "decode_steps": queue.get("decode_steps"),
        "decode_seconds": queue.get("decode_seconds"), "prefill_seconds": queue.get("prefill_seconds"),
        "window": _window_figures(before, queue, ok, started, seconds),
        "alone_ms": summary(alone), "first_token_ms": summary(first_token) if first_token else None,
        "versions": versions, "code": str(code) if code else "this tree",
        "answer_digests": _answer_digests(ok, versions),
    }


def _health_queue(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=10).json().get("queue", {})


def _window_figures(before: dict, after: dict, ok: list[dict], started: float, seconds: float) -> dict:
    """The load window alone: the serve counters' change from its start to the end (without the warm-up and
    the requests alone, which decode one row per step), and the answers finished inside the window per second
    (the headline ``answers_per_s`` also counts the drain after it, when fewer rows are left)."""
    figures = {"answers_per_s": round(sum(1 for r in ok if r["t1"] <= started + seconds) / seconds, 3)}
    if "decode_rows" not in after:
        return figures  # a serve without these counters (the code before batching)

    def delta(key: str) -> float:
        return (after.get(key) or 0) - (before.get(key) or 0)

    steps = delta("decode_steps")
    if steps <= 0:
        return figures
    figures.update({"decode_steps": steps, "mixed_steps": delta("mixed_steps"),
                    "rows_per_step": round(delta("decode_rows") / steps, 2),
                    "decode_seconds": round(delta("decode_seconds"), 1),
                    "prefill_seconds": round(delta("prefill_seconds"), 1)})
    return figures


def _answer_digests(ok: list[dict], versions: list[str]) -> list[list[str]]:
    """[which adapter (0 or 1, by its place in ``versions``), question, sha256 of the model's output] of every
    answer: arms register their own versions of the same two adapters, so the place names the weights."""
    out = []
    for r in ok:
        place = versions.index(r["adapter"][1:]) if str(r["adapter"])[1:] in versions else -1
        text = json.dumps(r["answer"], sort_keys=True, ensure_ascii=False)
        out.append([str(place), r["question"], hashlib.sha256(text.encode()).hexdigest()[:16]])
    return out


def compare_answers(arms: dict) -> None:
    """Greedy decoding answers a question the same whichever way it is served: for every arm, count the
    answers whose text differs from the first arm's answer to the same question by the same adapter
    (``answers_unlike_first_arm``, of ``answers_compared``), and the questions one arm answered two ways
    (``questions_answered_two_ways``). Written into each arm's figures."""
    names = list(arms)
    reference: dict[tuple[str, str], set[str]] = {}
    for place, question, digest in arms[names[0]].get("answer_digests", []):
        reference.setdefault((place, question), set()).add(digest)
    for name in names:
        seen: dict[tuple[str, str], set[str]] = {}
        compared = unlike = 0
        for place, question, digest in arms[name].get("answer_digests", []):
            seen.setdefault((place, question), set()).add(digest)
            if (place, question) in reference:
                compared += 1
                unlike += digest not in reference[(place, question)]
        arms[name]["answers_compared"], arms[name]["answers_unlike_first_arm"] = compared, unlike
        arms[name]["questions_answered_two_ways"] = sum(1 for d in seen.values() if len(d) > 1)


LOAD_FIGURES = [("answers/s", "answers_per_s"), ("p50 ms", "latency_ms.p50"), ("p95 ms", "latency_ms.p95"),
                ("alone ms", "alone_ms.p50"), ("first token ms", "first_token_ms.p50"),
                ("peak RSS MB", "serve_peak_rss_mb"), ("answers", "answers_2xx"), ("5xx", "responses_5xx"),
                ("misattributed", "misattributed"), ("unlike 1st arm", "answers_unlike_first_arm"),
                ("mean batch", "mean_batch_size"), ("rows/step", "mean_rows_per_step"),
                ("mixed steps", "mixed_steps"), ("empty answers", "empty_answers"),
                ("window ans/s", "window.answers_per_s"), ("window rows/step", "window.rows_per_step"),
                ("window mixed", "window.mixed_steps"), ("window steps", "window.decode_steps"),
                ("prefix reused", "prefix_cache.reused_share")]


def _figure(arm: dict, path: str):
    for part in path.split("."):
        arm = arm.get(part) if isinstance(arm, dict) else None
    return arm


def load_medians(paths: list[Path]) -> str:
    """The medians of the --load figures of several result files, arm by arm, and the ratio of each batched
    arm to each one-at-a-time arm (median of the runs' ratios, and each run's)."""
    import statistics

    runs = [json.loads(Path(p).read_text()).get("load") or {} for p in paths]
    runs = [r for r in runs if r]
    if not runs:
        raise SystemExit(f"--medians: none of {', '.join(map(str, paths))} holds --load figures")
    arms = [name for name in runs[0] if all(name in r for r in runs)]
    lines = [f"--load medians of {len(runs)} runs ({', '.join(Path(p).name for p in paths)})",
             f"{'arm':<36}" + "".join(f"{label:>14}" for label, _ in LOAD_FIGURES)]
    for name in arms:
        cells = []
        for _, key in LOAD_FIGURES:
            values = [v for v in (_figure(r[name], key) for r in runs) if v is not None]
            cells.append(f"{statistics.median(values):>14g}" if values else f"{'-':>14}")
        lines.append(f"{name:<36}" + "".join(cells))
    for base in [n for n in arms if n.startswith("one_at_a_time")]:
        for name in [n for n in arms if n.startswith("batched")]:
            for label, key in (("answers/s", "answers_per_s"), ("p50", "latency_ms.p50"), ("p95", "latency_ms.p95"),
                               ("alone", "alone_ms.p50")):
                ratios = [_figure(r[name], key) / _figure(r[base], key) for r in runs]
                lines.append(f"  {name} vs {base}, {label}: x{statistics.median(ratios):.2f} "
                             f"(runs {', '.join(f'x{x:.2f}' for x in ratios)})")
    return "\n".join(lines)


def code_at(rev: str) -> Path:
    """``include/`` of git revision ``rev`` of this repository, unpacked once under the bench cache."""
    import io
    import subprocess
    import tarfile

    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = CACHE / f"code-{sha[:12]}"
    if not (dest / "include" / "tandem").is_dir():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "include"], check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--corpus", choices=("auto", "knowledge", "synthetic"), default="auto",
                   help="knowledge: the knowledge benchmark's cached real embeddings; synthetic: this script's own")
    p.add_argument("--runs", type=int, default=3, help="repetitions (>= 3) of every measured set")
    p.add_argument("--gen-questions", type=int, default=3, help="questions per generation run")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the spec's generation budget")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-swap", action="store_true")
    p.add_argument("--before", metavar="REV",
                   help="--load: also serve one answer at a time with the code of git revision REV (say, the "
                        "commit before continuous batching), first, in the same run")
    p.add_argument("--skip-no-prefix", action="store_true",
                   help="--load: leave out the arm batched without the prefix cache")
    p.add_argument("--unmixed", action="store_true",
                   help="--load: add the arm batched with one batch per version (TANDEM_SERVE_MIX_ADAPTERS=false)")
    p.add_argument("--tracing", action="store_true",
                   help="also answers with tracing off and on, interleaved, against a real MLflow server")
    p.add_argument("--load", action="store_true",
                   help="also the load mode: `tandem serve` with 8 clients for 60 s while the champion flips every 5 s")
    p.add_argument("--load-clients", type=int, default=8)
    p.add_argument("--load-seconds", type=float, default=60)
    p.add_argument("--exact-embeddings", action="store_true", help="embed every chunk with the model (slow, cached)")
    p.add_argument("--home", type=Path, default=CACHE / "home", help="the bench's own state (Postgres, MLflow)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 by default: on a busy 2-core machine 2 threads were ~7x slower, see the report)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--medians", nargs="+", type=Path, metavar="RESULT",
                   help="print the medians of the --load figures of these result files (benchmarks/results/"
                        "serve-*.json) and the before/after ratios, and measure nothing")
    args = p.parse_args(argv)
    if args.medians:
        print(load_medians(args.medians))
        return 0
    if args.runs < 3:
        p.error("--runs must be >= 3 (figures are medians of at least 3 runs)")

    import torch

    torch.set_num_threads(args.threads)
    from tandem.config import Settings
    from tandem.stack import postgres, process, services

    home = args.home.resolve()
    pgdata = home / "postgres" / "data"
    started_pg = postgres.start(pgdata)
    postgres.ensure_databases(pgdata)
    settings = Settings.load(home=home, index_name=INDEX, torch_threads=args.threads,
                             base_model=str(REPO / ".tandem" / "models" / "SmolLM2-135M-Instruct")
                             if not os.environ.get("TANDEM_BASE_MODEL") else os.environ["TANDEM_BASE_MODEL"])
    if args.max_new_tokens:
        import yaml

        spec = yaml.safe_load(Path(settings.spec_path).read_text())
        spec["generation"]["max_new_tokens"] = args.max_new_tokens
        spec_path = home / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        settings = settings.replace(spec_path=str(spec_path))
    mlflow_service = None
    results: dict = {"chunks": args.chunks, "runs": args.runs, "threads": args.threads, "cpu_count": os.cpu_count(),
                     "load_avg_start": os.getloadavg()[0], "embeddings": "exact" if args.exact_embeddings else "sentence-mean"}
    try:
        from tandem.knowledge.embedding import get_embedder
        from tandem.models import embedding_model_path

        embedder = get_embedder(embedding_model_path(settings.embed_model), args.threads, settings.embed_backend,
                                settings.models_dir)
        golden = [json.loads(line)["query"] for line in
                  (REPO / "include/tandem/data/demo/golden_retrieval.jsonl").read_text().splitlines() if line.strip()]
        shared = None if args.corpus == "synthetic" or args.exact_embeddings else knowledge_corpus(args.chunks)
        if shared is None and args.corpus == "knowledge":
            raise SystemExit(f"the knowledge benchmark's cache of {args.chunks} chunk embeddings is missing: "
                             f"run `make bench-knowledge` first, or use --corpus synthetic")
        if shared is not None:
            rows, vecs, queries = shared
            settings = settings.replace(index_name=INDEX + "_kc")
            results["embeddings"] = "exact (knowledge benchmark cache)"
        else:
            pool = sentence_pool()
            rows = corpus(args.chunks, pool)
            vecs, _path = vectors(rows, pool, args.exact_embeddings, embedder)
            queries = golden
        results["index_version"] = load_index(settings, rows, vecs)
        log(f"retrieval: {len(queries)} queries x {args.runs} runs at {args.chunks} chunks")
        results["retrieval"] = bench_retrieval(settings, queries, args.runs)
        if not args.skip_generation:
            questions = golden[:args.gen_questions]
            log(f"generation / end to end: {len(questions)} questions x {args.runs} runs (base model, CPU)")
            results["answer"] = bench_answers(settings, questions, args.runs)
        if not args.skip_swap:
            settings = settings.replace(mlflow_port=process.free_port())
            settings = settings.replace(mlflow_uri=f"http://{settings.bind_host}:{settings.mlflow_port}")
            mlflow_service = services.mlflow_service(settings)
            process.start(mlflow_service, settings.run_dir, settings.logs_dir)
            process.wait_healthy(mlflow_service, settings.run_dir, settings.logs_dir, timeout=180)
            log(f"champion swaps: {args.runs} alias moves between two real LoRA adapters")
            results["swap"] = bench_swap(settings, golden[0], args.runs, home)
        if args.tracing or args.load:
            if mlflow_service is None:
                settings = settings.replace(mlflow_port=process.free_port())
                settings = settings.replace(mlflow_uri=f"http://{settings.bind_host}:{settings.mlflow_port}")
                mlflow_service = services.mlflow_service(settings)
                process.start(mlflow_service, settings.run_dir, settings.logs_dir)
                process.wait_healthy(mlflow_service, settings.run_dir, settings.logs_dir, timeout=180)
        if args.tracing:
            questions = golden[:args.gen_questions]
            log(f"tracing: {len(questions)} questions x {args.runs} runs, off and on (base model, CPU)")
            results["tracing"] = bench_tracing(settings, questions, args.runs)
        if args.load:
            # before and after in one run: one answer at a time (batch 1, no prefix cache, as before
            # batching), continuous batching without the prefix cache, then the defaults (both)
            if args.before:
                # serving as it was at that revision, one answer at a time (its own code, same machine)
                results["load"] = {f"one_at_a_time_at_{args.before}": bench_load(
                    settings, golden, home, clients=args.load_clients, seconds=args.load_seconds,
                    batch_max=1, window_ms=0, code=code_at(args.before))}
            before = bench_load(settings, golden, home, clients=args.load_clients,
                                seconds=args.load_seconds, batch_max=1, window_ms=0, prefix_cache_mb=0, mix=False)
            results.setdefault("load", {})["one_at_a_time"] = before
            if not args.skip_no_prefix:
                results["load"]["batched_no_prefix_cache"] = bench_load(
                    settings, golden, home, clients=args.load_clients, seconds=args.load_seconds,
                    prefix_cache_mb=0, versions=before["versions"])
            if args.unmixed:
                results["load"]["batched_unmixed"] = bench_load(
                    settings, golden, home, clients=args.load_clients, seconds=args.load_seconds, mix=False,
                    versions=before["versions"])
            results["load"]["batched"] = bench_load(settings, golden, home, clients=args.load_clients,
                                                    seconds=args.load_seconds, versions=before["versions"])
            compare_answers(results["load"])
    finally:
        if mlflow_service is not None:
            process.stop(mlflow_service, settings.run_dir)
        if started_pg:
            postgres.stop(pgdata)
    results["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"serve-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(report(results))
        print(f"(raw figures: {out.relative_to(REPO)})")
    return 0


def report(r: dict) -> str:
    lines = [f"bench-serve: {r['chunks']:,} chunks ({r['embeddings']} vectors), {r['runs']} runs, "
             f"{r['threads']} torch threads on {r['cpu_count']} CPUs (load avg {r['load_avg_start']:.1f} -> {r['load_avg_end']:.1f})",
             f"{'figure':<48} {'p50':>10} {'p95':>10}  n"]

    def row(name, s, unit="ms"):
        lines.append(f"{name:<48} {s['p50']:>8} {unit:<2} {s['p95']:>8} {unit:<2} {s['n']}")

    ret = r["retrieval"]
    row(f"retrieval: search() at {r['chunks']:,} chunks (embed + SQL)", ret["search_ms"])
    row("retrieval: SQL only (HNSW + tsvector + RRF)", ret["sql_ms"])
    row("  of which: vector list alone (HNSW)", ret["sql_vector_only_ms"])
    row("  of which: keyword list alone (tsvector)", ret["sql_keyword_only_ms"])
    row("retrieval: query embedding", ret["query_embedding_ms"])
    if "answer" in r:
        a = r["answer"]
        row("generation (base model, CPU)", a["generation_ms"])
        row("end to end: tandem ask", a["end_to_end_ms"])
        row("generation speed", a["new_tokens_per_s"], "t/s")
        lines.append(f"{'first answer incl. loading the base model':<48} {a['first_answer_incl_model_load_s']:>8} s")
        lines.append(f"{'output meets the contract (base model)':<48} {100 * a['contract_valid_rate']:>7.0f} %")
    if "swap" in r:
        s = r["swap"]
        row("first request after a champion change", s["first_request_after_change_ms"])
        row("  of which: adapter load (base + LoRA, merged)", s["adapter_load_s"], "s")
        row("steady request (same champion)", s["steady_request_ms"])
        row("alias re-check (MLflow round trip)", s["alias_check_ms"])
    if "tracing" in r:
        t = r["tracing"]
        row("answer, tracing off", t["off"]["answer_ms"])
        row("answer, tracing on (trace built, exported async)", t["on"]["answer_ms"])
        lines.append(f"  tracing cost at p50: {100 * t['p50_overhead']:+.2f} % (target <= +5 %); answers/s "
                     f"{t['off']['answers_per_s']} off, {t['on']['answers_per_s']} on; traces recorded "
                     f"{t['traces']['recorded']}, dropped {t['traces']['dropped']}")
    for name, ld in (r.get("load") or {}).items():
        lines.append(f"load, {name} (batch max {ld['batch_max']}, window {ld['batch_window_ms']} ms, "
                     f"prefix cache {ld.get('prefix_cache_mb')} MB, mixed batches {ld.get('mix_adapters', 'n/a')}): "
                     f"{ld['clients']} clients for {ld['seconds']} s, champion flipped {ld['flips']} times "
                     f"(tandem serve, peak RSS {ld['serve_peak_rss_mb']} MB)")
        if ld["latency_ms"]:
            row("  answer latency under load", ld["latency_ms"])
        row("  a request alone (no load)", ld["alone_ms"])
        if ld.get("first_token_ms"):
            row("  time to the first streamed token (no load)", ld["first_token_ms"])
        lines.append(f"  answers {ld['answers_2xx']} ({ld['answers_per_s']}/s; {ld.get('empty_answers')} empty), "
                     f"5xx {ld['responses_5xx']}, "
                     f"misattributed {ld['misattributed']}, by version {ld['by_version']}, "
                     f"batch sizes {ld['batch_sizes']} (mean {ld['mean_batch_size']}, "
                     f"{ld.get('mean_rows_per_step')} rows per decode step, {ld.get('mixed_steps')} of "
                     f"{ld.get('decode_steps')} steps mixed; {ld.get('decode_seconds')} s decoding, "
                     f"{ld.get('prefill_seconds')} s prefilling)")
        if ld.get("window"):
            w = ld["window"]
            lines.append(f"  the {ld['clients']}-client window alone: {w['answers_per_s']} answers/s finished in it"
                         + (f"; {w['rows_per_step']} rows per decode step, {w['mixed_steps']} of {w['decode_steps']} "
                            f"steps mixed, {w['decode_seconds']} s decoding, {w['prefill_seconds']} s prefilling"
                            if "decode_steps" in w else ""))
        if "answers_compared" in ld:
            lines.append(f"  answers unlike the first arm's to the same question and adapter: "
                         f"{ld['answers_unlike_first_arm']} of {ld['answers_compared']} compared; "
                         f"questions answered two ways in this arm: {ld['questions_answered_two_ways']}")
        if ld.get("prefix_cache"):
            pc = ld["prefix_cache"]
            lines.append(f"  prefix cache: {pc['entries']} prompts, {pc['mb']} MB, {pc['hits']} hits, "
                         f"reused share of prompt tokens {pc['reused_share']}")
    arms = r.get("load") or {}
    for base in [n for n in arms if n.startswith("one_at_a_time")]:
        b = arms[base]
        for name in ("batched_no_prefix_cache", "batched_unmixed", "batched"):
            a = arms.get(name)
            if b and a and b["answers_per_s"] and b["latency_ms"] and a["latency_ms"]:
                lines.append(f"  {name} vs {base}: answers/s x{a['answers_per_s'] / b['answers_per_s']:.2f}, "
                             f"p95 x{a['latency_ms']['p95'] / b['latency_ms']['p95']:.2f}, "
                             f"alone x{a['alone_ms']['p50'] / b['alone_ms']['p50']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
