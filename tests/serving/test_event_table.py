"""The websocket server's client-event table and how exceptions become error events."""

from __future__ import annotations

import logging

import pytest

from app.engine.config import ConfigError
from app.engine.types import SessionError
from app.serving import protocol
from app.serving.errors import (
    FrameTooLarge,
    InvalidRequest,
    LiveUpdateRefused,
    ManagerError,
    ResponseInProgress,
    SessionLimit,
    UnknownSession,
)
from app.serving.protocol import ProtocolError
from app.serving.ws_server import (
    CLIENT_EVENT_TYPES,
    CLIENT_EVENTS,
    ClientEventSpec,
    ServerConfig,
    ServerConfigError,
    WebSocketServer,
    error_for,
)
from streaming.errors import SchemeNotAllowed, SourceNotFound

from .conftest import WS, run


def test_the_table_is_the_one_list_of_client_events():
    assert CLIENT_EVENT_TYPES == tuple(CLIENT_EVENTS)
    validators = {name for name in dir(protocol) if name.startswith("validate_")}
    used = {spec.validate.__name__ for spec in CLIENT_EVENTS.values()}
    assert used == validators  # every validator serves an event


@pytest.mark.parametrize("spec, needle", [
    (ClientEventSpec(protocol.validate_empty, None), "coroutine function"),
    (ClientEventSpec(None, WebSocketServer._on_session_stats), "no validator"),
    (ClientEventSpec(protocol.validate_empty, lambda server, conn, ev: None), "coroutine function"),
    ((protocol.validate_empty, WebSocketServer._on_session_stats), "ClientEventSpec"),
])
def test_a_table_with_a_missing_or_wrong_entry_is_refused_when_the_server_is_built(make_manager, spec, needle):
    manager = make_manager()
    events = {**CLIENT_EVENTS, "session.stats": spec}
    with pytest.raises(ServerConfigError, match=needle) as info:
        WebSocketServer(manager, ServerConfig(host="127.0.0.1", port=0), events=events)
    assert "session.stats" in str(info.value)
    with pytest.raises(ServerConfigError, match="empty"):
        WebSocketServer(manager, ServerConfig(host="127.0.0.1", port=0), events={})


@pytest.mark.parametrize("exc, code", [
    (ConfigError("top_k must be an integer"), "invalid_config"),
    (LiveUpdateRefused("drop cannot change"), "invalid_config"),
    (SessionError("a question needs non-empty text"), "invalid_event"),
    (InvalidRequest("fps must be a number"), "invalid_event"),
    (UnknownSession("no open session"), "invalid_event"),
    (ManagerError("shut down"), "invalid_event"),
    (FrameTooLarge("frame of 400x200"), "frame_too_large"),
    (ResponseInProgress("still answering"), "response_in_progress"),
    (SessionLimit("max_sessions"), "session_limit"),
])
def test_errors_map_to_their_code_attribute(exc, code):
    err = error_for(exc, "e1")["error"]
    assert err == {"code": code, "message": str(exc), "event_id": "e1"}


def test_source_errors_carry_their_extra_fields_and_protocol_errors_their_own():
    err = error_for(SchemeNotAllowed("file is not allowed", "/etc/x", scheme="file", allowed=("http", "rtsp")), "e2")
    assert err["error"] == {"code": "scheme_not_allowed", "message": "file is not allowed", "event_id": "e2",
                            "scheme": "file", "allowed": ["http", "rtsp"]}
    err = error_for(SourceNotFound("no such file", "x.mp4"), None)["error"]
    assert err["code"] == "source_error" and err["source_error"] == "SourceNotFound"
    err = error_for(ProtocolError("invalid_event", "bad 'text'", "own", param="text"), "other")["error"]
    assert err == {"code": "invalid_event", "message": "bad 'text'", "event_id": "own", "param": "text"}
    assert error_for(ProtocolError("bad_image", "no image"), "e3")["error"]["event_id"] == "e3"


@pytest.mark.parametrize("exc", [ValueError("index out of range"), TypeError("unsupported operand"),
                                 KeyError("missing"), RuntimeError("boom")])
def test_unexpected_exceptions_are_internal_errors_logged_with_their_traceback(exc, caplog):
    with caplog.at_level(logging.ERROR, logger="app.serving.ws_server"):
        err = error_for(exc, "e4")["error"]
    assert err["code"] == "internal_error" and type(exc).__name__ in err["message"] and err["event_id"] == "e4"
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)


@pytest.mark.network
def test_a_handler_hitting_an_unexpected_value_error_reports_internal_error_and_the_connection_stays_usable(
        make_manager, caplog):
    async def broken(server, conn, ev):
        raise ValueError("a bug in the handler")

    events = {**CLIENT_EVENTS, "session.stats": ClientEventSpec(protocol.validate_empty, broken)}
    server = WebSocketServer(make_manager(), ServerConfig(host="127.0.0.1", port=0), events=events).start()

    async def main():
        ws = await WS.open(server.url)
        eid = await ws.send({"type": "session.stats"})
        err = await ws.error(eid)
        assert err["code"] == "internal_error" and "ValueError: a bug in the handler" in err["message"]
        eid = await ws.send({"type": "session.update", "session": {"top_k": 3}})
        updated = await ws.expect("session.updated")
        assert updated["reply_to"] == eid and updated["session"]["top_k"] == 3
        await ws.close()

    try:
        with caplog.at_level(logging.ERROR, logger="app.serving.ws_server"):
            run(main())
    finally:
        server.stop()
    assert any("internal error" in r.getMessage() and r.exc_info for r in caplog.records)
