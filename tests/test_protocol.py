"""Parsing client frames and building server frames (no database)."""

import json
from datetime import UTC, datetime

import pytest

from chat import protocol
from chat.models import Message
from chat.realtime.people import PeopleDiff, Person


def parse(frame: object) -> protocol.ClientFrame:
    return protocol.parse_frame(json.dumps(frame))


def rejected(text: str) -> protocol.FrameError:
    with pytest.raises(protocol.FrameError) as info:
        protocol.parse_frame(text)
    return info.value


def test_parse_chat_trims_text():
    assert parse({"type": "chat", "text": "  hi  ", "client_id": "c1"}) == protocol.Chat("hi", "c1")
    assert parse({"type": "chat", "text": "hi"}) == protocol.Chat("hi", None)


def test_parse_rename_normalizes():
    assert parse({"type": "rename", "username": "  Ada   L "}) == protocol.Rename("Ada L")


def test_parse_history_defaults_and_bounds():
    assert parse({"type": "history", "before": 10}) == protocol.History(before=10, limit=50)
    assert parse({"type": "history", "before": 10, "limit": 100}) == protocol.History(10, 100)
    assert parse({"type": "history"}) == protocol.History(before=None, limit=50)


def test_parse_resume_and_ping():
    assert parse({"type": "resume", "after": 0}) == protocol.Resume(after=0)
    assert parse({"type": "ping"}) == protocol.Ping()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ("", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"chat"', "bad_json"),
        ("null", "bad_json"),
        ("{}", "unknown_type"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"type": 5}', "unknown_type"),
        ('{"type": "__init__"}', "unknown_type"),
        ('{"type": "chat"}', "invalid_text"),
        ('{"type": "chat", "text": "   "}', "invalid_text"),
        ('{"type": "chat", "text": 5}', "invalid_text"),
        ('{"type": "chat", "text": "' + "x" * 2001 + '"}', "text_too_long"),
        ('{"type": "chat", "text": "hi", "client_id": 7}', "invalid_request"),
        ('{"type": "chat", "text": "hi", "client_id": "' + "c" * 65 + '"}', "invalid_request"),
        ('{"type": "rename"}', "invalid_username"),
        ('{"type": "rename", "username": ""}', "invalid_username"),
        ('{"type": "rename", "username": "a\\u202eb"}', "invalid_username"),
        ('{"type": "history", "before": "10"}', "invalid_request"),
        ('{"type": "history", "before": true}', "invalid_request"),
        ('{"type": "history", "before": -1}', "invalid_request"),
        ('{"type": "history", "before": 1.5}', "invalid_request"),
        ('{"type": "history", "before": 10, "limit": 0}', "invalid_request"),
        ('{"type": "history", "before": 10, "limit": 101}', "invalid_request"),
        ('{"type": "resume"}', "invalid_request"),
        ('{"type": "resume", "after": null}', "invalid_request"),
        ('{"type": "resume", "after": "5"}', "invalid_request"),
    ],
)
def test_rejected_frames_carry_the_contract_code(text, code):
    assert rejected(text).code == code


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # 10 KB: fits in a frame
        '{"a":' * 3000 + "1" + "}" * 3000,
        '{"type": "chat", "text": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"type": "history", "before": ' + '{"x":' * 3000 + "1" + "}" * 3000 + "}",
    ],
)
def test_deeply_nested_json_is_bad_json(text):
    assert rejected(text).code == "bad_json"


def test_reads_may_carry_a_client_id_for_their_errors():
    assert parse({"type": "resume", "after": 3, "client_id": "r1"}) == protocol.Resume(after=3, client_id="r1")
    assert parse({"type": "history", "client_id": "r2"}) == protocol.History(None, 50, client_id="r2")
    # Not defined for reads by the contract: an invalid one is ignored, not refused.
    assert parse({"type": "resume", "after": 3, "client_id": 7}) == protocol.Resume(after=3)
    error = rejected('{"type": "history", "limit": 0, "client_id": "r3"}')
    assert (error.code, error.client_id) == ("invalid_request", "r3")
    assert protocol.client_id_of(protocol.Resume(after=1, client_id="r4")) == "r4"
    assert protocol.client_id_of(protocol.Ping()) is None


def test_chat_error_echoes_a_valid_client_id():
    error = rejected('{"type": "chat", "text": "", "client_id": "c9"}')
    assert (error.code, error.client_id) == ("invalid_text", "c9")


def test_chat_frame_shape():
    message = Message(
        id=7,
        room_id="lobby",
        author_id="a1",
        username="Ada",
        verified=True,
        text="<b>hi</b>",
        client_id=None,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    assert json.loads(protocol.chat_frame(message)) == {
        "type": "chat",
        "id": 7,
        "room": "lobby",
        "author_id": "a1",
        "username": "Ada",
        "verified": True,
        "text": "<b>hi</b>",
        "ts": "2026-01-02T03:04:05.678Z",
        "client_id": None,
    }


def test_server_frames():
    assert json.loads(protocol.welcome_frame(room="r", username="u", author_id="a", verified=False, last_id=None)) == {
        "type": "welcome",
        "room": "r",
        "username": "u",
        "author_id": "a",
        "verified": False,
        "last_id": None,
    }
    assert json.loads(protocol.identity_frame(username="u")) == {"type": "identity", "username": "u"}
    assert json.loads(protocol.renamed_frame(author_id="a", old="x", username="y")) == {
        "type": "renamed",
        "author_id": "a",
        "old": "x",
        "username": "y",
    }
    people = protocol.encode_people([Person("a", "u", True, 2)])
    assert json.loads(protocol.presence_frame(room='r"', count=3, people_json=people)) == {
        "type": "presence",
        "room": 'r"',
        "count": 3,
        "users": [{"author_id": "a", "username": "u", "verified": True, "tabs": 2}],
    }
    changes = PeopleDiff(count=4, joined=(Person("b", "v", False, 1),), left=("a",))
    assert json.loads(protocol.presence_diff_frame(room="r", changes=changes)) == {
        "type": "presence_diff",
        "room": "r",
        "count": 4,
        "joined": [{"author_id": "b", "username": "v", "verified": False, "tabs": 1}],
        "left": ["a"],
    }
    assert json.loads(protocol.pong_frame()) == {"type": "pong"}
    assert json.loads(protocol.error_frame("rate_limited", "slow", client_id="c", retry_after=0.5)) == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow",
        "client_id": "c",
        "retry_after": 0.5,
    }
    assert "client_id" not in json.loads(protocol.error_frame("bad_json", "x"))
