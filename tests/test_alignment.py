"""Template alignment: evolved templates map back to the known template they came from."""

from __future__ import annotations

import random

import pytest

from flexlog.alignment import TemplateAligner, align_sequences
from flexlog.data.records import LogSequence
from flexlog.data.ulad import WORD_EDITS, evolve_template


@pytest.fixture(scope="module")
def aligner(hdfs_templates) -> TemplateAligner:
    return TemplateAligner(hdfs_templates)


@pytest.mark.parametrize("op", WORD_EDITS)
def test_evolved_hdfs_templates_map_back(aligner, hdfs_templates, op: str) -> None:
    rng = random.Random(0)
    evolved = {f"{k}~{op}": evolve_template(t, op, rng) for k, t in hdfs_templates.items()}
    matches = aligner.match(evolved)
    for new_key, (known, score) in matches.items():
        assert known == new_key.split("~")[0], (new_key, evolved[new_key], known, score)
        assert aligner.threshold <= score <= 1.0 + 1e-9
    assert aligner.mapping(evolved) == {k: k.split("~")[0] for k in evolved}


def test_hand_written_evolution(aligner) -> None:
    new = {"N1": "Receiving new block <*> src: <*> dest: <*>"}
    assert aligner.mapping(new) == {"N1": "E5"}


def test_unrelated_text_stays_unmapped(aligner) -> None:
    matches = aligner.match({"X": "GPU kernel panic: fan speed zero"})
    known, score = matches["X"]
    assert known is None and score < aligner.threshold
    assert aligner.mapping({"X": "GPU kernel panic: fan speed zero"}) == {}


def test_known_key_maps_to_itself(aligner, hdfs_templates) -> None:
    assert aligner.match({"E5": hdfs_templates["E5"]}) == {"E5": ("E5", 1.0)}
    assert aligner.mapping({"E5": "anything"}) == {}


def test_aligner_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TemplateAligner({})
    with pytest.raises(ValueError, match="threshold"):
        TemplateAligner({"E1": "x"}, threshold=1.5)


def test_align_sequences_rewrites_only_mapped_keys() -> None:
    seqs = [
        LogSequence("a", ("E5", "E5~add", "X", "E22"), 1),
        LogSequence("b", ("X",), None),
    ]
    out = align_sequences(seqs, {"E5~add": "E5", "unused": "E9"})
    assert out == [
        LogSequence("a", ("E5", "E5", "X", "E22"), 1),
        LogSequence("b", ("X",), None),
    ]
    assert align_sequences(seqs, {}) == seqs
