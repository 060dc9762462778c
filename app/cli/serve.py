"""``livesight serve``: the Gradio page and the websocket API in one process.

Examples::

    livesight serve                                  # page on :7860, websocket API on :8765, default model
    livesight serve --model tiny-smolvlm --no-ui     # websocket API only, tiny random model
    livesight serve --host 0.0.0.0 --token "$TOKEN"  # beyond loopback a bearer token is required
    livesight serve --asr small                      # a bigger speech model (the hub or its cache)
    livesight serve --asr off                        # no speech recognition: audio is refused
"""

from __future__ import annotations

import argparse
import os

from app.cli.args import add_asr_argument, add_model_arguments, add_session_arguments
from app.engine.speech.names import OFFLINE_MODEL


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the page and the websocket API",
        description="Load the model once and serve live video sessions: the Gradio page and the websocket API. "
        "Speech in the stream (pushed audio, the microphone, the sound of pulled sources) is transcribed and "
        "remembered (--asr). When the model cannot be loaded (not cached, no network) the real SmolLM2 text "
        "weights are used instead with vision off (it hears and reads notes, it does not see), and the log and "
        "the page say so.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=7860, help="the page's port (default 7860)")
    p.add_argument("--ws-port", type=int, default=8765, help="the websocket API's port (default 8765; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("LIVESIGHT_TOKEN"),
                   help="bearer token for the websocket API (default: $LIVESIGHT_TOKEN); required beyond loopback")
    p.add_argument("--no-ui", action="store_true", help="serve the websocket API only")
    p.add_argument("--offline", action="store_true", help="do not try the network for model weights")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail when the model cannot be loaded instead of using smolvlm2-256m-smollm2 (vision off)")
    add_asr_argument(p, default=OFFLINE_MODEL, default_help=f"Default {OFFLINE_MODEL}; off refuses audio")
    g = p.add_argument_group("limits")
    g.add_argument("--max-sessions", type=int, default=16, help="open sessions at most (default 16)")
    g.add_argument("--session-ttl", type=float, default=600.0, metavar="SECONDS",
                   help="idle sessions close after this (default 600)")
    g.add_argument("--max-fps", type=float, default=4.0, help="frames per second accepted per session (default 4)")
    g.add_argument("--max-frame-side", type=int, default=1920, help="largest frame side in pixels (default 1920)")
    g.add_argument("--max-frame-mb", type=float, default=8.0, help="largest encoded frame in MiB (default 8)")
    g.add_argument("--session-ram-mb", type=float, default=256.0,
                   help="memory-bank RAM per session when the session sets none (default 256)")
    g.add_argument("--max-source-opens", type=int, default=4, metavar="N",
                   help="server-pulled sources (input_source.set) opened at once, in their own threads; more get "
                        "source_busy (default 4)")
    g.add_argument("--auth-max-failures", type=int, default=5, metavar="N",
                   help="wrong tokens one client address may send within --auth-block-s before its handshakes get "
                        "HTTP 429 for --auth-block-s (default 5)")
    g.add_argument("--auth-block-s", type=float, default=60.0, metavar="SECONDS",
                   help="the wrong-token window and block length (default 60)")
    g.add_argument("--allow-file-sources", action="store_true",
                   help="let websocket clients make the server read local files and cameras (input_source.set)")
    add_model_arguments(p)
    add_session_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    if args.offline:  # before anything imports huggingface_hub, which reads it once
        os.environ["HF_HUB_OFFLINE"] = "1"
    from app.cli.args import asr_config, session_overrides, weight_quantization
    from app.engine.backends.types import BackendError
    from app.engine.config import ConfigError, SessionConfig
    from app.engine.speech import ASRError
    from app.serving.limits import ManagerConfig
    from app.serving.process import FALLBACK_MODEL, ServeOptions, run_server
    from app.serving.ws_server import ListenError

    try:
        manager = ManagerConfig(
            asr=asr_config(args),
            max_sessions=args.max_sessions,
            session_ttl_s=args.session_ttl,
            max_fps=args.max_fps,
            max_frame_side=args.max_frame_side,
            max_frame_bytes=int(args.max_frame_mb * 2**20),
            default_session=SessionConfig(**session_overrides(args)),
            session_ram_budget_mb=args.session_ram_mb,
            allow_file_sources=args.allow_file_sources,
        )
        opts = ServeOptions(model=args.model, device=args.device, dtype=args.dtype,
                            quantization=weight_quantization(args), fallback_model=None if args.no_fallback else FALLBACK_MODEL,
                            offline=args.offline, host=args.host, port=args.port, ws_port=args.ws_port,
                            token=args.token or None, ui=not args.no_ui, manager=manager,
                            max_source_opens=args.max_source_opens, auth_max_failures=args.auth_max_failures,
                            auth_block_s=args.auth_block_s)
        return run_server(opts, page_launcher=launch_page)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BackendError, ASRError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:  # "cannot listen on HOST:PORT: address already in use"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 1


def launch_page(manager, host: str, port: int, token: str | None):
    """Start the Gradio page without blocking; returns its ``gr.Blocks`` (``close()`` stops it).

    Beyond loopback the page is protected with HTTP basic auth: user ``livesight``, password ``token``.
    """
    from app.serving.ws_server import is_loopback
    from ui.page import launch

    kwargs = {"prevent_thread_lock": True}
    if not is_loopback(host) and token:
        kwargs["auth"] = ("livesight", token)
    return launch(manager, host=host, port=port, **kwargs)
