"""KV codec: bytes per frame, true bits per element and encode/decode throughput per setting.

The KV is real: one frame of ``bikes.mp4`` is encoded by the model's vision tower and prefilled
after the system prompt; the 64 visual tokens' keys and values ``(L, H, 64, D)`` (SmolLM2's 30
layers x 3 KV heads x 64 dims for ``smolvlm2-256m-smollm2``, real text weights) are packed by
``compression.kvcodec.KVCodec`` at every ``kv_bits`` (32/16/8/4/2), value mode (per channel /
per token / ternary per token), group size and number of float16 outlier key channels. Bytes
count everything stored (codes, scales, zero points, outlier channels and their indices); the
chunk file column is the whole file a chunk takes on disk (with positions, summary, metadata);
throughput is float32 input megabytes (keys + values, 10^6 bytes) per second, median of
``--repeat`` timed calls.

Compact rerank keys (:mod:`compression.compact_keys`, ``--rerank-bits``): the form of a chunk the
memory bank keeps in RAM for the rerank (pre-RoPE keys of the upper half's (layer, KV head) pairs,
content tokens, per channel at 8/4/2 bits). Measured side by side with the full-precision rerank on
real SmolLM2 KV: seeded needle streams of timed notes (:mod:`app.bench.needles`) go through a real
session with 16-bit memory, and for each needle question the probe's query tokens score the same
``--rerank-candidates`` summary candidates both ways: the full rerank (stored keys un-rotated per
question, :func:`app.engine.retrieval.late_interaction_scores`) and the compact form
(:func:`compression.compact_keys.compact_scores`). Reported: overlap of the two top ``--rerank-k``,
whether the needle's chunk is in each, and the scoring time per question; bytes per frame of the
compact form (the frame above) and the RAM a day of it takes at 1 fps.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend whose KV is packed")
    parser.add_argument("--bits", default="32,16,8,4,2", help="kv_bits values (default 32,16,8,4,2)")
    parser.add_argument("--group-sizes", default="32,64,128", help="quantization group sizes (default 32,64,128)")
    parser.add_argument("--outliers", default="0,1,2", help="float16 outlier key channels (default 0,1,2)")
    parser.add_argument("--repeat", type=int, default=20, help="timed encode/decode calls per setting (default 20)")
    parser.add_argument("--rerank-bits", default="8,4,2", help="compact rerank key bits compared (default 8,4,2; '' = skip)")
    parser.add_argument("--rerank-streams", type=int, default=3, help="needle streams for the rerank comparison (default 3)")
    parser.add_argument("--rerank-events", type=int, default=150, help="notes per stream (default 150)")
    parser.add_argument("--rerank-candidates", type=int, default=64, help="candidates scored per question (default 64)")
    parser.add_argument("--rerank-k", type=int, default=8, help="top k compared (default 8)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 3 calls per setting (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def real_frame_kv(backend, *, with_positions: bool = False) -> tuple[Any, ...]:
    """-> (keys, values) ``(L, H, N, D)`` float32 of one real frame's visual tokens after the system prompt
    (and their positions ``(N,)`` or ``(3, N)`` with ``with_positions``)."""
    from app.bench import runtime

    frame = runtime.decode_clip(runtime.clip_path("bikes.mp4"), 1.0, backend.spec.frame_size, max_frames=3)[2]
    sink = backend.text_segment(backend.chat.sink_template.format(system=backend.default_system), 0)
    sink_res, _ = backend.prefill(sink, [])
    tokens = backend.encode_frames([frame.rgb])[0]
    seg = backend.frame_segment(frame.pts, tokens, None, sink.next_position)
    res, _ = backend.prefill(seg, [sink_res.kv])
    content = seg.content
    keys, values = res.kv.keys[:, :, content].float().contiguous(), res.kv.values[:, :, content].float().contiguous()
    if with_positions:
        return keys, values, res.kv.positions[..., content].contiguous()
    return keys, values


def _time(fn, repeat: int) -> float:
    from app.bench import common

    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return common.median(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from app.bench import common, runtime
    from app.engine.backends.registry import load_backend
    from compression.kvcodec import KV_BITS, VALUE_MODES, KVCodec, KVCodecConfig
    from streaming.checks import check_choice

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.repeat = "tiny-smolvlm", 3
    repeat = int(runtime.check_range("repeat", args.repeat, 1, 10_000))
    bits_list = runtime.parse_ints("bits", args.bits, 2, 32)
    groups = runtime.parse_ints("group_sizes", args.group_sizes, 1, 4096)
    outliers = runtime.parse_ints("outliers", args.outliers, 0, 64)
    for b in bits_list:
        check_choice("--bits values", b, KV_BITS)
    load0 = runtime.load_average()
    backend = load_backend(args.model, dtype="float32")
    spec = backend.spec
    k, v, frame_pos = real_frame_kv(backend, with_positions=True)
    rerank_bits = runtime.parse_ints("rerank_bits", args.rerank_bits, 2, 8) if args.rerank_bits.strip() else []
    try:
        rerank = _rerank_keys(backend, args, rerank_bits, k, frame_pos) if rerank_bits else None
    finally:
        backend.close()
    input_bytes = (k.numel() + v.numel()) * 4
    rows = []
    from memory.chunk import ChunkMeta
    from memory.store import PackedChunk, encode_chunk

    meta = ChunkMeta(chunk_id=0, t_start=0.0, t_end=1.0, kind="frame", n_tokens=int(k.shape[2]))
    positions = torch.arange(k.shape[2], dtype=torch.int64)
    summary = k.mean(2).flatten().float()
    settings = []
    for bits in bits_list:
        for mode in VALUE_MODES:
            if bits > 8 and mode != "channel":
                continue  # float storage: value mode, groups and outliers do not apply
            for group in (groups if bits <= 8 else groups[:1]):
                for n_out in (outliers if bits <= 8 else outliers[:1]):
                    settings.append(KVCodecConfig(bits=bits, value_mode=mode, group_size=group,
                                                  outlier_channels=n_out if bits <= 8 else 0))
    for cfg in settings:
        bits, mode, group = cfg.bits, cfg.value_mode, cfg.group_size
        codec = KVCodec(cfg)
        packed = codec.encode(k, v)
        file_bytes = len(encode_chunk(PackedChunk(meta=meta, packed=packed, positions=positions,
                                                  summary=summary))[0])
        k2, v2 = codec.decode(packed, torch.float32)
        enc_s = _time(lambda codec=codec: codec.encode(k, v), repeat)
        dec_s = _time(lambda codec=codec, packed=packed: codec.decode(packed, torch.float32), repeat)
        rows.append({
            "bits": bits, "value_mode": mode if bits <= 8 else "-", "group_size": group if bits <= 8 else None,
            "outlier_channels": cfg.outlier_channels if bits <= 8 else None,
            "bytes_per_frame": packed.nbytes, "bits_per_element": float(packed.bits_per_element()),
            "chunk_file_bytes": file_bytes,
            "ratio_vs_fp32": input_bytes / packed.nbytes,
            "key_rel_error": float((k2 - k).norm() / k.norm()), "value_rel_error": float((v2 - v).norm() / v.norm()),
            "encode_mb_s": input_bytes / 1e6 / enc_s, "decode_mb_s": input_bytes / 1e6 / dec_s,
            "encode_ms": 1000 * enc_s, "decode_ms": 1000 * dec_s,
        })
        log.info("kv %s", rows[-1])
    shape = tuple(k.shape)
    metrics = {"shape": shape, "input_bytes_fp32": input_bytes, "rows": rows, "load_avg_start": load0,
               "rerank_keys": rerank}
    options: dict[str, Any] = {"quick": True, "threads": args.threads} if args.quick else {"threads": args.threads,
        "model": args.model, "bits": args.bits, "group_sizes": args.group_sizes, "repeat": repeat,
        "rerank_bits": args.rerank_bits, "rerank_streams": args.rerank_streams, "rerank_events": args.rerank_events,
        "rerank_candidates": args.rerank_candidates, "rerank_k": args.rerank_k}
    lines = [
        f"Real KV of one `bikes.mp4` frame through `{spec.name}`"
        + (" (tiny random weights: a smoke test)" if spec.random_weights else " (real SmolLM2-135M-Instruct text weights; "
           "the random vision tower's tokens are what the language model saw)")
        + f": keys and values of the {shape[2]} visual tokens, shape (L, H, T, D) = {shape}, {input_bytes:,} bytes in "
        f"float32. Throughput = float32 MB (10^6 bytes, keys + values) per second, median of {repeat} calls on "
        f"{torch.get_num_threads()} threads; load average {load0} at the start.",
        "",
        "| kv_bits | values | group | outlier ch. | bytes / frame | bits / element | <= 2.5 | chunk file bytes "
        "| x smaller than fp32 | key rel. error | value rel. error | encode MB/s | decode MB/s |",
        "|---:|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out = "-" if r["outlier_channels"] is None else str(r["outlier_channels"])
        lines.append(
            f"| {r['bits']} | {r['value_mode']} | {r['group_size'] or '-'} | {out} | {r['bytes_per_frame']:,} | "
            f"{r['bits_per_element']:.2f} | {'yes' if r['bits_per_element'] <= 2.5 else ''} | {r['chunk_file_bytes']:,} | "
            f"{r['ratio_vs_fp32']:.1f} | {r['key_rel_error']:.4f} | {r['value_rel_error']:.4f} | "
            f"{r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} |")
    lines += ["", "- *bits / element* is `PackedKV.bits_per_element()`: every stored byte (codes, float16 scales and zero "
              "points, float16 outlier key channels and their int16 indices) over the number of key and value elements; "
              "keys are always quantized per channel (groups of tokens, so a group can hold at most the frame's tokens). "
              "*ternary*: values per token in three levels, five codes to a byte (1.6 bits) plus a float16 scale and zero "
              "point per group of channels. *chunk file bytes*: the file `memory.store` writes for this frame (two "
              "checksummed sections, positions, summary and metadata included). "
              "A frame in the memory bank also stores its positions (int64) and a float32 summary (S = L x H x D) outside "
              "these figures."]
    if rerank is not None:
        lines += rerank_markdown(rerank)
    return {"title": "KV codec: bytes per frame, bits per element, throughput",
            "command": common.format_command("kv", [], options),
            "params": options, "metrics": metrics, "markdown": "\n".join(lines)}


# ---- compact rerank keys ----------------------------------------------------------------------------


def _head_sets(spec) -> list[tuple[str, Any]]:
    """The (layer, KV head) sets compared: every head of the upper half, and the model's calibrated set."""
    from app.engine.retrieval_heads import RetrievalHeadsError, heads_for, upper_half

    sets = [("upper half", upper_half(spec.num_layers, spec.num_kv_heads))]
    try:
        auto = heads_for(spec, "auto")
    except RetrievalHeadsError as exc:
        log.warning("no calibrated heads: %s", exc)
        return sets
    if list(auto.pairs) != list(sets[0][1].pairs):
        sets.append(("calibrated", auto))
    return sets


def _rerank_keys(backend, args, bits_list: list[int], frame_keys, frame_pos) -> dict[str, Any]:
    """Full-precision rerank vs compact rerank keys on real KV (see the module docstring)."""
    import torch

    from app.bench import common, runtime
    from app.bench.needles import make_stream
    from app.engine.config import SessionConfig
    from app.engine.retrieval import late_interaction_scores, rerank_pairs
    from app.engine.session import Session
    from compression.compact_keys import COMPACT_BITS, compact_scores, encode_compact
    from memory.chunk import content_mask
    from streaming.checks import check_choice

    for b in bits_list:
        check_choice("--rerank-bits values", b, COMPACT_BITS)
    spec = backend.spec
    quick = args.quick
    streams = 1 if quick else int(runtime.check_range("rerank_streams", args.rerank_streams, 1, 100))
    events = 24 if quick else int(runtime.check_range("rerank_events", args.rerank_events, 8, 2000))
    n_cand = int(runtime.check_range("rerank_candidates", args.rerank_candidates, 1, 4096))
    top = int(runtime.check_range("rerank_k", args.rerank_k, 1, 4096))
    sets = []
    for name, heads in _head_sets(spec):
        layers = list(heads.layers)
        mask = None if heads.all_heads else heads.mask_tensor()
        pairs = rerank_pairs(layers, spec.num_kv_heads, mask)
        li = torch.tensor([p[0] for p in pairs])
        hi = torch.tensor([p[1] for p in pairs])
        with torch.no_grad():
            pre = backend.unrotate_keys(frame_keys, frame_pos)  # (L, H, T, D)
            per_frame = {b: encode_compact(pre[li, hi], b, pairs).nbytes for b in bits_list}
        sets.append({"name": name, "layers": layers, "mask": mask, "pairs": pairs, "li": li, "hi": hi,
                     "per_frame": per_frame, "fp16_frame": len(pairs) * frame_keys.shape[2] * spec.head_dim * 2})
    cfg = SessionConfig(window_tokens=64 if quick else 256, kv_bits=16, top_k=top, dialog_max_tokens=0, drop="off",
                        text_retrieval=False, retrieval_neighbours=0, rerank_compact_bits=None,
                        retrieval_heads="upper")
    questions: dict[str, list] = {hs["name"]: [] for hs in sets}
    for s_index in range(streams):
        stream = make_stream(100 + s_index, events=events, needles=min(12, events // 4))
        with Session(backend, cfg) as session:
            for pts, text in stream.events:
                session.ingest_text(pts, text)
            bank = session.bank
            cache = session._window.cache  # the probe as Session._question makes it, rewound after
            for needle in stream.needles:
                qseg = backend.question_segment(needle.question, session._next_pos, first=True)
                mark = cache.length
                try:
                    res, _ = backend.prefill(qseg, (), cache=cache, logits_to_keep=1, want_query_tokens=True)
                finally:
                    cache.rewind(mark)
                hits = [m.chunk_id for m, _ in bank.search(res.query_summary, n_cand)]
                if len(hits) <= top:
                    continue
                needle_ids = {m.chunk_id for m in bank.metas() if m.t_start <= needle.pts <= m.t_end}
                q_all = res.query_tokens.float().view(spec.num_layers, -1, spec.num_kv_heads, spec.head_dim)
                for hs in sets:
                    t0 = time.perf_counter()
                    keysets = [bank.keys(cid, hs["layers"]) for cid in hits]
                    full = late_interaction_scores(backend, res.query_tokens, keysets, head_mask=hs["mask"])
                    full_s = time.perf_counter() - t0
                    row_of = {layer: i for i, layer in enumerate(hs["layers"])}
                    rows = torch.tensor([row_of[int(i)] for i in hs["li"]])
                    q = q_all[hs["li"], :, hs["hi"]]
                    rec = {"full_s": full_s, "full_top": _top(hits, full, top), "needle_ids": sorted(needle_ids),
                           "bits": {}}
                    with torch.no_grad():
                        pre_keys = []
                        for ks in keysets:
                            m = content_mask(ks.meta, ks.keys.shape[2])
                            pre = backend.unrotate_keys(ks.keys[:, :, m].float(), ks.positions[..., m])
                            pre_keys.append(pre[rows, hs["hi"]])
                    for b in bits_list:
                        items = [encode_compact(x, b, hs["pairs"]) for x in pre_keys]
                        times = []
                        for _ in range(3):
                            t0 = time.perf_counter()
                            scores = compact_scores(q, items)
                            times.append(time.perf_counter() - t0)
                        got = _top(hits, scores, top)
                        rec["bits"][b] = {"top": got, "overlap": len(set(got) & set(rec["full_top"])) / top,
                                          "same_top": set(got) == set(rec["full_top"]), "s": common.median(times)}
                    questions[hs["name"]].append(rec)
    out_sets = []
    for hs in sets:
        qs = questions[hs["name"]]
        rows = []
        for b in bits_list:
            rs = [r["bits"][b] for r in qs]
            rows.append({"bits": b, "bytes_per_frame": hs["per_frame"][b], "day_1fps_bytes": hs["per_frame"][b] * 86400,
                         "mean_overlap": sum(r["overlap"] for r in rs) / max(1, len(rs)),
                         "same_top_share": sum(r["same_top"] for r in rs) / max(1, len(rs)),
                         "needle_in_top": sum(bool(set(q["needle_ids"]) & set(q["bits"][b]["top"])) for q in qs)
                         / max(1, len(qs)),
                         "median_s": common.median([r["s"] for r in rs] or [0.0])})
        out_sets.append({"name": hs["name"], "pairs": len(hs["pairs"]), "fp16_bytes_per_frame": hs["fp16_frame"],
                         "questions": len(qs), "full_median_s": common.median([r["full_s"] for r in qs] or [0.0]),
                         "full_needle_in_top": sum(bool(set(q["needle_ids"]) & set(q["full_top"])) for q in qs)
                         / max(1, len(qs)), "rows": rows, "records": qs})
    return {"streams": streams, "events": events, "candidates": n_cand, "top_k": top,
            "frame_tokens": int(frame_keys.shape[2]), "sets": out_sets}


def _top(ids: list[int], scores: list[float], k: int) -> list[int]:
    order = sorted(range(len(ids)), key=lambda i: scores[i], reverse=True)
    return [ids[i] for i in order[:k]]


def rerank_markdown(r: dict[str, Any]) -> list[str]:
    """The compact rerank keys' table (see :func:`_rerank_keys`)."""
    n_q = r["sets"][0]["questions"] if r["sets"] else 0
    lines = [
        "",
        f"Compact rerank keys vs the full-precision rerank, side by side on real SmolLM2 KV: {r['streams']} seeded "
        f"needle streams x {r['events']} notes through a session with 16-bit memory, **{n_q} needle questions**; each "
        f"question's probe scores the same {r['candidates']} summary candidates both ways, over the same (layer, KV head) "
        f"pairs, and the top {r['top_k']} are compared. Compact form: pre-RoPE keys of the pairs, content tokens, per "
        f"channel. Bytes per frame: the frame above ({r['frame_tokens']} visual tokens).",
        "",
        "| pairs scored | rerank keys | bytes / frame | RAM for a day at 1 fps | same top k | top-k overlap "
        "| needle in top k | scoring s / question |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for hs in r["sets"]:
        label = f"{hs['name']} ({hs['pairs']})"
        lines.append(f"| {label} | full precision (stored keys, un-rotated per question) | - | - | 100% | 100% | "
                     f"{hs['full_needle_in_top']:.0%} | {hs['full_median_s']:.4f} |")
        for row in hs["rows"]:
            lines.append(f"| {label} | compact {row['bits']}-bit | {row['bytes_per_frame']:,} | "
                         f"{row['day_1fps_bytes'] / 2**20:,.0f} MiB | {row['same_top_share']:.0%} | {row['mean_overlap']:.1%} "
                         f"| {row['needle_in_top']:.0%} | {row['median_s']:.4f} |")
    lines += ["", "- *same top k*: questions whose compact top k is the full rerank's, as a set; *top-k overlap*: mean "
              "share of the full top k found; *needle in top k*: the needle's chunk ranked in the top k; *scoring s*: "
              "median per question over the candidates (full: reading the stored 16-bit keys from RAM, un-rotating and "
              "scoring; compact: scoring the compact forms in RAM). *RAM for a day*: bytes per frame x 86,400. "
              "*calibrated*: the model's shipped retrieval heads (`SessionConfig.retrieval_heads='auto'`), which the "
              "session's rerank uses by default when the model has them."]
    return lines
