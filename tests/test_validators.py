"""The rules for names, texts, rooms and client ids (no database)."""

import pytest
from django.core.exceptions import ValidationError

from chat import validators


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ada  ", "Ada"),
        ("Ada \t\n  Lovelace", "Ada Lovelace"),
        ("Cafe\u0301", "Café"),  # NFC: e + combining acute -> é
        ("x" * 32, "x" * 32),
        ("👩\u200d💻 dev", "👩\u200d💻 dev"),  # ZWJ inside an emoji sequence
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),
        ("🧑🏽\u200d🚀", "🧑🏽\u200d🚀"),  # skin tone modifier before the joiner
        ("名前", "名前"),
        ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # just text; escaped when shown
        ("javascript:alert(1)", "javascript:alert(1)"),
        # Blanks and marks next to something visible are part of a name.
        ("e\u0301", "\u00e9"),
        ("\u0915\u093f", "\u0915\u093f"),  # Devanagari ki: a letter and its vowel sign (Mc)
        ("\u2764\ufe0f", "\u2764\ufe0f"),  # red heart: symbol + variation selector
        ("\u3164Ada", "\u3164Ada"),
        ("\u2800 x", "\u2800 x"),
        ("\ue000", "\ue000"),  # private use: drawn by some font, or as a box
    ],
)
def test_check_username_normalizes(raw, expected):
    assert validators.check_username(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "x" * 33,
        "evil\u202etxt.exe",  # right-to-left override (Cf)
        "a\u200bb",  # zero-width space (Cf)
        "\ufeffAda",  # byte order mark / zero-width no-break space (Cf)
        "a\u2066b\u2069",  # bidi isolate (Cf)
        "a\u200fb",  # right-to-left mark (Cf)
        "<b>\u202d</b>",  # an override inside HTML-looking text
        "a\u200db",  # ZWJ between letters, not emoji
        "\u200d👩",  # ZWJ at the start
        "line\u2028break",  # line separator (Zl)
        "para\u2029graph",  # paragraph separator (Zp)
        "bell\x07",  # control (Cc)
        "nul\x00",
        "lone\ud800surrogate",
        # Nothing visible: fillers, blank braille, lone marks, unassigned ignorables.
        "\u3164",
        "\u3164 \u3164",
        "\u115f\u1160",
        "\uffa0",
        "\u2800\u2800\u2800",
        "\u0301",
        "\u0301\u0302 \u0303",
        "\u20dd",  # enclosing circle (Me)
        "\u0903",  # Devanagari visarga alone (Mc)
        "\u3164\u0301",
        "\ufe0f",
        "\ufff0",
        "\U000e0100",  # variation selector 17 (Mn, plane 14)
        None,
        42,
        ["Ada"],
    ],
)
def test_check_username_rejects(raw):
    with pytest.raises(ValidationError) as info:
        validators.check_username(raw)
    assert info.value.code == "invalid_username"


def test_username_length_counts_after_folding():
    # 40 characters typed, 32 after folding the run of spaces.
    assert validators.check_username("a" + " " * 9 + "b" * 30) == "a " + "b" * 30


def test_check_text_trims_and_keeps_line_breaks():
    assert validators.check_text("  hi\nthere\t ") == "hi\nthere"
    assert validators.check_text("x" * 2000) == "x" * 2000
    assert validators.check_text("<b>bold</b>") == "<b>bold</b>"  # stored as typed, shown as text


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "invalid_text"),
        (" \n\t ", "invalid_text"),
        ("x" * 2001, "text_too_long"),
        ("a\x00b", "invalid_text"),
        ("a\x1bb", "invalid_text"),
        ("a\udfffb", "invalid_text"),
        (None, "invalid_text"),
        (12, "invalid_text"),
        ({"t": 1}, "invalid_text"),
    ],
)
def test_check_text_rejects(raw, code):
    with pytest.raises(ValidationError) as info:
        validators.check_text(raw)
    assert info.value.code == code


def test_text_limit_applies_after_trimming():
    assert validators.check_text(" " * 10 + "x" * 2000 + " " * 10) == "x" * 2000


@pytest.mark.parametrize("room", ["lobby", "a", "A-b_9", "x" * 50])
def test_check_room_accepts(room):
    assert validators.check_room(room) == room


@pytest.mark.parametrize("room", ["", "x" * 51, "a b", "a/b", "é", "lobby\n"])
def test_check_room_rejects(room):
    with pytest.raises(ValidationError):
        validators.check_room(room)


def test_check_client_id():
    assert validators.check_client_id(None) is None
    assert validators.check_client_id("c" * 64) == "c" * 64
    for bad in ["", "c" * 65, 5, ["x"], "a\x00"]:
        with pytest.raises(ValidationError) as info:
            validators.check_client_id(bad)
        assert info.value.code == "invalid_request"
