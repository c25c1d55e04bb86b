"""Shared fixtures: the real datasets beside the checkout, and small subsets of them."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flexlog.data.adfa import AdfaCorpus, load_adfa
from flexlog.data.hdfs import load_hdfs_sessions
from flexlog.data.records import LogSequence
from flexlog.data.templates import read_templates

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ADFA_SAMPLE = REPO / "examples" / "adfa-ld-sample"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"datasets not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="session")
def adfa_corpus(datasets_dir: Path) -> AdfaCorpus:
    """The full ADFA-LD corpus (5,951 traces)."""
    return load_adfa(datasets_dir / "adfa-ld")


@pytest.fixture(scope="session")
def adfa_sample_dir() -> Path:
    """The ADFA-LD sample shipped in examples/ (original layout, 925 traces)."""
    return ADFA_SAMPLE


@pytest.fixture(scope="session")
def adfa_sample(adfa_sample_dir: Path) -> AdfaCorpus:
    return load_adfa(adfa_sample_dir)


@pytest.fixture(scope="session")
def hdfs_sessions(datasets_dir: Path) -> tuple[list[LogSequence], list[LogSequence]]:
    """All HDFS sessions: (normal, abnormal)."""
    src = datasets_dir / "hdfs"
    return (
        load_hdfs_sessions(src / "hdfs_train", 0),
        load_hdfs_sessions(src / "hdfs_test_abnormal", 1),
    )


@pytest.fixture(scope="session")
def hdfs_templates(datasets_dir: Path) -> dict[str, str]:
    return read_templates(datasets_dir / "hdfs" / "HDFS_templates.csv")


@pytest.fixture(scope="session")
def hdfs_small(hdfs_sessions) -> tuple[list[LogSequence], list[LogSequence]]:
    """A seeded subset of HDFS: (train: 200 normal + 100 anomalous, test: 250 + 250)."""
    normal, abnormal = hdfs_sessions
    rng = random.Random(0)
    n = rng.sample(normal, 450)
    a = rng.sample(abnormal, 350)
    train, test = n[:200] + a[:100], n[200:] + a[100:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


@pytest.fixture(scope="session")
def adfa_demo(tmp_path_factory) -> Path:
    """What ``make demo`` builds, in a temporary directory: ADFA-U (holdout web) from the
    shipped sample in ``DIR/data`` and an ML-only bundle (KNN, DT, SLFN) in ``DIR/bundle``."""
    from flexlog.cli import main

    out = tmp_path_factory.mktemp("adfa-demo")
    data = out / "data"
    build = ["dataset", "build", "adfa-u", "--holdout", "web", "--source", str(ADFA_SAMPLE)]
    assert main([*build, "--out", str(data)]) == 0
    train = ["train", "--train", str(data / "limited_train.jsonl"), "--voters", "knn,dt,slfn"]
    assert main([*train, "--out", str(out / "bundle")]) == 0
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """The neural voters' networks are small: a second intra-op thread gains little, and on a
    CPU shared with other work its synchronisation makes training several times slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hdfs_xy(hdfs_small):
    """``hdfs_small`` as (train events, train labels, test events, test labels)."""
    train, test = hdfs_small
    return (
        [s.events for s in train],
        np.array([s.label for s in train]),
        [s.events for s in test],
        np.array([s.label for s in test]),
    )


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the whole session (see tests/postgres_server)."""
    from postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres) -> str:
    """A URL to an empty cache of its own on the session's PostgreSQL server."""
    return postgres.fresh_url()


def cache_location(request: pytest.FixtureRequest, mode: str, tmp_path: Path, name: str = "c"):
    """Where a test's cache lives for a store ``mode``: memory (None), a SQLite file in
    ``tmp_path``, or an empty schema on the PostgreSQL server."""
    if mode == "memory":
        return None
    if mode == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / f"{name}.sqlite"


def kept_by_git(runs: Path) -> set[str]:
    """The files under an experiment folder tree that the checkout's .gitignore lets git keep,
    as if ``runs`` were the repository's ``runs/`` (relative paths)."""
    files = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file())
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        input="\n".join(f"runs/{f}" for f in files),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode not in (0, 1):  # 1: none ignored; anything else is git failing
        pytest.fail(f"git check-ignore failed: {done.stderr.strip()}")
    return set(files) - {f.removeprefix("runs/") for f in done.stdout.split()}
