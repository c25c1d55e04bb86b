"""Linear time: no regex the parser runs on a raw line may take super-linear time on any line.

Every preset's header regex (from its log format), each of its masks and its session pattern
gets adversarial lines (long runs of what its patterns look for, and lines that almost match
the header and fail at the end) at doubling lengths up to the longest line the service takes;
doubling the length must not much more than double the time. Times are CPU time, compared as
ratios between doubling lengths, so the test needs no wall-clock threshold. Also: RE2's
differences from Python (Unicode classes, lookaround emulation) and the compile helper's
messages.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

import pytest
from preset_examples import EXAMPLES

from flexlog.parsing import PRESETS, LinearMask, PatternError, TemplateParser, compile_linear
from flexlog.parsing.presets import LEGACY_PATTERNS, Preset
from flexlog.parsing.regex import DIGIT, SPACE, WORD

#: The service takes lines of any length up to its request size (8 MiB), and files take lines
#: up to MAX_LOG_LINE_BYTES (1 MiB); 64 KiB keeps this test quick and is far past where the
#: old backtracking patterns blew up (200 bytes took seconds).
MAX_LINE = 64 * 1024
SIZES = [64 << k for k in range(11)]  # 64 B ... 64 KiB
assert SIZES[-1] == MAX_LINE
#: Below this many seconds a measurement is mostly noise and is not compared.
FLOOR = 0.5e-3
#: Doubling the length may at most multiply the time by this (linear: 2).
MAX_RATIO = 3.0

#: Units repeated to a line's length: what the masks, formats and session patterns look for.
UNITS = (
    "a ",
    "a",
    "1",
    "1 ",
    "a:",
    "<",
    "1.",
    "1.1.1.1,",
    "1.1.1.1:1 ",
    "a.",
    "a-",
    "a1 ",
    "a1.",
    "a_1",
    "f",
    "0x1 ",
    "user ",
    "user user ",
    "user=",
    "password for ",
    "password for invalid ",
    "rhost=",
    "(",
    "()",
    "(a.",
    "/a",
    "http://a",
    "environment:a=",
    "\\042a",
    "node-1 0x1 <ok> ",
    "node-[",
    "blk_1 ",
    "job_1_",
    "domain ",
    "Mon Jan 1 00:00:00 2024 ",
    "12:00:00 ",
    "2024-01-01T00:00:00 ",
    "12-01-01",
    "a\xa0",
    "é1",
    "[",
    "[a] ",
    "a sshd[",
)


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


def _generators(preset: Preset) -> dict[str, Callable[[int], str]]:
    gens = {repr(unit): _repeat(unit) for unit in UNITS}
    example = EXAMPLES[preset.name]
    parts = preset.split(example)
    assert parts is not None, f"the {preset.name} example does not fit its format"
    header = example[: len(example) - len(parts["Content"])]
    # The header again and again, less its last separator: it almost matches, every time.
    near = header.rstrip()[:-1] + " " if header.strip() else "a "
    gens["near-miss header"] = _repeat(near)
    gens["header + near-miss tail"] = lambda n: header + _repeat(near)(max(n - len(header), 0))
    gens["example repeated"] = _repeat(example + " ")
    return gens


def _targets() -> dict[str, tuple[Callable[[str], object], list[str]]]:
    """Every distinct regex the presets run on a line, named after the first preset with it:
    id -> (function of a line, the presets that have it)."""
    targets: dict[str, tuple[Callable[[str], object], list[str]]] = {}
    ids: dict[tuple[str, str], str] = {}

    def add(kind: str, pattern: str, fn: Callable[[str], object], preset: str, label: str) -> None:
        key = ids.setdefault((kind, pattern), f"{preset} {label}")
        targets.setdefault(key, (fn, []))[1].append(preset)

    for name, preset in PRESETS.items():
        add("header", preset.log_format, preset.split, name, "header")
        if preset.session_pattern is not None:
            add("session", preset.session_pattern, preset.session_of, name, "session")
        for i, (mask, (_, mask_name)) in enumerate(
            zip(preset.maskers, preset.masking, strict=True)
        ):
            sub = lambda s, m=mask: m.sub("<X>", s)  # noqa: E731
            add("mask", mask.pattern, sub, name, f"mask{i} {mask_name}")
    return targets


def _cpu(fn: Callable[[str], object], line: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn(line)
        times.append(time.process_time() - start)
    return statistics.median(times)


def _check_linear(
    fn: Callable[[str], object], make: Callable[[int], str], sizes: list[int] = SIZES
) -> str | None:
    """None if ``fn``'s time grows linearly over ``sizes``, else a description of the jump.

    One run per length; a ratio over MAX_RATIO (between lengths both above FLOOR) is measured
    again, median of 7 runs each, before it counts.
    """
    prev = None
    for n in sizes:
        line = make(n)
        t = _cpu(fn, line, 1)
        if prev is not None and prev >= FLOOR and t / prev > MAX_RATIO:
            # Measure both points again, more carefully, before calling it.
            before, t = _cpu(fn, make(n // 2), 7), _cpu(fn, line, 7)
            if before >= FLOOR and t / before > MAX_RATIO:
                return f"{n // 2} -> {n} chars: {before * 1e3:.2f} -> {t * 1e3:.2f} ms"
        prev = t
    return None


_TARGETS = _targets()


@pytest.mark.parametrize("target", sorted(_TARGETS))
def test_regex_time_is_linear(target: str) -> None:
    fn, presets = _TARGETS[target]
    failures = []
    # The units, plus each preset's near-miss lines (a header's own, a mask's first preset's).
    gens: dict[str, Callable[[int], str]] = {}
    for name in presets if target.endswith(" header") else presets[:1]:
        gens.update(
            {
                f"{k} ({name})" if "header" in k or "example" in k else k: g
                for k, g in _generators(PRESETS[name]).items()
            }
        )
    for label, make in gens.items():
        jump = _check_linear(fn, make)
        if jump is not None:
            failures.append(f"{label}: {jump}")
    assert not failures, f"{target} (presets {presets}) is super-linear on: {failures}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_whole_parse_is_linear(preset: str) -> None:
    """Fit and parse one long line end to end: header, masks, Drain, session."""

    def parse(line: str) -> object:
        return TemplateParser(preset).parse([line])

    gens = _generators(PRESETS[preset])
    failures = []
    for label in ("'a '", "'a.'", "'a-'", "'1.1.1.1,'", "'user user '", "near-miss header"):
        jump = _check_linear(parse, gens[label])
        if jump is not None:
            failures.append(f"{label}: {jump}")
    assert not failures, f"{preset}: parsing is super-linear on: {failures}"


def test_the_old_backtracking_patterns_are_caught() -> None:
    """The check itself: Python's re on the old patterns fails it."""
    quadratic = re.compile(r"(?<![\w<])[A-Za-z_][\w.-]*\d[\w.-]*(?![\w>])")  # old MASK_ALNUM
    assert _check_linear(lambda s: quadratic.sub("<ID>", s), _repeat("a.")) is not None
    # The old hdfs header: 2 s on 200 bytes; here 48 -> 96 bytes is already a 30x jump.
    header = re.compile(
        r"^(?P<Date>.*?)\s+(?P<Time>.*?)\s+(?P<Pid>.*?)\s+(?P<Level>.*?)\s+(?P<Component>.*?):"
        r"\s+(?P<Content>.*?)$"
    )
    assert _check_linear(header.match, _repeat("a "), [48, 96, 192]) is not None


# -- RE2 and Python ---------------------------------------------------------------------------


def _python_header(log_format: str) -> re.Pattern[str]:
    """The format compiled as before, with Python's re (loghub's recipe)."""
    parts = re.split(r"<([^<>]+)>", log_format)
    regex = "".join(
        re.sub(" +", r"\\s+", part) if i % 2 == 0 else f"(?P<{part}>.*?)"
        for i, part in enumerate(parts)
    )
    return re.compile("^" + regex + "$")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_header_fields_as_with_python(preset: str) -> None:
    """Same fields as Python's re, also with a final newline, an inner one, odd spaces."""
    python = _python_header(PRESETS[preset].log_format)
    example = EXAMPLES[preset]
    lines = [example, example + "\n", example.replace(" ", "\n", 1), example + "\n\n", ""]
    lines += [example.replace(" ", sep) for sep in ("\t", "\xa0", "\u3000", "  \n ", "\x0b")]
    lines += [example[:i] for i in range(0, len(example), 7)]
    for line in lines:
        m = python.match(line)
        expected = None if m is None else {k: v or "" for k, v in m.groupdict().items()}
        assert PRESETS[preset].split(line) == expected, repr(line)


def test_header_prefix_shortcut_keeps_alternation_semantics() -> None:
    for fmt, line in [("a|<Content>", "xyz"), ("a|<Content>", "ab"), (r"(?:x)?<Content>", "xy")]:
        m = _python_header(fmt).match(line)
        expected = None if m is None else {k: v or "" for k, v in m.groupdict().items()}
        assert Preset(name="t", log_format=fmt).split(line) == expected, (fmt, line)


def test_unicode_classes_match_pythons() -> None:
    chars = "a_Zé用Ⅻ²٣9 \t\n\x0b\x1c\x85\xa0\u2003\u3000-.<>$\u200b\ufeff"
    for python, linear in ((r"\w", f"[{WORD}]"), (r"\d", DIGIT), (r"\s", f"[{SPACE}]")):
        rx = compile_linear(linear, what="test")
        for c in chars:
            assert bool(re.fullmatch(python, c)) == bool(rx.fullmatch(c)), (python, c)


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"(?<=user )\S+", "lookbehind"),
        (r"(?<!x)y", "lookbehind"),
        (r"\d+(?= ms)", "lookahead"),
        (r"a(?!b)", "lookahead"),
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(?>a+)b", "atomic group"),
        (r"a*+b", "possessive quantifier"),
        (r"\C", r"\C"),
    ],
)
def test_backtracking_constructs_are_refused_by_name(pattern: str, construct: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_linear(pattern, what="--mask")
    message = str(info.value)
    assert message.startswith("--mask ") and repr(pattern) in message
    assert construct in message and "linear time" in message
    assert isinstance(info.value, ValueError)


def test_invalid_patterns_name_pattern_and_source() -> None:
    with pytest.raises(ValueError, match=r"^--log-format '\(unclosed' is not a valid regex"):
        compile_linear("(unclosed", what="--log-format")
    with pytest.raises(ValueError, match=r"preset 'x': log_format .*lookbehind"):
        Preset(name="x", log_format=r"(?<=a)<Content>")
    with pytest.raises(ValueError, match=r"preset 'x': mask NUM .*lookahead"):
        Preset(name="x", log_format="<Content>", masking=((r"\d+(?!x)", "NUM"),))
    with pytest.raises(ValueError, match=r"preset 'x': session_pattern .*backreference"):
        Preset(name="x", log_format="<Content>", session_pattern=r"(a)\1")


def test_python_only_escapes_are_translated() -> None:
    assert compile_linear(r"ab\Z", what="t").search("xab") is not None
    assert compile_linear(r"ab\Z", what="t").search("abx") is None
    assert compile_linear(r"\u00e9\U0001F600", what="t").fullmatch("é😀") is not None


def test_mask_group_replaces_only_the_value() -> None:
    mask = LinearMask(r"(?:^|[^A-Za-z0-9_.])(?P<mask>\d+)(?:$|[^A-Za-z0-9_])", what="t")
    text = "1 2,3 a4 5.6 7"
    assert mask.sub("<N>", text) == "<N> <N>,<N> a4 <N>.6 <N>"
    assert mask.sub("<N>", text) == re.sub(r"(?<![A-Za-z0-9_.])\d+(?![A-Za-z0-9_])", "<N>", text)
    assert mask.lookback == 1
    # Context before the value may reach into the previous match, as a lookbehind would.
    user = LinearMask(PRESETS["linux"].masking[3][0], what="t")
    assert user.sub("<U>", "user x.user bob") == "user <U> <U>"
    assert user.sub("<U>", "Invalid user user from") == "Invalid user <U> from"
    # Replacement text is literal; lone surrogates pass through.
    assert LinearMask("b", what="t").sub(r"\1\g<0>", "abc") == r"a\1\g<0>c"
    assert LinearMask("b", what="t").sub("<B>", "\ud800b\udfff") == "\ud800<B>\udfff"
    # Empty matches, as re.sub: between characters, never inside one.
    assert LinearMask("x*", what="t").sub("-", "éxé") == re.sub("x*", "-", "éxé")


def test_legacy_patterns_load_as_today() -> None:
    """A parser state saved with the old Python patterns loads with the RE2 ones."""
    new_to_old = {}
    for old, new in LEGACY_PATTERNS.items():
        new_to_old.setdefault(new, old)
    for preset in PRESETS.values():
        state = preset.to_dict()
        state["masking"] = [[new_to_old[r], m] for r, m in state["masking"]]
        if state["session_pattern"]:
            state["session_pattern"] = new_to_old[state["session_pattern"]]
        assert any("(?<" in r or "\\d" in r for r, _ in state["masking"])
        assert Preset.from_dict(state) == preset


def test_lone_surrogate_lines_are_rejected_not_crashed() -> None:
    from flexlog.data.records import IngestReport

    report = IngestReport()
    parsed = TemplateParser("generic").parse(["fine line 1", "bad \ud800 line"], report=report)
    assert [p.line for p in parsed] == [1]
    assert report.rejections[0].reason == "is not valid Unicode (a lone surrogate)"
