"""ASR: speech-recognition real-time factor and word error rate, VAD on vs off, 1 vs 2 threads; pipeline fps with speech.

The test set is synthesised at bench time: ``espeak-ng`` speaks a few plain sentences, placed on a track
with pauses between them (16 kHz mono). Each setting feeds that track to a real
:class:`~app.engine.speech.Transcriber` as 0.1 s chunks as fast as it takes them, then flushes; the
real-time factor is its own (work seconds per audio second) and the word error rate compares all its
words with the sentences' (lower-cased, punctuation removed, a plain word-level edit distance).

The pipeline rows play a real clip (bikes.mp4 looped, the same speech muxed in as AAC by ``ffmpeg``)
through ``FileSource`` + ``Sampler`` into a session as fast as it goes, with speech off and on (the
source's audio decoded and transcribed on the transcriber's thread, segments ingested between frames):
sustained frames per second of the whole path, side by side.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from streaming.audio import AUDIO_RATE

log = logging.getLogger(__name__)

#: Plain sentences (no spelled letters or digits, whose written form is a matter of style).
SENTENCES = (
    "Please turn on the kitchen lights and open the front door",
    "The meeting with the design team starts after lunch",
    "Remember to buy milk and bread and fresh oranges",
    "She parked the blue car next to the old library",
    "The train to the airport leaves from the second platform",
    "We should water the garden before the sun goes down",
)
PAUSE_S = 1.5
RATE = AUDIO_RATE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--asr", default=None, metavar="MODEL",
                        help="speech model (default: the offline tiny.en); any --asr value but off")
    parser.add_argument("--model", default="smolvlm2-256m-smollm2",
                        help="backend of the pipeline rows (default: SmolVLM2-256M shape with real SmolLM2 weights)")
    parser.add_argument("--fps", type=float, default=1.0, help="pipeline input rate (default 1 frame per second)")
    parser.add_argument("--window", type=int, default=256, help="pipeline window tokens (default 256)")
    parser.add_argument("--quick", action="store_true", help="two sentences, tiny random model (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: ``"Turn it on, please."`` -> ``["turn", "it", "on", "please"]``."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level edit distance (substitutions + insertions + deletions)."""
    prev = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ref != hyp))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return word_errors(ref, words(hypothesis)) / max(1, len(ref))


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng; `make install` does it)")
    return path


def _decode_audio(path: Path):
    """(N,) float32 mono at 16 kHz: the audio of ``path``, decoded by the sources' own decoder."""
    import numpy as np

    from streaming.file_source import FileSource

    chunks = []
    with FileSource(str(path), audio=True) as source:
        source.on_audio(chunks.append)
        for _ in source:  # an audio-only file: no frames, every chunk goes to the callback
            pass
    return np.concatenate([c.samples for c in chunks]).astype(np.float32)


def speech_track(sentences, folder: Path):
    """``(samples (N,) float32 at 16 kHz, [(t_start, text)])``: the sentences after each other, with pauses."""
    import numpy as np

    pieces, times, t = [np.zeros(int(PAUSE_S * RATE), np.float32)], [], PAUSE_S
    for i, text in enumerate(sentences):
        wav = folder / f"s{i}.wav"
        subprocess.run([_espeak(), "-s", "150", "-w", str(wav), text], check=True, capture_output=True, timeout=120)
        voice = _decode_audio(wav)
        pieces += [voice, np.zeros(int(PAUSE_S * RATE), np.float32)]
        times.append((t, text))
        t += len(voice) / RATE + PAUSE_S
    return np.concatenate(pieces), times


def transcribe_row(track, reference: str, asr) -> dict[str, Any]:
    from app.engine.speech.transcriber import Transcriber
    from streaming.audio import AudioChunk

    step = RATE // 10
    with Transcriber(asr, name="bench") as tr:
        t0 = time.perf_counter()
        for i in range(0, len(track), step):
            tr.feed(AudioChunk(i / RATE, track[i:i + step].copy()))
        segments = tr.flush(timeout_s=3600)
        wall = time.perf_counter() - t0
        st = tr.stats()
    hypothesis = " ".join(s.text for s in segments)
    return {"vad": asr.vad, "threads": asr.threads, "audio_s": st["audio_s"], "speech_s": st["speech_s"],
            "wall_s": wall, "rtf": st["rtf"], "wer": wer(reference, hypothesis), "segments": len(segments),
            "dropped_s": st["dropped_s"], "hypothesis": hypothesis}


def speech_clip(track, folder: Path, base: Path, seconds: float) -> Path:
    """``base`` (video copied, looped to ``seconds``) with ``track`` as its AAC audio."""
    import math
    import wave

    import numpy as np

    wav = folder / "track.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(track, -1, 1) * 32767).astype("<i2").tobytes())
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FileNotFoundError("ffmpeg is not installed (apt-get install ffmpeg)")
    out = folder / "talk.mp4"
    loops = max(0, math.ceil(seconds / 10.0))
    subprocess.run([ffmpeg, "-y", "-hide_banner", "-loglevel", "error", "-stream_loop", str(loops), "-i", str(base),
                    "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k",
                    "-t", f"{seconds:.3f}", str(out)], check=True, capture_output=True, timeout=300)
    return out


def pipeline_row(backend, clip: Path, asr, args) -> dict[str, Any]:
    """Play ``clip`` as fast as it goes into a session; speech on when ``asr`` is given."""
    from app.engine.config import SessionConfig
    from app.engine.session import Session
    from app.engine.speech.transcriber import Transcriber
    from streaming import Sampler, SamplerConfig, open_source

    cfg = SessionConfig(window_tokens=args.window, kv_bits=4, top_k=8, dialog_max_tokens=0)
    transcriber = Transcriber(asr, name="bench") if asr is not None else None
    src = open_source(str(clip), allow_files=True, audio=asr is not None)
    if transcriber is not None:
        src.on_audio(transcriber.feed)
    frames = 0
    t0 = time.perf_counter()
    try:
        with Session(backend, cfg) as session, Sampler(src, SamplerConfig(fps=args.fps), live=False) as sampler:
            for frame in sampler:
                if transcriber is not None:
                    for seg in transcriber.poll():
                        session.ingest_speech(seg.t_start, seg.t_end, seg.text)
                session.ingest(frame, evaluate_watches=False)
                frames += 1
            if transcriber is not None:
                for seg in transcriber.flush(timeout_s=3600):
                    session.ingest_speech(seg.t_start, seg.t_end, seg.text)
            wall = time.perf_counter() - t0
            st = session.stats()
        a = transcriber.stats() if transcriber is not None else {}
    finally:
        if transcriber is not None:
            transcriber.close()
    return {"speech": asr is not None, "frames": frames, "wall_s": wall, "fps": frames / wall,
            "speech_events": st["speech_events"], "asr_rtf": a.get("rtf"), "asr_audio_s": a.get("audio_s"),
            "bank_chunks": st["bank_chunks"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from app.engine.backends.registry import load_backend
    from app.engine.speech.config import ASRConfig, parse_asr
    from app.engine.speech.names import OFFLINE_MODEL

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.window = "tiny-smolvlm", 64
    runtime.check_range("fps", args.fps, 0.05, 60)
    runtime.check_range("window", args.window, 16, 1_000_000)
    base = parse_asr(args.asr or OFFLINE_MODEL)
    if base is None:
        raise ValueError("--asr off: this bench measures speech recognition; give a model")
    sentences = SENTENCES[:2] if args.quick else SENTENCES
    reference = " ".join(sentences)
    load0 = runtime.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-asr-") as tmp:
        track, _ = speech_track(sentences, Path(tmp))
        rows = []
        for vad in (True, False):
            for threads in (1, 2):
                asr = ASRConfig(model=base.model, vad=vad, threads=threads, language=base.language)
                transcribe_row(track[: RATE * 2], reference, asr)  # load the model, warm it up
                rows.append(transcribe_row(track, reference, asr))
                log.info("asr %s", rows[-1])
        clip = speech_clip(track, Path(tmp), runtime.clip_path("bikes.mp4"), len(track) / RATE)
        backend = load_backend(args.model, dtype="float32")
        spec = backend.spec
        pipeline = [pipeline_row(backend, clip, None, args),
                    pipeline_row(backend, clip, ASRConfig(model=base.model, threads=1), args)]
        backend.close()
    off = pipeline[0]
    for r in pipeline:
        r["fps_vs_off"] = r["fps"] / off["fps"] if off["fps"] else None
    audio_s = len(track) / RATE
    options: dict[str, Any] = ({"quick": True, "threads": args.threads} if args.quick else
                               {"asr": args.asr, "model": args.model, "fps": args.fps, "window": args.window,
                                "threads": args.threads})
    metrics = {"rows": rows, "pipeline": pipeline, "load_avg_start": load0, "asr_model": base.model,
               "sentences": list(sentences), "audio_s": audio_s, "model": spec.name}
    lines = [
        f"Speech model `{base.model}` (faster-whisper, int8 on the CPU, greedy), {len(sentences)} espeak-ng sentences "
        f"({audio_s:.1f} s of audio with {PAUSE_S:g} s pauses) fed as 0.1 s chunks as fast as the transcriber takes "
        f"them. Load average {load0} at the start (the 2 cores are shared with other engineers' tests: absolute "
        "times are pessimistic; rows ran back to back).",
        "",
        "| VAD | threads | audio s | speech s | wall s | real-time factor | WER | segments |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {'on' if r['vad'] else 'off'} | {r['threads']} | {r['audio_s']:.1f} | {r['speech_s']:.1f} | "
                     f"{r['wall_s']:.2f} | {r['rtf']:.3f} | {r['wer']:.1%} | {r['segments']} |")
    lines += [
        "",
        f"Pipeline: `bikes.mp4` looped with that speech as AAC, decoded by FileSource + Sampler at {args.fps:g} fps as "
        f"fast as it goes into a session of `{spec.name}`" + (" (tiny random weights: a smoke test)" if spec.random_weights
                                                            else " (vision tower at the real shape, random weights)")
        + f", window {args.window} tokens, on {args.threads} torch thread(s); speech on: the audio decoded too and "
        "transcribed on the transcriber's own thread, segments ingested between frames.",
        "",
        "| speech | frames | wall s | sustained fps | fps vs off | speech segments | ASR real-time factor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in pipeline:
        rtf = f"{r['asr_rtf']:.3f}" if r["asr_rtf"] is not None else "-"
        lines.append(f"| {'on' if r['speech'] else 'off'} | {r['frames']} | {r['wall_s']:.1f} | {r['fps']:.3f} | "
                     f"{r['fps_vs_off']:.2f}x | {r['speech_events']} | {rtf} |")
    lines += ["", "- *real-time factor*: transcription work seconds per second of audio (below 1 keeps up).",
              "- *WER*: word error rate over all sentences (substitutions + insertions + deletions per reference word).",
              "- VAD off transcribes every 8 s window (its silent ends left out); VAD on only the speech Silero finds."]
    return {"title": "ASR: speech recognition speed and accuracy, VAD and threads; pipeline fps with speech on/off",
            "command": common.format_command("asr", [], options), "params": options, "metrics": metrics,
            "markdown": "\n".join(lines)}
