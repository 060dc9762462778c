"""Weight-quantization settings, checked against transformers' BitsAndBytesConfig and bitsandbytes on the CPU.

A tiny random ``LlamaForCausalLM`` (2 layers, hidden 64) is saved once and loaded back
through ``from_pretrained(..., quantization_config=BitsAndBytesConfig(**cfg.bnb_kwargs()))``,
the same path the backends use; its Linear layers must become bitsandbytes layers and
its logits must stay finite and close to the fp32 model's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compression import WeightQuantConfig, quantized_linear_count, quantized_linear_counts

# 2 layers x (q, k, v, o, gate, up, down) = 14 Linear layers in the decoder, plus lm_head.
DECODER_LINEARS = 14


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("load_in", "2bit", "one of None, 8bit, 4bit"),
        ("load_in", 8, "one of None, 8bit, 4bit"),
        ("quant_type", "int4", "one of nf4, fp4"),
        ("compute_dtype", "float64", "one of float32, float16, bfloat16"),
        ("double_quant", 1, "true or false"),
        ("skip_modules", ["lm_head"], "tuple"),
        ("skip_modules", ("",), "non-empty"),
    ],
)
def test_invalid_config_names_field(field, value, allowed):
    with pytest.raises(ValueError) as info:
        WeightQuantConfig(**{field: value})
    assert f"WeightQuantConfig.{field}" in str(info.value)
    assert allowed in str(info.value)


def test_config_is_frozen():
    config = WeightQuantConfig(load_in="4bit")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.load_in = "8bit"  # type: ignore[misc]


def test_bnb_kwargs_per_setting():
    assert WeightQuantConfig().bnb_kwargs() == {}
    assert not WeightQuantConfig().enabled
    assert WeightQuantConfig(load_in="8bit").bnb_kwargs() == {"load_in_8bit": True}
    assert WeightQuantConfig(load_in="4bit", quant_type="fp4", compute_dtype="bfloat16", double_quant=True).bnb_kwargs() == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_compute_dtype": torch.bfloat16,
        "bnb_4bit_use_double_quant": True,
    }
    assert WeightQuantConfig(load_in="8bit", skip_modules=("lm_head", "model.vision_model")).bnb_kwargs() == {
        "load_in_8bit": True,
        "llm_int8_skip_modules": ["lm_head", "model.vision_model"],
    }


@pytest.mark.parametrize(
    ("name", "load_in", "quant_type"),
    [(None, None, "nf4"), ("none", None, "nf4"), ("8bit", "8bit", "nf4"), ("4bit", "4bit", "nf4"),
     ("NF4", "4bit", "nf4"), ("fp4", "4bit", "fp4"), ("4bit-fp4", "4bit", "fp4")],
)
def test_from_name(name, load_in, quant_type):
    config = WeightQuantConfig.from_name(name)
    assert (config.load_in, config.quant_type) == (load_in, quant_type)


def test_from_name_rejects_unknown():
    with pytest.raises(ValueError, match="quantization must be one of"):
        WeightQuantConfig.from_name("3bit")


def test_transformers_accepts_the_kwargs():
    from transformers import BitsAndBytesConfig

    config = WeightQuantConfig(load_in="4bit", quant_type="nf4", compute_dtype="float16", double_quant=True)
    bnb = BitsAndBytesConfig(**config.bnb_kwargs())
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "nf4"
    assert bnb.bnb_4bit_compute_dtype == torch.float16
    assert bnb.bnb_4bit_use_double_quant is True
    bnb8 = BitsAndBytesConfig(**WeightQuantConfig(load_in="8bit").bnb_kwargs())
    assert bnb8.load_in_8bit and not bnb8.load_in_4bit


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """(folder of a saved tiny random Llama, its fp32 logits on fixed ids, the ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    assert quantized_linear_counts(model) == {"int8": 0, "4bit": 0, "full": DECODER_LINEARS + 1}
    return folder, logits, ids


def load_quantized(folder, config: WeightQuantConfig):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(**config.bnb_kwargs()), device_map="cpu"
    ).eval()


@pytest.mark.parametrize(
    ("config", "kind", "max_rel_err"),
    [
        # measured relative logit errors: 8bit 0.009, nf4 0.11, fp4 + double quant 0.15
        (WeightQuantConfig(load_in="8bit"), "int8", 0.05),
        (WeightQuantConfig(load_in="4bit", quant_type="nf4"), "4bit", 0.3),
        (WeightQuantConfig(load_in="4bit", quant_type="fp4", double_quant=True), "4bit", 0.4),
    ],
)
def test_quantized_tiny_llama_on_cpu(tiny_llama, config, kind, max_rel_err):
    import bitsandbytes as bnb

    folder, reference, ids = tiny_llama
    model = load_quantized(folder, config)
    counts = quantized_linear_counts(model)
    assert counts[kind] == DECODER_LINEARS
    assert counts["full"] == 1  # transformers keeps lm_head in full precision by default
    assert quantized_linear_count(model) == DECODER_LINEARS
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if kind == "int8" else bnb.nn.Linear4bit)
    if kind == "4bit":
        assert layer.weight.quant_state.quant_type == config.quant_type
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    rel = float((logits - reference).norm() / reference.norm())
    assert 0.0 < rel < max_rel_err  # changed by quantization, yet close to fp32


def test_skip_modules_stay_full_precision(tiny_llama):
    folder, reference, ids = tiny_llama
    model = load_quantized(folder, WeightQuantConfig(load_in="4bit", skip_modules=("lm_head", "down_proj")))
    assert quantized_linear_counts(model) == {"int8": 0, "4bit": DECODER_LINEARS - 2, "full": 3}
    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_counts_reject_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantized_linear_counts("model")  # type: ignore[arg-type]
