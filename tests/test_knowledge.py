"""The shipped i386 system-call table, and the script that regenerates it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flexlog.data.adfa import load_adfa
from flexlog.resources import read_knowledge_jsonl, syscalls_i386

ROOT = Path(__file__).resolve().parents[1]
HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_32.h")


def test_table_maps_adfa_numbers_to_i386_names():
    table = syscalls_i386()
    assert table[5] == "open"
    assert table[11] == "execve"
    assert table[192] == "mmap2"
    assert len(table) > 400


def test_records_carry_descriptions_for_retrieval():
    records = {r["key"]: r for r in read_knowledge_jsonl("syscalls_i386.jsonl")}
    assert records["open"]["kind"] == "syscall"
    assert "file" in records["open"]["description"]
    described = sum(1 for r in records.values() if r["description"])
    assert described / len(records) > 0.9


@pytest.mark.skipif(not HEADER.exists(), reason="kernel headers (linux-libc-dev) not installed")
def test_script_regenerates_the_shipped_table(tmp_path):
    out = tmp_path / "syscalls.jsonl"
    script = ROOT / "knowledge" / "build_syscalls.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out)], check=True, capture_output=True
    )
    regenerated = [json.loads(line) for line in out.read_text().splitlines()]
    shipped = read_knowledge_jsonl("syscalls_i386.jsonl")
    assert [(r["number"], r["key"]) for r in regenerated] == [
        (r["number"], r["key"]) for r in shipped
    ]


def test_adfa_loads_from_its_zip(tmp_path):
    sample = ROOT / "examples" / "adfa-ld-sample"
    archive = tmp_path / "ADFA-LD.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(sample.rglob("*.txt")):
            zf.write(path, "ADFA-LD/" + path.relative_to(sample).as_posix())
    from_zip, from_dir = load_adfa(archive), load_adfa(sample)
    assert from_zip.report.summary() == from_dir.report.summary()
    assert [s.events for s in from_zip.normal] == [s.events for s in from_dir.normal]
    assert (
        set(from_zip.attacks)
        == set(from_dir.attacks)
        == {
            "Adduser",
            "Hydra_FTP",
            "Hydra_SSH",
            "Java_Meterpreter",
            "Meterpreter",
            "Web_Shell",
        }
    )


def test_unknown_syscall_number_rejects_only_that_trace(tmp_path):
    root = tmp_path / "adfa"
    (root / "Training_Data_Master").mkdir(parents=True)
    (root / "Training_Data_Master" / "UTD-0001.txt").write_text("6 6 63 5 3 ")
    (root / "Training_Data_Master" / "UTD-0002.txt").write_text("6 9999 3")
    (root / "Training_Data_Master" / "UTD-0003.txt").write_bytes(b"6 \xff 3")
    corpus = load_adfa(root)
    assert [s.events for s in corpus.training] == [("close", "close", "dup2", "open", "read")]
    assert corpus.report.read == 3 and corpus.report.rejected == 2
    reasons = {Path(r.source).name: r.reason for r in corpus.report.rejections}
    assert "unknown i386 system-call number 9999" in reasons["UTD-0002.txt"]
    assert "not ASCII" in reasons["UTD-0003.txt"]
