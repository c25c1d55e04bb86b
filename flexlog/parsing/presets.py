"""Per-system parsing presets: header format, Drain3 masking, and Drain parameters.

A preset says how to split a raw log line into header fields and the free-text ``Content``
(which Drain mines templates from), which variable parts to mask before mining, and how to
find a line's session id. Log formats follow loghub's published ones, e.g.
``'<Date> <Time> <Pid> <Level> <Component>: <Content>'``: each ``<Field>`` becomes a named
group and the text between fields is a regular-expression fragment in which runs of spaces
match any whitespace (so literal brackets are written ``\\[``), exactly as loghub reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

# Reusable masks: (regex, mask name) pairs in Drain3's MaskingInstruction style; matched text
# becomes ``<NAME>``. Order matters: masks run in sequence, so context masks (``user X``) and
# whole structures (URLs, paths, IP lists) come before the number masks that would split them.
_B = r"(?<![A-Za-z0-9_.])"  # not inside a longer word or number
_E = r"(?![A-Za-z0-9_])"
_IP = r"/?\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"

MASK_URL = (r"(?<![\w.+-])[A-Za-z][\w+.-]*://[^\s\"'\])]*", "URL")
#: A path of two or more segments, with any query string (``/v2/x/servers?all=1``).
MASK_PATH = (r"(?<![\w/])(?:/[^\s/\"'()\[\]]*){2,}", "PATH")
MASK_UUID = (r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", "UUID")
#: One IPv4 address with optional port and leading slash, or a comma-separated list of them.
MASK_IP = (_B + _IP + "(?:," + _IP + ")*" + _E, "IP")
MASK_HEX = (_B + r"0x[0-9a-fA-F]+" + _E, "HEX")
#: Long lowercase hex strings: hashes, tenant and request ids.
MASK_HEXID = (_B + r"[0-9a-f]{16,}" + _E, "ID")
#: Host names with at least three labels (``ns.example.com``); also hits dotted Java names.
MASK_HOST = (_B + r"(?:[\w$-]+\.){2,}[\w$-]+" + _E, "HOST")
#: Integers and decimals, with an optional size or time unit (``5.2 KB``, ``10000ms``).
MASK_NUM = (_B + r"[-+]?\d+(?:\.\d+)?(?:\s?(?:[KMGTP]i?)?B|[mun]?s)?" + _E, "NUM")
#: Any remaining word that contains a digit (``broadcast_9_piece0``, ``mesos-slave-07``).
MASK_ALNUM = (r"(?<![\w<])[A-Za-z_][\w.-]*\d[\w.-]*(?![\w>])", "ID")
#: HDFS block ids; a run of several (``blk_1 blk_2 ...``) is one mask.
MASK_BLOCK = (r"blk_-?\d+(?:\s+blk_-?\d+)*", "BLK")
#: Hadoop/YARN ids: job_, task_, attempt_, container_, application_, appattempt_, jvm_.
MASK_YARN_ID = (
    r"(?<![A-Za-z0-9])(?:appattempt|application|attempt|container|job|task|jvm)_\d+"
    r"(?:_(?:[mr]|\d+))*",
    "ID",
)
#: ``Fri Jun 17 07:07:00 2005`` style timestamps inside messages.
MASK_DATE = (
    r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" +\d{1,2} \d{2}:\d{2}:\d{2} \d{4}\b",
    "DATE",
)
#: Timestamps and dates, for the ``generic`` preset whose content still has the line's header.
MASK_TIMESTAMPS: tuple[tuple[str, str], ...] = (
    MASK_DATE,
    (
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?",
        "TS",
    ),
    (r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d{1,2} \d{2}:\d{2}:\d{2}\b", "TS"),
    (r"\b\d{2,4}[-/]\d{2}[-/]\d{2}\b", "DATE"),
    (r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b", "TIME"),
)
# Context masks: the value after a key word is a parameter whatever it looks like.
MASK_USER = (r"(?<=\buser )(?<!\buser user )\s*\S+", "USER")
MASK_USER_EQ = (r"(?<=\buser=)\S+", "USER")
MASK_PASSWORD_USER = (r"(?<=\bpassword for )(?!invalid user )\S+", "USER")
MASK_RHOST = (r"(?<=rhost=)\S+", "HOST")
#: A host name in parentheses, or nothing: ``(host.example.net)`` and ``()`` mask alike.
MASK_PAREN_HOST = (r"(?<=\()(?:(?:[\w-]+\.)+[\w-]+)?(?=\))", "HOST")

_STRUCTURES = (MASK_URL, MASK_PATH)
_VALUES = (MASK_UUID, MASK_IP, MASK_HEX, MASK_HEXID)
_NUMBERS = (MASK_NUM, MASK_ALNUM)

#: Masks that suit most logs, in order; most presets build on them.
COMMON_MASKS: tuple[tuple[str, str], ...] = (*_STRUCTURES, *_VALUES, *_NUMBERS)

_FIELD = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class Preset:
    """How to parse one log system.

    ``masking`` holds (regex, mask name) pairs applied in order before Drain sees the content;
    ``session_pattern`` (optional) is searched in the content and its first match (group 1 if
    the pattern has groups) is the line's session id; ``extra_delimiters`` are literal strings
    Drain treats as extra token separators.
    """

    name: str
    log_format: str
    masking: tuple[tuple[str, str], ...] = COMMON_MASKS
    sim_th: float = 0.4
    depth: int = 4
    session_pattern: str | None = None
    extra_delimiters: tuple[str, ...] = ()
    parametrize_numeric_tokens: bool = True
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Accept lists from callers and JSON; store tuples so the preset stays hashable.
        object.__setattr__(self, "masking", tuple((str(r), str(m)) for r, m in self.masking))
        object.__setattr__(self, "extra_delimiters", tuple(self.extra_delimiters))
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
            _compile(self.name, "mask", regex)
        if self.session_pattern is not None:
            _compile(self.name, "session_pattern", self.session_pattern)
        try:
            _ = self.header_regex
        except re.error as exc:
            raise ValueError(
                f"preset {self.name!r}: log_format is not a valid pattern: {exc}"
            ) from exc

    @cached_property
    def header_regex(self) -> re.Pattern[str]:
        """The compiled log format: one named group per ``<Field>``."""
        return compile_log_format(self.log_format)

    @cached_property
    def session_regex(self) -> re.Pattern[str] | None:
        return re.compile(self.session_pattern) if self.session_pattern else None

    def split(self, line: str) -> dict[str, str] | None:
        """The header fields and ``Content`` of ``line``, or None if it does not fit the format."""
        m = self.header_regex.match(line)
        if m is None:
            return None
        return {k: (v if v is not None else "") for k, v in m.groupdict().items()}

    def session_of(self, content: str) -> str | None:
        """The session id in ``content`` (first match of ``session_pattern``), if any."""
        if self.session_regex is None:
            return None
        m = self.session_regex.search(content)
        if m is None:
            return None
        return m.group(1) if self.session_regex.groups else m.group(0)

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
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preset:
        try:
            return cls(
                name=str(data["name"]),
                log_format=str(data["log_format"]),
                masking=tuple((str(r), str(m)) for r, m in data["masking"]),
                sim_th=float(data["sim_th"]),
                depth=int(data["depth"]),
                session_pattern=data.get("session_pattern"),
                extra_delimiters=tuple(str(d) for d in data.get("extra_delimiters", ())),
                parametrize_numeric_tokens=bool(data.get("parametrize_numeric_tokens", True)),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid preset record: {exc!r}") from exc


def _compile(preset: str, what: str, regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(
            f"preset {preset!r}: {what} {regex!r} is not a valid regex: {exc}"
        ) from exc


def compile_log_format(log_format: str) -> re.Pattern[str]:
    """Compile a loghub-style format into an anchored regex with one named group per field.

    Fields match lazily (``.*?``); the literal text between them is a regex fragment whose
    spaces match one or more whitespace characters, as in loghub's ``generate_logformat_regex``.
    """
    parts = _FIELD.split(log_format)
    regex = []
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex.append(re.sub(" +", r"\\s+", part))
        else:
            if not part.isidentifier():
                raise ValueError(f"log format field <{part}> is not a valid identifier")
            if part in seen:
                raise ValueError(f"log format field <{part}> appears twice")
            seen.add(part)
            regex.append(f"(?P<{part}>.*?)")
    return re.compile("^" + "".join(regex) + "$")


# HPC: quoted component names (``\042alt0\042``), node names and ranges, node-set dumps, and
# storage domain names. Interface names (``alt0``, ``ee0``) stay: they tell events apart.
_HPC_MASKS = (
    (r"\\042.*?\\042", "COMP"),
    (r"(?:node-\d+ 0x[0-9a-fA-F]+ <ok>\s*)+", "NODESET"),
    (r"node-D?(?:\d+|\[[^\]]*\])", "NODE"),
    (r"(?<=\bdomain )\S+", "DOMAIN"),
    MASK_IP,
    MASK_HEX,
    MASK_NUM,
    (r"(?<![\w<])[A-Za-z_][\w.-]*\d{2,}[\w.-]*(?![\w>])", "ID"),  # storage234, root14_local
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
            log_format="<Date> <Time> <Pid> <Level> <Component>: <Content>",
            masking=(MASK_PATH, MASK_BLOCK, *_VALUES, *_NUMBERS),
            sim_th=0.5,
            depth=4,
            session_pattern=r"blk_-?\d+",
            description="Hadoop HDFS datanode/namenode logs; sessions are block ids",
        ),
        Preset(
            name="hadoop",
            log_format=r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>",
            masking=(*_STRUCTURES, MASK_YARN_ID, *_VALUES, MASK_HOST, *_NUMBERS),
            sim_th=0.9,
            depth=5,
            description="Hadoop MapReduce application logs",
        ),
        Preset(
            name="spark",
            log_format="<Date> <Time> <Level> <Component>: <Content>",
            masking=(*_STRUCTURES, *_VALUES, MASK_YARN_ID, *_NUMBERS),
            sim_th=0.94,
            depth=4,
            description="Spark executor logs",
        ),
        Preset(
            name="openssh",
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
            log_format=r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>",
            masking=((r"(?<=environment:)\S+=.*", "ENV"), *COMMON_MASKS),
            sim_th=0.95,
            depth=4,
            description="ZooKeeper server logs",
        ),
        Preset(
            name="linux",
            log_format=r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>",
            masking=(MASK_DATE, MASK_PAREN_HOST, MASK_RHOST, MASK_USER, *COMMON_MASKS),
            sim_th=0.92,
            depth=4,
            description="Linux syslog (/var/log/messages)",
        ),
        Preset(
            name="openstack",
            log_format=r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
            masking=COMMON_MASKS,
            sim_th=0.94,
            depth=5,
            description="OpenStack nova logs",
        ),
        Preset(
            name="apache",
            log_format=r"\[<Time>\] \[<Level>\] <Content>",
            masking=COMMON_MASKS,
            sim_th=0.5,
            depth=4,
            description="Apache httpd error log",
        ),
        Preset(
            name="hpc",
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
