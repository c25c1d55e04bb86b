"""The ``flexlog`` command line. Command names and flags are a public contract."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm.auto import tqdm

from flexlog import __version__
from flexlog.data.records import (
    IngestReport,
    InputError,
    LogSequence,
    iter_jsonl,
    read_jsonl,
)
from flexlog.vote_rules import RULES
from flexlog.voters.registry import DEFAULT_RULE


def _datasets_dir() -> Path:
    """Where the public datasets live: $FLEXLOG_DATASETS, else ../shared/datasets beside the
    working directory or beside the source checkout."""
    if env := os.environ.get("FLEXLOG_DATASETS"):
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return Path("../shared/datasets")


DATASETS = _datasets_dir()
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


class CliError(Exception):
    """An error to print as one line and exit with status 2."""


def _default_source(*parts: str) -> Path:
    return DATASETS.joinpath(*parts)


def _print_report(report: IngestReport, *, limit: int = 20) -> None:
    err.print(f"[bold]input:[/] {report.summary()}")
    for rej in report.rejections[:limit]:
        err.print(f"  rejected {escape(str(rej))}", soft_wrap=True)
    if report.rejected > limit:
        err.print(f"  ... and {report.rejected - limit} more rejected")


def _write_rejections(path: Path, report: IngestReport) -> Path | None:
    rpath = path.with_name(path.name + ".rejected.jsonl")
    if not report.rejections:
        rpath.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return None
    with rpath.open("w", encoding="utf-8") as fh:
        for rej in report.rejections:
            fh.write(json.dumps(rej.to_json()) + "\n")
    return rpath


def _metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """Precision, recall, F1 and counts per model; a voter asked about fewer sequences than the
    ensemble answered (short-circuit voting) says how many."""
    total = next(iter(rows.values()), {}).get("n")
    table = Table(title=title)
    for col in ("model", "precision", "recall", "F1", "TP", "FP", "FN", "TN"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in rows.items():
        table.add_row(
            name if m.get("asked", total) == total else f"{name} (asked {m['asked']})",
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"[bold]{m['f1']:.3f}[/]",
            *(str(m[k]) for k in ("tp", "fp", "fn", "tn")),
        )
    return table


# -- dataset -------------------------------------------------------------------------------
def cmd_dataset_build(args: argparse.Namespace) -> int:
    from flexlog.data import ulad
    from flexlog.data.adfa import load_adfa
    from flexlog.data.hdfs import load_hdfs_sessions
    from flexlog.data.templates import read_templates

    if args.kind == "adfa-u":
        if not args.holdout:
            raise CliError("adfa-u needs --holdout")
        corpus = load_adfa(args.source or _default_source("adfa-ld"))
        if corpus.report.rejected:
            _print_report(corpus.report)
        ratio = None if args.test_normal_ratio == "all" else float(args.test_normal_ratio)
        ds = ulad.build_adfa_u(
            corpus,
            args.holdout,
            seed=args.seed,
            normal_train_fraction=args.normal_train_fraction,
            test_normal_ratio=ratio,
            per_class=args.per_class,
        )
    else:
        if args.ratio is None:
            raise CliError(f"{args.kind} needs --ratio")
        src = Path(args.source or _default_source("hdfs"))
        report = IngestReport()
        normal = load_hdfs_sessions(src / "hdfs_train", 0, report)
        abnormal = load_hdfs_sessions(src / "hdfs_test_abnormal", 1, report)
        templates = read_templates(src / "HDFS_templates.csv")
        if report.rejected:
            _print_report(report)
        kw = dict(
            seed=args.seed,
            train_fraction=args.train_fraction,
            anomaly_rate=args.anomaly_rate,
            normal_fraction=args.normal_fraction,
        )
        if args.kind == "synhdfs-u":
            ds = ulad.build_synhdfs_u(normal, abnormal, args.ratio, templates=templates, **kw)
        else:
            ds = ulad.build_template_evolution(normal, abnormal, templates, args.ratio, **kw)
    paths = ds.write(args.out)
    info = ds.info
    table = Table(title=f"{ds.name} (seed {args.seed})")
    for col in ("split", "normal", "anomalous", "total"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "limited_train", "test"):
        c = info[split]
        table.add_row(split, str(c["normal"]), str(c["anomalous"]), str(c["total"]))
    out.print(table)
    out.print(
        f"duplication ratio (test sequences also in train, removed): {info['duplication_ratio']:.3f}"
    )
    if isinstance(info.get("protocol"), str):
        out.print(f"protocol: {info['protocol']}")
    out.print(f"written to {Path(args.out)}: " + ", ".join(p.name for p in paths.values()))
    return 0


# -- train ---------------------------------------------------------------------------------
def _parse_params(specs: list[str], voters: list[str]) -> dict[str, dict]:
    """``--param knn.scaling=log1p`` → {"knn": {"scaling": "log1p"}} (values parsed as JSON)."""
    params: dict[str, dict] = {v: {} for v in voters}
    for spec in specs:
        key, sep, value = spec.partition("=")
        voter, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise CliError(f"--param {spec!r}: expected VOTER.NAME=VALUE")
        if voter not in params:
            raise CliError(f"--param {spec!r}: voter {voter!r} is not among {voters}")
        try:
            params[voter][name] = json.loads(value)
        except json.JSONDecodeError:
            params[voter][name] = value
    return params


def cmd_train(args: argparse.Namespace) -> int:
    from flexlog.bundle import save_bundle, sha256_file
    from flexlog.data.templates import read_templates
    from flexlog.training import check_anomaly_rate, train_detector
    from flexlog.vote_rules import parse_weights
    from flexlog.voters.registry import parse_voter_list

    voters = parse_voter_list(args.voters)
    params = _parse_params(args.param, voters)
    try:
        weights = parse_weights(args.weights) if args.weights else None
    except ValueError as exc:
        raise CliError(f"--weights: {exc}") from exc
    try:
        rate = None if args.anomaly_rate is None else check_anomaly_rate(args.anomaly_rate)
    except ValueError as exc:
        raise CliError(f"--anomaly-rate: {exc}") from exc
    if weights is not None and args.rule != "weighted":
        raise CliError("--weights: only the weighted rule takes weights (--rule weighted)")
    train_path = Path(args.train)
    seqs, report = read_jsonl(train_path, require_label=True)
    if report.rejected:
        _print_report(report)
    if not seqs:
        raise CliError(f"{train_path}: no usable training sequences ({report.summary()})")
    templates = read_templates(args.templates) if args.templates else None
    err.print(
        f"training {', '.join(voters)} ({args.rule} vote) on {len(seqs)} sequences "
        f"from {train_path}"
    )
    detector, training = train_detector(
        seqs,
        voters,
        params=params,
        seed=args.seed,
        rule=args.rule,
        anomaly_rate=rate,
        weights=weights,
        templates=templates,
        progress=True,
    )
    if "fallback" in training:
        err.print(f"[yellow]{escape(training['fallback'])}[/]")
    elif "validation" in training:
        err.print(
            f"vote rule {training['rule']} fitted on {training['validation']['scheme']}, for "
            f"an anomaly rate of {training['anomaly_rate']:.3f} "
            f"({training['anomaly_rate_from']})"
        )
    data = {
        "train": {
            "path": str(train_path),
            "sha256": sha256_file(train_path),
            "sequences": len(seqs),
            "anomalous": sum(s.label == 1 for s in seqs),
            "rejected": report.rejected,
        }
    }
    if args.templates:
        data["templates"] = {
            "path": str(args.templates),
            "sha256": sha256_file(Path(args.templates)),
        }
    config = {
        "voters": voters,
        "params": params,
        "seed": args.seed,
        "rule": args.rule,
        "training": training,
    }
    metrics = {}
    if args.eval:
        metrics = _evaluate(detector, Path(args.eval), templates)["scores"]
    path = save_bundle(
        detector,
        args.out,
        config=config,
        data=data,
        metrics=metrics,
        templates=templates,
        overwrite=args.force,
    )
    if metrics:
        out.print(_metrics_table(f"held-out metrics ({args.eval})", metrics))
    out.print(f"bundle written to {path}")
    return 0


# -- score ---------------------------------------------------------------------------------
def _raw_sequences(
    paths: list[Path], preset: str, args: argparse.Namespace, report: IngestReport, parser=None
):
    """Parse raw log files into sequences. Returns the sequences and the parser (whose
    ``templates()`` give the events' texts). Every line ends up accepted (in a sequence) or
    rejected in ``report``."""
    from flexlog.parsing import TemplateParser, partition, read_log_lines

    files = [(p, list(read_log_lines(p, report))) for p in paths]
    if parser is None:
        parser = TemplateParser(preset)
        parser.fit(line for _, lines in files for line in lines)
    kw: dict = {}
    if args.partition == "session":
        kw["pattern"] = args.session_pattern
    else:
        kw["size"] = args.window
        if args.partition == "sliding":
            kw["step"] = args.step
    seqs: list[LogSequence] = []
    for path, lines in files:
        parsed = parser.parse(lines, source=str(path), report=report)
        stage = IngestReport()
        seqs.extend(partition(parsed, args.partition, report=stage, source=str(path), **kw))
        for rejection in stage.rejections:
            report.reject_accepted(rejection)
    return seqs, parser


def _open_cache(args: argparse.Namespace, bundle_path: Path):
    if getattr(args, "no_cache", False):
        return None
    from flexlog.cache import SequenceCache

    # `evaluate --cache` is a flag (the bundle's own cache); `score --cache` is a path
    path = Path(args.cache) if isinstance(args.cache, str) else bundle_path / "cache.sqlite"
    return SequenceCache(path)


def _load_with_cache(bundle_path: Path, open_cache):
    """The bundle with its detector built around the cache ``open_cache()`` returns, which
    is opened once the bundle is known to be one (and closed if loading fails)."""
    from flexlog.bundle import load_bundle, read_manifest

    read_manifest(bundle_path)
    cache = open_cache()
    try:
        return load_bundle(bundle_path, cache=cache)
    except BaseException:
        if cache is not None:
            cache.close()
        raise


def _aligned(bundle, seqs: list[LogSequence], templates: dict[str, str] | None):
    """Map events unknown to the bundle onto its closest known templates, if both sides
    have template texts. Returns the sequences and how many keys were remapped."""
    if not bundle.templates or not templates:
        return seqs, 0
    from flexlog.alignment import TemplateAligner, align_sequences

    mapping = TemplateAligner(bundle.templates).mapping(templates)
    return align_sequences(seqs, mapping), len(mapping)


def _has_slow_voters(ensemble) -> bool:
    """Whether some voter costs a model call or a network per sequence: then long runs show
    progress however few sequences there are."""
    from flexlog.ensemble import voter_cost

    return max(voter_cost(v) for _, v in ensemble.voters) >= 100


def cmd_score(args: argparse.Namespace) -> int:
    from flexlog.data.templates import read_templates

    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(bundle_path, lambda: _open_cache(args, bundle_path))
    report = IngestReport()
    inputs = [Path(p) for p in args.input]
    if args.format == "jsonl":
        templates = read_templates(args.templates) if args.templates else None
        seqs = [s for p in inputs for s in iter_jsonl(p, report)]
    else:
        from flexlog.parsing import TemplateParser

        saved = bundle.parser_state and TemplateParser.from_dict(bundle.parser_state)
        seqs, parser = _raw_sequences(inputs, args.format, args, report, saved or None)
        templates = parser.templates()
    seqs, remapped = _aligned(bundle, seqs, templates)
    if remapped:
        err.print(f"{remapped} unseen templates mapped to their closest known template")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    anomalous = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for verdict in tqdm(
            bundle.detector.predict_stream(seqs, batch_size=args.batch_size),
            total=len(seqs),
            desc="scoring",
            unit="seq",
            disable=len(seqs) < 1000 and not _has_slow_voters(bundle.detector.ensemble),
        ):
            fh.write(json.dumps(verdict.to_json(), separators=(",", ":")) + "\n")
            anomalous += verdict.label
    unit = "sequences" if args.format == "jsonl" else "log lines"
    err.print(
        f"[bold]scored:[/] {len(seqs)} sequences answered ({anomalous} anomalous) → {escape(str(out_path))}; "
        f"{unit}: {report.read} read = {report.accepted} accepted + {report.rejected} rejected"
    )
    if report.rejected:
        _print_report(report)
        rpath = _write_rejections(out_path, report)
        err.print(f"rejections written to {rpath}")
    else:
        _write_rejections(out_path, report)
    stats = bundle.detector.stats
    share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in bundle.detector.asked_share().items())
    err.print(
        f"cache hits {stats.cache_hits}, voted {stats.voted} distinct sequences"
        + (f"; asked per voter: {share}" if share else "")
    )
    if bundle.detector.cache is not None:
        bundle.detector.cache.close()
    return 0


# -- evaluate ------------------------------------------------------------------------------
def _evaluate(
    detector, test_path: Path, templates=None, bundle=None, *, all_votes: bool = False
) -> dict:
    """Scores of the ensemble and of each voter on a labelled file. Voting short-circuits
    (each voter's scores are on the sequences it was asked about, ``asked`` of them) unless
    ``all_votes``; long runs show progress (sequences done, rate, ETA)."""
    from flexlog.detector import Detector
    from flexlog.evaluate import scores as score

    seqs, report = read_jsonl(test_path, require_label=True)
    if not seqs:
        raise CliError(f"{test_path}: no usable labelled sequences ({report.summary()})")
    if bundle is not None:
        seqs, _ = _aligned(bundle, seqs, templates)
    voting = Detector(detector.ensemble, short_circuit=not all_votes)
    slow = _has_slow_voters(voting.ensemble)
    batch = 64 if slow else 4096
    verdicts = []
    quiet = len(seqs) < 1000 and not slow
    with tqdm(total=len(seqs), desc="evaluating", unit="seq", disable=quiet) as bar:
        for start in range(0, len(seqs), batch):
            part = seqs[start : start + batch]
            verdicts.extend(voting.vote(part))
            bar.update(len(part))
    y = [s.label for s in seqs]
    result = {"ensemble": score(y, [v.label for v in verdicts])}
    for name in voting.voter_names:
        asked = [
            (s.label, v.votes[name]) for s, v in zip(seqs, verdicts, strict=True) if name in v.votes
        ]
        if asked:
            result[name] = {**score(*zip(*asked, strict=True)), "asked": len(asked)}
    if detector.cache is not None:  # what the service would answer, human corrections included
        result["with_cache"] = score(y, [v.label for v in detector.predict(seqs)])
    return {"scores": result, "report": report, "asked_share": voting.asked_share()}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flexlog.data.templates import read_templates

    bundle_path = Path(args.bundle)
    bundle = _load_with_cache(
        bundle_path, lambda: _open_cache(args, bundle_path) if args.cache else None
    )
    templates = read_templates(args.templates) if args.templates else None
    try:
        res = _evaluate(
            bundle.detector, Path(args.test), templates, bundle, all_votes=args.all_votes
        )
    finally:
        if bundle.detector.cache is not None:
            bundle.detector.cache.close()
    scores, report = res["scores"], res["report"]
    if args.json:
        ens = scores["ensemble"]
        voters = {k: v for k, v in scores.items() if k not in ("ensemble", "with_cache")}
        payload = {**ens, "voters": voters}
        if "with_cache" in scores:
            payload["with_cache"] = scores["with_cache"]
        payload["asked_share"] = res["asked_share"]
        payload["input"] = {
            "read": report.read,
            "accepted": report.accepted,
            "rejected": report.rejected,
        }
        print(json.dumps(payload, indent=None))
    else:
        if report.rejected:
            _print_report(report)
        out.print(_metrics_table(f"{args.test} ({report.accepted} sequences)", scores))
        share = ", ".join(f"{n} {100 * v:.0f} %" for n, v in res["asked_share"].items())
        out.print(
            f"rule {bundle.detector.ensemble.rule.name}; distinct sequences asked per voter: "
            f"{share}" + ("" if args.all_votes else " (short-circuit voting; --all-votes asks all)")
        )
    return 0


# -- cache ---------------------------------------------------------------------------------
def _cache_target(args: argparse.Namespace):
    from flexlog.cache import SequenceCache

    if args.cache:
        return SequenceCache(Path(args.cache))
    if args.bundle:
        bundle = Path(args.bundle)
        if not (bundle / "manifest.json").is_file():  # a typo must not create a directory
            raise CliError(f"{bundle}: not a flexlog bundle (no manifest.json)")
        return SequenceCache(bundle / "cache.sqlite")
    raise CliError("give --bundle or --cache")


def _cache_key(args: argparse.Namespace):
    if sum(bool(x) for x in (args.events, args.key, args.target)) != 1:
        raise CliError("give exactly one of --events or --key (or the KEY argument)")
    if args.events:
        events = tuple(args.events.replace(",", " ").split())
        if not events:
            raise CliError("--events is empty")
        return events
    return args.key or args.target


def _cli_actor() -> str:
    """Who corrects the cache from this command line: ``cli:<login name>``, else ``cli``."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no password entry
        return "cli"
    user = user.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return f"cli:{user}"[:200] if user.strip() else "cli"


def _cache_label(label: int | None, source: str | None) -> str:
    if label is None:
        return "-"
    return f"{('normal', 'anomalous')[label]} ({source})"


def _print_history(key: str, corrections: list, as_json: bool) -> None:
    from datetime import datetime, timezone

    if as_json:
        print(json.dumps([c.to_dict() for c in corrections]))
        return
    if not corrections:
        out.print(f"no corrections recorded for {key}")
        return
    table = Table(title=f"corrections of {key}")
    for name in ("id", "time (UTC)", "actor", "action", "previous", "new", "comment"):
        table.add_column(name, justify="right" if name == "id" else "left")
    for c in corrections:
        when = datetime.fromtimestamp(c.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        action = f"undo #{c.undoes}" if c.action == "undo" else c.action
        table.add_row(
            str(c.id),
            when,
            escape(c.actor),
            action,
            _cache_label(c.previous_label, c.previous_source),
            _cache_label(c.new_label, c.new_source),
            escape(c.comment or ""),
        )
    out.print(table)


def cmd_cache(args: argparse.Namespace) -> int:
    from flexlog.cache import CacheError

    try:
        return _cache_action(args)
    except CacheError as exc:  # locked or read-only database: one line, not a traceback
        raise CliError(str(exc)) from exc


def _cache_action(args: argparse.Namespace) -> int:
    from flexlog.data.records import parse_label

    if args.action == "stats" and args.target:
        raise CliError("cache stats takes no KEY")
    with _cache_target(args) as cache:
        if args.action == "stats":
            stats = cache.stats()
            if args.json:
                print(json.dumps(stats))
            else:
                table = Table(title="sequence cache")
                table.add_column("statistic")
                table.add_column("value", justify="right")
                for k, v in stats.items():
                    table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
                out.print(table)
        elif args.action == "update":
            if args.label is None:
                raise CliError("cache update needs --label normal|anomalous")
            try:
                label = parse_label(args.label)
            except ValueError as exc:
                raise CliError(str(exc)) from exc
            try:
                entry = cache.update(
                    _cache_key(args), label, actor=_cli_actor(), comment=args.comment
                )
            except KeyError as exc:
                raise CliError(exc.args[0] if exc.args else "no such cache entry") from exc
            out.print(f"label of {entry.key} set to {('normal', 'anomalous')[entry.label]} (human)")
        elif args.action == "delete":
            key = _cache_key(args)
            if cache.delete(key, actor=_cli_actor(), comment=args.comment):
                out.print("deleted")
            else:
                raise CliError("no such cache entry")
        elif args.action == "history":
            key = _cache_key(args)
            corrections = cache.history(key)
            _print_history(corrections[0].key if corrections else str(key), corrections, args.json)
        elif args.action == "undo":
            key = _cache_key(args)
            try:
                entry = cache.undo(key, actor=_cli_actor(), comment=args.comment)
            except KeyError as exc:
                raise CliError(exc.args[0] if exc.args else "nothing to undo") from exc
            undo = cache.history(key)[-1]
            now = "no entry" if entry is None else _cache_label(entry.label, entry.source)
            if args.json:
                print(json.dumps(undo.to_dict()))
            else:
                out.print(f"undid correction #{undo.undoes} of {undo.key}: now {now}")
    return 0


# -- voters, parse, bench, experiment ---------------------------------------------------------
def cmd_voters(args: argparse.Namespace) -> int:
    from flexlog.voters.registry import VOTER_PRESETS, voter_class, voter_names

    table = Table(title="registered voters")
    table.add_column("name")
    table.add_column("class")
    for preset in VOTER_PRESETS:
        table.add_column(f"in '{preset}'", justify="center")
    for name in voter_names():
        try:
            cls = voter_class(name)
            where = f"{cls.__module__}.{cls.__qualname__}"
        except ValueError as exc:
            where = f"[dim]not importable here: {exc}[/dim]"
        marks = ["yes" if name in members else "" for members in VOTER_PRESETS.values()]
        table.add_row(name, where, *marks)
    out.print(table)
    presets = "; ".join(f"{k} = {','.join(v)}" for k, v in VOTER_PRESETS.items())
    out.print(
        f"presets for --voters: {presets} ('default' is what `flexlog train` uses, "
        f"with --rule {DEFAULT_RULE})"
    )
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from flexlog.data.records import write_jsonl
    from flexlog.data.templates import write_templates

    report = IngestReport()
    seqs, parser = _raw_sequences([Path(p) for p in args.input], args.preset, args, report)
    n = write_jsonl(args.out, seqs)
    if args.templates_out:
        write_templates(args.templates_out, parser.templates())
    _print_report(report)
    out.print(f"{n} sequences, {len(parser.templates())} templates → {args.out}")
    return 0


def cmd_parse_accuracy(args: argparse.Namespace) -> int:
    from flexlog.parsing.accuracy import grouping_report

    rows = grouping_report(Path(args.datasets))
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table(title="Drain3 grouping accuracy against loghub ground truth")
    columns = ("log", "preset", "lines", "templates (truth)", "templates (found)")
    for col in (*columns, "accuracy", "held-out"):
        table.add_column(col, justify="left" if col in ("log", "preset") else "right")
    for r in rows:
        table.add_row(
            r["log"],
            r["preset"],
            str(r["n_lines"]),
            str(r["n_templates_truth"]),
            str(r["n_templates_predicted"]),
            f"{r['accuracy']:.3f}",
            f"{r['heldout_accuracy']:.3f}",
        )
    out.print("held-out: fitted on the first half of each sample, scored on the second half")
    out.print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.llm:
        return _bench_llm(args)
    from flexlog.bench import run_bench

    sizes = [int(s) for s in args.sizes.split(",") if s]
    run_bench(sizes, out_dir=Path(args.out), datasets=Path(args.datasets), console=out)
    return 0


def _bench_llm(args: argparse.Namespace) -> int:
    try:
        from flexlog.llm.bench import run_llm_bench
    except ImportError as exc:
        raise CliError(f"the LLM bench needs the 'llm' extra of flexlog: {exc}") from exc
    backends = [b for b in args.llm.split(",") if b]
    try:
        run_llm_bench(
            backends,
            n=args.sequences,
            model=args.model,
            adapter=args.adapter,
            max_prompt_tokens=args.max_prompt_tokens,
            batch_size=args.batch_size,
            datasets=Path(args.datasets),
            out_dir=Path(args.out),
            console=out,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from flexlog.experiment import AdfaOptions, run_experiment
    from flexlog.voters.registry import parse_voter_list

    voters = parse_voter_list(args.voters)
    added = parse_voter_list(args.add) if args.add else []
    if set(added) & set(voters):
        raise CliError(f"--add repeats ensemble voters: {sorted(set(added) & set(voters))}")
    seeds = list(range(args.seeds))
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or not rules or len(set(rules)) != len(rules):
        raise CliError(
            f"--rules: a list of distinct rules from {', '.join(RULES)}, got {args.rules!r}"
        )
    try:
        run_experiment(
            args.kind,
            seeds=seeds,
            voters=voters,
            added=added,
            rules=rules,
            variants=args.variants.split(",") if args.variants else None,
            params=_parse_params(args.param, [*voters, *added]),
            datasets=Path(args.datasets),
            out_dir=Path(args.out),
            adfa=AdfaOptions(
                test_normal_ratio=None
                if args.test_normal_ratio == "all"
                else float(args.test_normal_ratio),
                per_class=args.per_class,
                dedup=not args.no_dedup,
                normal_train_fraction=args.normal_train_fraction,
            ),
            console=out,
            jobs=args.jobs,
            threads=args.threads,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flexlog.report import build_report, update_readme

    runs = Path(args.runs)
    if not runs.is_dir():
        raise CliError(f"{runs}: no such runs directory (run the experiments first)")
    out_dir = Path(args.out)
    (out_dir / "results.md").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(build_report(runs, out_dir), encoding="utf-8")
    if args.readme:
        readme = Path(args.readme)
        try:
            update_readme(readme, build_report(runs, out_dir, readme.parent))
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    out.print(
        f"report written to {args.out}/results.md" + (f" and {args.readme}" if args.readme else "")
    )
    return 0


# -- argument parsing ------------------------------------------------------------------------
def _add_partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--partition",
        choices=("session", "fixed", "sliding"),
        default="session",
        help="how raw lines become sequences (default: by session id)",
    )
    p.add_argument("--session-pattern", help="regex whose first match is a line's session id")
    p.add_argument("--window", type=int, default=20, help="window size for fixed/sliding")
    p.add_argument("--step", type=int, default=1, help="step of the sliding window")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flexlog", description="Anomaly detection on unstable logs (FlexLog method)."
    )
    ap.add_argument("--version", action="version", version=f"flexlog {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ds = sub.add_parser("dataset", help="build ULAD datasets").add_subparsers(
        dest="dataset_command", required=True, metavar="ACTION"
    )
    b = ds.add_parser("build", help="build a ULAD configuration as JSONL files")
    b.add_argument("kind", choices=("adfa-u", "synhdfs-u", "template-evolution"))
    b.add_argument("--holdout", choices=("adduser", "hydraFTP", "hydraSSH", "java", "meter", "web"))
    b.add_argument(
        "--ratio",
        type=float,
        help="share of test sequences changed (synhdfs-u, template-evolution)",
    )
    b.add_argument(
        "--source", help="dataset directory (default: ../shared/datasets/{adfa-ld,hdfs})"
    )
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--normal-train-fraction",
        type=float,
        default=0.8,
        help="adfa-u: share of normal traces that train (default 0.8, the paper's)",
    )
    b.add_argument(
        "--test-normal-ratio",
        default="all",
        help="adfa-u: 'all' remaining normal traces test (default, the paper's), or that many "
        "test normals per held-out attack trace (e.g. 1.0: balanced; not the paper's protocol)",
    )
    b.add_argument(
        "--per-class", type=int, default=500, help="adfa-u limited set: samples per class"
    )
    b.add_argument(
        "--train-fraction", type=float, default=0.5, help="hdfs: normal sessions to train"
    )
    b.add_argument(
        "--anomaly-rate", type=float, default=0.1, help="hdfs: anomalous share of each split"
    )
    b.add_argument(
        "--normal-fraction",
        type=float,
        default=0.2,
        help="hdfs limited set: share of unique normals",
    )
    b.set_defaults(func=cmd_dataset_build)

    t = sub.add_parser("train", help="train a detector and write a bundle")
    t.add_argument("--train", required=True, help="labelled canonical JSONL")
    t.add_argument("--templates", help="EventId,EventTemplate CSV of the events")
    t.add_argument(
        "--voters",
        default="default",
        help="comma-separated voter names or presets (default, ml, cpu: see `flexlog voters`)",
    )
    t.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VOTER.NAME=VALUE",
        help="voter hyper-parameter",
    )
    t.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help=f"how votes combine (default {DEFAULT_RULE}); majority is the paper's, weighted and "
        "stacked are fitted on inner validation that holds out one anomaly group at a time",
    )
    t.add_argument(
        "--weights", help="weighted rule: fixed voter weights, e.g. knn=1,dt=0.5 (not fitted)"
    )
    t.add_argument(
        "--anomaly-rate",
        help="share of anomalies expected in deployment, in (0, 1), that weighted and stacked "
        "rules are tuned for (default: the training set's; for a set drawn with replacement, "
        "that of the set it was drawn from, estimated from repeated ids)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval", help="labelled JSONL to evaluate on and record in the manifest")
    t.add_argument("--out", required=True, help="bundle directory")
    t.add_argument("--force", action="store_true", help="replace an existing bundle")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score sequences or raw logs with a bundle")
    s.add_argument("--bundle", required=True)
    s.add_argument("--input", required=True, action="append", help="input file (repeatable)")
    s.add_argument("--out", required=True, help="predictions JSONL, one line per input sequence")
    s.add_argument(
        "--format",
        default="jsonl",
        help="jsonl (canonical sequences) or a log preset for raw logs (hdfs, openssh, ...)",
    )
    s.add_argument("--templates", help="EventId,EventTemplate CSV for the input's events (jsonl)")
    _add_partition_args(s)
    s.add_argument("--cache", help="cache database (default: BUNDLE/cache.sqlite)")
    s.add_argument("--no-cache", action="store_true", help="answer every sequence with the voters")
    s.add_argument("--batch-size", type=int, default=4096)
    s.set_defaults(func=cmd_score)

    e = sub.add_parser("evaluate", help="precision / recall / F1 of a bundle on labelled data")
    e.add_argument("--bundle", required=True)
    e.add_argument("--test", required=True, help="labelled canonical JSONL")
    e.add_argument("--templates", help="EventId,EventTemplate CSV of the test events")
    e.add_argument("--cache", action="store_true", help="also report answers through the cache")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--all-votes",
        action="store_true",
        help="ask every voter about every sequence (per-voter scores on the whole file; the "
        "ensemble's labels are the same)",
    )
    e.set_defaults(func=cmd_evaluate, no_cache=False)

    c = sub.add_parser(
        "cache",
        help="inspect or correct the sequence cache",
        description="stats; update or delete an entry (a human correction, recorded); "
        "history of an entry's corrections; undo its latest correction not undone yet",
    )
    c.add_argument("action", choices=("stats", "update", "delete", "history", "undo"))
    c.add_argument(
        "target",
        nargs="?",
        metavar="KEY",
        help="the entry's hex key, right after the action (or --key KEY anywhere)",
    )
    c.add_argument("--bundle", help="use BUNDLE/cache.sqlite")
    c.add_argument("--cache", help="cache database path")
    c.add_argument("--events", help="the sequence, space- or comma-separated event keys")
    c.add_argument("--key", help="the entry's hex key")
    c.add_argument("--label", help="normal or anomalous (update)")
    c.add_argument("--comment", help="why (update, delete, undo); kept in the history")
    c.add_argument("--json", action="store_true", help="JSON output (stats, history, undo)")
    c.set_defaults(func=cmd_cache)

    v = sub.add_parser("voters", help="list the registered voters")
    v.set_defaults(func=cmd_voters)

    p = sub.add_parser("parse", help="parse raw logs into canonical sequences (Drain3)")
    p.add_argument("--preset", default="generic", help="log format and masking preset")
    p.add_argument("--input", required=True, action="append")
    p.add_argument("--out", required=True, help="canonical JSONL")
    p.add_argument("--templates-out", help="write the mined EventId,EventTemplate CSV")
    _add_partition_args(p)
    p.set_defaults(func=cmd_parse)

    pa = sub.add_parser("parse-accuracy", help="grouping accuracy of the presets on loghub samples")
    pa.add_argument("--datasets", default=str(DATASETS))
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_parse_accuracy)

    bn = sub.add_parser("bench", help="throughput of the ML path and the cache, or of the LLM")
    bn.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated batch sizes")
    bn.add_argument("--datasets", default=str(DATASETS))
    bn.add_argument("--out", default="runs/bench")
    llm = bn.add_argument_group("LLM voter throughput (instead of the ML path)")
    llm.add_argument(
        "--llm",
        metavar="BACKENDS",
        help="comma-separated: transformers, vllm, vllm-merged, openai (a vLLM server)",
    )
    llm.add_argument("--sequences", type=int, default=32, help="prompts per backend")
    llm.add_argument("--model", default="smollm2", help="base model")
    llm.add_argument("--adapter", help="LoRA adapter directory from make finetune")
    llm.add_argument("--max-prompt-tokens", type=int, default=512)
    llm.add_argument("--batch-size", type=int, default=8)
    bn.set_defaults(func=cmd_bench)

    rp = sub.add_parser("report", help="tables and plots of the experiment runs (make report)")
    rp.add_argument("--runs", default="runs", help="folder of experiment runs (results.json)")
    rp.add_argument("--out", default="docs/results", help="folder for results.md and the plots")
    rp.add_argument("--readme", help="also replace the results between the README's markers")
    rp.set_defaults(func=cmd_report)

    x = sub.add_parser("experiment", help="ULAD experiment: voters and ensemble over seeds")
    x.add_argument("kind", choices=("adfa-u", "synhdfs-u", "template-evolution"))
    x.add_argument("--seeds", type=int, default=5)
    x.add_argument(
        "--voters", default="ml", help="the ensemble's voters (names or presets; default ml)"
    )
    x.add_argument(
        "--rules",
        default="majority",
        help="comma-separated vote rules, each scored as an ensemble (the first is 'ensemble', "
        "the reference of the Mann-Whitney tests; e.g. majority,weighted,stacked)",
    )
    x.add_argument(
        "--add",
        default="",
        metavar="VOTERS",
        help="voters scored alone and each as an extra member of the ensemble",
    )
    x.add_argument(
        "--variants", default="", help="comma-separated holdouts or ratios (default all)"
    )
    x.add_argument("--param", action="append", default=[], metavar="VOTER.NAME=VALUE")
    x.add_argument(
        "--test-normal-ratio",
        default="all",
        help="adfa-u: 'all' held-out normals test (the paper's protocol, default), or that "
        "many normals per attack (non-paper)",
    )
    x.add_argument(
        "--normal-train-fraction",
        type=float,
        default=0.8,
        help="adfa-u: share of normal traces that train (default 0.8, the paper's)",
    )
    x.add_argument(
        "--per-class",
        type=int,
        default=500,
        help="adfa-u: limited training set per class (default 500: 1,000 samples, the paper's)",
    )
    x.add_argument(
        "--no-dedup",
        action="store_true",
        help="adfa-u: keep test traces that also occur in training (the paper's comparison)",
    )
    x.add_argument("--datasets", default=str(DATASETS))
    x.add_argument("--out", default=None, help="report directory (default runs/experiment-KIND)")
    x.add_argument(
        "--jobs", type=int, default=1, help="(holdout or ratio, seed) runs in parallel processes"
    )
    x.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (small networks: 1 is best)"
    )
    x.set_defaults(func=cmd_experiment)
    _add_plugin_commands(sub)
    return ap


#: Entry-point group of commands that other packages add, each ``register(subparsers)``.
COMMANDS_GROUP = "flexlog.commands"


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Let installed packages add subcommands (e.g. ``flexlog serve`` from flexlog.serve).

    Each entry point of :data:`COMMANDS_GROUP` names a function ``register(subparsers)`` that
    adds its parsers and sets ``func``; one that shadows a built-in command or fails to load
    is skipped with a warning, so a broken plugin never breaks the built-in commands.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            err.print(f"[yellow]warning:[/] plugin command {ep.name!r} shadows a built-in; skipped")
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # a third party's bug: report it, keep the CLI usable
            err.print(
                f"[yellow]warning:[/] command {escape(ep.name)!r} from {escape(ep.value)} "
                f"is unavailable: {escape(str(exc))}",
                soft_wrap=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "experiment" and args.out is None:
        args.out = f"runs/experiment-{args.kind}"
    try:
        return args.func(args)
    except (CliError, InputError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        err.print(f"[bold red]error:[/] {escape(str(msg))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
