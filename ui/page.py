"""The LiveSight Gradio page: live video (and its sound) in, a chat that cites the moments it used,
a live transcript, live stats.

With speech on (the manager's ``asr``), the browser microphone streams beside the webcam (on the
same clock), an uploaded video or a camera URL is heard as well as seen (the server reads its
sound track), and what is heard shows in the transcript box and in the evidence cards.

``build_page(manager)`` returns the ``gr.Blocks``; ``launch(manager, host, port)`` serves it and
``mount(app, manager, path)`` puts it on an existing FastAPI app. One manager session per browser
tab (or per ``gradio_client.Client``): created when the page loads (or on an API client's first
call), kept in a ``gr.State``, closed when the tab goes (``demo.unload``) or the State expires.

Public API endpoints (``gradio_client``), each acting on the caller's own session:

* ``/chat`` (message, history) -> (history, "", answer details): the page's chat; streams.
* ``/ask`` (question, max_new_tokens=0) -> (answer text so far, details): streams; the last
  value's details are the answer (``Answer.to_dict``) with evidence thumbnails as base64 JPEG.
* ``/play_video`` (file) -> status HTML: play a video file as a live stream (server side).
* ``/set_source`` (url) -> dict, ``/stop_source`` () -> dict: a camera URL the server pulls.
* ``/watch`` (rule) -> dict, ``/unwatch`` (rule_id) -> dict: watch rules.
* ``/settings`` (overrides) -> dict, ``/new_session`` (overrides) -> dict.
* ``/stats`` () -> dict: ``manager.stats`` plus the kept-ratio history, source progress, alerts
  and the ``transcript`` (``[{t_start, t_end, text}]``, the newest speech heard).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.engine.types import SessionError
from compression.droppers import DROP_MODES
from compression.kvcodec import KV_BITS
from streaming.errors import SourceError

from . import render
from .actions import NOTHING_WATCHED, SETTING_LABELS, PageActions, PageError
from .config import PageConfig, PageConfigError
from .style import PAGE_CSS, page_theme
from .tabs import TabRegistry

logger = logging.getLogger(__name__)

#: Runs in the browser when a source tab other than the webcam's is chosen: stops the webcam's stream
#: (its record button reads "Stop" while it streams), so frames from a camera nobody looks at do not
#: mix into the stream of the file or URL the user turned to.
STOP_WEBCAM_JS = """
() => {
  const button = document.querySelector('#ls-webcam button.capture-button');
  if (button && /stop/i.test(button.innerText || button.textContent || '')) button.click();
}
"""

#: The settings note under the settings form.
SETTINGS_NOTE = ("Token drop, KV bits and window are fixed once the session has input: a stream, a watch rule or "
                 "a question. Top-k can change at any time; “New session with these settings” starts over with "
                 "any of them.")


def model_notice(manager) -> str | None:
    """The notice shown at the top of the page: the manager's, or a warning about random weights."""
    notice = getattr(manager, "model_notice", None)
    if notice:
        return str(notice)
    spec = getattr(getattr(manager, "backend", None), "spec", None)
    if spec is not None and getattr(spec, "random_weights", False):
        return (f"The model {spec.name!r} has random weights (a test model): its answers are not meaningful. "
                "Evidence, timings and statistics are real.")
    return None


def _session_hash(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def build_page(manager, config: PageConfig | None = None):
    """Build the page for ``manager`` (an :class:`app.serving.manager.SessionManager`).

    Returns:
        ``gr.Blocks`` with its queue configured; serve it with :func:`launch_options` (theme and
        CSS go to ``launch`` in Gradio 6), or use :func:`launch` / :func:`mount`.
        ``blocks.livesight_tabs`` is its :class:`~ui.tabs.TabRegistry` (Gradio session -> session id).
    """
    config = config if config is not None else PageConfig()
    if not isinstance(config, PageConfig):
        raise PageConfigError(f"config must be a PageConfig; got {type(config).__name__}")
    source_fps = min(config.source_fps, manager.config.max_fps)
    if source_fps < config.source_fps:
        logger.info("page source_fps %.3g capped at the manager's max_fps %.3g", config.source_fps, source_fps)
    tabs = TabRegistry(manager, config.session_overrides)
    actions = PageActions(manager, tabs, source_fps=source_fps)
    spec = getattr(getattr(manager, "backend", None), "spec", None)
    model_name = getattr(spec, "name", None)
    notice = model_notice(manager)
    defaults = manager.config.default_session
    speech = bool(getattr(manager, "speech", False))

    with gr.Blocks(title=config.title, analytics_enabled=False) as demo:
        sid_state = gr.State(None, delete_callback=tabs.release_state)
        gr.HTML(render.notice_html(notice), visible=bool(notice), elem_id="ls-notice")
        header = gr.HTML(render.header_html(model_name, None), elem_id="ls-header")

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ video + stats
            with gr.Column(scale=5, min_width=360):
                with gr.Tabs():
                    with gr.Tab("Webcam", id="webcam") as webcam_tab:
                        cam = gr.Image(label="Webcam (streams to the server while recording)", sources=["webcam"],
                                       streaming=True, webcam_options=gr.WebcamOptions(mirror=False), height=300,
                                       elem_id="ls-webcam")
                        mic = None
                        if speech:
                            mic = gr.Audio(label="Microphone (streams with the webcam; what it hears is transcribed)",
                                           sources=["microphone"], streaming=True, type="numpy", elem_id="ls-mic")
                    with gr.Tab("Video file", id="file") as file_tab:
                        upload = gr.File(label="Video file, played as a live stream", file_types=["video"],
                                         type="filepath", height=120, elem_id="ls-upload")
                    with gr.Tab("Camera URL", id="url") as url_tab:
                        url_box = gr.Textbox(label="RTSP / HTTP camera URL", placeholder="rtsp://camera.local:8554/stream",
                                             max_lines=1, elem_id="ls-url")
                        connect_btn = gr.Button("Connect", variant="primary", size="sm")
                with gr.Row():
                    source_box = gr.HTML(render.progress_html(None), elem_id="ls-source")
                    stop_src_btn = gr.Button("Stop source", size="sm", scale=0, min_width=110)
                transcript_box = gr.HTML(render.transcript_html([], speech=speech), elem_id="ls-transcript")
                stats_box = gr.HTML(render.stats_html(None), elem_id="ls-stats")
                kept_plot = gr.LinePlot(render.kept_frame([]), x=render.KEPT_X, y=render.KEPT_Y, y_lim=[0, 1],
                                        title="Kept visual tokens per frame", height=220, x_axis_format=".1f",
                                        y_axis_format=".0%", elem_id="ls-kept-plot")
            # ------------------------------------------------------------------ chat + rules
            with gr.Column(scale=6, min_width=420):
                chatbot = gr.Chatbot(label="Ask about the stream", height=470, elem_id="ls-chat",
                                     placeholder="Start a source, then ask about anything it showed. "
                                                 "Answers cite the moments they used.",
                                     feedback_options=None, layout="bubble", buttons=["copy"])
                with gr.Row():
                    msg = gr.Textbox(show_label=False, placeholder="Ask: what happened before the cut? (questions "
                                     "sent while an answer streams wait their turn)", scale=6,
                                     max_lines=3, elem_id="ls-question")
                    send_btn = gr.Button("Ask", variant="primary", scale=1, min_width=80)
                    stop_btn = gr.Button("Stop", scale=0, min_width=70)
                    api_chat_btn = gr.Button("chat", visible=False)  # carries the /chat API endpoint
                with gr.Accordion("Watch rules and alerts", open=True):
                    with gr.Row():
                        rule_box = gr.Textbox(show_label=False, placeholder="Alert me when… (e.g. a person enters)",
                                              scale=5, max_lines=1, elem_id="ls-rule")
                        add_rule_btn = gr.Button("Add rule", scale=1, min_width=90)
                    watch_note = render.watch_note(spec, vision=defaults.vision)
                    gr.HTML(render.notice_html(watch_note), visible=bool(watch_note), elem_id="ls-watch-note")
                    rules_box = gr.HTML(render.rules_html([]), elem_id="ls-rules")
                    with gr.Row(equal_height=True, visible=False) as remove_row:
                        remove_dd = gr.Dropdown(choices=[], value=None, label="Rule to remove", scale=5,
                                                elem_id="ls-remove-rule")
                        remove_btn = gr.Button("Remove rule", size="sm", scale=1, min_width=90)
                    gr.Markdown("**Alerts**")
                    alerts_box = gr.HTML(render.alerts_html([]), elem_id="ls-alerts")
                with gr.Accordion("Session settings", open=False):
                    with gr.Row():
                        drop_dd = gr.Dropdown(list(DROP_MODES), value=defaults.drop, label="Token drop")
                        bits_dd = gr.Dropdown([str(b) for b in KV_BITS], value=str(defaults.kv_bits), label="KV bits in memory")
                    with gr.Row():
                        topk_sl = gr.Slider(0, 64, value=defaults.top_k, step=1, label="Chunks retrieved (top-k)")
                        window_nb = gr.Number(value=defaults.window_tokens, precision=0, minimum=16, label="Window (tokens)")
                    with gr.Row():
                        apply_btn = gr.Button("Apply", size="sm")
                        restart_btn = gr.Button("New session with these settings", size="sm")
                    settings_note = gr.Markdown(SETTINGS_NOTE, elem_id="ls-settings-note")
                with gr.Accordion("Last answer (details)", open=False):
                    details = gr.JSON(label="answer, evidence and usage", elem_id="ls-details")

        timer = gr.Timer(config.stats_every_s)

        # ------------------------------------------------------------------------ handlers
        def settings_values(sid: str):
            s = actions.settings(sid)
            return s["drop"], str(s["kv_bits"]), s["top_k"], s["window_tokens"]

        def on_load(sid, request: gr.Request):
            try:
                sid = actions.session(sid, _session_hash(request))
            except PageError as exc:
                return (None, render.header_html(model_name, None) + render.notice_html(str(exc)),
                        gr.skip(), gr.skip(), gr.skip(), gr.skip())
            return (sid, render.header_html(model_name, sid), *settings_values(sid))

        def on_unload(request: gr.Request):
            tabs.release_hash(_session_hash(request))

        def on_frame(image, sid, request: gr.Request):
            if image is None:
                return gr.skip()
            try:
                sid = actions.session(sid, _session_hash(request))
            except PageError as exc:
                logger.warning("webcam frame without a session: %s", exc)
                return sid
            tab = tabs.tab(sid)
            if tab.webcam_left:  # a frame sent before the browser stopped the webcam: not part of the stream
                return sid
            try:
                tabs.webcam_frame(tab, image)
            except (ValueError, SessionError) as exc:  # a bad or oversized frame fails alone
                message = f"webcam frame refused: {exc}"
                if tab.source_error != message:
                    logger.warning("session %s: %s", sid, message)
                tab.source_error = message
            else:
                if tab.source_error and tab.source_error.startswith("webcam frame refused"):
                    tab.source_error = None
            return sid

        def on_mic(piece, sid, request: gr.Request):
            if piece is None:
                return gr.skip()
            try:
                sid = actions.session(sid, _session_hash(request))
            except PageError as exc:
                logger.warning("microphone audio without a session: %s", exc)
                return sid
            tab = tabs.tab(sid)
            try:
                rate, samples = piece
                tabs.mic_audio(tab, int(rate), samples)
            except (TypeError, ValueError, SessionError, SourceError) as exc:  # a bad piece fails alone
                message = f"microphone audio refused: {exc}"
                if tab.source_error != message:
                    logger.warning("session %s: %s", sid, message)
                tab.source_error = message
            else:
                if tab.source_error and tab.source_error.startswith("microphone audio refused"):
                    tab.source_error = None
            return sid

        def transcript_view(sid: str | None) -> str:
            if sid is None:
                return render.transcript_html([], speech=speech)
            try:
                segments = manager.transcript(sid, render.TRANSCRIPT_LINES)
            except SessionError:
                segments = []
            return render.transcript_html(segments, speech=speech)

        def source_view(sid: str | None) -> str:
            tab = tabs.tab(sid)
            if sid is None or tab is None:
                return render.source_html(None)
            now = time.monotonic()
            webcam = None
            if tab.webcam_active(now):
                fps = tab.webcam_fps(now)
                webcam = f"streaming · {tab.frames_sent} frames sent" + (f" · {fps:.1f} fps" if fps else "")
            return render.source_html(actions.progress(sid), tab.source_label, error=tab.source_error, webcam=webcam)

        def webcam_shown(shown: bool, sid, session_hash) -> None:
            tab = tabs.tab(actions.existing(sid, session_hash))
            if tab is not None:
                tab.webcam_left = not shown

        def on_webcam_tab(sid, request: gr.Request):
            webcam_shown(True, sid, _session_hash(request))

        def on_other_tab(sid, request: gr.Request):
            webcam_shown(False, sid, _session_hash(request))

        def on_upload(path, sid, request: gr.Request):
            if not path:
                return sid, source_view(sid)
            try:
                status = actions.play_file(sid, _session_hash(request), path)
            except PageError as exc:
                return sid, render.source_html(None, error=str(exc))
            return status.sid, source_view(status.sid)

        def on_connect(url, sid, request: gr.Request):
            try:
                status = actions.connect_url(sid, _session_hash(request), url)
            except PageError as exc:
                return sid, render.source_html(None, error=str(exc))
            return status.sid, source_view(status.sid)

        def on_stop_source(sid, request: gr.Request):
            sid = actions.stop_source(sid, _session_hash(request))
            return sid, source_view(sid)

        def on_question(message, sid, request: gr.Request):
            """Enter / Ask: the question joins the tab's chat at once (queued when an answer is streaming)
            and the box is cleared; :func:`answer_questions` answers it. Never waits for the model."""
            question = (message or "").strip()
            if not question:
                return gr.skip(), gr.skip(), sid
            try:
                sid = actions.session(sid, _session_hash(request))
            except PageError as exc:
                gr.Warning(str(exc))
                return gr.skip(), gr.skip(), sid
            tab = tabs.tab(sid)
            waiting = tab.answering or bool(tab.pending)
            shown = tabs.enqueue_question(tab, question, render.esc(question),
                                          render.queued_message() if waiting else render.streaming_message(""))
            return shown, "", sid

        def answer_questions(sid, request: gr.Request):
            """Answer the tab's waiting questions in order, streaming each into its bot message. A second
            call while one is answering returns at once: the first answers the new question too."""
            sid = actions.existing(sid, _session_hash(request))
            tab = tabs.tab(sid)
            if tab is None or not tabs.start_answering(tab):
                return
            while (item := tabs.next_question(tab)) is not None:
                question, index = item
                if actions.nothing_watched(sid):
                    yield tabs.set_message(tab, index, render.notice_message(NOTHING_WATCHED)), gr.skip()
                    continue
                yield tabs.set_message(tab, index, render.streaming_message("")), gr.skip()
                try:
                    for part in actions.ask(sid, question):
                        if isinstance(part, str):
                            yield tabs.set_message(tab, index, render.streaming_message(part)), gr.skip()
                        else:
                            yield tabs.set_message(tab, index, render.answer_message(part)), part.to_dict()
                except Exception as exc:  # noqa: BLE001 - shown in the chat, never a crash of the page
                    if isinstance(exc, (PageError, SessionError)):
                        logger.info("session %s: question refused: %s", sid, exc)
                    else:
                        logger.exception("session %s: question failed", sid)
                    yield tabs.set_message(tab, index, render.error_message(render.problem_text(exc))), gr.skip()

        def on_stop_answer(sid, request: gr.Request):
            sid = actions.existing(sid, _session_hash(request))
            tab = tabs.tab(sid)
            if sid is None or tab is None:
                return gr.skip()
            dropped = tabs.drop_pending(tab, render.notice_message("Not asked: Stop was pressed."))
            try:
                manager.cancel(sid)
            except SessionError:  # closed meanwhile: nothing to cancel
                pass
            return tabs.chat(tab) if dropped else gr.skip()

        def watch_checks(sid) -> int | None:
            try:
                return (manager.stats(sid).get("watch") or {}).get("checks") if sid else None
            except SessionError:
                return None

        def rules_view(sid):
            rules = actions.rules(sid)
            return (render.rules_html(rules, checks=watch_checks(sid)),
                    gr.update(choices=render.rule_choices(rules), value=None), gr.update(visible=bool(rules)))

        def on_add_rule(text, sid, request: gr.Request):
            try:
                sid, _ = actions.add_watch(sid, _session_hash(request), text)
            except PageError as exc:
                gr.Warning(str(exc))
                return sid, gr.skip(), *rules_view(sid)
            return sid, "", *rules_view(sid)

        def on_remove_rule(rule_id, sid, request: gr.Request):
            sid, _ = actions.remove_watch(sid, _session_hash(request), rule_id)
            return sid, *rules_view(sid)

        def form_overrides(drop, bits, top_k, window) -> dict[str, Any]:
            out: dict[str, Any] = {"drop": drop}
            for name, value in (("kv_bits", bits), ("top_k", top_k), ("window_tokens", window)):
                try:
                    out[name] = int(float(value))
                except (TypeError, ValueError):
                    out[name] = value  # the manager names the field and its range
            return out

        def on_apply(drop, bits, top_k, window, sid, request: gr.Request):
            try:
                sid, cfg = actions.apply_settings(sid, _session_hash(request), form_overrides(drop, bits, top_k, window),
                                                  form=True)
            except PageError as exc:
                return sid, f"⚠ **Not applied:** {exc}"
            shown = ", ".join(f"{SETTING_LABELS[k]} = {cfg[k]}" for k in ("drop", "kv_bits", "top_k", "window_tokens"))
            return sid, f"✓ Applied: {shown}"

        def on_restart(drop, bits, top_k, window, sid, request: gr.Request):
            try:
                sid = actions.restart(sid, _session_hash(request), form_overrides(drop, bits, top_k, window), form=True)
            except PageError as exc:
                return (sid, gr.skip(), f"⚠ **No new session:** {exc}", *[gr.skip()] * 6)
            return (sid, render.header_html(model_name, sid), f"✓ New session `{sid}` started.", [], None,
                    *rules_view(sid), render.alerts_html([]))

        def on_tick(sid, request: gr.Request):
            sid = actions.existing(sid, _session_hash(request))
            tab = tabs.tab(sid)
            if sid is None or tab is None:
                return render.stats_html(None), gr.skip(), source_view(None), gr.skip(), gr.skip(), gr.skip()
            try:
                stats = actions.stats(sid)
                history = manager.kept_history(sid)
            except SessionError:  # the session closed between calls (UnknownSession)
                return render.stats_html(None), gr.skip(), source_view(None), gr.skip(), gr.skip(), gr.skip()
            key = (len(history), history[-1][0] if history else None)
            plot = gr.skip() if key == tab.plotted else render.kept_frame(history)
            tab.plotted = key
            for alert in tabs.new_alerts(tab)[-3:]:
                gr.Info(f"Alert at {render.format_span(alert.pts, alert.pts)}: {alert.rule}", duration=6)
            webcam_fps = stats.get("page", {}).get("webcam_fps")
            rules = actions.rules(sid)
            return (render.stats_html(stats, webcam_fps=webcam_fps), plot, source_view(sid),
                    render.alerts_html(tabs.alerts(tab)), transcript_view(sid),
                    render.rules_html(rules, checks=(stats.get("watch") or {}).get("checks")))

        def api_chat(message, history, request: gr.Request):
            """``/chat`` for ``gradio_client`` callers (message, history): yields (history with the answer so
            far, "", None), then (history with the answer and its evidence, "", answer details)."""
            history = list(history or [])
            question = (message or "").strip()
            if not question:
                yield history, "", None
                return
            history.append({"role": "user", "content": render.esc(question)})
            try:
                sid = actions.session(None, _session_hash(request))
            except PageError as exc:
                yield [*history, {"role": "assistant", "content": render.error_message(str(exc))}], "", None
                return
            if actions.nothing_watched(sid):
                yield [*history, {"role": "assistant", "content": render.notice_message(NOTHING_WATCHED)}], "", None
                return
            try:
                for part in actions.ask(sid, question):
                    if isinstance(part, str):
                        yield [*history, {"role": "assistant", "content": render.streaming_message(part)}], "", None
                    else:
                        yield [*history, {"role": "assistant", "content": render.answer_message(part)}], "", part.to_dict()
            except Exception as exc:  # noqa: BLE001 - answered in the chat, never a crash of the page
                if not isinstance(exc, (PageError, SessionError)):
                    logger.exception("session %s: question failed", sid)
                yield [*history, {"role": "assistant", "content": render.error_message(render.problem_text(exc))}], "", None


        # ------------------------------------------------------------------------ wiring
        private = dict(api_visibility="private")
        demo.load(on_load, [sid_state], [sid_state, header, drop_dd, bits_dd, topk_sl, window_nb], **private)
        demo.unload(on_unload)
        cam.stream(on_frame, [cam, sid_state], [sid_state], stream_every=config.stream_every_s, time_limit=None,
                   concurrency_limit=None, show_progress="hidden", **private)
        if mic is not None:
            mic.stream(on_mic, [mic, sid_state], [sid_state], stream_every=config.stream_every_s, time_limit=None,
                       concurrency_limit=None, show_progress="hidden", **private)
        # the source box says what is going on itself: Gradio's progress text stays out of it
        quiet = dict(show_progress="hidden")
        for other in (file_tab, url_tab):
            other.select(None, js=STOP_WEBCAM_JS, **private)
            other.select(on_other_tab, [sid_state], None, queue=False, **private)
        webcam_tab.select(on_webcam_tab, [sid_state], None, queue=False, **private)
        upload.upload(lambda: render.source_html(None, status="opening the video…"), None, source_box, queue=False,
                      **quiet, **private).then(on_upload, [upload, sid_state], [sid_state, source_box],
                                               api_name="play_video", concurrency_limit=None, **quiet)
        upload.clear(on_stop_source, [sid_state], [sid_state, source_box], **quiet, **private)
        gr.on([connect_btn.click, url_box.submit], lambda: render.source_html(None, status="connecting…"), None,
              source_box, queue=False, **quiet, **private).then(
            on_connect, [url_box, sid_state], [sid_state, source_box], concurrency_limit=None, **quiet, **private)
        stop_src_btn.click(on_stop_source, [sid_state], [sid_state, source_box], concurrency_limit=None, **quiet,
                           **private)
        gr.on([msg.submit, send_btn.click], on_question, [msg, sid_state], [chatbot, msg, sid_state], queue=False,
              trigger_mode="multiple", **quiet, **private).then(
            answer_questions, [sid_state], [chatbot, details], concurrency_limit=16, trigger_mode="multiple",
            **quiet, **private)
        stop_btn.click(on_stop_answer, [sid_state], chatbot, queue=False, **private)
        # /chat for API clients: the chat with the history they hand in (the page's own chat keeps its history)
        api_chat_btn.click(api_chat, [msg, chatbot], [chatbot, msg, details], api_name="chat", concurrency_limit=16,
                           **quiet)
        gr.on([add_rule_btn.click, rule_box.submit], on_add_rule, [rule_box, sid_state],
              [sid_state, rule_box, rules_box, remove_dd, remove_row], concurrency_limit=None, **private)
        remove_btn.click(on_remove_rule, [remove_dd, sid_state], [sid_state, rules_box, remove_dd, remove_row],
                         concurrency_limit=None, **private)
        apply_btn.click(on_apply, [drop_dd, bits_dd, topk_sl, window_nb, sid_state], [sid_state, settings_note],
                        concurrency_limit=None, **private)
        restart_btn.click(on_restart, [drop_dd, bits_dd, topk_sl, window_nb, sid_state],
                          [sid_state, header, settings_note, chatbot, details, rules_box, remove_dd, remove_row, alerts_box],
                          concurrency_limit=None, **private)
        timer.tick(on_tick, [sid_state], [stats_box, kept_plot, source_box, alerts_box, transcript_box, rules_box],
                   concurrency_limit=None, show_progress="hidden", **private)

        _api_endpoints(actions, tabs, manager)

    demo.queue(default_concurrency_limit=8)
    demo.livesight_tabs = tabs  # type: ignore[attr-defined]
    demo.livesight_actions = actions  # type: ignore[attr-defined]
    return demo


def _api_endpoints(actions: PageActions, tabs: TabRegistry, manager) -> None:
    """Endpoints for ``gradio_client`` callers; each acts on the caller's own session."""

    def fail(exc: Exception):
        return gr.Error(str(exc))

    def ask(question: str, max_new_tokens: int = 0, request: gr.Request = None) -> Iterator[tuple[str, dict]]:
        """Ask about the stream: yields (answer text so far, {"done": false}), then (answer, details)
        where details is the answer with its evidence (thumbnails as base64 JPEG) and usage."""
        try:
            sid = actions.session(None, _session_hash(request))
            if isinstance(question, str) and question.strip() and actions.nothing_watched(sid):
                raise PageError(NOTHING_WATCHED)
            limit = int(max_new_tokens) if max_new_tokens else None
            for item in actions.ask(sid, question, max_new_tokens=limit):
                if isinstance(item, str):
                    yield item, {"done": False, "session_id": sid}
                else:
                    yield item.text, {"done": True, "session_id": sid, **item.to_dict(with_thumbnails=True)}
        except PageError as exc:
            raise fail(exc) from exc

    def stats(request: gr.Request = None) -> dict:
        """This client's session statistics, kept-ratio history, source progress and recent alerts."""
        try:
            sid = actions.session(None, _session_hash(request))
        except PageError as exc:
            raise fail(exc) from exc
        out = actions.stats(sid)
        out["kept_history"] = [list(p) for p in manager.kept_history(sid)]
        out["source_progress"] = actions.progress(sid)
        tab = tabs.tab(sid)
        out["alerts"] = [a.to_dict() for a in tabs.alerts(tab)] if tab else []
        out["rules"] = [{"rule_id": r.rule_id, "text": r.text} for r in actions.rules(sid)]
        out["transcript"] = [{"t_start": seg.t_start, "t_end": seg.t_end, "text": seg.text}
                             for seg in manager.transcript(sid)]
        return out

    def watch(rule: str, request: gr.Request = None) -> dict:
        """Add a watch rule (a standing yes/no question checked when the scene changes)."""
        try:
            sid, added = actions.add_watch(None, _session_hash(request), rule)
        except PageError as exc:
            raise fail(exc) from exc
        return {"rule_id": added.rule_id, "text": added.text,
                "rules": [{"rule_id": r.rule_id, "text": r.text} for r in actions.rules(sid)]}

    def unwatch(rule_id: str, request: gr.Request = None) -> dict:
        """Remove a watch rule by id."""
        sid, removed = actions.remove_watch(None, _session_hash(request), rule_id)
        return {"removed": removed, "rules": [{"rule_id": r.rule_id, "text": r.text} for r in actions.rules(sid)]}

    def set_source(url: str, request: gr.Request = None) -> dict:
        """Make the server pull an RTSP/HTTP camera into this session (local files are refused)."""
        try:
            status = actions.connect_url(None, _session_hash(request), url)
        except PageError as exc:
            raise fail(exc) from exc
        return {"ok": status.ok, "message": status.message, "source": status.label, "info": status.info}

    def stop_source(request: gr.Request = None) -> dict:
        """Stop this session's server-pulled source."""
        sid = actions.stop_source(None, _session_hash(request))
        return {"stopped": sid is not None, "source_progress": actions.progress(sid) if sid else None}

    def settings(overrides: dict, request: gr.Request = None) -> dict:
        """Change this session's settings (SessionConfig field names); returns all settings."""
        try:
            _, cfg = actions.apply_settings(None, _session_hash(request), overrides)
        except PageError as exc:
            raise fail(exc) from exc
        return cfg

    def new_session(overrides: dict, request: gr.Request = None) -> dict:
        """Close this client's session and start a new one with these settings."""
        try:
            sid = actions.restart(None, _session_hash(request), overrides or None)
        except PageError as exc:
            raise fail(exc) from exc
        return {"session_id": sid, "settings": manager.session_config(sid).to_dict()}

    for fn in (ask, stats, watch, unwatch, set_source, stop_source, settings, new_session):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=16 if fn is ask else None)


def launch_options() -> dict[str, Any]:
    """Theme and CSS for ``Blocks.launch`` or ``gr.mount_gradio_app`` (Gradio 6 takes them there)."""
    return {"theme": page_theme(), "css": PAGE_CSS}


def launch(manager, host: str = "127.0.0.1", port: int = 7860, *, config: PageConfig | None = None,
           prevent_thread_lock: bool = False, **launch_kwargs):
    """Serve the page for ``manager`` on ``host:port``.

    Blocks until the server stops (Ctrl-C) unless ``prevent_thread_lock``: then it returns at once
    and the caller stops the page with ``demo.close()``. ``launch_kwargs`` go to
    ``Blocks.launch`` (e.g. ``auth=`` to protect a page served beyond loopback).

    Returns:
        The launched ``gr.Blocks`` (``.local_url`` is its address).
    """
    demo = build_page(manager, config)
    options = {"show_error": True, "footer_links": ["api", "settings"], "quiet": True, **launch_options(), **launch_kwargs}
    demo.launch(server_name=host, server_port=int(port), prevent_thread_lock=prevent_thread_lock, **options)
    return demo


def mount(app, manager, path: str = "/", *, config: PageConfig | None = None, **mount_kwargs):
    """Mount the page on an existing FastAPI ``app`` at ``path``; ``mount_kwargs`` go to
    ``gr.mount_gradio_app``. Returns the FastAPI app."""
    demo = build_page(manager, config)
    options = {"footer_links": ["api", "settings"], **launch_options(), **mount_kwargs}
    return gr.mount_gradio_app(app, demo, path=path, **options)
