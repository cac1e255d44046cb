"""ONNX Runtime embedding backends: ``TANDEM_EMBED_BACKEND=onnx`` (float32) or ``onnx-int8`` (dynamic int8
quantisation of the weights).

The local sentence-transformers folder is exported once per machine, on first use (``make setup`` does it
ahead of time), into ``$TANDEM_HOME/models/onnx/<weights sha256>-<recipe>/``: ``torch.onnx.export`` of the
transformer (its last hidden state), then ``onnxruntime.quantization.quantize_dynamic`` for int8. The folder's
``manifest.json`` records the sha256 of the source weights and of each exported file; a file that no longer
matches is exported again. Nothing is downloaded. int8 quantises the MatMul weights per channel.

Tokenisation (the model's ``tokenizer.json``, truncated at its ``max_seq_length``) and pooling (mean over the
attention mask, then L2 normalisation) reproduce the sentence-transformers model: only mean-pooling models
with a Normalize module are accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from tandem.errors import UserError
from tandem.filelock import file_lock

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
RECIPE = "meanpool-v1"  # what the exported graph computes; a change makes new files (and a new fingerprint)
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_export_lock = threading.Lock()


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"unknown embedding backend {name!r}", fix=f"set TANDEM_EMBED_BACKEND to one of: {', '.join(BACKENDS)}")
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_pooling(folder: Path) -> None:
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling = {}
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            pooling = json.loads((folder / m.get("path", "") / "config.json").read_text())
    if types != ["Transformer", "Pooling", "Normalize"] or not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                     "pooling_mode_mean_sqrt_len_tokens")):
        raise UserError(f"the ONNX backends support sentence-transformers models made of Transformer, mean Pooling "
                        f"and Normalize; {folder} has {types or 'no modules.json'}",
                        fix="set TANDEM_EMBED_BACKEND=torch for this model")


def export_dir(models_dir: Path, weights_sha256: str) -> Path:
    return Path(models_dir) / "onnx" / f"{weights_sha256[:16]}-{RECIPE}"


def ensure_exported(ref: str, weights_sha256: str, models_dir: Path, backend: str) -> Path:
    """The ONNX file of ``backend`` for the model folder ``ref``, exported now if missing or altered."""
    check_backend(backend)
    folder = Path(ref)
    if not folder.is_dir():
        raise UserError(f"the ONNX backends need a local model folder, not {ref!r}",
                        fix="set TANDEM_EMBED_MODEL to a local folder, or TANDEM_EMBED_BACKEND=torch")
    _check_pooling(folder)
    out = export_dir(models_dir, weights_sha256)
    name = "model-int8.onnx" if backend == "onnx-int8" else "model.onnx"
    manifest = _read_manifest(out)
    if manifest.get("source_weights_sha256") == weights_sha256 and _intact(out, manifest, name):
        return out / name
    out.mkdir(parents=True, exist_ok=True)
    # one exporter per folder: threads of this process, and other processes on this host (Airflow workers)
    with _export_lock, file_lock(out / ".export.lock"):
        manifest = _read_manifest(out)
        if manifest.get("source_weights_sha256") == weights_sha256 and _intact(out, manifest, name):
            return out / name  # another process exported it while this one waited
        files = manifest.get("files", {}) if manifest.get("source_weights_sha256") == weights_sha256 else {}
        if not _intact(out, {"files": files}, "model.onnx"):
            files["model.onnx"] = _export_fp32(folder, out / "model.onnx")
        if name == "model-int8.onnx":
            files[name] = _quantize(out / "model.onnx", out / name)
        manifest = {"source": str(folder), "source_weights_sha256": weights_sha256, "recipe": RECIPE,
                    "opset": OPSET, "files": files}
        tmp = _tmp_name(out / "manifest.json")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.replace(out / "manifest.json")
    return out / name


def _tmp_name(dest: Path) -> Path:
    """A temp name beside ``dest`` that no other process or thread uses (then an atomic rename)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _read_manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _intact(out: Path, manifest: dict, name: str) -> bool:
    want = (manifest.get("files") or {}).get(name)
    return bool(want) and (out / name).exists() and _sha256(out / name) == want


def _export_fp32(folder: Path, dest: Path) -> str:
    import time

    import torch
    from transformers import AutoModel, AutoTokenizer

    started = time.monotonic()
    model = AutoModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    enc = tok(["an example sentence", "a second, longer example sentence for the trace"], padding=True,
              return_tensors="pt")
    axes = {k: {0: "batch", 1: "seq"} for k in (*_INPUTS, "last_hidden_state")}
    tmp = _tmp_name(dest)
    with torch.no_grad():
        torch.onnx.export(LastHidden(model), tuple(enc[k] for k in _INPUTS), str(tmp), input_names=list(_INPUTS),
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    tmp.replace(dest)
    log.info("exported %s to ONNX (%s) in %.1fs", folder, dest, time.monotonic() - started)
    return _sha256(dest)


def _quantize(src: Path, dest: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _tmp_name(dest)
    # per-channel int8 weights of the MatMuls only: min cosine to torch 0.98 on sample texts (per-tensor
    # quantisation of every op: 0.86)
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    tmp.replace(dest)
    log.info("quantised %s to int8 (%s)", src, dest)
    return _sha256(dest)


class OnnxEmbedder:
    """Same interface as ``embedding.Embedder``: ``encode`` returns L2-normalised float32 vectors."""

    def __init__(self, ref: str, onnx_path: Path, dim: int, max_seq_length: int, threads: int = 0):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.ref, self.dim, self.max_seq_length, self.path = ref, int(dim), int(max_seq_length), Path(onnx_path)
        self.tokenizer = Tokenizer.from_file(str(Path(ref) / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
        opts = ort.SessionOptions()
        if threads and threads > 0:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64):
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths pad less
        with self._lock:
            for start in range(0, len(order), max(1, batch_size)):
                idx = order[start:start + batch_size]
                out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]):
        import numpy as np

        encs = self.tokenizer.encode_batch(texts)
        feed = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
