"""The run report (``report.json``), the loss curve (``loss.png``) and the summary table."""

from __future__ import annotations

import json
import math
import platform
import resource
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "flexlog",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "trl",
    "unsloth",
    "safetensors",
)


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages training depends on (None: absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_memory(cuda: bool) -> dict[str, float | None]:
    """Peak resident memory of this process (MiB) and, on GPU, peak CUDA memory allocated."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024  # bytes vs KiB
    out: dict[str, float | None] = {"max_rss_mib": round(rss_kib * scale, 1)}
    out["cuda_max_allocated_mib"] = None
    if cuda:
        import torch

        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def loss_history(log_history: Sequence[dict]) -> list[dict[str, float]]:
    """The training-loss entries of a Trainer's log history, as ``{"step", "loss"}``."""
    return [
        {"step": int(e["step"]), "loss": float(e["loss"])}
        for e in log_history
        if "loss" in e and "step" in e
    ]


def build_report(
    *,
    recipe,
    plan,
    data,
    examples,
    log_history: Sequence[dict],
    global_step: int,
    start_step: int,
    resumed_from: str | None,
    train_seconds: float,
    load_seconds: float,
    wall_seconds: float,
    model_path: str,
    adapter_dir: Path,
    cuda: bool,
    quantized_modules: int = 0,
) -> dict[str, Any]:
    """Everything worth knowing about a finished run, JSON-ready."""
    import torch

    losses = loss_history(log_history)
    values = [e["loss"] for e in losses]
    lengths = [len(e.input_ids) for e in examples]
    per_step = recipe.batch_size * recipe.gradient_accumulation_steps
    steps_run = global_step - start_step
    return {
        "recipe": recipe.to_dict(),
        "recipe_source": recipe.source,
        "backend": plan.backend,
        "device": plan.device,
        "compute_dtype": plan.compute_dtype,
        "optimizer": plan.optimizer,
        "quantization": {"method": recipe.quantization, "linear4bit_modules": quantized_modules},
        "base_model_path": model_path,
        "adapter_dir": str(adapter_dir),
        "adapter_files": sorted(p.name for p in adapter_dir.iterdir()),
        "steps": global_step,
        "steps_this_run": steps_run,
        "resumed_from": resumed_from,
        "wall_seconds": round(wall_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / steps_run, 3) if steps_run else None,
        "final_loss": values[-1] if values else None,
        "mean_loss": statistics.fmean(values) if values else None,
        "loss_finite": all(math.isfinite(v) for v in values),
        "loss_history": losses,
        "peak_memory": peak_memory(cuda),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "data": {
            "path": data.path,
            "sha256": data.sha256,
            "sequences": len(data.sequences),
            "anomalous": sum(1 for s in data.sequences if s.label == 1),
            "skipped_lines": len(data.skipped),
            "training_examples": len(examples),
            "elided": sum(1 for e in examples if e.elided),
        },
        "tokens": {
            "per_example_mean": round(statistics.fmean(lengths), 1),
            "per_example_max": max(lengths),
            "per_step_mean": round(statistics.fmean(lengths) * per_step, 1),
            "answer_per_example_mean": round(
                statistics.fmean(e.answer_tokens for e in examples), 2
            ),
            "examples_per_step": per_step,
        },
    }


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return path


def plot_loss(history: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Save the training-loss curve as a PNG (Agg backend; works headless)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [e["step"] for e in history]
    ax.plot(steps, [e["loss"] for e in history], marker="." if len(steps) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(f"fine-tuning loss: {title}" if title else "fine-tuning loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The few numbers the CLI prints at the end of a run."""
    mem = report["peak_memory"]
    memory = f"{_fmt(mem['max_rss_mib'])} MiB RSS"
    if mem.get("cuda_max_allocated_mib") is not None:
        memory += f", {_fmt(mem['cuda_max_allocated_mib'])} MiB CUDA"
    resumed = report["resumed_from"]
    val = report.get("validation")
    validation = "-"
    if val:
        validation = (
            f"{val['sequences']} held out: F1 {val['f1_at_zero']:.3f} at margin 0, "
            f"{val['f1']:.3f} at threshold {val['threshold']:.3f}"
        )
    return [
        ("recipe", report["recipe"]["name"]),
        ("base model", report["recipe"]["base_model"]),
        (
            "backend / device",
            f"{report['backend']} / {report['device']} ({report['compute_dtype']})",
        ),
        ("sequences", f"{report['data']['sequences']} ({report['data']['anomalous']} anomalous)"),
        ("steps", f"{report['steps']} ({report['steps_this_run']} this run)"),
        ("resumed from", Path(resumed).name if resumed else "-"),
        ("seconds / step", _fmt(report["seconds_per_step"])),
        ("tokens / step", _fmt(report["tokens"]["per_step_mean"])),
        ("loss final / mean", f"{_fmt(report['final_loss'])} / {_fmt(report['mean_loss'])}"),
        ("validation", validation),
        ("peak memory", memory),
        ("wall time", f"{report['wall_seconds']:.1f} s"),
        ("adapter", report["adapter_dir"]),
    ]


def format_summary(report: dict) -> str:
    """A plain two-column table."""
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
