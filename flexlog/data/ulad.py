"""Builders of ULAD datasets (anomaly detection on unstable logs): train on the old
distribution, test on an evolved one, with the test set de-duplicated against training.

* ADFA-U: for one held-out attack type, train on normal traces + the other five attack types,
  test on held-out normal traces + that attack type (a new attack is the "evolution").
* SynHDFS-U: HDFS sessions whose test part receives sequence-level changes (delete or duplicate
  a template, shuffle a short subsequence) in a given ratio of sequences.
* Template evolution (SYNEVOL-U style): HDFS test sessions whose templates changed wording
  (a word added, removed or replaced), so they carry template keys never seen in training.

Every builder is seeded and records what it did in ``info``.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flexlog.data.adfa import ATTACK_TYPES, AdfaCorpus
from flexlog.data.records import LogSequence, write_jsonl
from flexlog.data.sampling import dedup_against, limited_balanced, limited_fraction
from flexlog.data.templates import write_templates

LIMITED_STRATEGIES = ("balanced", "fraction")
SYNHDFS_RATIOS = (0.05, 0.1, 0.2, 0.3)


@dataclass
class UladDataset:
    """One ULAD configuration: the full and limited training sets and the evolved test set."""

    name: str
    train: list[LogSequence]
    limited_train: list[LogSequence]
    test: list[LogSequence]
    templates: dict[str, str] | None = None
    info: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write train / limited_train / test JSONL, templates.csv (if any) and info.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "train": out / "train.jsonl",
            "limited_train": out / "limited_train.jsonl",
            "test": out / "test.jsonl",
        }
        write_jsonl(paths["train"], self.train)
        write_jsonl(paths["limited_train"], self.limited_train)
        write_jsonl(paths["test"], self.test)
        if self.templates is not None:
            paths["templates"] = out / "templates.csv"
            write_templates(paths["templates"], self.templates)
        paths["info"] = out / "info.json"
        paths["info"].write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")
        return paths


def _counts(seqs: Sequence[LogSequence]) -> dict[str, int]:
    c = Counter(s.label for s in seqs)
    return {"normal": c.get(0, 0), "anomalous": c.get(1, 0), "total": len(seqs)}


def _limited(train: Sequence[LogSequence], strategy: str, seed: int, **kw) -> list[LogSequence]:
    if strategy == "balanced":
        return limited_balanced(train, per_class=kw.get("per_class", 500), seed=seed)
    if strategy == "fraction":
        return limited_fraction(train, normal_fraction=kw.get("normal_fraction", 0.2), seed=seed)
    raise ValueError(f"limited strategy must be one of {LIMITED_STRATEGIES}, got {strategy!r}")


def _finish(
    name: str,
    train: list[LogSequence],
    test: list[LogSequence],
    *,
    seed: int,
    limited: str,
    templates: dict[str, str] | None,
    info: dict,
    dedup: bool = True,
    **limited_kw,
) -> UladDataset:
    kept, ratio = dedup_against(train, test)
    if not dedup:  # the paper's "without de-duplication" comparison: the ratio is still told
        kept = list(test)
    limited_train = _limited(train, limited, seed, **limited_kw)
    info = {
        **info,
        "name": name,
        "seed": seed,
        "limited_strategy": limited,
        **{f"limited_{k}": v for k, v in limited_kw.items()},
        "duplication_ratio": round(ratio, 6),
        "deduplicated": dedup,
        "test_before_dedup": _counts(test),
        "train": _counts(train),
        "limited_train": _counts(limited_train),
        "test": _counts(kept),
    }
    return UladDataset(name, train, limited_train, kept, templates, info)


#: The FlexLog paper's ADFA-U (its Table 2): 80 % of the normal traces train, every other
#: normal trace tests beside the held-out attack type.
PAPER_NORMAL_TRAIN_FRACTION = 0.8


def adfa_protocol(normal_train_fraction: float, test_normal_ratio: float | None) -> str:
    """The name of an ADFA-U split: "paper" for the FlexLog paper's, otherwise one that says how
    it differs (figures on such a split are not comparable with published ones)."""
    parts = []
    if normal_train_fraction != PAPER_NORMAL_TRAIN_FRACTION:
        parts.append(f"{normal_train_fraction:g} of normals train")
    if test_normal_ratio is not None:
        parts.append(f"test balanced at {test_normal_ratio:g} normals per attack")
    return "paper" if not parts else "non-paper: " + ", ".join(parts)


def build_adfa_u(
    corpus: AdfaCorpus,
    holdout: str,
    *,
    seed: int = 0,
    normal_train_fraction: float = PAPER_NORMAL_TRAIN_FRACTION,
    test_normal_ratio: float | None = None,
    limited: str = "balanced",
    per_class: int = 500,
    dedup: bool = True,
) -> UladDataset:
    """ADFA-U for one held-out attack type (paper names: adduser, hydraFTP, hydraSSH, java,
    meter, web).

    The defaults are the FlexLog paper's protocol: the 5,205 normal traces are shuffled with
    ``seed``; ``normal_train_fraction`` (80 %) of them plus the other five attack types train,
    every remaining normal trace plus the held-out type test (java: 4,786 / 1,165 before
    de-duplication), so the test set holds about 6–14 normals per attack and precision
    decides the F1. ``test_normal_ratio`` instead samples that many de-duplicated test normals
    per held-out attack trace (1.0: a balanced test set): a non-paper protocol, named so in
    ``info["protocol"]``. Anomalous traces carry their attack type as ``group``.
    ``per_class`` sizes the limited training set (500 + 500, the paper's); ``dedup=False``
    keeps test traces that also occur in training (the paper's RQ on de-duplication).
    """
    if holdout not in ATTACK_TYPES:
        raise ValueError(f"holdout must be one of {', '.join(ATTACK_TYPES)}, got {holdout!r}")
    if not 0 < normal_train_fraction < 1:
        raise ValueError(f"normal_train_fraction must be in (0, 1), got {normal_train_fraction}")
    if test_normal_ratio is not None and test_normal_ratio <= 0:
        raise ValueError(f"test_normal_ratio must be positive, got {test_normal_ratio}")
    folder = ATTACK_TYPES[holdout]
    if folder not in corpus.attacks:
        raise ValueError(f"the corpus has no {folder} attack traces")
    rng = random.Random(seed)
    normal = list(corpus.normal)
    rng.shuffle(normal)
    cut = round(len(normal) * normal_train_fraction)
    train = normal[:cut] + [
        s for kind, seqs in corpus.attacks.items() if kind != folder for s in seqs
    ]
    test_normal, held_attacks = normal[cut:], corpus.attacks[folder]
    if test_normal_ratio is not None:
        test_normal, _ = dedup_against(train, test_normal)
        attacks, _ = dedup_against(train, held_attacks)
        cap = max(1, round(len(attacks) * test_normal_ratio))
        test_normal = rng.sample(test_normal, min(cap, len(test_normal)))
    info = {
        "protocol": adfa_protocol(normal_train_fraction, test_normal_ratio),
        "holdout": holdout,
        "holdout_folder": folder,
        "normal_train_fraction": normal_train_fraction,
        "test_normal_ratio": test_normal_ratio,
    }
    return _finish(
        f"adfa-u-{holdout}",
        train,
        test_normal + list(held_attacks),
        seed=seed,
        limited=limited,
        templates=None,
        info=info,
        dedup=dedup,
        **({"per_class": per_class} if limited == "balanced" else {}),
    )


def _split_hdfs(
    normal: Sequence[LogSequence],
    abnormal: Sequence[LogSequence],
    rng: random.Random,
    train_fraction: float,
    anomaly_rate: float,
) -> tuple[list[LogSequence], list[LogSequence]]:
    """Split sessions at random: ``train_fraction`` of the normal sessions to training, the
    rest to test; each side gets anomalous sessions (disjoint pools) making up ``anomaly_rate``
    of it. The DeepLog files hold 4,855 normal and 16,838 anomalous sessions, so the rate, not
    the raw counts, decides the balance (HDFS v1 as a whole has 2.9% anomalous sessions)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not 0 < anomaly_rate < 1:
        raise ValueError(f"anomaly_rate must be in (0, 1), got {anomaly_rate}")
    normal, abnormal = list(normal), list(abnormal)
    rng.shuffle(normal)
    rng.shuffle(abnormal)
    cut = round(len(normal) * train_fraction)
    train_normal, test_normal = normal[:cut], normal[cut:]

    def n_anomalies(n_normal: int) -> int:
        return max(1, round(n_normal * anomaly_rate / (1 - anomaly_rate)))

    a_train = min(n_anomalies(len(train_normal)), len(abnormal) // 2)
    a_test = min(n_anomalies(len(test_normal)), len(abnormal) - a_train)
    train = train_normal + abnormal[:a_train]
    test = test_normal + abnormal[a_train : a_train + a_test]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


#: What SynHDFS-U and template evolution take from the paper and where the offline data make
#: them differ; written into ``info.json`` as ``protocol``.
HDFS_PROTOCOL = {
    "follows_paper": [
        "HDFS block sessions as template-id sequences",
        "test sequences changed in the given ratio (5/10/20/30 %), training left as it is",
        "test de-duplicated against training",
        "limited training set: every unique anomaly + 20 % of the unique normal sessions",
    ],
    "differs_because_of_offline_data": [
        "only the 4,855 normal sessions of the DeepLog files exist offline (HDFS v1 has "
        "558,223): both splits are built from them, anomalous sessions are sampled to "
        "--anomaly-rate (default 10 %; HDFS v1 has 2.9 %)",
        "normal sessions split at random, --train-fraction (default 0.5) to training",
    ],
}
TEMPLATE_EVOLUTION_PROTOCOL = {
    "follows_paper": [
        "SYNEVOL-style template changes: one word added, removed or replaced",
        "the evolved templates get new keys; their texts are in templates.csv",
    ],
    "differs_because_of_offline_data": [
        "LOGEVOL (Spark/Hadoop versions) is not available offline: HDFS sessions, split as "
        "for SynHDFS-U, stand in for it",
        *HDFS_PROTOCOL["differs_because_of_offline_data"],
    ],
}


def label_neutral_templates(train: Sequence[LogSequence]) -> set[str]:
    """Templates that occur in both normal and anomalous training sequences: changing how
    often or where they occur is unlikely to flip a label (SynHDFS's injection targets)."""
    in_normal = {ev for s in train if s.label == 0 for ev in s.events}
    in_anomalous = {ev for s in train if s.label == 1 for ev in s.events}
    return in_normal & in_anomalous


INJECTIONS = ("delete", "duplicate", "shuffle")


def inject(
    events: tuple[str, ...], op: str, safe: set[str], rng: random.Random, window: int = 3
) -> tuple[str, ...] | None:
    """Apply one sequence-level change using only label-neutral templates, or None if the
    sequence offers no place for it. Deleting never removes a template's last occurrence."""
    counts = Counter(events)
    if op == "delete":
        spots = [i for i, ev in enumerate(events) if ev in safe and counts[ev] > 1]
        if not spots:
            return None
        i = rng.choice(spots)
        return events[:i] + events[i + 1 :]
    if op == "duplicate":
        spots = [i for i, ev in enumerate(events) if ev in safe]
        if not spots:
            return None
        i = rng.choice(spots)
        return events[: i + 1] + events[i:]
    if op == "shuffle":
        spots = [
            i
            for i in range(len(events) - window + 1)
            if all(ev in safe for ev in events[i : i + window])
            and len(set(events[i : i + window])) > 1
        ]
        if not spots:
            return None
        i = rng.choice(spots)
        part = list(events[i : i + window])
        original = list(part)
        while part == original:
            rng.shuffle(part)
        return events[:i] + tuple(part) + events[i + window :]
    raise ValueError(f"injection must be one of {INJECTIONS}, got {op!r}")


def build_synhdfs_u(
    normal: Sequence[LogSequence],
    abnormal: Sequence[LogSequence],
    ratio: float,
    *,
    templates: dict[str, str] | None = None,
    seed: int = 0,
    train_fraction: float = 0.5,
    anomaly_rate: float = 0.1,
    limited: str = "fraction",
    normal_fraction: float = 0.2,
) -> UladDataset:
    """SynHDFS-U: inject delete / duplicate / shuffle changes into ``ratio`` of test sessions."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    rng = random.Random(seed)
    train, test = _split_hdfs(normal, abnormal, rng, train_fraction, anomaly_rate)
    safe = label_neutral_templates(train)
    chosen = set(rng.sample(range(len(test)), round(len(test) * ratio)))
    done: Counter[str] = Counter()
    evolved = []
    for i, seq in enumerate(test):
        if i in chosen:
            for op in rng.sample(INJECTIONS, len(INJECTIONS)):
                changed = inject(seq.events, op, safe, rng)
                if changed is not None:
                    seq = LogSequence(f"{seq.id}~{op}", changed, seq.label)
                    done[op] += 1
                    break
            else:
                done["no_place"] += 1
        evolved.append(seq)
    info = {
        "protocol": HDFS_PROTOCOL,
        "ratio": ratio,
        "train_fraction": train_fraction,
        "anomaly_rate": anomaly_rate,
        "injections": dict(done),
        "label_neutral_templates": sorted(safe, key=_natural),
    }
    return _finish(
        f"synhdfs-u-{ratio:g}",
        train,
        evolved,
        seed=seed,
        limited=limited,
        templates=templates,
        info=info,
        normal_fraction=normal_fraction,
    )


WORD_EDITS = ("add", "remove", "replace")
# Words an upgrade plausibly adds to or swaps into a log message.
_FILLER = ("new", "current", "remote", "local", "pending", "async", "block", "request", "node")


def evolve_template(template: str, op: str, rng: random.Random) -> str:
    """Add, remove or replace one word of a template; parameters (``<*>``) are kept."""
    words = template.split()
    movable = [i for i, w in enumerate(words) if "<*>" not in w and re.search(r"[A-Za-z]", w)]
    if op == "add" or not movable or (op == "remove" and len(words) < 2):
        i = rng.randrange(len(words) + 1)
        return " ".join([*words[:i], rng.choice(_FILLER), *words[i:]])
    i = rng.choice(movable)
    if op == "remove":
        return " ".join(words[:i] + words[i + 1 :])
    if op == "replace":
        choices = [w for w in _FILLER if w != words[i]]
        return " ".join([*words[:i], rng.choice(choices), *words[i + 1 :]])
    raise ValueError(f"word edit must be one of {WORD_EDITS}, got {op!r}")


def build_template_evolution(
    normal: Sequence[LogSequence],
    abnormal: Sequence[LogSequence],
    templates: dict[str, str],
    ratio: float,
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    anomaly_rate: float = 0.1,
    limited: str = "fraction",
    normal_fraction: float = 0.2,
) -> UladDataset:
    """Template evolution on HDFS: in ``ratio`` of the test sessions one template's wording
    changes (one seeded word edit per template), so the session carries the evolved template's
    new key ``<key>~<edit>`` instead; its text is added to the templates table."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    rng = random.Random(seed)
    train, test = _split_hdfs(normal, abnormal, rng, train_fraction, anomaly_rate)
    missing = sorted({ev for s in train + test for ev in s.events} - set(templates), key=_natural)
    if missing:
        raise ValueError(f"events without a template text: {missing[:10]}")
    table = dict(templates)
    variant: dict[str, str] = {}
    for key in sorted(templates, key=_natural):
        op = rng.choice(WORD_EDITS)
        new_key = f"{key}~{op}"
        table[new_key] = evolve_template(templates[key], op, rng)
        variant[key] = new_key
    chosen = set(rng.sample(range(len(test)), round(len(test) * ratio)))
    evolved, used = [], Counter()
    for i, seq in enumerate(test):
        if i in chosen:
            target = rng.choice(sorted(set(seq.events), key=_natural))
            seq = LogSequence(
                f"{seq.id}~{target}",
                tuple(variant[ev] if ev == target else ev for ev in seq.events),
                seq.label,
            )
            used[variant[target]] += 1
        evolved.append(seq)
    info = {
        "protocol": TEMPLATE_EVOLUTION_PROTOCOL,
        "ratio": ratio,
        "train_fraction": train_fraction,
        "anomaly_rate": anomaly_rate,
        "evolved_templates": {k: table[k] for k in sorted(used, key=_natural)},
        "evolved_sequences": sum(used.values()),
    }
    return _finish(
        f"template-evolution-{ratio:g}",
        train,
        evolved,
        seed=seed,
        limited=limited,
        templates=table,
        info=info,
        normal_fraction=normal_fraction,
    )


def _natural(key: str) -> tuple:
    """Sort E2 before E10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))
