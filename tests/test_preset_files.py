"""Presets without code: command-line options and YAML preset files."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexlog.data.records import InputError
from flexlog.parsing import PRESETS, TemplateParser
from flexlog.parsing.accuracy import BENCHMARKS, evaluate_preset
from flexlog.parsing.preset_files import (
    load_preset_file,
    parse_mask,
    preset_yaml,
    resolve_preset,
)


def test_every_builtin_round_trips_through_yaml(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(preset_yaml(preset))
        assert load_preset_file(path) == preset


def test_a_format_and_masks_alone_parse_like_the_preset(datasets_dir: Path) -> None:
    """The loghub samples parsed with only --log-format, --mask, --sim-th and --depth (what
    `flexlog presets show NAME` prints) group their lines as the preset does."""
    for name, rel in BENCHMARKS[:3]:
        preset = PRESETS[name]
        custom = resolve_preset(
            log_format=preset.log_format,
            masks=[f"{regex}={mask}" for regex, mask in preset.masking],
            sim_th=preset.sim_th,
            depth=preset.depth,
        )
        assert custom.name == "custom"
        log = datasets_dir / rel
        truth = log.with_name(log.name + "_structured.csv")
        ours = evaluate_preset(log, truth, custom)["accuracy"]
        assert ours >= evaluate_preset(log, truth, preset)["accuracy"] - 0.01
        assert ours >= 0.95


def test_masks_from_the_command_line_go_first() -> None:
    preset = resolve_preset("hdfs", masks=[r"req-[0-9a-f]+=REQ"])
    assert preset.masking[0] == ("req-[0-9a-f]+", "REQ")
    assert preset.masking[1:] == PRESETS["hdfs"].masking
    parser = TemplateParser(preset)
    (line,) = parser.parse(["081109 203615 148 INFO dfs.DataNode: served req-ab12 to x"])
    assert "<REQ>" in line.template
    assert parse_mask("a=b=NAME") == ("a=b", "NAME")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_format": "<Date> <Message>"}, "needs a <Content> field"),
        ({"log_format": "<Date> <Date> <Content>"}, "<Date> appears twice"),
        ({"log_format": "<Da te> <Content>"}, "is not a word"),
        ({"masks": ["no-name"]}, "expected REGEX=NAME"),
        ({"masks": ["x=two words"]}, "must be a word"),
        ({"masks": ["(?<=user )\\S+=USER"]}, "lookbehind"),
        ({"preset": "nope"}, "unknown preset 'nope'"),
        ({"sim_th": 2.0}, "sim_th must be in"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises((InputError, ValueError), match=message):
        resolve_preset(**kwargs)


def test_bad_preset_files_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    cases = {
        "name: x\nlog_format: '<Content>'\ncolour: blue\n": "unknown keys ['colour']",
        "log_format: '<Content>'\n": "'name' must be a non-empty string",
        "name: x\nlog_format: '<Content>'\nmasking: [{regex: a}]\n": "masking[0]",
        "name: x\nlog_format: '<Content>'\nsim_th: high\n": str(path),
        "[not, a, mapping]\n": "a preset is a mapping",
        "name: x\nlog_format: '<Content>\n": "not a YAML preset file",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_preset_file(path)
    with pytest.raises(InputError, match="cannot read"):
        load_preset_file(tmp_path / "missing.yaml")
