"""The README's results, regenerated from experiment runs (``make report``).

Every ``results.json`` under the runs folder (written by ``flexlog experiment`` and by the LLM
experiment of ``finetune``) is read; runs are sorted into sections by what they measured, not
by their folder names: ADFA-U on the paper's protocol, SynHDFS-U, ADFA-U at other training-set
sizes, ADFA-U without de-duplication, and the LLM voter. Published figures stand in a column
beside ours only where the protocol is the paper's; any other protocol is named in the
section's title. Tables are Markdown, plots PNG; the Markdown replaces the part of the README
between ``<!-- results:start -->`` and ``<!-- results:end -->``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from flexlog.data.ulad import SYNHDFS_RATIOS
from flexlog.environment import describe
from flexlog.evaluate import mann_whitney
from flexlog.experiment import mean_std
from flexlog.llm.backends import DEFAULT_BACKEND as DEFAULT_LLM_BACKEND

START, END = "<!-- results:start -->", "<!-- results:end -->"

#: Published averages (FlexLog paper): ADFA-U and SynHDFS-U, limited data for FlexLog.
PUBLISHED = {
    "adfa-u": {
        "FlexLog (Mistral Small 22B + KNN, DT, SLFN)": 0.704,
        "FlexLog without retrieval": 0.660,
        "ML only: KNN + DT + SLFN, majority": 0.664,
        "LLM alone": 0.612,
        "LightAD (full data)": 0.677,
        "CNN (full data)": 0.685,
    },
    "synhdfs-u": {
        "FlexLog": 0.971,
        "ML only: KNN + DT + SLFN, majority": 0.939,
        "LLM alone": 0.928,
        "LightAD (full data)": 0.959,
        "CNN (full data)": 0.942,
    },
}
#: Our row that measures the same thing as a published one (same voters, same rule).
SAME_AS_PUBLISHED = {"knn+dt+slfn (majority)": "ML only: KNN + DT + SLFN, majority"}
REFERENCE = "knn+dt+slfn (majority)"
PAPER_ADFA = {
    "test_normal_ratio": None,
    "per_class": 500,
    "dedup": True,
    "normal_train_fraction": 0.8,
}


def load_runs(runs: Path) -> list[dict]:
    """Every experiment report under ``runs`` (sorted by path), each with its ``path``."""
    out = []
    for path in sorted(runs.rglob("results.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "summary" in data and "kind" in data:
            out.append({**data, "path": str(path.parent)})
    return out


def row_name(model: str, run: dict) -> str:
    """``knn`` for a voter alone; ``knn+dt+slfn (stacked)`` for an ensemble under a rule."""
    rules = run.get("rules") or ["majority"]
    voters = "+".join(run["voters"])
    if model == "ensemble":
        return f"{voters} ({rules[0]})"
    if model.startswith("ensemble:"):
        return f"{voters} ({model.split(':', 1)[1]})"
    if model.startswith("ensemble+"):
        return f"{voters}+{model.split('+', 1)[1]} ({rules[0]})"
    return model


def _rows(runs: Sequence[dict]) -> dict[str, dict]:
    """Row name → {"variants": {v: stat}, "average": stat}, first run wins on duplicates."""
    rows: dict[str, dict] = {}
    for run in runs:
        summary = run["summary"]
        for model in summary["models"]:
            name = row_name(model, run)
            if name in rows:
                continue
            rows[name] = {
                "variants": {v: r[model] for v, r in summary["variants"].items()},
                "average": summary["average"][model],
            }
    return rows


def _mwu(rows: dict, name: str) -> str:
    if REFERENCE not in rows or name == REFERENCE:
        return ""
    return _p_a12(rows[name]["average"]["f1"], rows[REFERENCE]["average"]["f1"])


def _p_a12(a: Sequence[float], b: Sequence[float]) -> str:
    """Mann-Whitney p and A12 of per-seed F1s, as the tables print them ("" unless paired)."""
    if len(a) != len(b) or not a:
        return ""
    test = mann_whitney(a, b)
    return f"{test['p']:.3f} ({test['a12']:.2f})"


def results_table(kind: str, runs: Sequence[dict], *, published: bool) -> list[str]:
    rows = _rows(runs)
    variants = list(next(iter(rows.values()))["variants"])
    head = ["model", *map(str, variants), "average"]
    if published:
        head.append("published")
    head.append(f"MWU p (A12) vs {REFERENCE}")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    best = max(rows, key=lambda n: rows[n]["average"]["mean"])
    for name, row in rows.items():
        avg = mean_std(row["average"])
        cells = [
            f"**{name}**" if name == best else name,
            *(mean_std(row["variants"][v]) for v in variants),
            f"**{avg}**" if name == best else avg,
        ]
        if published:
            pub = PUBLISHED.get(kind, {}).get(SAME_AS_PUBLISHED.get(name, ""))
            cells.append(f"{pub:.3f}" if pub is not None else "")
        cells.append(_mwu(rows, name))
        lines.append("| " + " | ".join(cells) + " |")
    for run in runs:
        share = run["summary"].get("asked_share")
        if share:
            asked = ", ".join(f"{n} {100 * v:.0f} %" for n, v in share.items())
            lines += [
                "",
                f"Short-circuit voting, {row_name('ensemble', run)}: share of the distinct test "
                f"sequences each voter was asked about, cheapest first: {asked}.",
            ]
    return lines


def _plot_bars(rows: dict, names: Sequence[str], path: Path, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [*next(iter(rows.values()))["variants"], "average"]
    x = np.arange(len(variants))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(variants)), 5.0))
    for i, n in enumerate(names):
        stats = [*rows[n]["variants"].values(), rows[n]["average"]]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            [s["mean"] for s in stats],
            width,
            yerr=[s["std"] for s in stats],
            capsize=2,
            label=n,
        )
    ax.set_xticks(x, [str(v) for v in variants], rotation=15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(names))
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lines(series: dict[str, list[tuple[float, dict]]], path: Path, title: str, xlabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        xs = [p[0] for p in points]
        ax.errorbar(
            xs,
            [p[1]["mean"] for p in points],
            yerr=[p[1]["std"] for p in points],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("average F1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measured_with(runs: Sequence[dict]) -> list[str]:
    """The machine and library versions the records say they were measured with (this
    machine for records that predate them); where records differ, every value is given."""
    machines = list(dict.fromkeys(describe(r["machine"]) for r in runs if r.get("machine")))
    lines = [f"Machine: {'; '.join(machines or [describe()])}."]
    found: dict[str, list[str]] = {}
    recorded = [r for r in runs if r.get("versions")]
    for r in recorded:
        for name, v in r["versions"].items():
            found.setdefault(name, [])
            if v not in found[name]:
                found[name].append(v)
    if found:
        libs = ", ".join(f"{n} {' / '.join(v)}" for n, v in found.items())
        which = (
            ""
            if len(recorded) == len(runs)
            else f" (as recorded by {len(recorded)} of the {len(runs)} records; the others "
            "predate recording them)"
        )
        lines.append(f"Libraries{which}: {libs}.")
    return lines


def _focus(rows: dict) -> list[str]:
    """The rows worth plotting: the paper's ML vote, and each run's best ensemble."""
    ensembles = [n for n in rows if "(" in n]
    best = sorted(ensembles, key=lambda n: -rows[n]["average"]["mean"])[:3]
    return [n for n in dict.fromkeys([REFERENCE, *best]) if n in rows]


def build_report(runs_dir: Path, out_dir: Path, link_base: Path | None = None) -> str:
    """Write the plots into ``out_dir`` and return the Markdown of every section, with the
    plots linked relative to ``link_base`` (the folder of the file the Markdown goes into;
    default ``out_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(runs_dir)
    rel = Path(os.path.relpath(out_dir.resolve(), (link_base or out_dir).resolve())).as_posix()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    md = [
        f"Generated by `make report` from `{runs_dir}` on {now}.",
        *measured_with(runs),
        "F1 of the anomalous class, mean ± std over seeds; Mann-Whitney U (two-sided) on the "
        f"per-seed averages against {REFERENCE} (A12 = P(row > reference)).",
        "",
    ]

    def adfa(run: dict) -> dict:
        return {**PAPER_ADFA, **(run.get("adfa") or {})}

    paper = [r for r in runs if r["kind"] == "adfa-u" and adfa(r) == PAPER_ADFA]
    if paper:
        rows = _rows(paper)
        seeds = paper[0]["seeds"]
        md += [
            f"### ADFA-U, the paper's protocol ({len(seeds)} seeds)",
            "",
            "80 % of the normal traces and five attack types train (limited set: 500 + 500 "
            "drawn with replacement), every other normal trace and the sixth type test, "
            "de-duplicated.",
            "",
            *results_table("adfa-u", paper, published=True),
            "",
            "Published on the same protocol: "
            + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED["adfa-u"].items())
            + ".",
            "",
        ]
        _plot_bars(
            rows, _focus(rows), out_dir / "adfa-u.png", "ADFA-U (paper protocol)", "held-out"
        )
        md += [f"![F1 per held-out attack type]({rel}/adfa-u.png)", ""]
    syn = [r for r in runs if r["kind"] == "synhdfs-u"]
    if syn:
        rows = _rows(syn)
        md += [
            f"### SynHDFS-U ({len(syn[0]['seeds'])} seeds): the paper's method on the offline "
            "DeepLog sessions (10 % anomalies; see ULAD protocols), so published figures "
            "are not beside ours",
            "",
            *results_table("synhdfs-u", syn, published=False),
            "",
            "Published on HDFS v1 (other data): "
            + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED["synhdfs-u"].items())
            + ".",
            "",
        ]
        series = {n: [(float(v), s) for v, s in rows[n]["variants"].items()] for n in _focus(rows)}
        _plot_lines(series, out_dir / "synhdfs-u.png", "SynHDFS-U", "instability ratio")
        md += [f"![F1 against the instability ratio]({rel}/synhdfs-u.png)", ""]
    sized = [
        r
        for r in runs
        if r["kind"] == "adfa-u" and adfa(r) == {**PAPER_ADFA, "per_class": adfa(r)["per_class"]}
    ]
    sizes = sorted({adfa(r)["per_class"] for r in sized})
    if len(sizes) > 1:
        series: dict[str, list] = {}
        for r in sized:
            rows = _rows([r])
            for n in rows:
                if "(" in n:
                    series.setdefault(n, []).append((2 * adfa(r)["per_class"], rows[n]["average"]))
        series = {n: p for n, p in series.items() if len(p) > 1}
        md += [
            "### ADFA-U by training-set size (the paper's RQ2; paper protocol otherwise)",
            "",
            "| model | " + " | ".join(str(2 * s) for s in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for n, points in series.items():
            by = {x: s for x, s in points}
            md.append(
                f"| {n} | "
                + " | ".join(mean_std(by[2 * s]) if 2 * s in by else "" for s in sizes)
                + " |"
            )
        _plot_lines(series, out_dir / "training-size.png", "ADFA-U", "training samples")
        md += ["", f"![F1 against the training-set size]({rel}/training-size.png)", ""]
    nodedup = [
        r for r in runs if r["kind"] == "adfa-u" and adfa(r) == {**PAPER_ADFA, "dedup": False}
    ]
    if nodedup and paper:
        with_rows, without_rows = _rows(paper), _rows(nodedup)
        md += [
            "### ADFA-U with and without de-duplication (the paper's RQ)",
            "",
            "| model | de-duplicated (paper) | not de-duplicated |",
            "|---|---:|---:|",
        ]
        for n, row in without_rows.items():
            if n in with_rows and "(" in n:
                md.append(
                    f"| {n} | {mean_std(with_rows[n]['average'])} | {mean_std(row['average'])} |"
                )
        md.append("")
    for kind in ("llm-adfa-u", "llm-synhdfs-u"):
        for r in (r for r in runs if r["kind"] == kind):
            md += llm_section(r)
    return "\n".join(md).rstrip() + "\n"


#: The LLM experiment's rows, with the published figure each is measured like.
LLM_ROWS = {
    "llm": ("LLM alone", "LLM alone"),
    "llm-no-rag": ("LLM alone without retrieval", None),
    "flexlog": ("FlexLog: KNN + DT + SLFN + LLM, majority", "FlexLog"),
    "flexlog-no-rag": ("FlexLog without retrieval", "FlexLog without retrieval"),
    "ml-ensemble": ("ML only: KNN + DT + SLFN, majority", "ML only: KNN + DT + SLFN, majority"),
    "default": ("flexlog default: KNN + DT + SLFN + ET, majority", None),
    "default+llm": ("flexlog default + LLM, majority", None),
    "ml:weighted": ("KNN + DT + SLFN, weighted (fitted)", None),
    "ml:stacked": ("KNN + DT + SLFN, stacked (fitted)", None),
    "flexlog:weighted": ("KNN + DT + SLFN + LLM, weighted (fitted without the LLM)", None),
    "flexlog:stacked": ("KNN + DT + SLFN + LLM, stacked (fitted without the LLM)", None),
    "flag-all": ("flagging every sequence (the floor)", None),
}


def _published(dataset: str, name: str | None) -> float | None:
    """The published figure of a row (the paper's FlexLog row is named by its model)."""
    if name is None:
        return None
    table = PUBLISHED[dataset]
    if name == "FlexLog":
        return next(v for k, v in table.items() if k.startswith("FlexLog") and "without" not in k)
    return table.get(name)


def llm_section(run: dict) -> list[str]:
    """The LLM voter's rows. On ADFA-U the published figures (0.612 / 0.704 / 0.660 / 0.664)
    stand beside them when every holdout was run (the published figures average all six); on
    SynHDFS-U, built from other HDFS data than the paper's, they are listed below instead."""
    dataset = run["kind"].removeprefix("llm-")
    s = run["summary"]
    ran = run.get("variants", run.get("holdouts", []))
    if dataset == "adfa-u":
        from flexlog.data.adfa import ATTACK_TYPES

        every = [str(v) for v in ATTACK_TYPES]
        name, parts = "ADFA-U, paper protocol", "holdouts"
    else:
        every = [f"{v:g}" for v in SYNHDFS_RATIOS]
        name, parts = "SynHDFS-U, the offline DeepLog sessions (see ULAD protocols)", "ratios"
    complete = sorted(ran) == sorted(every)
    beside = complete and dataset == "adfa-u"
    if complete:
        scope = f"all {len(every)} {parts}"
    else:
        scope = f"{parts} {', '.join(ran)} only"
        if dataset == "adfa-u":
            scope += ", so no published figure (they average all six) stands beside these"
    lines = [
        f"### The LLM voter on {name}: {run['model']}, {run['steps']} fine-tuning steps, "
        f"seeds {run['seeds']}, {scope}",
        "",
        "| model | average F1 | published (Mistral Small 22B) | share of test sequences asked "
        "| MWU p vs ML only (A12) |",
        "|---|---:|---:|---:|---:|",
    ]
    reference = s["average"].get("ml-ensemble")
    seeds = list(run.get("seeds", []))
    one_seed = len(seeds) == 1
    backends = s.get("llm_backends", {})
    partial = []  # LLM-alone rows on fewer test sequences than the ensembles
    for key, stat in s["average"].items():
        label, published = LLM_ROWS.get(key, (key, None))
        pub = _published(dataset, published) if beside else None
        own = stat.get("seeds", seeds)
        alone = key in ("llm", "llm-no-rag")
        subset = alone and stat.get(
            "subset", s.get("llm_alone_sequences", 0) < s.get("test_sequences", 0)
        )
        notes = []
        if subset:
            notes.append("on a subset of the test sets")
            partial.append((LLM_ROWS.get(key, (key, None))[0], stat))
            pub = None
        if own != seeds:
            notes.append(f"seeds {', '.join(map(str, own))}")
        if backends.get(key, [DEFAULT_LLM_BACKEND]) != [DEFAULT_LLM_BACKEND]:
            notes.append(f"{' and '.join(backends[key])} backend")
        if notes:
            label = f"{label} ({'; '.join(notes)})"
        share = s.get("llm_asked_share", {}).get(key)
        value = f"{stat['mean']:.3f}" if one_seed else mean_std(stat)
        test = ""
        if reference and key not in ("ml-ensemble", "flag-all") and not subset:
            ref_seeds = reference.get("seeds", seeds)
            by_seed = dict(zip(ref_seeds, reference["f1"], strict=True))
            if all(x in by_seed for x in own):
                test = _p_a12(stat["f1"], [by_seed[x] for x in own])
        lines.append(
            f"| {label} | {value} | {'' if pub is None else f'{pub:.3f}'} "
            f"| {'' if share is None else f'{100 * share:.0f} %'} | {test} |"
        )
    sizes: dict[tuple, list[str]] = {}
    for label, stat in partial:
        scored = stat.get("scored", s.get("llm_alone_sequences"))
        total = stat.get("test_sequences", s.get("test_sequences"))
        sizes.setdefault((scored, total), []).append(label)
    for (scored, total), labels in sizes.items():
        lines += [
            "",
            f"{' and '.join(labels)}: scored on {scored} of the {total} test sequences (half "
            "anomalies where possible), so not on the paper's full test sets; the ensembles "
            "are, asking the LLM where short-circuit voting needs it.",
        ]
    others = sorted({b for used in backends.values() for b in used} - {DEFAULT_LLM_BACKEND})
    if others:
        agreement = "; ".join(
            f"{pair}: {100 * a['agreement']:.1f} % of {a['sequences']} sequences answered by "
            f"both ({a['configurations']} configurations)"
            for pair, a in s.get("llm_agreement", {}).items()
        )
        lines += [
            "",
            f"Rows marked with a backend were scored by {', '.join(others)} instead of "
            f"{DEFAULT_LLM_BACKEND} (float32), with the same adapters and calibrated "
            "thresholds (vllm: in-process engine, adapter merged into the weights, bfloat16 on "
            "this CPU). The two do not compute the same margin: transformers sums each "
            "label's log-probability over its tokens, vLLM reads the first answer token's "
            "alternatives (the probability mass of the tokens that begin each label), and the "
            "threshold was calibrated on the former. Where both answered the same sequences "
            f"their labels agreed: {agreement or 'not measured'}.",
        ]
    if dataset != "adfa-u":
        lines += [
            "",
            "Published on HDFS v1 (other data, so not beside ours): "
            + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED[dataset].items())
            + ".",
        ]
    return [*lines, ""]


def update_readme(readme: Path, markdown: str) -> None:
    """Replace the README's results between the markers (which must be there)."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no {START} … {END} markers to put the results between")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{markdown}{END}{tail}", encoding="utf-8")


__all__ = ["build_report", "load_runs", "measured_with", "update_readme"]
