"""Retrieval: MemoryBank.retrieve latency from 10^3 to 10^6 chunks, flat vs approximate, and the rerank cost.

Stage 1 (faiss over chunk summaries). Summaries are synthetic but shaped like video memory:
clustered (scenes) with Gaussian spread; queries are perturbed stored summaries. Chunks hold
1-token KV so that a million fit in RAM (the memory tests do the same). Up to
``--bank-max-size`` chunks every size runs through a real :class:`memory.MemoryBank` (appends,
``retrieve``); larger sizes are measured at the index the bank uses (``memory.index``, the same
faiss classes and settings, vectors added in bulk), since a million single appends with their
Python objects do not fit this machine's time and RAM. The summary dimension is the real
S = 5760 (30 layers x 3 KV heads x 64) up to ``--full-dim-max-size`` chunks and ``--small-dim``
(default 576) above, because 10^6 x 5760 float32 = 23 GB does not fit in 24 GB of RAM.
Recall@k of the approximate index = overlap of its top k with the flat index's top k.

Stage 2 (late-interaction rerank, :mod:`app.engine.retrieval`): the cost per question of reranking 64
real-shape candidates (4-bit, 75 tokens each), the first implementation (every candidate fetched
and dequantized whole, scored chunk by chunk; kept here only as the baseline) against the current
one, with the candidates in the RAM tier and on disk.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="bank sizes in chunks")
    parser.add_argument("--indexes", default="flat,hnsw,ivf", help="index kinds (flat is always run: it is the truth)")
    parser.add_argument("--full-dim-max-size", type=int, default=10_000,
                        help="largest size with S = L*H*D of the model (default 10^4)")
    parser.add_argument("--small-dim", type=int, default=576, help="summary dim above that size (default 576)")
    parser.add_argument("--huge-dim", type=int, default=576,
                        help="summary dim above --bank-max-size (default 576; smaller when the machine's free RAM is short)")
    parser.add_argument("--bank-max-size", type=int, default=100_000, help="largest size run through MemoryBank (default 10^5)")
    parser.add_argument("--hnsw-max-size", type=int, default=100_000, help="largest size HNSW is built for (default 10^5)")
    parser.add_argument("--queries", type=int, default=50, help="queries per size (default 50)")
    parser.add_argument("--k", type=int, default=8, help="recall@k and latency at k (default 8: top_k)")
    parser.add_argument("--candidates", type=int, default=64, help="rerank candidates fetched (default 64)")
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend for the rerank's real shape")
    parser.add_argument("--quick", action="store_true", help="sizes 200 and 2000, tiny model (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def _data(n: int, dim: int, queries: int, seed: int):
    """-> (vectors (n, dim), queries (q, dim)) float32: clustered summaries and perturbed members."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_clusters = max(8, min(4096, n // 250))
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32) * 2.0
    data = np.empty((n, dim), dtype=np.float32)
    block = 65536
    for start in range(0, n, block):
        stop = min(n, start + block)
        data[start:stop] = centers[rng.integers(0, n_clusters, stop - start)]
        data[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32)
    picks = rng.integers(0, n, queries)
    q = data[picks] + 0.5 * rng.standard_normal((queries, dim), dtype=np.float32)
    return data, q.astype(np.float32)


def _bank_config(kind: str, n: int):
    from compression.kvcodec import KVCodecConfig
    from memory import BankConfig

    nlist = _nlist(n)
    return BankConfig(codec=KVCodecConfig(bits=32), index=kind, ivf_nlist=nlist, ivf_nprobe=min(32, nlist),
                      ivf_train_min=min(n, max(nlist, 39 * nlist)))


def _nlist(n: int) -> int:
    import math

    return max(4, min(4096, int(math.sqrt(n))))


def _fill_bank(kind: str, data) -> Any:
    import torch

    from memory import ChunkMeta, KVChunk, MemoryBank

    n, dim = data.shape
    bank = MemoryBank(_bank_config(kind, n), dim)
    kv = torch.zeros(1, 1, 1, 8)
    for cid in range(n):
        meta = ChunkMeta(chunk_id=cid, t_start=float(cid), t_end=float(cid) + 1.0, kind="frame", n_tokens=1)
        bank.append(KVChunk(meta, kv, kv, torch.tensor([cid], dtype=torch.int64), torch.from_numpy(data[cid])))
    return bank


def _bulk_index(kind: str, data) -> Any:
    import numpy as np

    from memory.index import new_index

    n, dim = data.shape
    index = new_index(_bank_config(kind, n), dim)
    index.threads = 2  # bulk build only; searches below run with the bank's default of 1
    block = 65536
    for start in range(0, n, block):
        stop = min(n, start + block)
        index.add(np.arange(start, stop, dtype=np.int64), data[start:stop])
    index.threads = 1
    return index


def _measure(search, queries, k: int) -> tuple[float, list[list[int]]]:
    """-> (median seconds per query, ids found per query)."""
    from app.bench import common

    search(queries[0])  # warm-up
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids = search(q)
        times.append(time.perf_counter() - t0)
        found.append(ids)
    return common.median(times), found


def _recall(truth: list[list[int]], found: list[list[int]], k: int) -> float:
    hits = sum(len(set(t[:k]) & set(f[:k])) for t, f in zip(truth, found))
    return hits / max(1, k * len(truth))


def _one_size(n: int, dim: int, kinds: list[str], args, seed: int) -> list[dict[str, Any]]:
    import torch

    data, queries = _data(n, dim, args.queries, seed)
    use_bank = n <= args.bank_max_size
    rows, truth = [], None
    for kind in ["flat"] + [k for k in kinds if k != "flat"]:
        if kind == "hnsw" and n > args.hnsw_max_size:
            rows.append({"size": n, "dim": dim, "index": kind, "skipped": f"HNSW not built above {args.hnsw_max_size:,} chunks"})
            continue
        t0 = time.perf_counter()
        if use_bank:
            store = _fill_bank(kind, data)
            build_s = time.perf_counter() - t0

            def search(q, store=store):
                hits = sorted(store.retrieve(torch.from_numpy(q), args.k), key=lambda r: -r.score)
                return [r.chunk.meta.chunk_id for r in hits]

            def search_c(q, store=store):
                return [r.chunk.meta.chunk_id for r in store.retrieve(torch.from_numpy(q), args.candidates)]
        else:
            store = _bulk_index(kind, data)
            build_s = time.perf_counter() - t0

            def search(q, store=store):
                return [cid for cid, _ in store.search(q, args.k)]

            def search_c(q, store=store):
                return [cid for cid, _ in store.search(q, args.candidates)]
        lat, found = _measure(search, queries, args.k)
        lat_c, _ = _measure(search_c, queries[: max(5, len(queries) // 5)], args.candidates)
        if kind == "flat":
            truth = found
        row = {"size": n, "dim": dim, "index": kind, "through": "MemoryBank.retrieve" if use_bank else "memory.index search",
               "build_s": build_s, "latency_ms": 1000 * lat, "latency_candidates_ms": 1000 * lat_c,
               f"recall_at_{args.k}": _recall(truth, found, args.k)}
        rows.append(row)
        log.info("retrieval %s", row)
        if use_bank:
            store.close()
        del store
        gc.collect()
    del data
    gc.collect()
    return rows


def _full_fetch_scores(backend, bank, query, tokens, n: int, k: int) -> list[int]:
    """The first rerank, kept here as the baseline: fetch and dequantize ``n`` whole chunks (all layers,
    keys and values), un-rotate and score each chunk's upper-layer keys one chunk at a time; -> top ``k`` ids."""
    import torch

    from app.engine.retrieval import content_mask, rerank_layers

    spec = backend.spec
    layers = list(rerank_layers(spec.num_layers))
    q = tokens[layers].float().view(len(layers), tokens.shape[1], spec.num_kv_heads, spec.head_dim)
    found = bank.retrieve(query, n)
    scores = []
    for r in found:
        keys = backend.unrotate_keys(r.chunk.keys[layers].float(), r.chunk.positions)
        keys = keys[:, :, content_mask(r.chunk.meta, keys.shape[2])]
        att = torch.einsum("lqhd,lhkd->lhqk", q, keys) * spec.head_dim ** -0.5
        scores.append(float(att.amax(dim=-1).mean()))
    best = sorted(range(len(found)), key=lambda i: scores[i], reverse=True)[:k]
    return sorted(found[i].chunk.meta.chunk_id for i in best)


def _rerank_cost(args) -> dict[str, Any]:
    """Second stage per question at the model's real shape, old path vs new, with candidates in RAM and on disk.

    old: ``bank.retrieve(query, candidates)`` (every candidate dequantized whole) + per-chunk scoring;
    new: :func:`app.engine.retrieval.retrieve` (summary search, upper-layer keys only, batched scoring, the
    final ``k`` chunks fetched whole). Both runs see the same bank and question and must pick the same chunks.
    """
    import tempfile

    import torch

    from app.bench import common
    from app.engine.backends.registry import load_backend
    from app.engine.backends.types import KVSegment, PrefillResult
    from app.engine.retrieval import late_interaction_scores, rerank_layers, retrieve
    from compression.kvcodec import KVCodecConfig
    from memory import BankConfig, ChunkMeta, KVChunk, MemoryBank

    backend = load_backend(args.model, dtype="float32")
    spec = backend.spec
    L, H, D, T = spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.tokens_per_frame + 11
    n_cand, k = args.candidates, args.k
    g = torch.Generator().manual_seed(0)
    chunks = []
    for cid in range(n_cand):
        meta = ChunkMeta(chunk_id=cid, t_start=float(cid), t_end=float(cid), kind="frame", n_tokens=T,
                         extra={"content": [[9, 9 + spec.tokens_per_frame]]})
        chunks.append(KVChunk(meta, torch.randn(L, H, T, D, generator=g), torch.randn(L, H, T, D, generator=g),
                              torch.arange(cid * T, cid * T + T), torch.randn(spec.summary_dim, generator=g)))
    query = torch.randn(spec.summary_dim, generator=g)
    tokens = torch.randn(L, 12, H * D, generator=g)
    probe = PrefillResult(kv=KVSegment(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)),
                          key_summary=query, query_summary=query, logits=None, attention_length=0, query_tokens=tokens)
    layers = rerank_layers(L)
    out: dict[str, Any] = {"model": spec.name, "chunk_shape": [L, H, T, D], "candidates": n_cand, "k": k,
                           "question_tokens": 12, "tiers": {}}
    with tempfile.TemporaryDirectory(prefix="livesight-bench-rerank-") as tmp:
        for tier, budget in (("ram", None), ("disk", 0)):
            bank = MemoryBank(BankConfig(codec=KVCodecConfig(bits=4), ram_budget_bytes=budget,
                                         disk_dir=f"{tmp}/{tier}"), spec.summary_dim)
            for chunk in chunks:
                bank.append(chunk)
            old_t, new_t, fetch_t, keys_t, score_t = [], [], [], [], []
            for i in range(6):  # old and new alternate, so load changes hit both alike; the first round warms up
                t0 = time.perf_counter()
                old_ids = _full_fetch_scores(backend, bank, query, tokens, n_cand, k)
                t1 = time.perf_counter()
                new_ids = sorted(r.chunk.meta.chunk_id for r in retrieve(backend, bank, probe, k, candidates=n_cand, rerank=True))
                t2 = time.perf_counter()
                if old_ids != new_ids:
                    raise RuntimeError(f"rerank bench: the new path chose {new_ids}, the old one {old_ids}")
                # the new path's parts, timed apart
                t3 = time.perf_counter()
                bank.retrieve(query, n_cand)
                t4 = time.perf_counter()
                keysets = [bank.keys(m.chunk_id, layers) for m, _ in bank.search(query, n_cand)]
                t5 = time.perf_counter()
                late_interaction_scores(backend, tokens, keysets)
                t6 = time.perf_counter()
                if i:
                    old_t.append(t1 - t0)
                    new_t.append(t2 - t1)
                    fetch_t.append(t4 - t3)
                    keys_t.append(t5 - t4)
                    score_t.append(t6 - t5)
            out["tiers"][tier] = {
                "old_ms": 1000 * common.median(old_t), "new_ms": 1000 * common.median(new_t),
                "old_fetch_dequantize_ms": 1000 * common.median(fetch_t), "new_keys_ms": 1000 * common.median(keys_t),
                "new_score_ms": 1000 * common.median(score_t), "same_top_k": True,
            }
            bank.close()
    backend.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from memory.config import INDEX_KINDS

    runtime.prepare_torch(args)
    if args.quick:
        args.sizes, args.full_dim_max_size, args.bank_max_size, args.hnsw_max_size = "200,2000", 200, 200, 2000
        args.small_dim, args.huge_dim, args.queries, args.model = 64, 64, 10, "tiny-smolvlm"
    sizes = runtime.parse_ints("sizes", args.sizes, 10, 10_000_000)
    kinds = [k.strip() for k in str(args.indexes).split(",") if k.strip()]
    bad = sorted(set(kinds) - set(INDEX_KINDS))
    if bad:
        raise ValueError(f"--indexes must be among {', '.join(INDEX_KINDS)}; got {', '.join(bad)}")
    runtime.check_range("queries", args.queries, 1, 100_000)
    runtime.check_range("k", args.k, 1, 4096)
    runtime.check_range("candidates", args.candidates, 1, 4096)
    runtime.check_range("small_dim", args.small_dim, 8, 100_000)
    runtime.check_range("huge_dim", args.huge_dim, 8, 100_000)
    load0 = runtime.load_average()
    from app.engine.backends.registry import load_backend

    rerank = _rerank_cost(args)
    full_dim = {"smolvlm2-256m-smollm2": 5760}.get(args.model)
    if full_dim is None:
        probe = load_backend(args.model, dtype="float32")
        full_dim = probe.spec.summary_dim
        probe.close()
    rows = []
    for i, n in enumerate(sizes):
        dim = full_dim if n <= args.full_dim_max_size else args.small_dim if n <= args.bank_max_size else args.huge_dim
        rows.extend(_one_size(n, dim, kinds, args, seed=i))
    options: dict[str, Any] = {"quick": True, "threads": args.threads} if args.quick else {"threads": args.threads,
        "sizes": args.sizes, "indexes": args.indexes, "full_dim_max_size": args.full_dim_max_size, "small_dim": args.small_dim,
        "huge_dim": args.huge_dim, "bank_max_size": args.bank_max_size, "hnsw_max_size": args.hnsw_max_size,
        "queries": args.queries, "k": args.k,
        "candidates": args.candidates, "model": args.model}
    metrics = {"rows": rows, "rerank": rerank, "load_avg_start": load0}
    return {"title": "Retrieval: MemoryBank.retrieve from 10^3 to 10^6 chunks, flat vs approximate; rerank cost",
            "command": common.format_command("retrieval", [], options), "params": options, "metrics": metrics,
            "markdown": _markdown(metrics, args)}


def _markdown(m: dict[str, Any], args) -> str:
    k = args.k
    lines = [
        f"Summaries clustered like scenes (one cluster per 250 chunks), queries = stored summaries plus noise, "
        f"{args.queries} queries per size, median latency, faiss single-threaded (the bank's default); 1-token chunks. "
        f"Sizes up to {args.bank_max_size:,} run through `MemoryBank.retrieve` (search + fetch of k chunks); above, the "
        f"bank's own index classes (`memory.index`) are filled in bulk and searched. Summary dim S = "
        f"{m['rows'][0]['dim'] if m['rows'] else '-'} up to {args.full_dim_max_size:,} chunks, {args.small_dim} up to "
        f"{args.bank_max_size:,}, {args.huge_dim} above (10^6 x 5760 float32 = 23 GB would not fit in 24 GB RAM; the S "
        "column says which). HNSW M=32, efSearch 128; IVF nlist = sqrt(n), "
        f"nprobe 32. {args.threads} torch thread(s); load average {m['load_avg_start']} at the start.",
        "",
        f"| chunks | S | index | measured through | build s | latency ms (k={k}) | latency ms "
        f"(k={args.candidates}) | recall@{k} vs flat |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in m["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['size']:,} | {r['dim']} | {r['index']} | {r['skipped']} | - | - | - | - |")
            continue
        lines.append(f"| {r['size']:,} | {r['dim']} | {r['index']} | {r['through']} | {r['build_s']:.1f} | "
                     f"{r['latency_ms']:.2f} | {r['latency_candidates_ms']:.2f} | {r[f'recall_at_{k}']:.3f} |")
    rr = m["rerank"]
    lines += [
        "",
        f"Second stage per question (`{rr['model']}` shape, chunks (L, H, T, D) = {tuple(rr['chunk_shape'])} at 4 bits, "
        f"{rr['question_tokens']} question tokens, upper half of the layers, {rr['candidates']} candidates, top {rr['k']}), "
        "old and new path side by side on the same bank and question (they chose the same chunks), median of 5. "
        "*Old*: every candidate fetched and dequantized whole (all layers, keys and values), then un-rotated and "
        "scored one chunk at a time. *New* (`app.engine.retrieval.retrieve`): summary search, only the upper layers' keys "
        "dequantized (`MemoryBank.keys`), batched un-rotate + einsum + per-chunk segment max, only the final k chunks "
        "fetched whole. *Disk*: every candidate on the disk tier (read + sha256 checked per chunk), as for most "
        "candidates late in a long stream.",
        "",
        "| candidates in | old: fetch + dequantize all | old total | new: upper-layer keys | new: scoring | "
        "new total (incl. final k) | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tier, t in rr["tiers"].items():
        lines.append(f"| {tier} | {t['old_fetch_dequantize_ms']:.0f} ms | **{t['old_ms']:.0f} ms** | {t['new_keys_ms']:.0f} ms | "
                     f"{t['new_score_ms']:.0f} ms | **{t['new_ms']:.0f} ms** | {t['old_ms'] / t['new_ms']:.1f}x |")
    return "\n".join(lines)
