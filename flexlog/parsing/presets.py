"""Per-system parsing presets: header format, Drain3 masking, and Drain parameters.

A preset says how to split a raw log line into header fields and the free-text ``Content``
(which Drain mines templates from), which variable parts to mask before mining, and how to
find a line's session id. Log formats follow loghub's published ones, e.g.
``'<Date> <Time> <Pid> <Level> <Component>: <Content>'``: each ``<Field>`` becomes a named
group and the text between fields is a regular-expression fragment in which runs of spaces
match any whitespace (so literal brackets are written ``\\[``), exactly as loghub reads them.

Every regex here (formats, masks, session patterns) is RE2 syntax and runs in linear time; see
:mod:`flexlog.parsing.regex`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter

from flexlog.parsing import legacy
from flexlog.parsing.regex import (
    _ANCHOR_START,
    _RAW_MATCH,
    _UNANCHORED,
    DIGIT,
    SPACE,
    WORD,
    LinearMask,
    PatternError,
    _analyse,
    _parsed,
    _takes_all_digits_or_none,
    ascii_matcher,
    compile_linear,
    is_sequence,
    reject_backtracking,
    search_spans,
)

# Reusable masks: (regex, mask name) pairs; matched text becomes ``<NAME>``. The regexes are
# RE2 (linear-time; see flexlog.parsing.regex): no lookaround, so the context a value needs is
# part of the match and the value is the group named ``mask`` (only it is replaced). Character
# classes spell out Python's Unicode ``\d``, ``\w``, ``\s`` and ``\b``, which RE2 reads as ASCII,
# so these masks match what their earlier Python ``re`` versions matched.
# Order matters: masks run in sequence, so context masks (``user X``) and whole structures
# (URLs, paths, IP lists) come before the number masks that would split them.
_D = DIGIT
_S = SPACE
_W = WORD


def _not_after(chars: str) -> str:
    """Context: at the start, or after a character not in ``[chars]`` (a lookbehind)."""
    return f"(?:^|[^{chars}])"


def _not_before(chars: str) -> str:
    """Context: at the end, or before a character not in ``[chars]`` (a lookahead)."""
    return f"(?:$|[^{chars}])"


def _value(regex: str) -> str:
    return f"(?P<mask>{regex})"


_B = _not_after("A-Za-z0-9_.")  # not inside a longer word or number
_E = _not_before("A-Za-z0-9_")
_BOUNDARY = _not_after(_W)  # Python's \b before a word character
_BOUNDARY_END = _not_before(_W)  # and after one
_IP = rf"/?{_D}{{1,3}}(?:\.{_D}{{1,3}}){{3}}(?::{_D}+)?"
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"

MASK_URL = (_not_after(_W + ".+-") + _value(rf"[A-Za-z][{_W}+.-]*://[^{_S}\"'\])]*"), "URL")
#: A path of two or more segments, with any query string (``/v2/x/servers?all=1``).
MASK_PATH = (_not_after(_W + "/") + _value(rf"(?:/[^{_S}/\"'()\[\]]*){{2,}}"), "PATH")
MASK_UUID = (r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", "UUID")
#: One IPv4 address with optional port and leading slash, or a comma-separated list of them.
MASK_IP = (_B + _value(_IP + "(?:," + _IP + ")*") + _E, "IP")
MASK_HEX = (_B + _value(r"0x[0-9a-fA-F]+") + _E, "HEX")
#: Long lowercase hex strings: hashes, tenant and request ids.
MASK_HEXID = (_B + _value(r"[0-9a-f]{16,}") + _E, "ID")
#: Host names with at least three labels (``ns.example.com``); also hits dotted Java names.
MASK_HOST = (_B + _value(rf"(?:[{_W}$-]+\.){{2,}}[{_W}$-]+") + _E, "HOST")
#: Integers and decimals, with an optional size or time unit (``5.2 KB``, ``10000ms``).
MASK_NUM = (
    _B + _value(rf"[-+]?{_D}+(?:\.{_D}+)?(?:[{_S}]?(?:[KMGTP]i?)?B|[mun]?s)?") + _E,
    "NUM",
)
#: Any remaining word that contains a digit (``broadcast_9_piece0``, ``mesos-slave-07``).
MASK_ALNUM = (
    _not_after(_W + "<") + _value(rf"[A-Za-z_][{_W}.-]*{_D}[{_W}.-]*") + _not_before(_W + ">"),
    "ID",
)
#: HDFS block ids; a run of several (``blk_1 blk_2 ...``) is one mask.
MASK_BLOCK = (rf"blk_-?{_D}+(?:[{_S}]+blk_-?{_D}+)*", "BLK")
#: Hadoop/YARN ids: job_, task_, attempt_, container_, application_, appattempt_, jvm_.
MASK_YARN_ID = (
    _not_after("A-Za-z0-9")
    + _value(
        rf"(?:appattempt|application|attempt|container|job|task|jvm)_{_D}+(?:_(?:[mr]|{_D}+))*"
    ),
    "ID",
)
#: ``Fri Jun 17 07:07:00 2005`` style timestamps inside messages.
MASK_DATE = (
    _BOUNDARY
    + _value(
        rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MONTH} +{_D}{{1,2}} {_D}{{2}}:{_D}{{2}}:{_D}{{2}}"
        rf" {_D}{{4}}"
    )
    + _BOUNDARY_END,
    "DATE",
)
#: Timestamps and dates, for the ``generic`` preset whose content still has the line's header.
MASK_TIMESTAMPS: tuple[tuple[str, str], ...] = (
    MASK_DATE,
    (
        _BOUNDARY
        + _value(
            rf"{_D}{{4}}-{_D}{{2}}-{_D}{{2}}[T ]{_D}{{2}}:{_D}{{2}}:{_D}{{2}}(?:[.,]{_D}+)?"
            rf"(?:Z|[+-]{_D}{{2}}:?{_D}{{2}})?"
        ),
        "TS",
    ),
    (
        _BOUNDARY + _value(rf"{_MONTH} +{_D}{{1,2}} {_D}{{2}}:{_D}{{2}}:{_D}{{2}}") + _BOUNDARY_END,
        "TS",
    ),
    (_BOUNDARY + _value(rf"{_D}{{2,4}}[-/]{_D}{{2}}[-/]{_D}{{2}}") + _BOUNDARY_END, "DATE"),
    (
        _BOUNDARY + _value(rf"{_D}{{2}}:{_D}{{2}}:{_D}{{2}}(?:[.,]{_D}+)?") + _BOUNDARY_END,
        "TIME",
    ),
)
# Context masks: the value after a key word is a parameter whatever it looks like.
#: The word after ``user `` (``user root``), unless that ``user `` follows another ``user ``
#: (``Invalid user user from``: the name is the first ``user``, and ``from`` stays).
MASK_USER = (
    rf"(?:^|[^{_W} ]|(?:^|[^r]|(?:^|[^e])r|(?:^|[^s])er|(?:^|[^u])ser|[{_W}]user) )user "
    + _value(rf"[{_S}]*[^{_S}]+"),
    "USER",
)
MASK_USER_EQ = (_BOUNDARY + "user=" + _value(rf"[^{_S}]+"), "USER")
#: The word after ``password for ``, unless it starts ``invalid user `` (MASK_USER takes
#: the name there). One group per case: a word that is not ``invalid`` (nor a prefix of it),
#: a prefix of ``invalid``, or ``invalid`` not followed by `` user ``.
_NOT_SPACE = rf"[^{_S}]"
MASK_PASSWORD_USER = (
    _BOUNDARY
    + "password for (?:"
    + rf"(?P<mask>(?:[^i{_S}]|i(?:[^n{_S}]|n(?:[^v{_S}]|v(?:[^a{_S}]|a(?:[^l{_S}]|l(?:[^i{_S}]"
    + rf"|i(?:[^d{_S}]|d{_NOT_SPACE})))))))[^{_S}]*)"
    + rf"|(?P<mask_prefix>i(?:n(?:v(?:a(?:l(?:i)?)?)?)?)?)(?:$|[{_S}])"
    + r"|(?P<mask_invalid>invalid)(?:$|["
    + _S.replace(r"\x1c-\x20", r"\x1c-\x1f")
    + r"]| (?:$|[^u]|u(?:$|[^s]|s(?:$|[^e]|e(?:$|[^r]|r(?:$|[^ ]))))))"
    + ")",
    "USER",
)
MASK_RHOST = ("rhost=" + _value(rf"[^{_S}]+"), "HOST")
#: A host name in parentheses, or nothing: ``(host.example.net)`` and ``()`` mask alike.
MASK_PAREN_HOST = (r"\(" + _value(rf"(?:(?:[{_W}-]+\.)+[{_W}-]+)?") + r"\)", "HOST")

_STRUCTURES = (MASK_URL, MASK_PATH)
_VALUES = (MASK_UUID, MASK_IP, MASK_HEX, MASK_HEXID)
_NUMBERS = (MASK_NUM, MASK_ALNUM)

#: Masks that suit most logs, in order; most presets build on them.
COMMON_MASKS: tuple[tuple[str, str], ...] = (*_STRUCTURES, *_VALUES, *_NUMBERS)

#: HDFS block ids, the hdfs preset's sessions.
SESSION_BLOCK = rf"blk_-?{_D}+"

_FIELD = compile_linear(r"<([^<>]+)>", what="log format field pattern")
_SPACE_RUN = compile_linear(" +", what="log format space pattern")


@dataclass(frozen=True)
class Preset:
    """How to parse one log system.

    ``masking`` holds (regex, mask name) pairs applied in order before Drain sees the content;
    ``session_pattern`` (optional) is searched in the content and its first match (group 1 if
    the pattern has groups) is the line's session id; ``extra_delimiters`` are literal strings
    Drain treats as extra token separators; ``timestamp_fields`` (header fields, joined by a
    space) read with the strptime ``timestamp_format`` (``%s``: seconds since the epoch) give a
    line's time, for time windows. All regexes are RE2 syntax (linear time; no
    lookaround or backreferences): a mask with a group named ``mask`` replaces only that group
    and keeps the rest of its match as context (see :class:`~flexlog.parsing.regex.LinearMask`).
    A pattern RE2 cannot run raises a ``ValueError`` naming the preset and the pattern.
    """

    name: str
    log_format: str
    masking: tuple[tuple[str, str], ...] = COMMON_MASKS
    sim_th: float = 0.4
    depth: int = 4
    session_pattern: str | None = None
    extra_delimiters: tuple[str, ...] = ()
    parametrize_numeric_tokens: bool = True
    timestamp_fields: tuple[str, ...] = ()
    timestamp_format: str | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Accept lists from callers and JSON; store tuples so the preset stays hashable.
        object.__setattr__(self, "masking", tuple((str(r), str(m)) for r, m in self.masking))
        object.__setattr__(self, "extra_delimiters", tuple(self.extra_delimiters))
        object.__setattr__(self, "timestamp_fields", tuple(map(str, self.timestamp_fields)))
        if bool(self.timestamp_fields) != bool(self.timestamp_format):
            raise ValueError(
                f"preset {self.name!r}: timestamp_fields and timestamp_format go together"
            )
        if not 0.0 <= self.sim_th <= 1.0:
            raise ValueError(f"preset {self.name!r}: sim_th must be in [0, 1], got {self.sim_th}")
        if self.depth < 3:
            raise ValueError(f"preset {self.name!r}: depth must be at least 3, got {self.depth}")
        if "<Content>" not in self.log_format:
            raise ValueError(f"preset {self.name!r}: log_format has no <Content> field")
        # Fail early, naming the preset, on a bad format, mask or session pattern.
        for regex, mask in self.masking:
            if not mask:
                raise ValueError(f"preset {self.name!r}: mask for {regex!r} has an empty name")
        _ = self.maskers
        _ = self.session_regex
        try:
            _ = self.header_regex, self._header_prefix
        except ValueError as exc:
            raise ValueError(
                f"preset {self.name!r}: log_format is not a valid pattern: {exc}"
            ) from exc

    @cached_property
    def header_regex(self):
        """The compiled log format (RE2): one named group per ``<Field>``."""
        return compile_log_format(self.log_format)

    @cached_property
    def _header_groups(self) -> tuple[tuple[str, int], ...]:
        index = self.header_regex.groupindex
        return tuple(sorted(index.items(), key=lambda item: item[1]))

    @cached_property
    def _header_prefix(self):
        """The format up to a final ``<Content>`` (None if it does not end with one).

        ``(?P<Content>.*?)\\n?$`` at the end matches whatever follows the rest of the header,
        so on a line with no newline before its end, the header's match without it gives the
        same fields, and Content is the rest of the line. RE2 then finds the fields in the
        header alone instead of across the whole line (microseconds, not milliseconds, on a
        64 KiB line).
        """
        if not self.log_format.endswith("<Content>"):
            return None
        prefix = _format_regex(self.log_format[: -len("<Content>")])
        if not is_sequence(prefix):  # e.g. a top-level | in the format's text
            return None
        return compile_linear("^" + prefix, what=f"log format {self.log_format!r} as a regex:")

    @cached_property
    def _ascii_header(self):
        """How :meth:`_split_line` splits an ASCII line: ``(match, field groups)`` of the format
        up to a final ``<Content>`` (see :attr:`_header_prefix`), or None without one."""
        prefix = self._header_prefix
        if prefix is None or not _RAW_MATCH:
            return None
        return ascii_matcher(prefix), self._header_groups[:-1]

    @cached_property
    def _plain_format(self) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]] | None:
        """The format as text, when it is plain enough to split without a regex: ``(texts,
        names)``, where ``texts[i]`` is the text before field ``names[i]`` as a sequence of
        literal strings (no whitespace in them) and ``" "`` (one or more whitespace
        characters), and the last field is ``Content``. None for any other format: one with
        a regex construct between its fields (``(...)?``, ``.``, ``[...]``...), a literal
        whitespace character other than a space, two fields with nothing between them, or
        text after ``<Content>``."""
        parts = _FIELD.split(self.log_format)
        texts, names = parts[0::2], parts[1::2]
        if not names or names[-1] != "Content" or texts[-1] != "" or "" in texts[1:-1]:
            return None  # no final Content, or two fields with nothing between them
        plain = []
        for text in texts[:-1]:
            items: list[str] = []
            i = 0
            while i < len(text):
                c = text[i]
                if c == " ":
                    if not items or items[-1] != " ":
                        items.append(" ")
                    i += 1
                    continue
                if c == "\\":
                    c = text[i + 1 : i + 2]
                    if not c or not c.isascii() or c.isalnum() or c.isspace():
                        return None  # an escape that is not a punctuation character
                    i += 2
                elif not c.isascii() or c.isspace() or c in _REGEX_SYNTAX:
                    return None
                else:
                    i += 1
                if items and items[-1] != " ":
                    items[-1] += c
                else:
                    items.append(c)
            plain.append(tuple(items))
        return tuple(plain), tuple(names)

    @cached_property
    def _plain_plan(self):
        """:attr:`_plain_format` as :meth:`_cut_plain` runs it: ``(lead, words, rest)``: the
        text before the first field, the first fields each followed by just a run of
        whitespace (``str.split`` finds them), and the text after each field after those but
        Content."""
        plain = self._plain_format
        if plain is None:
            return None
        texts, names = plain
        k = 0
        while k < len(names) - 1 and texts[k + 1] == (" ",):
            k += 1
        texts = tuple(tuple(item.encode("ascii") for item in text) for text in texts)
        return texts[0], names[:k], texts[k + 1 :]

    def _cut_plain(self, line: str) -> tuple[tuple[tuple[int, int], ...], int] | None:
        """Where the fields of an ASCII ``line`` (no newline but a final one) are by a plain
        format, as the format's regex would find them: ``(spans, content start)``, a span per
        field but Content; or None when that takes more than this does.

        The regex's fields are lazy (``.*?``), its runs of whitespace greedy, and its texts
        between fields are literals (no whitespace in them) and runs. So the regex, trying its
        choices in order, ends each field where the text after it first matches, with each
        run as long as it goes: any shorter field leaves a text that cannot match there (a
        run needs a whitespace character, a literal itself), and a shorter run before a
        literal leaves whitespace where the literal must be. This takes those same choices
        one after the other; the regex would then back out of a choice only if a later text
        did not match, and where that happens (a line the format does not fit, or an odd
        one) this gives up and the regex decides.
        """
        lead, words, rest = self._plain_plan
        n = len(line)
        pos = 0
        norm = line.encode("ascii").translate(_ASCII_SPACE)  # whitespace as b" "
        if lead:
            pos = _match_text(norm, 0, lead, n)
            if pos < 0:
                return None
        spans = []
        if words:
            # Fields separated by runs of whitespace: the words of the line, as long as it
            # does not start with whitespace (the first field would be empty).
            k = len(words)
            if pos >= n or norm[pos] == 32:
                return None
            parts = line[pos:].split(None, k)
            if len(parts) <= k:
                return None
            for word in parts[:k]:
                while norm[pos] == 32:  # the run before the word
                    pos += 1
                spans.append((pos, pos + len(word)))
                pos += len(word)
            pos = n - len(parts[k])
        for text in rest:
            first = text[0]
            end = -1
            start = norm.find(first, pos)
            while start >= 0:
                end = _match_text(norm, start, text, n)
                if end >= 0:
                    break
                if first == b" ":  # the same run would fail again: skip past it
                    while start < n and norm[start] == 32:
                        start += 1
                    start = norm.find(b" ", start)
                else:
                    start = norm.find(first, start + 1)
            if end < 0:
                return None
            spans.append((pos, start))
            pos = end
        return tuple(spans), pos

    def _cut(self, line: str, data: bytes) -> tuple[tuple[tuple[int, int], ...], int] | None:
        """:meth:`_cut_plain`, or the format's Latin-1 program where that gives up: the spans
        of the fields but Content and where Content starts, or None (the line does not fit)."""
        if self._plain_plan is not None:
            cut = self._cut_plain(line)
            if cut is not None:
                return cut
        match, groups = self._ascii_header
        spans = match(_ANCHOR_START, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        return tuple(spans[i] for _, i in groups), spans[0][1]

    @cached_property
    def _field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._header_groups[:-1])

    @staticmethod
    def _slicer(cut, end: int):
        """A function of a line to a tuple of its fields and Content, cut where ``cut`` (from
        :meth:`_cut`) says, Content ending at ``end``; None for None."""
        if cut is None:
            return None
        spans, start = cut
        slices = [slice(s, e) if s >= 0 else slice(0, 0) for s, e in spans]
        if not slices:
            content = slice(start, end)
            return lambda line: (line[content],)
        return itemgetter(*slices, slice(start, end))

    @cached_property
    def _shapes(self) -> dict[bytes, object] | None:
        """Where the fields of ASCII lines are, by the lines' shapes (digits made ``0``): the
        format finds them where it finds them in any line of the same shape when none of its
        atoms tells one digit from another (see ``MaskChain``); None when one does."""
        prefix = self._header_prefix
        if prefix is None:
            return None
        if not all(_takes_all_digits_or_none(atom) for atom in _parsed(prefix.pattern).atoms):
            return None
        return {}

    def _split_line(self, line: str) -> tuple[dict[str, str], str] | None:
        """:meth:`split` as ``(header fields, Content)``: the same fields, in the same order,
        without the ``Content`` key. ASCII lines whose only newline (if any) ends them, the
        usual case, are cut as text, without decoding: by a plain format without a regex (see
        :meth:`_cut_plain`), else by the format's Latin-1 program; and a line of a shape (its
        digits made ``0``) cut before is cut where that was."""
        header = self._ascii_header
        if header is not None and line.isascii():
            newline = line.find("\n")
            n = len(line)
            if newline < 0 or newline == n - 1:
                data = line.encode("ascii")
                shapes = self._shapes
                end = n - (newline >= 0)  # a final newline is not Content's
                if shapes is None or n > _SHAPE_CHARS:
                    cut = self._slicer(self._cut(line, data), end)
                else:
                    shape = data.translate(_DIGITS_AS_0)
                    cut = shapes.get(shape, _UNSEEN)
                    if cut is _UNSEEN:
                        cut = self._slicer(self._cut(line, data), end)
                        if len(shapes) >= _SHAPES:
                            shapes.clear()
                        shapes[shape] = cut
                if cut is None:
                    return None
                values = cut(line)  # the fields, then Content
                return dict(zip(self._field_names, values, strict=False)), values[-1]
        parts = self.split(line)
        if parts is None:
            return None
        content = parts.pop("Content")
        return parts, content

    @cached_property
    def _session_search(self):
        """For :meth:`session_of`: ``(required literal, group, ASCII match, UTF-8 match,
        shapes)``, where ``shapes`` (None when the pattern tells digits apart) remembers the
        id's span by the shape of the content (its digits made ``0``), as ``_shapes`` does
        the fields'."""
        regex = self.session_regex
        if regex is None or not _RAW_MATCH:
            return None
        parsed = _parsed(regex.pattern)
        blind = all(_takes_all_digits_or_none(atom) for atom in parsed.atoms)
        _, width = _analyse(self.session_pattern, "session pattern")
        group = 1 if regex.groups else 0
        return (
            width.required,
            group,
            ascii_matcher(regex),
            regex._regexp.Match,
            {} if blind else None,
        )

    @cached_property
    def session_regex(self):
        """The compiled ``session_pattern`` (RE2), or None."""
        if self.session_pattern is None:
            return None
        return compile_linear(self.session_pattern, what=f"preset {self.name!r}: session_pattern")

    @cached_property
    def maskers(self) -> tuple[LinearMask, ...]:
        """The compiled masks, in order (see :class:`~flexlog.parsing.regex.LinearMask`)."""
        return tuple(
            LinearMask(regex, what=f"preset {self.name!r}: mask {mask}")
            for regex, mask in self.masking
        )

    def split(self, line: str) -> dict[str, str] | None:
        """The header fields and ``Content`` of ``line``, or None if it does not fit the format
        (or is not valid Unicode: a lone surrogate)."""
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:
            return None
        newline = data.find(b"\n")
        prefix = self._header_prefix
        if prefix is not None and (newline < 0 or newline == len(data) - 1):
            spans = search_spans(prefix, data, anchored=True)
            if spans is None:
                return None
            fields = _fields(data, spans, self._header_groups[:-1])
            fields["Content"] = data[spans[0][1] : len(data) - (newline >= 0)].decode("utf-8")
            return fields
        spans = search_spans(self.header_regex, data, anchored=True)
        if spans is None:
            return None
        return _fields(data, spans, self._header_groups)

    def session_of(self, content: str) -> str | None:
        """The session id in ``content`` (first match of ``session_pattern``), if any."""
        regex = self.session_regex
        if regex is None:
            return None
        fast = self._session_search
        if fast is not None:
            required, group, ascii_match, match, shapes = fast
            if required and required not in content:
                return None  # every match contains it
            if content.isascii():
                data = content.encode("ascii")
                if shapes is not None and len(data) <= _SHAPE_CHARS:
                    shape = data.translate(_DIGITS_AS_0)
                    span = shapes.get(shape)
                    if span is None:
                        spans = ascii_match(_UNANCHORED, data, 0, len(data))
                        span = spans[group] if spans[0][0] >= 0 else (-1, -1)
                        if len(shapes) >= _SHAPES:
                            shapes.clear()
                        shapes[shape] = span
                else:
                    spans = ascii_match(_UNANCHORED, data, 0, len(data))
                    span = spans[group] if spans[0][0] >= 0 else (-1, -1)
                start, end = span
                return content[start:end] if start >= 0 else None
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:
                return None
            spans = match(_UNANCHORED, data, 0, len(data))
            start, end = spans[group] if spans[0][0] >= 0 else (-1, -1)
            return data[start:end].decode("utf-8") if start >= 0 else None
        try:
            m = regex.search(content)
        except UnicodeEncodeError:
            return None
        if m is None:
            return None
        return m.group(1) if regex.groups else m.group(0)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "log_format": self.log_format,
            "masking": [list(pair) for pair in self.masking],
            "sim_th": self.sim_th,
            "depth": self.depth,
            "session_pattern": self.session_pattern,
            "extra_delimiters": list(self.extra_delimiters),
            "parametrize_numeric_tokens": self.parametrize_numeric_tokens,
            "timestamp_fields": list(self.timestamp_fields),
            "timestamp_format": self.timestamp_format,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preset:
        """Rebuild a preset from :meth:`to_dict`. Masks and session patterns saved by earlier
        versions (Python ``re`` patterns with lookarounds) become their RE2 equivalents."""
        try:
            session = data.get("session_pattern")
            return cls(
                name=str(data["name"]),
                log_format=str(data["log_format"]),
                masking=tuple(
                    (LEGACY_PATTERNS.get(str(r), str(r)), str(m)) for r, m in data["masking"]
                ),
                sim_th=float(data["sim_th"]),
                depth=int(data["depth"]),
                session_pattern=LEGACY_PATTERNS.get(session, session) if session else session,
                extra_delimiters=tuple(str(d) for d in data.get("extra_delimiters", ())),
                parametrize_numeric_tokens=bool(data.get("parametrize_numeric_tokens", True)),
                timestamp_fields=tuple(str(f) for f in data.get("timestamp_fields") or ()),
                timestamp_format=data.get("timestamp_format"),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid preset record: {exc!r}") from exc


#: At most this many line shapes per preset are remembered (see Preset._shapes), each of
#: at most _SHAPE_CHARS characters.
_SHAPES = 20_000
_SHAPE_CHARS = 1024
_DIGITS_AS_0 = bytes(48 if 48 <= c <= 57 else c for c in range(256))
_UNSEEN = object()
#: Characters with a meaning in a regex (outside a class), for :attr:`Preset._plain_format`.
_REGEX_SYNTAX = frozenset("\\.^$|?*+()[]{}")
#: ASCII whitespace (``str.isspace``, the ASCII part of ``SPACE``) to b" ", the rest as is.
_ASCII_SPACE = bytes(32 if chr(c).isspace() and c < 128 else c for c in range(256))


def _match_text(norm: bytes, pos: int, text: tuple[bytes, ...], n: int) -> int:
    """Where a format's ``text`` (see :attr:`Preset._plain_plan`) ends when matched at
    ``pos`` of ``norm`` (a line with its whitespace as b" ") with each run of whitespace as
    long as it goes, or -1."""
    for item in text:
        if item == b" ":
            if pos >= n or norm[pos] != 32:
                return -1
            pos += 1
            while pos < n and norm[pos] == 32:
                pos += 1
        elif norm.startswith(item, pos):
            pos += len(item)
        else:
            return -1
    return pos


def _fields(data: bytes, spans, groups: tuple[tuple[str, int], ...]) -> dict[str, str]:
    fields = {}
    for name, i in groups:
        start, end = spans[i]
        fields[name] = data[start:end].decode("utf-8") if start >= 0 else ""
    return fields


def compile_log_format(log_format: str):
    """Compile a loghub-style format into an anchored RE2 regex, one named group per field.

    Fields match lazily (``.*?``); the literal text between them is a regex fragment (RE2
    syntax) whose spaces match one or more whitespace characters, as in loghub's
    ``generate_logformat_regex``. Like Python's ``$``, the end also matches before a final
    newline. Raises :class:`~flexlog.parsing.regex.PatternError` (a ``ValueError``) naming
    the format when it cannot be compiled or needs backtracking.
    """
    return compile_linear(
        "^" + _format_regex(log_format) + r"\n?$", what=f"log format {log_format!r} as a regex:"
    )


def _format_regex(log_format: str) -> str:
    parts = _FIELD.split(log_format)
    regex = []
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            reject_backtracking(part, what=f"log format {log_format!r}: the text")
            regex.append(_SPACE_RUN.sub(lambda _: f"[{_S}]+", part))
        else:
            if not part.isidentifier():
                raise PatternError(f"log format field <{part}> is not a valid identifier")
            if part in seen:
                raise PatternError(f"log format field <{part}> appears twice")
            seen.add(part)
            regex.append(f"(?P<{part}>.*?)")
    return "".join(regex)


# HPC: quoted component names (``\042alt0\042``), node names and ranges, node-set dumps, and
# storage domain names. Interface names (``alt0``, ``ee0``) stay: they tell events apart.
_HPC_MASKS = (
    (r"\\042.*?\\042", "COMP"),
    (rf"(?:node-{_D}+ 0x[0-9a-fA-F]+ <ok>[{_S}]*)+", "NODESET"),
    (rf"node-D?(?:{_D}+|\[[^\]]*\])", "NODE"),
    (_BOUNDARY + "domain " + _value(rf"[^{_S}]+"), "DOMAIN"),
    MASK_IP,
    MASK_HEX,
    MASK_NUM,
    (  # storage234, root14_local
        _not_after(_W + "<")
        + _value(rf"[A-Za-z_][{_W}.-]*{_D}{{2,}}[{_W}.-]*")
        + _not_before(_W + ">"),
        "ID",
    ),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="generic",
            log_format="<Content>",
            masking=(*MASK_TIMESTAMPS, *COMMON_MASKS),
            sim_th=0.8,
            depth=4,
            description="whole line is the content; common masks",
        ),
        Preset(
            name="hdfs",
            timestamp_fields=("Date", "Time"),
            timestamp_format="%y%m%d %H%M%S",
            log_format="<Date> <Time> <Pid> <Level> <Component>: <Content>",
            masking=(MASK_PATH, MASK_BLOCK, *_VALUES, *_NUMBERS),
            sim_th=0.5,
            depth=4,
            session_pattern=SESSION_BLOCK,
            description="Hadoop HDFS datanode/namenode logs; sessions are block ids",
        ),
        Preset(
            name="hadoop",
            timestamp_fields=("Date", "Time"),
            timestamp_format="%Y-%m-%d %H:%M:%S,%f",
            log_format=r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>",
            masking=(*_STRUCTURES, MASK_YARN_ID, *_VALUES, MASK_HOST, *_NUMBERS),
            sim_th=0.9,
            depth=5,
            description="Hadoop MapReduce application logs",
        ),
        Preset(
            name="spark",
            timestamp_fields=("Date", "Time"),
            timestamp_format="%y/%m/%d %H:%M:%S",
            log_format="<Date> <Time> <Level> <Component>: <Content>",
            masking=(*_STRUCTURES, *_VALUES, MASK_YARN_ID, *_NUMBERS),
            sim_th=0.94,
            depth=4,
            description="Spark executor logs",
        ),
        Preset(
            name="openssh",
            timestamp_fields=("Date", "Day", "Time"),
            timestamp_format="%b %d %H:%M:%S",
            log_format=r"<Date> <Day> <Time> <Component> sshd\[<Pid>\]: <Content>",
            masking=(
                MASK_RHOST,
                MASK_USER,
                MASK_USER_EQ,
                MASK_PASSWORD_USER,
                *_STRUCTURES,
                *_VALUES,
                MASK_HOST,
                *_NUMBERS,
            ),
            sim_th=0.94,
            depth=5,
            description="OpenSSH server logs (syslog)",
        ),
        Preset(
            name="zookeeper",
            timestamp_fields=("Date", "Time"),
            timestamp_format="%Y-%m-%d %H:%M:%S,%f",
            log_format=r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>",
            masking=(("environment:" + _value(rf"[^{_S}]+=.*"), "ENV"), *COMMON_MASKS),
            sim_th=0.95,
            depth=4,
            description="ZooKeeper server logs",
        ),
        Preset(
            name="linux",
            timestamp_fields=("Month", "Date", "Time"),
            timestamp_format="%b %d %H:%M:%S",
            log_format=r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>",
            masking=(MASK_DATE, MASK_PAREN_HOST, MASK_RHOST, MASK_USER, *COMMON_MASKS),
            sim_th=0.92,
            depth=4,
            description="Linux syslog (/var/log/messages)",
        ),
        Preset(
            name="openstack",
            timestamp_fields=("Date", "Time"),
            timestamp_format="%Y-%m-%d %H:%M:%S.%f",
            log_format=r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
            masking=COMMON_MASKS,
            sim_th=0.94,
            depth=5,
            description="OpenStack nova logs",
        ),
        Preset(
            name="apache",
            timestamp_fields=("Time",),
            timestamp_format="%a %b %d %H:%M:%S %Y",
            log_format=r"\[<Time>\] \[<Level>\] <Content>",
            masking=COMMON_MASKS,
            sim_th=0.5,
            depth=4,
            description="Apache httpd error log",
        ),
        Preset(
            name="hpc",
            timestamp_fields=("Time",),
            timestamp_format="%s",
            log_format="<LogId> <Node> <Component> <State> <Time> <Flag> <Content>",
            masking=_HPC_MASKS,
            sim_th=0.95,
            depth=4,
            description="HPC cluster event logs (LANL)",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive); a ValueError lists the known names."""
    preset = PRESETS.get(name.lower()) if isinstance(name, str) else None
    if preset is None:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown preset {name!r}; known presets: {known}")
    return preset


def _legacy_patterns() -> dict[str, str]:
    """Old Python pattern -> today's RE2 pattern, pairing each old preset's masks with today's."""
    table: dict[str, str] = {}
    for name, indices in legacy.PRESET_MASKS.items():
        for index, (new, _) in zip(indices, PRESETS[name].masking, strict=True):
            old = legacy.PATTERNS[index]
            if table.setdefault(old, new) != new:
                raise AssertionError(f"legacy mask {old!r} has two RE2 versions")
    for name, old in legacy.SESSION_PATTERNS.items():
        table[old] = PRESETS[name].session_pattern or old
    return table


#: Patterns saved by earlier versions (Python ``re`` syntax) and their RE2 versions today.
LEGACY_PATTERNS: dict[str, str] = _legacy_patterns()
