"""ADFA-U with the LLM voter: for each held-out attack type and seed, fine-tune the recipe on the
limited training set, then score the test set with the LLM alone, the ML voters, the full
FlexLog ensemble (KNN + DT + SLFN + LLM, a tie is normal) and the same without retrieval.
The adapter is fine-tuned with retrieved knowledge in its prompts; "no-rag" switches retrieval
off at inference only (fine-tuning twice per configuration would double the cost).

``python -m finetune.experiment --steps 200 --seeds 0 --out runs/llm-adfa-u``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from flexlog.data.adfa import ATTACK_TYPES, load_adfa
from flexlog.data.records import LogSequence, write_jsonl
from flexlog.data.ulad import build_adfa_u
from flexlog.detector import make_detector
from flexlog.ensemble import majority_vote
from flexlog.evaluate import scores
from flexlog.voters.llm import LLMVoter

from .recipe import DEFAULT_RECIPE
from .train import run as finetune

MODELS = ("knn", "dt", "slfn", "ml-ensemble", "llm", "llm-no-rag", "flexlog", "flexlog-no-rag")


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


def run_config(
    corpus, holdout: str, seed: int, *, recipe: str, steps: int, out: Path, test_limit, threads
) -> dict:
    """Fine-tune and evaluate one ADFA-U configuration; returns F1 etc. per model."""
    ds = build_adfa_u(corpus, holdout, seed=seed)
    work = out / f"{holdout}-{seed}"
    data = work / "limited_train.jsonl"
    write_jsonl(data, ds.limited_train)
    report = finetune(recipe, data, work / "finetune", max_steps=steps, seed=seed, threads=threads)
    adapter = work / "finetune" / "adapter"
    test = _subsample(ds.test, test_limit, seed)
    y = [s.label for s in test]
    events = [s.events for s in test]
    ml = make_detector(["knn", "dt", "slfn"], {}, seed).fit(ds.limited_train)
    votes = ml.ensemble.votes(events)
    llm_votes, seconds = {}, {}
    for name, retrieval in (("llm", True), ("llm-no-rag", False)):
        voter = LLMVoter(adapter=str(adapter), domain="syscalls", retrieval=retrieval).fit([])
        start = time.perf_counter()
        llm_votes[name] = voter.predict(events)
        seconds[name] = time.perf_counter() - start
    result = {m: scores(y, v) for m, v in votes.items()}
    result["ml-ensemble"] = scores(y, majority_vote(votes))
    for name, v in llm_votes.items():
        result[name] = scores(y, v)
    result["flexlog"] = scores(y, majority_vote({**votes, "llm": llm_votes["llm"]}))
    result["flexlog-no-rag"] = scores(y, majority_vote({**votes, "llm": llm_votes["llm-no-rag"]}))
    result["info"] = {
        "test_sequences": len(test),
        "test_sequences_full": len(ds.test),
        "finetune_steps": report.get("steps"),
        "finetune_seconds": report.get("train_seconds"),
        "final_loss": report.get("final_loss"),
        "validation": report.get("validation"),
        "llm_seconds_per_sequence": {k: v / len(test) for k, v in seconds.items()},
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps per configuration")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--holdouts", default=",".join(ATTACK_TYPES))
    ap.add_argument("--test-limit", type=int, default=None, help="score at most N test sequences")
    ap.add_argument("--threads", type=int, default=None)
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
    seeds = [int(s) for s in args.seeds.split(",") if s]
    corpus = load_adfa(Path(args.datasets) / "adfa-ld")
    out = Path(args.out)
    results = _previous(out / "results.json", args.steps)
    for holdout in holdouts:
        for seed in seeds:
            key = f"{holdout}/{seed}"
            if key in results:
                print(f"{key}: already in {out / 'results.json'}, skipped", flush=True)
                continue
            results[key] = run_config(
                corpus,
                holdout,
                seed,
                recipe=args.recipe,
                steps=args.steps,
                out=out,
                test_limit=args.test_limit,
                threads=args.threads,
            )
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            f1 = "  ".join(f"{m} {results[key][m]['f1']:.3f}" for m in MODELS)
            print(f"{key}: {f1}", flush=True)
    lines = [
        f"# ADFA-U with the LLM voter ({args.recipe}, {args.steps} steps, seeds {seeds})",
        "",
        "| config | " + " | ".join(MODELS) + " |",
        "|---|" + "---:|" * len(MODELS),
    ]
    for key, r in results.items():
        lines.append(f"| {key} | " + " | ".join(f"{r[m]['f1']:.3f}" for m in MODELS) + " |")
    avg = {m: float(np.mean([r[m]["f1"] for r in results.values()])) for m in MODELS}
    lines.append("| **average** | " + " | ".join(f"**{avg[m]:.3f}**" for m in MODELS) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
