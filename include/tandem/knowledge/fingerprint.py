"""The embedding-space fingerprint: what makes two embeddings comparable.

It covers the embedding model (weights and config hashes), the runtime that computes the vectors (torch,
or an ONNX backend with its export recipe), the dimension, the chunker (name, version, sizes, context) and
the text normalisation. Every chunk row stores it; a change means a new space
(a shadow table built beside the live one, see ``spaces``).
"""

from __future__ import annotations

import hashlib
import json

from tandem.config import Settings
from tandem.knowledge.chunking import ChunkConfig
from tandem.knowledge.embedding import ModelInfo, model_info
from tandem.knowledge.extract import NORMALISATION
from tandem.models import embedding_model_path


def current(settings: Settings) -> tuple[str, dict, ModelInfo, ChunkConfig]:
    """(fingerprint, spec, model info, chunk config) of the configured embedding space."""
    info = model_info(embedding_model_path(settings.embed_model))
    chunk = ChunkConfig(chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap,
                        max_seq_length=info.max_seq_length, model_ref=info.ref)
    spec = {
        "model": {"weights_sha256": info.weights_sha256, "config_sha256": info.config_sha256},
        "dim": info.dim,
        "chunker": chunk.spec(),
        "normalisation": NORMALISATION,
    }
    if settings.embed_backend != "torch":  # torch spaces keep the fingerprint they had before backends existed
        from tandem.knowledge.onnx_backend import RECIPE

        spec["backend"] = f"{settings.embed_backend}/{RECIPE}"
    return fingerprint_of(spec), {**spec, "model_ref": info.ref}, info, chunk


def fingerprint_of(spec: dict) -> str:
    """sha256 (16 hex) of the spec without machine-specific paths."""
    stable = {k: v for k, v in spec.items() if k != "model_ref"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
