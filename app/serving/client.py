"""A Python client for the LiveSight websocket API (asyncio, plus a small blocking wrapper).

Example::

    async with LiveSightClient("ws://127.0.0.1:8765", token=None) as client:
        await client.update(max_new_tokens=64, evidence_thumbnails=True)
        await client.send_frame(rgb, pts=0.0)            # (H, W, 3) uint8 RGB, or JPEG/PNG bytes
        await client.send_text("The van is red", pts=0.5)
        await client.send_audio(pcm16, rate=16000, pts=0.0)  # int16/float (N,) array or PCM16 LE bytes
        await client.commit_audio()                       # transcribe what was sent, before asking
        async for piece in client.ask("What colour is the van?"):
            if isinstance(piece, str):
                print(piece, end="")                      # streamed answer text
            else:
                print(piece["evidence"])                  # the final response object
        print(await client.stats())

Events the client is not waiting for (alerts, stats, source events, errors about frames) are
read with :meth:`LiveSightClient.events` or :meth:`LiveSightClient.next_event`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np

from app.serving.protocol import pack_audio, pack_frame, pcm16_bytes

logger = logging.getLogger(__name__)

_CLOSED = object()


class LiveSightError(Exception):
    """The server answered a request with an ``error`` event.

    Attributes:
        code: the error code (see :data:`app.serving.protocol.ERROR_CODES`).
        error: the whole error object.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = dict(error)
        self.code = error.get("code", "internal_error")
        super().__init__(f"{self.code}: {error.get('message', '')}")


class ConnectionLost(LiveSightError):
    """The connection closed while a request was waiting."""

    def __init__(self, reason: str) -> None:
        super().__init__({"code": "connection_closed", "message": reason})


def _close_text(frame) -> str:
    """The reason of a close frame (``websockets.frames.Close``, or None), or "connection closed"."""
    return (getattr(frame, "reason", None) or "connection closed") if frame is not None else "connection closed"


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB ``(H, W, 3)`` uint8 image."""
    import cv2

    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3); got {getattr(rgb, 'shape', None)} "
                         f"{getattr(rgb, 'dtype', None)}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _image_bytes(image: np.ndarray | bytes, quality: int) -> bytes:
    if isinstance(image, np.ndarray):
        return encode_jpeg(image, quality)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    raise TypeError(f"a frame is an RGB array or JPEG/PNG bytes; got {type(image).__name__}")


class LiveSightClient:
    """One websocket connection = one server session.

    Args:
        url: ``ws://host:port`` of ``livesight serve``.
        token: the server's bearer token (sent as ``Authorization: Bearer``), if it has one.
        open_timeout: seconds for the connection and the ``session.created`` event.
        request_timeout: default seconds to wait for a request's reply (None: forever).
        max_size: largest incoming message (bytes; thumbnails make answers bigger).
    """

    def __init__(self, url: str = "ws://127.0.0.1:8765", token: str | None = None, *, open_timeout: float = 10.0,
                 request_timeout: float | None = 60.0, max_size: int = 64 * 2**20) -> None:
        self.url = url
        self.token = token
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.max_size = max_size
        self.session: dict[str, Any] = {}
        self.model: dict[str, Any] = {}
        self.limits: dict[str, Any] = {}
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._waiters: dict[str, asyncio.Future] = {}
        self._ask_queue: asyncio.Queue | None = None
        self._ask_event_id: str | None = None
        self._events: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self._created: asyncio.Future | None = None
        self.closed_reason: str | None = None  # the server's close reason once closed ("connection closed" without one)
        self.close_code: int | None = None  # the close code once closed (None: closed without a close frame)

    # ---- connection ----------------------------------------------------------------------------
    async def connect(self) -> dict[str, Any]:
        """Open the connection; returns the ``session.created`` event.

        Raises:
            websockets.exceptions.InvalidStatus: the handshake was refused (401: missing/wrong token).
            LiveSightError: the server refused the session (``session_limit``).
            OSError / TimeoutError: the server cannot be reached.
        """
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                                 max_size=self.max_size, compression=None, proxy=None)
        loop = asyncio.get_running_loop()
        self._created = loop.create_future()
        self._reader = asyncio.create_task(self._read_loop())
        created = await asyncio.wait_for(self._created, self.open_timeout)
        return created

    @property
    def session_id(self) -> str | None:
        return self.session.get("id")

    async def close(self) -> None:
        """Close the connection (the server closes the session)."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()

    async def __aenter__(self) -> "LiveSightClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self._ws:
                try:
                    event = json.loads(message)
                except (TypeError, json.JSONDecodeError):
                    logger.warning("ignoring a non-JSON message from the server")
                    continue
                self._route(event)
        except ConnectionClosed:
            pass
        finally:
            code = getattr(self._ws, "close_code", None)
            reason = getattr(self._ws, "close_reason", None)
            self.close_code = code
            rcvd = self.closed_reason = reason or "connection closed"
            if self._created is not None and not self._created.done():
                self._created.set_exception(ConnectionLost(rcvd))
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost(rcvd))
            self._waiters.clear()
            if self._ask_queue is not None:
                self._ask_queue.put_nowait(_CLOSED)
            try:
                self._events.put_nowait(_CLOSED)
            except asyncio.QueueFull:
                pass

    def _route(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.created":
            self.session = dict(event.get("session", {}))
            self.model = dict(event.get("model", {}))
            self.limits = dict(event.get("limits", {}))
            if self._created is not None and not self._created.done():
                self._created.set_result(event)
            return
        if kind == "session.updated":
            self.session = dict(event.get("session", {}))
        if kind == "error":
            ref = (event.get("error") or {}).get("event_id")
            if ref is not None and ref == self._ask_event_id and self._ask_queue is not None:
                self._ask_queue.put_nowait(event)
                return
            fut = self._waiters.pop(ref, None) if ref is not None else None
            if fut is not None and not fut.done():
                fut.set_exception(LiveSightError(event.get("error", {})))
                return
            if self._created is not None and not self._created.done():  # e.g. session_limit
                self._created.set_exception(LiveSightError(event.get("error", {})))
                return
        elif kind and kind.startswith("response.") and self._ask_queue is not None:
            self._ask_queue.put_nowait(event)
            return
        else:
            ref = event.get("reply_to")
            fut = self._waiters.pop(ref, None) if ref is not None else None
            if fut is not None and not fut.done():
                fut.set_result(event)
                return
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning("client event queue full; dropping a %s event (read client.events())", kind)

    def _next_id(self) -> str:
        return f"c{next(self._ids)}"

    async def send_event(self, event: dict[str, Any]) -> str:
        """Send a raw event (an ``event_id`` is added when missing); returns its event_id."""
        event = dict(event)
        event.setdefault("event_id", self._next_id())
        await self._send(json.dumps(event))
        return event["event_id"]

    async def _send(self, message: str | bytes) -> None:
        """Send one message; a closed connection raises :class:`ConnectionLost` (never the websockets
        library's own exceptions)."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise ConnectionLost("not connected")
        try:
            await self._ws.send(message)
        except ConnectionClosed as exc:
            raise ConnectionLost(self.closed_reason or _close_text(exc.rcvd)) from None

    async def request(self, event: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send ``event`` and wait for the server's reply (the event whose ``reply_to`` is its id).

        Raises:
            LiveSightError: the server answered with an ``error`` event.
            asyncio.TimeoutError: no reply within ``timeout`` (default ``request_timeout``).
        """
        event = dict(event)
        event_id = event.setdefault("event_id", self._next_id())
        fut = asyncio.get_running_loop().create_future()
        self._waiters[event_id] = fut
        try:
            await self.send_event(event)
            return await asyncio.wait_for(fut, self.request_timeout if timeout is None else timeout)
        finally:
            self._waiters.pop(event_id, None)

    # ---- API -------------------------------------------------------------------------------------
    async def update(self, **settings: Any) -> dict[str, Any]:
        """``session.update``: change session settings (SessionConfig fields, ``evidence_thumbnails``);
        returns the new session settings."""
        reply = await self.request({"type": "session.update", "session": settings})
        return reply["session"]

    async def send_frame(self, image: np.ndarray | bytes, pts: float | None = None, *, quality: int = 85) -> None:
        """Send a frame as a binary message (RGB arrays are JPEG-encoded). Fire and forget: a refused
        frame comes back as an ``error`` event in :meth:`events`."""
        await self._send(pack_frame(_image_bytes(image, quality), pts))

    async def send_frame_base64(self, image: np.ndarray | bytes, pts: float | None = None, *, quality: int = 85) -> str:
        """Send a frame as ``input_video.append`` with a base64 image; returns the event_id."""
        event: dict[str, Any] = {"type": "input_video.append",
                                 "image": base64.b64encode(_image_bytes(image, quality)).decode("ascii")}
        if pts is not None:
            event["pts"] = pts
        return await self.send_event(event)

    async def send_audio(self, pcm: np.ndarray | bytes, rate: int, pts: float | None = None) -> None:
        """Send sound as a binary audio message (``LSA1``): PCM16 LE mono bytes, or an int16 / float
        (in [-1, 1]) ``(N,)`` array, at ``rate`` samples per second ([8000, 48000]); ``pts`` is the
        stream time of its first sample (None: the server continues the session's audio clock).
        Fire and forget: a refusal comes back as an ``error`` event in :meth:`events`."""
        await self._send(pack_audio(pcm, rate, pts))

    async def send_audio_base64(self, pcm: np.ndarray | bytes, rate: int, pts: float | None = None) -> str:
        """Send sound as ``input_audio.append`` (base64 PCM16); returns the event_id."""
        event: dict[str, Any] = {"type": "input_audio.append", "rate": rate,
                                 "audio": base64.b64encode(pcm16_bytes(pcm)).decode("ascii")}
        if pts is not None:
            event["pts"] = pts
        return await self.send_event(event)

    async def commit_audio(self, timeout: float | None = None) -> dict[str, Any]:
        """``input_audio.commit``: wait until the sound sent so far is transcribed and its speech queued
        (a question asked afterwards hears it); returns the session's audio stats."""
        reply = await self.request({"type": "input_audio.commit"}, timeout=timeout)
        return reply["audio"]

    async def send_text(self, text: str, pts: float | None = None) -> dict[str, Any]:
        """``input_text.append``; returns the ``input_text.committed`` event (tokens prefilled)."""
        event: dict[str, Any] = {"type": "input_text.append", "text": text}
        if pts is not None:
            event["pts"] = pts
        return await self.request(event)

    async def ask(self, question: str, *, max_output_tokens: int | None = None,
                  top_k: int | None = None) -> AsyncIterator[str | dict[str, Any]]:
        """Ask a question: yields answer text pieces (``str``) as they stream, then the final
        ``response`` object (dict: ``status``, ``output_text``, ``evidence``, ``usage``).

        Raises:
            LiveSightError: e.g. ``response_in_progress``, or the answer failed.
        """
        if self._ask_queue is not None:
            raise LiveSightError({"code": "response_in_progress", "message": "this client is already asking"})
        response: dict[str, Any] = {"input": question}
        if max_output_tokens is not None:
            response["max_output_tokens"] = max_output_tokens
        if top_k is not None:
            response["top_k"] = top_k
        queue: asyncio.Queue = asyncio.Queue()
        self._ask_queue = queue
        self._ask_event_id = self._next_id()
        try:
            await self.send_event({"type": "response.create", "event_id": self._ask_event_id, "response": response})
            while True:
                event = await queue.get()
                if event is _CLOSED:
                    raise ConnectionLost(self.closed_reason or "connection closed")
                kind = event.get("type")
                if kind == "error":
                    raise LiveSightError(event.get("error", {}))
                if kind == "response.output_text.delta":
                    yield event["delta"]
                elif kind == "response.done":
                    resp = event["response"]
                    if resp.get("status") == "failed":
                        raise LiveSightError(resp.get("error") or {"code": "internal_error", "message": "answer failed"})
                    yield resp
                    return
        finally:
            self._ask_queue = None
            self._ask_event_id = None

    async def answer(self, question: str, **kwargs: Any) -> dict[str, Any]:
        """Ask and wait: the final ``response`` object."""
        final: dict[str, Any] = {}
        async for piece in self.ask(question, **kwargs):
            if isinstance(piece, dict):
                final = piece
        return final

    async def cancel(self) -> None:
        """``response.cancel``: the running answer ends with status ``cancelled``."""
        await self.send_event({"type": "response.cancel"})

    async def watch(self, rule: str) -> dict[str, Any]:
        """``watch.create``; returns the rule ``{"rule_id", "text"}``."""
        reply = await self.request({"type": "watch.create", "rule": rule})
        return reply["rule"]

    async def unwatch(self, rule_id: str) -> None:
        await self.request({"type": "watch.delete", "rule_id": rule_id})

    async def stats(self) -> dict[str, Any]:
        """``session.stats``: the session's statistics."""
        reply = await self.request({"type": "session.stats"})
        return reply["stats"]

    async def set_source(self, url: str, *, fps: float | None = None, realtime: bool | None = None) -> dict[str, Any]:
        """``input_source.set``: the server pulls ``url``; returns the source's facts."""
        event: dict[str, Any] = {"type": "input_source.set", "url": url}
        if fps is not None:
            event["fps"] = fps
        if realtime is not None:
            event["realtime"] = realtime
        reply = await self.request(event)
        return reply["source"]

    async def stop_source(self) -> None:
        """``input_source.stop``; an ``input_source.ended`` event follows in :meth:`events`."""
        await self.send_event({"type": "input_source.stop"})

    async def next_event(self, types: str | tuple[str, ...] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """The next unsolicited event (of ``types``, skipping others).

        Raises:
            asyncio.TimeoutError: none within ``timeout``; ConnectionLost: the connection closed.
        """
        if isinstance(types, str):
            types = (types,)

        async def wait() -> dict[str, Any]:
            while True:
                event = await self._events.get()
                if event is _CLOSED:
                    self._events.put_nowait(_CLOSED)
                    raise ConnectionLost(self.closed_reason or "connection closed")
                if types is None or event.get("type") in types:
                    return event

        return await asyncio.wait_for(wait(), timeout)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Unsolicited events (alerts, stats, source events, errors) until the connection closes."""
        while True:
            try:
                yield await self.next_event()
            except ConnectionLost:
                return


class SyncLiveSightClient:
    """A blocking wrapper: the async client runs on a private event loop thread.

    Methods mirror :class:`LiveSightClient`; :meth:`ask` returns a plain iterator.
    """

    def __init__(self, url: str = "ws://127.0.0.1:8765", token: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="livesight-client", daemon=True)
        self._thread.start()
        self.client = LiveSightClient(url, token, **kwargs)
        try:
            self._call(self.client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def session(self) -> dict[str, Any]:
        return self.client.session

    def update(self, **settings: Any) -> dict[str, Any]:
        return self._call(self.client.update(**settings))

    def send_frame(self, image: np.ndarray | bytes, pts: float | None = None, **kw: Any) -> None:
        self._call(self.client.send_frame(image, pts, **kw))

    def send_text(self, text: str, pts: float | None = None) -> dict[str, Any]:
        return self._call(self.client.send_text(text, pts))

    def send_audio(self, pcm: np.ndarray | bytes, rate: int, pts: float | None = None) -> None:
        self._call(self.client.send_audio(pcm, rate, pts))

    def send_audio_base64(self, pcm: np.ndarray | bytes, rate: int, pts: float | None = None) -> str:
        return self._call(self.client.send_audio_base64(pcm, rate, pts))

    def commit_audio(self, timeout: float | None = None) -> dict[str, Any]:
        return self._call(self.client.commit_audio(timeout))

    def ask(self, question: str, **kwargs: Any) -> Iterator[str | dict[str, Any]]:
        agen = self.client.ask(question, **kwargs)
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    def answer(self, question: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(self.client.answer(question, **kwargs))

    def watch(self, rule: str) -> dict[str, Any]:
        return self._call(self.client.watch(rule))

    def stats(self) -> dict[str, Any]:
        return self._call(self.client.stats())

    def set_source(self, url: str, **kw: Any) -> dict[str, Any]:
        return self._call(self.client.set_source(url, **kw))

    def next_event(self, types=None, timeout: float | None = None) -> dict[str, Any]:
        return self._call(self.client.next_event(types, timeout))

    def close(self) -> None:
        try:
            self._call(self.client.close(), timeout=10)
        finally:
            self._stop_loop()

    def __enter__(self) -> "SyncLiveSightClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
