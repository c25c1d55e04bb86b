"""ULAD experiments: every voter alone and the ensemble, over several seeds, with
Mann-Whitney U tests, written as JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from flexlog.data.ulad import SYNHDFS_RATIOS, UladDataset
from flexlog.detector import Detector, make_detector, make_voters
from flexlog.ensemble import VotingEnsemble, majority_vote, voter_scores
from flexlog.environment import environment
from flexlog.evaluate import mann_whitney, scores
from flexlog.ingest import KeyAligner
from flexlog.inner_validation import fit_rule, out_of_fold_scores
from flexlog.training import deployment_anomaly_rate
from flexlog.voters.base import FeatureMemo

ALIGNED = "ensemble+align"


@dataclass(frozen=True)
class AdfaOptions:
    """How ADFA-U is built for an experiment: the paper's protocol unless told otherwise."""

    test_normal_ratio: float | None = None
    per_class: int = 500
    dedup: bool = True
    normal_train_fraction: float = 0.8


def _builders(kind: str, datasets: Path, adfa: AdfaOptions):
    """(variant names, build(variant, seed) -> UladDataset) for one kind of experiment."""
    from flexlog.data import ulad

    if kind == "adfa-u":
        from flexlog.data.adfa import ATTACK_TYPES, load_adfa

        corpus = load_adfa(datasets / "adfa-ld")

        def build(variant, seed):
            return ulad.build_adfa_u(
                corpus,
                variant,
                seed=seed,
                test_normal_ratio=adfa.test_normal_ratio,
                normal_train_fraction=adfa.normal_train_fraction,
                per_class=adfa.per_class,
                dedup=adfa.dedup,
            )

        return list(ATTACK_TYPES), build
    from flexlog.data.hdfs import load_hdfs_sessions
    from flexlog.data.templates import read_templates

    src = datasets / "hdfs"
    normal = load_hdfs_sessions(src / "hdfs_train", 0)
    abnormal = load_hdfs_sessions(src / "hdfs_test_abnormal", 1)
    templates = read_templates(src / "HDFS_templates.csv")
    if kind == "synhdfs-u":

        def build(variant, seed):
            return ulad.build_synhdfs_u(normal, abnormal, variant, templates=templates, seed=seed)

    elif kind == "template-evolution":

        def build(variant, seed):
            return ulad.build_template_evolution(normal, abnormal, templates, variant, seed=seed)

    else:
        raise ValueError(f"unknown experiment {kind!r}")
    return list(SYNHDFS_RATIOS), build


@lru_cache(maxsize=4)
def dataset_builders(kind: str, datasets: Path, adfa: AdfaOptions | None = None):
    """(variant names, build(variant, seed) -> UladDataset) for ``kind`` ("adfa-u",
    "synhdfs-u", "template-evolution"; ADFA-U on the paper's protocol unless ``adfa`` says
    otherwise), the data read once per process."""
    return _builders(kind, datasets, adfa or AdfaOptions())


def set_torch_threads(threads: int) -> int | None:
    """Pin torch's intra-op threads (when torch is installed) and return the previous count.
    The neural voters' networks are small: on a CPU shared with other work, extra threads
    mostly wait on each other."""
    try:
        import torch
    except ImportError:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def _run_cell(
    kind: str,
    datasets: Path,
    adfa: AdfaOptions,
    variant,
    seed: int,
    voters: Sequence[str],
    params: dict,
    added: Sequence[str],
    rules: Sequence[str] = ("majority",),
) -> tuple[dict, dict]:
    """One (variant, seed) run, in this process or a worker: (scores, dataset info)."""
    ds = dataset_builders(kind, datasets, adfa)[1](variant, seed)
    result = run_one(
        ds, voters, params, seed, align=kind == "template-evolution", added=added, rules=rules
    )
    return result, ds.info


def run_one(
    ds: UladDataset,
    voters: Sequence[str],
    params: dict,
    seed: int,
    *,
    align: bool = False,
    added: Sequence[str] = (),
    rules: Sequence[str] = ("majority",),
) -> dict[str, dict]:
    """Fit on the limited training set, score the test set: scores per voter (with its fit
    and predict seconds) and of the ensemble of ``voters`` under each vote rule (``ensemble``
    for the first, ``ensemble:RULE`` for the others; weighted and stacked rules fitted by
    inner validation of the limited training set, as ``flexlog train`` does); for each voter
    in ``added``, also the first rule's ensemble with it added (``ensemble+NAME``); with
    ``align``, the ensemble after mapping unseen templates to known ones."""
    det = make_detector([*voters, *added], params, seed)
    det.fit(ds.limited_train, templates=ds.templates)
    test = ds.test
    y = [s.label for s in test]
    batch = FeatureMemo([s.events for s in test])
    soft = any(r != "majority" for r in rules)
    votes, probs, seconds = {}, {}, {}
    for name, voter in det.ensemble.voters:
        start = time.perf_counter()
        votes[name] = np.asarray(voter.predict(batch), dtype=np.int64)
        if soft and name in voters:
            probs[name] = voter_scores(voter, batch, soft=True)
        seconds[name] = time.perf_counter() - start
    result = {
        name: {
            **scores(y, v),
            "fit_seconds": det.ensemble.fit_seconds_[name],
            "predict_seconds": seconds[name],
        }
        for name, v in votes.items()
    }
    base = {name: votes[name] for name in voters}
    validation = None
    for i, rule in enumerate(rules):
        key = "ensemble" if i == 0 else f"ensemble:{rule}"
        if rule == "majority":
            result[key] = scores(y, majority_vote(base))
        else:
            if validation is None:
                validation = out_of_fold_scores(
                    lambda: VotingEnsemble(make_voters(voters, params, seed)),
                    ds.limited_train,
                    templates=ds.templates,
                    seed=seed,
                )
            rate, _ = deployment_anomaly_rate(ds.limited_train)
            fitted, _ = fit_rule(rule, validation, anomaly_rate=rate)
            result[key] = scores(y, fitted.combine({n: probs[n] for n in voters}))
        result[key]["predict_seconds"] = sum(seconds[name] for name in voters)
    if rules[0] == "majority":
        # which voters short-circuit voting asks, cheapest first, on the distinct test sequences
        members = [(n, v) for n, v in det.ensemble.voters if n in voters]
        asking = Detector(VotingEnsemble(members))
        asking.vote(test)
        result["ensemble"]["asked_share"] = asking.asked_share()
    for name in added:
        result[f"ensemble+{name}"] = scores(y, majority_vote({**base, name: votes[name]}))
    if align and ds.templates:
        seen = {ev for s in ds.limited_train for ev in s.events}
        known = {k: t for k, t in ds.templates.items() if k in seen}
        unseen = {ev: ds.templates[ev] for s in test for ev in s.events if ev in ds.templates}
        unseen = {k: t for k, t in unseen.items() if k not in seen}
        aligned, _ = KeyAligner(known).align(test, unseen)
        aligned_votes = VotingEnsemble([m for m in det.ensemble.voters if m[0] in base]).votes(
            [s.events for s in aligned]
        )
        result[ALIGNED] = scores(y, majority_vote(aligned_votes))
    return result


def run_experiment(
    kind: str,
    *,
    seeds: Sequence[int],
    voters: Sequence[str],
    params: dict | None = None,
    datasets: Path,
    out_dir: Path,
    adfa: AdfaOptions | None = None,
    console: Console | None = None,
    progress: bool = True,
    variants: Sequence | None = None,
    added: Sequence[str] = (),
    jobs: int = 1,
    threads: int = 1,
    rules: Sequence[str] = ("majority",),
) -> dict:
    """Run ``kind`` over all its variants (holdouts or ratios) and seeds; write the report.

    ``voters`` make up the ensemble; each of ``added`` is scored alone and as an extra member
    of it. Finished runs are kept in ``OUT/progress.json`` after each one, and a rerun with the
    same configuration resumes from there. ``jobs`` runs that many (variant, seed) cells in
    parallel processes, each with ``threads`` torch threads.
    """
    for name, value in (("jobs", jobs), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    if not seeds:
        raise ValueError("seeds: at least one seed is needed, got none")
    console = console or Console()
    adfa = adfa or AdfaOptions()
    names, _ = dataset_builders(kind, datasets, adfa)
    if variants is not None:
        wanted = {str(v) for v in variants}
        unknown = wanted - {str(n) for n in names}
        if unknown:
            raise ValueError(
                f"unknown {kind} variants {sorted(unknown)}; known: {', '.join(map(str, names))}"
            )
        names = [n for n in names if str(n) in wanted]
    config = {
        "kind": kind,
        "voters": list(voters),
        "added": list(added),
        "rules": list(rules),
        "params": params or {},
        "adfa": asdict(adfa) if kind == "adfa-u" else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / "progress.json"
    done: dict = {}
    if progress_path.is_file():
        saved = json.loads(progress_path.read_text())
        if saved.get("config") == json.loads(json.dumps(config, default=float)):
            done = saved["runs"]
    cells = [(v, s) for v in names for s in seeds]
    todo = [(v, s) for v, s in cells if f"{v}/{s}" not in done]
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc=kind,
        unit="run",
        disable=not progress,
    )

    def record(variant, seed: int, result: dict, ds_info: dict) -> None:
        done[f"{variant}/{seed}"] = {"result": result, "info": ds_info}
        progress_path.write_text(json.dumps({"config": config, "runs": done}, default=float))
        bar.update()

    shared = (kind, datasets, adfa)
    rest = (voters, params or {}, added, tuple(rules))
    if jobs == 1 or len(todo) <= 1:
        before = set_torch_threads(threads)
        try:
            for variant, seed in todo:
                record(variant, seed, *_run_cell(*shared, variant, seed, *rest))
        finally:
            if before is not None:
                set_torch_threads(before)
    else:
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)), initializer=set_torch_threads, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(_run_cell, *shared, v, s, *rest): (v, s) for v, s in todo}
            for future in as_completed(futures):
                record(*futures[future], *future.result())
    bar.close()
    # in (variant, seed) order, however the runs finished
    runs = {str(v): {s: done[f"{v}/{s}"]["result"] for s in seeds} for v in names}
    info = {f"{v}/{s}": done[f"{v}/{s}"]["info"] for v, s in cells}
    summary = summarize(runs)
    report = {
        **config,
        "seeds": list(seeds),
        "runs": runs,
        "summary": summary,
        "datasets": info,
        **environment(),
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out_dir / "results.md").write_text(markdown_table(kind, summary, seeds))
    plot(summary, out_dir / "f1.png", title=f"{kind}: F1 over {len(seeds)} seeds")
    console.print(rich_table(kind, summary, seeds))
    console.print(f"report written to {out_dir}/results.md, results.json, f1.png")
    return report


def _models(runs: dict) -> list[str]:
    first = next(iter(next(iter(runs.values())).values()))
    order = [m for m in first if m != ALIGNED and not m.startswith("ensemble")]
    ensembles = [m for m in first if m.startswith(("ensemble+", "ensemble:")) and m != ALIGNED]
    return [*order, "ensemble", *ensembles] + ([ALIGNED] if ALIGNED in first else [])


def summarize(runs: dict[str, dict[int, dict]]) -> dict:
    """Mean/std F1 per variant and model, the average over variants, and Mann-Whitney U of
    the ensemble against each other model (per variant over seeds; overall over the per-seed
    averages)."""
    models = _models(runs)
    out: dict = {"models": models, "variants": {}, "average": {}, "mann_whitney": {}}
    seeds = sorted({s for r in runs.values() for s in r})
    for variant, by_seed in runs.items():
        row = {}
        for m in models:
            f1 = [by_seed[s][m]["f1"] for s in sorted(by_seed)]
            row[m] = {"mean": float(np.mean(f1)), "std": float(np.std(f1)), "f1": f1}
        row["mann_whitney"] = {
            m: mann_whitney(row["ensemble"]["f1"], row[m]["f1"]) for m in models if m != "ensemble"
        }
        out["variants"][variant] = row
    for m in models:
        per_seed = [float(np.mean([runs[v][s][m]["f1"] for v in runs])) for s in seeds]
        out["average"][m] = {
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "f1": per_seed,
        }
    out["mann_whitney"] = {
        m: mann_whitney(out["average"]["ensemble"]["f1"], out["average"][m]["f1"])
        for m in models
        if m != "ensemble"
    }
    cells = [r for by_seed in runs.values() for r in by_seed.values()]
    shares = [r["ensemble"]["asked_share"] for r in cells if "asked_share" in r["ensemble"]]
    if shares:
        out["asked_share"] = {n: float(np.mean([s[n] for s in shares])) for n in shares[0]}
    out["timing"] = {
        m: {
            key: float(np.mean([r[m][key] for r in cells]))
            for key in ("fit_seconds", "predict_seconds", "n")
            if all(key in r[m] for r in cells)
        }
        for m in models
        if all("fit_seconds" in r[m] for r in cells)
    }
    return out


def mean_std(stat: dict) -> str:
    """A summary statistic as "0.700 ± 0.012" (tables of experiments and of the report)."""
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown_table(kind: str, summary: dict, seeds: Sequence[int]) -> str:
    models = summary["models"]
    lines = [
        f"# {kind}: F1 (mean ± std over seeds {list(seeds)})",
        "",
        "| variant | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for variant, row in summary["variants"].items():
        lines.append(f"| {variant} | " + " | ".join(mean_std(row[m]) for m in models) + " |")
    avg = summary["average"]
    lines.append("| **average** | " + " | ".join(f"**{mean_std(avg[m])}**" for m in models) + " |")
    lines += [
        "",
        "Mann-Whitney U, ensemble vs each model (two-sided; A12 = P(ensemble > model)):",
        "",
    ]
    lines.append("| variant | " + " | ".join(m for m in models if m != "ensemble") + " |")
    lines.append("|---|" + "---|" * (len(models) - 1))
    rows = [(v, r["mann_whitney"]) for v, r in summary["variants"].items()]
    rows.append(("average over variants", summary["mann_whitney"]))
    for variant, mw in rows:
        cells = [f"p={mw[m]['p']:.3f}, A12={mw[m]['a12']:.2f}" for m in models if m != "ensemble"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if summary.get("asked_share"):
        share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in summary["asked_share"].items())
        lines += [
            "",
            f"Short-circuit voting (cheapest first) asked each voter about this share of the "
            f"distinct test sequences: {share}.",
        ]
    if summary.get("timing"):
        lines += [
            "",
            "Mean wall time per run on this machine (fit on the limited training set, predict "
            "the whole test set):",
            "",
            "| voter | fit s | predict s | test sequences | predict ms / sequence |",
            "|---|---:|---:|---:|---:|",
        ]
        for m, t in summary["timing"].items():
            per = 1000 * t["predict_seconds"] / t["n"] if t.get("n") else float("nan")
            lines.append(
                f"| {m} | {t['fit_seconds']:.2f} | {t['predict_seconds']:.2f} | "
                f"{t.get('n', 0):.0f} | {per:.2f} |"
            )
    return "\n".join(lines) + "\n"


def rich_table(kind: str, summary: dict, seeds: Sequence[int]) -> Table:
    models = summary["models"]
    if len(models) > 6:  # too many columns for a terminal: one row per model instead
        table = Table(title=f"{kind}: F1 over {len(seeds)} seeds (mean ± std)")
        table.add_column("model")
        for variant in summary["variants"]:
            table.add_column(str(variant), justify="right")
        table.add_column("average", justify="right")
        table.add_column("MWU p (ens. vs)", justify="right")
        mw = summary["mann_whitney"]
        for m in models:
            table.add_row(
                m,
                *(mean_std(row[m]) for row in summary["variants"].values()),
                mean_std(summary["average"][m]),
                "" if m == "ensemble" else f"{mw[m]['p']:.3f}",
            )
        return table
    table = Table(title=f"{kind}: F1 over {len(seeds)} seeds (mean ± std)")
    table.add_column("variant")
    for m in models:
        table.add_column(m, justify="right")
    for variant, row in summary["variants"].items():
        table.add_row(variant, *(mean_std(row[m]) for m in models))
    table.add_row(
        "[bold]average[/]", *(f"[bold]{mean_std(summary['average'][m])}[/]" for m in models)
    )
    mw = summary["mann_whitney"]
    table.add_row(
        "MWU p (ens. vs)", *("" if m == "ensemble" else f"{mw[m]['p']:.3f}" for m in models)
    )
    return table


def plot(summary: dict, path: Path, title: str) -> None:
    """Grouped bars: F1 per variant and model, with the standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = summary["models"]
    variants = [*summary["variants"], "average"]
    rows = [*summary["variants"].values(), summary["average"]]
    x = np.arange(len(variants))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(variants)), 4.6))
    for i, m in enumerate(models):
        ax.bar(
            x + (i - (len(models) - 1) / 2) * width,
            [r[m]["mean"] for r in rows],
            width,
            yerr=[r[m]["std"] for r in rows],
            label=m,
            capsize=2,
        )
    ax.set_xticks(x, variants, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.legend(
        ncol=min(len(models), 5), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18)
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
