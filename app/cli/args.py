"""Command-line options shared by every command that builds a session (ask, serve, client, bench).

The lists of choices come from the packages that declare them (:mod:`app.bench.choices` reads them
when first needed) and the ``--model`` help from the model registry, so nothing here repeats them.
"""

from __future__ import annotations

import argparse

from app.bench.choices import DROP_CHOICES, INDEX_CHOICES, KV_BITS_CHOICES, LOAD_IN_CHOICES, VALUE_MODE_CHOICES


def add_model_arguments(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """``--model`` (default: the registry's default model), ``--device``, ``--dtype``, ``--load-in``."""
    from app.engine.backends import registry  # reads the families' declarations, imports no model code

    help_text = registry.model_help()
    if default_model is None:
        default_model = registry.default_model()
    else:
        help_text += f" This command's default: {default_model}."
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, help=help_text)
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--load-in", default=None, choices=LOAD_IN_CHOICES, metavar="BITS",
                   help="quantize the model's weights with bitsandbytes on load: %(choices)s")


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("session")
    g.add_argument("--window", type=int, default=None, help="local attention window in tokens")
    g.add_argument("--chunk-frames", type=int, default=None, help="frames per memory chunk")
    g.add_argument("--top-k", type=int, default=None, help="memory chunks retrieved per question")
    g.add_argument("--rerank", default=None, choices=["on", "off"],
                   help="late-interaction rerank of the summary search's candidates (default on)")
    g.add_argument("--rerank-candidates", type=int, default=None, metavar="N",
                   help="summary-search candidates the rerank scores (fewer make the rerank cheaper; "
                        "`livesight bench recall` measures what it costs in recall)")
    g.add_argument("--retrieval-heads", default=None, metavar="auto|upper|FILE",
                   help="the (layer, head) pairs the rerank scores with: auto (the model's shipped calibration, "
                        "else the upper half), upper, or a file from `livesight calibrate-retrieval`")
    g.add_argument("--retrieval-probe-tokens", type=int, default=None, metavar="N",
                   help="a second probe: the model's first N answer tokens rank memory again (0 = off, the default)")
    g.add_argument("--retrieval-score-gap", type=float, default=None, metavar="GAP",
                   help="adaptive k: hits stop below (1 - GAP) times the best fused score, top-k at most "
                        "(default off)")
    g.add_argument("--rerank-compact-bits", default=None, choices=["8", "4", "2", "off"], metavar="BITS",
                   help="bits of the compact pre-RoPE rerank keys kept in RAM for every chunk (8, 4, 2; off: "
                        "the rerank reads each candidate's stored keys; default 4)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
    g.add_argument("--system-prompt", default=None)
    g.add_argument("--drop", default=None, choices=DROP_CHOICES, metavar="MODE", help="token drop mode: %(choices)s")
    g.add_argument("--tau", type=float, default=None, help="feature drop: cosine similarity above which a token is dropped")
    g.add_argument("--keep-ratio", type=float, default=None, help="budget drop: fraction of tokens kept per frame")
    g.add_argument("--pixel-threshold", type=float, default=None, help="pixel drop: mean cell difference counted as no change")
    g.add_argument("--keyframe-every", type=float, default=None, metavar="SECONDS", help="keep a whole frame every N seconds")
    g.add_argument("--kv-bits", type=int, default=None, choices=KV_BITS_CHOICES, metavar="BITS",
                   help="bits per KV element in memory: %(choices)s")
    g.add_argument("--kv-value-mode", default=None, choices=VALUE_MODE_CHOICES, metavar="MODE",
                   help="values quantized per %(choices)s")
    g.add_argument("--kv-group-size", type=int, default=None)
    g.add_argument("--ram-budget-mb", type=float, default=None, help="RAM for memory chunks before they spill to disk")
    g.add_argument("--kv-outlier-channels", type=int, default=None, metavar="N",
                   help="key channels per layer and head kept in float16 (kv-bits 8/4/2)")
    g.add_argument("--disk-budget-mb", type=float, default=None,
                   help="disk for memory chunk files; past it the oldest memory is consolidated, then deleted")
    g.add_argument("--retention", type=float, default=None, metavar="SECONDS", help="forget memory older than this")
    g.add_argument("--index", default=None, choices=INDEX_CHOICES, metavar="KIND", help="summary index: %(choices)s")
    g.add_argument("--vision", default=None, choices=["on", "off"],
                   help="frames add visual tokens (default on; off: frames are stamped and cited but the model only "
                        "hears and reads; models whose vision tower is random run with it off)")
    g.add_argument("--text-retrieval", default=None, choices=["on", "off"],
                   help="also find notes and speech by a sentence embedder, fused with the in-model ranking "
                        "(default on)")
    g.add_argument("--embedder", default=None, metavar="NAME",
                   help="sentence embedder of the text path: minilm (offline all-MiniLM-L6-v2, default), a model "
                        "folder, or hub:<model id>")
    g.add_argument("--text-candidates", type=int, default=None, metavar="N",
                   help="chunks the text path proposes per question (default 32)")
    g.add_argument("--retrieval-neighbours", type=int, default=None, metavar="N",
                   help="chunks just before and after the best hits that come along (default 1; 0 = none)")
    g.add_argument("--retrieval-budget-tokens", type=int, default=None, metavar="TOKENS",
                   help="the most memory tokens a question attends to, hits and neighbours together (default: no limit)")


def add_asr_argument(p: argparse.ArgumentParser, default: str = "off", default_help: str = "") -> None:
    """``--asr MODEL|off``: speech recognition of the source's audio (parsed by :func:`asr_config`)."""
    from app.engine.speech.names import OFFLINE_MODEL

    p.add_argument("--asr", default=default, metavar="MODEL|off",
                   help=f"speech recognition of the audio: {OFFLINE_MODEL} (Whisper tiny.en, offline, from the "
                        "offline extra), any faster-whisper model name (small, distil-large-v3: needs the hub or "
                        "its cache), a local CTranslate2 model directory, or off" + (f". {default_help}" if default_help else ""))
    p.add_argument("--asr-vad", default="on", choices=["on", "off"],
                   help="voice activity detection before transcription (default on)")
    p.add_argument("--asr-threads", type=int, default=1, metavar="N", help="CPU threads of the speech model (default 1)")


def asr_config(args: argparse.Namespace, value: str | None = None):
    """The :class:`~app.engine.speech.ASRConfig` of ``--asr`` (or ``value``), ``None`` for off.

    Raises:
        app.engine.config.ConfigError: an invalid setting.
    """
    from app.engine.speech.config import parse_asr

    return parse_asr(args.asr if value is None else value, vad=getattr(args, "asr_vad", "on") == "on",
                     threads=getattr(args, "asr_threads", 1))


_FIELDS = {
    "window": "window_tokens", "chunk_frames": "chunk_frames", "top_k": "top_k", "max_new_tokens": "max_new_tokens",
    "system_prompt": "system_prompt", "drop": "drop", "tau": "tau", "keep_ratio": "keep_ratio",
    "pixel_threshold": "pixel_threshold", "keyframe_every": "keyframe_every_s", "kv_bits": "kv_bits",
    "kv_value_mode": "kv_value_mode", "kv_group_size": "kv_group_size", "ram_budget_mb": "ram_budget_mb",
    "kv_outlier_channels": "kv_outlier_channels", "disk_budget_mb": "disk_budget_mb",
    "retention": "retention_s", "index": "index", "rerank_candidates": "rerank_candidates",
    "embedder": "embedder", "text_candidates": "text_candidates", "retrieval_neighbours": "retrieval_neighbours",
    "retrieval_budget_tokens": "retrieval_budget_tokens", "retrieval_heads": "retrieval_heads",
    "retrieval_probe_tokens": "retrieval_probe_tokens", "retrieval_score_gap": "retrieval_score_gap",
}


def session_overrides(args: argparse.Namespace) -> dict:
    """The session settings given on the command line, as ``SessionConfig`` field names."""
    out = {field: getattr(args, opt) for opt, field in _FIELDS.items() if getattr(args, opt, None) is not None}
    if getattr(args, "rerank", None) is not None:
        out["rerank"] = args.rerank == "on"
    if getattr(args, "vision", None) is not None:
        out["vision"] = args.vision == "on"
    if getattr(args, "text_retrieval", None) is not None:
        out["text_retrieval"] = args.text_retrieval == "on"
    compact = getattr(args, "rerank_compact_bits", None)
    if compact is not None:
        out["rerank_compact_bits"] = None if compact == "off" else int(compact)
    return out


def weight_quantization(args: argparse.Namespace):
    if not getattr(args, "load_in", None):
        return None
    from compression.weights import WeightQuantConfig

    return WeightQuantConfig(load_in=args.load_in)


def load_backend_from_args(args: argparse.Namespace):
    from app.engine.backends.registry import load_backend

    return load_backend(args.model, device=args.device, dtype=args.dtype, quantization=weight_quantization(args))
