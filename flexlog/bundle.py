"""Bundles: a trained detector as a directory with a manifest, in formats that run no code
when loaded (JSON, CSV, skops with an explicit allow-list of types).

Layout::

    BUNDLE/manifest.json          versions, config, data hashes, metrics, sha256 of every file
    BUNDLE/voters/<name>/...      each voter's state (see ``save_state``/``load_state``)
    BUNDLE/templates.csv          the templates table, when training had one
    BUNDLE/parser.json            the log parser's state, when the bundle scores raw logs

Loading checks the manifest's format and every listed file's hash before reading anything,
so a truncated, edited or foreign bundle is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn

from flexlog import __version__
from flexlog.data.records import InputError
from flexlog.data.templates import read_templates, write_templates
from flexlog.detector import Detector
from flexlog.ensemble import VotingEnsemble
from flexlog.evidence import EventProfile
from flexlog.ingest import Partitioning
from flexlog.vote_rules import rule_from_json
from flexlog.voters.base import BundleFormatError
from flexlog.voters.registry import voter_class

if TYPE_CHECKING:
    from flexlog.cache import SequenceCache

FORMAT = "flexlog-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Beside the voters: how common each training event was in normal sequences (evidence).
EVENT_PROFILE = "event_profile.json"


class BundleError(InputError):
    """A bundle that cannot be written or loaded; the message names the path."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


@dataclass
class Bundle:
    """A loaded bundle: the detector and what was saved beside it."""

    path: Path
    detector: Detector
    manifest: dict
    templates: dict[str, str] | None = None
    parser_state: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def event_profile(self) -> EventProfile | None:
        """How common each training event was in normal sequences (for evidence); None for
        bundles written without one."""
        if EVENT_PROFILE not in self.manifest.get("files", {}):
            return None
        try:
            return EventProfile.from_json(json.loads((self.path / EVENT_PROFILE).read_text()))
        except (OSError, ValueError, RecursionError) as exc:
            raise BundleError(f"{self.path}/{EVENT_PROFILE}: {exc}") from exc

    @property
    def partitioning(self) -> Partitioning | None:
        """How training grouped raw log lines into sequences (None: trained on sequences),
        so scoring raw logs with this bundle groups them the same way."""
        ingestion = self.manifest.get("ingestion") or {}
        saved = ingestion.get("partitioning") if isinstance(ingestion, dict) else ingestion
        if saved is None:
            return None
        try:
            return Partitioning.from_json(saved)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{self.path}/{MANIFEST}: ingestion.partitioning: {exc}") from exc


def save_bundle(
    detector: Detector,
    path: str | Path,
    *,
    config: dict | None = None,
    data: dict | None = None,
    metrics: dict | None = None,
    templates: dict[str, str] | None = None,
    parser_state: dict | None = None,
    partitioning: Partitioning | None = None,
    event_profile: EventProfile | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``detector`` as a bundle at ``path`` (atomically: a temp dir, then a rename).

    An existing non-empty directory is replaced only with ``overwrite=True`` and only if it
    is itself a bundle, so a typo cannot wipe an unrelated directory.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise BundleError(f"{path}: exists and is not a directory")
        if any(path.iterdir()):
            if not overwrite:
                raise BundleError(f"{path}: directory is not empty (use --force to replace)")
            if not (path / MANIFEST).exists():
                raise BundleError(f"{path}: not a bundle; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        voters = []
        for name, voter in detector.ensemble.voters:
            vdir = tmp / "voters" / name
            files = voter.save_state(vdir)
            voters.append(
                {
                    "name": name,
                    "voter": getattr(voter, "name", name),
                    "params": _jsonable(voter.get_params()),
                    "files": [f"voters/{name}/{f}" for f in files],
                    "fitted": _jsonable(
                        {k: getattr(voter, k) for k in ("n_neighbors_",) if hasattr(voter, k)}
                    ),
                }
            )
        if templates is not None:
            write_templates(tmp / "templates.csv", templates)
        if parser_state is not None:
            (tmp / "parser.json").write_text(json.dumps(parser_state))
        if event_profile is not None:
            (tmp / EVENT_PROFILE).write_text(json.dumps(event_profile.to_json()))
        files = {
            p.relative_to(tmp).as_posix(): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {
                "flexlog": __version__,
                "python": platform.python_version(),
                "scikit-learn": sklearn.__version__,
                "numpy": np.__version__,
            },
            "voters": voters,
            "ensemble": _jsonable(
                {"rule": detector.ensemble.rule.to_json(), "order": detector.ensemble.order}
            ),
            "config": _jsonable(config or {}),
            "data": _jsonable(data or {}),
            "metrics": _jsonable(metrics or {}),
            "files": files,
        }
        if partitioning is not None:
            manifest["ingestion"] = {"partitioning": partitioning.to_json()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict:
    """The validated manifest of a bundle (format, version and file hashes checked)."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    if not mpath.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; not a flexlog bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: corrupt manifest ({exc})") from exc
    except RecursionError:
        raise BundleError(f"{mpath}: corrupt manifest (nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a flexlog bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {version!r}; this flexlog reads up to {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("voters"), list):
        raise BundleError(f"{mpath}: manifest lacks 'files' or 'voters'")
    root = path.resolve()
    for rel, digest in files.items():
        fpath = (path / rel).resolve()
        if root not in fpath.parents:
            raise BundleError(f"{mpath}: file entry {rel!r} points outside the bundle")
        if not fpath.is_file():
            raise BundleError(f"{path}: missing file {rel} listed in the manifest")
        if sha256_file(fpath) != digest:
            raise BundleError(f"{path}: {rel} does not match its hash in the manifest")
    return manifest


def _voter_dir(path: Path, name: object, files: dict) -> Path:
    """The state directory of voter ``name``: inside ``voters/``, with every file in it
    listed (so hash-checked) in the manifest; nothing unverified is read."""
    voters_root = (path / "voters").resolve()
    vdir = path / "voters" / str(name)
    if not isinstance(name, str) or voters_root not in vdir.resolve().parents:
        raise BundleError(f"{path}/{MANIFEST}: voter name {name!r} points outside voters/")
    for p in sorted(vdir.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and rel not in files:
            raise BundleError(f"{path}: {rel} is not listed in the manifest")
    return vdir


def load_bundle(
    path: str | Path,
    *,
    cache: SequenceCache | None = None,
    voter_params: Mapping[str, Mapping[str, Any]] | None = None,
    tolerate: Iterable[type[BaseException]] = (),
    retry_after: float = 30.0,
    short_circuit: bool = True,
) -> Bundle:
    """Load a bundle after checking its manifest, and build its detector complete.

    ``cache`` answers sequences seen before; ``voter_params`` (voter name → parameters)
    override saved parameters, e.g. to point an LLM voter at another server; ``tolerate``,
    ``retry_after`` and ``short_circuit`` go to :class:`~flexlog.detector.Detector`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    overrides = dict(voter_params or {})
    names = {e.get("name") for e in manifest["voters"] if isinstance(e, dict)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{path}: no voter named {unknown[0]!r} to set parameters of")
    voters = []
    for entry in manifest["voters"]:
        try:
            name, kind, params = entry["name"], entry["voter"], entry["params"]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{path}/{MANIFEST}: malformed voter entry {entry!r}") from exc
        if not isinstance(params, dict):
            raise BundleError(f"{path}/{MANIFEST}: voter {name!r}: params must be an object")
        params = {**params, **overrides.get(name, {})}
        try:
            cls = voter_class(kind)
        except ValueError as exc:
            raise BundleError(f"{path}: voter {name!r}: {exc}") from exc
        vdir = _voter_dir(path, name, manifest["files"])
        try:
            voters.append((name, cls.load_state(vdir, params)))
        except (BundleFormatError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: voter {name!r}: {exc}") from exc
    if not voters:
        raise BundleError(f"{path}: the bundle has no voters")
    templates = (
        read_templates(path / "templates.csv") if "templates.csv" in manifest["files"] else None
    )
    parser_state = None
    if "parser.json" in manifest["files"]:
        try:
            parser_state = json.loads((path / "parser.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise BundleError(f"{path}/parser.json: corrupt parser state ({exc})") from None
    ensemble = manifest.get("ensemble", {})
    if not isinstance(ensemble, dict):
        raise BundleError(f"{path}/{MANIFEST}: 'ensemble' must be an object")
    try:
        rule = rule_from_json(ensemble.get("rule"))
        built = VotingEnsemble(voters, rule, order=ensemble.get("order"))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}/{MANIFEST}: ensemble: {exc}") from exc
    detector = Detector(
        built,
        cache=cache,
        tolerate=tolerate,
        retry_after=retry_after,
        short_circuit=short_circuit,
    )
    return Bundle(path, detector, manifest, templates, parser_state)
