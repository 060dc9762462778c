"""A Starlette (FastAPI) websocket seen as a ``websockets`` connection, so the websocket API's own
handler (:meth:`WebSocketServer.serve_connection <app.serving.ws_server.WebSocketServer.serve_connection>`)
serves connections that arrive through the Ray Serve ingress.

What the handler uses: ``remote_address``, ``async for message in ws`` (text as ``str``, binary as
``bytes``; ends when the peer closes), ``await ws.send(str | bytes)`` (raises
``websockets.exceptions.ConnectionClosed`` once the peer is gone) and ``await ws.close(code, reason)``.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

logger = logging.getLogger(__name__)


class StarletteConnection:
    """Wraps an accepted ``starlette.websockets.WebSocket``.

    Args:
        websocket: the accepted websocket.
        max_size: largest incoming message in bytes; a bigger one closes the connection with 1009,
            as the websockets server does (the Serve proxy's own cap may be lower).
    """

    def __init__(self, websocket: Any, *, max_size: int) -> None:
        self._ws = websocket
        self.max_size = int(max_size)
        self._closed = False
        client = websocket.client
        self.remote_address = (client.host, client.port) if client is not None else None

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        from starlette.websockets import WebSocketDisconnect

        while not self._closed:
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError):  # RuntimeError: receive after the close
                self._closed = True
                return
            kind = message.get("type")
            if kind == "websocket.disconnect":
                self._closed = True
                return
            if kind != "websocket.receive":
                continue
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            if data is None:
                continue
            if len(data) > self.max_size:
                await self.close(1009, "message too big")
                return
            yield data

    async def send(self, data: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosedOK

        if self._closed:
            raise ConnectionClosedOK(None, None)
        try:
            if isinstance(data, str):
                await self._ws.send_text(data)
            else:
                await self._ws.send_bytes(bytes(data))
        except Exception as exc:  # noqa: BLE001 - any failed send means the peer is gone
            self._closed = True
            logger.debug("send failed: %s", exc)
            raise ConnectionClosedOK(None, None) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._ws.close(code=code, reason=reason[:120])
        except Exception as exc:  # noqa: BLE001 - closing an already closed socket
            logger.debug("close failed: %s", exc)
