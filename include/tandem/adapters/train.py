"""peft LoRA training on the base model's chat template, with the loss on the assistant target only.

- Prompts are ``tandem.behavior.prompt.build_messages(question, contexts, spec)`` and targets
  ``training_target(answer, citations, confidence)``: the same prompt ``behavior_eval`` and ``tandem ask`` use.
- An example longer than ``max_seq_len`` has its context texts shortened; the target is never cut.
- CPU (fp32) by default; CUDA with bf16 weights when a GPU is present (the LoRA weights stay fp32).
- Deterministic with the seed: init, batch order and dropout come from seeded generators.
- Per-step ``train_loss`` and ``learning_rate`` go to ``log_metrics`` (the retrain sends them to MLflow).
- Only the adapter is saved (``save_pretrained`` of the peft model) plus ``tandem-adapter.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from tandem.config import Settings
from tandem.errors import JobFailed, UserError

log = logging.getLogger(__name__)

IGNORE = -100
SHRINK_STEPS = (0.75, 0.5, 0.35, 0.25, 0.15, 0.08, 0.0)


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32


def set_threads(settings: Settings) -> None:
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)


def load_base(base_model: str, device: str | None = None, dtype=None):
    """(tokenizer, model) of the base LLM, on ``device`` in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None:
        device, dtype = device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
    model.eval()
    return tokenizer, model


def load_adapter(base_model: str, adapter_path: str | Path, device: str | None = None, dtype=None):
    """(tokenizer, peft model) of a saved adapter on the base, unmerged, in eval mode."""
    from peft import PeftModel

    tokenizer, model = load_base(base_model, device, dtype)
    peft_model = PeftModel.from_pretrained(model, str(adapter_path))
    peft_model.eval()
    return tokenizer, peft_model


PROBE_TEXT = "Tandem probe: the adapter must reproduce these logits exactly after a round trip."


def probe_logits(model, tokenizer):
    """Logits of a fixed probe text (float32 on CPU): the fingerprint of a model's exact behaviour."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


def logits_sha256(logits) -> str:
    import hashlib

    return hashlib.sha256(logits.contiguous().numpy().tobytes()).hexdigest()


def _with_contexts_scaled(contexts: list[dict], factor: float) -> list[dict]:
    if factor >= 1.0:
        return contexts
    out = []
    for c in contexts:
        text = c["text"]
        keep = int(len(text) * factor)
        out.append({**c, "text": (text[:keep].rstrip() + " …") if keep < len(text) else text})
    return out


def encode_row(tokenizer, row: dict, spec: Any, max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, shortened) of one RAFT row; labels are IGNORE outside the assistant target."""
    from tandem.behavior.prompt import build_messages, training_target

    t = row["target"]
    target_text = training_target(t["answer"], t["citations"], t["confidence"])
    for factor in (1.0, *SHRINK_STEPS):
        messages = build_messages(row["question"], _with_contexts_scaled(row["contexts"], factor), spec)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target_text}],
                                             tokenize=False)
        if not full.startswith(prompt):
            raise JobFailed("the chat template does not render the assistant turn after the generation prompt",
                            fix="use a base model whose chat template appends the assistant turn")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(target_ids) <= max_seq_len:
            return prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + list(target_ids), factor < 1.0
    raise UserError(f"example {row['id']!r} does not fit max_seq_len={max_seq_len} even without its contexts "
                    f"({len(prompt_ids) + len(target_ids)} tokens)", fix="raise max_seq_len")


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """Index lists for ``steps`` batches: seeded permutations, epoch after epoch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = torch.randperm(n, generator=gen).tolist()
            batch.append(order.pop(0))
        yield batch


def _collate(features, batch, pad_id, device):
    import torch

    width = max(len(features[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        x, y = features[i]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def total_steps(n_rows: int, batch_size: int, max_steps: int, epochs: float) -> int:
    if max_steps:
        return max_steps
    return max(1, math.ceil(epochs * n_rows / batch_size))


def train(settings: Settings, rows: list[dict], spec: Any, params, out_dir: Path, *,
          base_model: str, base_sha256: str, dataset_digest: str = "",
          log_metrics: Callable[[dict, int], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> tuple[dict[str, Any], Any, Any]:
    """Train a LoRA adapter on ``rows`` (the train split) and save it to ``out_dir``.

    Returns (summary, the trained peft model in eval mode, its tokenizer).

    ``on_step(step, total, loss)`` is called after every optimizer step (progress bars, tests).
    """
    import torch

    if not rows:
        raise UserError("the training split is empty", fix="add examples to the training set or lower holdout_fraction")
    set_threads(settings)
    torch.manual_seed(params.seed)
    device, dtype = device_and_dtype()
    started = time.monotonic()
    tokenizer, model = load_base(base_model, device, dtype)
    peft_model = _lora_model(model, params)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    features, shortened = _features(tokenizer, rows, spec, params.max_seq_len)
    tokens_per_row = sum(len(f[0]) for f in features) / len(features)
    steps = total_steps(len(features), params.batch_size, params.max_steps, params.epochs)
    log.info("training LoRA r=%d on %d rows (%.0f tokens/row, %d shortened) for %d steps on %s",
             params.lora_r, len(features), tokens_per_row, shortened, steps, device)
    losses, tokens, train_seconds = _optimize(peft_model, features, params, steps, device, dtype,
                                              tokenizer.pad_token_id, log_metrics=log_metrics, on_step=on_step)
    peft_model.eval()
    probe = probe_logits(peft_model, tokenizer)
    _save(peft_model, Path(out_dir), {"base_model": str(base_model), "base_model_sha256": base_sha256,
                                      "dataset_digest": dataset_digest, "params": params.as_dict(), "steps": steps,
                                      "device": device,
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    summary = {
        "steps": steps,
        "rows": len(features),
        "shortened_rows": shortened,
        "tokens_per_row": round(tokens_per_row, 1),
        "trainable_params": trainable,
        "device": device,
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
        "s_per_step": round(train_seconds / steps, 3),
        "tokens_per_s": round(tokens / train_seconds, 1) if train_seconds else 0.0,
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4),
        "probe_logits_sha256": logits_sha256(probe),
    }
    return summary, peft_model, tokenizer


def _lora_model(model, params):
    """The base model wrapped with LoRA layers (their weights in fp32 even when the base is bf16)."""
    from peft import LoraConfig, get_peft_model

    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                        target_modules=list(params.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"LoRA target_modules {list(params.target_modules)} do not fit the base model: {exc}",
                        fix="use module names of the base model, e.g. q_proj,k_proj,v_proj,o_proj") from None
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def _features(tokenizer, rows: list[dict], spec: Any, max_seq_len: int) -> tuple[list[tuple], int]:
    """(input ids, labels) per row, and how many rows had to be shortened to ``max_seq_len``."""
    features, shortened = [], 0
    for row in rows:
        ids, labels, cut = encode_row(tokenizer, row, spec, max_seq_len)
        features.append((ids, labels))
        shortened += int(cut)
    return features, shortened


def _optimize(peft_model, features: list[tuple], params, steps: int, device: str, dtype, pad_id: int, *,
              log_metrics, on_step) -> tuple[list[float], int, float]:
    """The training loop: AdamW with linear warm-up and decay, gradient clipping. Returns (losses, tokens, s)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(steps // 10, 20), steps)  # no lr-0 first step
    peft_model.train()
    losses: list[float] = []
    started, tokens = time.monotonic(), 0
    try:
        for step, batch in enumerate(_batches(len(features), params.batch_size, steps, params.seed), 1):
            ids, mask, labels = _collate(features, batch, pad_id, device)
            with torch.autocast(device_type="cuda", dtype=dtype, enabled=device == "cuda"):
                loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise JobFailed(f"training diverged: loss is {loss.item()} at step {step}",
                                fix="lower learning_rate", summary={"step": step})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(mask.sum())
            value = float(loss.detach())
            losses.append(value)
            if log_metrics is not None:
                log_metrics({"train_loss": value, "learning_rate": lr}, step)
            if on_step is not None:
                on_step(step, steps, value)
            if step == 1 or step % 10 == 0 or step == steps:
                log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step)", step, steps, value, lr,
                         (time.monotonic() - started) / step)
    except torch.cuda.OutOfMemoryError:
        raise JobFailed("training ran out of GPU memory",
                        fix="lower batch_size or max_seq_len, or set gradient_checkpointing") from None
    return losses, tokens, time.monotonic() - started


def _save(peft_model, out_dir: Path, meta: dict) -> None:
    """The adapter weights + adapter_config.json (peft), and ``tandem-adapter.json`` beside them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    (out_dir / "tandem-adapter.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
