"""Per-layer query and key capture, for retrieval summaries and reranking."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from app.engine.backends.types import BackendError


class QKCapture:
    """Forward hooks on each layer's query and key projections.

    Records the pre-RoPE keys and queries of one forward pass, per layer, using
    ``register_forward_hook`` (public PyTorch API). The query heads are averaged within each KV
    group so a query summary is comparable with key summaries: both are ``(L, H * D)``.
    Use as a context manager around the forward; one forward at a time (it holds a lock).
    """

    def __init__(self, attn_modules: Sequence[torch.nn.Module], num_heads: int, num_kv_heads: int, head_dim: int):
        self._modules = list(attn_modules)
        self._num_heads = num_heads
        self._num_kv_heads = num_kv_heads
        self._head_dim = head_dim
        self._keys: list[torch.Tensor | None] = [None] * len(self._modules)
        self._queries: list[torch.Tensor | None] = [None] * len(self._modules)
        self._handles = []
        self._active = False
        self._lock = threading.Lock()
        for i, attn in enumerate(self._modules):
            self._handles.append(attn.k_proj.register_forward_hook(self._make_hook(i, is_key=True)))
            self._handles.append(attn.q_proj.register_forward_hook(self._make_hook(i, is_key=False)))

    def _make_hook(self, layer: int, is_key: bool) -> Callable:
        def hook(_module, _inputs, output):
            if not self._active:
                return
            # output: (1, T, heads * D) pre-RoPE projections.
            flat = output.detach()[0].float()
            if is_key:
                self._keys[layer] = flat
            else:
                t = flat.shape[0]
                q = flat.view(t, self._num_kv_heads, self._num_heads // self._num_kv_heads, self._head_dim)
                self._queries[layer] = q.mean(dim=2).reshape(t, -1)

        return hook

    def __enter__(self) -> QKCapture:
        self._lock.acquire()
        self._keys = [None] * len(self._modules)
        self._queries = [None] * len(self._modules)
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._keys = [None] * len(self._modules)
        self._queries = [None] * len(self._modules)
        self._lock.release()

    def summaries(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (key_summary, query_summary), each ``(L * H * D,)`` float32: means over the tokens in ``mask`` ``(T,)``."""
        if any(k is None for k in self._keys) or any(q is None for q in self._queries):
            raise BackendError("query/key capture saw no forward pass for some layer")
        if mask is not None and bool(mask.any()):
            m = mask.to(self._keys[0].device)
            keys = [k[m].mean(0) for k in self._keys]  # type: ignore[index]
            queries = [q[m].mean(0) for q in self._queries]  # type: ignore[index]
        else:
            keys = [k.mean(0) for k in self._keys]  # type: ignore[union-attr]
            queries = [q.mean(0) for q in self._queries]  # type: ignore[union-attr]
        return torch.cat(keys).cpu(), torch.cat(queries).cpu()

    def token_queries(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token pre-RoPE queries of the last forward (heads averaged per KV group): ``(L, T', H * D)``."""
        if any(q is None for q in self._queries):
            raise BackendError("query capture saw no forward pass for some layer")
        qs = torch.stack(self._queries)  # type: ignore[arg-type]
        if mask is not None and bool(mask.any()):
            qs = qs[:, mask.to(qs.device)]
        return qs.cpu()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
