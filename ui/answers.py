"""Stream an answer from the session manager into a Gradio generator handler.

``manager.ask`` calls ``on_delta`` on the model worker thread; the handler runs in a Gradio
worker thread. A queue carries the pieces across, and the handler yields the growing text.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import time
from collections.abc import Iterator

from app.engine.types import Answer, SessionError

logger = logging.getLogger(__name__)


def stream_answer(manager, sid: str, question: str, *, max_new_tokens: int | None = None,
                  poll_s: float = 0.05, min_interval_s: float = 0.05) -> Iterator[str | Answer]:
    """Ask ``question`` in session ``sid``: yield the answer text so far (a ``str``) as it grows,
    then the finished :class:`Answer`.

    Pieces that arrive close together are merged (at most one yield per ``min_interval_s``).
    Closing the generator early (the user pressed Stop, the tab went away) cancels the answer.

    Raises:
        app.serving.errors.ManagerError: the manager refused the question (empty, another answer running...).
        Exception: whatever the answer failed with (from its future).
    """
    pieces: queue.Queue[str] = queue.Queue()
    future = manager.ask(sid, question, on_delta=pieces.put, max_new_tokens=max_new_tokens)
    text = ""
    last_yield = 0.0
    finished = False
    try:
        while True:
            try:
                piece = pieces.get(timeout=poll_s)
            except queue.Empty:
                if future.done() and pieces.empty():
                    break
                continue
            text += piece
            while True:  # merge what is already waiting
                try:
                    text += pieces.get_nowait()
                except queue.Empty:
                    break
            now = time.monotonic()
            if now - last_yield >= min_interval_s:
                last_yield = now
                yield text
        try:
            answer = future.result()
        except concurrent.futures.CancelledError:
            raise RuntimeError("the answer was cancelled before it started") from None
        finished = True
        yield answer
    finally:
        if not finished and not future.done():
            try:
                manager.cancel(sid)
            except SessionError:  # the session was closed meanwhile
                logger.debug("cancel of session %s failed", sid, exc_info=True)
