"""What the server logs: connects, disconnects and refusals with their reasons,
never a message's text, a session key or a ``session_id``.

The consumer's records through the real ASGI stack (caplog), then a real
daphne's whole log file, daphne's own access log included.
"""

import asyncio
import json
import logging
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError

from chat import services
from tests.conftest import make_session
from tests.servers import closed_with, drain, manage, recv
from tests.tabs import Tab, new_browser, open_tab

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def chat_log(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="chat")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("chat")]


async def logged(caplog: pytest.LogCaptureFixture, line: str) -> bool:
    """Whether ``line`` is logged within a few seconds (the consumer logs after it sends)."""
    for _ in range(50):
        if line in lines(caplog):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_connect_and_disconnect_are_logged_with_room_author_and_code(chat_log):
    tab = Tab(await new_browser(), room="logs")
    author = (await tab.open())["author_id"]
    assert await logged(chat_log, f"connected room=logs author={author} verified=False")
    await tab.comm.disconnect(code=4321)
    assert f"disconnected room=logs author={author} code=4321" in lines(chat_log)


async def test_a_refusal_for_no_session_is_logged_with_its_reason(chat_log):
    tab = Tab("not-a-session-key", room="logs")
    assert (await tab.comm.connect())[0]
    assert (await tab.comm.receive_output())["code"] == 4401
    assert "connect closed room=logs: no valid session" in lines(chat_log)
    assert not any("not-a-session-key" in line for line in lines(chat_log))


async def test_a_rejected_frame_is_logged_with_its_error_code(chat_log):
    tab = await open_tab(await new_browser())
    await tab.send({"type": "dance"})
    assert (await tab.recv())["code"] == "unknown_type"
    assert "frame rejected room=lobby code=unknown_type" in lines(chat_log)
    await tab.close()


async def test_a_rate_limited_frame_is_logged(chat_log, settings):
    settings.CHAT_RATE_BURST = 1
    settings.CHAT_RATE_PER_SECOND = 0.01
    tab = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "first"})
    await tab.recv_type("chat")
    await tab.send({"type": "chat", "text": "second"})
    assert (await tab.recv_type("error"))["code"] == "rate_limited"
    assert (
        [line for line in lines(chat_log) if "code=rate_limited" in line]
        == [
            line
            for line in lines(chat_log)
            if line.startswith("frame rejected room=lobby code=rate_limited action=chat")
        ]
        != []
    )
    await tab.close()


async def test_an_unavailable_answer_is_logged_with_what_failed(chat_log, monkeypatch):
    tab = await open_tab(await new_browser())

    def database_down(posts):
        raise OperationalError("connection to server failed: secret detail")

    monkeypatch.setattr(services, "post_messages", database_down)
    await tab.send({"type": "chat", "text": "not stored"})
    assert (await tab.recv_type("error"))["code"] == "unavailable"
    assert "frame rejected room=lobby code=unavailable (OperationalError)" in lines(chat_log)
    assert not any("secret detail" in line for line in lines(chat_log))
    await tab.close()


async def test_no_record_holds_a_text_a_session_key_or_a_session_id(chat_log):
    chat_log.set_level(logging.DEBUG)  # every logger, every level
    chat_log.set_level(logging.DEBUG, logger="chat")
    session = await database_sync_to_async(make_session)()
    secret_text = f"the-{uuid.uuid4().hex}-text"
    tab = await open_tab(session.session_key)
    other = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": secret_text, "client_id": "c1"})
    await other.recv_type("chat")
    await tab.send({"type": "chat", "text": secret_text, "client_id": "c1"})  # a resend
    await tab.send({"type": "chat", "text": secret_text * 100})  # too long: rejected
    await tab.send("{" + secret_text)  # not JSON: rejected
    await tab.send({"type": "rename", "username": "Ada"})
    await tab.recv_type("identity")
    await tab.close()
    await other.close()
    records = [record for record in chat_log.records if record.name.startswith("chat")]
    assert {"connected", "frame", "disconnected"} <= {record.getMessage().split()[0] for record in records}
    for record in chat_log.records:  # every logger's, not only the chat's
        whole = f"{record.getMessage()} {vars(record)}"
        for secret in (secret_text, session.session_key, session["session_id"]):
            assert secret not in whole, record.getMessage()


@pytest.mark.server
async def test_the_server_log_file_holds_no_cookie_text_or_session_id(server, server_env):
    cookie = server.browser()
    session_id = manage(
        server_env,
        "shell",
        "-c",
        f"from django.contrib.sessions.backends.db import SessionStore; print(SessionStore({cookie!r})['session_id'])",
    ).split()[-1]
    uuid.UUID(session_id)
    secret_text = f"the-{uuid.uuid4().hex}-text"
    async with server.ws(cookie) as ws:
        await recv(ws, "welcome")
        await ws.send(json.dumps({"type": "chat", "text": secret_text}))
        await recv(ws, "chat")
        await ws.send(json.dumps({"type": "chat", "text": secret_text * 100}))
        await recv(ws, "error")
        await ws.send(json.dumps({"type": "rename", "username": "Ada"}))
        await recv(ws, "identity")
        await drain(ws, quiet=0.3)
    async with server.ws("forged-" + cookie) as refused:  # a 4401 refusal with a cookie in it
        assert await closed_with(refused) == 4401
    log = ""
    for _ in range(50):  # the disconnect is logged just after the close
        log = server.log_path.read_text(errors="replace")
        if log.count("disconnected room=lobby") and "no valid session" in log:
            break
        await asyncio.sleep(0.1)
    # daphne's access log is in this file too.
    assert '"GET /chat/lobby/" 200' in log and '"WSCONNECT /ws/chat/lobby/"' in log
    assert "disconnected room=lobby" in log and "connect closed room=lobby: no valid session" in log
    for secret in (cookie, session_id, secret_text):
        assert secret not in log
