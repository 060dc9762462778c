"""Process wiring of ``livesight serve``: load the model (with a fallback), start the session
manager, the websocket API and (through a launcher the caller hands in) the page, and shut
everything down cleanly.

Serving sits below the page in the layers, so it never imports ``ui``: the CLI passes a
:data:`PageLauncher` that starts the page on the manager.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, TextIO

from app.engine.config import ConfigError
from app.engine.hub import hub_reachable
from app.serving.manager import ManagerConfig, SessionManager
from app.serving.ws_server import ServerConfig, WebSocketServer, check_listen, is_loopback

logger = logging.getLogger(__name__)

#: Loaded when the asked-for model cannot be had: the real SmolLM2 text weights (the offline extra) in
#: the SmolVLM2-256M shape, whose vision tower is random, so sessions run with vision off.
FALLBACK_MODEL = "smolvlm2-256m-smollm2"
#: Loaded when the fallback cannot be had either (the offline extra is not installed): random weights.
LAST_RESORT_MODEL = "tiny-smolvlm"
#: How to get a model that sees, for the notices.
GET_THE_MODEL = "to get the real model, run once with a network or pass --model DIR"


class Page(Protocol):
    """A running page: ``close()`` stops it."""

    def close(self) -> None: ...


#: ``(manager, host, port, token) -> Page``: starts the page without blocking.
PageLauncher = Callable[[SessionManager, str, int, "str | None"], Page]


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``livesight serve`` needs.

    Attributes:
        model, device, dtype, quantization: what :func:`app.engine.backends.registry.load_backend` loads.
        fallback_model: loaded when ``model`` is not available (None: fail instead).
        offline: never try the network for weights (sets ``HF_HUB_OFFLINE=1`` before loading).
        host: interface of the page and the websocket API. Beyond loopback the API needs ``token``.
        port: the page's port; ws_port: the websocket API's port (0 = any free port). [0, 65535]
        token: the websocket API's bearer token (None: none; loopback only).
        ui: serve the Gradio page too.
        max_source_opens, auth_max_failures, auth_block_s: the websocket API's source-opening pool and
            wrong-token limit (see :class:`~app.serving.ws_server.ServerConfig`).
        connection_limits: more :class:`~app.serving.ws_server.ServerConfig` limits per connection, by
            field name (``send_queue_bytes``, ``send_timeout_s``, ``max_items``, ``max_messages_per_s``);
            validated there.
        manager: the session manager's limits and session defaults, and speech (``manager.asr``; the
            speech model is loaded at start-up). With a model that cannot see (``spec.random_vision``, as the
            fallback's) the default session's ``vision`` is turned off.
    """

    model: str
    device: str = "cpu"
    dtype: str = "float32"
    quantization: Any = None
    fallback_model: str | None = FALLBACK_MODEL
    offline: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    ws_port: int = 8765
    token: str | None = None
    ui: bool = True
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    max_source_opens: int = 4
    auth_max_failures: int = 5
    auth_block_s: float = 60.0
    connection_limits: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("port", "ws_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be an integer in [0, 65535]; got {value!r}")
        if self.ui and self.port == self.ws_port and self.port != 0:
            raise ConfigError(f"port and ws_port must differ (both {self.port})")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a non-empty name, directory or hub id")


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a hub id (not a builtin, not a local directory): loading it may need the network."""
    from app.engine.backends.registry import builtin_models

    return model not in builtin_models() and not os.path.isdir(model) and "/" in model


class LoadedModel(NamedTuple):
    """What :func:`load_backend_with_fallback` loaded.

    Attributes:
        backend: the loaded :class:`~app.engine.backends.base.VideoLLM`.
        notice: one sentence for users when the model is not the one asked for or cannot see or answer
            meaningfully (shown by the page, the serve output and the clients), else None.
        vision: False when the model's vision tower is random (``spec.random_vision``): sessions should
            run with ``SessionConfig(vision=False)`` (frames are stamped and cited, not encoded).
    """

    backend: Any
    notice: str | None
    vision: bool


def _reason(exc: BaseException) -> str:
    """The first line of ``exc``'s message without its final full stop (it goes inside a sentence)."""
    return (str(exc).splitlines()[0].rstrip(" .") if str(exc).strip() else "") or type(exc).__name__


def _blind_notice(prefix: str, speech: bool) -> str:
    hears = "it hears the stream's speech and reads notes" if speech else "it reads notes (speech is off)"
    return f"{prefix}: {hears}, but it does not see the video (vision is off); {GET_THE_MODEL}."


def load_backend_with_fallback(model: str, *, device: str = "cpu", dtype: str = "float32", quantization=None,
                               fallback: str | None = FALLBACK_MODEL, speech: bool = True) -> LoadedModel:
    """Load ``model``; when it cannot be had (not cached and no network) load ``fallback`` instead,
    and when that cannot be had either (the offline extra is missing), :data:`LAST_RESORT_MODEL`.

    Args:
        fallback: the model to load instead (None: fail).
        speech: whether speech recognition is on (only the notice's wording depends on it).

    Returns:
        A :class:`LoadedModel` ``(backend, notice, vision)``.

    Raises:
        BackendError: ``model`` failed for another reason, or every fallback failed too.
    """
    from app.engine.backends.registry import load_backend
    from app.engine.backends.types import ModelNotAvailable

    try:
        backend = load_backend(model, device=device, dtype=dtype, quantization=quantization)
    except (ModelNotAvailable, OSError) as exc:
        if fallback is None or fallback == model:
            raise
        # the notice is for users (one sentence and how to get the model); the cause goes to the log
        logger.warning("loading %s failed: %s", model, _reason(exc))
        try:
            backend = load_backend(fallback, device=device, dtype="float32")
        except (ModelNotAvailable, OSError) as fallback_exc:
            if fallback == LAST_RESORT_MODEL:
                raise
            logger.warning("loading the fallback %s failed: %s", fallback, _reason(fallback_exc))
            notice = (f"The model {model} could not be loaded, nor could the offline fallback {fallback}, "
                      f"so LiveSight runs {LAST_RESORT_MODEL}, a tiny model with random "
                      f"weights whose answers are not meaningful; {GET_THE_MODEL}.")
            logger.warning("%s", notice)
            return LoadedModel(load_backend(LAST_RESORT_MODEL, device=device, dtype="float32"), notice, True)
        blind = backend.spec.random_vision
        if blind:
            notice = _blind_notice(f"The model {model} could not be loaded, so LiveSight runs {fallback}, "
                                   "the real SmolLM2 text weights", speech)
        else:
            notice = (f"The model {model} could not be loaded, so LiveSight runs {fallback}"
                      + (", a model with random weights whose answers are not meaningful." if backend.spec.random_weights
                         else " instead."))
        logger.warning("%s", notice)
        return LoadedModel(backend, notice, not blind)
    if backend.spec.random_vision:
        notice = _blind_notice(f"{backend.spec.name} has the real SmolLM2 text weights and a random vision tower", speech)
        logger.warning("%s", notice)
        return LoadedModel(backend, notice, False)
    if backend.spec.random_weights:
        notice = f"{backend.spec.name} has random weights: its answers are not meaningful."
        logger.warning("%s", notice)
        return LoadedModel(backend, notice, True)
    return LoadedModel(backend, None, True)


def load_speech_model(asr) -> None:
    """Load the speech model of ``asr`` once (it is shared by every session's transcriber).

    Raises:
        app.engine.speech.ASRError: the model cannot be had; the message names it and what to do.
    """
    from app.engine.speech.models import load_model

    load_model(asr)


def load_text_embedder(session) -> None:
    """Load the sentence embedder of text retrieval (``session.embedder``) now, when ``session`` has
    ``text_retrieval`` on: otherwise its model would load inside the first text event whose chunk
    leaves a window, on the model worker every session shares (seconds in which nobody is served).
    A failure is logged; retrieval then runs without the text path, as it would have anyway."""
    if not getattr(session, "text_retrieval", False):
        return
    from app.engine.text_embed import EmbedderError, load_embedder

    try:
        load_embedder(session.embedder).embed(["warm up"])
    except EmbedderError as exc:
        logger.warning("text retrieval will be off: %s", exc)


def _interrupt(stop: threading.Event):
    """A SIGINT/SIGTERM handler: set ``stop`` and interrupt the main thread (also a page's blocking loop).

    Installed explicitly because a server started in the background by a non-interactive shell
    inherits SIGINT as ignored."""

    def handler(signum, frame) -> None:
        if stop.is_set():  # a second Ctrl-C while shutting down: the shutdown is already under way
            return
        stop.set()
        raise KeyboardInterrupt

    return handler


def run_server(opts: ServeOptions, *, page_launcher: PageLauncher | None = None, out: TextIO = sys.stdout,
               stop: threading.Event | None = None) -> int:
    """Serve until Ctrl-C, SIGTERM or ``stop`` is set; returns an exit status.

    ``page_launcher`` starts the page when ``opts.ui`` is set (required then).

    Prints where the API (and page) listen on ``out``. Everything shuts down cleanly on the way out.
    """
    if opts.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    elif is_hub_id(opts.model) and not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable():
        # Without a network the hub client keeps retrying for a long while before giving up; cached weights
        # still load offline.
        logger.warning("the model hub cannot be reached: loading %s from the local cache only", opts.model)
        os.environ["HF_HUB_OFFLINE"] = "1"
    if opts.ui and page_launcher is None:
        raise ConfigError("ui is on but no page launcher was given")
    # Check the server settings before the (slow) model load.
    server_config = ServerConfig(host=opts.host, port=opts.ws_port, token=opts.token,
                                 max_source_opens=opts.max_source_opens, auth_max_failures=opts.auth_max_failures,
                                 auth_block_s=opts.auth_block_s, **opts.connection_limits)
    check_listen(opts.host, opts.ws_port)  # a port in use fails now, not after the model load
    manager_config = opts.manager
    if manager_config.asr is not None:
        load_speech_model(manager_config.asr)  # fail now, not on the first audio
    backend, notice, vision = load_backend_with_fallback(opts.model, device=opts.device, dtype=opts.dtype,
                                                         quantization=opts.quantization, fallback=opts.fallback_model,
                                                         speech=manager_config.asr is not None)
    if not vision and manager_config.default_session.vision:
        manager_config = manager_config.updated(default_session=manager_config.default_session.updated(vision=False))
    load_text_embedder(manager_config.default_session)
    stop = stop or threading.Event()
    manager = SessionManager(backend, manager_config, model_notice=notice)
    server = WebSocketServer(manager, server_config)
    previous = None
    page = None
    try:
        server.start()
        out.write(f"model: {backend.spec.name}" + (f"  ({notice})" if notice else "") + "\n")
        asr = manager_config.asr
        out.write(f"speech: {asr.model}\n" if asr is not None else "speech: off\n")
        out.write(f"websocket API: {server.url}" + ("  (bearer token required)" if opts.token else "") + "\n")
        out.flush()
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, _interrupt(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
        if opts.ui:
            page = page_launcher(manager, opts.host, opts.port, opts.token)
            protected = bool(opts.token) and not is_loopback(opts.host)
            out.write(f"page: http://{opts.host}:{opts.port}"
                      + ("  (user livesight, password: the token)" if protected else "") + "\n")
            out.flush()
        out.write("ready (Ctrl-C stops)\n")
        out.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        logger.info("shutting down")
        if page is not None:
            try:
                page.close()
            except Exception:  # noqa: BLE001 - shutting down regardless
                logger.exception("closing the page failed")
        server.stop()
        manager.shutdown()
        backend.close()
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)
        out.write("stopped\n")
        out.flush()
    return 0
