"""SmolVLM2 family on transformers' ``SmolVLMForConditionalGeneration``.

Frames are preprocessed one by one with the PIL image processor (no image
splitting: each frame is one square image of ``image_size`` pixels, which is
what SmolVLM2 does for video frames), encoded by the SigLIP tower and the
pixel-shuffle connector into ``tokens_per_frame`` visual tokens on a square
grid, and wrapped as the model expects::

    Frame from 00:12:<fake_token_around_image><global-img><image>*N<fake_token_around_image>\\n

Positions are 1D RoPE positions; a dropped visual token leaves its slot empty
so kept tokens keep their original positions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from app.engine.backends.base import VideoLLM
from app.engine.backends.chat_format import derive_chat_format
from app.engine.backends.family import FamilyInfo
from app.engine.backends.family_utils import (
    DEFAULT_SYSTEM,
    add_special_tokens,
    decoder_shape,
    load_checkpoint,
    place_model,
)
from app.engine.backends.types import BackendError, BackendSpec, SegmentInput, TimeAnchor
from app.engine.timefmt import format_timestamp

logger = logging.getLogger(__name__)

#: What the registry knows of this family; literal values only (it is read from this source without importing it).
FAMILY = FamilyInfo(
    name="smolvlm",
    label="SmolVLM2",
    hub_prefixes=("HuggingFaceTB/SmolVLM",),
    model_types=("smolvlm",),
    builtins={
        "tiny-smolvlm": "tiny random weights (2 text layers, hidden 64; 16 tokens per 128 px frame) for tests",
        "smolvlm2-256m-smollm2": "SmolVLM2-256M shape; real SmolLM2-135M-Instruct text weights, random vision tower",
    },
    default_hub_id="HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
    test_model="tiny-smolvlm",
)

IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
SPECIAL_TOKENS = [FAKE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE, GLOBAL_TOKEN] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]

#: SmolVLM's chat format ("User: ...<end_of_utterance>\nAssistant:"), for string contents.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

class SmolVLMBackend(VideoLLM):
    """A loaded SmolVLM2 model ready to stream."""

    def __init__(self, model, tokenizer, image_processor, *, name: str, device, dtype, random_weights: bool,
                 random_vision: bool = False):
        self._attach(model, tokenizer, image_processor, device, dtype)
        cfg = model.config
        tcfg = cfg.text_config
        vcfg = cfg.vision_config
        patches = vcfg.image_size // vcfg.patch_size
        side = patches // cfg.scale_factor
        self.image_token_id = int(cfg.image_token_id)
        self.spec = BackendSpec(
            family=FAMILY.name,
            name=name,
            **decoder_shape(tcfg),
            tokens_per_frame=side * side,
            token_grid=(side, side),
            frame_size=vcfg.image_size,
            random_weights=random_weights,
            random_vision=random_vision,
        )
        self.chat = derive_chat_format(tokenizer, stop_strings=(END_OF_UTTERANCE, "<|im_end|>", "<|endoftext|>"))
        self.default_system = DEFAULT_SYSTEM
        wrap_open = self.tokenize(FAKE_TOKEN + GLOBAL_TOKEN)
        wrap_close = self.tokenize(FAKE_TOKEN + "\n")
        self._wrap_open, self._wrap_close = wrap_open, wrap_close

    # ---- frames --------------------------------------------------------------------------------
    def resize_frame(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        s = self.spec.frame_size
        if rgb.shape[0] == s and rgb.shape[1] == s:
            return rgb
        return np.asarray(Image.fromarray(rgb).resize((s, s), Image.Resampling.BILINEAR))

    def preprocess(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB frames -> ``pixel_values (B, 1, 3, S, S)`` with SmolVLM's PIL image processor."""
        from PIL import Image

        s = self.spec.frame_size
        images = [[Image.fromarray(np.ascontiguousarray(f))] for f in frames]
        out = self.image_processor(
            images=images,
            do_image_splitting=False,
            max_image_size={"longest_edge": s},
            size={"longest_edge": s},
            do_pad=False,
            return_tensors="pt",
        )
        return out["pixel_values"]

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        if len(frames) == 0:
            raise BackendError("encode_frames needs at least one frame")
        pv = self.preprocess(frames).to(self.device, self.dtype)
        b = pv.shape[0]
        with torch.inference_mode():
            out = self.model.model.get_image_features(pixel_values=pv.view(1, b, *pv.shape[2:]), return_dict=True)
        feats = torch.cat(list(out.pooler_output), dim=0)
        return feats.view(b, self.spec.tokens_per_frame, -1)

    def frame_segment(self, pts: float, tokens: torch.Tensor, keep: torch.Tensor | None, start: int,
                      anchor: TimeAnchor | None = None) -> SegmentInput:
        n = self.spec.tokens_per_frame
        if tokens.shape[0] != n:
            raise BackendError(f"expected {n} visual tokens for a frame, got {tokens.shape[0]}")
        prefix = torch.cat([self.tokenize(f"Frame from {format_timestamp(pts)}:"), self._wrap_open])
        suffix = self._wrap_close
        keep = torch.ones(n, dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
        a = int(prefix.numel())
        vis_pos = torch.arange(start + a, start + a + n)[keep]
        suf_start = start + a + n
        positions = torch.cat(
            [torch.arange(start, start + a), vis_pos, torch.arange(suf_start, suf_start + suffix.numel())]
        )
        embeds = torch.cat(
            [self.embed_ids(prefix), tokens[keep.to(tokens.device)].to(self.dtype), self.embed_ids(suffix)], dim=0
        )
        n_kept = int(keep.sum())
        ids = torch.cat([prefix, torch.full((n_kept,), self.image_token_id), suffix])
        content = torch.zeros(ids.numel(), dtype=torch.bool)
        content[a : a + n_kept] = True
        return SegmentInput(embeds, positions, suf_start + int(suffix.numel()), ids, content)

    # ---- model plumbing ----------------------------------------------------------------------------
    def decoder(self):
        return self.model.model.text_model


# ---- loading -------------------------------------------------------------------------------------------


def _image_processor(image_size: int):
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    return SmolVLMImageProcessorPil(
        do_image_splitting=False,
        max_image_size={"longest_edge": image_size},
        size={"longest_edge": image_size},
        do_pad=False,
    )


def _build(text_config, vision_config: dict, scale_factor: int, tokenizer, seed: int):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    cfg = SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmolVLMForConditionalGeneration(cfg)
    return model


def build_tiny(dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): tiny random SmolVLM with the real SmolLM2 tokenizer."""
    from transformers import LlamaConfig

    from app.engine.backends.smollm2_weights import load_smollm2_tokenizer

    tok = load_smollm2_tokenizer()
    add_special_tokens(tok, SPECIAL_TOKENS)
    tok.chat_template = SMOLVLM_CHAT_TEMPLATE
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=65536,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=16)
    model = _build(text, vision, 2, tok, seed).to(dtype)
    return model, tok, _image_processor(128)


def build_smollm2_shape(dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): SmolVLM2-256M shape with real SmolLM2-135M-Instruct text weights."""
    from app.engine.backends.smollm2_weights import load_smollm2

    lm, tok = load_smollm2(torch.float32)
    add_special_tokens(tok, SPECIAL_TOKENS)
    text = lm.config
    text.vocab_size = len(tok)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=512, patch_size=16)
    model = _build(text, vision, 4, tok, seed)
    lm.resize_token_embeddings(len(tok))
    model.model.text_model.load_state_dict(lm.model.state_dict(), strict=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.lm_head.weight)
    del lm
    return model.to(dtype), tok, _image_processor(512)


def load_pretrained(path_or_id: str, dtype, quantization_config=None):
    """A SmolVLM2 checkpoint from a local directory or a hub id (cached, or downloaded when online)."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    model, tok, proc = load_checkpoint(FAMILY.label, model_class(), SmolVLMImageProcessorPil,
                                       path_or_id, dtype, quantization_config)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = SMOLVLM_CHAT_TEMPLATE
    return model, tok, proc


def model_class():
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration


def load(name_or_path: str, device, dtype, quantization_config=None) -> SmolVLMBackend:
    """Load a SmolVLM2 backend by builtin name, local directory or hub id."""
    random_vision = False
    if name_or_path == "tiny-smolvlm":
        model, tok, proc = build_tiny(dtype)
        random_weights = True
    elif name_or_path == "smolvlm2-256m-smollm2":
        model, tok, proc = build_smollm2_shape(dtype)
        random_weights, random_vision = False, True  # the language model is real; the vision tower is random
    else:
        model, tok, proc = load_pretrained(name_or_path, dtype, quantization_config)
        random_weights = False
    model = place_model(model, model_class(), builtin=name_or_path in FAMILY.builtins, device=device,
                        dtype=dtype, quantization_config=quantization_config)
    return SmolVLMBackend(model, tok, proc, name=name_or_path, device=device, dtype=dtype, random_weights=random_weights,
                          random_vision=random_vision)
