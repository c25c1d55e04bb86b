"""Template mining with Drain3: raw log lines to stable event keys.

:class:`TemplateParser` wraps a Drain3 ``TemplateMiner`` configured from a
:class:`~flexlog.parsing.presets.Preset`. Fitting is two-pass: every line is first added to
Drain (templates generalise as lines arrive), then each line is matched against the final
clusters, so all lines of a cluster get the same, final template. An event key is derived from
the template text (``"T" + sha1[:8]``), not from Drain's cluster id, so the same template gets
the same key across runs, files and reloads.

The results are Drain3's, line for line, reached faster (``flexlog bench --parse`` measures
it): lines are split and masked by the preset's fast paths (see ``Preset._split_line`` and
:class:`~flexlog.parsing.regex.MaskChain`), and many lines share a masked content, so what
Drain made of one (the cluster it joined unchanged while fitting, the template it matched
while parsing) is remembered for the next, until a cluster changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from drain3 import TemplateMiner
from drain3.drain import LogCluster, Node
from drain3.masking import AbstractMaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from flexlog.data.records import IngestReport, InputError, is_unicode, iter_text_lines
from flexlog.parsing.presets import Preset, get_preset
from flexlog.parsing.regex import LinearMask, MaskChain

#: Raw log lines longer than this many bytes are rejected, not parsed.
MAX_LOG_LINE_BYTES = 1 << 20
#: Version of the JSON layout written by :meth:`TemplateParser.to_dict`.
STATE_VERSION = 1
#: What a parser may do with a line that does not fit its format.
UNMATCHED = ("reject", "content")

_PARAM = "<*>"
# Stays on Python's re: one character class, searched once per token, cannot backtrack.
_DIGIT = re.compile(r"\d")
_NOT_UNICODE = "is not valid Unicode (a lone surrogate)"
#: Most masked contents a parser remembers the cluster or template of (see _add, _lookup),
#: each of at most _CACHE_CHARS characters.
_CACHE_SIZE = 20_000
_CACHE_CHARS = 1024


def event_key(template: str) -> str:
    """The stable event key of a template: ``"T"`` + the first 8 hex digits of its SHA-1."""
    return "T" + hashlib.sha1(template.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class ParsedLine:
    """One parsed log line: its 1-based line number, content, event key and template."""

    line: int
    content: str
    event: str
    template: str
    session: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def read_log_lines(
    path: str | Path, report: IngestReport | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for the decodable lines of a raw log file.

    Lines over :data:`MAX_LOG_LINE_BYTES` or not valid UTF-8 are rejected into ``report``;
    blank lines are skipped and not counted. Only rejections are recorded here: whoever
    consumes the lines (e.g. :meth:`TemplateParser.parse`) accepts or rejects each one, so a
    single report accounts for every line. Raises :class:`InputError` if the file cannot be
    opened.
    """
    report = report if report is not None else IngestReport()
    yield from iter_text_lines(path, report, max_line_bytes=MAX_LOG_LINE_BYTES)


def _numbered(lines: Iterable[str | tuple[int, str]]) -> list[tuple[int, str]]:
    """Number plain strings 1-based; keep the numbers of ``(line, text)`` pairs."""
    out = []
    for i, item in enumerate(lines, start=1):
        if isinstance(item, tuple):
            lineno, text = item
            out.append((int(lineno), text))
        else:
            out.append((i, item))
    return out


class LinearMaskingInstruction(AbstractMaskingInstruction):
    """A Drain3 masking instruction on RE2 (linear time) instead of Python's ``re``.

    Drain3's own ``MaskingInstruction`` runs ``re.sub``; this one runs a
    :class:`~flexlog.parsing.regex.LinearMask` (given, or compiled from an RE2 pattern), so a
    group named ``mask`` marks the value and the rest of the match is context that stays.
    """

    def __init__(self, mask: LinearMask | str, mask_with: str):
        super().__init__(mask_with)
        if isinstance(mask, str):
            mask = LinearMask(mask, what=f"mask {mask_with}")
        self.linear_mask = mask

    @property
    def pattern(self) -> str:
        return self.linear_mask.pattern

    def mask(self, content: str, mask_prefix: str, mask_suffix: str) -> str:
        return self.linear_mask.sub(mask_prefix + self.mask_with + mask_suffix, content)


class TemplateParser:
    """Mine templates from raw log lines with Drain3 and map lines to stable event keys.

    ``preset`` is a preset name (see :data:`~flexlog.parsing.presets.PRESETS`) or a
    :class:`Preset`; ``sim_th`` and ``depth`` override the preset's Drain parameters.
    ``unmatched``: what becomes of a line that does not fit the format: ``"reject"`` it
    (counted in the report, naming the line), or parse the whole line as ``"content"``.
    """

    def __init__(
        self,
        preset: str | Preset = "generic",
        *,
        sim_th: float | None = None,
        depth: int | None = None,
        unmatched: str = "reject",
    ) -> None:
        if unmatched not in UNMATCHED:
            raise ValueError(f"unmatched must be one of {', '.join(UNMATCHED)}, got {unmatched!r}")
        self.unmatched = unmatched
        base = get_preset(preset) if isinstance(preset, str) else preset
        if not isinstance(base, Preset):
            raise TypeError(f"preset must be a name or a Preset, got {type(preset).__name__}")
        if sim_th is not None:
            base = dataclasses.replace(base, sim_th=sim_th)
        if depth is not None:
            base = dataclasses.replace(base, depth=depth)
        self.preset = base
        # Drain3 logs at INFO on start-up and state changes; quiet it unless someone chose a level.
        drain_logger = logging.getLogger("drain3")
        if drain_logger.level == logging.NOTSET:
            drain_logger.setLevel(logging.WARNING)
        self._miner = TemplateMiner(config=self._config(base))
        self._unseen: dict[str, str] = {}
        # The same masks as the miner's masking instructions, applied alike, faster.
        self._mask = MaskChain(
            (mask, f"<{name}>") for mask, (_, name) in zip(base.maskers, base.masking, strict=True)
        )
        # Masked content -> the cluster that adding it again leaves unchanged (see _add), and
        # masked content -> (template, event key) that parsing it gives (see _lookup). Both
        # hold only while Drain's clusters do not change: _changed() empties them.
        self._joins: dict[str, LogCluster] = {}
        self._matches: dict[str, tuple[str, str]] = {}

    @staticmethod
    def _config(preset: Preset) -> TemplateMinerConfig:
        config = TemplateMinerConfig()
        config.drain_sim_th = preset.sim_th
        config.drain_depth = preset.depth
        config.drain_extra_delimiters = list(preset.extra_delimiters)
        config.parametrize_numeric_tokens = preset.parametrize_numeric_tokens
        config.masking_instructions = [
            LinearMaskingInstruction(mask, name)
            for mask, (_, name) in zip(preset.maskers, preset.masking, strict=True)
        ]
        config.mask_prefix, config.mask_suffix = "<", ">"
        config.profiling_enabled = False
        return config

    @property
    def fitted(self) -> bool:
        """True once at least one template has been learned."""
        return len(self._miner.drain.id_to_cluster) > 0

    def fit(self, lines: Iterable[str | tuple[int, str]]) -> TemplateParser:
        """Learn templates from ``lines`` (strings or ``(line, text)`` pairs).

        Lines that do not fit the preset's format are skipped here; :meth:`parse` reports them.
        Fitting again adds to what was learned, and may generalise templates (and so change
        the keys) that earlier parses returned.
        """
        split = self._splitter()
        mask = self._mask
        joins = self._joins
        add = self._add
        for _, text in _iter_numbered(lines):
            if not text.strip():
                continue
            parts = split(text)
            if parts is not None:
                masked = mask(parts[1])
                cluster = joins.get(masked)  # _add, inline for the usual case
                if cluster is not None:
                    cluster.size += 1
                else:
                    add(masked)
        return self

    def _splitter(self):
        """The preset's header split; with ``unmatched="content"``, a line that does not fit
        the format is all content (no header fields)."""
        split = self.preset._split_line
        if self.unmatched == "reject":
            return split

        def split_or_whole(text: str):
            parts = split(text)
            if parts is None and is_unicode(text):
                return {}, text.strip()
            return parts

        return split_or_whole

    def _add(self, masked: str) -> None:
        """Add one masked content to Drain, as ``TemplateMiner.add_log_message`` does.

        Adding a content that last joined a cluster unchanged, while no cluster has changed
        since, finds the same cluster and leaves it unchanged again (Drain's tree search reads
        the tree and the templates only): only its size grows, so that is all this does.
        """
        cluster = self._joins.get(masked)
        if cluster is not None:
            cluster.size += 1
            return
        cluster, change = self._miner.drain.add_log_message(masked)
        if change != "none":
            self._changed()
        elif len(masked) <= _CACHE_CHARS:
            if len(self._joins) >= _CACHE_SIZE:
                self._joins.clear()
            self._joins[masked] = cluster

    def _changed(self) -> None:
        """Drain's clusters changed: forget what was looked up in the old ones."""
        self._joins.clear()
        self._matches.clear()

    def parse(
        self,
        lines: Iterable[str | tuple[int, str]],
        source: str = "<lines>",
        report: IngestReport | None = None,
    ) -> list[ParsedLine]:
        """Map each line to its event; an unfitted parser first fits on the same lines.

        Every non-blank line is accepted or rejected in ``report`` (a line that does not fit
        the preset's format is rejected, naming ``source`` and the line number). Lines no
        learned template matches get a key from their own masked content.
        """
        return list(self.iter_parse(lines, source, report))

    def iter_parse(
        self,
        lines: Iterable[str | tuple[int, str]],
        source: str = "<lines>",
        report: IngestReport | None = None,
    ) -> Iterator[ParsedLine]:
        """:meth:`parse`, one line at a time: a fitted parser reads ``lines`` as it goes, so
        a file of any length streams through in constant memory (an unfitted one first reads
        them all, to fit on them). Each line is accepted or rejected in ``report`` by the time
        it is yielded or skipped."""
        report = report if report is not None else IngestReport()
        if not self.fitted:
            lines = [(n, t) for n, t in _numbered(lines) if t.strip()]
            self.fit(lines)
        split = self._splitter()
        session_of = self.preset.session_of
        mask = self._mask
        matches = self._matches
        lookup = self._lookup
        reason = f"does not match the {self.preset.name} log format"
        for lineno, text in _iter_numbered(lines):
            if not text.strip():
                continue
            parts = split(text)
            if parts is None:
                report.reject(source, lineno, reason if is_unicode(text) else _NOT_UNICODE)
                continue
            fields, content = parts
            masked = mask(content)
            hit = matches.get(masked)
            if hit is None:
                hit = lookup(masked)
            template, event = hit
            report.accept()
            yield ParsedLine(lineno, content, event, template, session_of(content), fields)

    def fit_parse(
        self,
        lines: Iterable[str | tuple[int, str]],
        source: str = "<lines>",
        report: IngestReport | None = None,
    ) -> list[ParsedLine]:
        """Fit on ``lines``, then parse them against the final templates (two passes)."""
        numbered = _numbered(lines)
        self.fit(numbered)
        return self.parse(numbered, source, report)

    def parse_file(
        self, path: str | Path, report: IngestReport | None = None, *, fit: bool | None = None
    ) -> list[ParsedLine]:
        """Read and parse a raw log file; fits on it first if ``fit`` (default: if unfitted)."""
        report = report if report is not None else IngestReport()
        lines = list(read_log_lines(path, report))
        if fit or (fit is None and not self.fitted):
            self.fit(lines)
        return self.parse(lines, str(path), report)

    def match(self, content: str) -> str:
        """The final template text for one line's content (no learning).

        A content no learned template matches gets its own masked, normalised text as its
        template (tokens with digits become ``<*>``), so unseen lines still key deterministically.
        """
        masked = self._mask(content)
        hit = self._matches.get(masked)
        if hit is None:
            hit = self._lookup(masked)
        return hit[0]

    def _lookup(self, masked: str) -> tuple[str, str]:
        """``(template, event key)`` of a masked content, as :meth:`match` defines them; kept
        for the next line with the same masked content (until the clusters change)."""
        cluster = self._miner.drain.match(masked, full_search_strategy="fallback")
        if cluster is not None:
            template = cluster.get_template()
            key = event_key(template)
        else:
            template = self._unseen_masked(masked)
            key = event_key(template)
            self._unseen.setdefault(key, template)
        hit = (template, key)
        if len(masked) <= _CACHE_CHARS:
            if len(self._matches) >= _CACHE_SIZE:
                self._matches.clear()
            self._matches[masked] = hit
        return hit

    def _unseen_template(self, content: str) -> str:
        return self._unseen_masked(self._mask(content))

    def _unseen_masked(self, masked: str) -> str:
        tokens = self._miner.drain.get_content_as_tokens(masked)
        if self.preset.parametrize_numeric_tokens:
            tokens = [
                _PARAM if _DIGIT.search(t) and not (t.startswith("<") and t.endswith(">")) else t
                for t in tokens
            ]
        return " ".join(tokens)

    def templates(self) -> dict[str, str]:
        """``{event key: template}`` for every learned template, then any unseen ones parsed."""
        table = self.templates_learned()
        for key, template in self._unseen.items():
            table.setdefault(key, template)
        return table

    # -- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-serialisable snapshot: preset, Drain clusters and Drain's prefix tree.

        The tree is stored as is, so a reloaded parser matches lines exactly as this one does.
        """
        drain = self._miner.drain
        clusters = sorted(drain.id_to_cluster.values(), key=_cluster_id)
        return {
            "kind": "flexlog.template_parser",
            "version": STATE_VERSION,
            "preset": self.preset.to_dict(),
            "unmatched": self.unmatched,
            "clusters": [
                {"id": c.cluster_id, "size": c.size, "tokens": list(c.log_template_tokens)}
                for c in clusters
            ],
            "clusters_counter": drain.clusters_counter,
            "tree": _node_to_json(drain.root_node),
            "templates": self.templates_learned(),
        }

    def templates_learned(self) -> dict[str, str]:
        """``{event key: template}`` for the learned templates only."""
        table = {}
        for cluster in sorted(self._miner.drain.id_to_cluster.values(), key=_cluster_id):
            template = cluster.get_template()
            table.setdefault(event_key(template), template)
        return table

    @classmethod
    def from_dict(cls, data: dict, *, unmatched: str | None = None) -> TemplateParser:
        """Rebuild a parser saved with :meth:`to_dict` (``unmatched``: instead of the saved
        choice); a ValueError says what is wrong."""
        if not isinstance(data, dict) or data.get("kind") != "flexlog.template_parser":
            raise ValueError("not a flexlog template parser state (missing kind)")
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"template parser state version {data.get('version')!r} is not {STATE_VERSION}"
            )
        try:
            parser = cls(
                Preset.from_dict(data["preset"]),
                unmatched=unmatched or data.get("unmatched", "reject"),
            )
            drain = parser._miner.drain
            for rec in data["clusters"]:
                cluster = LogCluster([str(t) for t in rec["tokens"]], int(rec["id"]))
                cluster.size = int(rec["size"])
                drain.id_to_cluster[cluster.cluster_id] = cluster
            drain.clusters_counter = int(data["clusters_counter"])
            drain.root_node = _node_from_json(data["tree"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid template parser state: {exc!r}") from exc
        known = set(drain.id_to_cluster)
        missing = _tree_ids(drain.root_node) - known
        if missing:
            raise ValueError(
                f"invalid template parser state: tree names unknown clusters {missing}"
            )
        return parser

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TemplateParser:
        """Read a parser written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a JSON parser state: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from exc


def _iter_numbered(lines: Iterable[str | tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """:func:`_numbered`, lazily."""
    for i, item in enumerate(lines, start=1):
        if isinstance(item, tuple):
            lineno, text = item
            yield int(lineno), text
        else:
            yield i, item


def _cluster_id(cluster: LogCluster) -> int:
    return cluster.cluster_id


def _node_to_json(node: Node) -> dict:
    return {
        "ids": list(node.cluster_ids),
        "children": {k: _node_to_json(v) for k, v in node.key_to_child_node.items()},
    }


def _node_from_json(data: dict) -> Node:
    node = Node()
    node.cluster_ids = [int(i) for i in data["ids"]]
    node.key_to_child_node = {str(k): _node_from_json(v) for k, v in data["children"].items()}
    return node


def _tree_ids(node: Node) -> set[int]:
    ids = set(node.cluster_ids)
    for child in node.key_to_child_node.values():
        ids |= _tree_ids(child)
    return ids
