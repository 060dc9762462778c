"""A transformers cache over one preallocated buffer: the sink and window kept between prefills.

:class:`WindowKVCache` is a :class:`transformers.Cache` whose layers (:class:`BufferLayer`, a
``DynamicLayer`` subclass) hand attention views of one buffer instead of concatenating tensors.
A session keeps one for the whole stream, laid out ``sink | window items`` (oldest first):

* a frame or note is prefilled straight into it: the new tokens are written after the window and
  stay there as the window's newest item (no copy of the window per item);
* when items leave the window, only the sink is copied forward over them (:meth:`remove`), so the
  window never moves and its order stays ``sink, items``;
* a question appends the dialog, the question and the answer after the window, then
  :meth:`rewind` drops them again; retrieved memory chunks can be appended after the local
  context, because the order of past KV does not matter to attention (their positions are in the
  rotated keys) and new tokens attend to every cached token.

The buffer is ``keys``/``values`` ``(L, 1, H, C, D)`` (capacity ``C`` tokens); the live tokens are
``[start, start + length)``. When the end of the buffer is reached the live tokens are moved back
to the front (in place, in pieces that never overlap); only when too little room would be left is
a buffer half as large again as needed allocated (so moves copy each token a bounded number of
times on average). Views handed out (:meth:`segment`, a layer's ``keys``) are valid until the next
call that changes the cache: the owner re-takes them when :attr:`epoch` changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from app.engine.backends.types import BackendError, KVSegment

__all__ = ["BufferLayer", "WindowKVCache"]


class BufferLayer(DynamicLayer):
    """One decoder layer's view of the shared buffer: tokens ``[start, start + length)`` of layer ``index``.

    ``keys``/``values`` are ``(1, H, length, D)`` views (no copy); :meth:`update` writes new tokens in place.
    """

    def __init__(self, owner: WindowKVCache, index: int):
        super().__init__()
        self._owner = owner
        self.index = index
        self.length = 0
        self.dtype, self.device = owner.dtype, owner.device
        self.is_initialized = True
        self.refresh()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffer exists from the start (transformers' hook for lazily built layers)."""

    def refresh(self) -> None:
        """Re-take ``keys``/``values`` as views of the buffer (after it moved or the length changed)."""
        o = self._owner
        a = o.start
        self.keys = o.key_buffer[self.index, :, :, a : a + self.length]
        self.values = o.value_buffer[self.index, :, :, a : a + self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``(1, H, n, D)`` new keys and values after the layer's tokens; -> all of them, ``(1, H, T, D)`` views."""
        n = int(key_states.shape[-2])
        self._owner.ensure_capacity(self.length + n)
        o = self._owner
        a = o.start + self.length
        o.key_buffer[self.index, :, :, a : a + n].copy_(key_states)
        o.value_buffer[self.index, :, :, a : a + n].copy_(value_states)
        self.length += n
        self.refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        self.length = max(0, self.length + tokens_to_remove)
        self.refresh()

    def reset(self) -> None:
        self.length = 0
        self.refresh()

    def offload(self):
        raise BackendError("a WindowKVCache cannot be offloaded")

    def reorder_cache(self, beam_idx) -> None:
        raise BackendError("a WindowKVCache holds one stream (batch 1): beams are not supported")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise BackendError("a WindowKVCache holds one stream (batch 1)")

    def batch_select_indices(self, indices) -> None:
        raise BackendError("a WindowKVCache holds one stream (batch 1)")


class WindowKVCache(Cache):
    """A cache of ``num_layers`` full-attention layers over one buffer, for one stream (batch 1).

    Args:
        num_layers, num_kv_heads, head_dim: the decoder's KV shape.
        device, dtype: where and in which precision the KV is kept (the model's).
        capacity: tokens the buffer holds at first (it grows when needed).
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, *, device, dtype: torch.dtype,
                 capacity: int = 1024):
        if num_layers < 1 or num_kv_heads < 1 or head_dim < 1 or capacity < 1:
            raise BackendError(f"WindowKVCache needs positive sizes, got L={num_layers} H={num_kv_heads} "
                               f"D={head_dim} capacity={capacity}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.start = 0
        self.epoch = 0  # counts moves of the buffer: views taken before a change are stale
        shape = (num_layers, 1, num_kv_heads, int(capacity), head_dim)
        self.key_buffer, self.value_buffer = self._buffer(shape), self._buffer(shape)
        super().__init__(layers=[BufferLayer(self, i) for i in range(num_layers)])

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.key_buffer.shape[3])

    @property
    def length(self) -> int:
        """Tokens held (every layer holds the same number between forwards)."""
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the buffer (keys and values, spare capacity included)."""
        return 2 * self.key_buffer.numel() * self.key_buffer.element_size()

    def _max_length(self) -> int:
        return max(layer.length for layer in self.layers)

    def ensure_capacity(self, length: int) -> None:
        """Make room for ``length`` live tokens from ``start``: move them to the front, or grow the buffer."""
        if self.start + length <= self.capacity:
            return
        live = self._max_length()
        # moving is worth it only when it frees room for many more tokens (every move copies the live
        # ones); growing by half leaves that room, so a token is moved a bounded number of times on average
        if self.start > 0 and self.capacity - length >= max(1, live // 4):
            self._move_to_front(live)
        else:
            self._grow(length + max(length // 2, 64), live)
        self.epoch += 1
        for layer in self.layers:
            layer.refresh()

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more tokens before a forward (so a move never happens inside one)."""
        self.ensure_capacity(self._max_length() + int(n))

    def _move_to_front(self, live: int) -> None:
        """Move tokens ``[start, start + live)`` to ``[0, live)`` in place, in pieces whose source and target never overlap."""
        step, done = self.start, 0
        while done < live:
            n = min(step, live - done)
            src = slice(self.start + done, self.start + done + n)
            dst = slice(done, done + n)
            self.key_buffer[:, :, :, dst].copy_(self.key_buffer[:, :, :, src])
            self.value_buffer[:, :, :, dst].copy_(self.value_buffer[:, :, :, src])
            done += n
        self.start = 0

    def _buffer(self, shape) -> torch.Tensor:
        """An uninitialised ``(L, 1, H, C, D)`` buffer that is never an inference tensor.

        A buffer made inside ``torch.inference_mode`` (a forward that grows the cache) could not be
        written outside it (an appended chunk, a removed item); a normal tensor can be written in both.
        ``empty``, not ``zeros``: slots past the live tokens are never read, and untouched pages cost no RAM.
        """
        with torch.inference_mode(False):
            return torch.empty(shape, dtype=self.dtype, device=self.device)

    def _grow(self, capacity: int, live: int) -> None:
        shape = list(self.key_buffer.shape)
        shape[3] = int(capacity)
        keys, values = self._buffer(shape), self._buffer(shape)
        keys[:, :, :, :live].copy_(self.key_buffer[:, :, :, self.start : self.start + live])
        values[:, :, :, :live].copy_(self.value_buffer[:, :, :, self.start : self.start + live])
        self.key_buffer, self.value_buffer, self.start = keys, values, 0

    # ---- editing ---------------------------------------------------------------------------------
    def _set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.length = length
            layer.refresh()

    def append(self, segments: Sequence[KVSegment]) -> None:
        """Write KV segments (keys ``(L, H, T, D)``) after the cached tokens, in order (cast to the cache's dtype)."""
        live = [s for s in segments if s.length > 0]
        total = sum(s.length for s in live)
        if not total:
            return
        self.reserve(total)
        at = self.start + self.length
        for s in live:
            n = s.length
            self.key_buffer[:, 0, :, at : at + n].copy_(s.keys)
            self.value_buffer[:, 0, :, at : at + n].copy_(s.values)
            at += n
        self._set_length(self.length + total)

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` tokens only (drops what a question or a probe added)."""
        if not 0 <= length <= self.length:
            raise BackendError(f"rewind to {length} tokens: the cache holds {self.length}")
        self._set_length(length)

    def remove(self, after: int, n: int) -> None:
        """Remove tokens ``[after, after + n)``: the first ``after`` tokens (the sink) are copied forward over them.

        Costs a copy of ``after`` tokens, whatever the window's length; the order of what stays is unchanged.
        """
        if n <= 0:
            return
        if after < 0 or after + n > self.length:
            raise BackendError(f"remove {n} tokens after {after}: the cache holds {self.length}")
        a = self.start
        head_k = self.key_buffer[:, :, :, a : a + after].clone()
        head_v = self.value_buffer[:, :, :, a : a + after].clone()
        self.key_buffer[:, :, :, a + n : a + n + after].copy_(head_k)
        self.value_buffer[:, :, :, a + n : a + n + after].copy_(head_v)
        self.start = a + n
        self._set_length(self.length - n)

    # ---- reading ---------------------------------------------------------------------------------
    def segment(self, a: int, b: int, positions: torch.Tensor) -> KVSegment:
        """Tokens ``[a, b)`` as a :class:`KVSegment` of views (keys ``(L, H, b - a, D)``), valid until the cache changes."""
        s = self.start
        return KVSegment(self.key_buffer[:, 0, :, s + a : s + b], self.value_buffer[:, 0, :, s + a : s + b], positions)
