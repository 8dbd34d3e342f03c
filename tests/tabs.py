"""In-process browser tabs: websockets through the real ASGI app (origin check, sessions, auth).

Shared by the consumer, security, log and property tests.
"""

import asyncio
import json
from collections.abc import Callable

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from tests.conftest import make_session
from tests.servers import People

TIMEOUT = 3


class Tab:
    """One browser tab: a websocket with that browser's session cookie."""

    def __init__(self, session_key: str | None, room: str = "lobby", origin: bytes = b"http://localhost") -> None:
        headers = [(b"origin", origin), (b"host", b"localhost")]
        if session_key:
            headers.append((b"cookie", f"sessionid={session_key}".encode()))
        self.comm = WebsocketCommunicator(application, f"/ws/chat/{room}/", headers=headers)
        self.people = People()  # the room's people as this tab shows them

    async def open(self) -> dict:
        connected, _ = await self.comm.connect(timeout=TIMEOUT)
        assert connected
        welcome = await self.recv()
        assert welcome["type"] == "welcome"
        return welcome

    async def send(self, frame: dict | str) -> None:
        await self.comm.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        frame = json.loads(await self.comm.receive_from(timeout=timeout))
        self.people.apply(frame)
        return frame

    async def watch(self, seconds: float) -> None:
        """Take in every frame that comes within ``seconds`` (presence diffs among them)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            # receive_nothing, not a timed receive: a receive that times out cancels the app.
            if not await self.comm.receive_nothing(timeout=min(left, 0.1)):
                await self.recv()

    async def until_people(self, check: Callable[[list[dict]], bool], timeout: float = 5) -> list[dict]:
        """Receive until the people shown pass ``check`` (presence diffs come at most once a second)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check(self.people.users):
            await self.recv(timeout=max(0.01, deadline - loop.time()))
        return self.people.users

    async def recv_type(self, kind: str) -> dict:
        """Skip frames until one of ``kind`` (presence frames come and go)."""
        for _ in range(20):
            frame = await self.recv()
            if frame["type"] == kind:
                return frame
        raise AssertionError(f"no {kind} frame")

    async def silent(self) -> bool:
        return await self.comm.receive_nothing(timeout=0.3)

    async def only_presence(self, seconds: float = 0.5) -> bool:
        """True if nothing but presence frames (which come on their own) arrives within ``seconds``."""
        kinds: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if not await self.comm.receive_nothing(timeout=min(left, 0.1)):
                kinds.append((await self.recv())["type"])
        return set(kinds) <= {"presence", "presence_diff"}

    async def quiet(self) -> None:
        """Drain pending frames."""
        while not await self.comm.receive_nothing(timeout=0.2):
            await self.comm.receive_from()

    async def close(self) -> None:
        await self.comm.disconnect()


async def new_browser(**kwargs) -> str:
    session = await database_sync_to_async(make_session)(**kwargs)
    return session.session_key


async def open_tab(key: str, room: str = "lobby") -> Tab:
    tab = Tab(key, room)
    await tab.open()
    await tab.recv_type("presence")
    return tab
