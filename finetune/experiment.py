"""ADFA-U with the LLM voter: for each held-out attack type and seed, fine-tune the recipe on the
limited training set, then score the full test set with the LLM alone, the ML voters, the full
FlexLog ensemble (KNN + DT + SLFN + LLM, a tie is normal), the same without retrieval, and
flexlog's default ensemble with the LLM joining its stacked rule.
The adapter is fine-tuned with retrieved knowledge in its prompts; "no-rag" switches retrieval
off at inference only (fine-tuning twice per configuration would double the cost). The
ensembles are scored as short-circuit voting would ask them (same labels as asking every
voter), and the share of test sequences that reach the LLM is reported.

``python -m finetune.experiment --steps 100 --seeds 0,1,2 --jobs 2 --out runs/llm-adfa-u``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from flexlog.data.adfa import ATTACK_TYPES, load_adfa
from flexlog.data.records import LogSequence, write_jsonl
from flexlog.data.ulad import build_adfa_u
from flexlog.detector import Detector
from flexlog.ensemble import VotingEnsemble
from flexlog.evaluate import scores
from flexlog.training import train_detector
from flexlog.voters.registry import DEFAULT_RULE, DEFAULT_VOTERS

from .recipe import DEFAULT_RECIPE, load_recipe
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
)
#: The LLM is asked about this many sequences at a time (progress is shown per batch).
LLM_BATCH = 32


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
    sequences asked about since it was last cleared."""

    cost = 10000.0

    def __init__(self, voter, desc: str):
        self.voter = voter
        self.desc = desc
        self.p: dict[tuple[str, ...], float] = {}
        self.requested: set[tuple[str, ...]] = set()

    def predict_proba(self, X):
        keys = [tuple(e) for e in X]
        self.requested.update(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in self.p))
        with tqdm(total=len(missing), desc=self.desc, unit="seq", leave=False) as bar:
            for start in range(0, len(missing), LLM_BATCH):
                part = missing[start : start + LLM_BATCH]
                self.p.update(zip(part, self.voter.predict_proba(part)[:, 1], strict=True))
                bar.update(len(part))
        p = np.array([self.p[k] for k in keys], dtype=float)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] > 0.5).astype(np.int64)


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


def run_config(
    datasets: Path,
    holdout: str,
    seed: int,
    *,
    recipe: str,
    steps: int,
    out: Path,
    test_limit,
    threads,
    llm_alone: int | None = None,
) -> dict:
    """Fine-tune and evaluate one ADFA-U configuration; returns F1 etc. per model. The LLM
    alone is scored on ``llm_alone`` test sequences (None: all of them)."""
    corpus = load_adfa(datasets / "adfa-ld")
    ds = build_adfa_u(corpus, holdout, seed=seed)
    work = out / f"{holdout}-{seed}"
    data = work / "limited_train.jsonl"
    write_jsonl(data, ds.limited_train)
    report = finetune(recipe, data, work / "finetune", max_steps=steps, seed=seed, threads=threads)
    adapter = work / "finetune" / "adapter"
    test = _subsample(ds.test, test_limit, seed)
    y = [s.label for s in test]
    events = [s.events for s in test]
    ml, _ = train_detector(ds.limited_train, ["knn", "dt", "slfn"], rule="majority", seed=seed)
    default, _ = train_detector(ds.limited_train, DEFAULT_VOTERS, rule=DEFAULT_RULE, seed=seed)
    votes = ml.ensemble.votes(events)
    recipe_ = load_recipe(recipe)
    llms = {
        name: _AskedLLM(
            recipe_.llm_voter(adapter, retrieval=rag).fit([]), f"{holdout}/{seed} {name}"
        )
        for name, rag in (("llm", True), ("llm-no-rag", False))
    }
    result = {m: scores(y, v) for m, v in votes.items()}
    result["ml-ensemble"] = scores(y, [v.label for v in ml.vote(test)])
    result["default"] = scores(y, [v.label for v in default.vote(test)])
    shares, seconds = {}, {}
    for key, base, llm in (
        ("flexlog", ml, "llm"),
        ("flexlog-no-rag", ml, "llm-no-rag"),
        ("default+llm", default, "llm"),
    ):
        start = time.perf_counter()
        labels, shares[key] = _with_llm(base, test, llms[llm])
        seconds[key] = time.perf_counter() - start
        result[key] = scores(y, labels)
    alone = test if llm_alone is None else _subsample(test, llm_alone, seed)
    for name, llm in llms.items():
        start = time.perf_counter()
        p = llm.predict_proba([s.events for s in alone])[:, 1]
        seconds[name] = time.perf_counter() - start
        result[name] = scores([s.label for s in alone], (p > 0.5).astype(int))
        result[name]["scored"] = len(alone)
    result["info"] = {
        "test_sequences": len(test),
        "test_sequences_full": len(ds.test),
        "finetune_steps": report.get("steps"),
        "finetune_seconds": report.get("train_seconds"),
        "final_loss": report.get("final_loss"),
        "validation": report.get("validation"),
        "llm_seconds": seconds,
        "llm_asked_share": shares,
        "llm_alone_sequences": len(alone),
        "model": recipe_.base_model,
    }
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


def summary(results: dict) -> dict:
    """Per model: mean/std over configurations of F1, and per seed the average over holdouts
    (what the report's Mann-Whitney tests read); the mean share of sequences the LLM got."""
    seeds = sorted({k.split("/")[1] for k in results}, key=int)
    average = {}
    for m in MODELS:
        per_seed = [
            float(np.mean([r[m]["f1"] for k, r in results.items() if k.split("/")[1] == s]))
            for s in seeds
        ]
        average[m] = {
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "f1": per_seed,
        }
    shares = [r["info"].get("llm_asked_share", {}) for r in results.values()]
    sizes = [
        (r["info"]["test_sequences"], r["info"].get("llm_alone_sequences"))
        for r in results.values()
    ]
    return {
        "average": average,
        "test_sequences": int(sum(t for t, _ in sizes)),
        "llm_alone_sequences": int(sum(a if a is not None else t for t, a in sizes)),
        "llm_asked_share": {
            k: float(np.mean([s[k] for s in shares if k in s]))
            for k in ("flexlog", "flexlog-no-rag", "default+llm")
            if any(k in s for s in shares)
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per configuration")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--holdouts", default=",".join(ATTACK_TYPES))
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
        help="score the LLM alone on N test sequences (half attacks; default all): the "
        "ensembles ask it only where short-circuit voting needs it",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="configurations run in parallel")
    ap.add_argument("--datasets", default="../shared/datasets")
    ap.add_argument("--out", default="runs/llm-adfa-u")
    args = ap.parse_args(argv)
    holdouts = [h for h in args.holdouts.split(",") if h]
    unknown = sorted(set(holdouts) - set(ATTACK_TYPES))
    if unknown:
        print(
            f"error: unknown holdouts {unknown}; known: {', '.join(ATTACK_TYPES)}", file=sys.stderr
        )
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = _previous(out / "results.json", args.steps)
    todo = [(h, s) for h in holdouts for s in seeds if f"{h}/{s}" not in results]
    for h, s in [(h, s) for h in holdouts for s in seeds if (h, s) not in todo]:
        print(f"{h}/{s}: already in {out / 'results.json'}, skipped", flush=True)
    kw = dict(
        recipe=args.recipe,
        steps=args.steps,
        out=out,
        test_limit=args.test_limit,
        threads=args.threads,
        llm_alone=args.llm_alone,
    )

    def record(key: str, result: dict) -> None:
        results[key] = result
        saved = {k: v for k, v in results.items() if "/" in k}
        (out / "results.json").write_text(json.dumps(saved, indent=1) + "\n")
        f1 = "  ".join(f"{m} {result[m]['f1']:.3f}" for m in MODELS)
        print(f"{key}: {f1}", flush=True)

    datasets = Path(args.datasets)
    if args.jobs == 1:
        for h, s in todo:
            record(f"{h}/{s}", run_config(datasets, h, s, **kw))
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_config, datasets, h, s, **kw): f"{h}/{s}" for h, s in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    # the report covers the configurations asked for (others in the file stay there)
    asked = {f"{h}/{s}" for h in holdouts for s in seeds}
    runs = {k: v for k, v in results.items() if k in asked}
    if not runs:
        return 0
    model = next(iter(runs.values()))["info"].get("model", args.recipe)
    report = {
        "kind": "llm-adfa-u",
        "recipe": args.recipe,
        "model": model,
        "steps": args.steps,
        "seeds": sorted({int(k.split("/")[1]) for k in runs}),
        "holdouts": sorted({k.split("/")[0] for k in runs}),
        "summary": summary(runs),
    }
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"# ADFA-U with the LLM voter ({args.recipe}, {args.steps} steps)",
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
