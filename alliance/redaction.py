"""What may leave the system as text: engine messages without cell values, and plain one-line text.

Parsing engines (Polars, fastexcel, the json and csv modules, Great Expectations) quote the value they
choked on. A value in a clinic export may be a client's name or a note, so their messages are rewritten
here before they reach an error, the ledger, a flow result or a log: each quoted value becomes the kind
of value it was (empty, text, number shape, date shape). Text a person typed or a file carried (reviewer
names, therapist ids) is made safe for terminals and chat channels by ``plain_text``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# ANSI/VT escape sequences (CSI, OSC, other ESC-introduced), then any remaining control character.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
# Slack/Mattermost special mentions and user/channel/group references: <!channel>, <@U123>, <#C1|x>, <!subteam^S1>
_ANGLE_MENTION = re.compile(r"<([!@#][^<>]*)>")
# Plain-text broadcast mentions (Slack, Mattermost, Discord, Teams): @here, @channel, @everyone, @all
_WORD_MENTION = re.compile(r"@(?=(?:here|channel|everyone|all|group)\b)", re.IGNORECASE)
FULLWIDTH_AT = "\uff20"  # looks like @ to a reader, never a mention to a chat service

_NUMBER = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{1,4}[-./]\d{1,2}[-./]\d{1,4}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
# A quoted span in an engine message: `…`, "…" or '…' (the last only when it does not look like an apostrophe).
# An unclosed quote runs to the end: a cell holding a line break is cut there by the engine's first line.
_QUOTED = re.compile(r"`([^`]*)(?:`|$)|\"((?:[^\"\\]|\\.)*)(?:\"|$)|(?<![\w])'((?:[^'\\]|\\.)*)'(?![\w])")
# Words that engines put in quotes and that are never client data: dtypes and CSV/JSON vocabulary.
_ENGINE_WORDS = frozenset(
    {"str", "string", "utf8", "i64", "i32", "f64", "f32", "bool", "date", "datetime", "null", "list", "struct"}
)
MAX_MESSAGE = 300


def value_kind(value: str | None) -> str:
    """The kind of a cell value, never the value: 'empty', 'a number shape', 'a date shape' or 'text'.

    Example: ``value_kind("Jane Doe")`` is ``'text'``; ``value_kind("8,5")`` is ``'a number shape'``.
    """
    if value is None or not value.strip():
        return "empty"
    stripped = value.strip().strip('"').strip()
    if not stripped:
        return "empty"
    if _NUMBER.fullmatch(stripped):
        return "a number shape"
    if _DATE.fullmatch(stripped):
        return "a date shape"
    return "text"


def redact_values(message: str, columns: Iterable[str] = ()) -> str:
    """An engine message with every quoted value replaced by its kind; known column names and dtypes are kept.

    Example: ``redact_values("could not parse `Jane` as dtype `str` at column 'Notes'", ["Notes"])`` gives
    ``"could not parse <text> as dtype `str` at column 'Notes'"``.
    """
    keep = {c for c in columns if c}

    def replace(match: re.Match[str]) -> str:
        inner = next(group for group in match.groups() if group is not None)
        if inner in keep or inner.lower() in _ENGINE_WORDS or (len(inner) == 1 and not inner.isalnum()):
            return match.group(0)
        return f"<{value_kind(inner)}>"

    return _QUOTED.sub(replace, message)


def engine_problem(exc: BaseException, columns: Iterable[str] = ()) -> str:
    """One line describing a library exception for people, with no value of the file in it.

    Only the first line is used (engines add hints and stack traces below it); quoted values become kinds;
    control characters are dropped; the length is capped.
    """
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return plain_text(redact_values(first, columns), MAX_MESSAGE)


def plain_text(text: str | None, limit: int | None = None) -> str:
    """Text safe for a terminal, an alert channel or an audit row: no control characters, no mentions.

    ANSI escapes are removed, CR/LF and other control characters become one space, and chat mention syntax
    (``<!channel>``, ``<@U123>``, ``@here``, ``@channel``) is neutralised so no channel is pinged.
    Example: ``plain_text("Dr Lee\\x1b[2J <!channel>")`` is ``'Dr Lee ‹!channel›'``.
    """
    if text is None:
        return ""
    cleaned = _ESCAPES.sub("", str(text))
    cleaned = _CONTROL.sub(" ", cleaned)
    cleaned = _ANGLE_MENTION.sub(lambda m: f"\u2039{m.group(1)}\u203a", cleaned)
    cleaned = _WORD_MENTION.sub(FULLWIDTH_AT, cleaned)
    cleaned = re.sub(r" {2,}", " ", cleaned).strip()
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned
