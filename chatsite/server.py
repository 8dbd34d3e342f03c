"""Run daphne so that the websocket size limit means what the contract says.

``python -m chatsite.server`` takes daphne's command-line arguments
unchanged. Two differences, both in how autobahn (under daphne) applies
``--websocket-max-message-size``:

- A client frame over the limit, or with invalid UTF-8, drops the TCP
  connection (``failByDrop``), so the client sees 1006. The contract wants the
  closing handshake with 1009 and 1007, which ``failByDrop=False`` gives.
- The limit also applies to what the server sends, and a bigger frame raises
  in the consumer and closes the socket. The limit is for clients; the
  server's own frames (a page of 50 long messages, the presence list of a big
  room) are larger, and go out whole.

Two additions:

- A bound on what is queued for a client that stops reading. Twisted keeps
  every byte written to a socket whose peer does not read, without limit;
  past ``CHAT_SEND_BUFFER_LIMIT`` the server drops that connection
  (docs/architecture.md, "A client that stops reading").
- A frame for a TCP socket with nothing queued is written to it at once,
  instead of being queued until the reactor reports the socket writable
  (docs/performance.md: that round trip was a quarter of the server's time
  in a busy room of 1,000).
"""

import logging
from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from twisted.internet import tcp

logger = logging.getLogger("chat.server")


def queued_bytes(transport: object) -> int:
    """Return the bytes a twisted transport holds that the kernel has not taken yet.

    ``twisted.internet.abstract.FileDescriptor`` (TCP and Unix sockets) keeps
    ``dataBuffer`` (sent up to ``offset``) plus the writes not yet joined into
    it (``_tempDataLen``). A protocol wrapper (TLS encrypts and writes on at
    once) is looked through to the transport under it. 0 for a transport of
    another kind: no bound rather than a wrong one.
    """
    if isinstance(transport, tcp.Connection):  # the usual case: read directly, once per frame
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    for _ in range(4):  # a wrapper or two, never a loop
        if hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataLen"):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[attr-defined]
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return 0


class ChatWebSocketProtocol(WebSocketProtocol):
    """daphne's websocket protocol: the size limit on received messages only,
    and a bound on what waits for a client that does not read."""

    # The size of the last frame written while the queue was under the
    # limit: that frame goes out whole (a 500-message resume can be several
    # MiB), and the limit counts from its end. Without this, a slow client
    # catching up would be dropped by the next live frame, on every reconnect.
    frame_allowance = 0
    overflowed = False

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:  # noqa: N802
        """Write a frame straight to the socket when nothing is queued before it.

        Twisted's ``transport.write`` queues the bytes and has the reactor
        watch the socket for writability, then stop watching once they are
        sent: two selector updates and two ``epoll_ctl`` calls per frame. A
        socket with nothing queued takes a frame at once; only what it does
        not take is queued, the usual way.
        """
        transport = self.transport
        if (
            not (sync or chopsize or self.send_queue or self.logOctets)
            and isinstance(transport, tcp.Connection)
            and transport.connected
            and not transport.disconnecting
            and not queued_bytes(transport)
        ):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):  # else the connection is lost: the usual path finds out
                if sent < len(data):
                    transport.write(data[sent:])
                if self.state == self.STATE_OPEN:
                    self.trafficStats.outgoingOctetsWireLevel += len(data)  # as autobahn counts
                return
        super().sendData(data, sync, chopsize)

    def sendMessage(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - autobahn's name
        if self.overflowed:
            return  # aborted; daphne reports the disconnect on the next turn of the loop
        limit = settings.CHAT_SEND_BUFFER_LIMIT
        queued = queued_bytes(self.transport)
        if limit and queued > limit + self.frame_allowance:
            self.drop_slow_reader(queued, limit)
            return
        payload_limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            super().sendMessage(*args, **kwargs)
        finally:
            self.maxMessagePayloadSize = payload_limit
        if queued <= limit:
            self.frame_allowance = queued_bytes(self.transport) - queued

    def drop_slow_reader(self, queued: int, limit: int) -> None:
        """Abort a connection whose client stopped reading; its tab reconnects and resumes."""
        self.overflowed = True
        peer = "%s:%s" % tuple(self.client_addr) if self.client_addr else "unknown"  # daphne's, set on connect
        logger.warning(
            "slow reader dropped peer=%s path=%s queued=%d bytes limit=%d", peer, self.request.path, queued, limit
        )
        self.transport.abortConnection()


class ClosingWebSocketFactory(WebSocketFactory):
    """daphne's websocket factory, failing bad frames with a close frame."""

    protocol = ChatWebSocketProtocol

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - autobahn's name
        kwargs.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **kwargs)


def main() -> None:
    # daphne.server.Server.run builds its factory from this module global.
    daphne.server.WebSocketFactory = ClosingWebSocketFactory
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
