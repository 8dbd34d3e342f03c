"""Is the channel layer delivering? A probe the hub sends itself, every second.

A gap at the end of a conversation has no later message to reveal it, and a
Redis restart drops subscriptions without a word. So, with Redis, the hub
sends a probe to its own channel every ``PROBE_INTERVAL``; when probes stop
coming back the layer is down, and when they come back the hub catches up
(``on_back``).
"""

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import BaseChannelLayer

from chat import metrics

logger = logging.getLogger(__name__)

# How often, and how long its echo may take. A process seconds behind under
# overload is not an outage: only a probe that fails at once (Redis refuses)
# or takes this long marks the layer down.
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 5.0
# The channel-layer "type" of a probe (no event: it never leaves the hub's channel).
PROBE_TYPE = "hub.probe"


class LayerProbe:
    """Watches one channel of the layer; calls ``on_back`` when the layer delivers again."""

    def __init__(self, layer: BaseChannelLayer, channel: str, on_back: Callable[[], Awaitable[None]]) -> None:
        self.layer = layer
        self.channel = channel
        self.delivering = True  # until a probe fails (chat_layer_delivering)
        self._on_back = on_back
        self._tokens = itertools.count()
        self._echoes: dict[int, asyncio.Future[None]] = {}

    @property
    def delivering(self) -> bool:
        """Whether the layer delivered the last probe (the hub's reader also sets False on a failed read)."""
        return self._delivering

    @delivering.setter
    def delivering(self, delivering: bool) -> None:
        self._delivering = delivering
        metrics.LAYER_DELIVERING.set(1 if delivering else 0)

    def echo(self, message: dict[str, Any]) -> None:
        """A probe came back through the layer (the hub's reader hands it here)."""
        echo = self._echoes.pop(message["token"], None)
        if echo is not None and not echo.done():
            echo.set_result(None)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            delivering = await self._probe()
            if delivering == self.delivering:
                continue
            self.delivering = delivering
            if not delivering:
                logger.warning("room hub: the channel layer is not delivering; sockets stay open")
                continue
            logger.warning("room hub: the channel layer is back; catching up")
            await self._on_back()

    async def _probe(self) -> bool:
        """Send a probe to the channel; True if it comes back in time."""
        token = next(self._tokens)
        echo = self._echoes[token] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.layer.send(self.channel, {"type": PROBE_TYPE, "token": token}), PROBE_TIMEOUT)
            await asyncio.wait_for(echo, PROBE_TIMEOUT)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        finally:
            self._echoes.pop(token, None)
