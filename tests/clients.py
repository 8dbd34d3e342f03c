"""A chat client for the end-to-end tests that behaves like the browser's ``chat.js``.

It reconnects when its socket closes (to the next live server of those it
knows), sends ``resume`` after the newest id it has on every new welcome,
then re-sends every message that got no echo (and was not in the catch-up)
with its ``client_id``, and retries after ``unavailable`` or
``rate_limited``. It records every chat id it
shows, in the order shown: like the browser, it shows a message once even
if it arrives twice (a ``resume`` answer can hold a message that also came
live while the request was on its way), and counts such repeats.
"""

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from typing import Any

import websockets

from tests.servers import People, Server


class ChatClient:
    """One browser tab: a session, the servers it may use, and what it has seen."""

    def __init__(self, servers: list[Server], session: str, room: str = "lobby") -> None:
        self.servers = servers
        self.session = session
        self.room = room
        self.shown: list[int] = []  # chat ids, live and from history, in the order shown
        self.live: list[int] = []  # of those, the ones that came as live broadcasts
        self.repeats = 0  # messages that arrived again and were not shown twice
        self._known: set[int] = set()
        self.last_id: int | None = None
        self.pending: dict[str, str] = {}  # client_id -> text, no echo yet
        self.errors: Counter[str] = Counter()
        self.people = People()  # the room's people, as this tab shows them
        self.connected = asyncio.Event()
        self.welcomes = 0
        self._resending: set[asyncio.Future[None]] = set()
        self._ws: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def say(self, text: str) -> str:
        """Send a chat message (now, or on the next welcome); return its client_id."""
        client_id = uuid.uuid4().hex
        self.pending[client_id] = text
        await self._send({"type": "chat", "text": text, "client_id": client_id})
        return client_id

    async def _send(self, frame: dict[str, Any]) -> None:
        if self._ws is not None and self.connected.is_set():
            with contextlib.suppress(websockets.ConnectionClosed):  # sent again after the next welcome
                await self._ws.send(json.dumps(frame))

    async def _run(self) -> None:
        turn = 0
        while True:
            server = self.servers[turn % len(self.servers)]
            try:
                async with server.ws(self.session, room=self.room) as ws:
                    self._ws = ws
                    async for raw in ws:
                        await self._on_frame(json.loads(raw))
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            self.connected.clear()
            self._ws = None
            turn += 1  # try the next server: this one may be dead
            await asyncio.sleep(0.2)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "welcome":
            self.welcomes += 1
            if self.last_id is None:
                self.last_id = frame["last_id"] or 0  # the page showed everything up to here
            self.connected.set()
            if frame["last_id"] is not None and frame["last_id"] > self.last_id:
                # What we sent may be among what we missed: re-send the rest
                # once the catch-up is in.
                await self._send({"type": "resume", "after": self.last_id})
            else:
                await self._resend_pending()
        elif kind == "chat":
            if self._record(frame):
                self.live.append(frame["id"])
        elif kind == "history":
            for message in frame["messages"]:
                self._record(message)
            if frame["has_more"]:  # the next page follows this one (live ones may be newer)
                await self._send({"type": "resume", "after": frame["messages"][-1]["id"]})
            else:
                await self._resend_pending()
        elif kind in ("presence", "presence_diff"):
            self.people.apply(frame)
        elif kind == "error":
            self.errors[frame["code"]] += 1
            client_id = frame.get("client_id")
            if client_id in self.pending and frame["code"] in ("unavailable", "rate_limited"):
                asyncio.get_running_loop().call_later(frame.get("retry_after", 0.5), self._resend, client_id)

    async def _resend_pending(self) -> None:
        for client_id, text in list(self.pending.items()):
            await self._send({"type": "chat", "text": text, "client_id": client_id})

    def _resend(self, client_id: str) -> None:
        if client_id in self.pending:
            self._resending.add(
                task := asyncio.ensure_future(
                    self._send({"type": "chat", "text": self.pending[client_id], "client_id": client_id})
                )
            )
            task.add_done_callback(self._resending.discard)

    def _record(self, message: dict[str, Any]) -> bool:
        """Show a message unless shown already; True if it is new."""
        self.pending.pop(message.get("client_id") or "", None)
        if message["id"] in self._known:
            self.repeats += 1
            return False
        self._known.add(message["id"])
        self.shown.append(message["id"])
        if self.last_id is None or message["id"] > self.last_id:
            self.last_id = message["id"]
        return True
