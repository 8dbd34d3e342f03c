"""Run daphne so that the websocket size limit means what the contract says.

``python -m chatsite.server`` takes daphne's command-line arguments
unchanged. Every override below names the upstream code it works around,
in the versions pinned in requirements.txt (daphne 4.2.3, autobahn
26.10.2, Twisted 26.10.0); re-read those lines before moving a pin
(tests/test_server.py checks the private names used).

Two differences, both in how autobahn (under daphne) applies
``--websocket-max-message-size``:

- A client frame over the limit, or with invalid UTF-8, drops the TCP
  connection, so the client sees 1006. The contract wants the closing
  handshake with 1009 and 1007, which ``failByDrop=False`` gives
  (``ClosingWebSocketFactory``).
- The limit also applies to what the server sends, and a bigger frame raises
  in the consumer and closes the socket. The limit is for clients; the
  server's own frames (a page of 50 long messages, a presence snapshot) are
  larger, and go out whole (``ChatWebSocketProtocol.sendMessage``).

Two additions:

- A bound on what is queued for a client that stops reading. Twisted keeps
  every byte written to a socket whose peer does not read, without limit;
  past ``CHAT_SEND_BUFFER_LIMIT`` the server drops that connection
  (docs/architecture.md, "A client that stops reading").
- A frame for a TCP socket with nothing queued is written to it at once,
  instead of being queued until the reactor reports the socket writable
  (docs/performance.md: that round trip was a quarter of the server's time
  in a busy room of 1,000).

And one setting of the process, once daphne has loaded the application: the
garbage collector's (``ChatCommandLine``, ``tune_garbage_collector``).

``MAX_CLIENT_MESSAGE_BYTES`` is the one declaration of the client limit;
``DAPHNE_LIMIT_ARGS`` is how the test and benchmark servers pass it. The
Makefile and the Dockerfile cannot import it and repeat the number;
tests/test_constants.py checks that they say the same.
"""

import gc
import logging
from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings
from twisted.internet import tcp

from chat import metrics
from chat.realtime.tab import PREPARED

logger = logging.getLogger("chat.server")

# The largest websocket message (and frame) a client may send: 16 KiB, the
# contract's limit (docs/protocol.md). daphne's --websocket-max-message-size
# and --websocket-max-frame-size, which daphne/server.py ``Server.run`` hands
# to autobahn as ``maxMessagePayloadSize`` and ``maxFramePayloadSize`` (daphne
# >= 4.2.2; before it autobahn's default 0 meant no limit: CVE-2026-44545,
# GHSA-rrc9-mx66-ffcm).
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024
DAPHNE_LIMIT_ARGS = (
    "--websocket-max-message-size",
    str(MAX_CLIENT_MESSAGE_BYTES),
    "--websocket-max-frame-size",
    str(MAX_CLIENT_MESSAGE_BYTES),
)


def queued_bytes(transport: object) -> int:
    """Return the bytes a twisted transport holds that the kernel has not taken yet.

    Twisted has no public "bytes queued" call (the producer API only says
    paused or not, past ``FileDescriptor.bufferSize``, 64 KiB; daphne
    registers no producer: django/daphne#170, "TCP bufferbloat if WebSocket
    server keeps pushing data quickly to a slow client", open). So this reads
    the private state of twisted/internet/abstract.py ``FileDescriptor``
    (TCP and Unix sockets): ``write`` appends to ``_tempDataBuffer`` and adds
    to ``_tempDataLen``; ``doWrite`` joins those into ``dataBuffer`` and
    advances ``offset`` as the kernel takes bytes. Queued is therefore
    ``len(dataBuffer) - offset + _tempDataLen``. A protocol wrapper (TLS
    encrypts and writes on at once) is looked through to the transport under
    it. 0 for a transport of another kind: no bound rather than a wrong one.
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
    and a bound on what waits for a client that does not read.

    Subclasses daphne/ws_protocol.py ``WebSocketProtocol`` (itself autobahn's
    ``WebSocketServerProtocol``); daphne's ``handle_reply`` →
    ``serverSend`` → autobahn ``sendMessage`` → ``sendData`` →
    ``transport.write`` is the path every frame to a browser takes, and the
    two overrides below sit on it.
    """

    # The size of the last frame written while the queue was under the
    # limit: that frame goes out whole (a 500-message resume can be several
    # MiB), and the limit counts from its end. Without this, a slow client
    # catching up would be dropped by the next live frame, on every reconnect.
    frame_allowance = 0
    overflowed = False

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:  # noqa: N802
        """Write a frame straight to the socket when nothing is queued before it.

        Overrides autobahn/websocket/protocol.py ``WebSocketProtocol.sendData``,
        whose unchopped, unsynced branch calls ``self.transport.write(data)``.
        twisted/internet/abstract.py ``FileDescriptor.write`` never writes: it
        appends to ``_tempDataBuffer`` and calls ``startWriting`` →
        twisted/internet/asyncioreactor.py ``AsyncioSelectorReactor.addWriter``
        → asyncio ``loop.add_writer``; on the next turn ``doWrite`` sends and,
        the buffer empty, ``stopWriting`` → ``removeWriter`` →
        ``loop.remove_writer``: two selector updates and two ``epoll_ctl``
        calls per frame. A socket with nothing queued takes a frame at once
        (twisted/internet/tcp.py ``Connection.writeSomeData``, what
        ``doWrite`` itself calls); only what it does not take is queued, the
        usual way. The conditions keep autobahn's other branches as they are
        (``chopsize``/``sync``/``send_queue`` use its delayed queue;
        ``logOctets`` logs each write), and the traffic count is the one
        autobahn's ``sendData`` keeps for an open socket. No upstream issue
        asks for this; it is a cost measured here (docs/performance.md).
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
        """Send a frame of any size, unless the client has stopped reading.

        Overrides autobahn/websocket/protocol.py ``WebSocketProtocol.sendMessage``,
        which checks ``0 < self.maxMessagePayloadSize < payload_len`` for the
        *outgoing* payload and raises ``PayloadExceededError``; daphne 4.2.2+
        sets that attribute from ``--websocket-max-message-size``
        (daphne/server.py ``Server.run``), so a server frame over the client
        limit raised in daphne/ws_protocol.py ``serverSend`` and ended the
        socket. The limit is lifted for the duration of the call only;
        received messages are still checked against it (autobahn's
        ``onMessageFrameBegin``, ``onMessageFrameData`` and, after
        decompression, ``onFrameData`` read the same attribute). No upstream
        issue found for the outgoing check; crossbario/autobahn-python#888
        discusses the limit's two directions (WebSocket has no way to tell a
        peer its limit).

        Before that, the bound on what waits for this client (see
        ``queued_bytes``; django/daphne#170).
        """
        # autobahn sets it in setProtocolOptions (no annotation to go by).
        payload_limit: int = self.maxMessagePayloadSize  # type: ignore[has-type]

        def send() -> None:
            self.maxMessagePayloadSize = 0
            try:
                super(ChatWebSocketProtocol, self).sendMessage(*args, **kwargs)
            finally:
                self.maxMessagePayloadSize = payload_limit

        self.within_send_bound(send)

    def handle_reply(self, message: dict[str, Any]) -> None:
        """Send a room frame prepared once for all its sockets (``chat.realtime.tab.PREPARED``).

        daphne/ws_protocol.py ``WebSocketProtocol.handle_reply`` turns each
        ``websocket.send`` into ``sendMessage(text.encode("utf8"))``, which
        encodes the text and builds the frame again for every socket. A room
        broadcast carries autobahn's ``PreparedMessage`` (its public API for
        broadcasting, autobahn/websocket/protocol.py ``PreparedMessage`` and
        ``sendPreparedMessage``): the frame's bytes, built once, written
        as they are. Any other message, and any socket that negotiated
        compression, goes daphne's way.
        """
        prepared = message.get(PREPARED) if message.get("type") == "websocket.send" else None
        if prepared is not None and self.state == self.STATE_OPEN and self._perMessageCompress is None:
            self.within_send_bound(lambda: self.sendPreparedMessage(prepared))
        else:
            super().handle_reply(message)

    def within_send_bound(self, send: Any) -> None:
        """Call ``send`` unless the client has stopped reading (then drop it); keep the last frame's allowance."""
        if self.overflowed:
            return  # aborted; daphne reports the disconnect on the next turn of the loop
        limit = settings.CHAT_SEND_BUFFER_LIMIT
        queued = queued_bytes(self.transport)
        if limit and queued > limit + self.frame_allowance:
            self.drop_slow_reader(queued, limit)
            return
        send()
        if queued <= limit:
            self.frame_allowance = queued_bytes(self.transport) - queued

    def drop_slow_reader(self, queued: int, limit: int) -> None:
        """Abort a connection whose client stopped reading; its tab reconnects and resumes.

        ``abortConnection`` (twisted/internet/tcp.py ``_AbortingMixin``, a
        base of ``Connection``) stops reading and writing, drops the buffered
        bytes and calls ``connectionLost`` on the next turn, without a closing
        handshake (which would itself wait behind the unread bytes); autobahn
        reports ``onClose`` and daphne/ws_protocol.py ``onClose`` sends the
        consumer ``websocket.disconnect`` with 1006.
        """
        self.overflowed = True
        metrics.SLOW_READERS_DROPPED.inc()
        peer = "{}:{}".format(*self.client_addr) if self.client_addr else "unknown"  # daphne's, set on connect
        logger.warning(
            "slow reader dropped peer=%s path=%s queued=%d bytes limit=%d", peer, self.request.path, queued, limit
        )
        self.transport.abortConnection()


class ClosingWebSocketFactory(WebSocketFactory):
    """daphne's websocket factory, failing bad frames with a close frame.

    Subclasses daphne/ws_protocol.py ``WebSocketFactory`` (autobahn's
    ``WebSocketServerFactory``) and builds ``ChatWebSocketProtocol``.
    """

    protocol = ChatWebSocketProtocol

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - autobahn's name
        """Default ``failByDrop`` to False.

        autobahn/websocket/protocol.py ``WebSocketServerFactory.resetProtocolOptions``
        sets ``failByDrop = True``, and daphne/server.py ``Server.run`` calls
        ``setProtocolOptions`` without it. With it True,
        ``WebSocketProtocol._fail_connection`` (reached from
        ``_max_message_size_exceeded``, ``_invalid_payload`` and
        ``_protocol_violation``) calls ``dropConnection(abort=True)``: the
        client sees 1006. With it False, the same call sends a close frame
        with 1009 or 1007, as the contract says (RFC 6455 §7.1.7: an endpoint
        failing an established connection SHOULD send a Close frame first).
        """
        kwargs.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **kwargs)


# Allocations of container objects, net of deallocations, between two
# collections of the youngest generation (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from stalling a server that holds thousands of sockets.

    A full collection walks every tracked object: Django's and the
    libraries' ~107,000 from start-up, plus every open socket's. Under a
    reconnect storm of 4,000 tabs the defaults ran 14 full collections,
    1.75 s of pauses of ~125 ms each, and the slowest connects waited on
    them (docs/performance.md, "Third session of issue 11"). So, once the
    application is loaded: collect what start-up left, ``gc.freeze()`` the
    rest (moved to a permanent generation no collection walks; the ``gc``
    documentation's advice for long-lived start-up objects), and let
    ``GC_YOUNG_THRESHOLD`` allocations pass between young collections, so
    fewer of them run, each promoting less into the older generations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class ChatCommandLine(CommandLineInterface):
    """daphne's command line, tuning the garbage collector once the application is loaded.

    daphne/cli.py ``CommandLineInterface.run`` parses the arguments, sets up
    logging, then calls ``load_asgi_app`` (its hook for loading the
    application) before it builds the server and starts the reactor.
    """

    def load_asgi_app(self, asgi_app_path: str) -> Any:
        application = super().load_asgi_app(asgi_app_path)
        tune_garbage_collector()
        return application


def main() -> None:
    # daphne/server.py imports ``WebSocketFactory`` from daphne.ws_protocol
    # into its own namespace, and ``Server.run`` builds ``self.ws_factory =
    # WebSocketFactory(self, server=...)`` from that module global: daphne
    # has no option or hook for another factory or protocol class, so the
    # global is replaced before the CLI builds the server.
    daphne.server.WebSocketFactory = ClosingWebSocketFactory
    ChatCommandLine.entrypoint()


if __name__ == "__main__":
    main()
