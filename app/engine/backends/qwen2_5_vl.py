"""Qwen2.5-VL family on transformers' ``Qwen2_5_VLForConditionalGeneration``.

**Steps of two frames.** Qwen2.5-VL's vision tower embeds video in temporal patches of
``temporal_patch_size`` (2) frames, so frames enter the model in pairs
(``spec.frames_per_step == 2``): the session buffers frames and encodes each pair into one grid of
``rows x cols`` merged tokens (2x2 patches merged; 16 x 16 = 256 tokens for a 448 px frame). A pair
is one self-contained video in the model's own layout, after a timestamp marker::

    Frames from 00:12:<|vision_start|><|video_pad|>*N<|vision_end|>\\n

**3D M-RoPE positions, incrementally.** Positions are ``(3, T)`` (temporal, height, width). Text
tokens have all three rows equal. A step laid out from ``start`` with ``a`` marker tokens puts its
video at ``P = start + a``: the token in merged-grid cell ``(r, c)`` gets ``(t, P + r, P + c)``; the
text after it continues at the highest position the step used plus one (``P + max(rows, cols)``
unless ``t`` is higher). A dropped token leaves its slot empty; kept tokens keep their ``(t, h, w)``.
Questions and answers follow the highest position used so far.

**Stream time on the temporal axis.** Qwen2.5-VL encodes absolute time in the temporal row: in its
own ``get_rope_index`` a video's temporal patch ``k`` sits at ``P + floor(k * second_per_grid_t *
tokens_per_second)``, so one temporal position is ``1 / tokens_per_second`` seconds (0.5 s for the
published checkpoints). A stream is laid out on one such clock: the first step anchors stream time
``pts0`` at its own ``P0`` (a :class:`~app.engine.backends.types.TimeAnchor` the session keeps), and every
later step's temporal index is ``t = P0 + floor((pts - pts0) * tokens_per_second)`` with ``pts`` the
stream time of the step's first frame. Two steps are therefore ``tokens_per_second`` positions apart
per second of stream time, whatever the frame rate, dropped steps, gaps or text between them, which
is exactly the spacing the model gives two temporal patches of one video. Height, width and text
follow the token flow as in the model's own layout (transformers also continues text after a video
from its spatial extent, independently of the temporal row). The first step of a stream is exactly
the model's own layout of a one-grid video. A stream whose time goes backwards (a source restarting
its clock) starts a new anchor at that step.

**Unpaired last frame.** When a question, a note or a save arrives with one frame of a pair
waiting, the session completes the pair by repeating that frame (Session.flush), which is also
what Qwen2.5-VL's own video processor does with an odd frame count (it repeats the last frame).
``encode_frames`` does the same when handed an odd number of frames.

Frames are preprocessed with ``Qwen2VLImageProcessorPil``'s own settings (resampling filter,
rescale factor, mean, std) into square ``frame_size`` images, and laid out as temporal patches the
way transformers' Qwen2-VL video processor does (which needs torchvision, unavailable here).
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
    name="qwen2_5_vl",
    label="Qwen2.5-VL",
    hub_prefixes=("Qwen/Qwen2.5-VL-",),
    model_types=("qwen2_5_vl",),
    builtins={
        "tiny-qwen2_5_vl": "tiny random Qwen2.5-VL (2 text layers, hidden 64; 16 tokens per 112 px frame pair) for tests",
    },
    default_hub_id="Qwen/Qwen2.5-VL-3B-Instruct",
    test_model="tiny-qwen2_5_vl",
)

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
SPECIAL_TOKENS = (VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD)

#: Square frame side for checkpoints: 448 px = 32 x 32 patches = 16 x 16 merged tokens per frame pair.
DEFAULT_FRAME_SIZE = 448
TINY_FRAME_SIZE = 112

#: Published shapes (config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct).
REAL_SHAPES = {
    "3b": {
        "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
        "tie_word_embeddings": True,
    },
    "7b": {
        "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
        "tie_word_embeddings": False,
    },
}


class Qwen25VLBackend(VideoLLM):
    """A loaded Qwen2.5-VL model ready to stream (frames in pairs, 3D M-RoPE positions)."""

    def __init__(self, model, tokenizer, image_processor, *, name: str, device, dtype, random_weights: bool,
                 frame_size: int = DEFAULT_FRAME_SIZE):
        self._attach(model, tokenizer, image_processor, device, dtype)
        cfg = model.config
        tcfg, vcfg = cfg.text_config, cfg.vision_config
        self.patch_size = int(vcfg.patch_size)
        self.merge_size = int(vcfg.spatial_merge_size)
        self.temporal_patch_size = int(vcfg.temporal_patch_size)
        self.tokens_per_second = float(vcfg.tokens_per_second)
        factor = self.patch_size * self.merge_size
        if not isinstance(frame_size, int) or frame_size < factor or frame_size % factor:
            raise BackendError(f"frame_size must be a positive multiple of {factor} (patch x merge), got {frame_size!r}")
        patches = frame_size // self.patch_size
        side = patches // self.merge_size
        self.spec = BackendSpec(
            family=FAMILY.name,
            name=name,
            # Qwen2_5_VLAttention uses hidden_size // num_heads whatever the config's head_dim says
            **decoder_shape(tcfg, head_dim=tcfg.hidden_size // tcfg.num_attention_heads),
            tokens_per_frame=side * side,
            token_grid=(side, side),
            frame_size=frame_size,
            position_dims=3,
            frames_per_step=self.temporal_patch_size,
            random_weights=random_weights,
        )
        self.video_token_id = token_id(tokenizer, VIDEO_PAD)
        self.vision_start_id = token_id(tokenizer, VISION_START)
        self.vision_end_id = token_id(tokenizer, VISION_END)
        expected = (cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)
        if (self.video_token_id, self.vision_start_id, self.vision_end_id) != expected:
            raise BackendError(
                f"tokenizer and model disagree on the vision token ids: tokenizer "
                f"{(self.video_token_id, self.vision_start_id, self.vision_end_id)}, model config {expected}"
            )
        self.chat = derive_chat_format(tokenizer, stop_strings=CHATML_STOP)
        self.default_system = DEFAULT_SYSTEM
        self._wrap_open = torch.tensor([self.vision_start_id], dtype=torch.long)
        self._wrap_close = torch.cat([torch.tensor([self.vision_end_id], dtype=torch.long), self.tokenize("\n")])

    # ---- frames --------------------------------------------------------------------------------
    def resize_frame(self, rgb: np.ndarray) -> np.ndarray:
        return resize_square(rgb, self.spec.frame_size, self.image_processor.resample)

    def _paired(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        frames = list(frames)
        if not frames:
            raise BackendError("encode_frames needs at least one frame")
        while len(frames) % self.temporal_patch_size:
            frames.append(frames[-1])  # as Qwen2-VL's video processor pads an odd frame count
        return frames

    def preprocess(self, frames: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB frames -> ``(pixel_values_videos, video_grid_thw)``, one video step per frame pair.

        Returns:
            pixel_values_videos: ``(steps * gh * gw, 3 * 2 * p * p)`` float32 flattened temporal patches,
                in the layout of transformers' Qwen2-VL video processor.
            video_grid_thw: ``(steps, 3)`` int64, each ``(1, gh, gw)`` (``gh = gw = frame_size / p``).
        """
        frames = self._paired(frames)
        s, p, m, tp = self.spec.frame_size, self.patch_size, self.merge_size, self.temporal_patch_size
        arr = normalized_chw(frames, self.image_processor, s)  # (F, C, S, S)
        steps, c, g = len(frames) // tp, arr.shape[1], s // p
        x = arr.reshape(steps, tp, c, g // m, m, p, g // m, m, p)
        # -> (steps, gh/m, gw/m, m, m, C, tp, p, p): merge groups first, as the vision tower expects
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        flat = np.ascontiguousarray(x).reshape(steps * g * g, c * tp * p * p)
        grid = torch.tensor([[1, g, g]] * steps, dtype=torch.long)
        return torch.from_numpy(flat), grid

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Frame pairs -> ``(steps, N, E)`` merged visual tokens (an odd last frame is repeated)."""
        pv, grid = self.preprocess(frames)
        with torch.inference_mode():
            out = self.model.model.get_video_features(
                pixel_values_videos=pv.to(self.device, self.dtype), video_grid_thw=grid.to(self.device), return_dict=True
            )
        return torch.stack(list(out.pooler_output)).to(self.dtype)

    def frame_segment(self, pts: float, tokens: torch.Tensor, keep: torch.Tensor | None, start: int,
                      anchor: TimeAnchor | None = None) -> SegmentInput:
        """Marker, ``<|vision_start|>``, the kept tokens of one pair at ``(t, h, w)``, ``<|vision_end|>``.

        ``tokens``: ``(N, E)`` with ``N = rows * cols``; ``keep``: ``(N,)`` bool or ``None``. The
        temporal index ``t`` comes from ``pts`` on the stream clock ``anchor`` (a new anchor at this
        step when ``None`` or when ``pts`` is earlier than the anchor's); the returned segment
        carries the anchor it used.
        """
        n = self.spec.tokens_per_frame
        if tokens.ndim != 2 or tokens.shape[0] != n:
            raise BackendError(f"expected ({n}, E) visual tokens for a frame pair, got {tuple(tokens.shape)}")
        keep = torch.ones(n, dtype=torch.bool) if keep is None else keep.to(torch.bool).cpu()
        if keep.shape != (n,):
            raise BackendError(f"keep must be a ({n},) mask, got {tuple(keep.shape)}")
        prefix = torch.cat([self.tokenize(f"Frames from {format_timestamp(pts)}:"), self._wrap_open])
        suffix = self._wrap_close
        a = int(prefix.numel())
        video_start = start + a
        if anchor is None or pts < anchor.pts:
            anchor = TimeAnchor(float(pts), video_start)
        t = self.temporal_position(pts, anchor)
        vis = self.video_positions(video_start, t)[:, keep]
        suf_start = max(video_start + max(self.spec.token_grid), t + 1)
        positions = torch.cat(
            [self.text_positions(start, a), vis, self.text_positions(suf_start, int(suffix.numel()))], dim=1
        )
        kept = int(keep.sum())
        embeds = torch.cat(
            [self.embed_ids(prefix), tokens[keep.to(tokens.device)].to(self.device, self.dtype), self.embed_ids(suffix)],
            dim=0,
        )
        ids = torch.cat([prefix, torch.full((kept,), self.video_token_id, dtype=torch.long), suffix])
        content = torch.zeros(ids.numel(), dtype=torch.bool)
        content[a : a + kept] = True
        return SegmentInput(embeds, positions, suf_start + int(suffix.numel()), ids, content=content, time_anchor=anchor)

    def temporal_position(self, pts: float, anchor: TimeAnchor) -> int:
        """Temporal index of stream time ``pts`` on the clock ``anchor``: ``1 / tokens_per_second`` s per position.

        ``floor`` as the model's own ``get_rope_index`` truncates ``k * second_per_grid_t * tokens_per_second``
        (a micro-second tolerance keeps ``2.0000001 s`` and ``2 s`` on the same index).
        """
        offset = (float(pts) - anchor.pts) * self.tokens_per_second
        return anchor.position + max(0, math.floor(offset + 1e-6))

    def video_positions(self, start: int, temporal: int | None = None) -> torch.Tensor:
        """``(3, N)`` (t, h, w) positions of a step's video tokens when its video starts at ``start``.

        Row-major over the merged grid: cell ``(r, c)`` -> ``(temporal, start + r, start + c)``;
        ``temporal`` defaults to ``start`` (a one-grid video in the model's own layout).
        """
        rows, cols = self.spec.token_grid
        r = torch.arange(rows).repeat_interleave(cols)
        c = torch.arange(cols).repeat(rows)
        t = start if temporal is None else temporal
        return torch.stack([torch.full((rows * cols,), t), start + r, start + c]).long()

    # ---- positions and model plumbing ----------------------------------------------------------------
    def text_positions(self, start: int, n: int) -> torch.Tensor:
        """``(3, n)``: text tokens have equal temporal, height and width positions."""
        return torch.arange(start, start + n, dtype=torch.long).expand(3, n).clone()

    def decoder(self):
        return self.model.model.language_model

    def model_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``(3, T)`` (or 1D ``(T,)``) positions -> the model's ``position_ids`` ``(3, batch=1, T)``."""
        pos = positions if positions.ndim == 2 else positions.expand(3, -1)
        return pos.reshape(3, 1, -1)


# ---- loading -------------------------------------------------------------------------------------------


def model_class():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


def image_processor(patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size)


def _config(tok, text: dict, vision: dict, tie: bool):
    from transformers import Qwen2_5_VLConfig

    ids = {
        "image_token_id": token_id(tok, IMAGE_PAD),
        "video_token_id": token_id(tok, VIDEO_PAD),
        "vision_start_token_id": token_id(tok, VISION_START),
        "vision_end_token_id": token_id(tok, VISION_END),
    }
    text = dict(text, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)


def build_tiny(dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): tiny random Qwen2.5-VL with the real SmolLM2 tokenizer.

    Windowed vision attention is exercised: a 112 px frame is 8 x 8 patches, in 4 windows of 4 x 4.
    """
    tok = builtin_tokenizer(SPECIAL_TOKENS)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3]))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                  tokens_per_second=2)
    model = build_model(model_class(), _config(tok, text, vision, tie=False), dtype=dtype, seed=seed, fast_init=False)
    return model, tok, image_processor()


def build_real_shape(shape: str = "3b", dtype=torch.float32, seed: int = 0):
    """-> (model, tokenizer, image_processor): Qwen2.5-VL-3B or -7B shape with random weights.

    The published configuration values (layers, widths, heads, vocabulary size, M-RoPE sections,
    vision tower) with the SmolLM2 tokenizer (its special-token ids fit inside the real vocabulary):
    the KV and compute per token are the real model's, the answers are noise. Weights are filled
    fast (:func:`app.engine.backends.family_utils.fill_random_`).
    """
    model, tok, s = build_published_shape(REAL_SHAPES, shape, SPECIAL_TOKENS, _config, model_class(), dtype=dtype,
                                          seed=seed)
    return model, tok, image_processor()


def load_pretrained(path_or_id: str, dtype, quantization_config=None):
    """A Qwen2.5-VL checkpoint from a local directory or a hub id (cached, or downloaded when online)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model, tok, proc = load_checkpoint(FAMILY.label, model_class(), Qwen2VLImageProcessorPil, path_or_id, dtype,
                                       quantization_config)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return model, tok, proc


def load(name_or_path: str, device, dtype, quantization_config=None) -> Qwen25VLBackend:
    """Load a Qwen2.5-VL backend by builtin name, local directory or hub id."""
    builtin = name_or_path in FAMILY.builtins
    if name_or_path == "tiny-qwen2_5_vl":
        model, tok, proc = build_tiny(dtype)
        frame_size = TINY_FRAME_SIZE
    else:
        model, tok, proc = load_pretrained(name_or_path, dtype, quantization_config)
        frame_size = DEFAULT_FRAME_SIZE
    model = place_model(model, model_class(), builtin=builtin, device=device, dtype=dtype,
                        quantization_config=quantization_config)
    return Qwen25VLBackend(model, tok, proc, name=name_or_path, device=device, dtype=dtype,
                           random_weights=builtin, frame_size=frame_size)
