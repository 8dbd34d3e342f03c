"""Property tests of parse_frame: any text in, a valid frame or a contract error out.

Hypothesis generates arbitrary JSON, near-valid frames and hostile Unicode
(bidi overrides, zero-width and control characters, separators, emoji
sequences). ``contract_codes`` is an independent model of the contract's
error table (docs/protocol.md); names are judged by chat.validators, whose
own rules are re-checked on every name the parser accepts.
"""

import json
import unicodedata
from typing import Any

from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from chat import protocol, validators

MAX_FRAME_BYTES = 16 * 1024  # bigger frames never reach the parser (daphne closes with 1009)
TYPES = ["chat", "rename", "history", "resume", "ping"]
FIELDS = ["text", "client_id", "username", "before", "limit", "after"]
WHITE_SPACE = " \t\n\r\v\f\u00a0\u2003\u3000"
# Characters a hostile client likes: bidi controls, zero-width characters and
# the BOM, C0/C1 controls, line and paragraph separators, combining marks,
# emoji parts (ZWJ, VS16, skin tone), HTML.
HOSTILE = (
    list(
        "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
        "\u200b\u200c\u200d\u2060\ufeff\u00ad"
        "\x00\x01\x07\x08\x1b\x7f\x85\x9f"
        "\u2028\u2029\u0301\u0308"
        "\ufe0f\U0001f3fd\U0001f469\U0001f4bb\U0001f468\u2764"
        "<>&\"'/"
    )
    + list(WHITE_SPACE)
    + ["<script>", "javascript:", "e\u0301", "\u212b"]
)

chars = st.characters(exclude_categories=["Cs"])  # a JSON text from a browser holds no lone surrogates
hostile_text = st.lists(st.one_of(chars, st.sampled_from(HOSTILE)), max_size=40).map("".join)
long_text = st.builds(
    lambda pad_left, body, pad_right: pad_left + body + pad_right,
    st.sampled_from(["", " ", "\n\t  "]),
    st.builds(lambda char, n: char * n, st.one_of(chars, st.sampled_from(HOSTILE)), st.integers(1990, 2010)),
    st.sampled_from(["", " ", "  \n"]),
)
any_text = st.one_of(hostile_text, st.text())
numbers = st.one_of(
    st.integers(),
    st.integers(-2, 110),
    st.sampled_from([2**63 - 1, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 50.0, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)),
    max_leaves=12,
)
# Frames of a known type with each field missing, plausible or wrong: the edges of the rules.
field_values = st.one_of(json_values, st.sampled_from([None, True, False, [], {}, "", "  "]))
plausible = {
    "text": st.one_of(any_text, long_text),
    "client_id": st.one_of(
        st.none(), st.text(min_size=1, max_size=64), hostile_text, st.text(min_size=60, max_size=70)
    ),
    "username": hostile_text,
    "before": st.integers(-1, 2**64),
    "limit": st.integers(-1, 102),
    "after": st.integers(-1, 2**64),
}
near_valid = st.builds(
    lambda kind, fields, extra: {"type": kind, **fields, **extra},
    # mostly a known type, sometimes anything
    st.integers(0, 9).flatmap(lambda n: st.sampled_from(TYPES) if n else st.one_of(any_text, json_values)),
    st.fixed_dictionaries(
        {}, optional={name: st.one_of(values, values, field_values) for name, values in plausible.items()}
    ),
    st.one_of(
        st.dictionaries(any_text, json_values, max_size=2),
        # an unknown field big enough to take the frame near the 16 KiB limit
        st.integers(0, MAX_FRAME_BYTES).map(lambda size: {"padding": "\u00e9" * (size // 2)}),
    ),
)
frames = st.one_of(json_values, near_valid, near_valid, near_valid)


def _is_id(value: Any) -> bool:
    # Any integer >= 0: one above every stored id is still a valid bound.
    return type(value) is int and value >= 0


def _text_codes(text: Any) -> set[str]:
    if not isinstance(text, str) or not text.strip():
        return {"invalid_text"}
    codes = set()
    if len(text.strip()) > 2000:
        codes.add("text_too_long")
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text.strip()):
        codes.add("invalid_text")
    return codes


def contract_codes(value: Any) -> set[str]:
    """The error codes the contract allows for a decoded frame; empty if it must be accepted.

    Where a frame breaks several rules, any of their codes will do.
    """
    if not isinstance(value, dict):
        return {"bad_json"}
    kind = value.get("type")
    if kind not in TYPES or not isinstance(kind, str):
        return {"unknown_type"}
    codes: set[str] = set()
    if kind == "chat":
        client_id = value.get("client_id")
        if client_id is not None and not (
            isinstance(client_id, str)
            and 1 <= len(client_id) <= 64
            and not any(unicodedata.category(c) == "Cc" for c in client_id)
        ):
            codes.add("invalid_request")
        codes |= _text_codes(value.get("text"))
    elif kind == "rename":
        try:
            validators.check_username(value.get("username"))
        except Exception:
            codes.add("invalid_username")
    elif kind == "history":
        limit = value.get("limit", 50)
        if not (type(limit) is int and 1 <= limit <= 100):
            codes.add("invalid_request")
        if value.get("before") is not None and not _is_id(value["before"]):
            codes.add("invalid_request")
    elif kind == "resume" and not _is_id(value.get("after")):
        codes.add("invalid_request")
    return codes


def check_accepted(frame: protocol.ClientFrame, value: dict) -> None:
    """What every accepted frame promises, re-checked from the raw input."""
    match frame:
        case protocol.Chat(text=text, client_id=client_id):
            assert 1 <= len(text) <= 2000 and text == text.strip() == value["text"].strip()
            assert client_id == value.get("client_id")
        case protocol.Rename(username=name):
            check_username_rules(name)
        case protocol.History(before=before, limit=limit):
            assert type(limit) is int and 1 <= limit <= 100 and limit == value.get("limit", 50)
            assert before is None or (type(before) is int and before >= 0 and before == value["before"])
        case protocol.Resume(after=after):
            assert type(after) is int and after >= 0 and after == value["after"]
        case protocol.Ping():
            pass
        case _:
            raise AssertionError(f"not a client frame: {frame!r}")


def check_username_rules(name: str) -> None:
    assert validators.check_username(name) == name  # normalization is idempotent
    assert unicodedata.is_normalized("NFC", name)
    assert 1 <= len(name) <= 32 and name == name.strip()
    assert "  " not in name and not any(c in name for c in WHITE_SPACE if c != " ")
    for index, char in enumerate(name):
        if unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp", "Cs"}:
            # only a joiner, and only between two emoji
            assert char == "\u200d" and 0 < index < len(name) - 1, name
            assert unicodedata.category(name[index - 1]) in {"So", "Sk"} or name[index - 1] == "\ufe0f"
            assert unicodedata.category(name[index + 1]) in {"So", "Sk"} or name[index + 1] == "\ufe0f"


def outcome(text: str) -> protocol.ClientFrame | protocol.FrameError:
    """parse_frame's answer; any exception but FrameError fails the test."""
    try:
        return protocol.parse_frame(text)
    except protocol.FrameError as error:
        assert error.code in protocol.ERROR_CODES and error.message
        return error


PROPERTY = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(frames)
@example({"type": "history", "before": 2**63})
@example({"type": "resume", "after": 10**30})
@example({"type": "chat", "text": " " + "x" * 2000 + "\n"})
@example({"type": "chat", "text": "x" * 2001})
@example({"type": "chat", "text": "\u202eevil\u200b\ufeff"})
@example({"type": "rename", "username": "\u202eevil"})
@example({"type": "rename", "username": "\ufeffAda"})
@example({"type": "rename", "username": "👩\u200d💻 <script>"})
@example({"type": "history", "limit": True})
@example({"type": "history", "before": False})
@example({"type": "chat", "text": "hi", "client_id": "a\x00"})
def test_any_json_frame_is_accepted_or_refused_with_the_contract_code(value):
    text = json.dumps(value, ensure_ascii=False)
    assume(len(text.encode()) <= MAX_FRAME_BYTES)
    result = outcome(text)
    event(result.code if isinstance(result, protocol.FrameError) else type(result).__name__)
    allowed = contract_codes(json.loads(text))
    if isinstance(result, protocol.FrameError):
        assert allowed and result.code in allowed, (result.code, allowed)
        if result.client_id is not None:
            assert result.client_id == value.get("client_id")
    else:
        assert not allowed, (result, allowed)
        check_accepted(result, value)


@PROPERTY
@given(st.one_of(any_text, st.binary().map(lambda b: b.decode("latin-1"))))
@example("{")
@example('{"type": "chat", "text": "hi"')
@example("\ufeff{}")
@example("NaN-ish")
def test_text_that_is_not_json_is_bad_json(text):
    try:
        json.loads(text)
    except ValueError:
        pass
    else:
        assume(False)
    result = outcome(text)
    assert isinstance(result, protocol.FrameError) and result.code == "bad_json"


names = st.one_of(
    st.lists(st.one_of(chars, st.sampled_from(HOSTILE)), max_size=60).map("".join),
    # around the 32-character limit, with white space to trim and fold
    st.builds(
        lambda pad, word, n, gap: pad + gap.join([word] * n) + pad,
        st.sampled_from(["", " ", "\t"]),
        st.text(min_size=1, max_size=3),
        st.integers(1, 34),
        st.sampled_from(["", " ", "  "]),
    ),
)


# Letters that show nothing (the contract names these).
FILLERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


@PROPERTY
@given(names)
def test_every_name_the_parser_accepts_keeps_the_rules(raw):
    result = outcome(json.dumps({"type": "rename", "username": raw}))
    if isinstance(result, protocol.FrameError):
        assert result.code == "invalid_username"
        # Refused only for a rule: an empty or long name, a forbidden
        # character, or nothing visible (only separators, marks, fillers).
        folded = " ".join(unicodedata.normalize("NFC", raw).split())
        visible = [c for c in folded if unicodedata.category(c)[0] not in "ZMC" and c not in FILLERS]
        assert (
            not folded
            or len(folded) > 32
            or not visible
            or any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in folded)
            or any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in raw)
        )
    else:
        check_username_rules(result.username)
        assert result.username == validators.check_username(raw)


@PROPERTY
@given(st.one_of(any_text, long_text), st.one_of(st.none(), st.text(max_size=70)))
def test_every_chat_text_is_stored_trimmed_or_refused_for_a_rule(raw, client_id):
    frame = {"type": "chat", "text": raw} | ({} if client_id is None else {"client_id": client_id})
    result = outcome(json.dumps(frame))
    allowed = contract_codes(frame)
    if isinstance(result, protocol.FrameError):
        assert result.code in allowed, (result.code, allowed)
    else:
        assert not allowed
        assert result == protocol.Chat(text=raw.strip(), client_id=client_id)
