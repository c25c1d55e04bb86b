"""Presets without code: from command-line options (``--log-format``, ``--mask REGEX=NAME``,
``--sim-th``, ``--depth``, ``--session-pattern``) and from YAML files holding the same keys as a
built-in preset (``flexlog presets show NAME`` prints one to start from).

A YAML preset file::

    name: myapp
    log_format: "<Date> <Time> <Level> <Component>: <Content>"
    masking:                      # applied in order; the matched text (or its `mask` group)
      - {regex: "req-[0-9a-f]+", name: REQ}   # becomes <NAME>
    sim_th: 0.5
    depth: 4
    session_pattern: "(req-[0-9a-f]+)"        # optional: group 1 is the session id
    timestamp_fields: [Date, Time]            # optional, for --partition time
    timestamp_format: "%Y-%m-%d %H:%M:%S"

Every regex is RE2 syntax (see :mod:`flexlog.parsing.regex`); errors name the file and key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from flexlog.data.records import InputError
from flexlog.parsing.presets import COMMON_MASKS, Preset, get_preset

#: The keys a preset file may hold (those of :class:`Preset`).
PRESET_KEYS = tuple(f.name for f in dataclasses.fields(Preset))
_MASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIELD = re.compile(r"<([^<>]*)>")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse_mask(text: str) -> tuple[str, str]:
    """``REGEX=NAME`` (split at the last ``=``, so the regex may hold ``=``) → the pair."""
    regex, sep, name = text.rpartition("=")
    if not sep or not regex:
        raise InputError(f"--mask {text!r}: expected REGEX=NAME")
    if not _MASK_NAME.fullmatch(name):
        raise InputError(
            f"--mask {text!r}: the name {name!r} must be a word (letters, digits, underscore)"
        )
    return regex, name


def check_log_format(log_format: str, *, where: str = "--log-format") -> str:
    """A loghub format string with distinct, well-formed fields and a ``<Content>`` field."""
    names = _FIELD.findall(log_format)
    for name in names:
        if not _FIELD_NAME.fullmatch(name):
            raise InputError(f"{where} {log_format!r}: field <{name}> is not a word")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{where} {log_format!r}: field <{name}> appears twice")
        seen.add(name)
    if "Content" not in seen:
        raise InputError(f"{where} {log_format!r}: needs a <Content> field (the message)")
    return log_format


def load_preset_file(path: str | Path) -> Preset:
    """A preset from a YAML file; InputError naming the file and the key that is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the preset file ({exc.strerror})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a YAML preset file ({exc})") from exc
    return preset_from_dict(data, source=str(path))


def preset_from_dict(data: object, *, source: str = "<preset>") -> Preset:
    """A preset from a mapping of :data:`PRESET_KEYS` (``masking``: ``{regex, name}``
    mappings or ``[regex, name]`` pairs); InputError naming the key."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a preset is a mapping of {', '.join(PRESET_KEYS)}")
    unknown = sorted(set(data) - set(PRESET_KEYS))
    if unknown:
        raise InputError(f"{source}: unknown keys {unknown}; a preset has {list(PRESET_KEYS)}")
    for key in ("name", "log_format"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InputError(f"{source}: '{key}' must be a non-empty string")
    check_log_format(data["log_format"], where=f"{source}: log_format")
    fields = dict(data)
    fields["masking"] = _masking(data.get("masking", list(COMMON_MASKS)), source)
    try:
        return Preset(**fields)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: {exc}") from exc


def _masking(value: object, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise InputError(f"{source}: 'masking' must be a list of {{regex, name}} items")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and set(item) == {"regex", "name"}:
            regex, name = item["regex"], item["name"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            regex, name = item
        else:
            raise InputError(f"{source}: masking[{i}] must be {{regex: ..., name: ...}}")
        if (
            not isinstance(regex, str)
            or not isinstance(name, str)
            or not _MASK_NAME.fullmatch(name)
        ):
            raise InputError(f"{source}: masking[{i}] needs a regex string and a word as name")
        out.append((regex, name))
    return tuple(out)


def preset_yaml(preset: Preset) -> str:
    """The preset as a YAML preset file (what ``flexlog presets show NAME`` prints)."""
    data: dict[str, Any] = {
        "name": preset.name,
        "description": preset.description,
        "log_format": preset.log_format,
        "masking": [{"regex": r, "name": n} for r, n in preset.masking],
        "sim_th": preset.sim_th,
        "depth": preset.depth,
        "session_pattern": preset.session_pattern,
        "extra_delimiters": list(preset.extra_delimiters),
        "parametrize_numeric_tokens": preset.parametrize_numeric_tokens,
        "timestamp_fields": list(preset.timestamp_fields),
        "timestamp_format": preset.timestamp_format,
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def resolve_preset(
    preset: str | None = None,
    *,
    preset_file: str | Path | None = None,
    log_format: str | None = None,
    masks: Sequence[str] = (),
    sim_th: float | None = None,
    depth: int | None = None,
    session_pattern: str | None = None,
) -> Preset:
    """The preset the options describe: a built-in (``preset``, default ``generic``) or a
    file, with ``log_format``, ``sim_th``, ``depth`` and ``session_pattern`` replacing its own
    and the ``--mask`` masks applied before its masks. A format given without a preset is
    named ``custom``."""
    if preset is not None and preset_file is not None:
        raise InputError("give --preset or --preset-file, not both")
    if preset_file is not None:
        base = load_preset_file(preset_file)
    else:
        try:
            base = get_preset(preset or "generic")
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    changes: dict[str, Any] = {}
    if log_format is not None:
        changes["log_format"] = check_log_format(log_format)
        if preset is None and preset_file is None:
            changes["name"] = "custom"
    if masks:
        changes["masking"] = (*(parse_mask(m) for m in masks), *base.masking)
    if sim_th is not None:
        changes["sim_th"] = sim_th
    if depth is not None:
        changes["depth"] = depth
    if session_pattern is not None:
        changes["session_pattern"] = session_pattern
    if not changes:
        return base
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from exc


__all__ = [
    "PRESET_KEYS",
    "check_log_format",
    "load_preset_file",
    "parse_mask",
    "preset_from_dict",
    "preset_yaml",
    "resolve_preset",
]
