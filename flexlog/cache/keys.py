"""Cache keys, and the validation and encoding of what an entry holds (events, label, votes).

Everything here checks its input completely before the cache writes anything: an event
sequence that cannot be keyed (or stored as text) is refused with ValueError or TypeError.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence

__all__ = [
    "check_label",
    "check_votes",
    "events_json",
    "intern_events",
    "key_of",
    "resolve",
    "votes_json",
]

SEP = "\x1f"
_json_str = json.encoder.encode_basestring_ascii  # C-accelerated string escaping
_HEX = frozenset("0123456789abcdef")
_BINARY = frozenset((0, 1))
_ONLY_STR = frozenset((str,))
_ONLY_INT = frozenset((int,))


def key_of(events: Sequence[str]) -> str:
    """The stable cache key of an event sequence: hex SHA-256 of the events joined by U+001F
    and encoded as UTF-8.

    The encoding is unambiguous because an empty sequence and events containing U+001F are
    rejected (ValueError); so are events that are not valid Unicode text (a lone surrogate
    such as ``"\\udfff"``, which JSON escapes can produce), since they can neither be keyed
    nor stored and served back as text.
    """
    if isinstance(events, (str, bytes)):
        raise TypeError("events must be a sequence of strings, not a single string")
    joined = SEP.join(events)
    if not events or joined.count(SEP) != len(events) - 1:
        raise ValueError(
            "events must be a non-empty sequence of strings without the U+001F separator"
        )
    try:
        data = joined.encode("utf-8")
    except UnicodeEncodeError as exc:
        index = joined.count(SEP, 0, exc.start)
        raise ValueError(
            f"event {index} contains a lone surrogate {joined[exc.start]!r}: events must be "
            "valid Unicode text"
        ) from None
    return hashlib.sha256(data).hexdigest()


def resolve(events_or_key: Sequence[str] | str) -> tuple[str, tuple[str, ...] | None]:
    """The key and the events of a request: a 64-digit hex key (events None) or events."""
    if isinstance(events_or_key, str):
        key = events_or_key.lower()
        if len(key) != 64 or not _HEX.issuperset(key):
            raise ValueError(
                "a bare string must be a 64-digit hex cache key; pass events as a tuple "
                f"of strings (got {events_or_key[:80]!r})"
            )
        return key, None
    events = tuple(events_or_key)
    return key_of(events), events


def check_label(label: object) -> int:
    """A 0/1 label as an int (bools and equal numbers accepted); ValueError otherwise."""
    if type(label) is int and (label == 0 or label == 1):
        return label
    if isinstance(label, bool) or label in (0, 1):
        return int(label)  # type: ignore[call-overload]
    raise ValueError(f"label must be 0 or 1, got {label!r}")


def check_votes(votes: object) -> dict[str, int]:
    """A copy of ``votes`` as {voter name: 0/1}; None is no votes. ValueError otherwise."""
    if votes is None:
        return {}
    if (
        type(votes) is dict
        and _ONLY_STR.issuperset(map(type, votes))
        and _ONLY_INT.issuperset(map(type, votes.values()))
        and _BINARY.issuperset(votes.values())
        and all(map(str.isascii, votes))
    ):
        return votes.copy()  # fast path; a copy, so the caller may reuse its dict
    if not isinstance(votes, dict):
        raise ValueError(f"votes must be a dict of voter name to 0/1, got {type(votes).__name__}")
    out = {}
    for name, vote in votes.items():
        if not isinstance(name, str):
            raise ValueError(f"voter names must be strings, got {name!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"voter name {name!r} is not valid Unicode text") from None
        try:
            out[name] = check_label(vote)
        except ValueError:
            raise ValueError(f"vote of {name!r} must be 0 or 1, got {vote!r}") from None
    return out


def events_json(events: Sequence[str]) -> str:
    """JSON array text of the events (json.dumps builds an encoder per call: too slow here)."""
    return "[" + ",".join(map(_json_str, events)) + "]"


def votes_json(votes: dict[str, int]) -> str:
    """JSON object text of normalised votes (int values)."""
    return "{" + ",".join([f"{_json_str(k)}:{v}" for k, v in votes.items()]) + "}"


def intern_events(events: Iterable[str]) -> tuple[str, ...]:
    """The events as a tuple of interned strings: template keys repeat across entries."""
    try:
        return tuple(map(sys.intern, events))
    except TypeError:  # a str subclass cannot be interned
        return tuple(events)
