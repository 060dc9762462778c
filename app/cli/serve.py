"""``livesight serve``: the Gradio page and the websocket API in one process.

Examples::

    livesight serve                                  # page on :7860, websocket API on :8765, default model
    livesight serve --model tiny-smolvlm --no-ui     # websocket API only, tiny random model
    livesight serve --host 0.0.0.0 --token "$TOKEN"  # beyond loopback a bearer token is required
    livesight serve --asr small                      # a bigger speech model (the hub or its cache)
    livesight serve --asr off                        # no speech recognition: audio is refused
    livesight serve --ray --replicas 2 --memory-root /srv/livesight   # Ray Serve: 2 engines (docs/cluster.md)
    LIVESIGHT_TOKEN=... livesight serve --host 0.0.0.0    # or --token-file PATH: keep it out of the process list
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
                   help="bearer token for the websocket API (default: $LIVESIGHT_TOKEN); required beyond loopback. "
                        "A token on the command line is visible in the process list: prefer $LIVESIGHT_TOKEN or "
                        "--token-file")
    p.add_argument("--token-file", metavar="PATH",
                   help="read the bearer token from this file (its first line; keep it readable by you only)")
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
    g.add_argument("--max-frame-pixels", type=int, default=3840 * 2160, metavar="N",
                   help="largest frame in pixels (width x height); a pushed image's header is checked before "
                        "decoding, a pulled video's when it opens (default 3840x2160 = 8294400)")
    g.add_argument("--source-hosts", default=None, metavar="HOST,NET,...",
                   help="the only hosts server-pulled URLs may reach: names, *.domain, addresses, networks "
                        "(default: any host except link-local networks and cloud metadata addresses)")
    g.add_argument("--source-stall-s", type=float, default=5.0, metavar="SECONDS",
                   help="a pulled source without a frame this long sends input_source.stalled (default 5)")
    g.add_argument("--send-queue-mb", type=float, default=16.0, metavar="MB",
                   help="outgoing events held for one slow client before it is disconnected (default 16 MiB)")
    g.add_argument("--send-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a client that takes no data for this long is disconnected (default 30)")
    g.add_argument("--max-items", type=int, default=64, metavar="N",
                   help="conversation items one session may hold before response.create (default 64)")
    g.add_argument("--max-messages-per-s", type=float, default=200.0, metavar="N",
                   help="messages read from one connection per second (default 200)")
    g.add_argument("--max-pending-texts", type=int, default=16, metavar="N",
                   help="text events one session may have waiting for the model; more are refused with "
                        "rate_limited and not kept (default 16)")
    g.add_argument("--prefill-piece-tokens", type=int, default=64, metavar="N",
                   help="long text and speech events are prefilled in pieces of N tokens, other sessions' work "
                        "running between them (fairness; default 64; 0 = in one piece)")
    g.add_argument("--save-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between saves of a changing session that persists (memory_dir + persist, or every "
                        "session on a cluster's memory root): the most a crash loses besides the window (default 10)")
    g.add_argument("--memory-budget-gb", type=float, default=None, metavar="GB",
                   help="disk for all sessions' memories together: each session gets at most GB / --max-sessions "
                        "(its oldest memory is consolidated, then deleted; default: only per-session budgets)")
    c = p.add_argument_group("cluster (Ray Serve; pip install livesight[ray], docs/cluster.md)")
    c.add_argument("--ray", action="store_true",
                   help="serve the websocket API and the page (at /page on --ws-port; --port is not used) through Ray "
                        "Serve: --replicas engines (each a model and its sessions), each session pinned to one, "
                        "memories on --memory-root")
    c.add_argument("--replicas", type=int, default=1, metavar="N", help="engines to deploy (default 1)")
    c.add_argument("--ray-address", metavar="auto|ADDR", default=None,
                   help="join an existing Ray cluster (auto, HOST:PORT or ray://HOST:PORT; default: start a local Ray "
                        "bound to 127.0.0.1)")
    c.add_argument("--memory-root", metavar="DIR|URL", default=None,
                   help="where sessions' memories live, reachable by every replica: a shared directory (NFS) or an "
                        "fsspec URL such as s3://bucket/prefix (with s3fs) (default: ~/.cache/livesight/cluster, one "
                        "machine only)")
    c.add_argument("--replica-cpus", type=float, default=1.0, metavar="N",
                   help="Ray CPUs (and torch threads) per replica (default 1)")
    c.add_argument("--session-header", default="x-session-id", metavar="NAME",
                   help="header naming a session, which Ray's router keys on (default x-session-id; "
                        "sec-websocket-protocol lets browsers key by subprotocol)")
    add_model_arguments(p)
    add_session_arguments(p)
    p.set_defaults(func=run)


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``'s first line, else ``--token`` / ``$LIVESIGHT_TOKEN``.

    Raises:
        ValueError: both given, or the file is unreadable or empty (the message names it).
    """
    path = getattr(args, "token_file", None)
    if path is None:
        return args.token or None
    if args.token and args.token != os.environ.get("LIVESIGHT_TOKEN"):
        raise ValueError("give the token once: --token or --token-file, not both")
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.readline().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--token-file {path} is not a text file") from None
    if not token:
        raise ValueError(f"--token-file {path} is empty: its first line must hold the token")
    return token


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
        token = read_token(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
            max_frame_pixels=args.max_frame_pixels,
            source_hosts=source_host_policy(args.source_hosts),
            source_stall_s=args.source_stall_s,
            memory_budget_gb=args.memory_budget_gb,
            save_interval_s=args.save_interval,
            max_pending_texts=args.max_pending_texts,
            prefill_piece_tokens=args.prefill_piece_tokens or None,
        )
        opts = ServeOptions(model=args.model, device=args.device, dtype=args.dtype,
                            quantization=weight_quantization(args), fallback_model=None if args.no_fallback else FALLBACK_MODEL,
                            offline=args.offline, host=args.host, port=args.port, ws_port=args.ws_port,
                            token=token, ui=not args.no_ui, manager=manager,
                            max_source_opens=args.max_source_opens, auth_max_failures=args.auth_max_failures,
                            auth_block_s=args.auth_block_s,
                            connection_limits=dict(send_queue_bytes=int(args.send_queue_mb * 2**20),
                                                   send_timeout_s=args.send_timeout, max_items=args.max_items,
                                                   max_messages_per_s=args.max_messages_per_s))
        if args.ray:
            return run_ray(args, opts)
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


def source_host_policy(text: str | None):
    """The :class:`streaming.hosts.HostPolicy` of ``--source-hosts`` (None: the default policy).

    Raises:
        ConfigError: an entry that is not a host name, address or network (naming it).
    """
    from app.engine.config import ConfigError
    from streaming.hosts import HostPolicy, parse_hosts

    try:
        return HostPolicy(allow=parse_hosts(text))
    except ValueError as exc:
        raise ConfigError(f"--source-hosts: {exc}") from None


def run_ray(args: argparse.Namespace, opts) -> int:
    """``livesight serve --ray``: deploy the websocket API on Ray Serve (app/serving/cluster)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads its loopback setting on import
        print("error: --ray needs Ray Serve: pip install 'livesight[ray]' (ray[serve]==2.60.0)", file=sys.stderr)
        return 2
    from app.serving.cluster.config import ClusterConfig
    from app.serving.cluster.deployment import run_cluster
    from app.serving.cluster.errors import ClusterError
    from app.serving.cluster.storage import MemoryRoot
    from app.serving.ws_server import ServerConfig, check_listen

    root = args.memory_root or os.path.join(os.path.expanduser("~"), ".cache", "livesight", "cluster")
    cluster = ClusterConfig(memory_root=root, replicas=args.replicas, ray_address=args.ray_address,
                            replica_cpus=args.replica_cpus,
                            session_header=args.session_header)
    ServerConfig(host=opts.host, port=opts.ws_port, token=opts.token)  # beyond loopback a token is required
    check_listen(opts.host, opts.ws_port)
    try:
        MemoryRoot(root)  # a root that cannot be reached fails now, not in every replica
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.memory_root is None:
        print(f"note: memories are kept in {root} (this machine only; pass --memory-root for a cluster)",
              file=sys.stderr)
    try:
        from ui.page import mount

        return run_cluster(cluster, opts, page_mount=mount)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
