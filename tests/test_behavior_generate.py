"""Batched greedy generation with the real SmolLM2 base model (and a real, tiny LoRA adapter)."""

from __future__ import annotations

import os

import pytest

from tandem.errors import UserError

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "Answer with one JSON object."},
     {"role": "user", "content": "Context: the Pro plan costs $49 per month. Question: how much is the Pro plan?"}],
    [{"role": "user", "content": "List three colours, one word each."}],
]


@pytest.fixture(scope="module")
def generator(base_model_path):
    from tandem.behavior.generate import Generator

    return Generator(str(base_model_path), threads=1)


def test_batched_equals_one_by_one_and_is_deterministic(generator):
    batched = generator.generate(PROMPTS, max_new_tokens=12, batch_size=3)
    single = generator.generate(PROMPTS, max_new_tokens=12, batch_size=1)
    assert batched == single  # left padding does not change greedy outputs
    assert generator.generate(PROMPTS, max_new_tokens=12, batch_size=2) == batched
    assert all(isinstance(o, str) and o for o in batched)
    stats = generator.last_stats
    assert stats["examples"] == 3 and 0 < stats["new_tokens"] <= 3 * 12 and stats["prompt_tokens"] > 0


def test_grouped_query_attention_gives_the_same_logits(generator):
    # Generator forces GQA inside SDPA on CPU (faster); it must not change what the model computes
    import torch

    tok = generator.tokenizer
    enc = tok([generator.render(p) for p in PROMPTS], return_tensors="pt", padding=True, add_special_tokens=False)
    logits = {}
    previous = os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    try:
        for flag in ("0", "1"):
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = flag
            with torch.inference_mode():
                logits[flag] = generator.model(**enc).logits
    finally:
        os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = previous or "1"
    mask = enc["attention_mask"].bool()
    assert torch.allclose(logits["0"][mask], logits["1"][mask], atol=1e-4)


def test_linear_weights_are_stored_transposed_with_the_same_values(base_model_path, generator):
    # Generator keeps each linear weight as a column-major view on CPU (faster multiplies at a few rows); the
    # values, the tie between the output layer and the embeddings, and the logits stay those of the model
    import torch
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=torch.float32).eval()
    linears = {n: m for n, m in generator.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) > 100
    for name, module in linears.items():
        assert module.weight.t().is_contiguous() and not module.weight.is_contiguous(), name
        assert torch.equal(module.weight, plain.get_submodule(name).weight), name
    assert generator.model.lm_head.weight is generator.model.get_input_embeddings().weight
    enc = generator.tokenizer([generator.render(p) for p in PROMPTS], return_tensors="pt", padding=True,
                              add_special_tokens=False)
    with torch.inference_mode():
        ours, theirs = generator.model(**enc).logits, plain(**enc).logits
    mask = enc["attention_mask"].bool()
    # several rows go through the packed oneDNN weights: float rounding differs a little over 30 layers
    # (logits up to about 40; measured at most 2e-4 apart), the greedy choices do not
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-3)
    assert torch.equal(ours[mask].argmax(-1), theirs[mask].argmax(-1))


def test_linear_layers_multiply_several_rows_by_a_packed_copy(generator):
    # every distinct linear weight (the output layer's is the embeddings') has a oneDNN copy; one row keeps the
    # plain weight, several rows use the copy, and both give the layer's own product
    import torch

    linears = [m for m in generator.model.modules() if isinstance(m, torch.nn.Linear)]
    assert generator.packed_layers == len({id(m.weight) for m in linears}) > 100
    layer = generator.model.model.layers[0].mlp.down_proj
    torch.manual_seed(0)
    for x in (torch.randn(1, 1, 1536), torch.randn(2, 5, 1536), torch.randn(5, 2, 1536).transpose(0, 1)):
        with torch.inference_mode():
            ours, plain = layer(x), torch.nn.functional.linear(x, layer.weight)
        assert ours.shape == plain.shape
        assert torch.allclose(ours, plain, atol=1e-4)
        assert torch.equal(ours, plain) == (x.shape[0] * x.shape[1] == 1)  # the copy is a different kernel
    x = torch.randn(4, 1536, requires_grad=True)
    layer(x).sum().backward()  # with gradients the layer is the plain one
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(4, -1))


def test_adapter_is_applied(base_model_path, generator, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tandem.behavior.generate import Generator

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(str(base_model_path))
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))  # random B: the adapter changes outputs
    lora.save_pretrained(tmp_path / "adapter")
    with_adapter = Generator(str(base_model_path), str(tmp_path / "adapter"), threads=1)
    unmerged = Generator(str(base_model_path), str(tmp_path / "adapter"), threads=1, merge_adapter=False)
    base_out = generator.generate(PROMPTS[:2], max_new_tokens=8)
    adapted = with_adapter.generate(PROMPTS[:2], max_new_tokens=8)
    assert adapted != base_out
    assert unmerged.generate(PROMPTS[:2], max_new_tokens=8) == adapted  # merging is only a speed-up


def test_bad_model_or_adapter_is_a_user_error(base_model_path, tmp_path):
    from tandem.behavior.generate import Generator

    with pytest.raises(UserError, match="no config.json"):
        Generator(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="adapter_config.json"):
        Generator(str(base_model_path), str(tmp_path))


def test_eval_refuses_like_the_answer_path_without_generating(generator):
    """Items flagged by the similarity gate get the spec's refusal and are not generated; the rest are."""
    from tandem.behavior.evalset import Example
    from tandem.behavior.evaluate import evaluate
    from tandem.behavior.spec import load_spec
    from tandem.demo.data import BEHAVIOR_SPEC_PATH

    spec = load_spec(BEHAVIOR_SPEC_PATH)
    ctx = [{"doc_id": "acme/pricing.md", "title": "Pricing", "text": "The Pro plan costs $49 per month."}]
    items = [(Example(id="a", question="How much is the Pro plan?", gold_doc_ids=("acme/pricing.md",),
                      gold_facts=("$49",), reference_answer="", answerable=True), ctx),
             (Example(id="u", question="Do you sell hardware?", gold_doc_ids=(), gold_facts=(),
                      reference_answer="", answerable=False), ctx)]
    result = evaluate(spec, generator, items, max_new_tokens=8, batch_size=2, refuse=[False, True])
    assert generator.last_stats["examples"] == 1  # only the first item reached the model
    answered, refused = result.rows
    assert refused["refused_by_similarity"] and refused["refusal_correct"] and refused["schema_valid"]
    assert not answered["refused_by_similarity"] and answered["raw_output"] != refused["raw_output"]
    assert result.stats["refused_by_similarity"] == 1

