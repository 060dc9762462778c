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
    parser.add_argument("--quick", action="store_true", help="tiny random model, 3 calls per setting (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def real_frame_kv(backend) -> tuple[Any, Any]:
    """-> (keys, values) ``(L, H, N, D)`` float32 of one real frame's visual tokens after the system prompt."""
    from app.bench import runtime

    frame = runtime.decode_clip(runtime.clip_path("bikes.mp4"), 1.0, backend.spec.frame_size, max_frames=3)[2]
    sink = backend.text_segment(backend.chat.sink_template.format(system=backend.default_system), 0)
    sink_res, _ = backend.prefill(sink, [])
    tokens = backend.encode_frames([frame.rgb])[0]
    seg = backend.frame_segment(frame.pts, tokens, None, sink.next_position)
    res, _ = backend.prefill(seg, [sink_res.kv])
    content = seg.content
    return res.kv.keys[:, :, content].float().contiguous(), res.kv.values[:, :, content].float().contiguous()


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
    k, v = real_frame_kv(backend)
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
    metrics = {"shape": shape, "input_bytes_fp32": input_bytes, "rows": rows, "load_avg_start": load0}
    options: dict[str, Any] = {"quick": True, "threads": args.threads} if args.quick else {"threads": args.threads,
        "model": args.model, "bits": args.bits, "group_sizes": args.group_sizes, "repeat": repeat}
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
    return {"title": "KV codec: bytes per frame, bits per element, throughput",
            "command": common.format_command("kv", [], options),
            "params": options, "metrics": metrics, "markdown": "\n".join(lines)}
