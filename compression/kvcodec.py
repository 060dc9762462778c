"""KV quantization codec: packs the keys and values of one chunk, all layers.

Layout, as KIVI and VidKV recommend:

* **Keys** are quantized *per channel*: statistics over the token axis ``T``, in
  groups of ``group_size`` tokens, so every (layer, head, channel, token group)
  has its own scale and zero point. Key channels with large outliers are the
  norm after RoPE, and per-channel groups keep one outlier channel from
  flattening the resolution of the others. Optionally the ``outlier_channels``
  key channels with the largest ``max |k|`` (chosen per layer and head) are kept
  in float16 and left out of the quantized payload.
* **Values** are quantized per channel (same layout as keys), per token
  (statistics over ``D`` in groups of ``group_size`` channels), or ternary per
  token (``"ternary"``: three levels, 1.58 bits of information packed five codes
  to a byte, 1.6 bits, as VidKV stores video values), chosen by ``value_mode``.
* Key codes are packed **per layer** (each layer's codes start on a byte), so the
  keys of a layer range can be cut out as :class:`PackedKeys` without unpacking:
  what a rerank keeps in RAM and what a chunk file stores as its own section.
* ``bits=32`` stores float32 (bit-exact for float32, float16 and bfloat16
  input); ``bits=16`` stores float16 (exact up to float16 rounding); 8, 4 and 2
  bits store uniform asymmetric codes packed 1, 2 and 4 to a byte, with float16
  scales and zero points.

Error bound: decoding to float32 errs by at most
``scale / 2`` of the element's group plus ``2**-20 * (|zero| + levels * scale)``
of float32 slack; float16-stored elements (``bits=16``, outlier channels) err
by at most half a float16 spacing. :meth:`KVCodec.error_bound` returns the
bound of every element. Decoding to a narrower dtype than float32 adds that
dtype's rounding on top.

``outlier_channels``, ``group_size`` and ``value_mode`` only matter for 8, 4 and
2 bits; 16 and 32 bits store every element as a float.

Nothing here depends on a model: shapes come from the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from compression.quant import (
    TERNARY_LEVELS,
    dequantize_groups,
    expand_groups,
    fp16_rounding_bound,
    group_error_bound,
    num_groups,
    pack_bits,
    pack_rows,
    pack_trits,
    packed_numel,
    quantize_groups,
    trit_packed_numel,
    unpack_bits,
    unpack_rows,
    unpack_trits,
)
from streaming.checks import check_choice, check_int

#: Bits per stored KV element: 32 (float32, lossless), 16 (float16), 8, 4, 2 (integer codes).
KV_BITS: tuple[int, ...] = (32, 16, 8, 4, 2)
#: How values are quantized: per channel (like keys), per token, or ternary per token (1.6 bits a code).
VALUE_MODES: tuple[str, ...] = ("channel", "token", "ternary")
#: Outlier channel indices are stored as int16.
MAX_OUTLIER_CHANNELS = 32767
#: Largest magnitude a float16 can hold; inputs to 16-bit and quantized modes must stay within it.
FP16_MAX = 65504.0
STATE_FORMAT = "livesight.kvcodec.PackedKV"
#: 2: key codes packed per layer (``k_codes`` is ``(L, bytes)``); version 1 (one flat stream) still loads.
STATE_VERSION = 2
KEYS_FORMAT = "livesight.kvcodec.PackedKeys"
_FLOAT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


class KVCodecError(ValueError):
    """Bad codec configuration, bad input tensors or a malformed packed chunk."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class KVCodecConfig:
    """How to pack KV.

    Attributes:
        bits: one of 32, 16, 8, 4, 2. 32 stores float32 (lossless), 16 stores
            float16; 8, 4 and 2 store packed integer codes.
        value_mode: ``"channel"`` (per-channel value quantization, statistics over
            tokens), ``"token"`` (per-token, statistics over channels) or
            ``"ternary"`` (per token, three levels, whatever ``bits`` the keys use;
            needs 8, 4 or 2 bits).
        group_size: per-channel: tokens per quantization group along ``T``;
            per-token: channels per group along ``D``. At least 1.
        outlier_channels: key channels per layer and head (the largest
            ``max |k|``) kept in float16 outside the quantized payload; 0 to
            32767, and at most the head dimension of the encoded keys.
    """

    bits: int = 16
    value_mode: str = "channel"
    group_size: int = 32
    outlier_channels: int = 0

    def __post_init__(self) -> None:
        check_choice("KVCodecConfig.bits", self.bits, KV_BITS, error=KVCodecError)
        check_choice("KVCodecConfig.value_mode", self.value_mode, VALUE_MODES, error=KVCodecError)
        check_int("KVCodecConfig.group_size", self.group_size, low=1, error=KVCodecError)
        check_int("KVCodecConfig.outlier_channels", self.outlier_channels, low=0, high=MAX_OUTLIER_CHANNELS,
                  error=KVCodecError)
        if self.value_mode == "ternary" and not self.quantized:
            raise KVCodecError(
                f"KVCodecConfig.value_mode='ternary' needs quantized keys (bits 8, 4 or 2); got bits={self.bits}"
            )

    @property
    def quantized(self) -> bool:
        """True for 8, 4 and 2 bits (integer codes), False for 16 and 32 (floats)."""
        return self.bits <= 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``KVCodecConfig(**d)`` rebuilds it."""
        return {
            "bits": self.bits,
            "value_mode": self.value_mode,
            "group_size": self.group_size,
            "outlier_channels": self.outlier_channels,
        }


def expected_layout(config: KVCodecConfig, shape: tuple[int, int, int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The tensors a :class:`PackedKV` of this config and shape holds: name -> (shape, dtype).

    * 32/16 bits: ``k``, ``v`` of shape ``(L, H, T, D)``.
    * 8/4/2 bits, with ``C = D - outlier_channels`` quantized key channels and
      ``gT = ceil(T / group_size)``, ``gD = ceil(D / group_size)``:

      - ``k_codes``: ``(L, packed_numel(H * C * T))``: each layer's codes in
        ``(H, C, T)`` order, packed on their own; ``k_scale``, ``k_zero``:
        ``(L, H, C, gT)`` float16.
      - ``k_outlier_idx``: ``(L, H, n)`` int16, ascending channel indices;
        ``k_outlier_val``: ``(L, H, T, n)`` float16 (only when ``n > 0``).
      - ``v_codes``: packed codes in ``(L, H, D, T)`` order (channel mode) or
        ``(L, H, T, D)`` order (token mode); ``v_scale``, ``v_zero``:
        ``(L, H, D, gT)`` or ``(L, H, T, gD)`` float16. Ternary values: ``v_codes``
        ``(ceil(L * H * T * D / 5),)`` in ``(L, H, T, D)`` order, statistics ``(L, H, T, gD)``.
    """
    L, H, T, D = shape
    if config.bits == 32:
        return {"k": (shape, torch.float32), "v": (shape, torch.float32)}
    if config.bits == 16:
        return {"k": (shape, torch.float16), "v": (shape, torch.float16)}
    n = config.outlier_channels
    C = D - n
    G = config.group_size
    gT = num_groups(T, G)
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "k_codes": ((L, packed_numel(H * C * T, config.bits)), torch.uint8),
        "k_scale": ((L, H, C, gT), torch.float16),
        "k_zero": ((L, H, C, gT), torch.float16),
    }
    if n:
        layout["k_outlier_idx"] = ((L, H, n), torch.int16)
        layout["k_outlier_val"] = ((L, H, T, n), torch.float16)
    stat = (L, H, D, gT) if config.value_mode == "channel" else (L, H, T, num_groups(D, G))
    if config.value_mode == "ternary":
        layout["v_codes"] = ((trit_packed_numel(L * H * T * D),), torch.uint8)
    else:
        layout["v_codes"] = ((packed_numel(L * H * T * D, config.bits),), torch.uint8)
    layout["v_scale"] = (stat, torch.float16)
    layout["v_zero"] = (stat, torch.float16)
    return layout


@dataclass(frozen=True, eq=False)
class PackedKV:
    """Packed KV of one chunk, all layers. Holds only tensors and plain metadata.

    Attributes:
        config: the codec settings it was packed with (decode reads them from here).
        shape: ``(L, H, T, D)`` of the original keys (and values).
        dtype: dtype of the original tensors; :meth:`KVCodec.decode` returns it by default.
        tensors: the payload, see :func:`expected_layout`. Treat as read-only.

    Construction validates the tensors against the layout the config and shape
    imply, so a truncated or mismatched chunk fails here with
    :class:`KVCodecError`, not later inside decode.
    """

    config: KVCodecConfig
    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    tensors: dict[str, torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.config, KVCodecConfig):
            raise KVCodecError(f"PackedKV.config must be a KVCodecConfig; got {type(self.config).__name__}")
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if shape is None or len(shape) != 4 or not all(_is_int(s) and s >= 1 for s in shape):
            raise KVCodecError(f"PackedKV.shape must be 4 positive integers (L, H, T, D); got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in _FLOAT_DTYPES.values():
            raise KVCodecError(f"PackedKV.dtype must be one of {sorted(_FLOAT_DTYPES)}; got {self.dtype!r}")
        if self.config.outlier_channels > shape[3] and self.config.quantized:
            raise KVCodecError(
                f"PackedKV.config.outlier_channels={self.config.outlier_channels} exceeds the head dimension D={shape[3]}"
            )
        if not isinstance(self.tensors, dict):
            raise KVCodecError(f"PackedKV.tensors must be a dict of tensors; got {type(self.tensors).__name__}")
        layout = expected_layout(self.config, shape)
        if set(self.tensors) != set(layout):
            raise KVCodecError(
                f"PackedKV.tensors has keys {sorted(self.tensors)}; config {self.config.to_dict()} "
                f"needs exactly {sorted(layout)}"
            )
        for name, (want_shape, want_dtype) in layout.items():
            t = self.tensors[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want_shape or t.dtype != want_dtype:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise KVCodecError(f"PackedKV.tensors[{name!r}] must be {want_shape} {want_dtype}; got {got}")
        if "k_outlier_idx" in layout:
            idx = self.tensors["k_outlier_idx"]
            in_range = bool(((idx >= 0) & (idx < shape[3])).all())
            ascending = bool((idx[..., 1:] > idx[..., :-1]).all())
            if not (in_range and ascending):
                raise KVCodecError(
                    f"PackedKV.tensors['k_outlier_idx'] must hold strictly ascending channel indices in [0, {shape[3]})"
                )
        object.__setattr__(self, "tensors", dict(self.tensors))

    @property
    def nbytes(self) -> int:
        """True storage bytes of all tensors: payload, scales, zero points, outlier indices and values."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def num_elements(self) -> int:
        """Elements encoded: ``2 * L * H * T * D`` (keys and values)."""
        L, H, T, D = self.shape
        return 2 * L * H * T * D

    def bits_per_element(self) -> float:
        """``nbytes * 8 / (2 * L * H * T * D)``, metadata included."""
        return self.nbytes * 8 / self.num_elements

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for saving: json-able metadata plus ``"tensors"``, a flat dict of tensors.

        ``torch.save`` / ``torch.load(weights_only=True)`` take it as is; for
        safetensors, save ``state["tensors"]`` and put the other keys, as JSON,
        in the file's metadata. The tensors are not copied.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "PackedKV":
        """Rebuild from :meth:`state_dict`; raises :class:`KVCodecError` on anything malformed."""
        if not isinstance(state, dict):
            raise KVCodecError(f"PackedKV state must be a dict; got {type(state).__name__}")
        missing = [key for key in ("format", "version", "config", "shape", "dtype", "tensors") if key not in state]
        if missing:
            raise KVCodecError(f"PackedKV state is missing {missing}")
        if state["format"] != STATE_FORMAT:
            raise KVCodecError(f"PackedKV state format must be {STATE_FORMAT!r}; got {state['format']!r}")
        if state["version"] not in (1, STATE_VERSION):
            raise KVCodecError(f"PackedKV state version {state['version']!r} is not supported (expected {STATE_VERSION})")
        if not isinstance(state["config"], dict):
            raise KVCodecError(f"PackedKV state 'config' must be a dict; got {type(state['config']).__name__}")
        try:
            config = KVCodecConfig(**state["config"])
        except TypeError as exc:
            raise KVCodecError(f"PackedKV state 'config' has unknown fields: {exc}") from exc
        dtype = _FLOAT_DTYPES.get(state["dtype"]) if isinstance(state["dtype"], str) else None
        if dtype is None:
            raise KVCodecError(f"PackedKV state 'dtype' must be one of {sorted(_FLOAT_DTYPES)}; got {state['dtype']!r}")
        shape = state["shape"]
        if not isinstance(shape, (list, tuple)):
            raise KVCodecError(f"PackedKV state 'shape' must be a list of 4 integers; got {shape!r}")
        tensors = state["tensors"]
        if state["version"] == 1 and config.quantized and isinstance(tensors, dict):
            tensors = _upgrade_v1_keys(config, tuple(shape), tensors)
        return cls(config=config, shape=tuple(shape), dtype=dtype, tensors=tensors)


def _upgrade_v1_keys(config: KVCodecConfig, shape: tuple, tensors: dict) -> dict:
    """Version 1 packed all key codes as one stream; repack them per layer (version 2)."""
    codes = tensors.get("k_codes")
    if not isinstance(codes, torch.Tensor) or len(shape) != 4 or not all(_is_int(d) and d >= 1 for d in shape):
        return tensors  # malformed: let the layout check name the problem
    L, H, _, D = shape
    per_layer = H * (D - config.outlier_channels) * shape[2]
    try:
        flat = unpack_bits(codes, config.bits, L * per_layer).view(L, per_layer)
    except (ValueError, RuntimeError) as exc:
        raise KVCodecError(f"PackedKV.tensors['k_codes'] of a version-1 state does not fit shape {shape}: {exc}") from None
    return {**tensors, "k_codes": pack_rows(flat, config.bits)}


def key_tensor_names(config: KVCodecConfig) -> tuple[str, ...]:
    """Names of the tensors that hold keys (each has the layer axis first)."""
    if not config.quantized:
        return ("k",)
    names = ("k_codes", "k_scale", "k_zero")
    return names + (("k_outlier_idx", "k_outlier_val") if config.outlier_channels else ())


@dataclass(frozen=True, eq=False)
class PackedKeys:
    """The packed keys of the layers ``[first, stop)`` of one chunk, nothing else.

    What a rerank needs of a chunk, small enough to keep in RAM for every chunk, and the
    section of a chunk file that is read (and verified) on its own.

    Attributes:
        config: codec settings of the chunk.
        shape: ``(L, H, T, D)`` of the whole chunk's keys.
        dtype: dtype the chunk was appended with.
        first, stop: the layer range held, ``0 <= first < stop <= L``.
        tensors: the key tensors of :func:`expected_layout` cut to those layers (layer axis first).
    """

    config: KVCodecConfig
    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    first: int
    stop: int
    tensors: dict[str, torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.config, KVCodecConfig):
            raise KVCodecError(f"PackedKeys.config must be a KVCodecConfig; got {type(self.config).__name__}")
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if shape is None or len(shape) != 4 or not all(_is_int(s) and s >= 1 for s in shape):
            raise KVCodecError(f"PackedKeys.shape must be 4 positive integers (L, H, T, D); got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in _FLOAT_DTYPES.values():
            raise KVCodecError(f"PackedKeys.dtype must be one of {sorted(_FLOAT_DTYPES)}; got {self.dtype!r}")
        if not (_is_int(self.first) and _is_int(self.stop) and 0 <= self.first < self.stop <= shape[0]):
            raise KVCodecError(
                f"PackedKeys layers must satisfy 0 <= first < stop <= {shape[0]}; got {self.first!r}, {self.stop!r}"
            )
        layout = expected_layout(self.config, shape)
        names = key_tensor_names(self.config)
        if not isinstance(self.tensors, dict) or set(self.tensors) != set(names):
            got = sorted(self.tensors) if isinstance(self.tensors, dict) else type(self.tensors).__name__
            raise KVCodecError(f"PackedKeys.tensors has {got}; config {self.config.to_dict()} needs exactly {sorted(names)}")
        for name in names:
            want_shape, want_dtype = layout[name]
            want_shape = (self.stop - self.first, *want_shape[1:])
            t = self.tensors[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want_shape or t.dtype != want_dtype:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise KVCodecError(f"PackedKeys.tensors[{name!r}] must be {want_shape} {want_dtype}; got {got}")
        if "k_outlier_idx" in self.tensors:
            idx = self.tensors["k_outlier_idx"]
            if not bool(((idx >= 0) & (idx < shape[3])).all()) or not bool((idx[..., 1:] > idx[..., :-1]).all()):
                raise KVCodecError(
                    f"PackedKeys.tensors['k_outlier_idx'] must hold strictly ascending channel indices in [0, {shape[3]})"
                )
        object.__setattr__(self, "tensors", dict(self.tensors))

    @property
    def layers(self) -> range:
        return range(self.first, self.stop)

    @property
    def nbytes(self) -> int:
        """True bytes of the key tensors held (codes, scales, zero points, outliers)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for ``torch.save`` (json-able metadata plus ``"tensors"``)."""
        return {
            "format": KEYS_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "first": self.first,
            "stop": self.stop,
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "PackedKeys":
        """Rebuild from :meth:`state_dict`; raises :class:`KVCodecError` on anything malformed."""
        if not isinstance(state, dict) or state.get("format") != KEYS_FORMAT or state.get("version") != STATE_VERSION:
            raise KVCodecError(f"PackedKeys state must be a dict of format {KEYS_FORMAT!r} version {STATE_VERSION}")
        try:
            config = KVCodecConfig(**state["config"])
            dtype = _FLOAT_DTYPES[state["dtype"]]
            return cls(config=config, shape=tuple(state["shape"]), dtype=dtype, first=state["first"],
                       stop=state["stop"], tensors=state["tensors"])
        except (KeyError, TypeError) as exc:
            raise KVCodecError(f"PackedKeys state is malformed: {exc!r}") from None


def split_keys(packed: PackedKV, first: int) -> tuple[PackedKeys, dict[str, torch.Tensor]]:
    """Cut ``packed`` into the keys of layers ``[first, L)`` and everything else.

    Returns:
        ``(upper, rest)``: ``upper`` a :class:`PackedKeys` (fresh tensors: keeping it keeps
        nothing else of the chunk alive); ``rest`` the other tensors of ``packed`` with the key
        tensors cut to layers ``[0, first)``. :func:`join_keys` inverts it.
    """
    L = packed.shape[0]
    if not (_is_int(first) and 0 <= first < L):
        raise KVCodecError(f"split_keys: first must be in [0, {L}); got {first!r}")
    names = key_tensor_names(packed.config)
    t = packed.tensors
    upper = PackedKeys(packed.config, packed.shape, packed.dtype, first, L,
                       {n: t[n][first:].clone() for n in names})
    rest = {n: (t[n][:first].clone() if n in names else t[n]) for n in t}
    return upper, rest


def join_keys(upper: PackedKeys, rest: dict[str, torch.Tensor]) -> PackedKV:
    """Inverse of :func:`split_keys`: the whole :class:`PackedKV`."""
    if not isinstance(upper, PackedKeys) or upper.stop != upper.shape[0]:
        raise KVCodecError("join_keys needs the PackedKeys of the upper layers [first, L)")
    tensors = dict(rest)
    for name in key_tensor_names(upper.config):
        lower = rest.get(name)
        if not isinstance(lower, torch.Tensor) or lower.shape[0] != upper.first:
            raise KVCodecError(f"join_keys: tensor {name!r} of the rest does not hold layers [0, {upper.first})")
        tensors[name] = torch.cat([lower, upper.tensors[name]]) if upper.first else upper.tensors[name]
    return PackedKV(config=upper.config, shape=upper.shape, dtype=upper.dtype, tensors=tensors)


def _check_input(name: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise KVCodecError(f"{name} must be a torch.Tensor of shape (L, H, T, D); got {type(x).__name__}")
    if x.dim() != 4:
        raise KVCodecError(f"{name} must have shape (L, H, T, D); got {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise KVCodecError(f"{name} must not be empty; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise KVCodecError(f"{name} must be a floating-point tensor; got {x.dtype}")
    if x.dtype not in _FLOAT_DTYPES.values():
        raise KVCodecError(f"{name} dtype must be one of {sorted(_FLOAT_DTYPES)}; got {x.dtype}")


def _check_magnitude(name: str, x: torch.Tensor, limit: float) -> None:
    peak = float(x.abs().amax())
    if not peak <= limit:  # also catches NaN
        what = "non-finite values" if peak != peak or peak == float("inf") else f"values up to {peak:g}"
        raise KVCodecError(f"{name} has {what}; this codec setting stores at most |x| <= {limit:g}")


def _take_channels(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x (L, H, T, D)``, ``idx (L, H, m)`` int64 -> ``(L, H, T, m)``: per (layer, head) channel gather."""
    L, H, T, _ = x.shape
    return x.gather(-1, idx.unsqueeze(2).expand(L, H, T, idx.shape[-1]))


def _split_outliers(k: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the ``n`` key channels with the largest ``max |k|`` per (layer, head).

    Returns:
        ``(outlier_idx, rest_idx)``: int64 ``(L, H, n)`` and ``(L, H, D - n)``, each ascending.
    """
    D = k.shape[-1]
    peak = k.abs().amax(dim=2)  # (L, H, D)
    outlier_idx = peak.topk(n, dim=-1).indices.sort(dim=-1).values
    return outlier_idx, _complement(outlier_idx, D)


def _complement(outlier_idx: torch.Tensor, D: int) -> torch.Tensor:
    """Ascending channel indices ``(L, H, D - n)`` not in ``outlier_idx (L, H, n)``."""
    L, H, n = outlier_idx.shape
    is_outlier = torch.zeros(L, H, D, dtype=torch.uint8, device=outlier_idx.device)
    is_outlier.scatter_(-1, outlier_idx, 1)
    return is_outlier.argsort(dim=-1, stable=True)[..., : D - n]


def _layer_runs(layers: list[int]) -> list[tuple[int, int]]:
    """``[3, 4, 5, 0]`` -> ``[(3, 6), (0, 1)]``: maximal runs of consecutive layers, in the order given."""
    runs: list[tuple[int, int]] = []
    for i in layers:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class KVCodec:
    """Encode and decode the KV of one chunk with a fixed :class:`KVCodecConfig`.

    Stateless apart from its config, so one instance may be shared between threads.
    """

    def __init__(self, config: KVCodecConfig):
        if not isinstance(config, KVCodecConfig):
            raise KVCodecError(f"KVCodec needs a KVCodecConfig; got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"KVCodec({self.config!r})"

    # ------------------------------------------------------------------ encode
    def encode(self, k: torch.Tensor, v: torch.Tensor) -> PackedKV:
        """Pack one chunk.

        Args:
            k, v: ``(L, H, T, D)`` keys and values of one chunk (post-RoPE keys as
                stored in the cache), any float dtype, same shape and device.
                They are read, never kept: the result shares no memory with them.

        Returns:
            A :class:`PackedKV` on the same device.

        Raises:
            KVCodecError: wrong type, shape or dtype; non-finite values; values
                beyond float16's range (65504) for 16 bits or fewer;
                ``outlier_channels`` larger than ``D``.
        """
        _check_input("k", k)
        _check_input("v", v)
        if k.shape != v.shape:
            raise KVCodecError(f"k and v must have the same shape (L, H, T, D); got {tuple(k.shape)} and {tuple(v.shape)}")
        if k.device != v.device:
            raise KVCodecError(f"k and v must be on the same device; got {k.device} and {v.device}")
        cfg = self.config
        shape = tuple(int(s) for s in k.shape)
        limit = float("inf") if cfg.bits == 32 else FP16_MAX
        _check_magnitude("k", k, limit)
        _check_magnitude("v", v, limit)
        if cfg.quantized and cfg.outlier_channels > shape[3]:
            raise KVCodecError(
                f"KVCodecConfig.outlier_channels={cfg.outlier_channels} exceeds the head dimension D={shape[3]} of k"
            )
        with torch.no_grad():
            if cfg.bits == 32:
                tensors = {"k": k.to(torch.float32, copy=True).contiguous(), "v": v.to(torch.float32, copy=True).contiguous()}
            elif cfg.bits == 16:
                tensors = {"k": k.to(torch.float16, copy=True).contiguous(), "v": v.to(torch.float16, copy=True).contiguous()}
            else:
                tensors = {**self._encode_keys(k), **self._encode_values(v)}
        return PackedKV(config=cfg, shape=shape, dtype=k.dtype, tensors=tensors)

    def _encode_keys(self, k: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        n = cfg.outlier_channels
        out: dict[str, torch.Tensor] = {}
        if n:
            outlier_idx, rest_idx = _split_outliers(k, n)
            out["k_outlier_idx"] = outlier_idx.to(torch.int16)
            out["k_outlier_val"] = _take_channels(k, outlier_idx).to(torch.float16).contiguous()
            k = _take_channels(k, rest_idx)
        codes, scale, zero = quantize_groups(k.transpose(-1, -2), cfg.bits, cfg.group_size)  # (L, H, C, T)
        out["k_codes"] = pack_rows(codes.reshape(codes.shape[0], -1), cfg.bits)
        out["k_scale"] = scale.contiguous()
        out["k_zero"] = zero.contiguous()
        return out

    def _encode_values(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        rows = v.transpose(-1, -2) if cfg.value_mode == "channel" else v  # statistics along the last axis
        if cfg.value_mode == "ternary":
            codes, scale, zero = quantize_groups(rows, cfg.bits, cfg.group_size, levels=TERNARY_LEVELS - 1)
            return {"v_codes": pack_trits(codes.contiguous()), "v_scale": scale.contiguous(), "v_zero": zero.contiguous()}
        codes, scale, zero = quantize_groups(rows, cfg.bits, cfg.group_size)
        return {
            "v_codes": pack_bits(codes.contiguous(), cfg.bits),
            "v_scale": scale.contiguous(),
            "v_zero": zero.contiguous(),
        }

    # ------------------------------------------------------------------ decode
    def decode(self, packed: PackedKV, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpack one chunk.

        The settings come from ``packed.config``, so any codec decodes any chunk.

        Args:
            packed: from :meth:`encode` or :meth:`PackedKV.from_state_dict`.
            dtype: output dtype; default the original dtype. Dequantization runs
                in float32 and is cast at the end.

        Returns:
            ``(k, v)``, each ``(L, H, T, D)``, fresh tensors on the packed device.
        """
        if not isinstance(packed, PackedKV):
            raise KVCodecError(f"decode needs a PackedKV; got {type(packed).__name__}")
        out_dtype = packed.dtype if dtype is None else dtype
        if out_dtype not in _FLOAT_DTYPES.values():
            raise KVCodecError(f"decode dtype must be one of {sorted(_FLOAT_DTYPES)}; got {dtype!r}")
        cfg = packed.config
        t = packed.tensors
        with torch.no_grad():
            if not cfg.quantized:
                return t["k"].to(out_dtype, copy=True), t["v"].to(out_dtype, copy=True)
            k = self._decode_keys(packed)
            v = self._decode_values(packed)
        return k.to(out_dtype), v.to(out_dtype)

    def decode_keys(self, packed: PackedKV | PackedKeys, layers: Sequence[int],
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """Unpack the keys of some layers only (what a rerank reads), leaving values and other layers packed.

        Equal, element for element, to ``decode(packed, dtype)[0][list(layers)]``, at a fraction of
        the work: only the codes, scales, zero points and outlier channels of those layers are read.

        Args:
            packed: from :meth:`encode` or :meth:`PackedKV.from_state_dict`, or the
                :class:`PackedKeys` of a layer range (then ``layers`` must lie in that range).
            layers: layer indices in ``[0, L)``, any order (repeats allowed), at least one.
            dtype: output dtype; default the original dtype.

        Returns:
            ``(L', H, T, D)`` keys of ``layers`` in the order given, a fresh tensor.
        """
        if not isinstance(packed, (PackedKV, PackedKeys)):
            raise KVCodecError(f"decode_keys needs a PackedKV or PackedKeys; got {type(packed).__name__}")
        out_dtype = packed.dtype if dtype is None else dtype
        if out_dtype not in _FLOAT_DTYPES.values():
            raise KVCodecError(f"decode_keys dtype must be one of {sorted(_FLOAT_DTYPES)}; got {dtype!r}")
        lo, hi = (packed.first, packed.stop) if isinstance(packed, PackedKeys) else (0, packed.shape[0])
        wanted = [int(i) for i in layers]
        if not wanted or any(not lo <= i < hi for i in wanted):
            raise KVCodecError(f"decode_keys layers must be a non-empty sequence of indices in [{lo}, {hi}); got {wanted}")
        local = [i - lo for i in wanted]
        with torch.no_grad():
            if not packed.config.quantized:
                return packed.tensors["k"][local].to(out_dtype)
            runs = _layer_runs(local)
            parts = [self._decode_keys(packed, start, stop) for start, stop in runs]
            keys = parts[0] if len(parts) == 1 else torch.cat(parts)
        return keys.to(out_dtype)

    @staticmethod
    def _decode_keys(packed: PackedKV | PackedKeys, first: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 keys ``(stop - first, H, T, D)`` of the layer range ``[first, stop)`` (default all),
        indices counted in ``packed.tensors``' own layer axis."""
        cfg = packed.config
        t = packed.tensors
        _, H, T, D = packed.shape
        stop = t["k_codes"].shape[0] if stop is None else stop
        L = stop - first
        n = cfg.outlier_channels
        C = D - n
        codes = unpack_rows(t["k_codes"][first:stop], cfg.bits, H * C * T).view(L, H, C, T)
        scale, zero = t["k_scale"][first:stop], t["k_zero"][first:stop]
        rest = dequantize_groups(codes, scale, zero, cfg.group_size).transpose(-1, -2)  # (L, H, T, C)
        if not n:
            return rest.contiguous()
        outlier_idx = t["k_outlier_idx"][first:stop].long()
        k = torch.empty(L, H, T, D, dtype=torch.float32, device=rest.device)
        k.scatter_(-1, _complement(outlier_idx, D).unsqueeze(2).expand(L, H, T, C), rest)
        k.scatter_(-1, outlier_idx.unsqueeze(2).expand(L, H, T, n), t["k_outlier_val"][first:stop].float())
        return k

    @staticmethod
    def _decode_values(packed: PackedKV) -> torch.Tensor:
        cfg = packed.config
        t = packed.tensors
        L, H, T, D = packed.shape
        if cfg.value_mode == "channel":
            codes = unpack_bits(t["v_codes"], cfg.bits, L * H * D * T).view(L, H, D, T)
            return dequantize_groups(codes, t["v_scale"], t["v_zero"], cfg.group_size).transpose(-1, -2).contiguous()
        if cfg.value_mode == "ternary":
            codes = unpack_trits(t["v_codes"], L * H * T * D).view(L, H, T, D)
            return dequantize_groups(codes, t["v_scale"], t["v_zero"], cfg.group_size)
        codes = unpack_bits(t["v_codes"], cfg.bits, L * H * T * D).view(L, H, T, D)
        return dequantize_groups(codes, t["v_scale"], t["v_zero"], cfg.group_size)

    # ------------------------------------------------------------- error bound
    def error_bound(self, packed: PackedKV) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element bound on ``|decode(packed, float32) - original|``.

        * 32 bits: 0 (bit-exact for float32/float16/bfloat16 input).
        * 16 bits and float16 outlier key channels: half a float16 spacing,
          ``max(|x_hat| * 2**-11, 2**-25)``.
        * 8/4/2 bits: ``scale / 2`` of the element's group (round-to-nearest onto
          a grid that covers the group) plus ``2**-20 * (|zero| + levels * scale)``
          for float32 arithmetic.

        Returns:
            ``(k_bound, v_bound)``: float32, each ``(L, H, T, D)``.
        """
        if not isinstance(packed, PackedKV):
            raise KVCodecError(f"error_bound needs a PackedKV; got {type(packed).__name__}")
        cfg = packed.config
        t = packed.tensors
        L, H, T, D = packed.shape
        if cfg.bits == 32:
            zeros = torch.zeros(L, H, T, D, dtype=torch.float32, device=t["k"].device)
            return zeros, zeros.clone()
        if cfg.bits == 16:
            return fp16_rounding_bound(t["k"]), fp16_rounding_bound(t["v"])
        G = cfg.group_size
        n = cfg.outlier_channels
        C = D - n
        kb = expand_groups(group_error_bound(t["k_scale"], t["k_zero"], cfg.bits), G, T).transpose(-1, -2)  # (L,H,T,C)
        if n:
            outlier_idx = t["k_outlier_idx"].long()
            k_bound = torch.empty(L, H, T, D, dtype=torch.float32, device=kb.device)
            k_bound.scatter_(-1, _complement(outlier_idx, D).unsqueeze(2).expand(L, H, T, C), kb)
            k_bound.scatter_(-1, outlier_idx.unsqueeze(2).expand(L, H, T, n), fp16_rounding_bound(t["k_outlier_val"]))
        else:
            k_bound = kb.contiguous()
        v_levels = TERNARY_LEVELS - 1 if cfg.value_mode == "ternary" else None
        vb = group_error_bound(t["v_scale"], t["v_zero"], cfg.bits, levels=v_levels)
        if cfg.value_mode == "channel":
            v_bound = expand_groups(vb, G, T).transpose(-1, -2).contiguous()
        else:
            v_bound = expand_groups(vb, G, D).contiguous()
        return k_bound, v_bound
