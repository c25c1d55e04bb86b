"""``flexlog score --engine ray`` gives the local engine's records, rejections and counts: on a
local Ray instance (raw logs of two loghub systems in several files, a session spanning
files, canonical JSONL), on a simulated cluster of three nodes, and when a scoring actor dies
mid-run; an unreachable cluster, or Ray missing, is a one-line error before any work.

Real Ray on loopback throughout (no mocks). Records are compared byte for byte: both engines
write them in the same order (files in the order given, sequences in ingestion order)."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from flexlog.cli import main

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")
# Ray Data's own context copies touch its deprecated settings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

#: A line over the raw-log limit (1 MiB), and one that is not UTF-8.
LONG_LINE = b"081109 203615 148 INFO dfs.DataNode: " + b"x" * (1 << 20) + b"\n"
NOT_UTF8 = b"081109 203615 148 INFO dfs.DataNode: bad byte \xff in blk_1\n"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def _hdfs_labels(lines: list[bytes], path: Path) -> Path:
    """Block → Anomaly when one of its lines is a WARN, else Normal."""
    labels: dict[str, str] = {}
    for line in lines:
        text = line.decode()
        for block in set(re.findall(r"blk_-?\d+", text)):
            if text.split()[3] == "WARN" or labels.get(block) == "Anomaly":
                labels[block] = "Anomaly"
            else:
                labels[block] = "Normal"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["BlockId", "Label"])
        writer.writerows(labels.items())
    return path


@pytest.fixture(scope="module")
def data(datasets_dir: Path, tmp_path_factory) -> SimpleNamespace:
    """Two small ML bundles trained from raw logs (HDFS by block, Zookeeper by windows of 5
    lines) and the inputs to score: HDFS_2k in three files (blocks spanning them; a line that
    is not UTF-8 and one over the limit in the middle one), the end of Zookeeper_2k in two
    files (one with a bad line), and HDFS sessions as canonical JSONL in two files (integer
    ids, E-keys aligned through HDFS_templates.csv; a malformed and a non-UTF-8 line)."""
    root = tmp_path_factory.mktemp("score-ray")
    hdfs = _lines(datasets_dir / "hdfs" / "HDFS_2k.log")
    labels = _hdfs_labels(hdfs[:1000], root / "hdfs_labels.csv")
    train = _write(root / "hdfs_train.log", hdfs[:1000])
    hdfs_bundle = root / "hdfs_bundle"
    argv = ["train", "--train", str(train), "--preset", "hdfs", "--labels", str(labels)]
    assert main([*argv, "--voters", "knn,dt", "--out", str(hdfs_bundle)]) == 0
    hdfs_inputs = [
        _write(root / "hdfs_a.log", hdfs[:700]),
        _write(root / "hdfs_b.log", [*hdfs[700:900], NOT_UTF8, LONG_LINE, *hdfs[900:1400]]),
        _write(root / "hdfs_c.log", hdfs[1400:]),
    ]

    zk = _lines(datasets_dir / "loghub-2k" / "Zookeeper" / "Zookeeper_2k.log")
    zk_train = _write(root / "zk_train.log", zk[:1200])
    zk_bundle = root / "zk_bundle"
    argv = ["train", "--train", str(zk_train), "--preset", "zookeeper", "--partition", "fixed"]
    argv += ["--window", "5", "--label-field", "Level", "--normal-value", "WARN"]
    assert main([*argv, "--voters", "knn,dt", "--out", str(zk_bundle)]) == 0
    zk_inputs = [
        _write(root / "zk_a.log", zk[1200:1600]),
        _write(root / "zk_b.log", [*zk[1600:1700], b"no zookeeper header here\n", *zk[1700:]]),
    ]

    sessions = (datasets_dir / "hdfs" / "hdfs_train").read_text().splitlines()[:300]
    records = [
        json.dumps({"id": i, "events": [f"E{k}" for k in line.split()]}).encode() + b"\n"
        for i, line in enumerate(sessions)
    ]
    jsonl_inputs = [
        _write(root / "seq_a.jsonl", [*records[:150], b"{not json\n"]),
        _write(root / "seq_b.jsonl", [*records[150:200], NOT_UTF8, *records[200:]]),
    ]
    return SimpleNamespace(
        root=root,
        hdfs_bundle=hdfs_bundle,
        hdfs_inputs=hdfs_inputs,
        zk_bundle=zk_bundle,
        zk_inputs=zk_inputs,
        jsonl_inputs=jsonl_inputs,
        templates=datasets_dir / "hdfs" / "HDFS_templates.csv",
    )


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance in this process with two CPUs; `--engine ray` without --address uses
    this connection."""
    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _score(capsys, bundle: Path, inputs: list[Path], out: Path, *extra: str) -> dict:
    """Run `flexlog score`; the output, its rejections and the summary's counts."""
    argv = ["score", "--bundle", str(bundle), "--out", str(out), "--no-cache", *extra]
    for path in inputs:
        argv += ["--input", str(path)]
    capsys.readouterr()
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().err.split())
    answered = re.search(r"scored: (\d+) sequences answered \((\d+) anomalous\)", text)
    counts = re.search(r"(\d+) read = (\d+) accepted \+ (\d+) rejected", text)
    remapped = re.search(r"(\d+) unseen templates mapped", text)
    assert answered and counts, text
    rejected = out.with_name(out.name + ".rejected.jsonl")
    result = {
        "records": out.read_bytes() if out.suffix != ".parquet" else None,
        "rejected": rejected.read_bytes() if rejected.exists() else b"",
        "answered": tuple(map(int, answered.groups())),
        "counts": tuple(map(int, counts.groups())),
        "remapped": int(remapped.group(1)) if remapped else 0,
    }
    read, accepted, n_rejected = result["counts"]
    assert read == accepted + n_rejected
    assert n_rejected == len(result["rejected"].splitlines())
    if result["records"] is not None:
        assert result["answered"][0] == len(result["records"].splitlines())
    return result


def _same(local: dict, ray: dict) -> None:
    assert ray["records"] == local["records"]
    assert ray["rejected"] == local["rejected"]
    for key in ("answered", "counts", "remapped"):
        assert ray[key] == local[key], key


@pytest.fixture(scope="module")
def hdfs_local(data, tmp_path_factory) -> dict:
    """The local engine on the HDFS files: what every Ray run on them must give."""
    out = tmp_path_factory.mktemp("hdfs-local") / "local.jsonl"
    argv = ["score", "--bundle", str(data.hdfs_bundle), "--out", str(out), "--no-cache"]
    for path in data.hdfs_inputs:
        argv += ["--input", str(path)]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = out.with_name(out.name + ".rejected.jsonl")
    return {"out": out, "records": records, "rejected": rejected.read_bytes()}


def test_unreachable_address_is_one_line_before_any_work(data, tmp_path, capsys) -> None:
    port = _free_port()  # nobody listens on it
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        out = tmp_path / "never.jsonl"
        argv = ["score", "--bundle", str(data.hdfs_bundle), "--input", str(data.hdfs_inputs[0])]
        capsys.readouterr()
        rc = main([*argv, "--out", str(out), "--engine", "ray", "--address", address])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.strip().splitlines() == [
            f"error: cannot reach the Ray cluster at {address}: Connection refused"
        ]
        assert not out.exists()


def test_without_ray_the_message_says_what_to_install(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    out = tmp_path / "never.jsonl"
    argv = ["score", "--bundle", str(data.hdfs_bundle), "--input", str(data.hdfs_inputs[0])]
    assert main([*argv, "--out", str(out), "--engine", "ray"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pip install 'flexlog[ray]'" in err and "Traceback" not in err
    assert not out.exists()


def test_ray_gives_the_local_records_on_raw_logs_in_several_files(
    data, hdfs_local, local_ray, tmp_path, capsys
) -> None:
    local = _score(capsys, data.hdfs_bundle, data.hdfs_inputs, tmp_path / "local.jsonl")
    ray = _score(
        capsys, data.hdfs_bundle, data.hdfs_inputs, tmp_path / "ray.jsonl", "--engine", "ray"
    )
    _same(local, ray)
    # a block seen in two files is a sequence in each, as the local engine makes it
    files_of: dict[str, set[str]] = {}
    for record in hdfs_local["records"]:
        files_of.setdefault(record["id"], set()).add(record["origin"]["file"])
    assert any(len(files) > 1 for files in files_of.values())
    reasons = [json.loads(line)["reason"] for line in ray["rejected"].splitlines()]
    assert any("not valid UTF-8" in r for r in reasons)
    assert any("bytes, over" in r for r in reasons)
    first = json.loads(ray["rejected"].splitlines()[0])
    assert first["source"] == str(data.hdfs_inputs[1]) and first["line"] == 201


def test_ray_gives_the_local_records_on_a_second_system_and_as_parquet(
    data, local_ray, tmp_path, capsys
) -> None:
    import pyarrow.parquet as pq

    local = _score(capsys, data.zk_bundle, data.zk_inputs, tmp_path / "local.jsonl")
    ray = _score(capsys, data.zk_bundle, data.zk_inputs, tmp_path / "ray.jsonl", "--engine", "ray")
    _same(local, ray)
    assert local["counts"][2] == 1 and local["answered"][0] == 160
    # Parquet: the same rows from both engines, in the same order
    _score(capsys, data.zk_bundle, data.zk_inputs, tmp_path / "local.parquet")
    _score(capsys, data.zk_bundle, data.zk_inputs, tmp_path / "ray.parquet", "--engine", "ray")
    table = pq.read_table(tmp_path / "ray.parquet")
    assert table.equals(pq.read_table(tmp_path / "local.parquet"))
    rows = table.to_pylist()
    records = [json.loads(line) for line in local["records"].splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert [json.loads(r["origin"]) for r in rows] == [r["origin"] for r in records]


def test_ray_gives_the_local_records_on_canonical_jsonl(data, local_ray, tmp_path, capsys):
    extra = ("--templates", str(data.templates))
    local = _score(capsys, data.hdfs_bundle, data.jsonl_inputs, tmp_path / "local.jsonl", *extra)
    ray = _score(
        capsys,
        data.hdfs_bundle,
        data.jsonl_inputs,
        tmp_path / "ray.jsonl",
        *extra,
        "--engine",
        "ray",
    )
    _same(local, ray)
    assert local["counts"] == (302, 300, 2) and local["remapped"] > 0
    reasons = [json.loads(line)["reason"] for line in ray["rejected"].splitlines()]
    assert reasons[0].startswith("malformed JSON") and "not valid UTF-8" in reasons[1]


@pytest.mark.slow
def test_a_scoring_actor_killed_mid_run_loses_and_doubles_nothing(
    data, hdfs_local, local_ray, tmp_path, monkeypatch, capsys
) -> None:
    """The test hook of flexlog.ray_engine: the actor that reaches its third batch exits its
    process (once: the marker file stops the next); Ray restarts it and retries the task."""
    from flexlog.ray_engine import CRASH_ONCE_ENV

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, f"3:{marker}")
    out = tmp_path / "ray.jsonl"
    ray = _score(
        capsys, data.hdfs_bundle, data.hdfs_inputs, out, "--engine", "ray", "--batch-size", "100"
    )
    assert marker.exists()  # an actor did die
    assert ray["records"] == hdfs_local["out"].read_bytes()
    assert ray["rejected"] == hdfs_local["rejected"]
    keys = [(r["id"], r["origin"]["file"]) for r in map(json.loads, ray["records"].splitlines())]
    assert len(keys) == len(set(keys)) == len(hdfs_local["records"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_a_three_node_cluster_gives_the_local_records(data, hdfs_local, tmp_path, capsys):
    """Three nodes of one CPU on loopback, reached by the head's address and through Ray
    Client (ray://), where the pipeline runs in an actor on the cluster."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # this process's own instance, if an earlier test started it
    client_port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "ray_client_server_port": client_port},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        _wait_listening(client_port)
        results = {}
        for address in (cluster.address, f"ray://127.0.0.1:{client_port}"):
            out = tmp_path / f"cluster{len(results)}.jsonl"
            extra = ("--engine", "ray", "--address", address)
            results[address] = _score(capsys, data.hdfs_bundle, data.hdfs_inputs, out, *extra)
    finally:
        ray.shutdown()
        cluster.shutdown()
    for result in results.values():
        assert result["records"] == hdfs_local["out"].read_bytes()
        assert result["rejected"] == hdfs_local["rejected"]


def test_ray_workers_answer_corrections_from_a_shared_postgresql_cache(
    adfa_demo: Path, local_ray, postgres_url: str, tmp_path: Path, capsys
) -> None:
    """A correction made elsewhere (here: a cache opened in this process, as a service
    replica would) is what the Ray actors answer, each through its own connection."""
    from flexlog.cache import SequenceCache

    test = adfa_demo / "data" / "test.jsonl"
    first = json.loads(test.read_text().splitlines()[0])
    out = tmp_path / "plain.jsonl"
    argv = ["score", "--bundle", str(adfa_demo / "bundle"), "--input", str(test)]
    assert main([*argv, "--out", str(out), "--engine", "ray", "--cache", postgres_url]) == 0
    before = json.loads(out.read_text().splitlines()[0])
    assert before["id"] == first["id"] and before["source"] == "ensemble"
    with SequenceCache(postgres_url) as replica:
        replica.update(first["events"], 1 - before["label"], actor="cli:ops")
    out = tmp_path / "corrected.jsonl"
    assert main([*argv, "--out", str(out), "--engine", "ray", "--cache", postgres_url]) == 0
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert (after[0]["label"], after[0]["source"]) == (1 - before["label"], "human")
    assert sum(r["source"] == "cache" for r in after) >= len(after) - 2  # the rest was cached
