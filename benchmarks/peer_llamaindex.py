"""The peer of the knowledge benchmark: the stock LlamaIndex IngestionPipeline, one run per process.

What a user would write instead of Tandem, from LlamaIndex's own "document management" recipe: a
SimpleDirectoryReader over the folder (file names as document ids), a SentenceSplitter with Tandem's chunk
size and overlap counted in the embedding model's own tokens, the same local all-MiniLM-L6-v2 through
HuggingFaceEmbedding (sentence-transformers, the stock embedding class), a docstore persisted between runs, and
PGVectorStore (HNSW, cosine) in the same Postgres, with ``DocstoreStrategy.UPSERTS_AND_DELETE``.

Prints one JSON line: documents read, nodes embedded, seconds of the pipeline run and of the whole process
as seen from inside. Run by ``bench_knowledge.py --only peer``; needs benchmarks/requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

STARTED = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXTS = [".md", ".markdown", ".txt", ".rst", ".html", ".htm"]  # Tandem's default include globs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--db-url", required=True, help="libpq URL (postgresql://user@/db?host=/socket/dir)")
    p.add_argument("--table", required=True)
    p.add_argument("--state", required=True, help="folder of the persisted docstore")
    p.add_argument("--model", required=True, help="local sentence-transformers folder")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--chunk-overlap", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.postgres import PGVectorStore
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    splitter = SentenceSplitter(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                                tokenizer=lambda text: tok.encode(text, add_special_tokens=False).ids)
    embed = HuggingFaceEmbedding(model_name=args.model, device="cpu", embed_batch_size=args.batch_size)
    sync_url = args.db_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    async_url = args.db_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    store = PGVectorStore(connection_string=sync_url, async_connection_string=async_url, table_name=args.table,
                          embed_dim=384, hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 64, "hnsw_ef_search": 40,
                                                      "hnsw_dist_method": "vector_cosine_ops"})
    pipeline = IngestionPipeline(transformations=[splitter, embed], docstore=SimpleDocumentStore(),
                                 vector_store=store, docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE)
    if os.path.isdir(args.state):
        pipeline.load(args.state)
    t0 = time.perf_counter()
    # exclude_hidden=False: the benchmark's folders live under benchmarks/.cache (and hold no hidden files)
    docs = SimpleDirectoryReader(args.folder, recursive=True, required_exts=EXTS, filename_as_id=True,
                                 exclude_hidden=False).load_data()
    nodes = pipeline.run(documents=docs, show_progress=False)
    pipeline.persist(args.state)
    run_s = time.perf_counter() - t0
    print(json.dumps({"docs": len(docs), "nodes_embedded": len(nodes), "run_seconds": round(run_s, 3),
                      "process_seconds": round(time.perf_counter() - STARTED, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
