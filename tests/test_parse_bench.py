"""``flexlog bench --parse`` and the parser's fast paths.

The benchmark runs on a few thousand generated lines and returns its fields (speed targets
live in the benchmark's reports, not here). The fast paths (ASCII lines split without a regex
or with the format's Latin-1 program, masks applied as bytes, masked texts remembered by their
shape, Drain lookups remembered per masked content) must give exactly what the plain paths
give: each is checked against its plain counterpart on the loghub samples, generated HDFS
lines and lines made to trip them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from drain3 import TemplateMiner

from flexlog.data.records import IngestReport
from flexlog.parsing import (
    PRESETS,
    LinearMask,
    Preset,
    TemplateParser,
    event_key,
    read_log_lines,
)
from flexlog.parsing.accuracy import BENCHMARKS
from flexlog.parsing.regex import (
    _ANCHOR_START,
    _UNANCHORED,
    MaskChain,
    ascii_matcher,
    compile_linear,
)
from flexlog.parsing.throughput import HDFS_EVENTS, hdfs_lines, measure, write_hdfs_log

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _samples() -> dict[str, list[tuple[int, str]]]:
    """preset -> its loghub sample (numbered lines), when the datasets are there."""
    if not DATASETS.is_dir():
        return {}
    return {preset: list(read_log_lines(DATASETS / rel)) for preset, rel in BENCHMARKS}


SAMPLES = _samples()


def _need_samples() -> None:
    if not SAMPLES:
        pytest.skip(f"datasets directory {DATASETS} is missing")


def _vary_digits(text: str, rng: random.Random) -> str:
    """``text`` with each digit replaced by a random digit: the same shape."""
    return "".join(rng.choice("0123456789") if c.isdigit() and c.isascii() else c for c in text)


# -- the benchmark -------------------------------------------------------------------------


def test_bench_parse_returns_a_row_per_size(tmp_path: Path) -> None:
    from flexlog.bench import bench_parse

    rows = bench_parse("hdfs", (2_000, 5_000), out_dir=tmp_path, progress=False)
    assert [r["lines"] for r in rows] == [2_000, 5_000]
    for r in rows:
        assert r["preset"] == "hdfs" and r["rejected"] == 0
        assert r["seconds"] == pytest.approx(r["fit_s"] + r["parse_s"])
        assert r["lines_per_s"] > 0 and r["lines_per_cpu_s"] > 0
        assert r["peak_rss_mib"] > 0 and r["parser_mib"] >= 0
        assert 10 <= r["templates"] <= 40
        assert r["with_session"] == r["lines"]  # every HDFS line names its block
    for name in ("parse_bench.json", "parse_bench.md", "parse_bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    with pytest.raises(ValueError, match="sizes must be positive"):
        bench_parse("hdfs", (0,), progress=False)
    with pytest.raises(ValueError, match="unknown preset"):
        bench_parse("nope", (10,), progress=False)


def test_measure_in_process(tmp_path: Path) -> None:
    log = write_hdfs_log(tmp_path / "hdfs.log", 3_000, seed=3)
    row = measure("hdfs", log)
    assert row["lines"] == 3_000 and row["rejected"] == 0 and row["file_mib"] > 0


def test_generated_hdfs_lines_are_varied_and_in_format() -> None:
    lines = list(hdfs_lines(5_000, seed=1))
    assert lines == list(hdfs_lines(5_000, seed=1))
    assert lines != list(hdfs_lines(5_000, seed=2))
    preset = PRESETS["hdfs"]
    parts = [preset.split(line) for line in lines]
    assert all(p is not None for p in parts)
    contents = [p["Content"] for p in parts]
    assert len(set(contents)) > 0.95 * len(contents)  # not one line repeated
    assert all(re.search(r"blk_-?\d+", c) for c in contents)
    # Blocks come back: sessions have several lines.
    blocks = [re.search(r"blk_-?\d+", c).group(0) for c in contents]
    assert len(set(blocks)) < 0.5 * len(blocks)
    # The common templates dominate, the rare ones show up.
    assert sum(w for w, *_ in HDFS_EVENTS[:14]) > 0.98 * sum(w for w, *_ in HDFS_EVENTS)
    assert any(c.startswith("Verification succeeded") for c in contents)


# -- fast paths against plain ones -----------------------------------------------------------


def _reference_parse(preset: Preset, lines: list[tuple[int, str]]) -> tuple[list, list]:
    """The parser as it was before its fast paths: Drain3's own TemplateMiner (with the
    preset's masking instructions), ``Preset.split`` and the re2 module's ``search``."""
    miner = TemplateMiner(config=TemplateParser._config(preset))
    for _, text in lines:
        parts = preset.split(text) if text.strip() else None
        if parts is not None:
            miner.add_log_message(parts["Content"])
    out = []
    for lineno, text in lines:
        parts = preset.split(text) if text.strip() else None
        if parts is None:
            continue
        content = parts.pop("Content")
        cluster = miner.match(content, full_search_strategy="fallback")
        if cluster is not None:
            template = cluster.get_template()
        else:
            tokens = miner.drain.get_content_as_tokens(miner.masker.mask(content))
            if preset.parametrize_numeric_tokens:
                tokens = [
                    "<*>" if re.search(r"\d", t) and not (t[:1] == "<" and t[-1:] == ">") else t
                    for t in tokens
                ]
            template = " ".join(tokens)
        session = None
        if preset.session_regex is not None:
            m = preset.session_regex.search(content)
            if m is not None:
                session = m.group(1) if preset.session_regex.groups else m.group(0)
        out.append((lineno, content, event_key(template), template, session, parts))
    clusters = sorted(
        (c.cluster_id, c.size, c.get_template()) for c in miner.drain.id_to_cluster.values()
    )
    return out, clusters


def _parsed(parser: TemplateParser, lines: list[tuple[int, str]]) -> tuple[list, list]:
    out = [
        (p.line, p.content, p.event, p.template, p.session, p.fields)
        for p in parser.parse(lines, "src", IngestReport())
    ]
    clusters = sorted(
        (c.cluster_id, c.size, c.get_template()) for c in parser._miner.drain.id_to_cluster.values()
    )
    return out, clusters


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parser_gives_what_drain3_gives(preset: str) -> None:
    """Fit and parse each sample (and the same lines with other digits, and generated HDFS
    lines) with every preset: the same templates, keys, sessions, fields and cluster sizes
    as Drain3 line by line with its own masker."""
    _need_samples()
    rng = random.Random(preset)
    lines = list(SAMPLES.get(preset, SAMPLES["hdfs"]))
    lines += [(n + 5000, _vary_digits(t, rng)) for n, t in lines[:500]]
    lines += list(enumerate(hdfs_lines(500, seed=5), start=9000))
    p = PRESETS[preset]
    assert _parsed(TemplateParser(p), lines) == _reference_parse(p, lines)


def test_parser_gives_what_drain3_gives_on_other_samples() -> None:
    """Each preset on another system's sample: lines that do not fit, odd shapes."""
    _need_samples()
    names = sorted(SAMPLES)
    for i, preset in enumerate(names):
        other = SAMPLES[names[(i + 3) % len(names)]][:400]
        p = PRESETS[preset]
        assert _parsed(TemplateParser(p), other) == _reference_parse(p, other), preset


def test_fit_again_after_parse_and_reload_agree_with_drain3() -> None:
    _need_samples()
    lines = SAMPLES["hdfs"]
    parser = TemplateParser("hdfs").fit(lines[:300])
    first = parser.parse(lines[300:600])  # remembers lookups in the first clusters
    parser.fit(lines[600:])  # the clusters change: what was remembered must go
    again = parser.parse(lines)
    miner_lines = lines[:300] + lines[600:]
    reference, _ = _reference_parse(PRESETS["hdfs"], miner_lines)
    ref_templates = {lineno: t for lineno, _, _, t, _, _ in reference}
    for p in again:
        if p.line in ref_templates:
            assert p.template == ref_templates[p.line]
    reloaded = TemplateParser.from_dict(parser.to_dict())
    assert [p.event for p in reloaded.parse(lines)] == [p.event for p in again]
    assert len(first) == 300


def _sequential(chain: MaskChain, text: str) -> str:
    for mask, rep in chain.masks:
        text = mask.sub(rep, text)
    return text


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mask_chain_masks_as_the_masks_in_turn(preset: str) -> None:
    """Every sample content, with other digits, with tells (``0x``) and odd characters."""
    _need_samples()
    p = PRESETS[preset]
    chain = TemplateParser(p)._mask
    rng = random.Random(preset)
    contents = []
    for _, text in SAMPLES.get(preset, SAMPLES["hdfs"]):
        parts = p.split(text)
        contents.append(parts["Content"] if parts else text)
    extra = []
    for c in contents[:600]:
        extra += [_vary_digits(c, rng), _vary_digits(c, rng), c + " 0x1f", "0x" + c, c + " é 12"]
    extra += ["", " ", "1", "0x", "12 0x0 34", "a1 b22 c333", "<NUM> 1 <NUM>", "1" * 3000]
    for text in contents + extra + contents:  # the second time from remembered shapes
        assert chain(text) == _sequential(chain, text), text


def test_mask_chain_shape_cache_keeps_each_texts_digits() -> None:
    chain = MaskChain(
        [
            (PRESETS["hdfs"].maskers[1], "<BLK>"),  # blk_ ids
            (PRESETS["hdfs"].maskers[4], "<HEX>"),  # 0x..., a tell
        ]
    )
    a = chain("took 12 ms for blk_123 part 7")
    b = chain("took 98 ms for blk_456 part 3")  # the same shape: remembered
    assert (a, b) == ("took 12 ms for <BLK> part 7", "took 98 ms for <BLK> part 3")
    assert len(chain._shapes) == 1
    assert chain("x 0x1f blk_1") == "x <HEX> <BLK>"  # a tell: masked each time
    assert len(chain._shapes) == 1


def test_mask_chain_without_shapes_when_masks_tell_digits_apart() -> None:
    chain = MaskChain([(LinearMask(r"[1-5]+", what="t"), "<L>")])
    assert chain("19 55 6") == "<L>9 <L> 6"
    assert chain("29 66 6") == "<L>9 66 6"
    assert chain._blind is None and not chain._shapes
    digits = MaskChain([(LinearMask(r"\d+", what="t"), "<N1>")])  # a digit in a replacement
    assert digits("a 12 b") == "a <N1> b" and digits._blind is None


def _probe_texts() -> list[str]:
    rng = random.Random(7)
    alphabet = "ab_xk.-:/ =,()[]<>\t\n1 0x9fblk_user rhost=node-12 é\\042"
    texts = ["", " ", "a", "1.2.3.4:80,5.6.7.8", "0xfe", "blk_-12 blk_3", "user root"]
    texts += [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))) for _ in range(300)
    ]
    return [t for t in texts if t.isascii()]


def test_ascii_matcher_matches_as_the_pattern_does() -> None:
    """The Latin-1 program of every mask, format and session pattern finds the same spans as
    the pattern on ASCII text, from every start."""
    regexes = {}
    for preset in PRESETS.values():
        for mask in preset.maskers:
            regexes[mask.pattern] = mask.regex
        regexes[preset.log_format] = preset.header_regex
        if preset.session_regex is not None:
            regexes[preset.session_pattern] = preset.session_regex
    regexes["kelvin"] = compile_linear("(?i)\u212a", what="t")  # K: stays on its own program
    texts = _probe_texts()
    if SAMPLES:
        texts += [t for lines in SAMPLES.values() for _, t in lines[:40] if t.isascii()]
    for name, regex in regexes.items():
        fast, own = ascii_matcher(regex), regex._regexp.Match
        for text in texts:
            data = text.encode("ascii")
            for pos in range(0, len(data) + 1, 5):
                for anchor in (_UNANCHORED, _ANCHOR_START):
                    assert fast(anchor, data, pos, len(data)) == own(
                        anchor, data, pos, len(data)
                    ), (
                        name,
                        text,
                        pos,
                    )
    assert ascii_matcher(regexes["kelvin"])(_UNANCHORED, b"k", 0, 1)[0] == (0, 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_split_line_splits_as_split(preset: str) -> None:
    p = PRESETS[preset]
    lines = [t for lines in SAMPLES.values() for _, t in lines[:300]]
    hdfs = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block"
    odd = []
    for line in [*lines[:: max(1, len(lines) // 300)], hdfs]:
        odd += [
            line + "\n",
            " " + line,
            line.replace(" ", "  "),
            line.replace(" ", "\t", 3),
            line.replace(": ", ":"),
            line.replace(" ", "\x0b", 2),
            line + "\r",
            line[: len(line) // 2],
            line.replace("[", "", 1),
            line + "\n\n",
            line.replace(" ", "\n", 1),
        ]
    odd += ["", "\n", " ", "a", "a b c d e: ", "a b c d e:\n", "a b c d e: x: y", "[x] [y] z"]
    # Random lines of the formats' separators and a few words: where a lazy field must stretch
    # past a near-miss (": x", " [", "] -"...), runs of assorted whitespace, empty fields.
    rng = random.Random(preset)
    pieces = [" ", "  ", "\t", "\x1c", ":", ": ", "[", "]", "] ", " - ", "@", "sshd[", "]: "]
    pieces += ["a", "b1", "INFO", "x.y$Z", "-", "\n"]
    odd += ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 25))) for _ in range(3000)]
    # And the preset's own lines with pieces put in, or characters taken out, at random.
    own = [t for _, t in SAMPLES.get(preset, [])][:500] or [hdfs]
    for _ in range(3000):
        line = rng.choice(own)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(line) + 1)
            cut = rng.randrange(3) if rng.random() < 0.3 else 0
            line = line[:i] + ("" if cut else rng.choice(pieces)) + line[i + cut :]
        odd.append(line)
    # Lines of shapes seen before, with other digits: cut where those were.
    odd += [_vary_digits(line, rng) for line in lines + odd]
    for line in lines + odd:
        expected = p.split(line)
        if expected is not None:
            content = expected.pop("Content")
            expected = (expected, content)
        got = p._split_line(line)
        assert got == expected, (preset, line)
        if got is not None:
            assert list(got[0]) == list(expected[0])  # the same field order


def test_session_of_as_the_re2_search() -> None:
    p = PRESETS["hdfs"]
    for text in ["blk_1 x", "x blk_-22 blk_3", "blk_ 5", "blk_-x blk_7", "none", "é blk_9", ""]:
        m = p.session_regex.search(text)
        assert p.session_of(text) == (m.group(0) if m else None), text
    grouped = Preset(name="g", log_format="<Content>", session_pattern=r"id=(\d+)|(x)")
    assert grouped.session_of("a id=12 b") == "12"
    assert grouped.session_of("x") is None  # group 1 took no part
    assert grouped.session_of("\ud800 id=1") is None  # a lone surrogate: no id


def test_iter_parse_streams_a_fitted_parser() -> None:
    parser = TemplateParser("hdfs").fit(hdfs_lines(2_000, seed=4))
    taken = []

    def lines():
        for i, line in enumerate(hdfs_lines(1_000, seed=4)):
            taken.append(i)
            yield line

    report = IngestReport()
    stream = parser.iter_parse(lines(), "gen", report)
    first = next(stream)
    assert first.line == 1 and len(taken) == 1 and report.accepted == 1
    rest = list(stream)
    assert len(rest) == 999 and report.accepted == 1_000
    assert [p.event for p in [first, *rest]] == [
        p.event for p in parser.parse(hdfs_lines(1_000, seed=4))
    ]


def test_bench_parse_on_the_command_line(tmp_path) -> None:
    from flexlog.cli import main

    assert main(["bench", "--parse", "--sizes", "2000", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "parse_bench.json").is_file()
    assert main(["bench", "--parse", "nope", "--sizes", "2000", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--parse", "--sizes", "many", "--out", str(tmp_path)]) == 2
