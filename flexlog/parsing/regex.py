"""Linear-time regular expressions for log text: every pattern run on raw lines uses RE2.

Python's ``re`` backtracks: a log format or mask that almost matches can take time exponential
(or quadratic) in the line's length, and holds the GIL while it does. RE2 (the ``google-re2``
package) matches in time linear in the text, and refuses the constructs that need backtracking.
Every regex this package applies to log text is compiled here, by :func:`compile_linear`.

Patterns are RE2 syntax (https://github.com/google/re2/wiki/Syntax). Differences from Python's
``re`` that matter when porting a pattern:

* No lookahead or lookbehind (``(?=``, ``(?!``, ``(?<=``, ``(?<!``), backreferences (``\\1``,
  ``(?P=name)``), atomic groups or possessive quantifiers: :func:`compile_linear` rejects them
  with a message naming the pattern. In a mask, write the context as part of the match and put
  the value in a group named ``mask`` (see :class:`LinearMask`).
* ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII-only; Python's (for ``str``) are Unicode. Use
  :data:`DIGIT`, ``[`` + :data:`WORD` + ``]`` and ``[`` + :data:`SPACE` + ``]`` for Python's
  meaning (``\\p{Nd}``, ``[\\p{L}\\p{N}_]``, ...).
* ``$`` matches only at the very end (Python's also matches before a final newline); ``\\Z`` is
  accepted here and means ``\\z``. ``\\uXXXX`` and ``\\UXXXXXXXX`` are accepted and translated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import re2

from flexlog.data.records import InputError

#: Python's ``\\d`` for ``str`` patterns (Unicode decimal digits), for RE2.
DIGIT = r"\p{Nd}"
#: Python's ``\\w`` for ``str`` patterns, as the inside of an RE2 character class.
WORD = r"\p{L}\p{N}_"
#: Python's ``\\s`` for ``str`` patterns (``str.isspace``), as the inside of an RE2 class.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"

#: How many characters of context before a ``mask`` group may overlap the previous match.
MAX_LOOKBACK = 32

_SYNTAX_URL = "https://github.com/google/re2/wiki/Syntax"
_INF = float("inf")


class PatternError(InputError):
    """A pattern that is not valid RE2, or that needs backtracking; names the pattern."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print parse errors to stderr; we raise instead
    return options


_OPTIONS = _options()


def compile_linear(pattern: str, *, what: str):
    """Compile ``pattern`` with RE2; a :class:`PatternError` (a ``ValueError``) names it.

    ``what`` says where the pattern came from (``"preset 'hdfs': mask"``, ``"--mask"``...) and
    starts the error message. Constructs RE2 cannot run in linear time (lookaround,
    backreferences, atomic groups, possessive quantifiers, ``\\C``) get a message of their own.
    The returned object has the ``re``-like API of the ``re2`` module (``match``, ``search``,
    ``finditer``, ``groups``, ``groupindex``...), over ``str`` or UTF-8 ``bytes``.
    """
    if not isinstance(pattern, str):
        raise PatternError(f"{what} must be a string, got {type(pattern).__name__}")
    translated, _ = _analyse(pattern, what)
    try:
        return re2.compile(translated, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise PatternError(
            f"{what} {pattern!r} is not a valid regex for RE2: {detail} (syntax: {_SYNTAX_URL})"
        ) from None


def reject_backtracking(pattern: str, *, what: str) -> None:
    """Raise :class:`PatternError`, as :func:`compile_linear` would, if ``pattern`` (which may
    be a fragment of a larger pattern) uses a construct that needs backtracking."""
    _analyse(pattern, what)


def is_sequence(pattern: str) -> bool:
    """Whether ``pattern`` is one sequence at the top level: no ``|`` or ``)`` outside a group,
    so that a pattern appended to it follows all of it."""
    parser = _Parser(pattern, "pattern")
    try:
        parser.sequence()
    except PatternError:
        return False
    return parser.i == len(pattern)


# -- pattern analysis -----------------------------------------------------------------------


def _is_mask_name(name: str) -> bool:
    return name == "mask" or name.startswith("mask_")


@dataclass
class _Width:
    """What the analysis knows of a pattern piece: min and max characters; the most it can
    consume before entering a ``mask`` group (``before``; None when it has none); the text it
    always matches (``exact``; None when it varies); and a text every match contains
    (``required``)."""

    lo: float = 0
    hi: float = 0
    before: float | None = None
    exact: str | None = ""
    required: str = ""


def _literal(text: str) -> _Width:
    return _Width(len(text), len(text), None, text, text)


def _any_char() -> _Width:
    return _Width(1, 1, None, None, "")


def _longest(*texts: str) -> str:
    return max(texts, key=len)


def _seq(items: list[_Width]) -> _Width:
    out = _Width()
    run = ""  # the literal text matched by the latest items, all exact
    for item in items:
        if item.before is not None:
            b = out.hi + item.before
            out.before = b if out.before is None else max(out.before, b)
        out.lo += item.lo
        out.hi += item.hi
        if item.exact is not None:
            run += item.exact
            out.required = _longest(out.required, run)
        else:
            run = ""
            out.required = _longest(out.required, item.required)
        out.exact = None if out.exact is None or item.exact is None else out.exact + item.exact
    return out


def _alt(branches: list[_Width]) -> _Width:
    befores = [b.before for b in branches if b.before is not None]
    exacts = {b.exact for b in branches}
    exact = exacts.pop() if len(exacts) == 1 else None
    return _Width(
        min(b.lo for b in branches),
        max(b.hi for b in branches),
        max(befores) if befores else None,
        exact,
        exact or "",
    )


def _repeat(item: _Width, lo: float, hi: float) -> _Width:
    def mul(w: float, k: float) -> float:
        return 0 if w == 0 or k == 0 else w * k

    before = None
    if item.before is not None and hi > 0:
        before = item.before + mul(item.hi, hi - 1)
    exact = None
    if hi == 0:
        exact = ""
    elif lo == hi and item.exact is not None and lo <= 64:
        exact = item.exact * int(lo)
    required = item.required if lo >= 1 else ""
    return _Width(mul(item.lo, lo), mul(item.hi, hi), before, exact, required)


class _Parser:
    """Just enough of RE2's syntax to find unsupported constructs, translate Python-only
    escapes, and measure the context before a ``mask`` group. RE2 itself validates the rest."""

    def __init__(self, pattern: str, what: str):
        self.p = pattern
        self.i = 0
        self.what = what
        self.out: list[str] = []
        self.case_insensitive = False
        #: Every atom that matches one character, as ``("lit", c)`` for the literal ``c`` or
        #: ``("re", text)`` for a class, an escape such as ``\\p{Nd}``, or ``.`` (RE2 syntax).
        self.atoms: list[tuple[str, str]] = []

    def fail(self, construct: str) -> PatternError:
        hint = ""
        if "look" in construct:
            hint = " (in a mask: match the context too, and put the value in a group named 'mask')"
        return PatternError(
            f"{self.what} {self.p!r} uses {construct}, which needs backtracking and cannot run "
            f"in linear time (RE2); rewrite it without it{hint}"
        )

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    def take(self, n: int = 1) -> str:
        s = self.p[self.i : self.i + n]
        self.i += n
        self.out.append(s)
        return s

    def parse(self) -> _Width:
        width = self.alternation()
        while self.i < len(self.p):  # an unmatched ')': RE2 reports it
            self.take()
            width = _Width(width.lo, _INF, width.before, None, "")
        return width

    def alternation(self) -> _Width:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return _alt(branches) if len(branches) > 1 else branches[0]

    def sequence(self) -> _Width:
        items = []
        while self.i < len(self.p) and self.peek() not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        return _seq(items)

    def quantified(self, atom: _Width) -> _Width:
        while True:
            c = self.peek()
            if c == "*":
                lo, hi, n = 0, _INF, 1
            elif c == "+":
                lo, hi, n = 1, _INF, 1
            elif c == "?":
                lo, hi, n = 0, 1, 1
            elif c == "{":
                bounds = self.braces()
                if bounds is None:
                    return atom
                lo, hi, n = bounds
            else:
                return atom
            self.take(n)
            if self.peek() == "?":
                self.take()  # lazy
            elif self.peek() == "+":
                raise self.fail("a possessive quantifier")
            atom = _repeat(atom, lo, hi)

    def braces(self) -> tuple[float, float, int] | None:
        j = self.p.find("}", self.i)
        if j < 0:
            return None
        body = self.p[self.i + 1 : j]
        lo, comma, hi = body.partition(",")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None  # a literal brace, as in RE2
        upper = float(hi) if hi else (_INF if comma else float(lo))
        return float(lo), upper, j - self.i + 1

    def atom(self) -> _Width:
        c = self.peek()
        if c == "(":
            return self.group()
        start = len(self.out)
        if c == "[":
            self.char_class()
            self.atoms.append(("re", "".join(self.out[start:])))
            return _any_char()
        if c == "\\":
            width = self.escape(in_class=False)
            if width.exact is not None:  # escaped punctuation, or \Q...\E
                self.atoms.extend(("lit", ch) for ch in width.exact)
            elif width.hi > 0:  # \d, \p{L}, \x{41}...
                self.atoms.append(("re", "".join(self.out[start:])))
            return width
        if c in "^$":
            self.take()
            return _Width()
        self.take()
        self.atoms.append(("re", c) if c == "." else ("lit", c))
        return _any_char() if c == "." else _literal(c)

    def group(self) -> _Width:
        self.take()  # (
        name = None
        if self.peek() == "?":
            rest = self.p[self.i + 1 : self.i + 4]
            if rest.startswith(("=", "!")):
                raise self.fail("a lookahead (?=...) or (?!...)")
            if rest.startswith(("<=", "<!")):
                raise self.fail("a lookbehind (?<=...) or (?<!...)")
            if rest.startswith(">"):
                raise self.fail("an atomic group (?>...)")
            if rest.startswith("P="):
                raise self.fail("a backreference (?P=name)")
            if rest.startswith("("):
                raise self.fail("a conditional group (?(...)...)")
            if rest.startswith(("P<", "<")):
                start = self.i + (3 if rest.startswith("P<") else 2)
                end = self.p.find(">", start)
                if end > 0:
                    name = self.p[start:end]
                    self.take(end + 1 - self.i)
            else:  # flags, (?:...) or (?flags:...); RE2 checks them
                while self.i < len(self.p) and self.peek() not in ":)":
                    if self.peek() == "i":
                        self.case_insensitive = True
                    self.take()
                if self.peek() == ")":
                    self.take()
                    return _Width()
                self.take()  # :
        inner = self.alternation()
        if self.peek() == ")":
            self.take()
        if name is not None and _is_mask_name(name):
            inner.before = 0
        return inner

    def char_class(self) -> None:
        self.take()  # [
        if self.peek() == "^":
            self.take()
        if self.peek() == "]":
            self.take()  # a leading ] is literal
        while self.i < len(self.p) and self.peek() != "]":
            if self.peek() == "\\":
                self.escape(in_class=True)
            elif self.p.startswith("[:", self.i):
                end = self.p.find(":]", self.i + 2)
                self.take(end + 2 - self.i if end > 0 else 1)
            else:
                self.take()
        if self.peek() == "]":
            self.take()

    def escape(self, *, in_class: bool) -> _Width:
        c = self.peek(1)
        if not c:
            self.take()
            return _any_char()
        if c in "123456789" and not in_class:
            raise self.fail(f"a backreference \\{c}")
        if c == "C":
            raise self.fail("\\C (one byte, which can split a UTF-8 character)")
        if c == "Z":
            self.i += 2
            self.out.append(r"\z")
            return _Width()
        if c in "uU":
            n = 4 if c == "u" else 8
            digits = self.p[self.i + 2 : self.i + 2 + n]
            if len(digits) == n and all(d in "0123456789abcdefABCDEF" for d in digits):
                self.i += 2 + n
                self.out.append("\\x{" + digits + "}")
                return _any_char()
        if c in "pPx" and self.peek(2) == "{":
            end = self.p.find("}", self.i)
            self.take(end + 1 - self.i if end > 0 else 2)
            return _any_char()
        if c == "x":
            self.take(4)
            return _any_char()
        if c in "pP":
            self.take(3)
            return _any_char()
        if c == "Q":
            end = self.p.find(r"\E", self.i + 2)
            literal = self.p[self.i + 2 : end if end >= 0 else len(self.p)]
            self.take(len(literal) + 2 + (2 if end >= 0 else 0))
            return _literal(literal)
        self.take(2)
        if c in "AzbBG" and not in_class:
            return _Width()
        if not c.isalnum() and c.isascii():
            return _literal(c)  # an escaped punctuation character: itself
        return _any_char()


def _analyse(pattern: str, what: str) -> tuple[str, _Width]:
    parser = _Parser(pattern, what)
    width = parser.parse()
    if parser.case_insensitive:
        width.required = ""
    return "".join(parser.out), width


# -- masking ---------------------------------------------------------------------------------


class LinearMask:
    """Replace what an RE2 pattern matches with a fixed text, in linear time.

    Without a group named ``mask`` the whole match is replaced, left to right, as by
    ``re.sub``. With one (or several named ``mask_...``, e.g. one per alternative), only the
    first of them that took part in a match is replaced and the rest of the match is context
    that stays as it is: ``rhost=(?P<mask>\\S+)`` masks the value after ``rhost=``. This is how
    a Python lookaround is written for RE2:

    * lookbehind ``(?<![A-Za-z0-9])X`` becomes ``(?:^|[^A-Za-z0-9])(?P<mask>X)``;
    * lookahead ``X(?![A-Za-z0-9])`` becomes ``(?P<mask>X)(?:$|[^A-Za-z0-9])``.

    Context after the mask group is not consumed (the next match is searched from the mask
    group's end), and context before it may reach back into the previous match, as a
    lookbehind would, by as many characters as it can be long (at most
    :data:`MAX_LOOKBACK`). Keep the context after the value short (one character): it is
    scanned again by the next search. Lone surrogates in the text are kept as they are.
    """

    def __init__(self, pattern: str, *, what: str):
        self.pattern = pattern
        self.regex = compile_linear(pattern, what=what)
        _, width = _analyse(pattern, what)
        #: A text every match contains: without it in the text there is nothing to search for.
        self.required = width.required
        index = self.regex.groupindex
        self._groups = tuple(sorted(i for name, i in index.items() if _is_mask_name(name)))
        if self._groups:
            before = width.before if width.before is not None else 0
            self.lookback = int(min(before, MAX_LOOKBACK))
        else:
            self.lookback = 0
        if _RAW_MATCH:
            self._search = _raw_search(self.regex)
        self._required_bytes = self.required.encode("utf-8", "surrogatepass")
        self._ascii_match = None  # built on first use: see sub_ascii

    def __repr__(self) -> str:
        return f"LinearMask({self.pattern!r})"

    def sub(self, replacement: str, text: str) -> str:
        """``text`` with every match (or its mask group) replaced by ``replacement``, taken
        literally (no group references)."""
        if self.required and self.required not in text:
            return text
        data = text.encode("utf-8", "surrogatepass")
        n = len(data)
        search = self._search
        spans = search(data, 0, n)
        if spans is None:
            return text
        rep = replacement.encode("utf-8", "surrogatepass")
        ascii_only = n == len(text)
        groups = self._groups
        group = groups[0] if len(groups) == 1 else -1
        lookback = self.lookback
        padded: bytes | None = None  # b" " + data: searched from 1 so ^ cannot match again
        out: list[bytes] = []
        last = 0  # end of the text copied to out
        pos = 0  # the next replacement must start here or later (as in re.sub)
        empty_at = -1  # where the previous replacement was empty
        while spans is not None:
            start, end = spans[0]
            if group > 0:
                s, e = spans[group]
            elif groups:
                s, e = self._mask_span(spans)
            else:
                s, e = start, end
            if s < 0:  # no mask group took part: leave this match as it is
                nxt = end if end > start else start + 1
            elif s < pos or (s == e == empty_at) or (s < n and 0x80 <= data[s] < 0xC0):
                nxt = start + 1  # overlaps the previous replacement, or inside a character
            else:
                out.append(data[last:s])
                out.append(rep)
                last = pos = e
                empty_at = e if s == e else -1
                if not lookback:
                    nxt = e
                elif ascii_only:
                    nxt = e - lookback if e > lookback else 0
                else:
                    nxt = self._back(data, e)
            if nxt > n:
                break
            if nxt > 0:
                spans = search(data, nxt, n)
            else:
                if padded is None:
                    padded = b" " + data
                spans = search(padded, 1, n + 1)
                if spans is not None:
                    spans = [(a - 1, b - 1) if a >= 0 else (a, b) for a, b in spans]
        out.append(data[last:])
        return b"".join(out).decode("utf-8", "surrogatepass")

    def sub_ascii(
        self, replacement: bytes, data: bytes, replaced: list[tuple[int, int]] | None = None
    ) -> bytes:
        """:meth:`sub` for an ASCII text and replacement, as bytes: the same result, faster.

        ``data`` must be ASCII (``text.isascii()``); it is returned itself when nothing is
        replaced. The pattern runs as its Latin-1 version (see :func:`ascii_matcher`), which
        on ASCII text matches exactly as the pattern does, with a smaller program, and the
        rest of a text that lacks the pattern's required literal is not searched. The spans
        replaced are added to ``replaced`` when given.
        """
        required = self._required_bytes
        if required and required not in data:
            return data
        match = self._ascii_match
        if match is None:
            match = self._ascii_match = ascii_matcher(self.regex)
        n = len(data)
        spans = match(_UNANCHORED, data, 0, n)
        if spans[0][0] < 0:
            return data
        groups = self._groups
        group = groups[0] if len(groups) == 1 else -1
        lookback = self.lookback
        out: list[bytes] = []
        last = 0  # as in sub, where on ASCII text a character is a byte
        pos = 0
        empty_at = -1
        while True:
            start, end = spans[0]
            if group > 0:
                s, e = spans[group]
            elif groups:
                s, e = self._mask_span(spans)
            else:
                s, e = start, end
            if s < 0:
                nxt = end if end > start else start + 1
            elif s < pos or (s == e == empty_at):
                nxt = start + 1
            else:
                out.append(data[last:s])
                out.append(replacement)
                if replaced is not None:
                    replaced.append((s, e))
                last = pos = e
                empty_at = e if s == e else -1
                nxt = e - lookback if e > lookback else 0
            if nxt > n or (required and data.find(required, nxt) < 0):
                break  # a match from nxt on lies in data[nxt:], which lacks the literal
            if nxt > 0:
                spans = match(_UNANCHORED, data, nxt, n)
                if spans[0][0] < 0:
                    break
            else:
                spans = match(_UNANCHORED, b" " + data, 1, n + 1)
                if spans[0][0] < 0:
                    break
                spans = [(a - 1, b - 1) if a >= 0 else (a, b) for a, b in spans]
        if not out:
            return data
        out.append(data[last:])
        return b"".join(out)

    def _search(self, data: bytes, pos: int, end: int) -> list[tuple[int, int]] | None:
        return search_spans(self.regex, data, pos, end)  # replaced in __init__ when possible

    def _mask_span(self, spans: list[tuple[int, int]]) -> tuple[int, int]:
        for g in self._groups:
            if spans[g][0] >= 0:
                return spans[g]
        return -1, -1

    def _back(self, data: bytes, pos: int) -> int:
        """The byte offset ``lookback`` characters before ``pos`` in UTF-8 ``data``."""
        k = self.lookback
        i = pos
        while k and i > 0:
            i -= 1
            while i > 0 and 0x80 <= data[i] < 0xC0:
                i -= 1
            k -= 1
        return i


class MaskChain:
    """Masks applied in order, each to what the ones before it left: ``[(mask, replacement),
    ...]``, as Drain3's ``LogMasker`` applies them (``mask.sub(replacement, text)`` in turn).

    ASCII texts (nearly every log line) take a faster path with the same result: the text
    stays bytes from the first mask to the last, and each mask runs as
    :meth:`LinearMask.sub_ascii`. And most of them skip the masks altogether: log lines of one
    kind differ mostly in their digits (ids, addresses, sizes, times), and where the masks
    cannot tell one digit from another, two texts that differ only in their digits are masked
    alike (see :meth:`_digit_blind`). So the chain remembers, for a text with its digits made
    one digit, what masking it left: the masked text, with the digits that stayed in it taken
    from the text at hand. Thousands of such shapes cover millions of HDFS lines.
    """

    #: At most this many text shapes are remembered (then forgotten all at once), each of at
    #: most SHAPE_CHARS characters (longer texts are masked each time).
    CACHE_SIZE = 20_000
    SHAPE_CHARS = 1024

    def __init__(self, masks: Iterable[tuple[LinearMask, str]]):
        self.masks = tuple(masks)
        self._fast = _RAW_MATCH and all(rep.isascii() for _, rep in self.masks)
        self._steps: tuple[tuple[object, bytes], ...] | None = None  # built on first use
        self._blind: tuple[bytes, tuple[bytes, ...]] | None = None
        self._shapes: dict[bytes, tuple[str, tuple[tuple[int, int, int], ...]]] = {}

    def __call__(self, text: str) -> str:
        if not (self._fast and text.isascii()):
            for mask, rep in self.masks:
                text = mask.sub(rep, text)
            return text
        if self._steps is None:
            self._steps = tuple((mask.sub_ascii, rep.encode("ascii")) for mask, rep in self.masks)
            self._blind = self._digit_blind()
        data = text.encode("ascii")
        blind = self._blind
        if blind is None:
            return self._mask_ascii(text, data)
        if len(data) > self.SHAPE_CHARS:
            return self._mask_ascii(text, data)
        table, tells = blind
        for literal in tells:
            if literal in data:
                return self._mask_ascii(text, data)
        shape = data.translate(table)
        known = self._shapes.get(shape)
        if known is None:
            known = self._learn(data)
            if len(self._shapes) >= self.CACHE_SIZE:
                self._shapes.clear()
            self._shapes[shape] = known
        masked, kept = known
        if not kept:
            return masked
        parts = []
        last = 0
        for start, end, source in kept:
            parts.append(masked[last:start])
            parts.append(text[source : source + end - start])
            last = end
        parts.append(masked[last:])
        return "".join(parts)

    def _mask_ascii(self, text: str, data: bytes) -> str:
        original = data
        for sub, rep in self._steps:
            data = sub(rep, data)
        return text if data is original else data.decode("ascii")

    def _learn(self, data: bytes) -> tuple[str, tuple[tuple[int, int, int], ...]]:
        """Mask ``data``, keeping track of where each character came from: ``(masked text,
        kept)``, where ``kept`` has ``(start, end, source)`` for each run of digits in the
        masked text, which came from ``data[source : source + end - start]``."""
        origin = list(range(len(data)))  # where each character of data came from; -1: a mask
        for sub, rep in self._steps:
            replaced: list[tuple[int, int]] = []
            changed = sub(rep, data, replaced)
            if replaced:
                moved = []
                last = 0
                for s, e in replaced:
                    moved += origin[last:s]
                    moved += [-1] * len(rep)
                    last = e
                moved += origin[last:]
                origin = moved
            data = changed
        masked = data.decode("ascii")
        kept = []
        i, n = 0, len(data)
        while i < n:
            if 48 <= data[i] <= 57:  # a digit, which came from the text (masks put none)
                j = i + 1
                while j < n and 48 <= data[j] <= 57 and origin[j] == origin[j - 1] + 1:
                    j += 1
                kept.append((i, j, origin[i]))
                i = j
            else:
                i += 1
        return masked, tuple(kept)

    def _digit_blind(self) -> tuple[bytes, tuple[bytes, ...]] | None:
        """When the masks mask texts that differ only in their digits alike: ``(table,
        tells)``, where ``data.translate(table)`` is the shape of ``data`` (each digit made
        ``0``) and ``tells`` are literals that a text must not contain for this to hold; None
        if it does not hold at all.

        Take two texts of one shape. A mask whose atoms (literals, classes, ``.``...) each
        take all ten digits or none cannot tell one digit from another: it matches both at
        the same places and replaces the same spans, and what it leaves of both is again of
        one shape. A mask with an atom that tells digits apart (the ``0`` of ``0x``) is
        allowed if its required literal ``R`` has a digit: it is a tell, and in texts without
        it the mask has no match, nor in what the masks before it leave of them, since a
        replacement (which has no digits) cannot make an ``R`` appear unless ``R`` holds the
        replacement's first or last character. So two texts of one shape without tells are
        masked span for span alike, and the digits that stay are the texts' own.
        """
        reps = [rep for _, rep in self._steps]
        if any(not rep or any(48 <= c <= 57 for c in rep) for rep in reps):
            return None
        ends = {rep[0] for rep in reps} | {rep[-1] for rep in reps}
        tells = []
        for mask, _ in self.masks:
            if all(_takes_all_digits_or_none(atom) for atom in _parsed(mask.pattern).atoms):
                continue
            literal = mask._required_bytes
            if not literal.isascii() or not any(48 <= c <= 57 for c in literal):
                return None
            if any(c in ends for c in literal):
                return None
            tells.append(literal)
        table = bytes(48 if 48 <= c <= 57 else c for c in range(256))  # each digit as 0
        return table, tuple(tells)


def ascii_matcher(regex):
    """The raw ``Match(anchor, data, pos, end)`` of ``regex`` (from :func:`compile_linear`)
    for ASCII text: its pattern compiled in RE2's Latin-1 mode when that can be done exactly,
    else its own.

    On ASCII text both match exactly alike: each character is one byte in both modes, every
    atom of the pattern admits the same ASCII characters (code points above U+00FF are
    rewritten as ``\\xff``, which no ASCII character matches, and ranges keep their ASCII
    part), and the match rules are the same. The Latin-1 program leaves out the multi-byte
    UTF-8 sequences of Unicode classes (``\\p{L}``, ``\\p{Nd}``...), so it is smaller and
    faster. Case-insensitive patterns keep their own program: there, a character beyond
    Latin-1 can match an ASCII one (the Kelvin sign matches ``k``). Needs the re2 binding
    that returns spans (see ``_RAW_MATCH``), as the callers check.
    """
    own = regex._regexp
    translated = _latin1_pattern(regex.pattern) if _LATIN1_OPTIONS is not None else None
    if translated is not None:
        try:
            if _parsed(regex.pattern).case_insensitive:
                translated = None
        except PatternError:
            translated = None
    if translated is not None:
        latin1 = re2._re2.RE2(translated.encode("latin-1"), _LATIN1_OPTIONS)
        if latin1.ok() and latin1.NumberOfCapturingGroups() == own.NumberOfCapturingGroups():
            return latin1.Match
    return own.Match


def _parsed(pattern: str) -> _Parser:
    parser = _Parser(pattern, "pattern")
    parser.parse()
    return parser


def _latin1_pattern(pattern: str) -> str | None:
    """``pattern`` (RE2 syntax) with every code point above U+00FF, written or escaped as
    ``\\x{...}``, replaced by ``\\xff``; None where that is not a plain rewrite."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt == "Q" or (nxt and not nxt.isascii()):
                return None  # literal text, or an escaped non-ASCII character
            if nxt == "x" and pattern.startswith("{", i + 2):
                end = pattern.find("}", i)
                digits = pattern[i + 3 : end] if end > 0 else ""
                if not digits or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    return None
                out.append(pattern[i : end + 1] if int(digits, 16) <= 0xFF else r"\xff")
                i = end + 1
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append(c if ord(c) <= 0xFF else r"\xff")
        i += 1
    return "".join(out)


_digit_sets: dict[tuple[str, str], bool] = {}


def _takes_all_digits_or_none(atom: tuple[str, str]) -> bool:
    """Whether a pattern atom (see :attr:`_Parser.atoms`) matches all ten ASCII digits or
    none of them, found by matching each digit with it (False when that cannot be done)."""
    kind, text = atom
    if kind == "lit":
        return not ("0" <= text <= "9")
    if atom not in _digit_sets:
        regex = re2._re2.RE2(text.encode("utf-8"), _OPTIONS)
        taken = set()
        if regex.ok() and _ANCHOR_BOTH is not None:
            taken = {
                d for d in b"0123456789" if regex.Match(_ANCHOR_BOTH, bytes((d,)), 0, 1)[0][0] >= 0
            }
        _digit_sets[atom] = regex.ok() and _ANCHOR_BOTH is not None and len(taken) in (0, 10)
    return _digit_sets[atom]


def search_spans(regex, data: bytes, pos: int = 0, end: int | None = None, *, anchored=False):
    """``(start, end)`` byte offsets of every group (0 is the whole match; ``(-1, -1)`` for a
    group that did not take part) of ``regex``'s first match in ``data[pos:end]``, or None.
    ``anchored``: the match must start at ``pos``. Faster than ``regex.search`` on bytes."""
    end = len(data) if end is None else end
    if _RAW_MATCH:
        spans = regex._regexp.Match(_ANCHOR_START if anchored else _UNANCHORED, data, pos, end)
        return None if spans[0][0] < 0 else spans
    m = (regex.match if anchored else regex.search)(data, pos, end)
    if m is None:
        return None
    return [m.span(g) for g in range(regex.groups + 1)]


def _raw_search(regex):
    match = regex._regexp.Match

    def search(data: bytes, pos: int, end: int) -> list[tuple[int, int]] | None:
        spans = match(_UNANCHORED, data, pos, end)
        return None if spans[0][0] < 0 else spans

    return search


def _raw_match_works() -> bool:
    """Whether the re2 module's binding returns spans directly (saves a match object per
    search); the public ``search`` is the fallback."""
    try:
        regex = re2.compile("(b)", _OPTIONS)
        return regex._regexp.Match(_UNANCHORED, b"ab", 0, 2) == [(1, 2), (1, 2)]
    except Exception:
        return False


try:
    _UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
    _ANCHOR_START = re2._re2.RE2.Anchor.ANCHOR_START
    _ANCHOR_BOTH = re2._re2.RE2.Anchor.ANCHOR_BOTH
except AttributeError:  # pragma: no cover - another re2 build
    _UNANCHORED = _ANCHOR_START = _ANCHOR_BOTH = None
_RAW_MATCH = _raw_match_works()
try:
    _LATIN1_OPTIONS = _options()
    _LATIN1_OPTIONS.encoding = re2.Options.Encoding.LATIN1
except AttributeError:  # pragma: no cover - another re2 build
    _LATIN1_OPTIONS = None
