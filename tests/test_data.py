"""Dataset loaders (ADFA-LD, HDFS, templates), sampling, and the ULAD builders on real data."""

from __future__ import annotations

import json
import random
import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from flexlog.data import ulad
from flexlog.data.adfa import ATTACK_TYPES, decode_trace, load_adfa
from flexlog.data.hdfs import load_hdfs_sessions
from flexlog.data.records import IngestReport, InputError, LogSequence, read_jsonl, write_jsonl
from flexlog.data.sampling import (
    dedup_against,
    limited_balanced,
    limited_fraction,
    unique_by_events,
)
from flexlog.data.templates import read_templates, write_templates
from flexlog.resources import syscalls_i386

# ------------------------------------------------------------------ ADFA-LD


def test_syscall_numbers_are_i386() -> None:
    table = syscalls_i386()
    assert table[5] == "open"
    assert table[11] == "execve"
    assert table[192] == "mmap2"


def test_decode_trace_maps_numbers_to_names() -> None:
    assert decode_trace("5 192\n11 ") == ("open", "mmap2", "execve")


@pytest.mark.parametrize(
    ("text", "message"),
    [("5 x 11", "token 2"), ("5 99999", "unknown i386"), ("  \n", "empty trace")],
)
def test_decode_trace_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_trace(text)


def test_full_adfa_counts(adfa_corpus) -> None:
    assert len(adfa_corpus.training) == 833
    assert len(adfa_corpus.validation) == 4372
    assert {k: len(v) for k, v in adfa_corpus.attacks.items()} == {
        "Adduser": 91,
        "Hydra_FTP": 162,
        "Hydra_SSH": 176,
        "Java_Meterpreter": 124,
        "Meterpreter": 75,
        "Web_Shell": 118,
    }
    assert adfa_corpus.report.read == adfa_corpus.report.accepted == 5951
    assert set(adfa_corpus.attacks) == set(ATTACK_TYPES.values())


def test_adfa_first_trace_decoded(adfa_corpus, datasets_dir: Path) -> None:
    first = adfa_corpus.training[0]
    assert first.id == "UTD-0001" and first.label == 0
    raw = (datasets_dir / "adfa-ld" / "Training_Data_Master" / "UTD-0001.txt").read_text()
    table = syscalls_i386()
    assert first.events == tuple(table[int(t)] for t in raw.split())
    assert first.events[:3] == ("close", "close", "dup2")  # 6 6 63


def test_adfa_labels_by_folder(adfa_sample) -> None:
    assert all(s.label == 0 for s in adfa_sample.normal)
    assert all(s.label == 1 for seqs in adfa_sample.attacks.values() for s in seqs)
    assert len(adfa_sample.normal) == 278 + 365


def _mini_adfa(root: Path, sample: Path) -> Path:
    """A tiny ADFA layout copied from the shipped sample, plus some bad traces."""
    for folder in ("Training_Data_Master", "Validation_Data_Master"):
        (root / folder).mkdir(parents=True)
        for src in sorted((sample / folder).glob("*.txt"))[:3]:
            shutil.copy(src, root / folder / src.name)
    attack = root / "Attack_Data_Master" / "Web_Shell_1"
    attack.mkdir(parents=True)
    for src in sorted((sample / "Attack_Data_Master" / "Web_Shell_1").glob("*.txt"))[:2]:
        shutil.copy(src, attack / src.name)
    (root / "Training_Data_Master" / "UTD-bad.txt").write_text("6 6 notanumber 5")
    (root / "Training_Data_Master" / "UTD-empty.txt").write_text("")
    (root / "Validation_Data_Master" / "UVD-bin.txt").write_bytes(b"6 \xff 5")
    (root / "Attack_Data_Master" / "loose.txt").write_text("5 5")
    (root / "README.txt").write_text("not a trace")
    return root


def test_adfa_bad_traces_are_reported(tmp_path: Path, adfa_sample_dir: Path) -> None:
    corpus = load_adfa(_mini_adfa(tmp_path / "adfa", adfa_sample_dir))
    assert (len(corpus.training), len(corpus.validation)) == (3, 3)
    assert len(corpus.attacks["Web_Shell"]) == 2
    rep = corpus.report
    assert (rep.accepted, rep.rejected, rep.read) == (8, 4, 12)
    reasons = {Path(r.source).name: r.reason for r in rep.rejections}
    assert "token 3" in reasons["UTD-bad.txt"]
    assert "empty" in reasons["UTD-empty.txt"]
    assert "ASCII" in reasons["UVD-bin.txt"]
    assert "<Type>_<run>" in reasons["loose.txt"]


def test_adfa_zip_equals_directory(tmp_path: Path, adfa_sample_dir: Path) -> None:
    root = _mini_adfa(tmp_path / "adfa", adfa_sample_dir)
    archive = tmp_path / "adfa.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, Path("ADFA-LD") / path.relative_to(root))
    from_dir, from_zip = load_adfa(root), load_adfa(archive)
    assert from_zip.training == from_dir.training
    assert from_zip.validation == from_dir.validation
    assert from_zip.attacks == from_dir.attacks
    assert from_zip.report.rejected == from_dir.report.rejected


def test_adfa_missing_or_empty_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_adfa(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no ADFA-LD traces"):
        load_adfa(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("5 5")
    with pytest.raises(InputError, match="not an ADFA-LD directory"):
        load_adfa(tmp_path / "file.txt")


# ------------------------------------------------------------------ HDFS and templates


def test_hdfs_first_session(hdfs_sessions) -> None:
    normal, abnormal = hdfs_sessions
    assert (len(normal), len(abnormal)) == (4855, 16838)
    first = normal[0]
    assert first.id == "hdfs_train-1" and first.label == 0
    ids = (5, 5, 5, 22, 11, 9, 11, 9, 11, 9, 26, 26, 26, 23, 23, 23, 21, 21, 21)
    assert first.events == tuple(f"E{i}" for i in ids)
    assert all(s.label == 1 for s in abnormal)


def test_hdfs_events_have_templates(hdfs_sessions, hdfs_templates) -> None:
    normal, abnormal = hdfs_sessions
    events = {ev for s in normal + abnormal for ev in s.events}
    assert events <= set(hdfs_templates)
    assert "<*>" in hdfs_templates["E5"]


def test_hdfs_bad_lines_rejected(tmp_path: Path) -> None:
    path = tmp_path / "sessions"
    path.write_bytes(b"5 5 22\n\n5 x 9\n1 2 3\n7 -1\n")
    report = IngestReport()
    seqs = load_hdfs_sessions(path, 1, report, id_prefix="s")
    assert [s.id for s in seqs] == ["s-1", "s-4"]
    assert seqs[1].events == ("E1", "E2", "E3")
    assert [(r.line, r.reason) for r in report.rejections] == [
        (3, "template id 'x' is not an integer"),
        (5, "template id '-1' is not an integer"),
    ]
    assert report.read == 4 and report.accepted == 2


def test_hdfs_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        load_hdfs_sessions(tmp_path / "nope", 0)


def test_templates_round_trip(tmp_path: Path, hdfs_templates) -> None:
    table = {**hdfs_templates, "E5~add": 'a "quoted", comma <*>'}
    write_templates(tmp_path / "t.csv", table)
    assert read_templates(tmp_path / "t.csv") == table


def test_templates_bad_header_and_duplicates(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Template\nE1,x\n")
    with pytest.raises(InputError, match="header"):
        read_templates(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("EventId,EventTemplate\nE1,x\nE1,y\n")
    with pytest.raises(InputError, match=r"dup.csv:3: EventId 'E1'"):
        read_templates(dup)


# ------------------------------------------------------------------ sampling


def _seqs(spec: list[tuple[str, int]]) -> list[LogSequence]:
    return [LogSequence(f"s{i}", tuple(ev.split()), label) for i, (ev, label) in enumerate(spec)]


def test_unique_by_events_keeps_first() -> None:
    seqs = _seqs([("a b", 0), ("a", 1), ("a b", 1), ("a", 0)])
    assert [s.id for s in unique_by_events(seqs)] == ["s0", "s1"]


def test_dedup_against_ratio() -> None:
    train = _seqs([("a", 0), ("b", 1)])
    test = _seqs([("a", 1), ("c", 0), ("b", 0), ("d", 1)])
    kept, ratio = dedup_against(train, test)
    assert [s.events for s in kept] == [("c",), ("d",)]
    assert ratio == 0.5
    assert dedup_against(train, []) == ([], 0.0)


def test_limited_balanced_exact_counts(adfa_sample) -> None:
    train = adfa_sample.normal + adfa_sample.attacks["Adduser"]
    out = limited_balanced(train, per_class=500, seed=1)
    assert Counter(s.label for s in out) == {0: 500, 1: 500}
    assert {s.id for s in out} <= {s.id for s in train}
    assert out == limited_balanced(train, per_class=500, seed=1)
    with pytest.raises(ValueError, match="label 1"):
        limited_balanced(adfa_sample.normal)
    with pytest.raises(ValueError, match="positive"):
        limited_balanced(train, per_class=0)


def test_limited_fraction_all_anomalies_and_a_fifth_of_normals(hdfs_small) -> None:
    train, _ = hdfs_small
    out = limited_fraction(train, normal_fraction=0.2, seed=3)
    unique = unique_by_events(train)
    unique_normals = [s for s in unique if s.label == 0]
    assert {s.events for s in out if s.label == 1} == {s.events for s in unique if s.label == 1}
    normals = [s for s in out if s.label == 0]
    assert len(normals) == round(0.2 * len(unique_normals))
    assert len({s.events for s in normals}) == len(normals)
    assert {s.events for s in normals} <= {s.events for s in unique_normals}
    with pytest.raises(ValueError, match="normal_fraction"):
        limited_fraction(train, normal_fraction=0)


# ------------------------------------------------------------------ ADFA-U


def _ids(seqs: list[LogSequence]) -> list[str]:
    return [s.id for s in seqs]


def _check_counts(ds: ulad.UladDataset) -> None:
    info = ds.info
    for split in ("train", "limited_train", "test"):
        seqs = getattr(ds, split)
        c = info[split]
        assert c["normal"] + c["anomalous"] == c["total"] == len(seqs)
        assert c["anomalous"] == sum(s.label == 1 for s in seqs)
    before = info["test_before_dedup"]["total"]
    assert before >= info["test"]["total"]
    removed = before - info["test"]["total"]
    assert info["duplication_ratio"] == pytest.approx(removed / before, abs=1e-6)


def _check_dedup(ds: ulad.UladDataset) -> None:
    train_events = {s.events for s in ds.train}
    assert not any(s.events in train_events for s in ds.test)


def test_adfa_u_seed_reproducible(adfa_corpus) -> None:
    a = ulad.build_adfa_u(adfa_corpus, "web", seed=3)
    b = ulad.build_adfa_u(adfa_corpus, "web", seed=3)
    c = ulad.build_adfa_u(adfa_corpus, "web", seed=4)
    assert _ids(a.train) == _ids(b.train) and _ids(a.test) == _ids(b.test)
    assert _ids(a.limited_train) == _ids(b.limited_train)
    assert a.info == b.info
    assert _ids(a.train) != _ids(c.train)


@pytest.mark.parametrize("holdout", list(ATTACK_TYPES))
def test_adfa_u_holdout_absent_from_train(adfa_corpus, holdout: str) -> None:
    ds = ulad.build_adfa_u(adfa_corpus, holdout, seed=0)
    folder = ATTACK_TYPES[holdout]
    held = {s.id for s in adfa_corpus.attacks[folder]}
    assert not held & set(_ids(ds.train))
    assert not held & set(_ids(ds.limited_train))
    other = sum(len(v) for k, v in adfa_corpus.attacks.items() if k != folder)
    assert ds.info["train"]["anomalous"] == other
    assert {s.id for s in ds.test if s.label == 1} <= held
    _check_dedup(ds)
    _check_counts(ds)
    assert ds.info["limited_train"] == {"normal": 500, "anomalous": 500, "total": 1000}
    # attack traces carry their type as group, in train and test alike
    assert {s.group for s in ds.train if s.label == 1} == set(ATTACK_TYPES) - {holdout}
    assert {s.group for s in ds.test if s.label == 1} == {holdout}
    assert all(s.group is None for s in ds.train + ds.test if s.label == 0)


#: The FlexLog paper's Table 2: (train, test) sizes per holdout before de-duplication.
PAPER_SIZES = {
    "java": (4786, 1165),
    "hydraSSH": (4734, 1217),
    "hydraFTP": (4748, 1203),
    "meter": (4835, 1116),
    "web": (4792, 1159),
    "adduser": (4819, 1132),
}


@pytest.mark.parametrize("seed", [0, 7])
def test_adfa_u_reproduces_the_paper_sizes(adfa_corpus, seed: int) -> None:
    for holdout, (n_train, n_test) in PAPER_SIZES.items():
        ds = ulad.build_adfa_u(adfa_corpus, holdout, seed=seed)
        assert ds.info["protocol"] == "paper"
        assert ds.info["train"]["total"] == n_train, holdout
        assert ds.info["test_before_dedup"]["total"] == n_test, holdout
        # 80 % of the 5,205 normal traces train, every other one tests
        assert ds.info["train"]["normal"] == 4164
        assert ds.info["test_before_dedup"]["normal"] == 1041
        # the paper reports duplication ratios of 0.31-0.34
        assert 0.2 < ds.info["duplication_ratio"] < 0.45, holdout


def test_adfa_u_balanced_test_is_named_non_paper(adfa_corpus) -> None:
    ds = ulad.build_adfa_u(adfa_corpus, "meter", seed=0, test_normal_ratio=1.0)
    _check_dedup(ds)
    _check_counts(ds)
    assert ds.info["test"]["normal"] == ds.info["test"]["anomalous"]
    assert ds.info["protocol"].startswith("non-paper")
    half = ulad.build_adfa_u(adfa_corpus, "meter", seed=0, normal_train_fraction=0.5)
    assert half.info["protocol"] == "non-paper: 0.5 of normals train"
    assert half.info["test_before_dedup"]["normal"] == 5205 - round(5205 * 0.5)


def test_group_field_round_trips_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(
        '{"id": "a", "events": ["x"], "label": 1, "group": "web"}\n'
        '{"id": "b", "events": ["x"], "label": 1, "group": 3}\n'
        '{"id": "c", "events": ["x"], "label": 1, "group": ["web"]}\n'
        '{"id": "d", "events": ["x"], "label": 1, "group": ""}\n'
        '{"id": "e", "events": ["x"], "label": 0}\n'
    )
    seqs, report = read_jsonl(path)
    assert [(s.id, s.group) for s in seqs] == [("a", "web"), ("b", "3"), ("e", None)]
    assert report.read == 5 and report.accepted + report.rejected == report.read
    reasons = {r.line: r.reason for r in report.rejections}
    assert "field 'group' must be a string or integer" in reasons[3]
    assert "field 'group' is an empty string" in reasons[4]
    write_jsonl(tmp_path / "out.jsonl", seqs)
    again, _ = read_jsonl(tmp_path / "out.jsonl")
    assert again == seqs
    assert '"group"' not in (tmp_path / "out.jsonl").read_text().splitlines()[2]


def test_adfa_u_rejects_bad_arguments(adfa_sample) -> None:
    with pytest.raises(ValueError, match="holdout must be one of"):
        ulad.build_adfa_u(adfa_sample, "nope")
    with pytest.raises(ValueError, match="normal_train_fraction"):
        ulad.build_adfa_u(adfa_sample, "web", normal_train_fraction=1.0)
    with pytest.raises(ValueError, match="limited strategy"):
        ulad.build_adfa_u(adfa_sample, "web", limited="all")


def test_dataset_write(tmp_path: Path, adfa_sample) -> None:
    ds = ulad.build_adfa_u(adfa_sample, "java", seed=0, per_class=50)
    paths = ds.write(tmp_path / "out")
    assert set(paths) == {"train", "limited_train", "test", "info"}
    test, report = read_jsonl(paths["test"], require_label=True)
    assert test == ds.test and report.rejected == 0
    assert json.loads(paths["info"].read_text()) == ds.info


# ------------------------------------------------------------------ SynHDFS-U


def test_inject_delete_keeps_last_occurrence() -> None:
    safe = {"A", "B", "C"}
    events = ("A", "B", "A", "C", "C", "C")
    for seed in range(50):
        out = ulad.inject(events, "delete", safe, random.Random(seed))
        assert out is not None and len(out) == len(events) - 1
        assert set(out) == set(events)
        assert Counter(events) - Counter(out) in (Counter("A"), Counter("C"))
    assert ulad.inject(("A", "B", "C"), "delete", safe, random.Random(0)) is None
    assert ulad.inject(("A", "A", "B"), "delete", {"B"}, random.Random(0)) is None


def test_inject_uses_only_safe_templates() -> None:
    events = ("X", "A", "B", "Y", "A", "C", "B")
    safe = {"A", "B", "C"}
    for seed in range(50):
        rng = random.Random(seed)
        dup = ulad.inject(events, "duplicate", safe, rng)
        assert Counter(dup) - Counter(events) in (Counter("A"), Counter("B"), Counter("C"))
        shuffled = ulad.inject(events, "shuffle", safe, rng)
        assert shuffled != events and Counter(shuffled) == Counter(events)
        moved = [i for i, (a, b) in enumerate(zip(events, shuffled, strict=True)) if a != b]
        assert all(events[i] in safe for i in moved)
    assert ulad.inject(("X", "Y"), "duplicate", safe, random.Random(0)) is None
    assert ulad.inject(("A", "A", "A"), "shuffle", safe, random.Random(0)) is None
    with pytest.raises(ValueError, match="injection"):
        ulad.inject(events, "rotate", safe, random.Random(0))


@pytest.fixture(scope="module")
def synhdfs(hdfs_sessions, hdfs_templates) -> ulad.UladDataset:
    normal, abnormal = hdfs_sessions
    return ulad.build_synhdfs_u(normal, abnormal, 0.3, templates=hdfs_templates, seed=1)


def test_synhdfs_seed_reproducible(hdfs_sessions, synhdfs) -> None:
    normal, abnormal = hdfs_sessions
    again = ulad.build_synhdfs_u(normal, abnormal, 0.3, seed=1)
    assert again.test == synhdfs.test and again.train == synhdfs.train
    assert again.limited_train == synhdfs.limited_train
    other = ulad.build_synhdfs_u(normal, abnormal, 0.3, seed=2)
    assert other.test != synhdfs.test


def test_synhdfs_counts_and_dedup(synhdfs) -> None:
    _check_dedup(synhdfs)
    _check_counts(synhdfs)
    info = synhdfs.info
    assert info["ratio"] == 0.3 and synhdfs.name == "synhdfs-u-0.3"
    before = info["test_before_dedup"]["total"]
    assert sum(info["injections"].values()) == round(before * 0.3)
    # 10 % anomalous on each side of the split
    train = info["train"]
    assert train["anomalous"] / train["total"] == pytest.approx(0.1, abs=0.01)
    assert synhdfs.templates is not None
    # limited "fraction" strategy: every unique anomaly, a fifth of the unique normals
    unique = unique_by_events(synhdfs.train)
    limited = synhdfs.limited_train
    assert {s.events for s in limited if s.label == 1} == {s.events for s in unique if s.label == 1}
    n_normals = sum(s.label == 0 for s in unique)
    assert info["limited_train"]["normal"] == round(0.2 * n_normals)


def test_synhdfs_changes_only_label_neutral_templates(hdfs_sessions, synhdfs) -> None:
    normal, abnormal = hdfs_sessions
    by_id = {s.id: s for s in normal + abnormal}
    safe = set(synhdfs.info["label_neutral_templates"])
    assert safe == ulad.label_neutral_templates(synhdfs.train)
    changed = [s for s in synhdfs.test if "~" in s.id]
    assert changed
    ops = Counter()
    for seq in changed:
        orig_id, op = seq.id.rsplit("~", 1)
        orig = by_id[orig_id]
        ops[op] += 1
        assert seq.label == orig.label
        assert seq.events != orig.events
        # no template appears or vanishes; only label-neutral counts/positions change
        assert set(seq.events) == set(orig.events)
        diff = (Counter(seq.events) - Counter(orig.events)) + (
            Counter(orig.events) - Counter(seq.events)
        )
        assert set(diff) <= safe
        moved = {a for a, b in zip(seq.events, orig.events, strict=False) if a != b}
        if op == "shuffle":
            assert moved <= safe
    assert set(ops) <= set(ulad.INJECTIONS)


def test_synhdfs_rejects_bad_ratio(hdfs_small) -> None:
    train, test = hdfs_small
    with pytest.raises(ValueError, match="ratio"):
        ulad.build_synhdfs_u(train, test, 1.5)


# ------------------------------------------------------------------ template evolution


@pytest.fixture(scope="module")
def evolution(hdfs_sessions, hdfs_templates) -> ulad.UladDataset:
    normal, abnormal = hdfs_sessions
    return ulad.build_template_evolution(normal, abnormal, hdfs_templates, 0.2, seed=0)


def test_template_evolution_keys_and_texts(evolution, hdfs_templates) -> None:
    table = evolution.templates
    assert table is not None
    pattern = re.compile(r"^E\d+~(add|remove|replace)$")
    new_keys = {ev for s in evolution.test for ev in s.events if "~" in ev}
    assert new_keys
    for key in new_keys:
        assert pattern.match(key), key
        assert key in table
        base = key.split("~")[0]
        assert table[key] != hdfs_templates[base]
    assert {k: v for k, v in table.items() if "~" not in k} == hdfs_templates
    # de-duplication may drop evolved sequences, never add keys
    assert new_keys <= set(evolution.info["evolved_templates"])
    assert all(table[k] == v for k, v in evolution.info["evolved_templates"].items())
    # training never sees an evolved key
    assert not any("~" in ev for s in evolution.train for ev in s.events)


def test_template_evolution_changes_one_template_per_sequence(hdfs_sessions, evolution) -> None:
    normal, abnormal = hdfs_sessions
    by_id = {s.id: s for s in normal + abnormal}
    evolved = [s for s in evolution.test if "~" in s.id]
    assert evolved
    for seq in evolved:
        orig_id, target = seq.id.rsplit("~", 1)
        orig = by_id[orig_id]
        assert len(seq.events) == len(orig.events)
        for new, old in zip(seq.events, orig.events, strict=True):
            if old == target:
                assert new.startswith(f"{target}~")
            else:
                assert new == old
    before = evolution.info["test_before_dedup"]["total"]
    assert evolution.info["evolved_sequences"] == round(before * 0.2)
    _check_counts(evolution)
    _check_dedup(evolution)


def test_evolve_template_keeps_parameters() -> None:
    template = "Receiving block <*> src: <*> dest: <*>"
    for seed in range(20):
        for op in ulad.WORD_EDITS:
            out = ulad.evolve_template(template, op, random.Random(seed))
            assert out != template
            assert out.count("<*>") == 3
            delta = len(out.split()) - len(template.split())
            assert delta == {"add": 1, "remove": -1, "replace": 0}[op]


def test_template_evolution_needs_texts(hdfs_small) -> None:
    train, test = hdfs_small
    with pytest.raises(ValueError, match="without a template text"):
        ulad.build_template_evolution(train, test, {"E5": "x"}, 0.1)
