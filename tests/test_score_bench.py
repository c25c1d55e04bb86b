"""``flexlog bench --score`` end to end on a small generated log (the local engine: the Ray
engine's records are tested in test_score_ray), and the scaling model's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexlog.cli import main
from flexlog.score_bench import scaling_model


@pytest.mark.slow
def test_bench_score_measures_the_local_engine(tmp_path: Path, capsys) -> None:
    pytest.importorskip("psutil")
    out = tmp_path / "bench"
    argv = ["bench", "--score", "--sizes", "3000", "--actors", "", "--files", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "score_bench.json").read_text())
    (row,) = report["rows"]
    assert row["engine"] == "local" and row["lines"] == 3000
    assert row["lines_read"] == 3000 == row["lines_accepted"]  # generated lines all parse
    assert 0 < row["sequences"] < 3000 and row["lines_per_s"] > 0 and row["peak_worker_mib"] > 0
    assert (out / "score_bench.md").read_text().count("| 3,000 | local |") == 1
    assert (out / "score_bench.png").stat().st_size > 0


def test_bench_score_refuses_bad_options(tmp_path: Path, capsys) -> None:
    assert main(["bench", "--score", "--sizes", "0", "--actors", ""]) != 0
    assert main(["bench", "--score", "--bundle", str(tmp_path), "--actors", ""]) != 0
    assert "not a flexlog bundle" in capsys.readouterr().err
    assert main(["bench", "--score", "--parse"]) != 0


def test_scaling_model_adds_up() -> None:
    model = scaling_model(
        50_000, 0.1, lines_per_day=864_000_000, llm_share=0.05, llm_sequences_per_s=2.0
    )
    assert model["lines_per_s"] == 10_000 and model["sequences_per_s"] == 1_000
    assert model["llm_sequences_per_s"] == 50
    assert model["cpu_workers"] == 1 and model["llm_workers"] == 50  # headroom 2
    assert scaling_model(1e5, 0.1, llm_share=0.0, llm_sequences_per_s=1.0)["llm_workers"] == 0
