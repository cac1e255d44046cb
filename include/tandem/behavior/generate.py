"""Batched greedy generation with the base LLM (plus an optional LoRA adapter).

Prompts go through the model's chat template, are sorted by length and batched with left padding, and are
decoded greedily with a bounded number of new tokens, so that the same inputs always give the same outputs.
CPU (fp32) by default; CUDA (bf16) when a GPU is available.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tandem.errors import UserError
from tandem.models import resolve_base_model

log = logging.getLogger(__name__)

SEED = 0


def _column_major(model) -> None:
    """Store every linear layer's weight transposed in memory (the same tensor, a column-major view of its
    transpose): ``x @ W.T`` then reads ``W.T`` as a plain row-major matrix, which MKL's CPU kernels multiply by a
    few rows of ``x`` up to twice as fast (measured on 2 cores, one thread: the 49152-wide output layer at 8 rows
    36 ms -> 21 ms, the MLP's 1536-wide layers 0.43 -> 0.22 ms; alone and for whole prompts as fast or
    faster). The values do not change; only float rounding inside the multiply may (the tests compare answers).
    The output layer shares its weight with the token embeddings, which read rows of it as before."""
    import torch

    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            module.weight.data = module.weight.data.t().contiguous().t()


PACKED_ROWS = 8  # the rows oneDNN lays packed weights out for: a full decode batch (serve's default batch cap)


def _packed_linears(model) -> int:
    """Give every linear layer a oneDNN copy of its weight, packed for its CPU kernels, used for inputs of two
    rows or more once no gradient is needed: a decode step of several rows, a prompt's prefill. MKL's kernels
    multiply a few rows by a weight at a fraction of a core's peak on this machine (AMD EPYC, one thread);
    oneDNN's packed ones take, at 8 rows, 7.5 ms instead of 21 ms for the 49152-wide output layer and 0.15
    instead of 0.25 ms for each of the MLP's layers, and are faster at 2 rows and at 600 (a prompt). One row
    keeps the plain weight, where MKL is as fast or faster. The values are the same weights; only float
    rounding inside the multiply differs (about 1e-6; the tests compare answers).

    The copies double the linear weights' memory (about 540 MB for SmolLM2-135M). They are taken once, after
    any adapter is merged: a model whose weights change afterwards would keep multiplying by the old ones, and
    nothing in Tandem changes a loaded model's base weights (adapters mixed at serve time stay unmerged).
    Returns how many layers were packed: 0 where this torch has no oneDNN."""
    import torch

    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        linear = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return 0
    if not torch.backends.mkldnn.is_available():
        return 0
    packed: dict[int, Any] = {}
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.dtype != torch.float32 or module.weight.is_cuda:
            continue
        key = id(module.weight)
        if key not in packed:
            packed[key] = reorder(module.weight.detach().contiguous(), PACKED_ROWS)
        module.forward = _packed_forward(module, packed[key], linear)
    return len(packed)


def _packed_forward(module, weight, linear):
    """``module``'s forward: the packed ``weight`` for two rows or more without gradients, else its own."""
    import torch

    plain = module.forward

    def forward(x):
        if x.numel() > x.shape[-1] and not torch.is_grad_enabled() and x.dtype == torch.float32:
            return linear(x, weight, module.bias, "none", [], "")
        return plain(x)

    return forward


class Generator:
    """Loads the model once; ``generate`` answers many chat prompts in batches."""

    def __init__(self, base_model: str, adapter_path: str | None = None, *, device: str | None = None,
                 threads: int = 0, merge_adapter: bool = True, packed: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        source = resolve_base_model(base_model)
        if adapter_path is not None and not (Path(adapter_path).expanduser() / "adapter_config.json").is_file():
            raise UserError(f"adapter folder {adapter_path} has no adapter_config.json",
                            fix="point at a PEFT adapter folder (as saved by lora_retrain)")
        from tandem.models import MODEL_LOAD_LOCK

        with MODEL_LOAD_LOCK:  # transformers' lazy imports are not safe from two threads at once
            started = self._load(source, adapter_path, device, threads, merge_adapter, packed)
        self.base_model = source
        self.adapter_path = adapter_path
        self.last_stats: dict = {}
        self._decoder = None
        log.info("loaded %s%s on %s (%s) in %.1fs", source, f" + adapter {adapter_path}" if adapter_path else "",
                 self.device, str(self.model.dtype).replace("torch.", ""), time.monotonic() - started)

    def _load(self, source, adapter_path, device, threads, merge_adapter, packed) -> float:
        """Tokenizer and model (with the adapter merged or attached) onto the device; returns when it began."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads and threads > 0:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.packed_layers = 0  # linear layers with a oneDNN copy of their weight (``_packed_linears``)
        if self.device == "cpu":
            # grouped-query attention inside torch's SDPA instead of repeating K/V per head: the same logits
            # (checked in tests), about half the time per decode step on a CPU
            os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        started = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(Path(adapter_path).expanduser()))
            if merge_adapter:
                model = model.merge_and_unload()  # same greedy outputs up to float rounding, faster on CPU
        self.model = model.to(self.device).eval()
        if self.device == "cpu":
            _column_major(self.model)
            if packed:  # ``packed=False`` saves the copies' memory (``serve_packed_weights``)
                self.packed_layers = _packed_linears(self.model)
        return started

    def render(self, messages: Sequence[dict]) -> str:
        """The prompt text for one conversation (chat template, assistant turn opened)."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 96, batch_size: int = 8,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answers, one per conversation, in input order. ``progress(n)`` is called after each batch."""
        import torch

        if max_new_tokens < 1 or batch_size < 1:
            raise UserError("max_new_tokens and batch_size must be >= 1", fix="pass positive values")
        texts = [self.render(messages) for messages in conversations]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))  # less padding per batch, stable
        outputs: list[str] = [""] * len(texts)
        eos = self.tokenizer.eos_token_id
        started = time.monotonic()
        new_tokens = 0
        done = 0
        torch.manual_seed(SEED)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                          pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
            gen = out[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                outputs[i], n_new = self._decode(gen[row].tolist())
                new_tokens += n_new
            done += len(idx)
            elapsed = time.monotonic() - started
            log.info("generated %d/%d answers (%.2f examples/s, %d prompt tokens max in batch)", done, len(texts),
                     done / elapsed if elapsed else 0.0, enc["input_ids"].shape[1])
            if progress is not None:
                progress(len(idx))
        seconds = time.monotonic() - started
        self.last_stats = {"examples": len(texts), "seconds": seconds, "new_tokens": new_tokens,
                           "prompt_tokens": sum(lengths),
                           "examples_per_s": len(texts) / seconds if seconds else 0.0}
        return outputs

    def decoder(self, prefix_cache_mb: int = 0):
        """This model's continuous batch (``tandem.behavior.decoding.Decoder``), made on first use and kept
        with the model, its prefix cache bounded by ``prefix_cache_mb`` (0: no cache). One thread drives it."""
        if self._decoder is None:
            from tandem.behavior.decoding import Decoder

            self._decoder = Decoder(self, int(prefix_cache_mb) * 2**20)
        elif self._decoder.prefix.max_bytes != int(prefix_cache_mb) * 2**20:
            self._decoder.prefix.resize(int(prefix_cache_mb) * 2**20)
        return self._decoder

    def _decode(self, ids: list[int]) -> tuple[str, int]:
        """(the answer text, its token count): the new tokens up to the first end-of-sequence."""
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[:ids.index(eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids)
