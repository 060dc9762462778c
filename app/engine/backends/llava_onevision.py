"""LLaVA-OneVision family on transformers' ``LlavaOnevisionForConditionalGeneration``.

Each frame is one square ``image_size`` image (384 px for the published models) through the SigLIP
tower and the 2-layer projector, then pooled the way the model pools **video** frames
(``get_video_features`` / ``apply_pooling``: bilinear interpolation of the ``g x g`` patch grid to
``ceil(g/2) x ceil(g/2)``, 27 x 27 -> 14 x 14 = 196 tokens per frame at 384 px). The model follows a
video's tokens with its learned ``image_newline`` vector; a streamed frame is a one-frame video, so
its kept tokens are followed by the newline vector, in the model's own layout::

    Frame from 00:12:<video>*N<video:newline>\\n

(in ``input_ids`` the newline is one more ``<video>`` placeholder, as the model's processor counts
``frames * 196 + 1`` video tokens). Positions are 1D RoPE positions; a dropped visual token leaves
its slot empty so kept tokens, the newline and the text after keep their original positions.

The chat format is ChatML, the ``qwen_1_5`` conversation format LLaVA-OneVision was trained with
(the checkpoints' processor template expects structured contents, so string messages use ours).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from app.engine.backends.base import VideoLLM
from app.engine.backends.chat_format import derive_chat_format
from app.engine.backends.family import FamilyInfo
from app.engine.backends.family_utils import (
    CHATML_STOP,
    CHATML_TEMPLATE,
    DEFAULT_SYSTEM,
    build_model,
    build_published_shape,
    builtin_tokenizer,
    decoder_shape,
    load_checkpoint,
    normalized_chw,
    place_model,
    resize_square,
    token_id,
)
from app.engine.backends.types import BackendError, BackendSpec, SegmentInput, TimeAnchor
from app.engine.timefmt import format_timestamp

logger = logging.getLogger(__name__)

#: What the registry knows of this family; literal values only (it is read from this source without importing it).
FAMILY = FamilyInfo(
    name="llava_onevision",
    label="LLaVA-OneVision",
    hub_prefixes=("llava-hf/llava-onevision-",),
    model_types=("llava_onevision",),
    builtins={
        "tiny-llava-ov": "tiny random LLaVA-OneVision (2 text layers, hidden 64; 16 tokens per 64 px frame) for tests",
    },
    default_hub_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    test_model="tiny-llava-ov",
)

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (IMAGE_TOKEN, VIDEO_TOKEN)

#: SigLIP normalisation of the published checkpoints' preprocessor config.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

#: Published shapes (config.json of llava-hf/llava-onevision-qwen2-0.5b-ov-hf and -7b-ov-hf).
_SIGLIP_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                      num_attention_heads=16, patch_size=14, image_size=384, vision_use_head=False)
REAL_SHAPES = {
    "0.5b": {
        "text": dict(model_type="qwen2", vocab_size=152000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=1000000.0), tie_word_embeddings=True),
        "vision": _SIGLIP_SO400M,
        "tie_word_embeddings": True,
    },
    "7b": {
        "text": dict(model_type="qwen2", vocab_size=152128, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=1000000.0), tie_word_embeddings=False),
        "vision": _SIGLIP_SO400M,
        "tie_word_embeddings": False,
    },
}


def pooled_side(image_size: int, patch_size: int) -> int:
    """Side of a video frame's token grid after LLaVA-OneVision's 2x bilinear pooling."""
    return math.ceil((image_size // patch_size) / 2)


class LlavaOnevisionBackend(VideoLLM):
    """A loaded LLaVA-OneVision model ready to stream (one frame per step, 1D RoPE)."""

    def __init__(self, model, tokenizer, image_processor, *, name: str, device, dtype, random_weights: bool):
        self._attach(model, tokenizer, image_processor, device, dtype)
        cfg = model.config
        tcfg, vcfg = cfg.text_config, cfg.vision_config
        side = pooled_side(vcfg.image_size, vcfg.patch_size)
        self.spec = BackendSpec(
            family=FAMILY.name,
            name=name,
            **decoder_shape(tcfg),
            tokens_per_frame=side * side,
            token_grid=(side, side),
            frame_size=vcfg.image_size,
            random_weights=random_weights,
        )
        self.video_token_id = token_id(tokenizer, VIDEO_TOKEN)
        if self.video_token_id != cfg.video_token_id:
            raise BackendError(
                f"tokenizer and model disagree on the video token id: tokenizer {self.video_token_id}, "
                f"model config {cfg.video_token_id}"
            )
        self.chat = derive_chat_format(tokenizer, stop_strings=CHATML_STOP)
        self.default_system = DEFAULT_SYSTEM
        self._suffix = self.tokenize("\n")

    # ---- frames --------------------------------------------------------------------------------
    def resize_frame(self, rgb: np.ndarray) -> np.ndarray:
        return resize_square(rgb, self.spec.frame_size, self.image_processor.resample)

    def preprocess(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB frames -> ``pixel_values_videos (B, 1, 3, S, S)``: each frame a one-frame video.

        Square ``S = image_size`` frames, rescaled and normalised with the PIL image processor's settings
        (LLaVA-OneVision's video processor resizes video frames to the square input size too).
        """
        if len(frames) == 0:
            raise BackendError("encode_frames needs at least one frame")
        arr = normalized_chw(frames, self.image_processor, self.spec.frame_size)
        return torch.from_numpy(arr).unsqueeze(1)

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Frames -> ``(B, N, E)`` pooled visual tokens (the video newline is added by :meth:`frame_segment`)."""
        pv = self.preprocess(frames).to(self.device, self.dtype)
        cfg = self.model.config
        with torch.inference_mode():
            out = self.model.model.get_video_features(
                pixel_values_videos=pv,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
        # pooler_output: (B, N + 1, E), each one-frame video's N tokens then the image_newline vector
        return out.pooler_output[:, : self.spec.tokens_per_frame].to(self.dtype)

    def newline_embedding(self) -> torch.Tensor:
        """``(1, E)``: the learned ``image_newline`` vector that closes a video."""
        return self.model.model.image_newline.detach().view(1, -1).to(self.device, self.dtype)

    def frame_segment(self, pts: float, tokens: torch.Tensor, keep: torch.Tensor | None, start: int,
                      anchor: TimeAnchor | None = None) -> SegmentInput:
        n = self.spec.tokens_per_frame
        if tokens.ndim != 2 or tokens.shape[0] != n:
            raise BackendError(f"expected ({n}, E) visual tokens for a frame, got {tuple(tokens.shape)}")
        keep = torch.ones(n, dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
        if keep.shape != (n,):
            raise BackendError(f"keep must be a ({n},) mask, got {tuple(keep.shape)}")
        prefix = self.tokenize(f"Frame from {format_timestamp(pts)}:")
        suffix = self._suffix
        a = int(prefix.numel())
        kept = int(keep.sum())
        newline_pos = start + a + n
        positions = torch.cat([
            torch.arange(start, start + a),
            torch.arange(start + a, start + a + n)[keep],
            torch.tensor([newline_pos]),
            torch.arange(newline_pos + 1, newline_pos + 1 + suffix.numel()),
        ])
        embeds = torch.cat([
            self.embed_ids(prefix),
            tokens[keep.to(tokens.device)].to(self.device, self.dtype),
            self.newline_embedding(),
            self.embed_ids(suffix),
        ], dim=0)
        ids = torch.cat([prefix, torch.full((kept + 1,), self.video_token_id, dtype=torch.long), suffix])
        content = torch.zeros(ids.numel(), dtype=torch.bool)
        content[a : a + kept] = True
        return SegmentInput(embeds, positions, newline_pos + 1 + int(suffix.numel()), ids, content=content)

    # ---- model plumbing ----------------------------------------------------------------------------
    def decoder(self):
        return self.model.model.language_model


# ---- loading -------------------------------------------------------------------------------------------


def model_class():
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration


def image_processor(image_size: int):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    return LlavaOnevisionImageProcessorPil(
        image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD), size={"height": image_size, "width": image_size}
    )


def _config(tok, text: dict, vision: dict, tie: bool):
    from transformers import LlavaOnevisionConfig

    text = dict(text, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=token_id(tok, IMAGE_TOKEN),
        video_token_index=token_id(tok, VIDEO_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=tie,
    )


def build_tiny(dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): tiny random LLaVA-OneVision with the real SmolLM2 tokenizer."""
    tok = builtin_tokenizer(SPECIAL_TOKENS)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0), tie_word_embeddings=False)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, patch_size=8, image_size=64, vision_use_head=False)
    model = build_model(model_class(), _config(tok, text, vision, tie=False), dtype=dtype, seed=seed, fast_init=False)
    return model, tok, image_processor(64)


def build_real_shape(shape: str = "0.5b", dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): LLaVA-OneVision-0.5B or -7B shape with random weights.

    The published configuration values with the SmolLM2 tokenizer (its special-token ids fit inside
    the real vocabulary); weights filled fast (:func:`app.engine.backends.family_utils.fill_random_`).
    """
    model, tok, s = build_published_shape(REAL_SHAPES, shape, SPECIAL_TOKENS, _config, model_class(), dtype=dtype,
                                          seed=seed)
    return model, tok, image_processor(s["vision"]["image_size"])


def load_pretrained(path_or_id: str, dtype, quantization_config=None):
    """A LLaVA-OneVision checkpoint from a local directory or a hub id (cached, or downloaded when online)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    model, tok, proc = load_checkpoint(FAMILY.label, model_class(), LlavaOnevisionImageProcessorPil, path_or_id,
                                       dtype, quantization_config)
    tok.chat_template = CHATML_TEMPLATE
    return model, tok, proc


def load(name_or_path: str, device, dtype, quantization_config=None) -> LlavaOnevisionBackend:
    """Load a LLaVA-OneVision backend by builtin name, local directory or hub id."""
    builtin = name_or_path in FAMILY.builtins
    if name_or_path == "tiny-llava-ov":
        model, tok, proc = build_tiny(dtype)
    else:
        model, tok, proc = load_pretrained(name_or_path, dtype, quantization_config)
    model = place_model(model, model_class(), builtin=builtin, device=device, dtype=dtype,
                        quantization_config=quantization_config)
    return LlavaOnevisionBackend(model, tok, proc, name=name_or_path, device=device, dtype=dtype, random_weights=builtin)
