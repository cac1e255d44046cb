"""RowLora: a mixed step's LoRA products computed for all rows at once give the logits peft's own mixed forward
(``adapter_names``) gives, row by row, with adapters of different ranks and target modules; outside a step the
layers behave as peft's; adapters it cannot fuse are refused, so the decoder keeps peft's path for them.

A tiny Llama of random weights stands in for the base model here: the property under test is the arithmetic of
peft's LoRA layers against RowLora's, which needs no trained weights, and a tiny model lets one test attach
several differently shaped adapters in milliseconds. The real model's mixed batches are tested end to end in
test_serve_batching.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tandem.behavior.mixing import BASE, RowLora  # noqa: E402


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(config).eval()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj"]), adapter_name="a1")
    model.add_adapter("a2", LoraConfig(r=8, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "o_proj", "gate_proj"]))
    return model.eval()


def _logits(model, ids, **kwargs):
    with torch.inference_mode():
        return model(input_ids=ids, **kwargs).logits


IDS = torch.tensor([[5, 9, 2, 7], [5, 9, 2, 7], [5, 9, 2, 7], [11, 3, 8, 1]])
NAMES = ["a1", "a2", BASE, "a2"]


def test_rows_get_the_logits_peft_gives_each_row_its_own_adapter():
    model = _model()
    expected = _logits(model, IDS, adapter_names=NAMES)
    lora = RowLora(model)
    assert lora.fusable(NAMES)
    with lora.rows(NAMES):
        fused = _logits(model, IDS)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused[0], fused[1], atol=1e-3)  # the same tokens under two adapters differ
    assert not torch.allclose(fused[1], fused[2], atol=1e-3)  # and from the base model


def test_outside_a_step_the_layers_run_as_peft_runs_them():
    model = _model()
    model.set_adapter("a2")
    before = _logits(model, IDS)
    RowLora(model)
    torch.testing.assert_close(_logits(model, IDS), before, rtol=0, atol=0)


def test_after_an_adapter_is_detached_the_stacks_are_rebuilt():
    model = _model()
    lora = RowLora(model)
    with lora.rows(NAMES):
        _logits(model, IDS)
    model.delete_adapter("a1")
    lora.changed()
    names = [BASE, "a2", "a2", BASE]
    expected = _logits(model, IDS, adapter_names=names)
    with lora.rows(names):
        torch.testing.assert_close(_logits(model, IDS), expected, rtol=1e-5, atol=1e-5)


def test_adapters_it_cannot_fuse_are_refused():
    from peft import LoraConfig

    model = _model()
    model.add_adapter("dora", LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    model.add_adapter("bias", LoraConfig(r=4, lora_bias=True, target_modules=["v_proj"]))
    lora = RowLora(model)
    assert lora.fusable(["a1", BASE, "a2"])
    assert not lora.fusable(["a1", "dora"])
    assert not lora.fusable(["bias", BASE])
