"""The ONNX Runtime embedding backends: export with a recorded sha256, the same vectors as the torch model,
part of the fingerprint, and a backend switch on a live index that goes through the shadow build, the canary
and rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from knowledge_fixtures import GOLDEN, cli_env, corpus, kn, write_golden  # noqa: F401

from tandem.knowledge import fingerprint, onnx_backend, reindex, search
from tandem.knowledge.embedding import Embedder, model_info
from tandem.models import embedding_model_path

TANDEM = str(Path(sys.executable).parent / "tandem")
TEXTS = ["How much does the Pro plan cost per month?", "Refunds are available within 30 days of purchase.",
         "Upload your identity provider metadata in the admin console, then map the email attribute.",
         "short", "A much longer passage " * 60]


def test_export_is_recorded_reused_and_redone_when_altered(tmp_path):
    ref = embedding_model_path("")
    info = model_info(ref)
    path = onnx_backend.ensure_exported(ref, info.weights_sha256, tmp_path, "onnx-int8")
    folder = path.parent
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source_weights_sha256"] == info.weights_sha256 and manifest["recipe"] == onnx_backend.RECIPE
    assert set(manifest["files"]) == {"model.onnx", "model-int8.onnx"}
    assert manifest["files"]["model-int8.onnx"] == onnx_backend._sha256(path)
    stamp = path.stat().st_mtime_ns
    assert onnx_backend.ensure_exported(ref, info.weights_sha256, tmp_path, "onnx-int8").stat().st_mtime_ns == stamp
    with path.open("r+b") as f:  # a damaged file is exported again, not loaded
        f.seek(1000)
        f.write(b"\0" * 16)
    again = onnx_backend.ensure_exported(ref, info.weights_sha256, tmp_path, "onnx-int8")
    assert onnx_backend._sha256(again) == manifest["files"]["model-int8.onnx"]


def test_onnx_vectors_match_the_torch_model(settings):
    ref = embedding_model_path("")
    info = model_info(ref)
    torch_vecs = Embedder(ref, 2).encode(TEXTS)
    cosines = {}
    for backend in ("onnx", "onnx-int8"):
        path = onnx_backend.ensure_exported(ref, info.weights_sha256, settings.models_dir, backend)
        vecs = onnx_backend.OnnxEmbedder(ref, path, info.dim, info.max_seq_length, 2).encode(TEXTS, batch_size=2)
        assert vecs.shape == torch_vecs.shape and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
        cosines[backend] = float((vecs * torch_vecs).sum(axis=1).min())
    print("min cosine against torch:", cosines)
    assert cosines["onnx"] >= 0.99  # same tokenisation, same mean pooling, same normalisation
    assert cosines["onnx-int8"] >= 0.97  # per-channel int8 MatMul weights (per-tensor, every op: 0.86)


def test_the_backend_is_part_of_the_fingerprint(kn):
    assert kn.embed_backend == "onnx"  # the default, chosen by measurement (docs/decisions.md)
    torch_fp, torch_spec, _, _ = fingerprint.current(kn.replace(embed_backend="torch"))
    assert "backend" not in torch_spec  # torch spaces keep the fingerprint they had before backends existed
    int8_fp, int8_spec, _, _ = fingerprint.current(kn.replace(embed_backend="onnx-int8"))
    assert int8_fp != torch_fp and int8_spec["backend"] == f"onnx-int8/{onnx_backend.RECIPE}"
    assert fingerprint.current(kn.replace(embed_backend="onnx"))[0] not in (torch_fp, int8_fp)
    env = cli_env(kn, {"TANDEM_EMBED_BACKEND": "tensorflow"})
    proc = subprocess.run([TANDEM, "config"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "TANDEM_EMBED_BACKEND" in proc.stderr and "Traceback" not in proc.stderr


def test_switching_a_live_index_from_torch_to_onnx_int8_and_back(kn, corpus, tmp_path):
    settings = kn.replace(canary_path=str(write_golden(tmp_path / "golden.jsonl", GOLDEN)), canary_k=3,
                          embed_backend="torch")
    first = reindex.run(settings, progress=False)
    assert first["canary"]["status"] == "baseline" and first["space"]["backend"] == "torch"
    switched = reindex.run(settings.replace(embed_backend="onnx-int8"), progress=False)
    assert switched["mode"] == "build" and switched["space"]["switched"] and switched["index_version"] == 2
    assert switched["space"]["backend"] == "onnx-int8"
    assert switched["canary"]["status"] == "passed"  # validated against the torch release before the switch
    # queries are embedded with the live space's backend, whatever this process is configured with
    hits = search.search(settings, "How much does the Pro plan cost per month?", k=3)
    assert hits[0].doc_id == "acme/pricing/plans.md"
    back = reindex.rollback(settings)
    assert back["index_version"] == 1 and back["space_changed"]
    assert search.search(settings, "Can I get a refund within 30 days?", k=1)[0].doc_id == "acme/policies/refunds.txt"
    assert os.path.exists(onnx_backend.export_dir(settings.models_dir, model_info(embedding_model_path("")).weights_sha256))
