"""Loading helpers and prompt constants the backend families share.

The product's default system prompt, ChatML, tokenizers for the offline builtins (the real
SmolLM2 tokenizer plus a family's special tokens and a ChatML template), the decoder fields of a
:class:`~app.engine.backends.types.BackendSpec`, fast random initialisation for
real-shape models built in code, RGB frames as normalised arrays with a PIL
image processor's own settings, checkpoints from a directory or hub id, and the
last step of every load (device or bitsandbytes quantization through
transformers' own loading path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from app.engine.backends.types import BackendError, ModelNotAvailable

logger = logging.getLogger(__name__)

#: The system prompt of every family unless the session config sets one.
DEFAULT_SYSTEM = (
    "You are LiveSight, an assistant watching a live video stream. Frames and notes arrive with their "
    "stream timestamps. Answer questions about what you have seen, briefly and precisely."
)

#: ChatML, the format Qwen2 / Qwen2.5 models (and LLaVA-OneVision's Qwen2 language model) were
#: trained on, for string message contents; the default system prompt is Qwen's.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Tokens that end an assistant turn in ChatML models.
CHATML_STOP = ("<|im_end|>", "<|endoftext|>")


def decoder_shape(text_config, *, head_dim: int | None = None) -> dict:
    """The :class:`~app.engine.backends.types.BackendSpec` fields a decoder's config fixes.

    ``head_dim`` overrides the config's (or ``hidden_size // num_attention_heads`` when it has none),
    for attention classes that derive it themselves.
    """
    c = text_config
    return dict(
        num_layers=c.num_hidden_layers,
        num_kv_heads=c.num_key_value_heads,
        num_heads=c.num_attention_heads,
        head_dim=head_dim or getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        hidden_size=c.hidden_size,
        max_positions=c.max_position_embeddings,
    )


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> None:
    """Add ``tokens`` that the tokenizer lacks as special tokens (never split, never merged)."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


def builtin_tokenizer(special_tokens: Sequence[str]):
    """The real SmolLM2 tokenizer (ChatML) with ``special_tokens`` added and the ChatML template."""
    from app.engine.backends.smollm2_weights import load_smollm2_tokenizer

    tok = load_smollm2_tokenizer()
    add_special_tokens(tok, special_tokens)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def token_id(tokenizer, token: str) -> int:
    """The id of a special token, or :class:`BackendError` naming it when the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid == getattr(tokenizer, "unk_token_id", None):
        raise BackendError(f"the tokenizer has no {token!r} token")
    return tid


# ---- models built in code -------------------------------------------------------------------------------


def fill_random_(model: torch.nn.Module, *, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Give every parameter of ``model`` a well-scaled random value, fast.

    Norm weights become 1, biases 0, every other parameter normal noise with standard deviation
    ``std``. Used with transformers' ``no_init_weights`` for real-shape models with random weights:
    one pass of plain normal draws is much faster than transformers' per-module initialisation of a
    multi-billion-parameter model, and no weight is left as uninitialised memory (NaN, denormals,
    which would distort timings).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            for leaf, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                if leaf == "bias":
                    p.zero_()
                elif is_norm:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=gen)
    return model


def build_model(model_cls, config, *, dtype: torch.dtype, seed: int, fast_init: bool):
    """``model_cls(config)`` with random weights, in ``dtype``, deterministic for ``seed``.

    ``fast_init`` skips transformers' per-module initialisation (``no_init_weights``, transformers'
    own context manager) and fills the weights with :func:`fill_random_` instead: for real shapes.
    """
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if fast_init:
            from transformers.initialization import no_init_weights

            with no_init_weights():
                model = model_cls._from_config(config, dtype=dtype)
            model.tie_weights()  # no_init_weights also skips the tying that init_weights does
            fill_random_(model, seed=seed)
        else:
            model = model_cls._from_config(config, dtype=torch.float32).to(dtype)
    model.eval()
    logger.info("built %s with random weights in %.1f s", model_cls.__name__, time.perf_counter() - t0)
    return model


# ---- frames ------------------------------------------------------------------------------------------


def build_published_shape(shapes: dict, shape: str, special_tokens: Sequence[str], make_config, model_cls, *,
                          dtype: torch.dtype, seed: int):
    """-> ``(model, tokenizer, shape entry)``: a family's published shape with random weights.

    ``shapes[shape]`` holds ``text`` / ``vision`` config values and ``tie_word_embeddings``;
    ``make_config(tokenizer, text, vision, tie)`` builds the family's config. The SmolLM2 tokenizer's
    special-token ids fit inside every real vocabulary; weights are filled fast (:func:`fill_random_`).
    """
    if shape not in shapes:
        raise BackendError(f"shape must be one of {sorted(shapes)}, got {shape!r}")
    s = shapes[shape]
    tok = builtin_tokenizer(special_tokens)
    cfg = make_config(tok, s["text"], s["vision"], s["tie_word_embeddings"])
    return build_model(model_cls, cfg, dtype=dtype, seed=seed, fast_init=True), tok, s


def resize_square(rgb: np.ndarray, side: int, resample) -> np.ndarray:
    """``rgb (H, W, 3)`` uint8 -> ``(side, side, 3)`` uint8 with PIL (``resample``: a PIL filter)."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BackendError(f"a frame must be an RGB uint8 array (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}")
    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((side, side), resample))


def normalized_chw(frames: Sequence[np.ndarray], image_processor, side: int) -> np.ndarray:
    """Frames as the vision tower takes them: ``(B, 3, side, side)`` float32.

    Resized to a square with the processor's own resampling filter, rescaled and normalised with
    its ``rescale_factor``, ``image_mean`` and ``image_std`` (its public ``rescale``/``normalize``).
    """
    resample = image_processor.resample
    out = []
    for rgb in frames:
        img = resize_square(rgb, side, resample).astype(np.float32).transpose(2, 0, 1)
        img = image_processor.rescale(img, image_processor.rescale_factor)
        img = image_processor.normalize(img, image_processor.image_mean, image_processor.image_std)
        out.append(np.asarray(img, dtype=np.float32))
    return np.stack(out)


# ---- the last step of every load ------------------------------------------------------------------------------


def place_model(model, model_cls, *, builtin: bool, device, dtype, quantization_config):
    """Move a loaded model to ``device``, or quantize a model built in code with bitsandbytes.

    Checkpoints loaded with a ``quantization_config`` are already quantized by ``from_pretrained``;
    models built in code are saved and loaded back through it (:func:`app.engine.backends.quantize.reload_quantized`).
    """
    if quantization_config is not None:
        if builtin:
            from app.engine.backends.quantize import reload_quantized

            return reload_quantized(model, model_cls, quantization_config, dtype).eval()
        return model.eval()
    return model.to(device).eval()


def load_checkpoint(label: str, model_cls, processor_cls, path_or_id: str, dtype, quantization_config=None):
    """-> ``(model, tokenizer, image_processor)`` of a checkpoint in a local directory or under a hub id
    (cached, or downloaded when online), through transformers' own ``from_pretrained``.

    Raises:
        ModelNotAvailable: naming the family (``label``, e.g. ``"SmolVLM2"``), the directory or hub id,
            and transformers' reason.
    """
    from transformers import AutoTokenizer

    kwargs = {"dtype": dtype}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = model_cls.from_pretrained(path_or_id, **kwargs)
        tok = AutoTokenizer.from_pretrained(path_or_id)
        proc = processor_cls.from_pretrained(path_or_id)
    except OSError as exc:
        where = "directory" if Path(path_or_id).exists() else "hub id"
        raise ModelNotAvailable(f"cannot load {label} {where} {path_or_id!r}: {exc}") from exc
    return model, tok, proc
