"""The knowledge cadence: an incremental, crash-safe reindex of document sources into Postgres/pgvector.

One module per concern:

- ``sources``: roots + globs, listed through Airflow's ObjectStoragePath; stable doc ids.
- ``extract``: bytes -> normalised text + title (md, txt, rst, html); the content hash.
- ``store``: table names and DDL (manifest, spaces, releases, runs, checks, chunk tables, live view).
- ``diff``: the scan staged with COPY and classified in SQL (new/changed/unchanged/deleted).
- ``chunking``: structure-aware chunks (LlamaIndex node parsers) with title and heading context.
- ``embedding``: the local sentence-transformers model, batched.
- ``fingerprint``: the embedding-space fingerprint (model weights, dimension, chunker, normalisation).
- ``spaces``: embedding-space versions: shadow tables, the atomic switch.
- ``releases``: candidate releases, publish, discard, rollback, collection of superseded rows.
- ``writer``: per-document atomic writes, failures, quarantine, deletes.
- ``lock``: the per-index advisory lock / run lease.
- ``canary``: the retrieval canary (hit@k, MRR on a golden set).
- ``reindex``: orchestration (plan -> batches -> finalize), shared by the CLI and the DAG.
- ``summary``: the run summary, its text form, MLflow logging.
- ``search`` / ``retriever``: hybrid search with reciprocal-rank fusion; a LlamaIndex retriever.
- ``status``: what the index holds, for the CLI and the status page.
- ``verify``: reconciles the sources, the manifest and the published chunks; ``--repair``.
"""
