"""The ULAD protocols with the LLM voter (ADFA-U per held-out attack type, SynHDFS-U per
instability ratio): for each variant and seed, fine-tune the recipe on the limited training
set, then score the full test set with the LLM alone, the ML voters, the full FlexLog ensemble
(KNN + DT + SLFN + LLM, a tie is normal), the same without retrieval, the three ML voters
under the fitted weighted and stacked rules alone and with the LLM joining them, and flexlog's
default ensemble with the LLM joining its majority.
The adapter is fine-tuned with retrieved knowledge in its prompts; "no-rag" switches retrieval
off at inference only (fine-tuning twice per configuration would double the cost). The
ensembles are scored as short-circuit voting would ask them (same labels as asking every
voter), and the share of test sequences that reach the LLM is reported.

SynHDFS-U changes only the test sets, so its four ratios share one limited training set per
seed: they share that seed's adapter and LLM answers (``seed-SEED/``) and run in one job.

Resumable at two levels: finished configurations are skipped, a configuration that lacks some
rows computes only those, reusing its fine-tuned adapter and the LLM answers it already has
(``llm-answers-*.json`` beside the adapter).

The LLM runs in-process through the transformers backend (float32, the default) or vLLM
(``--llm-backend vllm``: the adapter merged, bfloat16 where the CPU computes it natively, ~4x
the rate on 2 cores). Each LLM row records the backend that scored it, the answers are kept
per backend, and a row is never scored with the answers of two backends; where both answered
the same sequences their agreement is recorded (``info["llm_agreement"]``).

``python -m finetune.experiment --steps 100 --seeds 0,1,2 --jobs 2 --out runs/llm-adfa-u``
``python -m finetune.experiment --dataset synhdfs-u --steps 100 --seeds 0,1,2 --jobs 2 \
--out runs/llm-synhdfs-u``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from flexlog.data.records import LogSequence, write_jsonl
from flexlog.detector import Detector
from flexlog.ensemble import VotingEnsemble
from flexlog.environment import environment
from flexlog.evaluate import scores
from flexlog.experiment import dataset_builders
from flexlog.llm.backends import DEFAULT_BACKEND
from flexlog.training import train_detector
from flexlog.voters.registry import DEFAULT_RULE, DEFAULT_VOTERS, ML_VOTERS

from .recipe import DEFAULT_RECIPE, Recipe, load_recipe
from .train import run as finetune

MODELS = (
    "knn",
    "dt",
    "slfn",
    "ml-ensemble",
    "llm",
    "llm-no-rag",
    "flexlog",
    "flexlog-no-rag",
    "default",
    "default+llm",
    "ml:weighted",
    "ml:stacked",
    "flexlog:weighted",
    "flexlog:stacked",
)
#: Ensembles that ask the LLM, each as (its ML base, the LLM voter): the share of test
#: sequences each asked is reported.
WITH_LLM = {
    "flexlog": ("ml", "llm"),
    "flexlog-no-rag": ("ml", "llm-no-rag"),
    "default+llm": ("default", "llm"),
    "flexlog:weighted": ("ml:weighted", "llm"),
    "flexlog:stacked": ("ml:stacked", "llm"),
}
#: The LLM is asked about this many sequences at a time (progress is shown per batch).
LLM_BATCH = 32
#: The in-process LLM backends the experiment can score with; the first is the default.
LLM_BACKENDS = (DEFAULT_BACKEND, "vllm")
#: The LLM-alone rows and whether their LLM gets retrieval.
LLM_ALONE_ROWS = {"llm": True, "llm-no-rag": False}


@dataclass(frozen=True)
class Protocol:
    """What the experiment needs to know about a ULAD dataset besides its builder."""

    #: the prompt domain of its events (the recipe's is replaced by it)
    domain: str
    #: whether the limited training set depends on the variant (ADFA-U: the held-out attack
    #: type) or only on the seed (SynHDFS-U changes test sets only), i.e. what an adapter serves
    adapter_per_variant: bool


PROTOCOLS = {
    "adfa-u": Protocol(domain="syscalls", adapter_per_variant=True),
    "synhdfs-u": Protocol(domain="hdfs", adapter_per_variant=False),
}


def variants(kind: str, datasets: Path) -> dict[str, object]:
    """The dataset's variants by their name in results (attack types; ratios as ``0.05``)."""
    names, _ = dataset_builders(kind, datasets)
    return {f"{v:g}" if isinstance(v, float) else str(v): v for v in names}


def workdir(out: Path, kind: str, variant: str, seed: int) -> Path:
    """Where one configuration's adapter and LLM answers live (shared by the configurations
    that train on the same limited set)."""
    shared = not PROTOCOLS[kind].adapter_per_variant
    return out / (f"seed-{seed}" if shared else f"{variant}-{seed}")


def _write_limited(path: Path, train: list[LogSequence]) -> None:
    """Write the limited training set; refuse when an adapter fine-tuned on a different one is
    already there (its answers would not belong to this configuration)."""
    new = path.with_suffix(".new")
    write_jsonl(new, train)
    adapter = path.parent / "finetune" / "adapter"
    if adapter.is_dir() and path.is_file() and path.read_bytes() != new.read_bytes():
        new.unlink()
        raise RuntimeError(
            f"{path}: differs from the limited training set the adapter in {adapter} was "
            f"fine-tuned on; move {path.parent} away to fine-tune again"
        )
    new.replace(path)


def _subsample(test: list[LogSequence], limit: int | None, seed: int) -> list[LogSequence]:
    """At most ``limit`` test sequences, half of each label where possible (seeded)."""
    if limit is None or len(test) <= limit:
        return test
    rng = random.Random(seed)
    by_label = {lab: [s for s in test if s.label == lab] for lab in (0, 1)}
    half = limit // 2
    picked = rng.sample(by_label[1], min(half, len(by_label[1])))
    picked += rng.sample(by_label[0], min(limit - len(picked), len(by_label[0])))
    rng.shuffle(picked)
    return picked


class _AskedLLM:
    """The LLM voter asked lazily: each sequence at most once, in batches with a progress bar
    (done, rate, ETA), its answers kept, so the ensembles below ask it only about what
    short-circuit voting needs and share those answers. ``requested`` holds the distinct
    sequences asked about since it was last cleared. With ``store`` the answers are kept in
    that JSON file too, so a resumed run asks only about sequences not asked before. The
    model is loaded on the first question (``load`` builds the voter)."""

    cost = 10000.0

    def __init__(self, load, desc: str, store: Path | None = None):
        self._load, self._voter = load, None
        self.desc = desc
        self.store = store
        self.p: dict[tuple[str, ...], float] = {}
        if store is not None and store.is_file():
            self.p = {tuple(e): float(p) for e, p in json.loads(store.read_text())}
        self.requested: set[tuple[str, ...]] = set()

    @property
    def voter(self):
        if self._voter is None:
            self._voter = self._load()
        return self._voter

    def _save(self) -> None:
        if self.store is not None:
            tmp = self.store.with_suffix(".tmp")
            tmp.write_text(json.dumps([[list(e), p] for e, p in self.p.items()]))
            tmp.replace(self.store)

    def predict_proba(self, X):
        keys = [tuple(e) for e in X]
        self.requested.update(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in self.p))
        with tqdm(total=len(missing), desc=self.desc, unit="seq", leave=False) as bar:
            for start in range(0, len(missing), LLM_BATCH):
                part = missing[start : start + LLM_BATCH]
                answers = self.voter.predict_proba(part)[:, 1]
                self.p.update(zip(part, map(float, answers), strict=True))
                self._save()
                bar.update(len(part))
        p = np.array([self.p[k] for k in keys], dtype=float)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)

    def close(self) -> None:
        """Release the model (one engine in memory at a time); asking again reloads it."""
        if self._voter is not None:
            self._voter.close()
            self._voter = None


def _per_row(llm_alone: int | dict[str, int | None] | None) -> dict[str, int | None]:
    """How many test sequences each LLM-alone row is scored on (one number: both rows)."""
    if isinstance(llm_alone, dict):
        return llm_alone
    return dict.fromkeys(LLM_ALONE_ROWS, llm_alone)


def answers_path(work: Path, name: str, backend: str) -> Path:
    """Where the answers of LLM row ``name`` scored with ``backend`` are kept (the default
    backend keeps the name records written before there was a choice)."""
    suffix = "" if backend == LLM_BACKENDS[0] else f"@{backend}"
    return work / f"llm-answers-{name}{suffix}.json"


def agreement(a: Path, b: Path) -> dict | None:
    """The share of identical labels where two answer stores answered the same sequences."""
    if not (a.is_file() and b.is_file()):
        return None
    first = {tuple(e): p > 0.5 for e, p in json.loads(a.read_text())}
    second = {tuple(e): p > 0.5 for e, p in json.loads(b.read_text())}
    both = first.keys() & second.keys()
    if not both:
        return None
    same = sum(first[k] == second[k] for k in both)
    return {"sequences": len(both), "agreement": same / len(both)}


def _with_llm(base: Detector, test: list[LogSequence], llm: _AskedLLM) -> tuple[list[int], float]:
    """Labels of ``base``'s voters plus the LLM under ``base``'s rule, short-circuited, and
    the share of the distinct test sequences that needed the LLM."""
    llm.requested.clear()
    ensemble = VotingEnsemble(
        [*base.ensemble.voters, ("llm", llm)], base.ensemble.rule.with_voter("llm")
    )
    detector = Detector(ensemble)
    labels = [v.label for v in detector.vote(test)]
    return labels, len(llm.requested) / max(1, len({s.events for s in test}))


def _finetuned(work: Path, recipe: Recipe, data: Path, steps: int, seed: int, threads) -> dict:
    """Fine-tune the recipe for one configuration, or reuse the adapter an earlier run of it
    left (same step count), so rows added later do not fine-tune again."""
    done = work / "finetune" / "report.json"
    if done.is_file() and (work / "finetune" / "adapter").is_dir():
        report = json.loads(done.read_text())
        if report.get("steps") == steps:
            return report
    return finetune(recipe, data, work / "finetune", max_steps=steps, seed=seed, threads=threads)


def run_config(
    datasets: Path,
    variant: str,
    seed: int,
    *,
    kind: str = "adfa-u",
    recipe: str,
    steps: int,
    out: Path,
    test_limit,
    threads,
    llm_alone: int | dict[str, int | None] | None = None,
    llm_backend: str = LLM_BACKENDS[0],
    done: dict | None = None,
) -> dict:
    """Fine-tune and evaluate one configuration of ``kind`` (ADFA-U: ``variant`` is the
    held-out attack type; SynHDFS-U: the instability ratio); returns F1 etc. per model. The
    LLM alone is scored on ``llm_alone`` test sequences (None: all of them; a mapping gives
    it per LLM-alone row). Rows already in ``done`` (an earlier result of this configuration)
    are kept, not computed again. The LLM rows computed here are scored with
    ``llm_backend``, one LLM loaded at a time."""
    result = {k: v for k, v in (done or {}).items() if k in MODELS}
    info = dict((done or {}).get("info", {}))
    _, build = dataset_builders(kind, datasets)
    ds = build(variants(kind, datasets)[variant], seed)
    work = workdir(out, kind, variant, seed)
    data = work / "limited_train.jsonl"
    _write_limited(data, ds.limited_train)
    recipe_ = load_recipe(recipe).replace(domain=PROTOCOLS[kind].domain)
    report = _finetuned(work, recipe_, data, steps, seed, threads)
    adapter = work / "finetune" / "adapter"
    test = _subsample(ds.test, test_limit, seed)
    y = [s.label for s in test]
    events = [s.events for s in test]
    llms = {
        name: _AskedLLM(
            lambda rag=rag: recipe_.llm_voter(adapter, retrieval=rag, backend=llm_backend).fit([]),
            f"{variant}/{seed} {name}",
            answers_path(work, name, llm_backend),
        )
        for name, rag in LLM_ALONE_ROWS.items()
    }
    llm_alone = _per_row(llm_alone)
    bases = {
        "ml": (ML_VOTERS, "majority"),
        "default": (DEFAULT_VOTERS, DEFAULT_RULE),
        "ml:weighted": (ML_VOTERS, "weighted"),
        "ml:stacked": (ML_VOTERS, "stacked"),
    }
    built: dict[str, Detector] = {}

    def base(name: str) -> Detector:
        if name not in built:
            voters, rule = bases[name]
            built[name] = train_detector(ds.limited_train, voters, rule=rule, seed=seed)[0]
        return built[name]

    if any(m not in result for m in ML_VOTERS):
        votes = base("ml").ensemble.votes(events)
        result.update({m: scores(y, v) for m, v in votes.items() if m not in result})
    for key, name in {
        "ml-ensemble": "ml",
        "default": "default",
        "ml:weighted": "ml:weighted",
        "ml:stacked": "ml:stacked",
    }.items():
        if key not in result:
            result[key] = scores(y, [v.label for v in base(name).vote(test)])
    shares = dict(info.get("llm_asked_share", {}))
    seconds = dict(info.get("llm_seconds", {}))
    alone_sizes = dict(info.get("llm_alone_rows", {}))
    for name, llm in llms.items():
        for key, (base_name, asked) in WITH_LLM.items():
            if key in result or asked != name:
                continue
            start = time.perf_counter()
            labels, shares[key] = _with_llm(base(base_name), test, llm)
            seconds[key] = time.perf_counter() - start
            result[key] = {**scores(y, labels), "backend": llm_backend}
        if name not in result:
            limit = llm_alone.get(name)
            alone = test if limit is None else _subsample(test, limit, seed)
            start = time.perf_counter()
            p = llm.predict_proba([s.events for s in alone])[:, 1]
            seconds[name] = time.perf_counter() - start
            labels = (p > 0.5).astype(int)
            result[name] = {**scores([s.label for s in alone], labels), "backend": llm_backend}
            result[name]["scored"] = len(alone)
        alone_sizes[name] = result[name].get("scored", len(test))
        llm.close()
    agree = dict(info.get("llm_agreement", {}))
    reference = LLM_BACKENDS[0]
    for name in llms:
        for other in LLM_BACKENDS[1:]:
            measured = agreement(
                answers_path(work, name, reference), answers_path(work, name, other)
            )
            if measured is not None:
                agree[f"{name}: {reference} vs {other}"] = measured
    info.update(
        {
            "test_sequences": len(test),
            "test_sequences_full": len(ds.test),
            "finetune_steps": report.get("steps"),
            "finetune_seconds": report.get("train_seconds"),
            "final_loss": report.get("final_loss"),
            "validation": report.get("validation"),
            "llm_seconds": seconds,
            "llm_asked_share": shares,
            "llm_alone_sequences": alone_sizes["llm"],
            "llm_alone_rows": alone_sizes,
            "llm_agreement": agree,
            "model": recipe_.base_model,
        }
    )
    result["info"] = info
    return result


def _previous(path: Path, steps: int) -> dict[str, dict]:
    """Results of an earlier run with the same step count, so an interrupted or extended run
    (more seeds) only computes what is missing."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path}: not JSON ({exc}); move it away to start over") from exc
    return {k: r for k, r in old.items() if r.get("info", {}).get("finetune_steps") == steps}


def still_to_score(result: dict | None, llm_alone: int | dict[str, int | None] | None) -> set[str]:
    """The rows of an earlier result of a configuration that a run asking for ``llm_alone``
    (per LLM-alone row where a mapping) must compute: those missing, and the LLM-alone rows
    scored on fewer test sequences than asked (e.g. a 60-sequence subset, now extended to the
    full test set; the LLM's answers kept in the work folder are not asked again)."""
    result = result or {}
    todo = set(MODELS) - set(result)
    total = result.get("info", {}).get("test_sequences")
    if total is None:
        return todo
    llm_alone = _per_row(llm_alone)
    for name in LLM_ALONE_ROWS:
        limit = llm_alone.get(name)
        wanted = total if limit is None else min(limit, total)
        if name in result and result[name].get("scored", wanted) < wanted:
            todo.add(name)
    return todo


def _scored_all(result: dict, name: str) -> bool:
    """Whether LLM-alone row ``name`` of a configuration was scored on its whole test set."""
    total = result["info"]["test_sequences"]
    return result[name].get("scored", total) >= total


def flag_all_f1(result: dict) -> float:
    """F1 of flagging every test sequence of a configuration (recall 1, precision the share
    of anomalies): the floor a detector must clear to have found anything."""
    positives = result["knn"]["tp"] + result["knn"]["fn"]
    return 2 * positives / (result["info"]["test_sequences"] + positives)


def summary(results: dict) -> dict:
    """Per model: mean/std over seeds of the average F1 over variants, per seed (what the
    report's Mann-Whitney tests read) and which seeds. An LLM-alone row averages the seeds
    whose every configuration scored it on the whole test set where there are such seeds
    (``subset`` false), else every seed (``subset`` true), never a mix. Also the mean share
    of sequences the ensembles asked the LLM about, the backends that scored each LLM row,
    and where two backends answered the same sequences, how often their labels agreed."""

    def seed_of(key: str) -> int:
        return int(key.split("/")[1])

    seeds = sorted({seed_of(k) for k in results})
    average = {}
    for m in MODELS:
        used = seeds
        if m in LLM_ALONE_ROWS:
            full = [
                s
                for s in seeds
                if all(_scored_all(r, m) for k, r in results.items() if seed_of(k) == s)
            ]
            used = full or seeds
        per_seed = [
            float(np.mean([r[m]["f1"] for k, r in results.items() if seed_of(k) == s]))
            for s in used
        ]
        average[m] = {
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "f1": per_seed,
            "seeds": used,
        }
        if m in LLM_ALONE_ROWS:
            rows = [r for k, r in results.items() if seed_of(k) in used]
            total = sum(r["info"]["test_sequences"] for r in rows)
            average[m]["test_sequences"] = total
            average[m]["scored"] = sum(
                r[m].get("scored", r["info"]["test_sequences"]) for r in rows
            )
            average[m]["subset"] = used != full
    flag_all = [
        float(np.mean([flag_all_f1(r) for k, r in results.items() if seed_of(k) == s]))
        for s in seeds
    ]
    average["flag-all"] = {
        "mean": float(np.mean(flag_all)),
        "std": float(np.std(flag_all)),
        "f1": flag_all,
        "seeds": seeds,
    }
    shares = [r["info"].get("llm_asked_share", {}) for r in results.values()]
    sizes = [
        (r["info"]["test_sequences"], r["info"].get("llm_alone_sequences"))
        for r in results.values()
    ]
    agree: dict[str, dict] = {}
    for r in results.values():
        for pair, measured in r["info"].get("llm_agreement", {}).items():
            entry = agree.setdefault(pair, {"sequences": 0, "same": 0.0, "configurations": 0})
            entry["sequences"] += measured["sequences"]
            entry["same"] += measured["agreement"] * measured["sequences"]
            entry["configurations"] += 1
    return {
        "average": average,
        "llm_backends": {  # of the configurations each row's average reads
            m: sorted(
                {
                    r[m].get("backend", LLM_BACKENDS[0])
                    for k, r in results.items()
                    if seed_of(k) in average[m]["seeds"]
                }
            )
            for m in (*WITH_LLM, *LLM_ALONE_ROWS)
        },
        "llm_agreement": {
            pair: {
                "sequences": e["sequences"],
                "configurations": e["configurations"],
                "agreement": round(e["same"] / e["sequences"], 4),
            }
            for pair, e in agree.items()
        },
        "test_sequences": int(sum(t for t, _ in sizes)),
        "llm_alone_sequences": int(sum(a if a is not None else t for t, a in sizes)),
        "llm_asked_share": {
            k: float(np.mean([s[k] for s in shares if k in s]))
            for k in WITH_LLM
            if any(k in s for s in shares)
        },
    }


def _run_group(datasets: Path, configs: list[tuple[str, int, dict | None]], **kw) -> list:
    """Configurations that share a work folder (adapter and LLM answers), one after another
    in one worker: [(variant, seed, result)]."""
    return [(v, s, run_config(datasets, v, s, done=done, **kw)) for v, s, done in configs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(PROTOCOLS), default="adfa-u")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per configuration")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument(
        "--variants",
        "--holdouts",
        default=None,
        help="comma-separated held-out attack types (ADFA-U) or instability ratios "
        "(SynHDFS-U); default all",
    )
    ap.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="score at most N test sequences (default: the full test set, the paper's)",
    )
    ap.add_argument(
        "--llm-alone",
        type=int,
        default=None,
        metavar="N",
        help="score the LLM alone on N test sequences (half anomalies; default all, the "
        "paper's): the ensembles ask it only where short-circuit voting needs it. A rerun "
        "with a larger N, or none, extends the LLM-alone rows of finished configurations, "
        "asking only about sequences not asked before",
    )
    ap.add_argument(
        "--llm-alone-no-rag",
        type=int,
        default=None,
        metavar="N",
        help="the same for the LLM alone without retrieval (default: as --llm-alone)",
    )
    ap.add_argument(
        "--llm-backend",
        choices=LLM_BACKENDS,
        default=LLM_BACKENDS[0],
        help="how the LLM runs: transformers (float32) or vllm (in-process engine, adapter "
        "merged, bfloat16 where the CPU has it; its threads take every core, so use --jobs 1). "
        "Rows record their backend; answers are kept per backend",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="configurations run in parallel")
    ap.add_argument("--datasets", default="../shared/datasets")
    ap.add_argument("--out", default=None, help="default runs/llm-DATASET")
    args = ap.parse_args(argv)
    kind = args.dataset
    datasets = Path(args.datasets)
    known = variants(kind, datasets)
    chosen = list(known) if args.variants is None else [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        print(
            f"error: --variants: {', '.join(unknown) or 'none given'} not a variant of {kind}; "
            f"known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    for flag, value in (
        ("--llm-alone", args.llm_alone),
        ("--llm-alone-no-rag", args.llm_alone_no_rag),
    ):
        if value is not None and value < 1:
            print(f"error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    no_rag = args.llm_alone if args.llm_alone_no_rag is None else args.llm_alone_no_rag
    llm_alone = {"llm": args.llm_alone, "llm-no-rag": no_rag}
    if args.llm_backend == "vllm" and args.jobs > 1:
        print(
            "warning: --llm-backend vllm binds its threads to every core; with --jobs "
            f"{args.jobs} the engines share them and each runs at a fraction of the rate",
            file=sys.stderr,
        )
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out or f"runs/llm-{kind}")
    out.mkdir(parents=True, exist_ok=True)
    results = _previous(out / "results.json", args.steps)
    # seed by seed, so an interrupted run leaves whole seeds (what the report averages)
    configs = [(v, s) for s in seeds for v in chosen]
    stale = {f"{v}/{s}": still_to_score(results.get(f"{v}/{s}"), llm_alone) for v, s in configs}
    todo = [(v, s) for v, s in configs if stale[f"{v}/{s}"]]
    for v, s in [c for c in configs if c not in todo]:
        print(f"{v}/{s}: already in {out / 'results.json'}, skipped", flush=True)

    def done(key: str) -> dict | None:
        """The earlier result without the rows to compute again."""
        if key not in results:
            return None
        return {m: r for m, r in results[key].items() if m not in stale[key]}

    kw = dict(
        kind=kind,
        recipe=args.recipe,
        steps=args.steps,
        out=out,
        test_limit=args.test_limit,
        threads=args.threads,
        llm_alone=llm_alone,
        llm_backend=args.llm_backend,
    )
    groups: dict[Path, list] = {}
    for v, s in todo:
        groups.setdefault(workdir(out, kind, v, s), []).append((v, s, done(f"{v}/{s}")))

    def record(variant: str, seed: int, result: dict) -> None:
        key = f"{variant}/{seed}"
        results[key] = result
        saved = {k: v for k, v in results.items() if "/" in k}
        (out / "results.json").write_text(json.dumps(saved, indent=1) + "\n")
        f1 = "  ".join(f"{m} {result[m]['f1']:.3f}" for m in MODELS)
        print(f"{key}: {f1}", flush=True)

    failed: list[str] = []

    def failure(configs: str, exc: BaseException) -> None:
        """A configuration that fails is reported and the others go on (their results are
        recorded as each finishes); the run exits non-zero naming what to run again."""
        failed.append(configs)
        trace = "".join(traceback.format_exception(exc))
        print(f"{configs}: failed, the others go on\n{trace}", file=sys.stderr, flush=True)

    if args.jobs == 1:
        for v, s in todo:
            try:
                record(v, s, run_config(datasets, v, s, done=done(f"{v}/{s}"), **kw))
            except Exception as exc:
                failure(f"{v}/{s}", exc)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                pool.submit(_run_group, datasets, group, **kw): ", ".join(
                    f"{v}/{s}" for v, s, _ in group
                )
                for group in groups.values()
            }
            for future in as_completed(futures):
                try:
                    finished = future.result()
                except Exception as exc:
                    failure(futures[future], exc)
                    continue
                for v, s, result in finished:
                    record(v, s, result)
    # the report covers the configurations asked for that have every row (a failed one may
    # have lost some; the others in the file stay there)
    asked = {f"{v}/{s}" for v in chosen for s in seeds}
    runs = {k: v for k, v in results.items() if k in asked and set(MODELS) <= set(v)}
    status = 0
    if failed:
        print(
            f"failed: {'; '.join(failed)}; the same command runs them again and keeps "
            "what finished",
            file=sys.stderr,
        )
        status = 1
    if not runs:
        return status
    model = next(iter(runs.values()))["info"].get("model", args.recipe)
    report = {
        "kind": f"llm-{kind}",
        "recipe": args.recipe,
        "model": model,
        "steps": args.steps,
        "seeds": sorted({int(k.split("/")[1]) for k in runs}),
        "variants": [v for v in known if any(k.split("/")[0] == v for k in runs)],
        "all_variants": list(known),
        "summary": summary(runs),
        **environment(),
    }
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# {kind} with the LLM voter ({args.recipe}, {args.steps} steps)",
        "",
        "| config | " + " | ".join(MODELS) + " |",
        "|---|" + "---:|" * len(MODELS),
    ]
    for key, r in runs.items():
        lines.append(f"| {key} | " + " | ".join(f"{r[m]['f1']:.3f}" for m in MODELS) + " |")
    avg = report["summary"]["average"]
    lines.append(
        "| **average** | " + " | ".join(f"**{avg[m]['mean']:.3f}**" for m in MODELS) + " |"
    )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
