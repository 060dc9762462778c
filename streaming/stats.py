"""The ingest statistics snapshot a :class:`~streaming.sampler.Sampler` reports."""

from __future__ import annotations

from dataclasses import dataclass

from streaming.info import Gap


@dataclass(frozen=True)
class IngestStats:
    """A snapshot of one source + sampler pipeline.

    Counting, from input to consumer::

        received -> decoded -> sampled -> delivered
        (packets)   (frames)   (fps rule)  (taken by the consumer)

    Attributes:
        received: input units taken in (demuxed video packets, pushes, capture reads).
        decoded: frames decoded (before sampling).
        sampled: frames the fps rule kept (selected by pts).
        delivered: frames handed to the consumer.
        dropped: frames discarded because the consumer was slow: sampled frames pushed out of
            the sampler's newest-wins queue, plus frames a push source's own queue pushed out.
        decode_errors: bad packets/pushes skipped.
        corrupt_frames: frames delivered by the decoder with concealed errors.
        lag_s: for the newest delivered frame, delivery time minus its ``wall`` (its arrival,
            or for a file played as live, its due time): how far behind real time the consumer is.
        gaps: outages of a live URL source that ended in a reconnection, oldest first.
        fps: delivered frames per second over the last few seconds.
        reconnects: successful reconnections.
        reconnecting: an outage is in progress.
        queue_depth: frames waiting in the sampler's queue now (0 in synchronous mode).
        max_queue_depth: the largest queue depth seen (never above ``queue_size``).
        queue_size: the queue bound (0 in synchronous mode, where there is no queue).
        elapsed_s: seconds since the sampler started.
        last_pts: pts of the newest delivered frame, or None.
        live: True when the sampler runs the source in a background thread (newest wins).
        finished: the stream ended (or was closed) and everything was handed out.
        audio_s: seconds of audio handed to the source's ``on_audio`` consumers (0 without audio).
        audio_chunks: audio chunks handed out.
        audio_decode_errors: bad audio packets (or pushes) skipped.
    """

    received: int = 0
    decoded: int = 0
    sampled: int = 0
    delivered: int = 0
    dropped: int = 0
    decode_errors: int = 0
    corrupt_frames: int = 0
    lag_s: float = 0.0
    gaps: tuple[Gap, ...] = ()
    fps: float = 0.0
    reconnects: int = 0
    reconnecting: bool = False
    queue_depth: int = 0
    max_queue_depth: int = 0
    queue_size: int = 0
    elapsed_s: float = 0.0
    last_pts: float | None = None
    live: bool = False
    finished: bool = False
    audio_s: float = 0.0
    audio_chunks: int = 0
    audio_decode_errors: int = 0
