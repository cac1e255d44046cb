"""A LlamaIndex retriever over Tandem's knowledge index, for LlamaIndex query engines.

    from tandem.config import Settings
    from tandem.knowledge.retriever import TandemRetriever
    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = TandemRetriever(Settings.load(), k=5)
    nodes = retriever.retrieve("How much does the Pro plan cost?")

It calls ``tandem.knowledge.search.search`` (hybrid with reciprocal-rank fusion, live space only); each node
is a ``TextNode`` whose id is the chunk id, with doc id, title, uri, heading path and the vector similarity in
its metadata, and the fused score as its score.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from tandem.config import Settings
from tandem.knowledge.search import search


class TandemRetriever(BaseRetriever):
    def __init__(self, settings: Settings, k: int = 5, filters: dict | None = None, mode: str = "hybrid",
                 **kwargs: Any):
        super().__init__(**kwargs)
        self._settings, self._k, self._filters, self._mode = settings, k, filters, mode

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = search(self._settings, query_bundle.query_str, k=self._k, filters=self._filters, mode=self._mode)
        out = []
        for h in hits:
            node = TextNode(id_=h.chunk_id, text=h.text, metadata={
                "doc_id": h.doc_id, "title": h.title, "uri": h.uri, "heading_path": h.heading_path,
                "location": h.location, "vector_similarity": h.vector_similarity})
            node.excluded_embed_metadata_keys = list(node.metadata)
            out.append(NodeWithScore(node=node, score=h.score))
        return out
