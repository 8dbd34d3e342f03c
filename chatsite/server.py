"""Run daphne so that a bad websocket frame is closed with its own code.

``python -m chatsite.server`` takes daphne's command-line arguments
unchanged. The one difference: autobahn, under daphne, answers a frame over
the size limit or invalid UTF-8 by dropping the TCP connection
(``failByDrop``), so the client sees 1006. The contract wants the closing
handshake with 1009 and 1007, which ``failByDrop=False`` gives.
"""

from typing import Any

import daphne.server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory


class ClosingWebSocketFactory(WebSocketFactory):
    """daphne's websocket factory, failing bad frames with a close frame."""

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - autobahn's name
        kwargs.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **kwargs)


def main() -> None:
    # daphne.server.Server.run builds its factory from this module global.
    daphne.server.WebSocketFactory = ClosingWebSocketFactory
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
