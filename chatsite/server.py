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
"""

from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol


class ChatWebSocketProtocol(WebSocketProtocol):
    """daphne's websocket protocol, with the size limit on received messages only."""

    def sendMessage(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - autobahn's name
        limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            super().sendMessage(*args, **kwargs)
        finally:
            self.maxMessagePayloadSize = limit


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
