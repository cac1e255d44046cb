"""The embedding model: a local sentence-transformers folder, loaded once per process, batched on CPU.

``model_info`` describes a model from its files without importing torch (the fingerprint needs it on
every run, also the ones that embed nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

from tandem.errors import UserError

log = logging.getLogger(__name__)

_CONFIG_FILES = ("modules.json", "sentence_bert_config.json", "config.json", "tokenizer.json", "vocab.txt",
                 "1_Pooling/config.json", "2_Dense/config.json")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    ref: str
    dim: int
    max_seq_length: int
    weights_sha256: str
    config_sha256: str


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=8)
def _model_info(ref: str, stamp: tuple) -> ModelInfo:
    folder = Path(ref)
    if not folder.is_dir():
        # a hub id (only where the user has network): identity is its name
        return ModelInfo(ref=ref, dim=0, max_seq_length=512, weights_sha256="hub:" + ref, config_sha256="")
    from tandem.models import weights_sha256

    weights = weights_sha256(folder)
    cfg = hashlib.sha256()
    for name in _CONFIG_FILES:
        path = folder / name
        if path.exists():
            cfg.update(name.encode())
            cfg.update(path.read_bytes())
    dim = 0
    modules = _read_json(folder / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        mtype, mpath = module.get("type", ""), module.get("path", "")
        conf = _read_json(folder / mpath / "config.json")
        if mtype.endswith("Pooling"):
            dim = int(conf.get("word_embedding_dimension") or dim)
        elif mtype.endswith("Dense"):
            dim = int(conf.get("out_features") or dim)
    if not dim:
        dim = int(_read_json(folder / "config.json").get("hidden_size") or 0)
    max_seq = int(_read_json(folder / "sentence_bert_config.json").get("max_seq_length") or 512)
    return ModelInfo(ref=str(folder), dim=dim, max_seq_length=max_seq, weights_sha256=weights,
                     config_sha256=cfg.hexdigest())


def model_info(ref: str) -> ModelInfo:
    folder = Path(ref)
    stamp: tuple = ()
    if folder.is_dir():
        stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    return _model_info(ref, stamp)


def set_threads(threads: int) -> None:
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)


class Embedder:
    """A loaded sentence-transformers model; ``encode`` returns L2-normalised float32 vectors."""

    def __init__(self, ref: str, threads: int = 0):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        set_threads(threads)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(ref, device="cpu")
        except OSError as exc:
            raise UserError(f"cannot load the embedding model {ref}: {exc}",
                            fix="set TANDEM_EMBED_MODEL to a local sentence-transformers folder, or unset it") from None
        self.ref = ref
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64):
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)


_EMBEDDERS: dict[tuple[str, str], object] = {}
_EMBEDDERS_LOCK = threading.Lock()


def _load_embedder(ref: str, threads: int, backend: str, models_dir: Path | None):
    if backend == "torch":
        return Embedder(ref, threads)
    from tandem.knowledge import onnx_backend

    if models_dir is None:
        raise ValueError("the ONNX backends need models_dir")
    info = model_info(ref)
    path = onnx_backend.ensure_exported(ref, info.weights_sha256, models_dir, backend)
    return onnx_backend.OnnxEmbedder(ref, path, info.dim, info.max_seq_length, threads)


def get_embedder(ref: str, threads: int = 0, backend: str = "torch", models_dir: Path | None = None):
    """A process-wide cached embedder for ``ref`` on ``backend`` (``torch``, ``onnx``, ``onnx-int8``; the ONNX
    ones are exported under ``models_dir`` on first use, see ``onnx_backend``)."""
    with _EMBEDDERS_LOCK:
        key = (ref, backend)
        if key not in _EMBEDDERS:
            log.info("loading embedding model %s (%s)", ref, backend)
            from tandem.models import MODEL_LOAD_LOCK

            with MODEL_LOAD_LOCK:  # transformers' lazy imports are not safe from two threads at once
                _EMBEDDERS[key] = _load_embedder(ref, threads, backend, models_dir)
        return _EMBEDDERS[key]


def configured_embedder(settings, ref: str):
    """The embedder the settings ask for (model ``ref``, ``embed_backend``, ``torch_threads``)."""
    return get_embedder(ref, settings.torch_threads, settings.embed_backend, settings.models_dir)


@lru_cache(maxsize=8)
def token_counter(ref: str):
    """A fast ``text -> token ids`` function of the model's tokenizer (no special tokens), for chunk sizing."""
    folder = Path(ref)
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(ref)
    return lambda text: hf.encode(text, add_special_tokens=False)
