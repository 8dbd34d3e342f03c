"""Property tests of the consumer: any frame, over one open socket, gets the contract's answer.

Hypothesis sends arbitrary JSON and near-valid frames (the strategies of
tests/test_protocol_properties.py) through the real ASGI app. Opening a
socket per example is too slow, so one socket serves a whole run: the test is
synchronous, drives its own event loop, and each example runs one exchange
on it. Each frame is followed by a ping; what arrives before the pong (plus a
broadcast echo or identity, which travel through the channel layer) is the
frame's answer.
"""

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from hypothesis import HealthCheck, assume, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import redis_client, validators
from chat.models import Message, VisitorSettings
from tests.tabs import Tab, new_browser, open_tab
from tests.test_protocol_properties import MAX_FRAME_BYTES, any_text, contract_codes, frames, long_text, names

pytestmark = pytest.mark.django_db(transaction=True)

# Frames of each type with plausible fields: half of these are accepted.
likely_valid = st.one_of(
    st.builds(
        lambda text, client_id: {"type": "chat", "text": text} | ({"client_id": client_id} if client_id else {}),
        st.one_of(any_text, long_text, st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1)),
        st.one_of(st.none(), st.text(min_size=1, max_size=3)),
    ),
    st.builds(
        lambda name: {"type": "rename", "username": name},
        st.one_of(names, st.text(st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), min_size=1, max_size=32)),
    ),
    st.builds(
        lambda before, limit: {"type": "history", "before": before} | ({"limit": limit} if limit else {}),
        st.one_of(st.none(), st.integers(-1, 2**64)),
        st.one_of(st.none(), st.integers(0, 101)),
    ),
    st.builds(lambda after: {"type": "resume", "after": after}, st.integers(-1, 2**64)),
)
# Frames that other events send at any time; they answer no frame.
UNSOLICITED = {"presence", "presence_diff", "renamed"}


def stored() -> tuple[list[tuple], list[tuple]]:
    """Everything the chat stores that a frame could change."""
    messages = list(
        Message.objects.order_by("pk").values_list("pk", "room_id", "author_id", "username", "text", "client_id")
    )
    names = list(VisitorSettings.objects.order_by("pk").values_list("session_id", "username"))
    return messages, names


async def exchange(tab: Tab, text: str, *, wait_for: str | None) -> list[dict]:
    """Send ``text`` then a ping; return the frames up to the pong (and ``wait_for``, if given)."""
    await tab.send(text)
    await tab.send({"type": "ping"})
    answers: list[dict] = []
    pongs = 2 if _is_ping(text) else 1  # a ping's own answer, then ours
    while pongs or (wait_for and wait_for not in {a["type"] for a in answers}):
        frame = await tab.recv()
        if frame["type"] == "pong" and pongs:
            pongs -= 1
            if pongs == 0:
                continue  # the pong of our ping: the end of the answer
        if frame["type"] not in UNSOLICITED:
            answers.append(frame)
    return answers


def _is_ping(text: str) -> bool:
    value = json.loads(text)
    return isinstance(value, dict) and value.get("type") == "ping"


def check_answer(value: Any, answers: list[dict], before: tuple, after: tuple) -> None:
    """The contract's answer to ``value``, and only the stored changes it allows."""
    codes = contract_codes(value)
    if codes:
        assert len(answers) == 1 and answers[0]["type"] == "error", answers
        assert answers[0]["code"] in codes and answers[0]["message"], (answers, codes)
        assert after == before, "a rejected frame changed what is stored"
        return
    kind = value["type"]
    (answer,) = answers
    messages_before, names_before = before
    messages_after, names_after = after
    if kind == "chat":
        client_id = value.get("client_id")
        earlier = [m for m in messages_before if client_id is not None and m[5] == client_id]
        if earlier:  # a resent client_id: the stored message again, nothing new
            assert answer["id"] == earlier[0][0] and after == before
            return
        assert answer["type"] == "chat" and answer["text"] == value["text"].strip()
        assert answer["client_id"] == client_id
        assert messages_after[:-1] == messages_before and names_after == names_before
        assert messages_after[-1][0] == answer["id"] and messages_after[-1][4] == value["text"].strip()
    elif kind == "rename":
        name = validators.check_username(value["username"])
        assert answer == {"type": "identity", "username": name}
        assert [n for _, n in names_after] == [name] and messages_after == messages_before
    elif kind == "history":  # the newest `limit` before `before`, oldest first
        older = [m[0] for m in messages_before if value.get("before") is None or m[0] < value["before"]]
        limit = value.get("limit", 50)
        assert answer["type"] == "history" and [m["id"] for m in answer["messages"]] == older[-limit:]
        assert answer["has_more"] is (len(older) > limit) and after == before
    elif kind == "resume":  # everything after `after`, oldest first, 500 at most
        newer = [m[0] for m in messages_before if m[0] > value["after"]]
        assert answer["type"] == "history" and [m["id"] for m in answer["messages"]] == newer[:500]
        assert answer["has_more"] is (len(newer) > 500) and after == before
    else:
        assert answer == {"type": "pong"} and after == before


def expected_async_answer(value: Any) -> str | None:
    """The answer that reaches the socket through the channel layer (after the pong, maybe)."""
    if contract_codes(value):
        return None
    return {"chat": "chat", "rename": "identity"}.get(value["type"])


class OneSocket:
    """A chat tab on an event loop of its own, kept open across Hypothesis examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tab: Tab = self.run(self._open())

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, timeout=30))

    async def _open(self) -> Tab:
        tab = await open_tab(await new_browser())
        await tab.quiet()
        return tab

    def close(self) -> None:
        async def shut() -> None:
            await self.tab.close()
            layer = get_channel_layer()
            if hasattr(layer, "close_pools"):
                await layer.close_pools()
            if django_settings.REDIS_URL:
                await redis_client.get_redis().aclose()

        try:
            self.run(shut())
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


@pytest.fixture
def socket(settings):
    # Rate limits would hide the answers under test (tested on their own below).
    settings.CHAT_RATE_BURST = 100_000
    settings.CHAT_RATE_PER_SECOND = 100_000.0
    settings.CHAT_READ_RATE_BURST = settings.CHAT_FRAME_RATE_BURST = 100_000
    settings.CHAT_READ_RATE_PER_SECOND = settings.CHAT_FRAME_RATE_PER_SECOND = 100_000.0
    one = OneSocket()
    yield one
    one.close()


def test_every_frame_gets_the_contract_answer_and_changes_only_what_it_may(socket):
    examples = 0

    @hypothesis_settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(frames, likely_valid))
    def check(value: Any) -> None:
        nonlocal examples
        text = json.dumps(value, ensure_ascii=False)
        assume(len(text.encode()) <= MAX_FRAME_BYTES)
        before = stored()
        answers = socket.run(exchange(socket.tab, text, wait_for=expected_async_answer(json.loads(text))))
        event(answers[0]["code"] if answers[0]["type"] == "error" else answers[0]["type"])
        check_answer(json.loads(text), answers, before, stored())
        examples += 1

    check()
    assert examples >= 100
    # Still the same socket, still open and answering.
    assert socket.run(exchange(socket.tab, '{"type":"ping"}', wait_for=None)) == [{"type": "pong"}]


async def test_over_the_limit_a_frame_gets_rate_limited_with_retry_after(settings):
    settings.CHAT_RATE_BURST = 2
    settings.CHAT_RATE_PER_SECOND = 2.0
    tab = await open_tab(await new_browser())
    await tab.quiet()
    for n in range(2):
        await tab.send({"type": "chat", "text": f"m{n}", "client_id": f"c{n}"})
        assert (await tab.recv_type("chat"))["client_id"] == f"c{n}"
    await tab.send({"type": "chat", "text": "m2", "client_id": "c2"})
    error = await tab.recv_type("error")
    assert (error["code"], error["client_id"]) == ("rate_limited", "c2")
    assert 0 < error["retry_after"] <= 0.5
    # A broken frame is still told what is wrong with it (and costs no token).
    await tab.send({"type": "chat", "text": " ", "client_id": "c3"})
    assert (await tab.recv_type("error"))["code"] == "invalid_text"
    # Renames have their own bucket.
    for name in ("A", "B", "C"):
        await tab.send({"type": "rename", "username": name})
    answers: list[str] = []
    while len(answers) < 3:
        frame = await tab.recv()
        if frame["type"] in {"identity", "error"}:
            answers.append(frame.get("code", frame["type"]))
    assert sorted(answers) == ["identity", "identity", "rate_limited"]
    # Waiting retry_after is enough, as the client does.
    await asyncio.sleep(error["retry_after"])
    await tab.send({"type": "chat", "text": "m2", "client_id": "c2"})
    assert (await tab.recv_type("chat"))["client_id"] == "c2"
    await tab.close()
