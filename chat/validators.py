"""The rules for room names, display names and message texts.

Each ``check_*`` function normalizes its input and returns it, or raises
``ValidationError`` with a code the wire protocol reports unchanged. The
websocket, the admin and the services all go through these functions.
"""

import re
import unicodedata

from django.core.exceptions import ValidationError

ROOM_PATTERN = r"[A-Za-z0-9_-]{1,50}"
USERNAME_MAX_LENGTH = 32
TEXT_MAX_LENGTH = 2000
CLIENT_ID_MAX_LENGTH = 64

_ROOM_RE = re.compile(rf"\A{ROOM_PATTERN}\Z")
# White space that is folded: ASCII tab, line feed, vertical tab, form feed,
# carriage return, and the space separators (Zs). Line and paragraph
# separators (Zl, Zp) are refused instead, like the other invisible characters.
_WHITESPACE_RUN = re.compile(r"[\t\n\v\f\r\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
# Control, format (bidi overrides, zero-width), line and paragraph separators,
# and lone surrogates (which no database can store as UTF-8).
_FORBIDDEN_IN_NAMES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# Texts keep tabs and line breaks; other control characters and surrogates
# are refused (PostgreSQL cannot store NUL at all).
_ALLOWED_TEXT_CONTROLS = {"\t", "\n", "\r"}
# What shows nothing by itself, for the rule that a name needs one visible
# character. Whole categories: separators, marks (drawn on the character
# before them), control and format characters. Then letters and symbols drawn
# as blank space, the favourites for names that look empty: the Hangul
# fillers and the blank braille pattern. Then the default-ignorable code
# points not assigned yet, which renderers must not show: U+2065,
# U+FFF0-U+FFF8 and plane 14 (``_is_visible``).
_BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Mn", "Mc", "Me", "Cc", "Cf", "Cs"})
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u2065") | frozenset(map(chr, range(0xFFF0, 0xFFF9)))
_ZWJ = "\u200d"
_VARIATION_SELECTOR_16 = "\ufe0f"


def check_room(room: str) -> str:
    """Return ``room`` if it is a valid room name (1-50 of ``A-Z a-z 0-9 _ -``)."""
    if not isinstance(room, str) or not _ROOM_RE.match(room):
        raise ValidationError("Room names are 1-50 letters, digits, _ or -.", code="invalid_room")
    return room


def _is_emoji(char: str) -> bool:
    # Pictographs are "So"; skin-tone modifiers are "Sk"; VS16 makes the
    # preceding character render as emoji.
    return unicodedata.category(char) in {"So", "Sk"} or char == _VARIATION_SELECTOR_16


def _joins_emoji(name: str, index: int) -> bool:
    return 0 < index < len(name) - 1 and _is_emoji(name[index - 1]) and _is_emoji(name[index + 1])


def _is_visible(char: str) -> bool:
    return (
        unicodedata.category(char) not in _BLANK_CATEGORIES
        and char not in _BLANK_CHARACTERS
        and not 0xE0000 <= ord(char) <= 0xE0FFF
    )


def check_username(username: object) -> str:
    """Normalize a display name: trim, NFC, fold inner white space; 1-32 characters.

    Control, format and separator characters are refused, except a zero-width
    joiner between two emoji (family and profession emoji need it). At least
    one character must be visible: fillers and lone combining marks alone
    would show an empty name.
    """
    if not isinstance(username, str):
        raise ValidationError("A name must be a string.", code="invalid_username")
    name = _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", username)).strip()
    if not name:
        raise ValidationError("A name cannot be empty.", code="invalid_username")
    if len(name) > USERNAME_MAX_LENGTH:
        raise ValidationError(f"A name has at most {USERNAME_MAX_LENGTH} characters.", code="invalid_username")
    for index, char in enumerate(name):
        if unicodedata.category(char) in _FORBIDDEN_IN_NAMES and not (char == _ZWJ and _joins_emoji(name, index)):
            raise ValidationError(
                f"A name cannot contain the invisible or control character U+{ord(char):04X}.",
                code="invalid_username",
            )
    if not any(map(_is_visible, name)):
        raise ValidationError("A name needs at least one visible character.", code="invalid_username")
    return name


def check_text(text: object) -> str:
    """Trim a message text; 1-2000 characters, no control characters but tab and newline."""
    if not isinstance(text, str):
        raise ValidationError("A message text must be a string.", code="invalid_text")
    text = text.strip()
    if not text:
        raise ValidationError("A message cannot be empty.", code="invalid_text")
    if len(text) > TEXT_MAX_LENGTH:
        raise ValidationError(f"A message has at most {TEXT_MAX_LENGTH} characters.", code="text_too_long")
    for char in text:
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _ALLOWED_TEXT_CONTROLS) or category == "Cs":
            raise ValidationError(
                f"A message cannot contain the control character U+{ord(char):04X}.",
                code="invalid_text",
            )
    return text


def check_client_id(client_id: object) -> str | None:
    """Return a valid optional ``client_id`` (a string of at most 64 characters)."""
    if client_id is None:
        return None
    if (
        not isinstance(client_id, str)
        or not 1 <= len(client_id) <= CLIENT_ID_MAX_LENGTH
        or any(unicodedata.category(c) in {"Cc", "Cs"} for c in client_id)
    ):
        raise ValidationError(
            f"client_id must be a string of 1-{CLIENT_ID_MAX_LENGTH} characters.",
            code="invalid_request",
        )
    return client_id
